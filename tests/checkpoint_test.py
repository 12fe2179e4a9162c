"""Resume that loses nothing: exact resume after SIGKILL and SIGTERM, damaged steps, NaN, locks."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT

from minigpt_jax import checkpoint, cli, data, files
from minigpt_jax import workdir as workdir_lib

SMOKE = str(ROOT / "configs/shakespeare_char.py:smoke")
# Slow enough (~20-40 ms a step on 2 cores) that a signal lands mid-run; dropout on, so the
# dropout keys must be reproduced too. No samples at evals: they are not compared, and cost time.
STEPS = 80
RUN = [
    "--config.model.n_embd=64",
    "--config.model.block_size=64",
    "--config.model.dropout=0.1",
    f"--config.train.max_iters={STEPS}",
    "--config.train.eval_interval=40",
    "--config.train.ckpt_interval=10",
    "--config.train.log_interval=1",
    "--config.train.eval_iters=2",
    "--config.sample.max_new_tokens=0",
]


@pytest.fixture(scope="module")
def data_dir(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    data.prepare(files.read_text(corpus), out, block_size=64)
    return out


def _cmd(workdir, data_dir, *extra):
    args = ["train", "--config", SMOKE, "--workdir", str(workdir), f"--config.data.dir={data_dir}"]
    return [sys.executable, "-m", "minigpt_jax.cli", *args, *RUN, *extra]


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _run(workdir, data_dir, *extra):
    return subprocess.run(
        _cmd(workdir, data_dir, *extra), env=_env(), capture_output=True, text=True, timeout=600
    )


def _interrupt(workdir, data_dir, sig, at_step, *extra):
    """Starts a run and sends `sig` once its metrics show step >= at_step."""
    proc = subprocess.Popen(
        _cmd(workdir, data_dir, *extra),
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    path = workdir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        steps = [r["step"] for r in _records(workdir)] if path.exists() else []
        if steps and max(steps) >= at_step:
            proc.send_signal(sig)
            break
        time.sleep(0.002)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def _records(workdir):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def _losses(workdir):
    keys = ("loss", "grad_norm", "lr", "train_loss", "val_loss", "val_loss_full")
    return [(r["kind"], r["step"], *(r.get(k) for k in keys)) for r in _records(workdir)]


def _params(workdir, step):
    """Laid out on this process's first device: the run may have used more (--cpu_devices auto)."""
    model_cfg = workdir_lib.read_run(workdir)[2]
    return checkpoint.load_params(workdir, model_cfg, str(step), set_aside=False)[1]


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ref") / "run"
    out = _run(workdir, data_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    return workdir


def _assert_same_run(a, b):
    assert _losses(a) == _losses(b)  # every logged loss, bit for bit
    pa, pb = _params(a, STEPS), _params(b, STEPS)
    flat_a, flat_b = (sorted(np.asarray(x).tobytes() for x in jax_leaves(p)) for p in (pa, pb))
    assert flat_a == flat_b


def jax_leaves(tree):
    import jax

    return jax.tree.leaves(tree)


@pytest.mark.parametrize("ckpt_interval", [10, 1])  # 1: a save in flight at almost every step
def test_sigkill_at_a_random_step_then_resume_equals_one_run(
    reference, data_dir, tmp_path, ckpt_interval
):
    # Saving every step is slow: that run is killed in the first half and resumes saving every 10.
    at = random.Random().randrange(15, STEPS - 10 if ckpt_interval > 1 else STEPS // 2)
    workdir = tmp_path / "run"
    every = f"--config.train.ckpt_interval={ckpt_interval}"
    code, _, err = _interrupt(workdir, data_dir, signal.SIGKILL, at, every)
    assert code == -signal.SIGKILL, f"killed at step >= {at}: {err[-2000:]}"
    out = _run(workdir, data_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming from" in out.stdout or not (workdir / "checkpoints").exists()
    _assert_same_run(reference, workdir)


def test_sigterm_saves_exits_0_and_resumes_exactly(reference, data_dir, tmp_path):
    workdir = tmp_path / "run"
    started = time.time()
    code, out, err = _interrupt(workdir, data_dir, signal.SIGTERM, 25)
    assert code == 0, err[-2000:]
    assert "stopped by SIGTERM at step" in out and "resume with: " in out
    stopped = int(re.search(r"stopped by SIGTERM at step (\d+)", out).group(1))
    assert stopped < STEPS and (workdir / "checkpoints" / str(stopped)).is_dir()
    assert time.time() - started < 120
    out = _run(workdir, data_dir)
    assert out.returncode == 0 and f"(step {stopped})" in out.stdout, out.stderr[-2000:]
    _assert_same_run(reference, workdir)


def test_damaged_latest_step_falls_back_and_nothing_is_deleted(reference, data_dir, tmp_path):
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    latest, previous = steps[-1], steps[-2]
    # A killed async save leaves a tmp dir; a damaged step has a truncated array file.
    (workdir / "checkpoints" / f"{latest + 10}.orbax-checkpoint-tmp").mkdir()
    victim = max(
        (p for p in (workdir / "checkpoints" / str(latest) / "params").rglob("*") if p.is_file()),
        key=lambda p: p.stat().st_size,
    )
    victim.write_bytes(victim.read_bytes()[:10])
    out = _run(workdir, data_dir, f"--config.train.max_iters={STEPS + 10}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"checkpoints/{latest} is unreadable" in out.stdout
    assert f"resuming from {workdir / 'checkpoints' / str(previous)}" in out.stdout
    kept = [p.name for p in (workdir / "checkpoints").iterdir()]
    assert any(name.startswith(f"{latest}.unreadable-") for name in kept)  # moved, not deleted
    assert str(STEPS + 10) in kept


def test_non_finite_loss_stops_without_saving_the_bad_state(data_dir, tmp_path):
    workdir = tmp_path / "run"
    out = _run(workdir, data_dir, "--config.opt.lr=1e30", "--config.opt.warmup_iters=0")
    assert out.returncode == 1, out.stderr[-2000:]
    message = out.stderr.strip().splitlines()[-1]
    assert "non-finite" in message and "at step" in message and "Traceback" not in out.stderr
    bad_step = int(re.search(r"at step (\d+)", message).group(1))
    saved = [int(p.name) for p in (workdir / "checkpoints").glob("[0-9]*")]
    assert all(s < bad_step for s in saved)
    skipping = ["--config.opt.lr=1e30", "--config.opt.warmup_iters=0"]
    skipping += ["--config.train.skip_nonfinite=true", "--config.train.max_iters=20"]
    # Skipping nearly every update is a failed run: exit 1, saying so, with its files kept.
    skip = _run(tmp_path / "skip", data_dir, *skipping)
    assert skip.returncode == 1, skip.stderr[-2000:]
    message = skip.stderr.strip().splitlines()[-1]
    assert "updates were skipped as non-finite" in message and "skip_nonfinite_limit" in message
    last = [r for r in _records(tmp_path / "skip") if r["kind"] == "train"][-1]
    assert last["nonfinite_skipped"] > 0 and (tmp_path / "skip/checkpoints/20").is_dir()
    # A limit of 1 accepts any number of skipped updates.
    allowed = _run(
        tmp_path / "allowed", data_dir, *skipping, "--config.train.skip_nonfinite_limit=1"
    )
    assert allowed.returncode == 0, allowed.stderr[-2000:]


def test_eval_command_reads_best_latest_and_a_step(reference, capsys):
    for step in ("best", "latest", str(STEPS - 10)):
        assert cli.main(["minigpt", "eval", "--workdir", str(reference), "--step", step]) == 0
        out = capsys.readouterr().out
        assert "val loss" in out and "bits/char" in out and "train loss" in out
    latest = [r for r in _records(reference) if r["kind"] == "eval"][-1]
    assert cli.main(["minigpt", "eval", "--workdir", str(reference), "--step", "latest"]) == 0
    assert f"full val {latest['val_loss_full']:.4f}" in capsys.readouterr().out
    assert cli.main(["minigpt", "eval", "--workdir", str(reference), "--step", "7"]) == 2


def test_keeps_the_latest_k_and_the_best_n(tmp_path):
    import jax.numpy as jnp

    from minigpt_jax.run import TrainState

    ckpt = checkpoint.Checkpointer(tmp_path, keep_latest=2, keep_best=1)
    vals = {10: 3.0, 20: 1.0, 30: 2.0, 40: None, 50: 2.5}  # step 40: a save without an eval
    for step, val in vals.items():
        state = TrainState(jnp.int32(step), {"w": jnp.full((2,), float(step))}, {"m": jnp.zeros(2)})
        ckpt.save(step, state, {"step": step} if val is None else {"step": step, "val_loss": val})
    ckpt.wait()
    assert ckpt.steps() == [20, 40, 50]  # best (20) and latest two; the newest is never dropped
    assert ckpt.best_step() == 20
    ckpt.close()


def test_the_best_step_survives_a_resume(tmp_path):
    """A new process's manager must still know which kept step is the best, or keep-best
    deletes it at the next save (it did: only the metrics in memory ranked the steps)."""
    import jax.numpy as jnp

    from minigpt_jax.run import TrainState

    def save(ckpt, step, val):
        state = TrainState(jnp.int32(step), {"w": jnp.full((2,), float(step))}, {"m": jnp.zeros(2)})
        ckpt.save(step, state, {"step": step, "val_loss": val})

    first = checkpoint.Checkpointer(tmp_path, keep_latest=2, keep_best=1)
    for step, val in ((10, 1.0), (20, 3.0)):
        save(first, step, val)
    first.wait()
    first.close()
    resumed = checkpoint.Checkpointer(tmp_path, keep_latest=2, keep_best=1)
    for step, val in ((30, 4.0), (40, 5.0), (50, 6.0)):
        save(resumed, step, val)
    resumed.wait()
    assert resumed.steps() == [10, 40, 50] and resumed.best_step() == 10
    resumed.close()

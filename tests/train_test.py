"""The training loop over a Run: evals, checkpoints, records, and a stop that saves."""

import copy
import json
import os
import re
import signal
import subprocess
import sys

import pytest
from conftest import ROOT, tiny_config

from minigpt_jax import checkpoint, clock, data, files, metrics, train
from minigpt_jax import lock as lock_lib
from minigpt_jax.errors import UsageError


@pytest.fixture
def data_dir(tiny_data):
    return tiny_data


def _config(data_dir, **fields):
    fields = dict(max_iters=20, eval_interval=10, ckpt_interval=10, eval_iters=2) | fields
    c = tiny_config(**fields)
    c.data.dir = str(data_dir)
    c.sample.max_new_tokens = 0
    return c


def test_trains_evaluates_and_checkpoints_on_schedule(data_dir, tmp_path):
    results = train.train_and_evaluate(_config(data_dir), tmp_path / "run")
    assert results["step"] == 20 and results["stopped_by"] is None
    assert results["val_loss"] < results["val_loss_full"] + 1.0  # both evaluated
    records = metrics.read_metrics(tmp_path / "run")
    assert [r["step"] for r in records if r["kind"] == "eval"] == [0, 10, 20]
    assert results["val_loss_full"] == records[-1]["val_loss_full"]
    assert checkpoint.Checkpointer(tmp_path / "run").steps() == [10, 20]
    saved = json.loads((tmp_path / "run/config.json").read_text())
    assert saved["model"]["vocab_size"] == 65 and saved["train"]["max_iters"] == 20
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["step"] == 20 and summary["tokens_seen"] == 20 * 4 * 8
    # Where the wall went: every phase timed, and together they make up the process's time.
    wall = summary["wall"]
    assert wall == results["wall"] and set(wall) == {*clock.PHASES, "total"}
    assert all(wall[p] > 0 for p in ("startup", "compile", "train", "eval", "checkpoint", "end"))
    assert wall["samples"] == 0  # this config draws none
    assert sum(wall[p] for p in clock.PHASES) == pytest.approx(wall["total"], abs=1.0)


def test_a_stop_request_saves_a_checkpoint_and_says_by_what(data_dir, tmp_path, monkeypatch):
    def stop_at_7(self, step):
        if step == 7:
            self.signum = signal.SIGTERM
        return self.signum is not None

    monkeypatch.setattr(train.StopRequest, "should_stop", stop_at_7)
    results = train.train_and_evaluate(_config(data_dir), tmp_path / "run")
    assert results["step"] == 7 and results["stopped_by"] == "SIGTERM"
    assert checkpoint.Checkpointer(tmp_path / "run").steps() == [7]


def test_a_run_stops_at_its_target_and_records_when_it_got_there(tiny_run, tmp_path):
    """train.target_val_loss: the first eval at or below it ends the run (resumes stay there);
    with stop_at_target=False the run goes on and the summary still says when it got there."""
    workdir, c = tiny_run
    evals = [r for r in metrics.read_metrics(workdir) if r["kind"] == "eval"]
    target = next(r for r in evals if r["step"] == 4)["val_loss_full"]
    assert evals[1]["step"] == 4 and evals[0]["val_loss_full"] > target  # step 0 is above it
    c = copy.deepcopy(c)
    c.train.target_val_loss = target
    results = train.train_and_evaluate(c, tmp_path / "stop")
    assert (results["step"], results["stopped_by"]) == (4, "target")
    s = json.loads((tmp_path / "stop/summary.json").read_text())
    assert (s["finished"], s["stopped_by"], s["target_reached"]) == (True, "target", True)
    assert (s["target_step"], s["target_tokens"]) == (4, 4 * 4 * 8) and s["target_s"] > 0
    again = train.train_and_evaluate(c, tmp_path / "stop")  # a resume: already there
    assert (again["step"], again["stopped_by"]) == (4, "target")
    assert checkpoint.Checkpointer(tmp_path / "stop").steps() == [4]
    c.train.stop_at_target = False
    results = train.train_and_evaluate(c, tmp_path / "on")
    s = json.loads((tmp_path / "on/summary.json").read_text())
    assert (results["step"], results["stopped_by"]) == (8, None)
    assert (s["target_step"], s["finished"]) == (4, True)


def test_a_muon_run_resumed_equals_one_run(data_dir, tmp_path):
    """Muon + AdamW's state (two groups, Muon's momentum) saves, restores in its shardings and
    resumes exactly: 3 steps, then 3 more, against 6 in one go."""
    c = _config(data_dir, optimizer="muon", max_iters=6, eval_interval=3, ckpt_interval=3,
                log_interval=1)  # fmt: skip
    train.train_and_evaluate(c, tmp_path / "one")
    short = copy.deepcopy(c)
    short.train.max_iters = 3
    train.train_and_evaluate(short, tmp_path / "two")
    train.train_and_evaluate(c, tmp_path / "two")

    def records(run):
        return [(r["kind"], r["step"], r.get("loss"), r.get("val_loss")) for r in
                metrics.read_metrics(tmp_path / run) if r["kind"] in ("train", "eval")]  # fmt: skip

    assert records("one") == records("two") and len(records("one")) > 6
    adamw = _config(data_dir, max_iters=3, eval_interval=3, ckpt_interval=3, log_interval=1)
    train.train_and_evaluate(adamw, tmp_path / "adamw")
    assert records("adamw")[1:3] != records("one")[1:3]  # the switch is on


def test_a_resume_with_every_model_switch_on_equals_one_run(data_dir, tmp_path, monkeypatch):
    """The modern switches (rotary, RMSNorm, QK-norm, ReLU², soft cap, zero-init projections)
    stopped at step 3 and resumed: every logged loss equals the uninterrupted run's."""
    switches = dict(pos_emb="rotary", norm="rmsnorm", qk_norm=True, activation="relu2")
    switches |= dict(logit_softcap=5.0, zero_init_proj=True)
    c = _config(data_dir, max_iters=6, eval_interval=3, ckpt_interval=3, log_interval=1, **switches)
    one = train.train_and_evaluate(c, tmp_path / "one")
    stop_at_3 = lambda self, step: step == 3  # noqa: E731
    with monkeypatch.context() as m:
        m.setattr(train.StopRequest, "should_stop", stop_at_3)
        assert train.train_and_evaluate(c, tmp_path / "two")["step"] == 3
    two = train.train_and_evaluate(c, tmp_path / "two")
    assert two["step"] == one["step"] == 6 and two["val_loss_full"] == one["val_loss_full"]
    keys = ("kind", "step", "loss", "val_loss", "val_loss_full")
    runs = [[tuple(r.get(k) for k in keys) for r in metrics.read_metrics(tmp_path / name)]
            for name in ("one", "two")]  # fmt: skip
    assert runs[0] == runs[1] and len(runs[0]) > 6
    saved = json.loads((tmp_path / "two/config.json").read_text())["model"]
    assert {k: saved[k] for k in switches} == switches


def test_refuses_a_bad_config_before_touching_the_workdir(data_dir, tmp_path):
    with pytest.raises(UsageError, match="train.eval_iters"):
        train.train_and_evaluate(_config(data_dir, eval_iters=0), tmp_path / "run")
    assert not (tmp_path / "run").exists()


# `minigpt train` in a subprocess, with a fault injected by FAULT (see DRIVER): the exit code,
# the lines printed and what is left in the workdir are what the user gets.
SMOKE = str(ROOT / "configs/shakespeare_char.py:smoke")
SMALL = [
    "--config.train.max_iters=6",
    "--config.train.ckpt_interval=2",
    "--config.train.eval_interval=6",
    "--config.train.eval_iters=1",
    "--config.train.log_interval=2",
    "--config.sample.max_new_tokens=0",
]
DRIVER = r"""
import builtins, errno, os, re, shutil, signal, sys
from minigpt_jax import cli, data, run, train

fault, _, arg = os.environ.get("FAULT", "").partition(":")
TMP = re.compile(r"checkpoints/(\d+)\.orbax-checkpoint-tmp")


def late_tmp(path):  # a path inside the tmp folder of a step >= arg
    m = TMP.search(str(path))
    return m is not None and int(m.group(1)) >= int(arg)


def term_then(f):  # SIGTERM to this process, then f as usual
    def g(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        return f(*a, **k)
    return g


def no_space(path):
    raise OSError(errno.ENOSPC, "No space left on device", str(path))


if fault == "term_loading":  # before the lock
    data.load_prepared = term_then(data.load_prepared)
elif fault == "term_init":  # locked, state initialized, step 0 not evaluated yet
    train.count_params = term_then(train.count_params)
elif fault == "term_eval":  # during the step-0 eval
    train.evaluate = term_then(train.evaluate)
elif fault == "mkdir":  # the step's tmp folder cannot be created: disk full
    makedirs = os.makedirs
    os.makedirs = lambda p, *a, **k: no_space(p) if late_tmp(p) else makedirs(p, *a, **k)
elif fault == "write":  # a file inside the step's tmp folder cannot be written: disk full
    open_ = builtins.open
    def opener(p, mode="r", *a, **k):
        return no_space(p) if late_tmp(p) and set(mode) & set("wax") else open_(p, mode, *a, **k)
    builtins.open = opener
elif fault == "free":  # the disk reports arg bytes free once a step is saved
    usage = shutil.disk_usage
    def disk_usage(p):
        ckpts = os.environ["CKPTS"]
        steps = [q for q in os.listdir(ckpts) if q.isdigit()] if os.path.isdir(ckpts) else []
        return usage(p)._replace(free=int(arg)) if steps else usage(p)
    shutil.disk_usage = disk_usage
elif fault in ("ctrlc", "ctrlc_twice"):  # Ctrl-C once a save of step >= arg is in flight
    from minigpt_jax import checkpoint
    save, wait = checkpoint.Checkpointer.save, checkpoint.Checkpointer.wait
    def interrupted_save(self, step, *a, **k):
        save(self, step, *a, **k)
        if step >= int(arg):
            self.interrupted = True
            raise KeyboardInterrupt
    def interrupted_wait(self):  # ctrlc_twice: again while the run waits for that save
        if getattr(self, "interrupted", False) and fault == "ctrlc_twice":
            self.interrupted = False
            raise KeyboardInterrupt
        wait(self)
    checkpoint.Checkpointer.save, checkpoint.Checkpointer.wait = interrupted_save, interrupted_wait
sys.exit(cli.main(["minigpt", *sys.argv[1:]]))
"""


@pytest.fixture(scope="module")
def cli_data(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_data")
    data.prepare(files.read_text(corpus)[:50_000], out, block_size=32)
    return out


def _train(workdir, data_dir, fault="", timeout=120, extra=()):
    """(exit code, stdout, stderr) of a small smoke run in workdir with `fault` injected."""
    argv = ["train", "--config", SMOKE, "--workdir", str(workdir), f"--config.data.dir={data_dir}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FAULT": fault}
    env["CKPTS"] = str(workdir / "checkpoints")
    try:
        out = subprocess.run(
            [sys.executable, "-c", DRIVER, *argv, *SMALL, *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"minigpt train with FAULT={fault!r} hung for {timeout} s")
    return out.returncode, out.stdout, out.stderr


def _saved(workdir):
    return sorted(p.name for p in (workdir / "checkpoints").iterdir())


@pytest.mark.parametrize("fault", ["term_init", "term_eval"])
def test_sigterm_after_the_lock_before_step_1_stops_cleanly(cli_data, tmp_path, fault):
    code, out, err = _train(tmp_path / "run", cli_data, fault)
    assert code == 0, err[-2000:]
    assert "stopped by SIGTERM at step 0 before training, nothing to save" in out
    assert "resume with: minigpt train" in out and "Traceback" not in err
    assert not (tmp_path / "run" / lock_lib.LOCK_FILE).exists()
    assert ("step 0:" in out) == (fault == "term_eval")  # skipped if asked for before it
    code, out, err = _train(tmp_path / "run", cli_data)
    assert code == 0 and "done:" in out, err[-2000:]


def test_sigterm_before_the_lock_exits_143_in_one_line(cli_data, tmp_path):
    code, out, err = _train(tmp_path / "run", cli_data, "term_loading")
    assert code == 143, err[-2000:]
    assert err.strip().splitlines() == [
        "minigpt train: stopped by SIGTERM before the run started; nothing was written, run "
        "the same command again"
    ]
    assert not (tmp_path / "run").exists()


def test_a_file_where_the_checkpoints_go_is_one_line_and_no_hang(cli_data, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").touch()
    code, out, err = _train(tmp_path / "run", cli_data, timeout=60)  # it hung for 300 s
    assert code == 2, err[-2000:]
    assert err.strip().splitlines() == [
        f"minigpt train: error: {tmp_path / 'run' / 'checkpoints'} is a file, not a folder; "
        "move it away or pick another --workdir"
    ]
    assert not (tmp_path / "run" / lock_lib.LOCK_FILE).exists()


@pytest.mark.parametrize("fault", ["mkdir:4", "write:4", "free:1000"])
def test_a_full_disk_is_one_line_keeps_the_checkpoints_and_resumes(cli_data, tmp_path, fault):
    workdir = tmp_path / "run"
    code, out, err = _train(workdir, cli_data, fault, timeout=60)  # mkdir hung for 300 s
    assert code == 2, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert re.fullmatch(
        rf"minigpt train: error: the disk holding {re.escape(str(workdir))} is full: free \d+ MB "
        r"or move the workdir \(.*\)",
        lines[0],
    )
    assert _saved(workdir) == ["2"]  # the step before is intact, no half-save left
    assert not (workdir / lock_lib.LOCK_FILE).exists()
    code, out, err = _train(workdir, cli_data)
    assert code == 0 and f"resuming from {workdir / 'checkpoints' / '2'}" in out, err[-2000:]
    assert _saved(workdir) == ["4", "6"]


@pytest.mark.parametrize("fault", ["ctrlc:4", "ctrlc_twice:4"])
def test_ctrl_c_during_a_save_unlocks_leaves_no_half_save_and_resumes(cli_data, tmp_path, fault):
    workdir = tmp_path / "run"
    code, out, err = _train(workdir, cli_data, fault, timeout=60)
    assert code == 130 and err.strip().splitlines() == ["minigpt train: interrupted"], err
    assert not (workdir / lock_lib.LOCK_FILE).exists()
    saved = [name for name in _saved(workdir) if name.isdigit()]
    # The save in flight completes, or is dropped whole: at most a tmp folder that orbax skips
    # (tensorstore may still write into it after it is cancelled) and the next run removes.
    assert saved in (["2"], ["2", "4"])
    code, out, err = _train(workdir, cli_data)
    assert code == 0 and f"resuming from {workdir / 'checkpoints' / saved[-1]}" in out, err
    assert _saved(workdir) == ["4", "6"]

"""Multi-host on one machine: docs/tpu.md's two-machine command as two processes on 127.0.0.1,
two CPU devices each."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import tpu_doc
from conftest import ROOT, free_port, xla_flags

from minigpt_jax import data, files

# The launch docs/tpu.md gives for two machines (section 7: :gpt2_124m, the coordinator and the
# process id named by hand), run as two processes here; CPU_SIZE shrinks its model and run (FSDP
# over 4 devices, 4 micro-steps of 16 rows kept; no samples at evals: process 0 of two draws
# none, and one process's would only cost a compile). The preset's lr, warmed up in 2 steps: two
# processes reduce in another order than one (ulp-level, ~1e-7 here), and at lr 1e-2 Adam grew
# that past 1e-5 within 3 steps of the resume; at 6e-4 it stays at the ulp.
DOC_COMMAND = tpu_doc.two_machine_command()
CPU_SIZE = [
    "--config.model.n_layer=2", "--config.model.n_head=2", "--config.model.n_embd=32",
    "--config.model.block_size=32", "--config.model.dtype=float32", "--config.train.batch_size=16",
    "--config.opt.warmup_iters=2", "--config.train.eval_iters=4",
    "--config.train.eval_interval=3", "--config.train.ckpt_interval=3",
    "--config.train.log_interval=1", "--config.sample.max_new_tokens=0",
]  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    data.prepare(files.read_text(corpus), out, block_size=32)
    return out


def _args(workdir, data_dir, dist: list[str], *extra):
    """The page's command with this test's workdir and data, its dist flags replaced by `dist`."""
    argv = tpu_doc.with_flag(DOC_COMMAND, "--workdir", str(workdir))
    argv = [a for a in argv if not a.startswith("--config.dist.")] + dist
    return [
        sys.executable, "-m", "minigpt_jax.cli", *argv, f"--config.data.dir={data_dir}",
        *CPU_SIZE, *extra,
    ]  # fmt: skip


def _env(devices):
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "XLA_FLAGS": xla_flags(devices),
    }


def _one_process(workdir, data_dir, *extra):
    one_host = ["--config.dist.auto=false"]  # as on one GPU machine (docs/tpu.md, section 7)
    out = subprocess.run(
        _args(workdir, data_dir, one_host, *extra), env=_env(4), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _doc_dist_flags(port: int, process_id: int) -> list[str]:
    """The page's dist flags as its comment says to fill them: host0 -> here, N -> the id."""
    flags = [a for a in DOC_COMMAND if a.startswith("--config.dist.")]
    filled = [
        a.replace("host0:1234", f"127.0.0.1:{port}").replace(
            "process_id=N", f"process_id={process_id}"
        )
        for a in flags
    ]
    assert f"--config.dist.process_id={process_id}" in filled and f"127.0.0.1:{port}" in str(filled)
    return filled


def _two_processes(workdir, data_dir, *extra):
    port = free_port()
    return [
        subprocess.Popen(
            _args(workdir, data_dir, _doc_dist_flags(port, i), *extra),
            env=_env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]


def _losses(workdir):
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r.get("loss", r.get("val_loss_full")) for r in records]


def test_two_hosts_match_one_host_and_resume_on_one(data_dir, tmp_path):
    one = tmp_path / "one"  # steps 1-9 in one process; its first 6 steps are what two run
    _one_process(one, data_dir, "--config.train.max_iters=9")
    two = tmp_path / "two"
    procs = _two_processes(two, data_dir, "--config.train.max_iters=6")
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    assert len(_losses(two)) == 6 + 3  # process 0 alone writes the records (evals at 0, 3, 6)
    # The page's preset: FSDP over every device of both processes.
    assert json.loads((two / "config.json").read_text())["mesh"]["fsdp"] == -1
    assert json.loads((two / "summary.json").read_text())["device_count"] == 4
    assert _losses(two) == pytest.approx(_losses(one)[:9], rel=1e-5)
    # The two-process checkpoint resumes in one process and continues as one process would.
    out = _one_process(two, data_dir, "--config.train.max_iters=9")
    assert "resuming from" in out.stdout and "(step 6)" in out.stdout
    assert _losses(two) == pytest.approx(_losses(one), rel=1e-5)


def test_sigterm_to_one_host_stops_both_at_the_same_step(data_dir, tmp_path):
    workdir = tmp_path / "run"
    procs = _two_processes(workdir, data_dir, "--config.train.max_iters=100000")
    deadline = time.time() + 300
    while time.time() < deadline:
        path = workdir / "metrics.jsonl"
        if path.exists() and path.read_text().count('"train"') >= 5:
            break
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)  # a preemption notice reaches one host
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    steps = {int(re.search(r"stopped by SIGTERM at step (\d+)", out).group(1)) for out, _ in outs}
    assert len(steps) == 1  # both stopped, and at the same step
    assert (workdir / "checkpoints" / str(steps.pop())).is_dir()

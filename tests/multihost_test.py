"""Multi-host on one machine: two processes on 127.0.0.1, two CPU devices each."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import ROOT

from minigpt_jax import data, files

SMOKE = str(ROOT / "configs/shakespeare_char.py:smoke")


@pytest.fixture(scope="module")
def data_dir(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    data.prepare(files.read_text(corpus), out, block_size=32)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(workdir, data_dir, *extra):
    return [
        sys.executable, "-m", "minigpt_jax.cli", "train", "--config", SMOKE,
        f"--workdir={workdir}", f"--config.data.dir={data_dir}",
        "--config.train.eval_interval=3", "--config.train.ckpt_interval=3",
        "--config.train.log_interval=1", *extra,
    ]  # fmt: skip


def _env(devices):
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
    }


def _one_process(workdir, data_dir, *extra):
    out = subprocess.run(
        _args(workdir, data_dir, *extra), env=_env(4), capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _two_processes(workdir, data_dir, *extra):
    dist = [f"--config.dist.coordinator=127.0.0.1:{_free_port()}", "--config.dist.num_processes=2"]
    return [
        subprocess.Popen(
            _args(workdir, data_dir, *dist, f"--config.dist.process_id={i}", *extra),
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

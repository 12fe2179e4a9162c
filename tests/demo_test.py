"""`make demo` as a user lives it: Ctrl-C says once where the run stopped and that `make demo`
resumes it; `make demo` again does, and samples.

The real Makefile runs in a scratch folder: its .venv is a folder whose bin/minigpt runs this
checkout (adding overrides that shrink the :cpu recipe to seconds), and Tiny Shakespeare is the
generated corpus at data/tinyshakespeare/input.txt, where the demo looks for it.
"""

import json
import os
import re
import signal
import subprocess
import sys

import pytest
from conftest import ROOT

SHRINK = ("--config.model.n_layer=1 --config.model.n_head=1 --config.model.n_embd=16 "
          "--config.train.eval_interval=50 --config.train.eval_iters=1 "
          "--config.train.log_interval=10 --config.sample.max_new_tokens=0")  # fmt: skip
WRAPPER = f"""#!/bin/sh
case "$1" in train) set -- "$@" $DEMO_TRAIN_ARGS;; sample) set -- "$@" --max_new_tokens 5;; esac
PYTHONPATH={ROOT} exec {sys.executable} -m minigpt_jax.cli "$@"
"""
# A terminal's Ctrl-C reaches every process of the foreground group; SIGINT may be ignored in
# the process that runs the tests, so make starts with the default action restored.
DEFAULT_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execvp(sys.argv[1], sys.argv[1:])"
)


@pytest.fixture
def demo_dir(corpus, tmp_path):
    (tmp_path / "venv/bin").mkdir(parents=True)
    (tmp_path / "venv/bin/minigpt").write_text(WRAPPER)
    (tmp_path / "venv/bin/minigpt").chmod(0o755)
    for name in ("pyproject.toml", "constraints.txt", "venv/.installed"):  # the venv is built
        (tmp_path / name).touch()
        os.utime(tmp_path / name, (0, 0) if "venv" not in name else None)
    (tmp_path / "data/tinyshakespeare").mkdir(parents=True)
    (tmp_path / "data/tinyshakespeare/input.txt").write_bytes(corpus.read_bytes())
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    return tmp_path


def _make(cwd, max_iters, *, ctrl_c_after=None):
    """(exit code, output) of `make demo`; ctrl_c_after: Ctrl-C once a log line starts so."""
    env = {**os.environ, "DEMO_TRAIN_ARGS": f"{SHRINK} --config.train.max_iters={max_iters}"}
    env.pop("MAKEFLAGS", None)
    argv = ["make", "-f", str(ROOT / "Makefile"), "demo", "VENV=venv"]
    p = subprocess.Popen(
        [sys.executable, "-c", DEFAULT_SIGINT, *argv], cwd=cwd, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    lines = []
    try:
        for line in p.stdout:
            lines.append(line)
            if ctrl_c_after and line.startswith(ctrl_c_after):
                os.killpg(p.pid, signal.SIGINT)  # the whole group, as a terminal does
                ctrl_c_after = None
        return p.wait(timeout=300), "".join(lines)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)


def test_ctrl_c_in_make_demo_says_so_once_and_make_demo_resumes(demo_dir):
    code, out = _make(demo_dir, 100_000, ctrl_c_after="step 20/")
    assert code == -signal.SIGINT, out  # make passes the interrupt on: the sample is not run
    said = [line for line in out.splitlines() if "SIGINT" in line]
    assert len(said) == 1, out
    stopped = json.loads((demo_dir / "runs/demo/summary.json").read_text())
    step = stopped["step"]
    assert said[0] == f"stopped by SIGINT at step {step} with a checkpoint; resume with: make demo"
    assert step >= 20 and "minigpt sample" not in out
    assert (stopped["finished"], stopped["stopped_by"]) == (False, "SIGINT")
    assert (
        stopped["checkpoint_step"] == step and (demo_dir / f"runs/demo/checkpoints/{step}").is_dir()
    )
    code, out = _make(demo_dir, step + 2)  # as typed: it resumes rather than starting over
    assert code == 0, out
    assert re.search(rf"resuming from \S*runs/demo/checkpoints/{step} \(step {step}\)", out), out
    assert "# runs/demo step" in out and "--max_new_tokens 500" in out  # and samples it
    done = json.loads((demo_dir / "runs/demo/summary.json").read_text())
    assert (done["step"], done["finished"], done["checkpoint_step"]) == (step + 2, True, step + 2)

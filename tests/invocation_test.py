"""minigpt_jax.invocation: the resume hint is a command that runs as the user would type it."""

import os
import subprocess
import sys

from conftest import ROOT

from minigpt_jax import invocation


def _bin(tmp_path, name="minigpt"):
    """A folder holding an executable `name`; returns (folder, its path)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    exe = folder / name
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    return folder, exe


def test_minigpt_is_named_bare_only_when_path_finds_this_very_program(tmp_path, monkeypatch):
    folder, exe = _bin(tmp_path)
    monkeypatch.setenv("PATH", str(folder))
    assert invocation.program(str(exe)) == "minigpt"
    # make demo runs .venv/bin/minigpt while PATH's minigpt (if any) is another program.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert invocation.program(".venv/bin/minigpt") == ".venv/bin/minigpt"
    assert invocation.program("my dir/minigpt") == "'my dir/minigpt'"


def test_python_dash_m_is_named_with_the_interpreter_that_ran_it(monkeypatch):
    cli_py = str(ROOT / "minigpt_jax" / "cli.py")  # argv[0] of `python -m minigpt_jax.cli`
    monkeypatch.setenv("PATH", "/nonexistent")
    assert invocation.program(cli_py) == f"{sys.executable} -m minigpt_jax.cli"
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable))
    name = os.path.basename(sys.executable)
    assert invocation.program(cli_py) == f"{name} -m minigpt_jax.cli"


def test_the_hint_drops_what_would_discard_the_run_and_quotes_the_rest(monkeypatch):
    monkeypatch.delenv(invocation.RESUME_ENV, raising=False)
    args = ["train", "--workdir", "runs/a b", "--config.train.init_from=scratch", "--overwrite",
            "--config.sample.prompt=O God!"]  # fmt: skip
    assert invocation.resume_command("minigpt", args) == (
        "minigpt train --workdir 'runs/a b' '--config.sample.prompt=O God!'"
    )
    monkeypatch.setenv(invocation.RESUME_ENV, "make demo")  # the Makefile's own resume
    assert invocation.resume_command("minigpt", args) == "make demo"


def test_the_printed_python_dash_m_command_runs_in_a_shell(monkeypatch):
    monkeypatch.delenv(invocation.RESUME_ENV, raising=False)
    hint = invocation.resume_command(str(ROOT / "minigpt_jax/cli.py"), ["train", "--help"])
    out = subprocess.run(
        ["bash", "-c", hint], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert out.returncode == 0 and "--workdir" in out.stdout, out.stderr

"""How the user started this process, so that a command we print (the resume hint) runs as typed:
`minigpt` only when that name on PATH is this program, else the path it was started by
(`.venv/bin/minigpt` from the Makefile) or `python -m minigpt_jax.cli`."""

from __future__ import annotations

import os
import shlex
import shutil
import sys

# Set by the Makefile: `make demo` resumes its own run, so its hint is `make demo`.
RESUME_ENV = "MINIGPT_RESUME_COMMAND"
# Flags a resume must not repeat: they discard the checkpoints the hint means to resume from.
NOT_REPEATED = ("--overwrite", "--config.train.init_from=scratch")


def _same(found: str | None, path: str) -> bool:
    # abspath, not samefile: a venv's python is a symlink to the system's, another environment.
    return found is not None and os.path.abspath(found) == os.path.abspath(path)


def program(argv0: str) -> str:
    """What to type to start this program again, from the argv[0] it was started with."""
    if argv0.endswith(".py") or argv0 in ("-m", "-c"):  # python -m minigpt_jax.cli
        python, name = sys.executable, os.path.basename(sys.executable)
        python = name if _same(shutil.which(name), python) else shlex.quote(python)
        return f"{python} -m minigpt_jax.cli"
    if os.path.basename(argv0) == "minigpt" and _same(shutil.which("minigpt"), argv0):
        return "minigpt"
    return shlex.quote(argv0)


def resume_command(argv0: str, args: list[str]) -> str:
    """The command that resumes a stopped run: $MINIGPT_RESUME_COMMAND when set, else this
    command as typed, quoted for a POSIX shell, without the flags that would discard the run."""
    if os.environ.get(RESUME_ENV):
        return os.environ[RESUME_ENV]
    kept = [a for a in args if a not in NOT_REPEATED]
    return " ".join([program(argv0), shlex.join(kept)])

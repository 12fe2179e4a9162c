"""The typed errors the CLI maps to exit codes, and the one for a missing optional extra."""

import importlib
from types import ModuleType


class UsageError(Exception):
    """Bad input: the CLI prints the message on one line and exits with code 2.

    The message says what is wrong and what to do about it.
    """


class RunStopped(Exception):
    """A run that cannot go on (a non-finite loss, say): one line, exit code 1, nothing lost."""


class OutOfStep(Exception):
    """The processes of one multi-host run were started on different runs (hosts whose sweeps
    fell out of step): one line, exit code 3, nothing written."""

    exit_code = 3


class Terminated(BaseException):
    """SIGTERM before a run started (nothing written): one line, exit code 143 (128 + SIGTERM,
    as Ctrl-C's KeyboardInterrupt gives 130). A BaseException, like KeyboardInterrupt, so that
    no `except Exception` on the way takes it for an error of its own."""


def require_torch(module: str = "torch_ref") -> ModuleType:
    """minigpt_jax's torch_ref (or torch_train) module, or a one-line UsageError saying how to
    install torch."""
    try:
        return importlib.import_module(f"minigpt_jax.{module}")
    except ImportError as e:
        if not (e.name or "").startswith("torch"):
            raise
        raise UsageError(
            "this command needs PyTorch: pip install -e '.[torch]' (torch==2.13.0, CPU wheel)"
        ) from None


def one_line(e: BaseException) -> str:
    """The message on one line; of an embedded traceback, only its final line."""
    text = str(e)
    if "Traceback (most recent call last)" in text:
        head = text.split(":", 1)[0] if text.startswith("flag ") else ""
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = f"{head}: {last.strip()}" if head else last
    return " ".join(text.split())

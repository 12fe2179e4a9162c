"""The typed errors the CLI maps to exit codes, and the one for a missing optional extra."""

import importlib
from types import ModuleType


class UsageError(Exception):
    """Bad input: the CLI prints the message on one line and exits with code 2.

    The message says what is wrong and what to do about it.
    """


class RunStopped(Exception):
    """A run that cannot go on (a non-finite loss, say): one line, exit code 1, nothing lost."""


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

"""Weights & Biases, optional (the `wandb` extra): a run's scalars and resolved config mirrored
to a wandb run whose files live in WORKDIR/wandb and whose id a resume reuses.

wandb is imported only when train.wandb_project is set: a run without it never loads wandb.
"""

from __future__ import annotations

import importlib.util
import pathlib
from typing import Any

from minigpt_jax.errors import UsageError, one_line
from minigpt_jax.files import atomic_write_bytes

MODES = ("", "online", "offline", "disabled")  # '': wandb's own choice (WANDB_MODE, else online)
RUN_ID_FILE = "wandb_run_id"  # in the workdir: the id a resumed run continues
INSTALL = "pip install -e '.[wandb]' (the minigpt-jax[wandb] extra)"


def check(t: Any) -> None:
    """The train section's wandb fields, checked with the rest of the config: a bad mode, or a
    project set where wandb is not installed, fails before anything is read or written."""
    if t.wandb_mode not in MODES:
        raise UsageError(f"train.wandb_mode must be one of {list(MODES)}, got {t.wandb_mode!r}")
    # find_spec, not an import: wandb takes a second to import, and validate runs often.
    if t.wandb_project and importlib.util.find_spec("wandb") is None:
        raise UsageError(f"train.wandb_project needs wandb: {INSTALL}")


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError as e:  # absent, or installed with a dependency missing
        raise UsageError(f"train.wandb_project needs wandb ({one_line(e)}): {INSTALL}") from None
    return wandb


class WandbSink:
    """One wandb run: init at construction, a log call per record, finish at close."""

    def __init__(self, workdir: str | pathlib.Path, config: dict, *, resume: bool):
        """config is the run's resolved config (config.json's content); resume: the run goes
        on from a checkpoint, so it continues the wandb run whose id the workdir keeps. A fresh
        run gets a new id, even over an old one's files."""
        t = config["train"]
        wandb = _import_wandb()
        id_file = pathlib.Path(workdir) / RUN_ID_FILE
        run_id = id_file.read_text().strip() if resume and id_file.exists() else ""
        try:
            self.run = wandb.init(
                project=t["wandb_project"],
                name=t.get("wandb_run_name") or None,
                mode=t.get("wandb_mode") or None,  # None: WANDB_MODE decides, else online
                dir=str(workdir),  # wandb/ under the workdir, never the current directory
                config=config,
                id=run_id or None,
                resume="allow" if run_id else None,
            )
        except wandb.errors.Error as e:  # no API key, no network, a bad entity or project
            raise UsageError(
                f"wandb: {one_line(e)} (train.wandb_project={t['wandb_project']!r}); log in "
                "with `wandb login`, or run offline with WANDB_MODE=offline"
            ) from None
        if not self.run.disabled:  # mode 'disabled' leaves no wandb file at all
            atomic_write_bytes(id_file, f"{self.run.id}\n".encode())

    def log(self, values: dict[str, float], step: int) -> None:
        """values named as in TensorBoard ('train/loss'), at the run's step."""
        # A run resumed after a crash redoes the steps between its checkpoint and the crash,
        # which the wandb run already has, with these very values (a resume computes what the
        # uninterrupted run did). wandb refuses a step below its last with a warning each: skip.
        if values and step >= self.run.step:
            self.run.log(values, step=step)

    def close(self, failed: bool = False) -> None:
        """Finishes the run (failed marks it so); wandb's own service process writes out what
        is left of its files, and uploads them when online."""
        self.run.finish(exit_code=1 if failed else 0)

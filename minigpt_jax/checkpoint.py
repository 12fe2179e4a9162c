"""orbax checkpoints of (params, opt_state, step), with the resolved config and meta.json beside."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import orbax.checkpoint as ocp

from minigpt_jax.data import META_FILE, atomic_write_bytes
from minigpt_jax.errors import UsageError

CONFIG_FILE = "config.json"
CKPT_DIR = "checkpoints"


class Checkpointer:
    """Async orbax saves; params and opt_state are separate items so either restores alone."""

    def __init__(
        self, workdir: str | pathlib.Path, *, max_to_keep: int | None = 3, create: bool = True
    ):
        self.directory = pathlib.Path(workdir).absolute() / CKPT_DIR
        self.manager = ocp.CheckpointManager(
            self.directory,
            item_names=("params", "opt_state", "meta"),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=create, enable_async_checkpointing=True
            ),
        )

    def save(self, step: int, state: Any, meta: dict) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(state.params),
                opt_state=ocp.args.StandardSave(state.opt_state),
                meta=ocp.args.JsonSave(meta),
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, Any, dict]:
        """(params, opt_state, meta) at `step`, laid out as the abstract state's shardings."""
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract_state.params),
                opt_state=ocp.args.StandardRestore(abstract_state.opt_state),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return out.params, out.opt_state, out.meta

    def restore_params(self, step: int, abstract_params: Any) -> Any:
        out = self.manager.restore(
            step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params))
        )
        return out.params

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def write_run_files(workdir: str | pathlib.Path, config: dict, meta: dict) -> None:
    """The resolved config and the tokenizer's meta.json, so a workdir is self-describing."""
    workdir = pathlib.Path(workdir)
    atomic_write_bytes(workdir / CONFIG_FILE, json.dumps(config, indent=2).encode())
    atomic_write_bytes(workdir / META_FILE, json.dumps(meta, ensure_ascii=False).encode())


def read_run_files(workdir: str | pathlib.Path) -> tuple[dict, dict]:
    workdir = pathlib.Path(workdir)
    if not workdir.is_dir():
        raise UsageError(f"workdir {workdir} does not exist; pass the --workdir of a training run")
    paths = [workdir / CONFIG_FILE, workdir / META_FILE]
    for p in paths:
        if not p.exists():
            raise UsageError(f"{p} not found; is {workdir} the workdir of a `minigpt train` run?")
    try:
        return tuple(json.loads(p.read_text()) for p in paths)
    except json.JSONDecodeError as e:
        raise UsageError(
            f"{workdir} holds an unreadable run file ({e}); retrain or restore it"
        ) from None

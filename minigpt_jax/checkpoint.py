"""orbax checkpoints that resume exactly: latest k + best n, which step a spec names, and a
run's params restored onto a mesh (or one device).

Each step holds params, opt_state and a JSON meta (step, eval losses), params and opt_state as
separate items so either restores alone. The run folder around them is workdir.py's.
"""

from __future__ import annotations

import os
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from minigpt_jax import sharding
from minigpt_jax.errors import UsageError
from minigpt_jax.model import ModelConfig, abstract_params

CKPT_DIR = "checkpoints"
UNREADABLE = ".unreadable"


class Checkpointer:
    """Async orbax saves; params and opt_state are separate items so either restores alone."""

    def __init__(
        self,
        workdir: str | pathlib.Path,
        *,
        keep_latest: int = 2,
        keep_best: int = 1,
        create: bool = True,
    ):
        self.directory = pathlib.Path(workdir).absolute() / CKPT_DIR
        # Latest k and best n by val loss. (best_fn with max_to_keep can delete the newest step.)
        policy = checkpoint_managers.AnyPreservationPolicy(
            [
                checkpoint_managers.LatestN(keep_latest),
                checkpoint_managers.BestN(
                    get_metric_fn=lambda m: m["val_loss"],
                    reverse=True,  # lower is better
                    n=keep_best,
                    keep_checkpoints_without_metrics=False,
                ),
            ]
        )
        self.manager = ocp.CheckpointManager(
            self.directory,
            item_names=("params", "opt_state", "meta"),
            options=ocp.CheckpointManagerOptions(
                create=create, enable_async_checkpointing=True, preservation_policy=policy
            ),
        )

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Starts an async save; meta['val_loss'], when present, ranks the step for best-n."""
        val = meta.get("val_loss")
        self.manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(state.params),
                opt_state=ocp.args.StandardSave(state.opt_state),
                meta=ocp.args.JsonSave(meta),
            ),
            metrics=None if val is None else {"val_loss": val},
        )

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def step_dir(self, step: int) -> pathlib.Path:
        return self.directory / str(step)

    def read_meta(self, step: int) -> dict:
        out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return out.meta

    def best_step(self) -> int | None:
        """The step with the lowest val loss among the kept ones."""
        scored = []
        for step in self.steps():
            try:
                val = self.read_meta(step).get("val_loss")
            except Exception:  # an unreadable step cannot be the best one
                continue
            if val is not None:
                scored.append((val, step))
        return min(scored)[1] if scored else None

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

    def restore_newest_readable(
        self, abstract_state: Any, log: Callable[[str], None]
    ) -> tuple[int, Any, Any, dict] | None:
        """The newest step that restores. An unreadable step is reported and moved aside
        (renamed, never deleted) so that a later save of the same step number can proceed."""
        for step in reversed(self.steps()):
            try:
                return (step, *self.restore(step, abstract_state))
            except Exception as e:  # orbax / tensorstore raise many types for a damaged step
                src = self.step_dir(step)
                dst = src.with_name(f"{step}{UNREADABLE}-{int(time.time())}")
                reason = " ".join(str(e).split())[:200]
                log(f"checkpoint {src} is unreadable ({reason}); moved to {dst.name}, trying older")
                if jax.process_index() == 0:
                    os.replace(src, dst)
                if jax.process_count() > 1:
                    multihost_utils.sync_global_devices(f"moved {src}")
                self.manager.reload()
        return None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def resolve_step(ckpt: Checkpointer, spec: str) -> int:
    """The saved step that `--step best|latest|N` names, or a UsageError listing the saved ones."""
    steps = ckpt.steps()
    if not steps:
        raise UsageError(f"{ckpt.directory.parent} holds no checkpoint yet; train it first")
    if spec == "latest":
        return steps[-1]
    if spec == "best":
        step = ckpt.best_step()
        if step is None:
            raise UsageError(
                f"{ckpt.directory.parent} has no evaluated checkpoint; use --step latest"
            )
        return step
    if spec.isdigit() and int(spec) in steps:
        return int(spec)
    raise UsageError(f"--step must be best, latest or one of the saved steps {steps}")


def load_params(
    workdir: str | pathlib.Path, cfg: ModelConfig, spec: str = "latest", mesh: Any = None
) -> tuple[int, Any]:
    """(step, params) of a run's checkpoint, laid out over `mesh` (default: the first device)."""
    mesh = mesh or sharding.one_device_mesh()
    ckpt = Checkpointer(workdir, create=False)
    try:
        step = resolve_step(ckpt, spec)
        target = sharding.sharded_abstract(abstract_params(cfg), mesh)
        return step, ckpt.restore_params(step, target)
    finally:
        ckpt.close()

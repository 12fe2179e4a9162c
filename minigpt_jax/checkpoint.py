"""orbax checkpoints that resume exactly: latest k + best n, which step a spec names, and a
run's params restored onto a mesh (or one device).

Each step holds params, opt_state and a JSON meta (step, eval losses), params and opt_state as
separate items so either restores alone. The run folder around them is workdir.py's.
"""

from __future__ import annotations

import logging
import os
import pathlib
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from minigpt_jax import integrity, sharding
from minigpt_jax.errors import UsageError, one_line
from minigpt_jax.model import ModelConfig, abstract_params

CKPT_DIR = "checkpoints"
UNREADABLE = ".unreadable"


def _orbax_leftover(exc: BaseException | None, obj: Any = None) -> bool:
    """A failed save or restore ends orbax's event loop while tensorstore still has reads or
    writes in flight: each one's completion then fails on the closed loop, and its coroutines
    are collected unawaited (at teardown, too). Hundreds of tracebacks after the one line that
    says what happened; these, and only these, are dropped."""
    text = f"{exc!r} {obj!r}"
    return any(
        mark in text
        for mark in ("Event loop is closed", "_read_array_index_and_device_put",
                     "sys.meta_path is None")
    )  # fmt: skip


class _OrbaxNoise(logging.Filter):
    """orbax logs a failed save's traceback from each thread it passes through (60+ for a full
    disk) before the error reaches the main thread, where the command says it in one line;
    asyncio logs the same failure again for each of orbax's tasks nobody awaited any more; and
    orbax warns at every save without metrics, which ours between evals are on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        orbax = f"{os.sep}orbax{os.sep}"
        tb = record.exc_info[2] if record.exc_info else None
        through_orbax = orbax in record.pathname or any(
            orbax in frame.filename for frame in traceback.extract_tb(tb)
        )
        return not ((tb and through_orbax) or "did not provide metrics" in record.getMessage())


for _name in ("absl", "asyncio"):
    logging.getLogger(_name).addFilter(_OrbaxNoise())
# The same leftovers, when the interpreter finds them never awaited at exit (this package has no
# coroutines of its own: every one is orbax's or tensorstore's).
warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
_unraisable, _excepthook = sys.unraisablehook, sys.excepthook
sys.unraisablehook = lambda u: None if _orbax_leftover(u.exc_value, u.object) else _unraisable(u)
sys.excepthook = lambda t, v, tb: None if _orbax_leftover(v) else _excepthook(t, v, tb)


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
        # Latest k and best n by val loss. (best_fn with max_to_keep can delete the newest step;
        # best_fn alone only makes orbax write each step's metrics, so that a resumed run's
        # manager still knows which kept step is the best.)
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
                create=create,
                enable_async_checkpointing=True,
                preservation_policy=policy,
                best_fn=lambda m: m["val_loss"],
                best_mode="min",
            ),  # fmt: skip
        )

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Starts an async save of the state and its meta, sealed with the fingerprints of both
        (integrity.py); meta['val_loss'], when present, ranks the step for best-n."""
        val = meta.get("val_loss")
        meta = integrity.seal(meta, params=state.params, opt_state=state.opt_state)
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(state.params),
            opt_state=ocp.args.StandardSave(state.opt_state),
            meta=ocp.args.JsonSave(meta),
        )
        self.manager.save(step, args=args, metrics=None if val is None else {"val_loss": val})

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def step_dir(self, step: int) -> pathlib.Path:
        return self.directory / str(step)

    def read_meta(self, step: int) -> dict:
        """The step's meta, checked against its own fingerprint (DamagedStep if it differs)."""
        out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        integrity.check(out.meta)
        return out.meta

    def best_step(self, skip: frozenset[int] = frozenset()) -> int | None:
        """The step with the lowest val loss among the kept ones (but those in skip)."""
        scored = []
        for step in (s for s in self.steps() if s not in skip):
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
        integrity.check(out.meta, params=out.params, opt_state=out.opt_state)
        return out.params, out.opt_state, out.meta

    def restore_params(self, step: int, abstract_params: Any) -> Any:
        """The step's params alone, checked against their fingerprint."""
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract_params), meta=ocp.args.JsonRestore()
            ),
        )
        integrity.check(out.meta, params=out.params)
        return out.params

    def set_aside(self, step: int, error: Exception, log: Callable[[str], None]) -> None:
        """A damaged or unreadable step is reported and renamed (never deleted), so that the
        older steps serve and a later save of the same step number can proceed."""
        src = self.step_dir(step)
        dst = src.with_name(f"{step}{UNREADABLE}-{int(time.time())}")
        reason = one_line(error)[:200]
        log(f"checkpoint {src} is unreadable or damaged ({reason}); moved to {dst.name}")
        if jax.process_index() == 0:
            os.replace(src, dst)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"moved {src}")
        self.manager.reload()

    def restore_newest_readable(
        self, abstract_state: Any, log: Callable[[str], None]
    ) -> tuple[int, Any, Any, dict] | None:
        """The newest step that restores and matches its fingerprints; the others are set aside."""
        for step in reversed(self.steps()):
            try:
                restored = (step, *self.restore(step, abstract_state))
            except Exception as e:  # orbax / tensorstore raise many types for a damaged step
                self.set_aside(step, e, log)
                continue
            if integrity.KEY not in restored[3]:
                log(f"checkpoint {self.step_dir(step)} predates fingerprints: restored unverified")
            return restored
        return None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def resolve_step(ckpt: Checkpointer, spec: str, skip: frozenset[int] = frozenset()) -> int:
    """The saved step that `--step best|latest|N` names (steps in `skip` are passed over), or a
    UsageError listing the saved ones."""
    steps = [s for s in ckpt.steps() if s not in skip]
    if not steps:
        raise UsageError(f"{ckpt.directory.parent} holds no checkpoint that reads; train it first")
    if spec == "latest":
        return steps[-1]
    if spec == "best":
        step = ckpt.best_step(skip)
        if step is None:
            raise UsageError(
                f"{ckpt.directory.parent} has no evaluated checkpoint; use --step latest"
            )
        return step
    if spec.isdigit() and int(spec) in steps:
        return int(spec)
    raise UsageError(f"--step must be best, latest or one of the saved steps {steps}")


def load_params(
    workdir: str | pathlib.Path, cfg: ModelConfig, spec: str = "latest", mesh: Any = None, *,
    set_aside: bool = True, log: Callable[[str], None] = print,
) -> tuple[int, Any]:  # fmt: skip
    """(step, params) of a run's checkpoint, laid out over `mesh` (default: the first device).

    A step that is damaged is reported and, with set_aside (no live run holds the workdir),
    moved aside; then the next one `spec` names serves (latest: the one before; best: the next
    best; a number: none). A step that a live run deletes meanwhile is simply passed over.
    """
    mesh = mesh or sharding.one_device_mesh()
    target = sharding.sharded_abstract(abstract_params(cfg), mesh)
    ckpt = Checkpointer(workdir, create=False)
    skip: set[int] = set()
    try:
        while True:
            step = resolve_step(ckpt, spec, frozenset(skip))
            try:
                return step, ckpt.restore_params(step, target)
            except Exception as e:  # orbax / tensorstore raise many types for a damaged step
                gone = not ckpt.step_dir(step).exists()  # deleted by the run writing here
                if not gone and set_aside:
                    ckpt.set_aside(step, e, log)
                elif not gone:
                    where, why = ckpt.step_dir(step), one_line(e)[:200]
                    log(f"checkpoint {where} is unreadable or damaged ({why}); skipped (a live "
                        "run holds the workdir: not moved)")  # fmt: skip
                skip.add(step)
                ckpt.manager.reload()
                if spec.isdigit() and not gone:
                    raise UsageError(f"checkpoint {step} of {workdir} is damaged; pass another "
                                     "--step") from None  # fmt: skip
    finally:
        ckpt.close()

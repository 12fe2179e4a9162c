"""orbax checkpoints that resume exactly: latest k + best n, a workdir lock, and resume rules.

Each step holds params, opt_state and a JSON meta (step, eval losses, the resolved config and the
tokenizer), so any step is self-describing. config.json and meta.json sit beside, for humans.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import socket
import time
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from minigpt_jax.data import META_FILE, atomic_write_bytes
from minigpt_jax.errors import UsageError
from minigpt_jax.model import ModelConfig

CONFIG_FILE = "config.json"
CKPT_DIR = "checkpoints"
LOCK_FILE = ".lock"
UNREADABLE = ".unreadable"

# Fields a resume may not change: they fix the shapes of params, batches or the optimizer state.
FIXED_ON_RESUME = (
    "model.vocab_size",
    "model.block_size",
    "model.n_layer",
    "model.n_head",
    "model.n_embd",
    "model.bias",
    "model.bias_qkv",
    "model.bias_attn_proj",
    "model.bias_mlp",
    "model.bias_ln",
    "model.bias_head",
    "model.tie_embeddings",
    "model.arch",
    "train.batch_size",
    "train.grad_accum",
    "opt.decay_mask",
)


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
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"{workdir} holds an unreadable run file ({e}); retrain it") from None


def read_run(workdir: str | pathlib.Path) -> tuple[dict, dict, ModelConfig]:
    """(config, meta, ModelConfig) of a training run's workdir, for eval and sample."""
    config, meta = read_run_files(workdir)
    try:
        return config, meta, ModelConfig.from_dict(config["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise UsageError(f"{workdir}/config.json has a bad model section: {e}") from None


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        out.update(_flatten(value, name + ".") if isinstance(value, dict) else {name: value})
    return out


def config_changes(old: dict, new: dict) -> tuple[list[str], list[str]]:
    """(refused, allowed) differences between a run's saved config and a resume's config."""
    a, b = _flatten(old), _flatten(new)
    # A run saved before a model field existed ran with that field's default.
    defaults = {f"model.{f.name}": f.default for f in dataclasses.fields(ModelConfig)}
    a = {**{k: v for k, v in defaults.items() if k in b and k not in a}, **a}
    refused, allowed = [], []
    for key in sorted(a.keys() | b.keys()):
        if a.get(key) != b.get(key):
            line = f"{key}: {a.get(key)!r} -> {b.get(key)!r}"
            fixed = key in FIXED_ON_RESUME
            # Clipping on or off changes the optimizer state's structure; its value does not.
            fixed |= key == "opt.grad_clip" and (a.get(key, 0) > 0) != (b.get(key, 0) > 0)
            (refused if fixed else allowed).append(line)
    return refused, allowed


class WorkdirLock:
    """One run per workdir: a lock file holding pid and host; a dead owner's lock is taken over."""

    def __init__(self, workdir: str | pathlib.Path, log: Callable[[str], None]):
        self.path = pathlib.Path(workdir) / LOCK_FILE
        self.log = log
        self.owner = {"pid": os.getpid(), "host": socket.gethostname()}

    def __enter__(self) -> WorkdirLock:
        payload = json.dumps(self.owner).encode()
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = self._holder()
            if holder.get("host") == self.owner["host"] and not _alive(holder.get("pid")):
                self.log(f"taking over the stale lock {self.path} of dead pid {holder.get('pid')}")
                atomic_write_bytes(self.path, payload)
                return self
            raise UsageError(
                f"{self.path.parent} is in use by pid {holder.get('pid')} on "
                f"{holder.get('host')}; wait for that run, or delete {self.path} if it is gone"
            ) from None
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        return self

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # unreadable: refused below, as held by an unknown process

    def __exit__(self, *exc) -> None:
        if self._holder() == self.owner:
            self.path.unlink(missing_ok=True)


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def should_resume(
    ckpt: Checkpointer,
    init_from: str,
    overwrite: bool,
    resolved: dict,
    meta: dict,
    log: Callable[[str], None],
) -> bool:
    """Whether a run resumes from ckpt; refuses what would lose or mix runs, logs the allowed
    config changes. resolved and meta are the new run's config and tokenizer."""
    if not ckpt.steps():
        return False
    workdir = ckpt.directory.parent
    if init_from == "scratch":
        if not overwrite:
            raise UsageError(
                f"{workdir} holds checkpoints and init_from=scratch would replace them; pass "
                "--overwrite to discard them, or leave init_from=resume to continue the run"
            )
        return False
    saved_cfg, saved_meta = read_run_files(workdir)
    if saved_meta.get("itos") != meta.get("itos"):
        raise UsageError(
            f"the data in {resolved['data']['dir']} has another vocabulary than the run in "
            f"{workdir}; point --config.data.dir at the run's data"
        )
    refused, allowed = config_changes(saved_cfg, resolved)
    if refused:
        raise UsageError(
            f"cannot resume {workdir}: these fields differ from its config: {'; '.join(refused)}"
            " (use a new --workdir, or --config.train.init_from=scratch --overwrite)"
        )
    for line in allowed:
        log(f"config change on resume: {line}")
    return True

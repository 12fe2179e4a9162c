"""The run folder: one run per workdir (a lock), its config.json and meta.json beside the
checkpoints, whether a start resumes, and what a resume may change.

  workdir/config.json    the resolved config (vocab_size from the data)
  workdir/meta.json      the tokenizer
  workdir/checkpoints/   orbax steps (checkpoint.py)
  workdir/.lock          pid and host of the run writing here
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import pathlib
import shutil
import socket
from collections.abc import Callable
from typing import Any

from flax.traverse_util import flatten_dict

from minigpt_jax.checkpoint import CKPT_DIR, Checkpointer
from minigpt_jax.data import META_FILE
from minigpt_jax.errors import UsageError
from minigpt_jax.files import atomic_write_bytes
from minigpt_jax.metrics import METRICS_FILE
from minigpt_jax.model_config import ModelConfig

CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"

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


def config_changes(old: dict, new: dict) -> tuple[list[str], list[str]]:
    """(refused, allowed) differences between a run's saved config and a resume's config."""
    a, b = flatten_dict(old, sep="."), flatten_dict(new, sep=".")
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
    """One run per workdir: a lock file holding pid and host; a dead owner's lock is taken over.

    The owner also holds an exclusive flock on the file for the run's life. Reading a dead pid
    and then writing over it was a race (two processes both took the same stale lock); the
    kernel grants a flock to one open file at a time, so of N processes only one gets past it,
    and only the holder reads, judges and rewrites the file. A flock dies with its process, so
    a crash never leaves it held; the pid is still checked, for a lock kept by a process that
    holds no flock (one on another host). Local filesystems and NFSv4 support flock.
    """

    def __init__(self, workdir: str | pathlib.Path, log: Callable[[str], None]):
        self.path = pathlib.Path(workdir) / LOCK_FILE
        self.log = log
        self.owner = {"pid": os.getpid(), "host": socket.gethostname()}
        self._fd: int | None = None

    def __enter__(self) -> WorkdirLock:
        fd = self._flock()
        try:
            # An empty file under a free flock is stale too: its writer died before writing.
            holder = _parse(os.pread(fd, 4096, 0))
            mine = holder.get("host") == self.owner["host"]
            if holder and not (mine and not _alive(holder.get("pid"))):
                raise self._in_use(holder)
            if holder:
                self.log(f"taking over the stale lock {self.path} of dead pid {holder.get('pid')}")
            payload = json.dumps(self.owner).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, payload, 0)
            os.fsync(fd)
        except BaseException as e:
            if not isinstance(e, UsageError):
                self.path.unlink(missing_ok=True)  # ours (flocked), half-written: not a lock
            os.close(fd)
            raise
        self._fd = fd
        return self

    def _flock(self) -> int:
        """An fd of the lock file with the flock held; UsageError if a live process holds it."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise  # train says it in its one line for a full disk
                raise UsageError(f"cannot create {self.path} ({e.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise self._in_use(self._holder()) from None
                raise UsageError(
                    f"cannot lock {self.path} ({e.strerror}); put the workdir on a filesystem "
                    "with file locks (flock)"
                ) from None
            # The owner deletes the file before it lets go of the flock: if this fd's file is
            # no longer the one at the path, the lock was released meanwhile; start over.
            try:
                if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)

    def _in_use(self, holder: dict) -> UsageError:
        if not holder:  # its owner holds the flock and is writing its pid right now
            return UsageError(f"{self.path.parent} is in use by a run that is starting now")
        return UsageError(
            f"{self.path.parent} is in use by pid {holder.get('pid')} on "
            f"{holder.get('host')}; wait for that run, or delete {self.path} if it is gone"
        )

    def _holder(self) -> dict:
        try:
            return _parse(self.path.read_bytes())
        except OSError:
            return {}

    def __exit__(self, *exc) -> None:
        if self._fd is None:
            return
        try:
            if os.path.samestat(os.fstat(self._fd), os.stat(self.path)):
                self.path.unlink()
        except FileNotFoundError:
            pass
        finally:
            os.close(self._fd)  # releases the flock, after the file is gone
            self._fd = None


def _parse(raw: bytes) -> dict:
    """The owner a lock file names; {} if empty or unreadable."""
    try:
        holder = json.loads(raw)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


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


def discard_run(workdir: pathlib.Path) -> None:
    """--overwrite: the user asked to replace the run, so its checkpoints and records go."""
    shutil.rmtree(workdir / CKPT_DIR, ignore_errors=True)
    shutil.rmtree(workdir / "tb", ignore_errors=True)
    for name in (METRICS_FILE, "loss.png"):
        (workdir / name).unlink(missing_ok=True)

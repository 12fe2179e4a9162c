"""When the disk or a save fails: a full disk said in one line, and orbax shut down so that a
failed save neither hangs the exit nor leaves a half-written step behind.

orbax saves in background threads. When a save fails, its commit threads that wait for a
signal (the step folder exists) are never woken: each waits 300 s, and the interpreter waits
for every one of them at exit. close() releases them; the half-written step, a
`N.orbax-checkpoint-tmp*` folder that orbax never reads as a step, is removed.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import pathlib
import shutil
import threading
import time
from typing import Any

import jax
from orbax.checkpoint._src.futures import future as orbax_future

from minigpt_jax.checkpoint import CKPT_DIR, Checkpointer
from minigpt_jax.errors import UsageError

TMP_SUFFIX = ".orbax-checkpoint-tmp"
# Metadata files beside the arrays, and a margin for the filesystem's blocks.
SLACK_BYTES = 256 * 1024
RELEASE_TIMEOUT_S = 30.0


class NoRoom(OSError):
    """A save that the disk cannot hold; step_bytes is what one step takes."""

    def __init__(self, directory: pathlib.Path, step_bytes: int):
        super().__init__(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
        self.step_bytes = step_bytes


def check_directory(workdir: pathlib.Path) -> None:
    """A file where the checkpoints folder goes is refused now, not at the first save."""
    path = workdir / CKPT_DIR
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path} is a file, not a folder; move it away or pick another --workdir")


def is_disk_full(e: BaseException) -> bool:
    """ENOSPC or EDQUOT anywhere in e's chain: as an OSError, or in the text of tensorstore's
    RESOURCE_EXHAUSTED error that orbax raises."""
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(e)
        if "No space left on device" in text or "Disk quota exceeded" in text:
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def disk_full(workdir: str | pathlib.Path, step_bytes: int | None = None) -> UsageError:
    """The one line for a full disk; step_bytes (one checkpoint step) sizes what to free. By
    default, the newest step on disk."""
    if step_bytes is None:
        step_bytes = _newest_step_bytes(pathlib.Path(workdir) / CKPT_DIR)
    free = f"free {math.ceil(step_bytes / 1e6)} MB" if step_bytes else "free some space"
    return UsageError(
        f"the disk holding {workdir} is full: {free} or move the workdir (the checkpoints "
        "saved so far are intact; the same command resumes from the newest)"
    )


def ensure_room(ckpt: Checkpointer, state: Any) -> None:
    """Refuses a save that the disk cannot hold, before orbax writes a byte of it (a save that
    fails midway floods stderr from tensorstore's threads). One process only: with several,
    each would have to agree before the collective save; orbax's own error covers them."""
    if jax.process_count() > 1:
        return
    ckpt.wait()  # the save in flight takes its space first
    need = SLACK_BYTES + sum(
        getattr(x, "nbytes", 0) for x in jax.tree.leaves((state.params, state.opt_state))
    )
    where = ckpt.directory if ckpt.directory.exists() else ckpt.directory.parent
    if shutil.disk_usage(where).free < need:
        raise NoRoom(ckpt.directory, need)


def close(ckpt: Checkpointer) -> None:
    """Waits for the save in flight and closes ckpt. If that save failed, or one before it did,
    or the wait is cut short (Ctrl-C), orbax's threads are released before the error goes on.
    Half-written steps are removed: with no save in flight, none will ever be completed."""
    try:
        ckpt.wait()
    except BaseException:
        _abandon(ckpt)
        raise
    if _release_threads():  # left by a save that failed earlier (its error was raised then)
        _abandon(ckpt)
    else:
        remove_half_saves(ckpt.directory.parent)
        ckpt.close()


def _abandon(ckpt: Checkpointer) -> None:
    # The released threads never run their coroutines: checkpoint.py keeps that off stderr.
    _release_threads()
    with contextlib.suppress(Exception):  # the failed save's own error is already on its way
        ckpt.close()
    # A save cut short may still have tensorstore writes in flight, which can recreate its
    # folder: what is left then, the next run removes (remove_half_saves).
    remove_half_saves(ckpt.directory.parent)


def _release_threads() -> bool:
    """Cancels orbax's commit threads still alive and wakes those waiting for a signal, then
    joins them. Cancelling all first: a signal wakes every thread waiting for it, and one not
    yet cancelled would go on to write. True if there were any. This reaches into orbax 0.12's
    futures (pinned in constraints.txt); tests/train_test.py's hang tests catch a change."""
    threads = [
        t
        for t in threading.enumerate()
        if isinstance(t, orbax_future._SignalingThread) and t.is_alive()
    ]
    for t in threads:
        t.cancel()
    for t in threads:
        orbax_future.set_signals(t._receive_signals, operation_id=t._operation_id)
    deadline = time.monotonic() + RELEASE_TIMEOUT_S
    for t in threads:
        # Thread.join itself: _SignalingThread.join raises the cancellation.
        threading.Thread.join(t, max(deadline - time.monotonic(), 0))
    return bool(threads)


def remove_half_saves(workdir: pathlib.Path) -> None:
    """Removes the half-written steps of workdir: call it with the workdir locked and no save
    in flight. orbax ignores a tmp step folder, but on a full disk its space is what a run
    needs. One process only: with several, another may still be writing into it."""
    if jax.process_count() == 1:
        for path in (workdir / CKPT_DIR).glob(f"*{TMP_SUFFIX}*"):
            shutil.rmtree(path, ignore_errors=True)


def _newest_step_bytes(directory: pathlib.Path) -> int:
    steps = [p for p in directory.glob("*") if p.name.isdigit() and p.is_dir()]
    if not steps:
        return 0
    newest = max(steps, key=lambda p: int(p.name))
    return sum(f.stat().st_size for f in newest.rglob("*") if f.is_file())

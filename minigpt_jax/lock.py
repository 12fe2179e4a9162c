"""One run per workdir: an flock on workdir/.lock held for the run's life (pid and host written
inside for people), taken over atomically from a dead run, and probed by eval and sample."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pathlib
import socket
from collections.abc import Callable
from typing import Any

from minigpt_jax.errors import UsageError

LOCK_FILE = ".lock"


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


def in_use(workdir: str | pathlib.Path) -> bool:
    """Whether a live process holds the workdir's lock (a run is writing there): its flock is
    taken. Probing takes the flock for a moment and lets it go; it never writes the file."""
    try:
        fd = os.open(pathlib.Path(workdir) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False  # no lock file: nobody is running there
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        return e.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
    finally:
        os.close(fd)  # closing releases a flock this probe took
    return False


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

"""Files without ML: atomic writes, reading a text, making folders, checking an output path.

Every failure a user can cause is a one-line UsageError; a write is whole or absent, never half.
"""

from __future__ import annotations

import os
import pathlib
import tempfile

from minigpt_jax.errors import UsageError


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    """Writes a file so that readers see the old content or the new, never half."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, umasked(0o666))  # mkstemp makes 0600; give the file normal permissions
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def umasked(mode: int) -> int:
    """The permissions a plain open() or mkdir() would give: mode less the process umask
    (mkstemp and mkdtemp make 0600 / 0700 files and folders, private by design)."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def read_text(path: str | os.PathLike) -> str:
    """Reads a UTF-8 text, turning every way it can be wrong into a UsageError."""
    p = pathlib.Path(path)
    if not p.exists():
        raise UsageError(f"input file {p} does not exist; pass an existing UTF-8 text file")
    if p.is_dir():
        raise UsageError(f"input {p} is a directory; pass a UTF-8 text file")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(
            f"input file {p} is not UTF-8 (byte {e.start}); convert it, e.g. iconv -t UTF-8"
        ) from None
    except OSError as e:
        raise UsageError(
            f"cannot read input file {p} ({e.strerror}); check its permissions"
        ) from None
    if not text:
        raise UsageError(f"input file {p} is empty; pass a text corpus")
    return text


def make_dir(path: str | os.PathLike, flag: str) -> None:
    """mkdir -p of a folder the caller will write in, with every way it can fail (a file, a
    read-only mount, no permission) said in one line naming the flag."""
    path = pathlib.Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path} is a file; pass a directory as {flag}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create {path} ({e.strerror}); pick another {flag}") from None
    # An existing folder may refuse writes (a read-only mount): found now, not mid-run. A probe
    # file does what the run will do; os.access would answer yes to root whatever the mode.
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(
            f"cannot write to {path} ({e.strerror}); make it writable or pick another {flag}"
        ) from None


def out_path(out: str | os.PathLike | None, flag: str = "--out") -> pathlib.Path | None:
    """An output file checked before any work: its folder must exist; it must not be a folder."""
    if out is None:
        return None
    path = pathlib.Path(out)
    if path.is_dir() or not path.absolute().parent.is_dir():
        what = "is a directory" if path.is_dir() else f"needs the folder {path.parent} to exist"
        raise UsageError(f"{flag} {out} {what}; pass a file path in an existing folder")
    return path

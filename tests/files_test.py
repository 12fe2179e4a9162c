"""minigpt_jax.files: atomic writes, reading a text, making folders, checking an output path."""

import errno
import os
import pathlib
import stat

import pytest

from minigpt_jax import files
from minigpt_jax.errors import UsageError


def _umask(mask: int):
    """Sets the process umask and returns a function that puts the old one back."""
    old = os.umask(mask)
    return lambda: os.umask(old)


def test_atomic_write_creates_a_new_file_with_the_payload(tmp_path):
    path = tmp_path / "new.bin"
    files.atomic_write_bytes(path, b"\x00payload\xff")
    assert path.read_bytes() == b"\x00payload\xff"
    assert os.listdir(tmp_path) == ["new.bin"]  # no temp file left behind


def test_atomic_write_replaces_the_content_whole(tmp_path):
    """A shorter payload leaves no tail of the longer old content."""
    path = tmp_path / "f.txt"
    path.write_bytes(b"old content that is long")
    files.atomic_write_bytes(str(path), b"new")  # a str path works too
    assert path.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["f.txt"]


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_atomic_write_leaves_old_content_when_the_write_fails(tmp_path, monkeypatch, step):
    path = tmp_path / "f.txt"
    path.write_bytes(b"old")

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, step, boom)
    with pytest.raises(OSError, match="No space left"):
        files.atomic_write_bytes(path, b"new content")
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.txt"]  # the temp file is removed


def test_atomic_write_removes_its_temp_file_on_keyboard_interrupt(tmp_path, monkeypatch):
    """Ctrl-C mid-write (a BaseException, not an Exception) cleans up too."""
    path = tmp_path / "f.txt"

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        files.atomic_write_bytes(path, b"new")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_atomic_write_gives_normal_permissions_not_mkstemps_0600(tmp_path, mask):
    restore = _umask(mask)
    try:
        files.atomic_write_bytes(tmp_path / "f.txt", b"x")
    finally:
        restore()
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o666 & ~mask


def test_atomic_write_leaves_the_umask_as_it_was(tmp_path):
    """It reads the umask by setting it; the old value must be put back."""
    restore = _umask(0o027)
    try:
        files.atomic_write_bytes(tmp_path / "f.txt", b"x")
        assert os.umask(0o027) == 0o027
    finally:
        restore()


def test_read_text_round_trips_utf8(tmp_path):
    text = "First Citizen:\nBefore we proceed — any further, hear me speak. ø€\n"
    path = tmp_path / "in.txt"
    path.write_bytes(text.encode("utf-8"))
    assert files.read_text(path) == text
    assert files.read_text(str(path)) == text


def _bad_text(tmp_path: pathlib.Path, kind: str) -> pathlib.Path:
    path = tmp_path / "in.txt"
    if kind == "directory":
        path.mkdir()
    elif kind == "not UTF-8":
        path.write_bytes(b"abc\xff\xfe")
    elif kind == "empty":
        path.write_bytes(b"")
    return path  # "missing": never created


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", "does not exist"),
        ("directory", "is a directory"),
        ("not UTF-8", r"is not UTF-8 \(byte 3\)"),
        ("empty", "is empty"),
    ],
)
def test_read_text_bad_input_is_a_one_line_usage_error(tmp_path, kind, message):
    path = _bad_text(tmp_path, kind)
    with pytest.raises(UsageError, match=message) as info:
        files.read_text(path)
    text = str(info.value)
    assert str(path) in text and "\n" not in text
    err = info.value  # no chained traceback: the CLI prints only this line
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)


def test_make_dir_creates_missing_parents_and_accepts_an_existing_dir(tmp_path):
    path = tmp_path / "a" / "b" / "c"
    files.make_dir(path, "--workdir")
    assert path.is_dir()
    (path / "keep.txt").write_text("x")
    files.make_dir(str(path), "--workdir")  # again: no error, contents untouched
    assert (path / "keep.txt").read_text() == "x"


def test_make_dir_on_a_file_is_a_usage_error_naming_the_flag(tmp_path):
    path = tmp_path / "afile"
    path.write_text("x")
    with pytest.raises(UsageError, match="is a file; pass a directory as --workdir"):
        files.make_dir(path, "--workdir")
    assert path.read_text() == "x"


def test_make_dir_under_a_file_is_a_usage_error_naming_the_flag(tmp_path):
    """mkdir's own OSError (a parent that is a file) becomes one line naming the flag."""
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UsageError, match="cannot create .*; pick another --out") as info:
        files.make_dir(tmp_path / "afile" / "sub", "--out")
    assert "\n" not in str(info.value)


def test_make_dir_on_a_dir_that_cannot_be_written_is_a_usage_error(tmp_path, monkeypatch):
    """An existing folder on a read-only mount. Tests run as root, where chmod a-w stops no
    write, so the fault is injected where files are opened (chmod too, for other users)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    opened = os.open

    def read_only_open(path, flags, *args, **kw):
        if os.path.dirname(os.path.abspath(path)) == str(ro) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return opened(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", read_only_open)
    try:
        with pytest.raises(UsageError, match="cannot write to .*ro \\(Read-only file system\\); "):
            files.make_dir(ro, "--workdir")
    finally:
        ro.chmod(0o755)
    assert list(ro.iterdir()) == []


def test_out_path_none_is_none():
    assert files.out_path(None) is None


def test_out_path_returns_a_path_in_an_existing_folder(tmp_path, monkeypatch):
    got = files.out_path(str(tmp_path / "out.json"))
    assert isinstance(got, pathlib.Path) and got == tmp_path / "out.json"
    monkeypatch.chdir(tmp_path)  # a bare name lives in the current folder, which exists
    assert files.out_path("out.json") == pathlib.Path("out.json")


def test_out_path_that_is_a_directory_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match=r"^--out .* is a directory; pass a file path"):
        files.out_path(tmp_path)


def test_out_path_in_a_missing_folder_is_a_usage_error_naming_the_flag(tmp_path):
    out = tmp_path / "nope" / "out.json"
    with pytest.raises(UsageError, match=r"^--report .*needs the folder .*nope to exist"):
        files.out_path(out, flag="--report")
    assert not (tmp_path / "nope").exists()  # checked, not created

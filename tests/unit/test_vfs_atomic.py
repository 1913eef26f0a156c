"""``FileSystem.atomic_writer``: a new file written as a stream appears whole or not at all, is
fsynced before its rename and its directory after, and a failure anywhere (the caller's block, a
write, the fsync, the rename) leaves the target as it was and no temporary file behind."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from halodb.errors import OperationalError
from halodb.vfs import AtomicFile, File, FileSystem


class Recording(FileSystem):
    """Records the durability steps, and fails the ``fail_write``-th write of a temporary file
    with ENOSPC (after writing part of it, as a full disk does)."""

    def __init__(self, *, fail_write: int = 0, fail: str = "") -> None:
        self.calls: list[str] = []
        self.fail_write = fail_write
        self.fail = fail
        self.writes = 0

    def create_temporary(self, directory: str, prefix: str) -> File:
        handle = super().create_temporary(directory, prefix)
        self.calls.append("create")
        return _Watched(self, handle.path, handle.fd)

    def rename(self, src: str, dst: str) -> None:
        self.calls.append("rename")
        if self.fail == "rename":
            raise OperationalError("renaming failed (injected)") from OSError(errno.EIO, "EIO")
        super().rename(src, dst)

    def sync_dir(self, path: str) -> None:
        self.calls.append("sync_dir")
        super().sync_dir(path)


class _Watched(File):
    __slots__ = ()

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        fs = self.fs
        assert isinstance(fs, Recording)
        fs.writes += 1
        fs.calls.append("write")
        if fs.writes == fs.fail_write:
            super().write_at(offset, bytes(data)[: len(data) // 2])
            cause = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            raise OperationalError(f"writing {self.path!r} failed: {cause.strerror}") from cause
        super().write_at(offset, data)

    def sync(self) -> None:
        fs = self.fs
        assert isinstance(fs, Recording)
        fs.calls.append("sync")
        if fs.fail == "sync":
            raise OperationalError("syncing failed (injected)") from OSError(errno.EIO, "EIO")
        super().sync()


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_the_content_appears_whole_private_and_with_no_temporary_left(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    chunk = b"x" * 1000 + b"\n"
    with FileSystem().atomic_writer(str(target)) as out:
        assert isinstance(out, AtomicFile)
        assert Path(out.path).parent == tmp_path and out.path.endswith(".tmp")
        for _ in range(200):  # several buffers' worth
            assert out.write(chunk) == len(chunk)
        assert not target.exists()  # not before the block ends
    assert target.read_bytes() == chunk * 200
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert _listing(tmp_path) == ["out.jsonl"]


def test_it_fsyncs_the_file_before_the_rename_and_the_directory_after(tmp_path: Path) -> None:
    fs = Recording()
    with fs.atomic_writer(str(tmp_path / "f")) as out:
        out.write(b"data")
    assert fs.calls == ["create", "write", "sync", "rename", "sync_dir"]


def test_it_replaces_an_existing_file_and_an_empty_block_writes_an_empty_file(
    tmp_path: Path,
) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    with FileSystem().atomic_writer(str(target)) as out:
        out.write(b"new")
    assert target.read_bytes() == b"new"
    with FileSystem().atomic_writer(str(target)):
        pass
    assert target.read_bytes() == b""
    assert _listing(tmp_path) == ["f"]


@pytest.mark.parametrize("existing", [False, True])
def test_an_exception_in_the_middle_leaves_the_target_untouched_and_no_temporary(
    tmp_path: Path, existing: bool
) -> None:
    target = tmp_path / "f"
    if existing:
        target.write_bytes(b"old")

    class Stop(Exception):
        pass

    with pytest.raises(Stop), FileSystem().atomic_writer(str(target)) as out:
        out.write(b"a" * (AtomicFile.BUFFER_SIZE * 3))  # some of it reached the temporary file
        raise Stop
    assert _listing(tmp_path) == (["f"] if existing else [])
    if existing:
        assert target.read_bytes() == b"old"


@pytest.mark.parametrize("existing", [False, True])
def test_a_write_failing_in_the_middle_leaves_nothing_at_the_target_and_no_temporary(
    tmp_path: Path, existing: bool
) -> None:
    target = tmp_path / "f"
    if existing:
        target.write_bytes(b"old")
    fs = Recording(fail_write=3)
    with (
        pytest.raises(OperationalError, match="No space left") as info,
        fs.atomic_writer(str(target)) as out,
    ):
        for _ in range(10):
            out.write(b"b" * AtomicFile.BUFFER_SIZE)
    assert isinstance(info.value.__cause__, OSError)
    assert "rename" not in fs.calls
    assert _listing(tmp_path) == (["f"] if existing else [])
    if existing:
        assert target.read_bytes() == b"old"


@pytest.mark.parametrize("fail", ["sync", "rename"])
def test_a_failed_fsync_or_rename_leaves_the_target_untouched_and_no_temporary(
    tmp_path: Path, fail: str
) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    with (
        pytest.raises(OperationalError, match="injected"),
        Recording(fail=fail).atomic_writer(str(target)) as out,
    ):
        out.write(b"new")
    assert _listing(tmp_path) == ["f"]
    assert target.read_bytes() == b"old"


def test_a_directory_at_the_target_is_an_operational_error_and_stays(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with (
        pytest.raises(OperationalError) as info,
        FileSystem().atomic_writer(str(tmp_path / "d")) as out,
    ):
        out.write(b"x")
    assert isinstance(info.value.__cause__, IsADirectoryError)
    assert _listing(tmp_path) == ["d"]


def test_a_missing_directory_is_an_operational_error(tmp_path: Path) -> None:
    with (
        pytest.raises(OperationalError) as info,
        FileSystem().atomic_writer(str(tmp_path / "missing" / "f")),
    ):
        pass
    assert isinstance(info.value.__cause__, FileNotFoundError)
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("planted", ["symlink", "dangling symlink", "directory"])
def test_whatever_sits_at_the_obvious_temporary_name_is_neither_used_nor_removed(
    tmp_path: Path, planted: str
) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"secret")
    obvious = tmp_path / "f.tmp"
    if planted == "symlink":
        obvious.symlink_to(outside)
    elif planted == "dangling symlink":
        obvious.symlink_to(tmp_path / "nowhere")
    else:
        obvious.mkdir()
    with FileSystem().atomic_writer(str(tmp_path / "f")) as out:
        out.write(b"mine")
    assert (tmp_path / "f").read_bytes() == b"mine"
    assert outside.read_bytes() == b"secret"
    assert obvious.is_symlink() or obvious.is_dir()
    assert _listing(tmp_path) == ["f", "f.tmp", "outside"]


def test_temporary_names_are_fresh_each_time(tmp_path: Path) -> None:
    fs = FileSystem()
    names = set()
    for _ in range(20):
        handle = fs.create_temporary(str(tmp_path), "f")
        names.add(os.path.basename(handle.path))
        handle.close()
    assert len(names) == 20
    assert all(name.startswith("f.") and name.endswith(".tmp") for name in names)

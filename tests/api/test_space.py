"""Space comes back: free pages are reused lowest first and the free end of a tree file is cut
off, so a store that shrinks gives its disk space back; ``stats()`` tells the bytes on disk and
the bytes of live data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import halodb
from halodb.vfs import File, FileSystem

OPTIONS: dict[str, Any] = {"partitions": 1, "page_size": 1024, "background": False}


def _on_disk(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def test_stats_tell_the_bytes_on_disk_and_of_live_data(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with halodb.open(path, partitions=2, page_size=1024) as db:
        db.update({f"k{i:05d}": "v" * 200 for i in range(3000)})
        db.flush()
        db.update({f"k{i:05d}": "w" for i in range(100)})  # in the logs and memtables
        stats = db.stats()
        assert stats.file_bytes == _on_disk(path)
        assert stats.file_bytes == sum(p.file_bytes for p in stats.partitions) + 62
        for part in stats.partitions:
            tree = path / f"p{part.index:03d}.tree"
            assert 0 < part.live_bytes < tree.stat().st_size
            assert part.live_bytes % 1024 == 0
        assert stats.live_bytes == sum(p.live_bytes for p in stats.partitions)
        assert stats.live_bytes > 3000 * 200


def test_a_cleared_store_gives_its_space_back(tmp_path: Path) -> None:
    path = tmp_path / "s"
    db = halodb.open(path, **OPTIONS)
    db.update({f"k{i:05d}": "v" * 200 for i in range(5000)})
    db.flush()
    full = db.stats()
    assert full.file_bytes > 1_000_000
    db.clear()
    db.flush()
    for i in range(3):  # each merge takes the free list lower and cuts what is above it
        db[f"x{i}"] = i
        db.flush()
    small = db.stats()
    assert (path / "p000.tree").stat().st_size <= 16 * 1024
    assert small.file_bytes < full.file_bytes // 20
    assert small.live_bytes <= 4 * 1024
    db.check()
    db.close()
    with halodb.open(path, **OPTIONS) as db:
        assert dict(db.items()) == {"x0": 0, "x1": 1, "x2": 2}
        db.check()


def test_deleted_data_leaves_free_pages_that_new_data_reuses(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with halodb.open(path, **OPTIONS) as db:
        db.update({f"k{i:05d}": "v" * 200 for i in range(5000)})
        db.flush()
        for i in range(0, 5000, 2):
            del db[f"k{i:05d}"]
        db.flush()
        size = (path / "p000.tree").stat().st_size
        assert db.stats().partitions[0].free_pages > 0
        db.update({f"k{i:05d}": "n" * 200 for i in range(0, 2000, 2)})
        db.flush()
        # The new data went into free pages: the file grew by far less than its size.
        assert (path / "p000.tree").stat().st_size < size + 1000 * 230 // 2
        db.check()


def _punch_works(path: Path) -> bool:
    """Whether the file system under ``path`` gives a punched range's blocks back."""
    probe = path / "probe"
    probe.write_bytes(os.urandom(1 << 20))
    handle = FileSystem().open(str(probe), write=True)
    try:
        os.fsync(handle.fd)
        before = os.stat(probe).st_blocks
        punched = handle.punch(0, 1 << 19)
        return punched and os.stat(probe).st_blocks < before
    finally:
        handle.close()
        probe.unlink()


def test_a_clean_close_gives_the_free_pages_blocks_back(tmp_path: Path) -> None:
    if not _punch_works(tmp_path):
        pytest.skip("the file system here keeps punched blocks")
    path = tmp_path / "s"
    values = {f"k{i:05d}": "v" * 200 for i in range(5000)}
    with halodb.open(path, **OPTIONS, compact_threshold=None) as db:
        db.update(values)
        db.flush()
        db.update({f"k{i:05d}": "w" * 200 for i in range(0, 5000, 2)})  # frees pages below
        db.flush()
        free = db.stats().partitions[0].free_pages
        assert free > 100
    tree = path / "p000.tree"
    allocated = os.stat(tree).st_blocks * 512
    assert allocated <= tree.stat().st_size - free * 1024 // 2
    with halodb.open(path, **OPTIONS) as db:
        db.check()
        assert dict(db.items()) == values | {f"k{i:05d}": "w" * 200 for i in range(0, 5000, 2)}
        db.update({f"x{i}": "n" * 200 for i in range(2000)})  # the holes are written again
        db.flush()
        db.check()


def test_a_failure_to_give_blocks_back_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Giving free pages' blocks back is best effort: an error is logged, the close goes on."""

    class RefusingFile(File):
        __slots__ = ()

        def punch(self, offset: int, size: int) -> bool:
            raise halodb.OperationalError(f"giving space of {self.path!r} back failed: EIO")

    class Refusing(FileSystem):
        def open(self, path: str, *, write: bool = False, create: bool = False) -> File:
            handle = super().open(path, write=write, create=create)
            handle.__class__ = RefusingFile
            return handle

    path = tmp_path / "s"
    values = {f"k{i:05d}": "v" * 200 for i in range(3000)}
    with halodb.open(path, **OPTIONS, filesystem=Refusing()) as db:
        db.update(values)
        db.flush()
        db.update({key: "w" for key in list(values)[::2]})
        db.flush()  # (its merge frees pages, which the close gives back)
    assert "giving space" in caplog.text
    with halodb.open(path, **OPTIONS) as db:
        assert dict(db.items()) == values | {key: "w" for key in list(values)[::2]}
        db.check()

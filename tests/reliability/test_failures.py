"""Failures injected through the filesystem seam: a failed write or fsync stops all further
writes and loses nothing acknowledged; an interrupted meta-page write is settled by the disk;
options that are refused leave the disk untouched."""

from __future__ import annotations

import contextlib
import errno
from pathlib import Path
from typing import NoReturn

import pytest

import halodb
import halodb.pager
import halodb.store
from halodb import format as fmt
from halodb import testing
from halodb.vfs import File, FileSystem
from support.stores import DurabilityName


class _Faulty(FileSystem):
    """Fails (OSError) or interrupts the n-th write or fsync of files ending in ``suffix``."""

    def __init__(self) -> None:
        self.suffix = ""
        self.op = ""
        self.countdown = -1
        self.error: BaseException = OSError(errno.EIO, "injected I/O error")
        self.below: int | None = None
        """Count only writes that start below this offset (the meta pages, say)."""

    def arm(self, suffix: str, op: str, nth: int, error: BaseException | None = None) -> None:
        self.suffix, self.op, self.countdown = suffix, op, nth
        if error is not None:
            self.error = error

    def fire(self, path: str, op: str) -> None:
        if self.countdown > 0 and op == self.op and path.endswith(self.suffix):
            self.countdown -= 1
            if self.countdown == 0:
                raise self.error

    def open(self, path: str, *, write: bool = False, create: bool = False) -> File:
        handle = super().open(path, write=write, create=create)
        return _FaultyFile(self, handle.path, handle.fd)


class _FaultyFile(File):
    __slots__ = ()

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        assert isinstance(self.fs, _Faulty)
        try:
            if self.fs.below is None or offset < self.fs.below:
                self.fs.fire(self.path, "write")
        except OSError as exc:
            raise halodb.OperationalError(f"writing {self.path}: {exc}") from exc
        super().write_at(offset, data)

    def sync(self) -> None:
        assert isinstance(self.fs, _Faulty)
        try:
            self.fs.fire(self.path, "sync")
        except OSError as exc:
            raise halodb.OperationalError(f"syncing {self.path}: {exc}") from exc
        super().sync()


@pytest.mark.parametrize(
    ("durability", "suffix", "op"),
    [
        ("normal", ".wal", "write"),
        ("full", ".wal", "sync"),
        ("normal", ".tree", "write"),
        ("normal", ".tree", "sync"),
        ("fast", ".wal", "write"),
    ],
)
def test_a_failed_write_or_fsync_stops_all_writes_and_loses_nothing_acknowledged(
    tmp_path: Path, durability: DurabilityName, suffix: str, op: str
) -> None:
    fs = _Faulty()
    path = tmp_path / "s"
    db = halodb.open(
        path,
        filesystem=fs,
        durability=durability,
        partitions=2,
        page_size=1024,
        memtable_size=64 * 1024,
        fast_buffer_size=4096,
    )
    acknowledged: dict[int, str] = {}
    fs.arm(suffix, op, 1)
    failed_at = None
    for i in range(5000):
        try:
            if i % 50 == 49:
                db.flush()
            else:
                db[i] = f"value {i}" * 3
                acknowledged[i] = f"value {i}" * 3
        except halodb.OperationalError as exc:
            assert isinstance(exc.__cause__, OSError) or "refuses" in str(exc)
            failed_at = i
            break
    assert failed_at is not None, "the injected fault never fired"
    # every later write is refused, reads still work
    with pytest.raises(halodb.OperationalError, match="refuses writes"):
        db["after"] = 1
    with pytest.raises(halodb.OperationalError, match="refuses writes"), db.batch() as b:
        b["x"] = 1
    with pytest.raises(halodb.OperationalError, match="refuses writes"):
        db.flush()
    for key in list(acknowledged)[:50]:
        assert db[key] == acknowledged[key]
    db.close()
    # after the fault is gone, everything acknowledged is there (fast mode may lose the last
    # writes, but only whole ones, and never ones before those it kept)
    with halodb.open(path) as again:
        again.check()
        got = dict(again.items())
        assert "after" not in got and "x" not in got
        if durability == "fast":
            assert all(got[k] == v for k, v in acknowledged.items() if k in got)
        else:
            assert {k: got.get(k) for k in acknowledged} == acknowledged
            assert set(got) <= set(acknowledged) | {failed_at}


def _flushed_then_changed(
    tmp_path: Path,
) -> tuple[_Faulty, Path, halodb.Store, dict[int, str]]:
    """A one-partition store on a ``_Faulty`` disk: 400 keys flushed, then a third of them
    changed in the memtable (the next flush rewrites leaves and commits); and its model."""
    fs = _Faulty()
    path = tmp_path / "s"
    db = halodb.open(path, filesystem=fs, partitions=1, page_size=1024)
    model = {i: "v" * (i % 200) for i in range(400)}
    db.update(model)
    db.flush()
    for i in range(0, 400, 3):
        model[i] = "changed"
        db[i] = "changed"
    return fs, path, db, model


@pytest.mark.parametrize("which", ["meta write", "meta sync"])
def test_an_interrupt_while_the_meta_page_is_written_is_settled_by_the_disk(
    tmp_path: Path, which: str
) -> None:
    """Interrupted between writing the meta page and knowing it is durable, a flush may or may
    not be committed: the pager reads the disk back, and the store goes on consistently."""
    fs, path, db, model = _flushed_then_changed(tmp_path)
    # a flush writes its pages, then syncs; writes the meta page, then syncs again: the meta
    # page is the last write, and the second sync the last sync, before the bloom filter's
    pager = testing.engine(db).parts[0].pager
    original_commit = pager.commit

    def commit(**kwargs: int) -> None:
        fs.arm(
            ".tree",
            "write" if which == "meta write" else "sync",
            1 if which == "meta write" else 2,
            KeyboardInterrupt(),
        )
        fs.below = 2 * 1024  # the meta pages: not the pages and free list written before
        original_commit(**kwargs)

    pager.commit = commit  # type: ignore[method-assign]
    with contextlib.suppress(KeyboardInterrupt):
        db.flush()
    pager.commit = original_commit  # type: ignore[method-assign]
    assert fs.countdown == 0, "the interrupt never fired"
    assert dict(db.items()) == model
    on_disk = halodb.pager.Pager(FileSystem(), pager.path, 0, 1024, 16, True)
    try:
        assert on_disk.meta == pager.meta
    finally:
        on_disk.close()
    db[1000] = "after"
    model[1000] = "after"
    db.flush()
    db.check()
    db.close()
    with halodb.open(path) as again:
        again.check()
        assert dict(again.items()) == model


class _Named:
    def __init__(self, name: object) -> None:
        self.name = name

    def encode(self, value: object) -> bytes:
        return b""

    def decode(self, data: bytes) -> object:
        return data


@pytest.mark.parametrize("name", ["", "x" * 17, "é", None, 5])
def test_a_bad_codec_name_is_refused_before_the_disk_is_touched(
    tmp_path: Path, name: object
) -> None:
    path = tmp_path / "s"
    with pytest.raises(halodb.InterfaceError, match="name"):
        halodb.open(path, value_codec=_Named(name))  # type: ignore[arg-type]
    assert not path.exists()


def test_a_value_over_the_size_limit_is_refused_with_nothing_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real limit is 2 GiB - 1; lowered here."""
    monkeypatch.setattr(halodb.store, "MAX_VALUE_SIZE", 100)
    with halodb.open(tmp_path / "s", partitions=1) as db:
        db["ok"] = "x" * 50
        wal = db.stats().partitions[0].wal_bytes
        with pytest.raises(halodb.DataError, match="limit"):
            db["big"] = "x" * 200
        with pytest.raises(halodb.DataError, match="limit"), db.batch() as b:
            b["big"] = "x" * 200
        assert db.stats().partitions[0].wal_bytes == wal
        assert dict(db.items()) == {"ok": "x" * 50}
    assert (tmp_path / "s" / fmt.partition_file(0, "wal")).exists()


def test_an_interrupted_commit_the_disk_cannot_settle_stops_all_writes(tmp_path: Path) -> None:
    """Interrupted at its meta-page write, a commit is settled by reading the file back; if that
    read fails too, memory keeps the old tree while the file may hold the new one: the store
    writes nothing more (even though an interrupt alone is not a failure), reads stay right,
    and a reopen settles it."""
    fs, path, db, model = _flushed_then_changed(tmp_path)
    pager = testing.engine(db).parts[0].pager
    original_commit = pager.commit

    def commit(**kwargs: int) -> None:
        fs.arm(".tree", "write", 1, KeyboardInterrupt())
        fs.below = 2 * 1024  # the meta page write
        original_commit(**kwargs)

    def unreadable() -> NoReturn:
        raise halodb.OperationalError("injected: the meta pages cannot be read back")

    pager.commit = commit  # type: ignore[method-assign]
    pager.read_meta = unreadable  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        db.flush()
    assert pager.unsettled
    with pytest.raises(halodb.OperationalError, match="refuses writes"):
        db["later"] = "x"
    assert dict(db.items()) == model
    db.close()
    with halodb.open(path) as again:
        again.check()
        assert dict(again.items()) == model

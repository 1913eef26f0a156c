"""Promises the docs make that no other test pins: torn-tail handling on open, batch records
naming impossible partitions, file modes and symlinks, a failed open releasing everything,
group commit, and the order of a new file's steps."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import pytest

import halodb
import halodb.testing
from halodb import format as fmt
from halodb.vfs import File, FileSystem
from halodb.wal import encode_batch, frame


def _abandon(db: halodb.Store) -> None:
    """Close without flushing, leaving the logs as a crash would."""
    halodb.testing.abandon(db)


def test_a_torn_tail_is_cut_by_a_writable_open_and_left_alone_by_a_read_only_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s"
    db = halodb.open(path, partitions=1)
    db["a"] = 1
    _abandon(db)
    wal = path / fmt.partition_file(0, "wal")
    good = wal.read_bytes()
    half = frame(fmt.REC_WRITE, 10**6, b"\x00" + b"x" * 60)[:40]
    wal.write_bytes(good + half)
    with halodb.open(path, readonly=True) as db:
        assert dict(db.items()) == {"a": 1}
    assert wal.read_bytes() == good + half  # read-only: not a byte changed
    db = halodb.open(path)
    assert wal.read_bytes() == good  # cut after the last good record
    db["b"] = 2
    _abandon(db)  # a second crash, after writing past the cut
    with halodb.open(path) as db:
        assert dict(db.items()) == {"a": 1, "b": 2}
        db.check()


@pytest.mark.parametrize("named", [(1, 2), (0, 9), (0,)])
def test_a_batch_record_naming_impossible_partitions_is_damage(
    tmp_path: Path, named: tuple[int, ...]
) -> None:
    """A correctly checksummed batch part in p000's log that does not name p000, names a
    partition the store does not have, or names a single partition."""
    path = tmp_path / "s"
    db = halodb.open(path, partitions=4)
    db["a"] = 1
    _abandon(db)
    wal = path / fmt.partition_file(0, "wal")
    wal.write_bytes(
        wal.read_bytes() + frame(fmt.REC_BATCH, 10**6, encode_batch(named, 0, [(b"k", b"v")]))
    )
    with pytest.raises(halodb.CorruptionError):
        halodb.open(path)


def test_files_are_private_and_planted_symlinks_are_not_followed(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = tmp_path / "s"
        with halodb.open(path) as db:
            db["a"] = 1
            db.flush()
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
        for child in path.iterdir():
            assert stat.S_IMODE(child.stat().st_mode) == 0o600, child.name
    finally:
        os.umask(old)
    target = tmp_path / "elsewhere"
    target.write_bytes(b"not yours")
    wal = path / fmt.partition_file(0, "wal")
    wal.unlink()
    wal.symlink_to(target)
    with pytest.raises(halodb.Error):
        halodb.open(path)
    assert target.read_bytes() == b"not yours"


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc")
@pytest.mark.parametrize("damage", ["tree meta pages", "batch record"])
def test_a_failed_open_closes_every_file_and_releases_the_lock(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "s"
    db = halodb.open(path, partitions=4)
    db.update({i: i for i in range(100)})
    _abandon(db)
    victim = path / fmt.partition_file(2 if damage == "tree meta pages" else 3, "tree")
    saved = {p: p.read_bytes() for p in path.iterdir()}
    if damage == "tree meta pages":
        data = bytearray(victim.read_bytes())
        data[: 2 * 4096] = bytes(2 * 4096)
        victim.write_bytes(bytes(data))
    else:
        wal = path / fmt.partition_file(3, "wal")
        wal.write_bytes(wal.read_bytes() + frame(fmt.REC_BATCH, 10**6, encode_batch((0, 9), 0, [])))
    before = _open_fds()
    with pytest.raises(halodb.CorruptionError):
        halodb.open(path)
    assert _open_fds() == before
    for file, content in saved.items():
        file.write_bytes(content)
    with halodb.open(path) as db:  # the lock was released
        assert len(db) == 100


class _SlowSyncs(FileSystem):
    def __init__(self) -> None:
        self.syncs = 0

    def open(self, path: str, *, write: bool = False, create: bool = False) -> File:
        handle = super().open(path, write=write, create=create)
        return _SlowSyncFile(self, handle.path, handle.fd)


class _SlowSyncFile(File):
    __slots__ = ()

    def sync(self) -> None:
        fs = self.fs
        assert isinstance(fs, _SlowSyncs)
        if self.path.endswith(".wal"):
            fs.syncs += 1
            time.sleep(0.005)
        super().sync()


def test_full_durability_writers_share_fsyncs(tmp_path: Path) -> None:
    """Group commit: eight threads writing to one partition wait on shared fsyncs rather than
    one each."""
    fs = _SlowSyncs()
    db = halodb.open(tmp_path / "s", partitions=1, durability="full", filesystem=fs)
    writes_per_thread = 40
    start = threading.Barrier(8)

    def writer(n: int) -> None:
        start.wait()
        for i in range(writes_per_thread):
            db[(n, i)] = i

    fs.syncs = 0
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writes = 8 * writes_per_thread
    assert fs.syncs < writes / 2, (fs.syncs, writes)
    assert len(db) == writes
    db.close()


class _Recording(FileSystem):
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.moved: list[tuple[str, str]] = []
        """Logs renamed over their frozen predecessors (see the test)."""

    def open(self, path: str, *, write: bool = False, create: bool = False) -> File:
        handle = super().open(path, write=write, create=create)
        return _RecordingFile(self, handle.path, handle.fd)

    def rename(self, src: str, dst: str) -> None:
        if src.endswith(".tmp"):
            self.events.append(("rename", os.path.basename(dst)))
        else:
            self.moved.append((os.path.basename(src), os.path.basename(dst)))
        super().rename(src, dst)

    def sync_dir(self, path: str) -> None:
        self.events.append(("sync_dir", os.path.basename(path)))
        super().sync_dir(path)


class _RecordingFile(File):
    __slots__ = ()

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        assert isinstance(self.fs, _Recording)
        self.fs.events.append(("write", os.path.basename(self.path)))
        super().write_at(offset, data)

    def sync(self) -> None:
        assert isinstance(self.fs, _Recording)
        self.fs.events.append(("sync", os.path.basename(self.path)))
        super().sync()


def test_every_new_file_is_written_synced_renamed_and_its_directory_synced(
    tmp_path: Path,
) -> None:
    fs = _Recording()
    path = tmp_path / "s"
    with halodb.open(path, filesystem=fs, partitions=2) as db:
        db.update({i: i for i in range(50)})  # both partitions get keys (the seed is random)
        db.flush()
    renames = [i for i, event in enumerate(fs.events) if event[0] == "rename"]
    assert renames, "no file was created"
    # The one other rename: after a merge, the log in pNNN.wal2 takes its usual name over the
    # frozen log it replaces (not synced: after a power cut either name holds it, and a frozen
    # log that reappears is one whose records the tree holds).
    assert fs.moved and all(
        src.endswith(".wal2") and dst == src[: -len("2")] for src, dst in fs.moved
    ), fs.moved
    names = set()
    for i in renames:
        final = fs.events[i][1]
        names.add(final)
        tmp = final + ".tmp"
        before = fs.events[:i]
        last_write = max(j for j, e in enumerate(before) if e == ("write", tmp))
        assert ("sync", tmp) in before[last_write:], f"{final}: renamed before its data was synced"
        assert fs.events[i + 1] == ("sync_dir", "s"), f"{final}: directory not synced after rename"
    assert {fmt.MANIFEST_NAME, "p000.tree", "p000.wal", "p000.bloom"} <= names


_READER = """
import sys, halodb
with halodb.open(sys.argv[1], readonly=True) as db:
    print(db["k"], flush=True)
    sys.stdin.read()
"""


def test_several_processes_read_together_and_a_writer_waits_for_none(tmp_path: Path) -> None:
    """README: several processes may open a store read-only together; while any does, an open
    for writing fails at once (and a read-only open fails while a writer holds it)."""
    import subprocess
    import sys

    path = tmp_path / "s"
    with halodb.open(path) as db:
        db["k"] = "shared"
    readers = [
        subprocess.Popen(
            [sys.executable, "-c", _READER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        for reader in readers:
            assert reader.stdout is not None
            assert reader.stdout.readline().strip() == "shared"
        started = time.monotonic()
        with pytest.raises(halodb.OperationalError, match="already open"):
            halodb.open(path)
        assert time.monotonic() - started < 1.0
    finally:
        for reader in readers:
            reader.communicate("", timeout=30)
    assert all(reader.returncode == 0 for reader in readers)
    with halodb.open(path) as db:
        with pytest.raises(halodb.OperationalError, match="already open"):
            halodb.open(path, readonly=True)
        db["k"] = "mine again"

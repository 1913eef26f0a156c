"""The background worker (``background=True``, the default): a full memtable is frozen and merged
into the tree by the store's worker thread while writes go on; only a second full memtable of
the same partition waits (a stall, counted); reads see every write throughout; a failed merge
stops writes with its error; a crash in the middle of a merge loses nothing acknowledged.

The worker is held in the middle of a merge by a :class:`FaultFS` whose ``before_sync`` hook
blocks the worker thread's first fsync of the tree file (the commit of the merge's pages)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

import halodb
from halodb import format as fmt
from support.faultfs import Fault, FaultFS

OPTIONS: dict[str, Any] = {"partitions": 1, "page_size": 1024, "memtable_size": 64 * 1024}
VALUE = "v" * 200
WAIT = 20.0
"""Seconds a gate or a poll waits before the test fails (instead of hanging)."""


class Gate:
    """Blocks the worker's fsyncs of tree files while closed."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def __call__(self, path: str) -> None:
        if path.endswith(".tree") and threading.current_thread().name.startswith("halodb merge"):
            self.entered.set()
            self.opened.wait(WAIT)

    def open(self) -> None:
        self.opened.set()


def _until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.005)


def _fill_until_frozen(db: halodb.Store, model: dict[str, str], gate: Gate) -> None:
    """Write keys until the worker is held in the middle of a merge."""
    i = len(model)
    while not db.stats().partitions[0].frozen_entries:
        key = f"k{i:06d}"
        db[key] = model[key] = VALUE
        i += 1
        assert i < 100_000, "no memtable froze"
    _until(gate.entered.is_set, "the worker commits the merge")
    assert db.stats().worker == "merging"


def _assert_reads(db: halodb.Store, model: dict[str, str]) -> None:
    assert len(db) == len(model)
    assert dict(db.items()) == model
    assert all(db[key] == value for key, value in model.items())
    assert list(db.range("k000100", "k000110")) == [
        (k, v) for k, v in sorted(model.items()) if "k000100" <= k < "k000110"
    ]


def test_writes_go_on_during_a_merge_and_a_second_full_memtable_stalls(tmp_path: Path) -> None:
    fs = FaultFS(tmp_path / "s")
    gate = Gate()
    fs.before_sync = gate
    db = halodb.open(tmp_path / "s", filesystem=fs, **OPTIONS)
    model: dict[str, str] = {}
    try:
        _fill_until_frozen(db, model, gate)
        # The merge is held before its commit: these writes go to the new memtable at once.
        for i in range(100):
            db[f"k{i:06d}"] = model[f"k{i:06d}"] = f"new{i}"
        del db["k000150"]
        del model["k000150"]
        stats = db.stats()
        assert stats.worker == "merging" and stats.stalls == 0
        assert stats.partitions[0].frozen_entries > 0
        assert (tmp_path / "s" / fmt.partition_file(0, "wal2")).exists()  # the new log
        _assert_reads(db, model)  # memtable over frozen memtable over tree

        # A second full memtable must wait for the first merge: a stall, counted.
        def writer() -> None:
            for i in range(2000):
                db[f"w{i:05d}"] = VALUE

        thread = threading.Thread(target=writer)
        thread.start()
        _until(lambda: db.stats().stalls >= 1, "a write stalls")
        assert thread.is_alive()
        gate.open()
        thread.join(WAIT)
        assert not thread.is_alive()
        model.update({f"w{i:05d}": VALUE for i in range(2000)})
        stats = db.stats()
        assert stats.stalls >= 1 and stats.stall_seconds > 0
        assert stats.partitions[0].stalls == stats.stalls
        _until(lambda: db.stats().worker == "idle", "the worker is idle")
        assert db.stats().partitions[0].flushes >= 2
        _assert_reads(db, model)
        db.check()
    finally:
        gate.open()
        db.close()
    with halodb.open(tmp_path / "s", **OPTIONS) as again:
        _assert_reads(again, model)
        again.check()


def test_a_failed_merge_stops_writes_with_its_error(tmp_path: Path) -> None:
    fs = FaultFS(tmp_path / "s")
    db = halodb.open(tmp_path / "s", filesystem=fs, **OPTIONS)
    # The fsyncs from now on: the new log's temporary file (the writer's freeze), then the
    # tree (the worker's merge): that one fails.
    fs.arm(Fault("fsync", 2, "EIO", persistent=True))
    model: dict[str, str] = {}
    i = 0
    with pytest.raises(halodb.OperationalError, match="refuses writes after a failure"):
        while True:
            key = f"k{i:06d}"
            db[key] = VALUE
            model[key] = VALUE
            i += 1
            if db.stats().worker == "failed":
                db["after"] = "refused"
    assert "after" not in db
    assert dict(db.items()) == model  # reads go on
    assert fs.injected, "the fault was never met"
    db.close()  # merges nothing: the logs keep every write
    fs.disarm()
    with halodb.open(tmp_path / "s", **OPTIONS) as again:
        assert dict(again.items()) == model
        again.check()


def test_a_crash_in_the_middle_of_a_merge_loses_nothing(tmp_path: Path) -> None:
    """Power cut while the tree is being written: two logs on disk, the frozen memtable's and
    the new one's; the next open replays both (durability "full": every write was fsynced)."""
    fs = FaultFS(tmp_path / "s")
    gate = Gate()
    fs.before_sync = gate
    db = halodb.open(tmp_path / "s", filesystem=fs, durability="full", **OPTIONS)
    model: dict[str, str] = {}
    try:
        _fill_until_frozen(db, model, gate)
        for i in range(50):
            db[f"k{i:06d}"] = model[f"k{i:06d}"] = f"after{i}"
        fs.crash_copy(tmp_path / "image")
    finally:
        gate.open()
        db.close()
    assert (tmp_path / "image" / fmt.partition_file(0, "wal2")).exists()
    with halodb.open(tmp_path / "image", **OPTIONS) as again:
        stats = again.stats()
        assert stats.partitions[0].frozen_entries > 0  # the interrupted merge, to do again
        _assert_reads(again, model)
        again.check()
    with halodb.open(tmp_path / "image", **OPTIONS) as again:  # merged since: one log
        _assert_reads(again, model)
        assert not (tmp_path / "image" / fmt.partition_file(0, "wal2")).exists()


def test_without_background_the_write_that_fills_a_memtable_merges_it(tmp_path: Path) -> None:
    db = halodb.open(tmp_path / "s", background=False, **OPTIONS)
    model = {}
    for i in range(2000):
        db[f"k{i:06d}"] = model[f"k{i:06d}"] = VALUE
    stats = db.stats()
    assert stats.worker == "off" and stats.stalls == 0
    assert stats.partitions[0].flushes >= 3 and stats.partitions[0].frozen_entries == 0
    assert not [t for t in threading.enumerate() if t.name.startswith("halodb merge")]
    _assert_reads(db, model)
    db.close()


def test_the_worker_thread_ends_with_the_store(tmp_path: Path) -> None:
    db = halodb.open(tmp_path / "s", **OPTIONS)
    for i in range(2000):
        db[f"k{i:06d}"] = VALUE
    assert db.stats().worker in ("idle", "merging")
    name = "halodb merge s"
    db.close()  # waits for the merge under way, merges the rest itself
    assert not [t for t in threading.enumerate() if t.name == name]
    with halodb.open(tmp_path / "s", readonly=True) as reader:
        assert reader.stats().worker == "off"
        assert len(reader) == 2000


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_background_must_be_a_bool(tmp_path: Path, bad: object) -> None:
    with pytest.raises(halodb.InterfaceError, match="background must be a bool"):
        halodb.open(tmp_path / "s", background=bad)  # type: ignore[arg-type]
    assert not (tmp_path / "s").exists()

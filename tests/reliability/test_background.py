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
from halodb import testing
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


def _gated_store(tmp_path: Path) -> tuple[halodb.Store, Gate]:
    """A store at ``tmp_path / "s"`` whose worker's tree fsyncs wait for the returned gate."""
    fs = FaultFS(tmp_path / "s")
    gate = Gate()
    fs.before_sync = gate
    return halodb.open(tmp_path / "s", filesystem=fs, **OPTIONS), gate


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
    db, gate = _gated_store(tmp_path)
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


def test_a_write_whose_wait_ends_in_a_failure_is_refused_whole(tmp_path: Path) -> None:
    """A write that finds the memtable full while the frozen one merges waits before it is
    logged or applied: when the store fails meanwhile (or closes), it raises and is not in
    the store, not even after the logs are replayed; every write that returned is."""
    db, gate = _gated_store(tmp_path)
    model: dict[str, str] = {}
    refused: list[tuple[str, BaseException]] = []
    try:
        _fill_until_frozen(db, model, gate)

        def writer() -> None:
            for i in range(100_000):
                key = f"w{i:06d}"
                try:
                    db[key] = VALUE
                except halodb.OperationalError as exc:
                    refused.append((key, exc))
                    return
                model[key] = VALUE

        thread = threading.Thread(target=writer)
        thread.start()
        _until(lambda: db.stats().stalls >= 1, "a write waits for the merge")
        testing.engine(db).fail(halodb.OperationalError("planted failure"))
        thread.join(WAIT)
        assert not thread.is_alive()
        [(key, error)] = refused
        assert "planted failure" in str(error)
        assert key not in db
    finally:
        gate.open()
        db.close()  # after a failure: nothing merged, the logs keep what was written
    with halodb.open(tmp_path / "s", **OPTIONS) as again:
        assert key not in again
        _assert_reads(again, model)
        again.check()


def test_a_memtable_that_filled_during_a_merge_is_merged_without_another_write(
    tmp_path: Path,
) -> None:
    """The write that fills the memtable while the frozen one merges returns at once and
    leaves it full; once the merge ends the worker freezes and merges it too, though no write
    comes after (an idle store must not keep a full memtable only in its log)."""
    db, gate = _gated_store(tmp_path)
    model: dict[str, str] = {}
    try:
        _fill_until_frozen(db, model, gate)
        part = testing.engine(db).parts[0]
        i = 0
        while part.memtable.size <= part.limit:  # fills again; returns without waiting
            db[f"w{i:05d}"] = model[f"w{i:05d}"] = VALUE
            i += 1
        assert db.stats().stalls == 0
        gate.open()
        _until(
            lambda: (
                db.stats().partitions[0].flushes >= 2
                and db.stats().partitions[0].memtable_entries == 0
                and db.stats().worker == "idle"
            ),
            "the full memtable is merged",
        )
        _assert_reads(db, model)
    finally:
        gate.open()
        db.close()


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


class TreeGate(Gate):
    """A :class:`Gate` for one partition's tree file only."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def __call__(self, path: str) -> None:
        if path.endswith(self.name):
            super().__call__(path)


def test_a_batch_that_fills_a_merging_partition_waits_holding_no_other_lock(
    tmp_path: Path,
) -> None:
    """The worker merges partition 1, held before its commit; partition 0 has a frozen memtable
    waiting its turn, and a full memtable again. A batch over both partitions must wait for
    partition 0's merge without holding partition 1's lock, which the merge of partition 1
    needs for its last step (else neither ever ends)."""
    fs = FaultFS(tmp_path / "s")
    gate = TreeGate(fmt.partition_file(1, "tree"))
    fs.before_sync = gate
    db = halodb.open(tmp_path / "s", filesystem=fs, partitions=2, page_size=1024,
                     memtable_size=64 * 1024, hash_seed=7)  # fmt: skip
    engine = testing.engine(db)
    zero, one = testing.keys_in(db, 0, 3000, "a"), testing.keys_in(db, 1, 3000, "b")
    model: dict[str, str] = {}
    stuck: list[threading.Thread] = []
    try:
        for key in one:  # partition 1 freezes; its merge is held
            db[key] = model[key] = VALUE
            if gate.entered.is_set():
                break
        _until(gate.entered.is_set, "partition 1's merge commits")
        i = 0
        while engine.parts[0].frozen is None:  # partition 0 freezes, waits for the worker
            db[zero[i]] = model[zero[i]] = VALUE
            i += 1
        part = engine.parts[0]
        while part.memtable.size <= part.limit:  # and fills again: its next write must wait
            db[zero[i]] = model[zero[i]] = VALUE
            i += 1
        batch = {key: VALUE for key in zero[i : i + 400]} | {one[-1]: "last"}
        done = threading.Event()

        def writer() -> None:
            db.update(batch)
            done.set()

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        stuck.append(thread)
        _until(lambda: db.stats().stalls >= 1, "the batch waits for partition 0's merge")
        gate.open()
        assert done.wait(WAIT), "the batch never ended: a merge waited for a lock it held"
        thread.join()
        stuck.clear()
        model.update(batch)
        _until(lambda: db.stats().worker == "idle", "the worker is idle")
        for part in engine.parts:  # a frozen memtable keeps its log open until merged
            with part.lock:
                assert part.frozen is None or (
                    part.frozen_log is not None and not part.frozen_log.file.closed
                )
        assert dict(db.items()) == model
        db.check()
    finally:
        gate.open()
        if not stuck:  # (a deadlocked store cannot be closed: it is left to the process)
            db.close()


def test_full_mode_acknowledges_no_record_of_a_new_log_before_the_frozen_one_is_durable(
    tmp_path: Path,
) -> None:
    """Durability "full": a write that froze the memtable is still fsyncing the frozen log when
    another write to the new log returns from its own fsync. The second write must wait for the
    first log too: were the frozen log's tail lost, recovery would drop the new log's records."""
    fs = FaultFS(tmp_path / "s")
    merge_gate = Gate()  # the worker's merge is held, so the frozen log stays
    log_gate = threading.Event()
    log_entered = threading.Event()
    frozen_log = fmt.partition_file(0, "wal")

    def hook(path: str) -> None:
        merge_gate(path)
        part = testing.engine(db).parts[0]
        if (
            path.endswith(frozen_log)
            and part.frozen is not None
            and threading.current_thread().name == "freezer"
            and not log_gate.is_set()
        ):
            log_entered.set()
            log_gate.wait(WAIT)

    db = halodb.open(tmp_path / "s", filesystem=fs, durability="full", **OPTIONS)
    fs.before_sync = hook
    model: dict[str, str] = {}
    try:

        def freezer() -> None:
            i = 0
            while not log_entered.is_set() and testing.engine(db).parts[0].frozen is None:
                db[f"k{i:06d}"] = model[f"k{i:06d}"] = VALUE
                i += 1

        first = threading.Thread(target=freezer, name="freezer")
        first.start()
        _until(log_entered.is_set, "the write that froze fsyncs the frozen log")
        second_done = threading.Event()

        def second() -> None:
            db["second"] = model["second"] = "acknowledged"
            second_done.set()

        other = threading.Thread(target=second)
        other.start()
        assert not second_done.wait(0.5), "acknowledged before the frozen log was durable"
        log_gate.set()
        assert second_done.wait(WAIT)
        first.join(WAIT)
        other.join(WAIT)
    finally:
        log_gate.set()
        merge_gate.open()
        db.close()
    with halodb.open(tmp_path / "s", **OPTIONS) as again:
        assert dict(again.items()) == model

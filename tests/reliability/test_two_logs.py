"""Recovery with two logs in a partition (docs/format.md, "Write-ahead log"): the frozen
memtable's log and the newer one, as a crash in the middle of a merge leaves them.

- both replayed: the older into a frozen memtable, the newer into the memtable, and merged;
- the older one lost its tail (a power cut before it was fsynced): the newer one's records follow
  writes that are gone, so none applies, and a writable open replaces the newer log for good;
- the tree already holds the older one's records (a merge's leftover): it is ignored, deleted by
  a writable open and kept by a read-only one;
- the newer log starts before the older one's last record (a recovery dropped those records and
  froze what it kept): those records stay dropped;
- two logs with records after the same ``base_seq``: ``CorruptionError`` (with one of them
  empty, that one is the older).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

import halodb
from halodb import format as fmt
from halodb import testing
from halodb.wal import header_bytes, read_log

OPTIONS: dict[str, Any] = {"partitions": 1, "page_size": 1024, "background": False}


def _paths(store: Path) -> tuple[Path, Path]:
    return store / fmt.partition_file(0, "wal"), store / fmt.partition_file(0, "wal2")


def _frozen_store(store: Path) -> tuple[dict[str, int], dict[str, int]]:
    """A store left as a crash in the middle of a merge leaves it: ``p000.wal`` holds the frozen
    memtable's writes (returned first), ``p000.wal2`` the later ones (second)."""
    db = halodb.open(store, **OPTIONS)
    db.update({f"tree{i}": i for i in range(20)})
    db.flush()
    frozen = {f"frozen{i}": i for i in range(10)}
    for key, value in frozen.items():
        db[key] = value
    part = testing.engine(db).parts[0]
    with part.lock:
        part.freeze()
    later = {f"later{i}": i for i in range(5)}
    for key, value in later.items():
        db[key] = value
    testing.abandon(db)
    old, new = _paths(store)
    assert old.exists() and new.exists()
    return frozen, later


def test_both_logs_are_replayed_and_merged(tmp_path: Path) -> None:
    store = tmp_path / "s"
    frozen, later = _frozen_store(store)
    want = {**{f"tree{i}": i for i in range(20)}, **frozen, **later}
    with halodb.open(store, readonly=True) as db:
        assert dict(db.items()) == want
        stats = db.stats().partitions[0]
        assert (stats.frozen_entries, stats.memtable_entries) == (10, 5)
        db.check()
    with halodb.open(store, **OPTIONS) as db:
        assert dict(db.items()) == want
        db["more"] = 1
    old, new = _paths(store)
    assert old.exists() and not new.exists()  # merged and closed: one log again
    with halodb.open(store, **OPTIONS) as db:
        assert dict(db.items()) == {**want, "more": 1}
        db.check()


def test_an_older_log_that_lost_its_tail_takes_the_newer_logs_records(tmp_path: Path) -> None:
    store = tmp_path / "s"
    frozen, _ = _frozen_store(store)
    old, new = _paths(store)
    data = old.read_bytes()
    records = read_log(data, 0, "old").records
    assert len(records) == len(frozen)
    # The last record of the older log is lost (cut at a record boundary, as a power cut before
    # its fsync may leave it: no torn bytes to see).
    cut = len(data) - (len(data) - fmt.WAL_HEADER.size) // len(records)
    old.write_bytes(data[:cut])
    kept = dict(list(frozen.items())[:-1])
    want = {**{f"tree{i}": i for i in range(20)}, **kept}
    with halodb.open(store, readonly=True) as db:  # decides without changing a byte
        assert dict(db.items()) == want
    with halodb.open(store, **OPTIONS) as db:
        assert dict(db.items()) == want
        db.check()
    assert not new.exists() or not read_log(new.read_bytes(), 0, "new").records
    with halodb.open(store, **OPTIONS) as db:  # the decision stuck
        assert dict(db.items()) == want
        db.check()


def test_an_older_log_the_tree_holds_is_deleted(tmp_path: Path) -> None:
    store = tmp_path / "s"
    db = halodb.open(store, **OPTIONS)
    db.update({f"k{i}": i for i in range(10)})
    old, new = _paths(store)
    leftover = old.read_bytes()
    db.flush()  # the tree holds k0..k9; the flush left one empty log
    db.update({f"j{i}": i for i in range(3)})
    testing.abandon(db)
    # A merge's leftover, as a power cut can bring it back: the log the merge replaced, in
    # p000.wal2 (the older name is told by base_seq, not by the name).
    new.write_bytes(leftover)
    want = {**{f"k{i}": i for i in range(10)}, **{f"j{i}": i for i in range(3)}}
    before = {p.name: p.read_bytes() for p in store.iterdir()}
    with halodb.open(store, readonly=True) as db:
        assert dict(db.items()) == want
    assert {p.name: p.read_bytes() for p in store.iterdir()} == before
    with halodb.open(store, **OPTIONS) as db:
        assert not new.exists()
        assert dict(db.items()) == want
        db.check()


def test_records_a_recovery_dropped_before_the_newer_log_stay_dropped(tmp_path: Path) -> None:
    store = tmp_path / "s"
    frozen, _ = _frozen_store(store)
    old, new = _paths(store)
    data = new.read_bytes()
    records = read_log(data, 0, "new").records
    base = fmt.WAL_HEADER.unpack_from(data)[4]
    # The newer log as a recovery that dropped the older log's last 3 records writes it: its
    # base_seq is the last record kept.
    olds = read_log(old.read_bytes(), 0, "old").records
    new.write_bytes(header_bytes(0, olds[-4].seq))
    assert base == olds[-1].seq and records
    want = {**{f"tree{i}": i for i in range(20)}, **dict(list(frozen.items())[:-3])}
    with halodb.open(store, **OPTIONS) as db:
        assert dict(db.items()) == want
        db.check()
    with halodb.open(store, **OPTIONS) as db:
        assert dict(db.items()) == want


def test_two_logs_with_records_after_one_base_are_damage(tmp_path: Path) -> None:
    store = tmp_path / "s"
    _frozen_store(store)
    old, new = _paths(store)
    new.write_bytes(old.read_bytes())  # records after one base_seq in both: no freeze did that
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    with pytest.raises(halodb.CorruptionError, match="as does the other log"):
        halodb.open(store, **OPTIONS)
    assert {p.name: p.read_bytes() for p in store.iterdir() if p.name != "LOCK"} == {
        p.name: p.read_bytes() for p in copy.iterdir() if p.name != "LOCK"
    }


def test_a_crash_at_any_step_of_a_recovery_that_drops_the_older_log_leaves_a_store(
    tmp_path: Path,
) -> None:
    """Partition 0's older log starts with part of a batch whose other part (partition 1's) was
    lost, so recovery drops every record of it, and of the newer log after it. The writable open
    deletes the older log and replaces the newer one: a power cut at any fsync of that open
    leaves files the next open reads as the same store."""
    from support.faultfs import FaultFS

    store = tmp_path / "s"
    db = halodb.open(store, partitions=2, page_size=1024, background=False, hash_seed=7)
    zero, one = testing.keys_in(db, 0, 3, "a"), testing.keys_in(db, 1, 3, "b")
    db.update({zero[0]: 0, one[0]: 1})
    db.flush()
    with db.batch() as batch:  # a part in each log
        batch[zero[1]] = "batch"
        batch[one[1]] = "batch"
    part = testing.engine(db).parts[0]
    with part.lock:
        part.freeze()
    db[zero[2]] = "after the batch"
    testing.abandon(db)
    p001 = store / fmt.partition_file(1, "wal")
    p001.write_bytes(p001.read_bytes()[: fmt.WAL_HEADER.size])  # partition 1's part is lost
    want = {zero[0]: 0, one[0]: 1}
    fs = FaultFS(store)
    copies: list[Path] = []

    def cut(path: str) -> None:
        target = tmp_path / f"cut{len(copies)}"
        fs.crash_copy(target)
        copies.append(target)

    fs.before_sync = cut
    with halodb.open(store, filesystem=fs, background=False) as db:
        assert dict(db.items()) == want
        fs.before_sync = None
    assert copies, "the open fsynced nothing"
    for copy in copies:
        with halodb.open(copy, background=False) as again:
            assert dict(again.items()) == want, copy.name
            again.check()


def test_an_empty_older_log_of_the_same_base_is_the_older(tmp_path: Path) -> None:
    """A recovery that replaced a log and was cut before it deleted the older one, empty, can
    leave two logs of one base_seq: the one with records is the newer, and it is replayed."""
    store = tmp_path / "s"
    db = halodb.open(store, **OPTIONS)
    db.update({f"k{i}": i for i in range(5)})
    testing.abandon(db)
    old, new = _paths(store)
    base = fmt.WAL_HEADER.unpack_from(old.read_bytes())[4]
    new.write_bytes(old.read_bytes())  # the log with the records, under the other name
    old.write_bytes(header_bytes(0, base))  # and an empty one of the same base_seq
    want = {f"k{i}": i for i in range(5)}
    with halodb.open(store, readonly=True) as db:
        assert dict(db.items()) == want
    with halodb.open(store, **OPTIONS) as db:
        assert dict(db.items()) == want
        db.check()
    with halodb.open(store, **OPTIONS) as db:
        assert dict(db.items()) == want

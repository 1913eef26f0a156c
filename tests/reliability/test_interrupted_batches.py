"""Interrupts inside a batch's commit, against the lock-free first try of gets
(``Partition.peek``, the partitions' epochs): a get must never see half a batch, and a crash must
never recover half of one. Each test was a defect once; its docstring says which.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

import halodb
import halodb.testing
from halodb import testing
from halodb.keys import encode_key
from halodb.memtable import Memtable
from halodb.partition import Partition


def _interrupt_epoch_write(part: Partition, nth: int) -> None:
    """Make the ``nth`` write of ``part.epoch`` from now on raise KeyboardInterrupt instead of
    storing, once: a Ctrl-C landing on that bytecode of ``commit``."""
    writes = [0]

    class Interrupted(Partition):
        @property
        def epoch(self) -> int:
            return self.__dict__["epoch"]  # type: ignore[no-any-return]

        @epoch.setter
        def epoch(self, value: int) -> None:
            writes[0] += 1
            if writes[0] == nth:
                raise KeyboardInterrupt
            self.__dict__["epoch"] = value

    part.__class__ = Interrupted


def _keys_in(db: halodb.Store, index: int, count: int) -> list[str]:
    return testing.keys_in(db, index, count)


def _seen_mid_batch(db: halodb.Store, part: Partition, a: str, b: str, value: int) -> list[Any]:
    """Commit the batch ``{a: value, b: value}`` (one partition, ``part``), and, once its first
    entry is in the memtable, get both keys from another thread. Returns what that thread read
    (it may block on the partition lock until the batch is done: that is right), or ``[None]``
    if the store refuses the batch (it stops writes after an interrupt in a commit)."""
    seen: list[Any] = []
    first = encode_key(a)
    threads: list[threading.Thread] = []

    class Watched(Memtable):
        __slots__ = ()

        def put(self, key: bytes, val: bytes | None) -> object:
            old = super().put(key, val)
            if key == first and not threads:
                t = threading.Thread(target=lambda: seen.append((db.get(a), db.get(b))))
                threads.append(t)
                t.start()
                t.join(1.0)  # blocked on the lock (epoch odd): fine, it reads after the batch
            return old

    part.memtable.__class__ = Watched
    try:
        with db.batch() as batch:
            batch[a] = value
            batch[b] = value
    except halodb.OperationalError:
        return [None]
    finally:
        part.memtable.__class__ = Memtable
    for t in threads:
        t.join(10)
    return seen


def test_an_interrupt_restoring_the_epochs_leaves_later_batches_seen_whole(
    tmp_path: Path,
) -> None:
    """Was: an interrupt in commit()'s ``finally`` that restores the epochs (counted up) left
    the partition's epoch odd with the store writable; from then on its epoch was even while a
    batch was applied, so a lock-free get saw half of every later batch."""
    db = halodb.open(tmp_path / "db", partitions=1)
    part = testing.engine(db).parts[0]
    db.update({"a": 0, "b": 0})
    # Write 1 makes the epoch odd before the apply, write 2 (in the finally) would restore it.
    _interrupt_epoch_write(part, 2)
    with pytest.raises(KeyboardInterrupt), db.batch() as batch:
        batch["a"] = 1
        batch["b"] = 1
    part.__class__ = Partition
    assert (db["a"], db["b"]) == (1, 1)  # applied whole; only the epoch is off
    seen = _seen_mid_batch(db, part, "a", "b", 2)
    db.close()
    assert seen in ([(2, 2)], [None]), f"a get saw half a batch: {seen}"


def test_an_interrupt_between_the_epoch_bumps_leaves_later_batches_seen_whole(
    tmp_path: Path,
) -> None:
    """Was: an interrupt between commit()'s epoch bumps (before its ``try``) left the first
    partitions' epochs odd, without stopping writes; later batches there were applied under an
    even epoch, so a lock-free get saw half of them."""
    db = halodb.open(tmp_path / "db", partitions=2)
    a, b = _keys_in(db, 0, 2)
    (c,) = _keys_in(db, 1, 1)
    db.update({a: 0, b: 0, c: 0})
    p0, p1 = testing.engine(db).parts
    _interrupt_epoch_write(p1, 1)  # p0's bump done, p1's interrupted
    with pytest.raises(KeyboardInterrupt), db.batch() as batch:
        batch[a] = batch[c] = 1
    p1.__class__ = Partition
    seen = _seen_mid_batch(db, p0, a, b, 2)
    db.close()
    assert seen in ([(2, 2)], [None]), f"a get saw half a batch: {seen}"


def test_an_interrupt_between_the_epoch_bumps_never_lets_a_crash_recover_half_a_batch(
    tmp_path: Path,
) -> None:
    """Was: commit()'s first epoch loop ran after the batch was logged but outside the ``try``
    that stops writes: an interrupt there left the batch logged and unapplied with the store
    writable, so a later flush of one partition retired its part while another log kept its
    own, and recovery after a crash applied half the batch."""
    path = tmp_path / "db"
    db = halodb.open(path, partitions=2, memtable_size=64 * 1024)
    a, other = _keys_in(db, 0, 2)
    (c,) = _keys_in(db, 1, 1)
    db.update({a: 0, c: 0})
    p0, p1 = testing.engine(db).parts
    _interrupt_epoch_write(p1, 1)  # p0's bump done, p1's interrupted
    with pytest.raises(KeyboardInterrupt), db.batch() as batch:
        batch[a] = batch[c] = 1
    p1.__class__ = Partition
    flushes = p0.flushes
    try:
        for _ in range(100):  # overwrites until partition 0 flushes on its own
            db[other] = "x" * 20_000
            if p0.flushes > flushes:
                break
        assert p0.flushes > flushes
    except halodb.OperationalError:
        pass  # the store refuses writes after the interrupt: right
    halodb.testing.abandon(db)
    with halodb.open(path) as db:
        assert db[a] == db[c], f"half a batch recovered: {a}={db[a]}, {c}={db[c]}"

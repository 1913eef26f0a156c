"""Recovery rules for logs (docs/format.md, "Reading a log, and recovery rules"; design.md,
"Recovery"), each with a case that the engine got wrong before:

- a batch dropped by recovery cuts the logs of its partitions at its part, and the cut cascades
  through later batches (a partition keeps every write up to some point, never a write after one
  it lost); the cut records are gone from the files after a writable open, and a read-only open
  decides the same without changing a byte;
- in ``"full"`` mode a write after a batch part is acknowledged only once the batch's other
  parts are durable, and an interrupted batch stops all later writes, so that the cut never
  takes an acknowledged write;
- a torn tail is any first bad record that overlaps a zeroed 512-byte sector (in an earlier
  record, in a header, before later sectors that reached the disk); a flipped byte stays
  damage;
- sequence numbers of 2^62 or more, and keys or values over the store's limits, in a log are
  ``CorruptionError``.
"""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path
from typing import Any

import pytest

import halodb
import halodb.engine.recovery
import halodb.store
import halodb.testing
from halodb import format as fmt
from halodb import testing
from halodb.errors import CorruptionError
from halodb.vfs import File, FileSystem
from halodb.wal import LogWriter, Record, encode_put, frame, header_bytes, read_log

SECTOR = 512


def _abandon(db: halodb.Store) -> None:
    """Close without flushing or close records: the logs stay as written (a crash)."""
    halodb.testing.abandon(db)


def _key_in(db: halodb.Store, partition: int, prefix: str) -> str:
    return testing.keys_in(db, partition, prefix=prefix)[0]


def _wal(path: Path, partition: int) -> Path:
    return path / fmt.partition_file(partition, "wal")


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


def _log_seqs(path: Path, partition: int) -> list[int]:
    data = _wal(path, partition).read_bytes()
    return [r.seq for r in read_log(data, partition, "wal").records]


# -- A: a dropped batch cuts its partitions' logs --------------------------------------------


def test_a_dropped_batch_cuts_the_later_writes_of_its_partition(tmp_path: Path) -> None:
    """Normal mode, power cut: a batch over partitions 0 and 1, then a put into partition 0;
    partition 1's log lost the batch part. The batch goes, and so does the later put (the engine
    kept it: partition 0 then held no prefix of its writes). A writable open removes the cut
    records from the log, so an open after another crash decides the same."""
    path = tmp_path / "db"
    db = halodb.open(path, partitions=2)
    before, k0, k1, later = (_key_in(db, p, s) for p, s in ((0, "a"), (0, "b"), (1, "b"), (0, "c")))
    db[before] = "before"
    size1 = _wal(path, 1).stat().st_size
    with db.batch() as b:
        b[k0] = b[k1] = "batch"
    batch_seq = max(_log_seqs(path, 0)) - 0
    db[later] = "later"
    _abandon(db)
    os.truncate(_wal(path, 1), size1)  # the batch part never reached partition 1's disk
    files = _files(path)
    with halodb.open(path, readonly=True) as ro:
        assert dict(ro.items()) == {before: "before"}
    assert _files(path) == files, "a read-only open changed a byte"
    db = halodb.open(path)
    assert dict(db.items()) == {before: "before"}
    assert all(seq < batch_seq for seq in _log_seqs(path, 0)), "cut records still in the log"
    db.check()
    _abandon(db)  # another crash: nothing cut may come back
    with halodb.open(path) as db:
        assert dict(db.items()) == {before: "before"}
        db.check()


def test_cuts_cascade_through_later_batches(tmp_path: Path) -> None:
    """Three partitions: batch A over 0 and 1, then batch B over 1 and 2, then a put into each
    partition. Partition 0 lost A's part: A is dropped, which cuts partition 1 at A, which takes
    B's part there, so B is dropped and partition 2 is cut at B. Every write before A stays."""
    path = tmp_path / "db"
    db = halodb.open(path, partitions=3)
    keys = {(p, s): _key_in(db, p, s) for p in range(3) for s in ("old", "a", "b", "new")}
    expected = {}
    for p in range(3):
        db[keys[p, "old"]] = expected[keys[p, "old"]] = f"old{p}"
    size0 = _wal(path, 0).stat().st_size
    with db.batch() as b:
        b[keys[0, "a"]] = b[keys[1, "a"]] = "A"
    with db.batch() as b:
        b[keys[1, "b"]] = b[keys[2, "b"]] = "B"
    for p in range(3):
        db[keys[p, "new"]] = f"new{p}"
    _abandon(db)
    os.truncate(_wal(path, 0), size0)
    with halodb.open(path, readonly=True) as ro:
        assert dict(ro.items()) == expected
    with halodb.open(path) as db:
        assert dict(db.items()) == expected
        db.check()
    with halodb.open(path) as db:
        assert dict(db.items()) == expected


def test_a_partition_with_a_close_record_is_not_rotated_past_its_tree(tmp_path: Path) -> None:
    """Three partitions: partition 0 was closed cleanly (its log: a close record), partitions 1
    and 2 hold a batch whose part in 2 was lost. Recovery used to flush every partition and
    start partition 0's new log after the close record's sequence, which its tree does not
    hold: the next open failed ("the tree's newest meta page is damaged")."""
    path = tmp_path / "db"
    db = halodb.open(path, partitions=3)
    k0, k1, k2 = _key_in(db, 0, "z"), _key_in(db, 1, "b"), _key_in(db, 2, "b")
    db[k0] = "zero"
    db.flush()
    size2 = _wal(path, 2).stat().st_size
    with db.batch() as b:
        b[k1] = b[k2] = "batch"
    m = testing.engine(db)
    close_seq = next(m.sequence) + 1
    flushed0 = m.parts[0].flushed_seq
    _abandon(db)
    _wal(path, 0).write_bytes(header_bytes(0, flushed0) + frame(fmt.REC_CLOSE, close_seq, b""))
    os.truncate(_wal(path, 2), size2)
    for _ in range(3):
        with halodb.open(path) as db:
            assert dict(db.items()) == {k0: "zero"}
            db.check()


def test_a_batch_part_to_drop_that_a_tree_holds_is_corruption(tmp_path: Path) -> None:
    """Batch A over partitions 0 and 2, then batch B over 0 and 1, and partition 1 flushed (its
    tree holds B). Partition 2's log then loses A's part: A is dropped and cuts partition 0 at
    A, taking B's part; but B is in partition 1's tree. Logs that contradict the trees (which
    no crash leaves: a flush first makes every other log durable) are damage."""
    path = tmp_path / "db"
    db = halodb.open(path, partitions=3)
    m = testing.engine(db)
    k0a, k2a = _key_in(db, 0, "a"), _key_in(db, 2, "a")
    k0b, k1b = _key_in(db, 0, "b"), _key_in(db, 1, "b")
    size2 = _wal(path, 2).stat().st_size
    with db.batch() as b:
        b[k0a] = b[k2a] = "A"
    with db.batch() as b:
        b[k0b] = b[k1b] = "B"
    with m.parts[1].lock:
        m.flush_part(m.parts[1])
    _abandon(db)
    os.truncate(_wal(path, 2), size2)
    for readonly in (True, False):
        with pytest.raises(CorruptionError, match=r"is in the tree \(or run\) of partition 1"):
            halodb.open(path, readonly=readonly)


# -- A: the cut never takes an acknowledged write ---------------------------------------------


class _GatedFile(File):
    __slots__ = ()

    def sync(self) -> None:
        gate = getattr(self.fs, "gate", None)
        if gate is not None and self.path.endswith(fmt.partition_file(1, "wal")):
            entered, release = gate
            entered.set()
            assert release.wait(30)
        super().sync()


class _GatedFS(FileSystem):
    """fsyncs of partition 1's log wait for ``gate`` while it is set."""

    gate: tuple[threading.Event, threading.Event] | None = None

    def open(self, path: str, *, write: bool = False, create: bool = False) -> File:
        handle = super().open(path, write=write, create=create)
        handle.__class__ = _GatedFile
        return handle


def test_full_mode_acknowledges_a_write_after_a_batch_part_only_with_the_batch_durable(
    tmp_path: Path,
) -> None:
    """Full mode: a batch over partitions 0 and 1 has fsynced partition 0's log but not yet
    partition 1's when another thread's put into partition 0 fsyncs partition 0's log. Were the
    put acknowledged then, a power cut could lose the batch's part in partition 1: recovery
    drops the batch and cuts partition 0 at it, taking the acknowledged put. So the put waits
    for partition 1's log too."""
    fs = _GatedFS()
    db = halodb.open(tmp_path / "db", partitions=2, durability="full", filesystem=fs)
    k0, k1, later = _key_in(db, 0, "b"), _key_in(db, 1, "b"), _key_in(db, 0, "later")
    entered, release = threading.Event(), threading.Event()
    fs.gate = (entered, release)
    errors: list[BaseException] = []

    def run(fn: Any) -> threading.Thread:
        def target() -> None:
            try:
                fn()
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        return thread

    def batch() -> None:
        with db.batch() as b:
            b[k0] = b[k1] = "batch"

    def put() -> None:
        db[later] = "later"

    committer = run(batch)
    try:
        assert entered.wait(30), "the batch never fsynced partition 1's log"
        writer = run(put)
        writer.join(1.0)
        assert writer.is_alive(), "the put was acknowledged before the batch was durable"
    finally:
        release.set()
        fs.gate = None
    committer.join(30)
    writer.join(30)
    assert not errors, errors
    assert db[later] == "later" and db[k1] == "batch"
    db.close()


def test_an_interrupted_batch_stops_later_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch interrupted after its part in partition 0 was written but before partition 1's:
    the store must take no more writes (as after a failed write), for a later write to partition
    0 would follow a part that recovery drops, and the cut at it would take that write."""
    path = tmp_path / "db"
    db = halodb.open(path, partitions=2)
    k0, k1, later = _key_in(db, 0, "b"), _key_in(db, 1, "b"), _key_in(db, 0, "later")
    db[later] = "before"
    target = testing.engine(db).parts[1].log
    append = LogWriter.append

    def interrupted(self: LogWriter, record: bytes) -> int:
        if self is target:
            raise KeyboardInterrupt
        return append(self, record)

    monkeypatch.setattr(LogWriter, "append", interrupted)
    with pytest.raises(KeyboardInterrupt), db.batch() as b:
        b[k0] = b[k1] = "batch"
    monkeypatch.undo()
    with pytest.raises(halodb.OperationalError, match="refuses writes"):
        db[later] = "after"
    _abandon(db)
    with halodb.open(path) as db:
        assert dict(db.items()) == {later: "before"}


# -- B/C: a torn tail is a first bad record over a zeroed sector -------------------------------

PART = 0
BASE = 7


def _records() -> list[tuple[int, bytes]]:
    """Records of several sizes, so that sector boundaries fall in payloads and in headers."""
    sizes = [40, 700, 3, 450, 1500, 10, 300, 0, 900, 60]
    return [
        (BASE + 1 + i, encode_put(b"\x30k%d" % i, b"\x01" + b"v" * n)) for i, n in enumerate(sizes)
    ]


def _log() -> tuple[bytes, list[int]]:
    """A log, and the offset where each record starts (and, last, the end of the file)."""
    data = bytearray(header_bytes(PART, BASE))
    starts = []
    for seq, payload in _records():
        starts.append(len(data))
        data += frame(fmt.REC_WRITE, seq, payload)
    return bytes(data), [*starts, len(data)]


def _first_overlapping(starts: list[int], lo: int) -> int:
    """The index of the first record whose bytes reach past ``lo``."""
    return next(i for i in range(len(starts) - 1) if starts[i + 1] > lo)


def test_any_zeroed_sector_is_a_torn_tail_at_the_first_record_it_overlaps() -> None:
    """A power cut may keep the log's new size but lose any of its unsynced sectors (zeros),
    whatever the later sectors hold: the log is cut at the first record that overlaps a lost
    sector. Before, only zeros inside the last record's payload were accepted."""
    data, starts = _log()
    assert len(data) > 8 * SECTOR
    for sector in range(0, len(data), SECTOR):
        lo = max(sector, starts[0])
        if lo >= len(data):
            continue
        first = _first_overlapping(starts, lo)
        for what, damaged in (
            (
                "hole",
                data[:lo] + bytes(min(sector + SECTOR, len(data)) - lo) + data[sector + SECTOR :],
            ),
            ("zero tail", data[:lo] + bytes(len(data) - lo)),
        ):
            assert len(damaged) == len(data)
            contents = read_log(damaged, PART, "wal")
            assert contents.torn, (what, sector)
            assert contents.valid_end == starts[first], (what, sector)
            assert [r.seq for r in contents.records] == [s for s, _ in _records()[:first]]


def test_a_hole_before_a_later_record_that_reached_the_disk(tmp_path: Path) -> None:
    """A store whose log lost its second sector (inside the second record's header) while the
    records after it reached the disk: it opens with the first record only, a writable open cuts
    the file there, and a read-only one leaves it alone."""
    path = tmp_path / "db"
    db = halodb.open(path, partitions=1)
    db["a"] = "x" * 442  # the second record's header straddles offset 512
    db["b"] = "y" * 600
    db["c"] = "z" * 600
    _abandon(db)
    wal = _wal(path, 0)
    data = bytearray(wal.read_bytes())
    data[SECTOR : 2 * SECTOR] = bytes(SECTOR)
    wal.write_bytes(bytes(data))
    with halodb.open(path, readonly=True) as ro:
        assert dict(ro.items()) == {"a": "x" * 442}
    assert wal.read_bytes() == bytes(data)
    with halodb.open(path) as db:
        assert dict(db.items()) == {"a": "x" * 442}
        db.check()
    with halodb.open(path) as db:
        assert dict(db.items()) == {"a": "x" * 442}


def test_a_flipped_byte_in_any_record_of_a_long_log_is_still_damage() -> None:
    data, starts = _log()
    for pos in range(starts[0], len(data)):
        damaged = bytearray(data)
        damaged[pos] ^= 0x41
        with pytest.raises(CorruptionError):
            read_log(bytes(damaged), PART, "wal")


def test_known_limit_damage_in_a_record_holding_a_zeroed_sector_reads_as_torn() -> None:
    """The documented limit: a value holding a whole sector of zeros cannot be told from a lost
    sector, so damage elsewhere in its record cuts the log there instead of raising."""
    data = bytearray(header_bytes(PART, BASE))
    data += frame(fmt.REC_WRITE, BASE + 1, encode_put(b"\x30a", b"\x00" + bytes(2 * SECTOR)))
    data += frame(fmt.REC_WRITE, BASE + 2, encode_put(b"\x30b", b"\x01b"))
    data[28 + 21 + 2] ^= 0x01  # in the first record's entry header (its key length)
    contents = read_log(bytes(data), PART, "wal")
    assert contents.torn and contents.records == [] and contents.valid_end == 28


def test_a_zeroed_sector_after_a_clean_close_is_still_damage() -> None:
    data = header_bytes(PART, BASE) + frame(fmt.REC_CLOSE, BASE + 1, b"")
    with pytest.raises(CorruptionError, match="clean close"):
        read_log(data + bytes(SECTOR), PART, "wal")


# -- 4: sequence numbers near 2^64 ------------------------------------------------------------


def test_sequence_numbers_of_2_62_or_more_are_damage() -> None:
    good = header_bytes(PART, BASE) + frame(fmt.REC_WRITE, fmt.SEQ_LIMIT - 1, b"\x00")
    assert [r.seq for r in read_log(good, PART, "wal").records] == [fmt.SEQ_LIMIT - 1]
    for seq in (fmt.SEQ_LIMIT, 2**64 - 2, 2**64 - 1):
        bad = header_bytes(PART, BASE) + frame(fmt.REC_WRITE, seq, b"\x00")
        with pytest.raises(CorruptionError, match="sequence"):
            read_log(bad, PART, "wal")
        with pytest.raises(CorruptionError, match="base_seq"):
            read_log(header_bytes(PART, seq), PART, "wal")


def test_a_log_record_at_sequence_2_64_minus_1_is_refused_at_open(tmp_path: Path) -> None:
    """It used to open, and the next write raised ``struct.error`` (sequence 2^64)."""
    path = tmp_path / "db"
    db = halodb.open(path, partitions=1)
    db["a"] = "b"
    _abandon(db)
    wal = _wal(path, 0)
    wal.write_bytes(
        wal.read_bytes() + frame(fmt.REC_WRITE, 2**64 - 1, encode_put(b"\x30c", b"\x01d"))
    )
    for readonly in (True, False):
        with pytest.raises(CorruptionError):
            halodb.open(path, readonly=readonly)


# -- 5: keys and values over the store's limits ------------------------------------------------


def _append_put(path: Path, key: bytes, value: bytes) -> None:
    wal = _wal(path, 0)
    data = wal.read_bytes()
    seq = max([r.seq for r in read_log(data, 0, "wal").records], default=1000) + 1
    wal.write_bytes(data + frame(fmt.REC_WRITE, seq, encode_put(key, value)))


def test_a_log_key_longer_than_the_store_allows_is_corruption(tmp_path: Path) -> None:
    """Such a key was replayed: check() passed, a read raised DataError and every flush
    InternalError. A key of exactly the limit is fine."""
    path = tmp_path / "db"
    db = halodb.open(path, partitions=1, page_size=1024)
    db["a"] = "b"
    _abandon(db)
    limit = 1024 // 8
    _append_put(path, b"\x40" + b"k" * (limit - 1), b"\x01at the limit")
    with halodb.open(path) as db:
        assert db[b"k" * (limit - 1)] == "at the limit"
        db.check()
        db["x"] = "y"  # the log now holds a record after the clean-close check
        _abandon(db)
    _append_put(path, b"\x40" + b"k" * limit, b"\x01over")
    for readonly in (True, False):
        with pytest.raises(CorruptionError, match="byte key"):
            halodb.open(path, readonly=readonly)


def test_a_log_value_longer_than_the_store_allows_is_corruption(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real limit is 2 GiB - 1; a smaller one stands for it here."""
    path = tmp_path / "db"
    db = halodb.open(path, partitions=1)
    db["a"] = "0123456789"  # 11 encoded bytes
    _abandon(db)
    monkeypatch.setattr(halodb.engine.recovery, "MAX_VALUE_SIZE", 11)
    with halodb.open(path, readonly=True) as ro:
        assert ro["a"] == "0123456789"
    _append_put(path, b"\x30b", b"\x01" + b"v" * 11)
    with pytest.raises(CorruptionError, match="value"):
        halodb.open(path, readonly=True)


def test_the_value_limit_is_one_constant() -> None:
    assert (
        halodb.store.MAX_VALUE_SIZE == fmt.MAX_VALUE_SIZE == halodb.engine.recovery.MAX_VALUE_SIZE
    )


@pytest.mark.parametrize("seed", range(6))
def test_replay_leaves_each_key_and_the_count_as_the_writes_did(tmp_path: Path, seed: int) -> None:
    """Replay applies a log's records in bulk (each key's last entry decides, the count moves
    by the keys brought to life or ended): overwrites, deletes of keys in the tree or not,
    puts after deletes, clears and batches, in one log and across a flushed tree."""
    rng = random.Random(seed)
    path = tmp_path / "s"
    model: dict[str, Any] = {}
    db = halodb.open(path, partitions=2, background=False)

    def churn(count: int, clears: bool) -> None:
        for _ in range(count):
            key = f"k{rng.randrange(60)}"
            r = rng.random() * (1 if clears else 0.98)
            if r < 0.45:
                db[key] = model[key] = rng.randrange(1000)
            elif r < 0.8:
                db.pop(key, None)
                model.pop(key, None)
            elif r < 0.98:
                changes = {f"k{rng.randrange(60)}": rng.randrange(1000) for _ in range(3)}
                gone = f"k{rng.randrange(60)}"
                with db.batch() as batch:
                    for k, v in changes.items():
                        batch[k] = v
                    if gone not in changes:
                        del batch[gone]
                model.update(changes)
                if gone not in changes:
                    model.pop(gone, None)
            else:
                db.clear()
                model.clear()

    churn(300, False)
    db.flush()  # a tree under the log
    churn(300, seed % 2 == 1)  # (a clear resets the count: half the cases have none)
    halodb.testing.abandon(db)
    with halodb.open(path, readonly=True) as again:
        assert len(again) == len(model)
        assert dict(again.items()) == model
        again.check()
    with halodb.open(path) as again:
        assert len(again) == len(model)
        again.check()


def test_replay_of_records_without_entries_still_moves_the_sequence(tmp_path: Path) -> None:
    """A write or batch part with no entry (the format allows one; this engine writes none
    but a clear's) applies nothing, yet the partition's last sequence number and its batch
    flag follow it, as a record of one entry would."""
    db = halodb.open(tmp_path / "s", partitions=1, background=False)
    try:
        part = halodb.testing.engine(db).parts[0]
        seq = part.last_seq
        part.replay([Record(fmt.REC_WRITE, seq + 3, 0, [], ())])
        assert part.last_seq == seq + 3 and not part.batch_seen
        part.replay([Record(fmt.REC_BATCH, seq + 5, 0, [], (0, 1))])
        assert part.last_seq == seq + 5 and part.batch_seen
    finally:
        halodb.testing.abandon(db)

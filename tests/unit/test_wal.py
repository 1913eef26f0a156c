"""The write-ahead log through its own API: framing, reading back, torn tails, damage, the
writer's buffering and fsync latch."""

from __future__ import annotations

from pathlib import Path

import pytest

from halodb import format as fmt
from halodb.errors import CorruptionError, OperationalError
from halodb.vfs import File, FileSystem
from halodb.wal import (
    Entry,
    LogWriter,
    encode_batch,
    encode_entries,
    encode_put,
    frame,
    header_bytes,
    read_log,
)

PAGE = 1024
FS = FileSystem()

PART = 3
BASE = 100


Record = tuple[int, int, bytes, tuple[int, ...], int, list[Entry]]
"""(rtype, seq, payload, partitions, flags, entries) of one log record."""


def _records() -> list[Record]:
    """A few varied records."""
    e1: list[Entry] = [(b"k1", b"v1"), (b"k2", None), (b"", b""), (b"k3", b"x" * 300)]
    e2: list[Entry] = []
    e3: list[Entry] = [(b"\x00\xff", b"\x00" * 5)]
    return [
        (fmt.REC_WRITE, BASE + 1, encode_put(b"a", b"alpha"), (), 0, [(b"a", b"alpha")]),
        (fmt.REC_WRITE, BASE + 2, encode_entries(0, e1), (), 0, e1),
        (fmt.REC_WRITE, BASE + 5, encode_entries(fmt.FLAG_CLEAR, e2), (), fmt.FLAG_CLEAR, e2),
        (fmt.REC_BATCH, BASE + 9, encode_batch([1, PART, 7], 0, e3), (1, PART, 7), 0, e3),
        (fmt.REC_WRITE, BASE + 10, encode_put(b"z", b"last"), (), 0, [(b"z", b"last")]),
    ]


def _log(records: list[Record] | None = None) -> tuple[bytes, list[int]]:
    """A whole log file and the offset where each record ends."""
    data = bytearray(header_bytes(PART, BASE))
    ends = []
    for rtype, seq, payload, *_ in _records() if records is None else records:
        data += frame(rtype, seq, payload)
        ends.append(len(data))
    return bytes(data), ends


def test_wal_round_trip() -> None:
    data, ends = _log()
    contents = read_log(data, PART, "test.wal")
    assert contents.base_seq == BASE
    assert contents.torn is False
    assert contents.valid_end == len(data) == ends[-1]
    got = [(r.rtype, r.seq, r.partitions, r.flags, r.entries) for r in contents.records]
    want = [(rt, seq, parts, flags, entries) for rt, seq, _, parts, flags, entries in _records()]
    assert got == want


def test_wal_header_only_is_an_empty_log() -> None:
    data = header_bytes(PART, BASE)
    assert len(data) == fmt.WAL_HEADER.size == 28
    contents = read_log(data, PART, "test.wal")
    assert (contents.records, contents.valid_end, contents.torn) == ([], 28, False)


def test_wal_torn_tail_partial_header_or_past_eof() -> None:
    data, ends = _log()
    last_start = ends[-2]
    for cut in range(last_start + 1, ends[-1]):
        contents = read_log(data[:cut], PART, "test.wal")
        assert contents.torn, cut
        assert contents.valid_end == last_start, cut
        assert [r.seq for r in contents.records] == [r[1] for r in _records()[:-1]]
    # a cut inside an earlier record drops it and everything after it
    contents = read_log(data[: ends[1] + 3], PART, "test.wal")
    assert contents.torn and contents.valid_end == ends[1] and len(contents.records) == 2


@pytest.mark.parametrize("zeros", [1, 7, 20, 21, 22, 64, 4096])
def test_wal_zero_filled_tail_is_torn(zeros: int) -> None:
    data, ends = _log()
    contents = read_log(data + bytes(zeros), PART, "test.wal")
    assert contents.torn and contents.valid_end == ends[-1] and len(contents.records) == 5
    # a crash that extended the file with zeros over the last record: torn, not damage
    overwritten = data[: ends[-2]] + bytes(len(data) - ends[-2] + zeros)
    contents = read_log(overwritten, PART, "test.wal")
    assert contents.torn and contents.valid_end == ends[-2] and len(contents.records) == 4


@pytest.mark.parametrize("which", [1, 3, 4], ids=["second", "fourth", "last"])
def test_wal_any_flipped_byte_in_a_complete_record_is_damage(which: int) -> None:
    data, ends = _log()
    start = ends[which - 1]
    for pos in range(start, ends[which]):
        for mask in (0x01, 0x80, 0xFF):
            damaged = bytearray(data)
            damaged[pos] ^= mask
            with pytest.raises(CorruptionError):
                read_log(bytes(damaged), PART, "test.wal")


def test_wal_any_flipped_byte_in_the_header_is_damage() -> None:
    data, _ = _log()
    for pos in range(fmt.WAL_HEADER.size):
        damaged = bytearray(data)
        damaged[pos] ^= 0x10
        with pytest.raises(CorruptionError):
            read_log(bytes(damaged), PART, "test.wal")


def test_wal_all_zero_headers_never_check_out() -> None:
    with pytest.raises(CorruptionError):
        read_log(bytes(fmt.WAL_HEADER.size), PART, "test.wal")
    with pytest.raises(CorruptionError):
        read_log(bytes(200), PART, "test.wal")
    # a zeroed record header followed by a good record: damage, not a zero-length record
    data, ends = _log()
    damaged = data[: ends[0]] + bytes(fmt.WAL_RECORD.size) + data[ends[0] :]
    with pytest.raises(CorruptionError):
        read_log(damaged, PART, "test.wal")
    # a zeroed record in the middle is damage as well
    damaged = data[: ends[0]] + bytes(ends[1] - ends[0]) + data[ends[1] :]
    with pytest.raises(CorruptionError):
        read_log(damaged, PART, "test.wal")


def test_wal_short_file_wrong_partition_or_version() -> None:
    data, _ = _log()
    for cut in range(fmt.WAL_HEADER.size):
        with pytest.raises(CorruptionError):
            read_log(data[:cut], PART, "test.wal")
    with pytest.raises(CorruptionError, match="partition"):
        read_log(data, PART + 1, "test.wal")
    head = fmt.WAL_HEADER.pack(fmt.WAL_MAGIC, fmt.FORMAT_VERSION + 1, PART, 0, BASE, 0)
    head = head[:-4] + fmt.U32.pack(fmt.crc(head[:-4]))
    with pytest.raises(CorruptionError):
        read_log(head, PART, "test.wal")


@pytest.mark.parametrize("seqs", [(5, 3), (5, 5), (BASE, BASE + 1), (BASE - 1,)])
def test_wal_sequence_going_backwards_is_damage(seqs: tuple[int, ...]) -> None:
    seqs = tuple(s if s >= BASE - 1 else BASE + s for s in seqs)
    data = header_bytes(PART, BASE)
    for seq in seqs:
        data += frame(fmt.REC_WRITE, seq, encode_put(b"k", b"v"))
    with pytest.raises(CorruptionError, match="sequence"):
        read_log(data, PART, "test.wal")


@pytest.mark.parametrize(
    ("rtype", "payload"),
    [
        (9, encode_put(b"k", b"v")),
        (fmt.REC_WRITE, b""),
        (fmt.REC_WRITE, b"\x02"),
        (fmt.REC_WRITE, b"\x00" + fmt.ENTRY.pack(7, 1, 0) + b"k"),
        (fmt.REC_WRITE, b"\x00" + fmt.ENTRY.pack(fmt.OP_PUT, 1, 9) + b"kv"),
        (fmt.REC_WRITE, b"\x00" + fmt.ENTRY.pack(fmt.OP_DELETE, 1, 1) + b"kv"),
        (fmt.REC_WRITE, b"\x00" + fmt.ENTRY.pack(fmt.OP_PUT, 1, 1)[:-1]),
        (fmt.REC_BATCH, encode_batch([PART], 0, [(b"k", b"v")])),
        (fmt.REC_BATCH, b"\x05\x00\x01\x00"),
        (fmt.REC_BATCH, b"\x01"),
    ],
    ids=[
        "type",
        "empty",
        "flags",
        "op",
        "put-past-end",
        "delete-with-value",
        "short-entry",
        "batch-of-one",
        "batch-count-past-end",
        "batch-short",
    ],
)
def test_wal_malformed_payload_with_good_checksums_is_damage(rtype: int, payload: bytes) -> None:
    data = header_bytes(PART, BASE) + frame(rtype, BASE + 1, payload)
    with pytest.raises(CorruptionError):
        read_log(data, PART, "test.wal")


def test_wal_writer_buffered_and_unbuffered(tmp_path: Path) -> None:
    path = str(tmp_path / "w.wal")
    FS.write_new(path, header_bytes(PART, BASE))
    records = [frame(fmt.REC_WRITE, BASE + i, encode_put(b"k%d" % i, b"v")) for i in range(1, 9)]
    handle = FS.open(path, write=True)
    writer = LogWriter(handle, handle.size(), buffer_limit=None)
    end = writer.append(records[0])
    assert FS.open(path).read_all() == header_bytes(PART, BASE) + records[0]
    writer.sync_to(end)
    assert writer.synced >= end
    writer.retire(durable=True)

    handle = FS.open(path, write=True)
    writer = LogWriter(handle, handle.size(), buffer_limit=len(records[1]) * 3)
    for record in records[1:3]:
        writer.append(record)
    assert len(FS.open(path).read_all()) == end  # still in the process
    writer.append(records[3])  # reaches the limit: handed to the OS
    writer.append(records[4])
    after_limit = FS.open(path).read_all()
    assert after_limit == header_bytes(PART, BASE) + b"".join(records[:4])
    writer.write_out()
    contents = read_log(FS.open(path).read_all(), PART, path)
    assert [r.seq for r in contents.records] == [BASE + i for i in range(1, 6)]
    assert contents.torn is False
    writer.retire(durable=False)
    with pytest.raises(OperationalError, match="closed before this write was synced"):
        writer.sync_to(writer.end)  # never a success for records no fsync covered


class _FlakySync(File):
    """A file whose fsync raises each of ``failures`` (last first) before it works again."""

    __slots__ = ("failures",)
    failures: list[BaseException]

    def sync(self) -> None:
        if self.failures:
            raise self.failures.pop()
        super().sync()


def test_wal_writer_latches_a_failed_fsync_but_not_an_interrupt(tmp_path: Path) -> None:
    """A failed fsync may have dropped the log's dirty pages: every later sync fails, also of
    records appended after it. An interrupt during an fsync is no failed fsync."""
    path = str(tmp_path / "w.wal")
    FS.write_new(path, header_bytes(PART, BASE))
    opened = FS.open(path, write=True)
    handle = _FlakySync(FS, opened.path, opened.fd)
    failures = handle.failures = [KeyboardInterrupt()]
    writer = LogWriter(handle, handle.size(), buffer_limit=None)
    end = writer.append(frame(fmt.REC_WRITE, BASE + 1, encode_put(b"a", b"v")))
    with pytest.raises(KeyboardInterrupt):
        writer.sync_to(end)
    writer.sync_to(end)  # the interrupt is not remembered
    failures.append(OperationalError("injected fsync failure"))
    end = writer.append(frame(fmt.REC_WRITE, BASE + 2, encode_put(b"b", b"v")))
    with pytest.raises(OperationalError, match="injected"):
        writer.sync_to(end)
    end = writer.append(frame(fmt.REC_WRITE, BASE + 3, encode_put(b"c", b"v")))
    with pytest.raises(OperationalError, match="earlier fsync of this log failed"):
        writer.sync_to(end)
    writer.retire(durable=False)


@pytest.mark.parametrize(
    ("key", "value"), [(b"", b""), (b"k", b"v"), (b"\x00" * 40, bytes(range(256)) * 20)]
)
def test_wal_frame_put_is_the_general_frame_byte_for_byte(key: bytes, value: bytes) -> None:
    """The put hot path frames records itself; it must write exactly what frame() does."""
    from halodb.wal import frame_put

    assert frame_put(12345, key, value) == frame(fmt.REC_WRITE, 12345, encode_put(key, value))

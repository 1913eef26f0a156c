"""Unit tests per engine module, each through its own API: wal, bloom, pager, btree, memtable.

Store-level behaviour lives in the other test files; here every module is driven directly, with
byte-exact damage where the module promises to detect it.
"""

from __future__ import annotations

import gc
import linecache
import os
import random
import sys
import threading
import time
from bisect import bisect_left
from pathlib import Path
from typing import Any, ClassVar

import mmh3
import pytest
from bitarray import bitarray

import halodb
from halodb import btree as btree_module
from halodb import collector, testing
from halodb import format as fmt
from halodb.bloom import MIN_BITS, BloomFilter
from halodb.btree import (
    BYTES_OBJECT,
    OVERFLOW_OBJECT,
    ROW_OVERHEAD,
    BTree,
    Internal,
    Leaf,
    limits,
)
from halodb.errors import CorruptionError, OperationalError
from halodb.hashing import key_hash
from halodb.memtable import ENTRY_OVERHEAD, Memtable
from halodb.pager import Pager, new_tree_file
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

# =============================================================================================
# wal
# =============================================================================================

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


# =============================================================================================
# bloom
# =============================================================================================

SEED = 0xC0FFEE


def _keys(n: int, tag: bytes) -> list[bytes]:
    return [tag + b"%08d" % i for i in range(n)]


def test_bloom_has_no_false_negatives() -> None:
    keys = _keys(10_000, b"in")
    bloom = BloomFilter.for_keys(len(keys), 10)
    for key in keys:
        bloom.add(key_hash(key, SEED))
    assert all(bloom.might_contain(key_hash(key, SEED)) for key in keys)


@pytest.mark.parametrize("bits_per_key", [6, 10, 16])
def test_bloom_false_positive_rate_is_near_the_target(bits_per_key: int) -> None:
    n = 10_000
    bloom = BloomFilter.for_keys(n, bits_per_key)
    for key in _keys(n, b"in"):
        bloom.add(key_hash(key, SEED))
    probes = _keys(50_000, b"out")
    rate = sum(bloom.might_contain(key_hash(k, SEED)) for k in probes) / len(probes)
    # the textbook rate of this size and number of probes
    m, k = bloom.nbits, bloom.hashes
    expected = (1 - (1 - 1 / m) ** (k * n)) ** k
    optimum = 0.6185**bits_per_key  # what ln 2 probes per bit would give
    assert expected < 2.5 * optimum, (bits_per_key, k, expected, optimum)
    assert expected / 2 < rate < expected * 1.6 + 0.0005, (rate, expected)


def test_key_hash_is_the_documented_murmur3_halves() -> None:
    """Routing and the bloom bits on disk depend on it: ``mmh3.hash64(key, seed, signed=False)``."""
    rng = random.Random(5)
    for _ in range(2000):
        key, seed = rng.randbytes(rng.randrange(40)), rng.randrange(1 << 32)
        assert key_hash(key, seed) == mmh3.hash64(key, seed, signed=False)


@pytest.mark.parametrize("bits_per_key", [2, 6, 10, 16])
def test_bloom_sets_and_tests_exactly_the_documented_bits(bits_per_key: int) -> None:
    """Probe ``i`` is bit ``(h1 + i * h2) mod m`` whatever the number of probes (the default
    of 5 has its own unrolled code)."""
    bloom = BloomFilter.for_keys(500, bits_per_key)
    m, k = bloom.nbits, bloom.hashes
    expected = bitarray(m, endian="little")
    expected.setall(0)
    for key in _keys(500, b"in"):
        h1, h2 = key_hash(key, SEED)
        probes = [(h1 + i * h2) % m for i in range(k)]
        before = all(expected[p] for p in probes)
        for p in probes:
            expected[p] = 1
        assert bloom.add((h1, h2)) == before
    assert bloom.bits == expected
    for key in _keys(5000, b"out"):
        h1, h2 = key_hash(key, SEED)
        assert bloom.might_contain((h1, h2)) == all(expected[(h1 + i * h2) % m] for i in range(k))
    rebuilt = BloomFilter.for_keys(500, bits_per_key)  # add_all, a rebuild's bulk add
    rebuilt.add_all(key_hash(key, SEED) for key in _keys(500, b"in"))
    assert rebuilt.bits == expected


def test_bloom_serialisation_round_trip() -> None:
    keys = _keys(3000, b"k")
    bloom = BloomFilter.for_keys(len(keys), 10)
    for key in keys:
        bloom.add(key_hash(key, SEED))
    data = bloom.to_bytes(5, 77)
    back, txn = BloomFilter.from_bytes(data, 5, "p005.bloom")
    assert txn == 77
    assert (back.nbits, back.hashes, back.capacity) == (bloom.nbits, bloom.hashes, bloom.capacity)
    assert back.bits == bloom.bits
    assert all(back.might_contain(key_hash(key, SEED)) for key in keys)
    assert back.to_bytes(5, 77) == data
    assert len(data) == fmt.BLOOM_HEADER.size + bloom.nbits // 8


def test_bloom_any_damage_is_detected() -> None:
    bloom = BloomFilter.for_keys(200, 10)
    for key in _keys(200, b"k"):
        bloom.add(key_hash(key, SEED))
    data = bloom.to_bytes(1, 9)
    rng = random.Random(1)
    for pos in range(len(data)):
        damaged = bytearray(data)
        damaged[pos] ^= rng.randrange(1, 256)
        with pytest.raises(CorruptionError):
            BloomFilter.from_bytes(bytes(damaged), 1, "p001.bloom")
    for cut in range(len(data)):
        with pytest.raises(CorruptionError):
            BloomFilter.from_bytes(data[:cut], 1, "p001.bloom")
    for extra in (b"\x00", b"\x00" * 8, b"garbage!"):
        with pytest.raises(CorruptionError):
            BloomFilter.from_bytes(data + extra, 1, "p001.bloom")
    with pytest.raises(CorruptionError):
        BloomFilter.from_bytes(data, 2, "p002.bloom")  # another partition's filter
    with pytest.raises(CorruptionError):
        BloomFilter.from_bytes(bytes(len(data)), 1, "p001.bloom")


@pytest.mark.parametrize(
    ("nbits", "hashes", "body"),
    [
        (0, 5, 0),
        (MIN_BITS - 64, 5, (MIN_BITS - 64) // 8),
        (MIN_BITS + 1, 5, 128),
        (MIN_BITS, 0, 128),
        (MIN_BITS, 17, 128),
        (MIN_BITS, 5, 127),
    ],
)
def test_bloom_impossible_header_with_good_checksums(nbits: int, hashes: int, body: int) -> None:
    bits = bytes(body)
    head = fmt.BLOOM_HEADER.pack(
        fmt.BLOOM_MAGIC, fmt.FORMAT_VERSION, 0, hashes, 0, nbits, 100, 1, fmt.crc(bits), 0
    )
    head = head[:-4] + fmt.U32.pack(fmt.crc(head[:-4]))
    with pytest.raises(CorruptionError):
        BloomFilter.from_bytes(head + bits, 0, "p000.bloom")


# =============================================================================================
# pager
# =============================================================================================


def _new_pager(tmp_path: Path, *, partition: int = 0, cache_pages: int = 64) -> Pager:
    path = tmp_path / f"p{partition:03d}.tree"
    if not path.exists():
        FS.write_new(str(path), new_tree_file(partition, PAGE))
    return Pager(FS, str(path), partition, PAGE, cache_pages, False)


def _body(tag: int, fill: int = 100) -> bytes:
    return fmt.PAGE_HEADER.pack(0, fmt.PAGE_OVERFLOW, 0, fill, 0, 0)[4:] + bytes([tag]) * fill


def test_pager_new_file_opens_empty(tmp_path: Path) -> None:
    pager = _new_pager(tmp_path)
    meta = pager.meta
    assert (meta.height, meta.root, meta.page_count, meta.key_count, meta.free_count) == (
        0,
        0,
        2,
        0,
        0,
    )
    assert meta.txn == 1 and pager.free == []
    assert (tmp_path / "p000.tree").stat().st_size == 2 * PAGE
    pager.close()
    pager.close()  # idempotent


def test_pager_allocate_write_commit_reopen(tmp_path: Path) -> None:
    pager = _new_pager(tmp_path)
    pages = [pager.allocate() for _ in range(3)]
    assert pages == [2, 3, 4]
    crcs = [pager.write_page(p, _body(p)) for p in pages]
    pager.commit(root=3, root_crc=crcs[1], height=1, flushed_seq=42, key_count=7)
    assert pager.meta.txn == 2
    pager.close()

    pager = _new_pager(tmp_path)
    meta = pager.meta
    assert (meta.txn, meta.root, meta.root_crc, meta.height) == (2, 3, crcs[1], 1)
    assert (meta.flushed_seq, meta.key_count, meta.page_count) == (42, 7, 5)
    for page_no, crc in zip(pages, crcs, strict=True):
        page = pager.read_page(page_no, crc, "test")
        assert page[4:] == _body(page_no) + bytes(PAGE - 4 - len(_body(page_no)))
    with pytest.raises(CorruptionError, match="not the version"):
        pager.read_page(2, crcs[0] ^ 1, "test")
    for outside in (0, 1, 5, 10**6):
        with pytest.raises(CorruptionError, match="outside"):
            pager.read_page(outside, None, "test")
    pager.close()


def test_pager_page_written_at_the_wrong_place_is_detected(tmp_path: Path) -> None:
    pager = _new_pager(tmp_path)
    for page_no in (pager.allocate(), pager.allocate()):
        pager.write_page(page_no, _body(page_no))
    pager.commit(root=0, root_crc=0, height=0, flushed_seq=1, key_count=0)
    pager.close()
    path = tmp_path / "p000.tree"
    data = bytearray(path.read_bytes())
    data[3 * PAGE : 4 * PAGE] = data[2 * PAGE : 3 * PAGE]
    path.write_bytes(bytes(data))
    pager = _new_pager(tmp_path)
    pager.read_page(2, None, "test")
    with pytest.raises(CorruptionError, match="checksum"):
        pager.read_page(3, None, "test")
    pager.close()


def test_pager_freed_pages_are_reused_only_from_the_next_txn(tmp_path: Path) -> None:
    pager = _new_pager(tmp_path)
    first = [pager.allocate() for _ in range(10)]
    for p in first:
        pager.write_page(p, _body(p))
    pager.commit(root=0, root_crc=0, height=0, flushed_seq=1, key_count=0)

    for p in first[:6]:
        pager.release(p)
    during = [pager.allocate() for _ in range(4)]
    assert not set(during) & set(first), "a page freed by this txn was reused by it"
    for p in during:
        pager.write_page(p, _body(p))
    pager.commit(root=0, root_crc=0, height=0, flushed_seq=2, key_count=0)
    free_after = set(pager.free)
    assert set(first[:6]) <= free_after

    pager.close()
    pager = _new_pager(tmp_path)
    assert set(pager.free) == free_after
    assert pager.meta.free_count == len(free_after)
    reused = {pager.allocate() for _ in range(len(free_after))}
    assert reused == free_after
    assert pager.allocate() == pager.meta.page_count  # then the file grows
    pager.close()


def test_pager_free_list_spanning_several_pages(tmp_path: Path) -> None:
    pager = _new_pager(tmp_path)
    pages = [pager.allocate() for _ in range(700)]
    for p in pages:
        pager.write_page(p, _body(p % 256))
    pager.commit(root=0, root_crc=0, height=0, flushed_seq=1, key_count=0)
    for p in pages:
        pager.release(p)
    pager.commit(root=0, root_crc=0, height=0, flushed_seq=2, key_count=0)
    pager.commit(root=0, root_crc=0, height=0, flushed_seq=3, key_count=0)
    pager.close()
    pager = _new_pager(tmp_path)
    # every page but the meta pages and the free-list pages themselves is free
    assert len(pager.freelist_pages) >= 3
    assert sorted(pager.free + pager.freelist_pages) == list(range(2, pager.meta.page_count))
    pager.close()


def _two_commits(tmp_path: Path) -> tuple[int, int]:
    pager = _new_pager(tmp_path)
    a = pager.allocate()
    crc_a = pager.write_page(a, _body(1))
    pager.commit(root=a, root_crc=crc_a, height=1, flushed_seq=10, key_count=1)
    pager.release(a)
    b = pager.allocate()
    crc_b = pager.write_page(b, _body(2))
    pager.commit(root=b, root_crc=crc_b, height=1, flushed_seq=20, key_count=2)
    assert pager.meta.txn == 3
    pager.close()
    return a, b


@pytest.mark.parametrize("tear", ["zero-tail", "half-written", "zeroed", "bit-flip", "cut-file"])
def test_pager_meta_fallback_when_the_newest_meta_page_is_torn(tmp_path: Path, tear: str) -> None:
    a, _ = _two_commits(tmp_path)
    path = tmp_path / "p000.tree"
    data = bytearray(path.read_bytes())
    newest = 3 % 2
    start = newest * PAGE
    if tear == "zero-tail":
        data[start + 40 : start + PAGE] = bytes(PAGE - 40)
    elif tear == "half-written":  # the old meta page of that slot, half overwritten
        data[start + 36 : start + PAGE] = new_tree_file(0, PAGE)[start + 36 : start + PAGE]
    elif tear == "zeroed":
        data[start : start + PAGE] = bytes(PAGE)
    elif tear == "bit-flip":
        data[start + 30] ^= 0x04
    path.write_bytes(bytes(data))
    if tear == "cut-file":
        # the newest meta names more pages than the file holds: that is damage, not a tear
        with path.open("r+b") as handle:
            handle.truncate(3 * PAGE)
        with pytest.raises(CorruptionError):
            _new_pager(tmp_path)
        return
    pager = _new_pager(tmp_path)
    assert (pager.meta.txn, pager.meta.root, pager.meta.flushed_seq) == (2, a, 10)
    assert pager.read_page(a, pager.meta.root_crc, "test")[4:].startswith(_body(1))
    pager.close()


def test_pager_both_meta_pages_damaged(tmp_path: Path) -> None:
    _two_commits(tmp_path)
    path = tmp_path / "p000.tree"
    data = bytearray(path.read_bytes())
    data[10] ^= 1
    data[PAGE + 10] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptionError, match="both meta pages"):
        _new_pager(tmp_path)


def test_pager_meta_of_another_partition_or_page_size(tmp_path: Path) -> None:
    _two_commits(tmp_path)
    (tmp_path / "p000.tree").rename(tmp_path / "p001.tree")
    with pytest.raises(CorruptionError):
        _new_pager(tmp_path, partition=1)
    with pytest.raises(CorruptionError):
        Pager(FS, str(tmp_path / "p001.tree"), 0, 2048, 16, False)


# =============================================================================================
# btree
# =============================================================================================


def _tree(tmp_path: Path, cache_pages: int = 64) -> BTree:
    return BTree(_new_pager(tmp_path, cache_pages=cache_pages))


def _verify(
    tree: BTree, model: dict[bytes, bytes], rng: random.Random, gone: set[bytes] | None = None
) -> None:
    """The tree equals ``model`` by every read path; ``gone``: keys deleted at some point."""
    tree.check()
    # The row cache's byte count may overestimate (a leaf read from disk charges rows it
    # holds already), never underestimate.
    assert tree.rows_bytes >= _row_bytes(tree)
    for key, value in model.items():  # the row cache may miss, never be wrong
        assert tree.get_cached(key) in (None, value), key
    for key in sorted(gone or ())[:300]:
        if key not in model:
            assert tree.get_cached(key) is None, key
            assert tree.get(key) is None and not tree.contains(key), key
    items = sorted(model.items())
    keys = [k for k, _ in items]
    assert list(tree.iterate(None, None)) == items
    assert list(tree.iterate(None, None, reverse=True)) == items[::-1]
    assert tree.pager.meta.key_count == len(model)
    for _ in range(6):
        lo = rng.choice([None, _rand_key(rng), *keys[:1], *rng.sample(keys, min(2, len(keys)))])
        hi = rng.choice([None, _rand_key(rng), *rng.sample(keys, min(2, len(keys)))])
        a = 0 if lo is None else bisect_left(keys, lo)
        b = len(keys) if hi is None else bisect_left(keys, hi)
        want = items[a:b] if a < b else []
        assert list(tree.iterate(lo, hi)) == want, (lo, hi)
        assert list(tree.iterate(lo, hi, reverse=True)) == want[::-1], (lo, hi)
    for key in rng.sample(keys, min(25, len(keys))):
        assert tree.get(key) == model[key]
        assert tree.contains(key)
    for _ in range(10):
        key = _rand_key(rng)
        assert tree.get(key) == model.get(key)
        assert tree.contains(key) == (key in model)


def _row_bytes(tree: BTree) -> int:
    """What the row cache's entries take: a bytes object per key and value (an overflow value
    is an ``Overflow`` named tuple and its three ints instead)."""
    assert ROW_OVERHEAD == 2 * BYTES_OBJECT
    return sum(
        len(k) + BYTES_OBJECT + (len(v) + BYTES_OBJECT if type(v) is bytes else OVERFLOW_OBJECT)
        for k, v in tree.rows.items()
    )


def _rand_key(rng: random.Random) -> bytes:
    if rng.random() < 0.8:
        return b"k%05d" % rng.randrange(4000)
    return bytes(rng.randrange(256) for _ in range(rng.randrange(1, limits(PAGE)[0] + 1)))


def _rand_value(rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.08:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(257, 4000)))  # overflow
    if r < 0.15:
        return b"v" * rng.randrange(200, 257)  # large but inline
    return b"v%d" % rng.randrange(10**9) * rng.randrange(1, 4)


@pytest.mark.parametrize("cache_pages", [16, 4096])
def test_btree_random_changes_against_a_dict(tmp_path: Path, cache_pages: int) -> None:
    rng = random.Random(cache_pages)
    tree = _tree(tmp_path, cache_pages)
    model: dict[bytes, bytes] = {}
    gone: set[bytes] = set()
    for round_no in range(45):
        seq = round_no + 1
        changes: dict[bytes, bytes | None] = {}
        size = rng.choice([1, 5, 40, 150, 400])
        delete_share = 0.1 if round_no < 10 else 0.35
        for _ in range(size):
            if model and rng.random() < delete_share:
                changes[rng.choice(list(model))] = None
            elif rng.random() < 0.05:
                changes[_rand_key(rng)] = None  # delete of an absent key
            else:
                changes[_rand_key(rng)] = _rand_value(rng)
        count = tree.apply(sorted(changes.items()), clear=False, flushed_seq=seq)
        for key, value in changes.items():
            if value is None:
                model.pop(key, None)
                gone.add(key)
            else:
                model[key] = value
        assert count == len(model)
        assert tree.pager.meta.flushed_seq == seq
        if cache_pages == 4096:  # every node in the cache: flushes account rows exactly
            assert tree.rows_bytes == _row_bytes(tree)
        _verify(tree, model, rng, gone)
    tree.pager.close()
    tree = _tree(tmp_path, cache_pages)
    _verify(tree, model, rng, gone)
    assert tree.pager.meta.height >= 2
    tree.pager.close()


@pytest.mark.parametrize("size", [0, 1, 256, 257, PAGE - 16, PAGE - 15, 5000, 3 * (PAGE - 16)])
def test_btree_value_sizes_inline_and_overflow(tmp_path: Path, size: int) -> None:
    tree = _tree(tmp_path)
    value = bytes(random.Random(size).randrange(256) for _ in range(size))
    changes = [(b"a", b"small"), (b"big", value), (b"z", b"small")]
    tree.apply(changes, clear=False, flushed_seq=1)
    report = tree.check()
    expected_pages = 0 if size <= limits(PAGE)[1] else -(-size // (PAGE - fmt.PAGE_HEADER.size))
    assert report.overflow_pages == expected_pages
    assert tree.get(b"big") == value
    tree.pager.close()
    tree = _tree(tmp_path)
    assert tree.get(b"big") == value
    assert dict(tree.iterate(None, None))[b"big"] == value
    # replacing and then deleting the value gives its overflow pages back
    tree.apply([(b"big", b"tiny")], clear=False, flushed_seq=2)
    assert tree.check().overflow_pages == 0 and tree.get(b"big") == b"tiny"
    tree.apply([(b"big", None)], clear=False, flushed_seq=3)
    report = tree.check()
    assert report.keys == 2 and tree.get(b"big") is None
    tree.pager.close()


def test_btree_damaged_overflow_page_is_detected(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    tree.apply([(b"big", b"x" * 3000)], clear=False, flushed_seq=1)
    tree.pager.close()
    path = tmp_path / "p000.tree"
    data = bytearray(path.read_bytes())
    data[3 * PAGE + 100] ^= 1  # the overflow chain's second page
    path.write_bytes(bytes(data))
    tree = _tree(tmp_path)
    with pytest.raises(CorruptionError):
        tree.get(b"big")
    with pytest.raises(CorruptionError):
        tree.check()
    tree.pager.close()


def test_btree_clear(tmp_path: Path) -> None:
    rng = random.Random(5)
    tree = _tree(tmp_path)
    old = {b"k%05d" % i: _rand_value(rng) for i in range(800)}
    tree.apply(sorted(old.items()), clear=False, flushed_seq=1)
    assert tree.check().keys == 800
    new = {b"n%03d" % i: b"x" * 300 for i in range(5)}
    new_items: list[tuple[bytes, bytes | None]] = sorted(new.items())
    assert tree.apply([*new_items, (b"zz", None)], clear=True, flushed_seq=2) == 5
    _verify(tree, new, rng, set(old))
    assert tree.apply([], clear=True, flushed_seq=3) == 0
    report = tree.check()
    assert report.keys == 0 and tree.pager.meta.height == 0
    assert list(tree.iterate(None, None)) == []
    tree.pager.close()
    tree = _tree(tmp_path)
    assert list(tree.iterate(None, None)) == [] and tree.get(b"n000") is None
    tree.pager.close()


def test_btree_delete_down_to_one_leaf(tmp_path: Path) -> None:
    """Deleting all but a leaf's worth of keys leaves a root with one child, which the tree
    must shrink away (or at least keep readable)."""
    tree = _tree(tmp_path)
    model = {b"k%04d" % i: b"x" * 50 for i in range(200)}
    tree.apply(sorted(model.items()), clear=False, flushed_seq=1)
    assert tree.pager.meta.height == 2
    doomed = sorted(model)[3:]
    tree.apply([(k, None) for k in doomed], clear=False, flushed_seq=2)
    for key in doomed:
        del model[key]
    _verify(tree, model, random.Random(0))
    tree.pager.close()


def test_btree_internal_node_left_with_one_child(tmp_path: Path) -> None:
    """Deleting every leaf but one under an internal node (height 3) must keep the tree
    readable: each node it writes must be one it can read back."""
    tree = _tree(tmp_path)
    model = {b"k%04d" % i: b"x" * 50 for i in range(3000)}
    tree.apply(sorted(model.items()), clear=False, flushed_seq=1)
    assert tree.pager.meta.height == 3
    # keep one key in each thousand: every level-1 node keeps a single leaf
    doomed = [k for i, k in enumerate(sorted(model)) if i % 1000 != 500]
    tree.apply([(k, None) for k in doomed], clear=False, flushed_seq=2)
    for key in doomed:
        del model[key]
    tree.pager.close()
    tree = _tree(tmp_path)
    _verify(tree, model, random.Random(0))
    tree.pager.close()


# =============================================================================================
# memtable
# =============================================================================================


def test_memtable_ordering_and_ranges() -> None:
    rng = random.Random(3)
    mem = Memtable()
    model: dict[bytes, bytes | None] = {}
    for _ in range(3000):
        key = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 6)))
        value = None if rng.random() < 0.2 else b"v" * rng.randrange(5)
        mem.put(key, value)
        model[key] = value
        if rng.random() < 0.01:  # ordered reads in between take pending keys in
            assert list(mem.keys(None, None, reverse=False)) == sorted(model)
    keys = sorted(model)
    assert len(mem) == len(model)
    assert list(mem.keys(None, None, reverse=False)) == keys
    assert list(mem.keys(None, None, reverse=True)) == keys[::-1]
    assert mem.items() == [(k, model[k]) for k in keys]
    for _ in range(200):
        lo, hi = (bytes(rng.randrange(256) for _ in range(rng.randrange(0, 4))) for _ in "ab")
        want = [k for k in keys if lo <= k < hi]
        assert list(mem.keys(lo, hi, reverse=False)) == want
        assert list(mem.keys(lo, hi, reverse=True)) == want[::-1]
        assert list(mem.keys(lo, None, reverse=False)) == [k for k in keys if k >= lo]
        assert list(mem.keys(None, hi, reverse=True)) == [k for k in keys if k < hi][::-1]


def test_memtable_columns_with_and_without_ordered_reads_between() -> None:
    """``columns`` sorts the pending keys alone when no ordered read took any in, and merges
    them with the ordered ones otherwise; either way every key once, in order, with its value."""
    rng = random.Random(5)
    for reads in (False, True):
        mem = Memtable()
        model: dict[bytes, bytes | None] = {}
        for round_ in range(3):
            for _ in range(1500):
                key = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 4)))
                value = None if rng.random() < 0.2 else b"v" * rng.randrange(4)
                mem.put(key, value)
                model[key] = value
                if reads and rng.random() < 0.01:
                    next(mem.keys(None, None, reverse=False), None)
            assert bool(mem.order) == reads
            keys = sorted(model)
            assert mem.columns() == (keys, [model[k] for k in keys]), (reads, round_)
        mem.clear()
        mem.put(b"b", b"2")
        mem.put(b"a", None)
        assert mem.columns() == ([b"a", b"b"], [None, b"2"])


def test_memtable_size_accounting_and_tombstones() -> None:
    mem = Memtable()

    def expected(model: dict[bytes, bytes | None]) -> int:
        return sum(len(k) + ENTRY_OVERHEAD + len(v or b"") for k, v in model.items())

    rng = random.Random(4)
    model: dict[bytes, bytes | None] = {}
    for _ in range(2000):
        key = b"k%d" % rng.randrange(300)
        value = None if rng.random() < 0.3 else b"x" * rng.randrange(100)
        mem.put(key, value)
        model[key] = value
        assert mem.size == expected(model)
    # tombstones are kept, in order, as None
    tomb = [k for k, v in sorted(model.items()) if v is None]
    assert tomb and [k for k, v in mem.items() if v is None] == tomb
    assert all(mem.data[k] is None for k in tomb)
    assert set(mem.keys(None, None, reverse=False)) == set(model)
    mem.clear()
    assert (len(mem), mem.size, mem.items(), list(mem.keys(None, None, reverse=False))) == (
        0,
        0,
        [],
        [],
    )
    mem.put(b"again", b"1")
    assert mem.items() == [(b"again", b"1")] and mem.size == 5 + ENTRY_OVERHEAD + 1


@pytest.mark.parametrize(
    ("key", "value"), [(b"", b""), (b"k", b"v"), (b"\x00" * 40, bytes(range(256)) * 20)]
)
def test_wal_frame_put_is_the_general_frame_byte_for_byte(key: bytes, value: bytes) -> None:
    """The put hot path frames records itself; it must write exactly what frame() does."""
    from halodb.wal import frame_put

    assert frame_put(12345, key, value) == frame(fmt.REC_WRITE, 12345, encode_put(key, value))


# -- leaf layouts ------------------------------------------------------------------------------


def _leaf_pages(tree: BTree) -> list[tuple[int, bytes]]:
    """Every leaf of ``tree`` as (page number, raw page), read from disk."""
    pager = tree.pager
    out: list[tuple[int, bytes]] = []

    def walk(page_no: int, crc: int, level: int) -> None:
        page = pager.read_page(page_no, crc, "node")
        if level == 0:
            out.append((page_no, page))
            return
        node = tree.decode_page(page_no, page, level)
        assert isinstance(node, Internal)
        for child, child_crc in zip(node.children, node.crcs, strict=True):
            walk(child, child_crc, level - 1)

    meta = pager.meta
    walk(meta.root, meta.root_crc, meta.height - 1)
    return out


def _fixed_tree(tmp_path: Path, count: int = 2000) -> BTree:
    tree = _tree(tmp_path)
    changes = [(b"@%015d" % i, b"\x00" + b"v" * 40) for i in range(count)]
    tree.apply(changes, clear=False, flushed_seq=1)
    return tree


def test_a_leaf_layout_met_twice_is_remembered_and_decodes_the_same(tmp_path: Path) -> None:
    btree_module.LAYOUTS.clear()
    tree = _fixed_tree(tmp_path)
    pages = _leaf_pages(tree)
    assert len(pages) > 10
    first = [tree.decode_page(n, page, 0) for n, page in pages]  # the slicing loop, then Structs
    assert any(layout is not None for layout in btree_module.LAYOUTS.values())
    again = [tree.decode_page(n, page, 0) for n, page in pages]  # every layout remembered now
    for a, b in zip(first, again, strict=True):
        assert isinstance(a, Leaf) and isinstance(b, Leaf)
        assert (a.keys, a.values, a.big) == (b.keys, b.values, b.big)
    keys = [key for leaf in again for key in leaf.keys]
    assert keys == [b"@%015d" % i for i in range(2000)]
    tree.pager.close()


def test_damage_in_a_leaf_of_a_remembered_layout_is_still_found(tmp_path: Path) -> None:
    btree_module.LAYOUTS.clear()
    tree = _fixed_tree(tmp_path)
    page_no, page = _leaf_pages(tree)[1]
    for _ in range(2):
        tree.decode_page(page_no, page, 0)
    _, _, _, n, _, _ = fmt.PAGE_HEADER.unpack_from(page)
    head = fmt.PAGE_HEADER.size
    assert btree_module.LAYOUTS[page[head + n : head + 5 * n]] is not None
    kbase = head + 5 * n
    swapped = page[:kbase] + page[kbase + 16 : kbase + 32] + page[kbase : kbase + 16]
    swapped += page[kbase + 32 :]  # the first two keys (16 bytes each) in the wrong order
    with pytest.raises(CorruptionError, match="keys out of order"):
        tree.decode_page(page_no, swapped, 0)
    flags = bytearray(page)
    flags[head] = 7
    with pytest.raises(CorruptionError, match="unknown value flag 7"):
        tree.decode_page(page_no, bytes(flags), 0)
    with pytest.raises(CorruptionError, match="malformed node"):
        tree.decode_page(page_no, page[: kbase + 100], 0)  # shorter than the layout
    tree.pager.close()


def test_leaves_of_varied_sizes_keep_the_layout_cache_bounded(tmp_path: Path) -> None:
    btree_module.LAYOUTS.clear()
    tree = _tree(tmp_path)
    rng = random.Random(5)
    changes = sorted(
        {_rand_key(rng): b"\x00" + b"v" * rng.randrange(200) for _ in range(20_000)}.items()
    )
    tree.apply(changes, clear=False, flushed_seq=1)
    pages = _leaf_pages(tree)
    assert len(pages) > btree_module.LAYOUTS_MAX
    for n, page in pages:
        tree.decode_page(n, page, 0)
    assert 0 < len(btree_module.LAYOUTS) <= btree_module.LAYOUTS_MAX
    tree.pager.close()


# -- the garbage-collector pause of flushes ----------------------------------------------------


class _Watched(Memtable):
    """A memtable that notes whether the garbage collector runs when a flush reads it."""

    __slots__ = ()
    seen: ClassVar[list[bool]] = []

    def columns(self) -> tuple[list[bytes], list[bytes | None]]:
        _Watched.seen.append(gc.isenabled())
        return super().columns()


@pytest.mark.parametrize("enabled", [True, False])
def test_a_flush_pauses_the_garbage_collector_and_restores_it_as_found(
    tmp_path: Path, enabled: bool
) -> None:
    db = halodb.open(tmp_path / "db", partitions=1)
    db.update({f"k{i}": i for i in range(100)})
    testing.engine(db).parts[0].memtable.__class__ = _Watched
    _Watched.seen = []
    if not enabled:
        gc.disable()
    try:
        db.flush()
        assert _Watched.seen == [False]
        assert gc.isenabled() == enabled
    finally:
        gc.enable()
        db.close()


def test_an_interrupted_flush_restores_the_garbage_collector(tmp_path: Path) -> None:
    db = halodb.open(tmp_path / "db", partitions=1)
    db["a"] = 1
    tree = testing.engine(db).parts[0].tree

    def interrupted(*args: object, **kwargs: object) -> int:
        assert not gc.isenabled()
        raise KeyboardInterrupt

    tree.apply_columns = interrupted  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        db.flush()
    assert gc.isenabled()
    del tree.apply_columns
    db.flush()
    assert db["a"] == 1
    db.close()


def test_overlapping_pauses_end_with_the_last() -> None:
    """Flushes of two partitions in two threads overlap but do not nest: the first to end must
    not enable the collector under the other."""
    first, second = collector.collector_paused(), collector.collector_paused()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert not gc.isenabled()
    second.__exit__(None, None, None)
    assert gc.isenabled()


def test_an_interrupt_at_any_line_of_a_pause_never_leaves_the_collector_off(
    tmp_path: Path,
) -> None:
    """Ctrl-C may arrive between any two lines of the pause's start or end. Whatever line it
    hits, once that flush is over, and at the latest after the next flush, the collector is on
    again and no pause is left running. (A second interrupt while the end handles the first
    cannot be injected this way: a trace function that raises is removed.)"""
    pause = collector.collector_paused
    pause_class = collector.CollectorPause
    start = pause_class.__call__.__wrapped__.__code__  # type: ignore[attr-defined]
    end = pause_class.end.__code__
    lines = {
        code: sorted({line for _, _, line in code.co_lines() if line}) for code in (start, end)
    }
    handler = next(n for n in lines[end] if "except" in linecache.getline(end.co_filename, n))
    plans = [[(code, n)] for code in (start, end) for n in lines[code]]
    db = halodb.open(tmp_path / "db", partitions=1)
    hit: set[tuple[Any, int]] = set()
    for number, plan in enumerate(plans):
        db[f"k{number}"] = number
        fired: list[tuple[Any, int]] = []

        def local(frame: Any, event: str, arg: Any) -> Any:
            at = (frame.f_code, frame.f_lineno)
            if event == "line" and len(fired) < len(plan) and at == plan[len(fired)]:
                fired.append(at)
                raise KeyboardInterrupt
            return local

        def tracer(frame: Any, event: str, arg: Any) -> Any:
            return local if frame.f_code in (start, end) else None

        sys.settrace(tracer)
        try:
            db.flush()
        except KeyboardInterrupt:
            pass
        finally:
            sys.settrace(None)
        hit.update(fired)
        db[f"after{number}"] = number
        db.flush()  # the next flush ends any pause the interrupt cut short
        assert gc.isenabled() and not pause.active, plan
    # Every line ran and was interrupted but the first ones (decorator, def) and the handler.
    missed = {(code, n) for code in (start, end) for n in lines[code]} - hit
    allowed = {start.co_firstlineno, end.co_firstlineno, *range(handler, max(lines[end]) + 1)}
    assert {n for _, n in missed} <= allowed, missed
    assert len(db) == 2 * len(plans)
    db.check()
    db.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork()")
def test_a_child_forked_during_a_pause_gets_the_collector_back() -> None:
    with collector.collector_paused():
        pid = os.fork()
        if pid == 0:  # the child: no flush of its own will ever end the pause
            os._exit(0 if gc.isenabled() else 1)
        _, status = os.waitpid(pid, 0)
        assert not gc.isenabled()
    assert os.waitstatus_to_exitcode(status) == 0
    assert gc.isenabled()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork()")
def test_a_fork_waits_for_a_pause_changing_hands_in_another_thread() -> None:
    """A fork while another thread is between two steps of starting or ending a pause (it holds
    the pause's lock) waits for it, so the child never sees a change half made."""
    pause = collector.collector_paused
    holding = threading.Event()

    def mid_change() -> None:
        with pause.lock:
            holding.set()
            time.sleep(0.3)

    other = threading.Thread(target=mid_change)
    other.start()
    holding.wait()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os._exit(0 if gc.isenabled() and not pause.active else 1)
    waited = time.monotonic() - started
    other.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert waited >= 0.2, f"fork() went ahead after {waited:.3f} s"

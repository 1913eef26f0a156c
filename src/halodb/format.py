"""Every byte layout HaloDB writes to disk, defined once; knows nothing of files, keys or trees.

Each layout is a little-endian ``struct.Struct`` mirrored as an offset/size table in
``docs/format.md``. Numbers written to disk are forever: the enum values below are never reused
or renumbered, and any change to a layout bumps ``FORMAT_VERSION``.
"""

from __future__ import annotations

import functools
import struct
import zlib
from collections.abc import Iterable
from typing import Final

FORMAT_VERSION: Final = 4
"""The format version this code writes; it reads every version from 1 up to it.

- 1: the first format.
- 2: a tree's meta page starts with its magic and version (its checksum moved to its end), and
  the ``LOCK`` file holds a header, so every file starts with magic and version. Nothing else
  changed: logs, bloom filters, node pages and the manifest are as in version 1. A version-1
  store opened for writing has its manifest rewritten as version 2 (an older HaloDB then
  refuses it cleanly); its version-1 meta pages are replaced as transactions commit.
- 3: a partition may have a second log, ``pNNN.wal2``, while a frozen memtable is merged in the
  background (which log is older is told by ``base_seq``). No layout changed; an older HaloDB
  would not read the second log, so a store opened for writing has its manifest rewritten as
  version 3 and an older HaloDB refuses it.
- 4: a clean close may leave a partition's memtables in a sorted run file, ``pNNN.run``
  (``RUN_HEADER``), which the next open reads before the logs. No other layout changed; an
  older HaloDB would not read the run, so a store opened for writing has its manifest
  rewritten as version 4 and an older HaloDB refuses it.
"""

# ---------------------------------------------------------------------------------------------
# Checksums. CRC-32 (zlib) masked so that an all-zero region never carries a valid checksum.
# ---------------------------------------------------------------------------------------------

CRC_MASK: Final = 0xA282EAD8


def crc(data: bytes | bytearray | memoryview) -> int:
    """Masked CRC-32 of ``data``."""
    return zlib.crc32(data) ^ CRC_MASK


def crc_all(parts: Iterable[bytes | bytearray | memoryview]) -> int:
    """Masked CRC-32 of the concatenation of ``parts`` (without making it)."""
    state = 0
    for part in parts:
        state = zlib.crc32(part, state)
    return state ^ CRC_MASK


def page_crc(page_no: int, body: bytes | bytearray | memoryview) -> int:
    """Checksum of a page: covers the page number, so a page written at the wrong place fails."""
    return zlib.crc32(body, zlib.crc32(PAGE_NO.pack(page_no))) ^ CRC_MASK


PAGE_NO: Final = struct.Struct("<Q")


def seal(head: bytes) -> bytes:
    """``head``, a packed header whose last four bytes are its checksum field, with that field
    set to the :func:`crc` of every byte before it (manifest, log and bloom filter headers)."""
    return head[:-4] + U32.pack(crc(head[:-4]))


def sealed(head: bytes | bytearray | memoryview, size: int) -> bool:
    """Whether the first ``size`` bytes of ``head`` end with the :func:`crc` of the bytes
    before them, as :func:`seal` leaves a header of ``size`` bytes."""
    stored: int = U32.unpack_from(head, size - 4)[0]
    return crc(head[: size - 4]) == stored


# ---------------------------------------------------------------------------------------------
# Store manifest: the file ``HALODB`` at the top of a store directory. Written once, at creation.
# ---------------------------------------------------------------------------------------------

LOCK_NAME: Final = "LOCK"
LOCK_MAGIC: Final = b"HaloLCK\x00"
LOCK_HEADER: Final = struct.Struct("<8sH")
"""magic, version. The lock file carries no data: it exists to be locked (``flock``). Version-1
stores have an empty one."""

MANIFEST_NAME: Final = "HALODB"
MANIFEST_MAGIC: Final = b"HaloDB\x00M"
MANIFEST: Final = struct.Struct("<8sHHHHIIQ16sI")
"""magic, version, flags, partitions, reserved, page_size, hash_seed, created_ns, codec, crc."""

# ---------------------------------------------------------------------------------------------
# Write-ahead log: ``pNNN.wal``. A header, then records.
# ---------------------------------------------------------------------------------------------

WAL_MAGIC: Final = b"HaloWAL\x00"
WAL_HEADER: Final = struct.Struct("<8sHHIQI")
"""magic, version, partition, reserved, base_seq, crc (of the bytes before it)."""

WAL_RECORD: Final = struct.Struct("<IIIBQ")
"""crc (bytes 4..end of payload), header crc (bytes 8..21), payload length, type, sequence."""

WAL_RECORD_HEADER_TAIL: Final = struct.Struct("<IBQ")
"""The part of a record header that the header crc covers: payload length, type, sequence."""

# Record types. DO NOT CHANGE OR REUSE THESE VALUES.
REC_WRITE: Final = 1
"""Entries for one partition, atomic by themselves."""
REC_BATCH: Final = 2
"""One partition's part of a batch that spans several partitions."""
REC_CLOSE: Final = 3
"""A clean close: the memtable was flushed; nothing may follow. Empty payload."""

SEQ_LIMIT: Final = 1 << 62
"""Every sequence number (a record's, a log's ``base_seq``, a tree's ``flushed_seq``) is below
this: one read at or above it is damage. (A store would need 2^62 writes to reach it; the limit
keeps ``seq + 1`` and the numbers after it far from the u64 maximum.)"""

MAX_VALUE_SIZE: Final = (1 << 31) - 1
"""The longest encoded value a store accepts (``DataError``), so the longest a log record may
hold (``CorruptionError`` when one is read)."""

BATCH_HEADER: Final = struct.Struct("<H")
"""Number of partitions the batch touches; that many ``PARTITION_ID`` follow."""
PARTITION_ID: Final = struct.Struct("<H")
WRITE_FLAGS: Final = struct.Struct("<B")
"""Flags of a write; bit 0: the partition is cleared before the entries apply."""
FLAG_CLEAR: Final = 0x01

PUT_RECORD_TAIL: Final = struct.Struct("<IBQBBHI")
"""A one-put write record after its two checksums, up to the key: ``WAL_RECORD_HEADER_TAIL``,
``WRITE_FLAGS`` and ``ENTRY`` packed in one go (the hot path); the same bytes, not a new layout."""

ENTRY: Final = struct.Struct("<BHI")
"""op, key length, value length; the key and the value bytes follow."""
# Entry ops. DO NOT CHANGE OR REUSE THESE VALUES.
OP_PUT: Final = 1
OP_DELETE: Final = 2

# ---------------------------------------------------------------------------------------------
# B+ tree file: ``pNNN.tree``, fixed-size pages. Pages 0 and 1 are meta pages.
# ---------------------------------------------------------------------------------------------

TREE_MAGIC: Final = b"HaloTRE\x00"
META: Final = struct.Struct("<8sHHIQIIHHIIIIQQI")
"""Version 2: magic, version, partition, page_size, txn, root, root_crc, height, reserved,
page_count, free_head, free_head_crc, free_count, flushed_seq, key_count, crc (of the bytes
before it, seeded with the page number like every page checksum)."""
META_V1: Final = struct.Struct("<I8sHHIQIIHHIIIIQQ")
"""Version 1 (read only): crc (of the bytes after it), then the fields of ``META`` in order."""

PAGE_HEADER: Final = struct.Struct("<IBBHII")
"""crc, page type, level, count, next page, next page's crc."""

# Page types. DO NOT CHANGE OR REUSE THESE VALUES.
PAGE_LEAF: Final = 1
PAGE_INTERNAL: Final = 2
PAGE_OVERFLOW: Final = 3
PAGE_FREELIST: Final = 4


@functools.cache
def u16_array(count: int) -> struct.Struct:
    """``count`` little-endian u16: a node's key (or value) end offsets."""
    return struct.Struct(f"<{count}H")


@functools.cache
def u32_array(count: int) -> struct.Struct:
    """``count`` little-endian u32: a free-list page's page numbers, an internal node's
    ``CHILD_REF`` pairs (page, crc) as ``2 * (n + 1)`` words."""
    return struct.Struct(f"<{count}I")


CHILD_REF: Final = struct.Struct("<II")
"""An internal node's child: page number, crc of that page."""
OVERFLOW_REF: Final = struct.Struct("<III")
"""A leaf value stored in overflow pages: first page, its crc, total length."""
U16: Final = struct.Struct("<H")
U32: Final = struct.Struct("<I")

# Leaf value flags.
VALUE_INLINE: Final = 0
VALUE_OVERFLOW: Final = 1

# ---------------------------------------------------------------------------------------------
# Bloom filter: ``pNNN.bloom``. A header, then the bit array.
# ---------------------------------------------------------------------------------------------

BLOOM_MAGIC: Final = b"HaloBLM\x00"
BLOOM_HEADER: Final = struct.Struct("<8sHHHHQQQII")
"""magic, version, partition, hashes, reserved, bits, keys, tree txn, bits crc, header crc."""


# ---------------------------------------------------------------------------------------------
# Sorted run: ``pNNN.run``, a clean close's memtables. A header, then the body: ``entries`` u16
# key lengths, ``entries`` u32 value lengths (``RUN_TOMBSTONE``: a delete, no value bytes), the
# keys one after another (in no order; each once), then the values.
# ---------------------------------------------------------------------------------------------

RUN_MAGIC: Final = b"HaloRUN\x00"
RUN_HEADER: Final = struct.Struct("<8sHHIQQQQQQII")
"""magic, version, partition, flags, base_seq (the tree's ``flushed_seq`` it lies on), seq (its
newest write), count (live keys of the tree and run together), entries, key bytes, value
bytes, body crc, header crc (of the bytes before it)."""
RUN_VERSION: Final = 4
"""The first format version with run files."""
RUN_CLEARED: Final = 0x01
"""Run flag: the tree below is logically empty (a clear the tree has not seen)."""
RUN_TOMBSTONE: Final = 0xFFFFFFFF
"""A value length that stands for a delete."""
RUN_ENTRY_LENGTHS: Final = 6
"""Bytes of lengths per entry: a u16 and a u32."""


def partition_file(index: int, suffix: str) -> str:
    """The name of one partition's file, e.g. ``p003.wal``."""
    return f"p{index:03d}.{suffix}"

"""One partition's write-ahead log: framed, checksummed records; knows nothing of trees or keys.

A log file is a header (magic, version, partition, ``base_seq``: every record in it is newer than
that) followed by records; a clean close ends the log with a close record. Each record carries
a header checksum, so its length can be trusted before anything is read, and a record checksum
over the header and the payload. An all-zero header never checks out (the checksums are
masked).

Reading tells a torn tail (a crash in the middle of appending: a partial header, a record that
runs past the end of the file, or a first bad record that overlaps a 512-byte sector left zero,
which is what a power cut leaves of unsynced appends) from damage (anything else that does not
check out, including a torn tail right after the close record of a clean close, and a sequence
number of ``SEQ_LIMIT`` or more), which raises :class:`CorruptionError` instead of dropping good
records. A writable open never appends after a close record: it starts a fresh log.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from halodb import format as fmt
from halodb.errors import CorruptionError, OperationalError
from halodb.vfs import File

Entry = tuple[bytes, bytes | None]
"""An encoded key and its encoded value, or ``None`` for a delete."""

_REC = fmt.WAL_RECORD
_TAIL = fmt.WAL_RECORD_HEADER_TAIL
_U32 = fmt.U32
_ENTRY = fmt.ENTRY
_crc = fmt.crc
_crc32 = zlib.crc32
_MASK = fmt.CRC_MASK
_PUT_TAIL = fmt.PUT_RECORD_TAIL


def header_bytes(partition: int, base_seq: int) -> bytes:
    """The header of a new, empty log whose records will all be newer than ``base_seq``."""
    return fmt.seal(
        fmt.WAL_HEADER.pack(fmt.WAL_MAGIC, fmt.FORMAT_VERSION, partition, 0, base_seq, 0)
    )


def frame(rtype: int, seq: int, payload: bytes) -> bytes:
    """A whole record: header with both checksums, then ``payload``."""
    tail = _TAIL.pack(len(payload), rtype, seq)
    rest = _U32.pack(_crc(tail)) + tail + payload
    return _U32.pack(_crc(rest)) + rest


def frame_put(seq: int, key: bytes, value: bytes) -> bytes:
    """``frame(REC_WRITE, seq, encode_put(key, value))``, byte for byte, in fewer steps: the
    hot path of every single put."""
    head = _PUT_TAIL.pack(
        8 + len(key) + len(value), fmt.REC_WRITE, seq, 0, fmt.OP_PUT, len(key), len(value)
    )
    rest = _U32.pack(_crc32(head[:13]) ^ _MASK) + head + key + value
    return _U32.pack(_crc32(rest) ^ _MASK) + rest


def encode_entries(flags: int, entries: Sequence[Entry]) -> bytes:
    """The payload of a write record: flags, then each entry (op, lengths, key, value)."""
    parts = [fmt.WRITE_FLAGS.pack(flags)]
    append = parts.append
    pack = _ENTRY.pack
    for key, value in entries:
        if value is None:
            append(pack(fmt.OP_DELETE, len(key), 0))
            append(key)
        else:
            append(pack(fmt.OP_PUT, len(key), len(value)))
            append(key)
            append(value)
    return b"".join(parts)


def encode_put(key: bytes, value: bytes) -> bytes:
    """The payload of a write record holding one put (the hot path of :func:`encode_entries`)."""
    return b"\x00" + _ENTRY.pack(fmt.OP_PUT, len(key), len(value)) + key + value


def encode_batch(partitions: Sequence[int], flags: int, entries: Sequence[Entry]) -> bytes:
    """The payload of one partition's part of a batch over ``partitions``."""
    head = fmt.BATCH_HEADER.pack(len(partitions)) + b"".join(
        fmt.PARTITION_ID.pack(p) for p in partitions
    )
    return head + encode_entries(flags, entries)


@dataclass(slots=True)
class Record:
    """A decoded log record."""

    rtype: int
    seq: int
    flags: int
    entries: list[Entry]
    partitions: tuple[int, ...]
    """The partitions a batch part's batch touches; empty for a plain write."""


@dataclass(slots=True)
class LogContents:
    """What :func:`read_log` found."""

    base_seq: int
    records: list[Record]
    valid_end: int
    """Offset just past the last good record; a torn tail starts here."""
    torn: bool


def _decode_payload(
    data: bytes, start: int, end: int, rtype: int, where: str, at: int
) -> tuple[tuple[int, ...], int, list[Entry]]:
    """The payload of a record, ``data[start:end]``, as (the partitions of its batch, its
    flags, its entries); read in place (a log holds many small records: no copy of each).
    Errors name ``where`` and the record's offset ``at``."""
    if rtype == fmt.REC_WRITE:
        partitions: tuple[int, ...] = ()
        pos = start
    elif rtype == fmt.REC_BATCH:
        partitions, pos = _decode_batch_header(data, start, end, where, at)
    elif rtype == fmt.REC_CLOSE:
        if end > start:
            raise CorruptionError(f"{where} offset {at}: close record with a payload")
        return (), 0, []
    else:
        raise CorruptionError(f"{where} offset {at}: unknown record type {rtype}")
    if pos >= end:
        raise CorruptionError(f"{where} offset {at}: record has no flags")
    flags = data[pos]  # (fmt.WRITE_FLAGS: one byte)
    if flags & ~fmt.FLAG_CLEAR:
        raise CorruptionError(f"{where} offset {at}: unknown record flags {flags:#x}")
    return partitions, flags, _decode_entries(data, pos + 1, end, where, at)


def _decode_batch_header(
    data: bytes, start: int, end: int, where: str, at: int
) -> tuple[tuple[int, ...], int]:
    """The partitions a batch part names, and the offset of its flags."""
    if end - start < fmt.BATCH_HEADER.size:
        raise CorruptionError(f"{where} offset {at}: batch record too short")
    (count,) = fmt.BATCH_HEADER.unpack_from(data, start)
    pos = start + fmt.BATCH_HEADER.size
    stop = pos + count * fmt.PARTITION_ID.size
    if count < 2 or stop > end:
        raise CorruptionError(f"{where} offset {at}: batch record names {count} partitions")
    partitions = tuple(fmt.PARTITION_ID.unpack_from(data, pos + i * 2)[0] for i in range(count))
    return partitions, stop


def _decode_entries(data: bytes, pos: int, end: int, where: str, at: int) -> list[Entry]:
    """The entries of a write or batch record, from ``pos`` to the end of its payload,
    ``end``."""
    esize = _ENTRY.size
    unpack = _ENTRY.unpack_from
    if pos + esize <= end:  # a record of one entry (most are): no loop
        op, klen, vlen = unpack(data, pos)
        kend = pos + esize + klen
        if op == fmt.OP_PUT and kend + vlen == end:
            return [(data[pos + esize : kend], data[kend:end])]
    entries: list[Entry] = []
    append = entries.append
    while pos < end:
        if pos + esize > end:
            raise CorruptionError(f"{where} offset {at}: truncated entry header")
        op, klen, vlen = unpack(data, pos)
        pos += esize
        kend = pos + klen
        if op == fmt.OP_PUT:
            vend = kend + vlen
            if vend > end:
                raise CorruptionError(f"{where} offset {at}: entry runs past its record")
            append((data[pos:kend], data[kend:vend]))
            pos = vend
        elif op == fmt.OP_DELETE:
            if vlen or kend > end:
                raise CorruptionError(f"{where} offset {at}: malformed delete entry")
            append((data[pos:kend], None))
            pos = kend
        else:
            raise CorruptionError(f"{where} offset {at}: unknown entry op {op}")
    return entries


def read_log(data: bytes, partition: int, where: str) -> LogContents:
    """Parse a whole log file.

    A torn tail is reported (``torn``, ``valid_end``), not raised; any other damage raises
    :class:`CorruptionError` naming ``where`` and the offset.
    """
    base_seq = _read_header(data, partition, where)
    records: list[Record] = []
    n = len(data)
    pos = fmt.WAL_HEADER.size
    rsize = _REC.size
    esize = _ENTRY.size
    eunpack = _ENTRY.unpack_from
    rec_write, op_put = fmt.REC_WRITE, fmt.OP_PUT
    last_seq = base_seq
    torn = False
    while pos < n:
        if n - pos < rsize:
            torn = True
            break
        rec_crc, head_crc, length, rtype, seq = _REC.unpack_from(data, pos)
        end = pos + rsize + length
        if (
            _crc(data[pos + 8 : pos + rsize]) != head_crc
            or end > n
            or _crc(data[pos + 4 : end]) != rec_crc
        ):
            _torn_or_damaged(data, pos, where)  # (raises if damaged)
            torn = True
            break
        if seq <= last_seq or seq >= fmt.SEQ_LIMIT:
            raise CorruptionError(
                f"{where}: record at offset {pos} has sequence {seq} after {last_seq}"
                + (" (impossibly large)" if seq >= fmt.SEQ_LIMIT else "")
            )
        # A write of one put, without flags (most records): decoded here, without a call.
        start = pos + rsize
        op, klen, vlen = (0, 0, 0) if end - start < esize + 1 else eunpack(data, start + 1)
        kend = start + 1 + esize + klen
        if rtype == rec_write and op == op_put and not data[start] and kend + vlen == end:
            records.append(Record(rtype, seq, 0, [(data[kend - klen : kend], data[kend:end])], ()))
        else:
            partitions, flags, entries = _decode_payload(data, start, end, rtype, where, pos)
            records.append(Record(rtype, seq, flags, entries, partitions))
        last_seq = seq
        pos = end
    if torn and records and records[-1].rtype == fmt.REC_CLOSE:
        raise CorruptionError(
            f"{where}: {n - pos} bytes after the record of a clean close, at offset {pos}: "
            "the log was changed after the store was closed"
        )
    return LogContents(base_seq, records, pos, torn)


def _torn_or_damaged(data: bytes, pos: int, where: str) -> None:
    """The record at ``pos`` does not check out: return if it starts a torn tail, else raise
    :class:`CorruptionError` (``docs/format.md``, "Reading a log")."""
    rsize = _REC.size
    rec_crc, head_crc, length, _, _ = _REC.unpack_from(data, pos)
    if _crc(data[pos + 8 : pos + rsize]) != head_crc:
        if _overlaps_a_zeroed_sector(data, pos, pos + rsize):
            return
        raise CorruptionError(f"{where}: record header checksum mismatch at offset {pos}")
    end = pos + rsize + length
    if end > len(data):
        return
    if _crc(data[pos + 4 : end]) != rec_crc and not _overlaps_a_zeroed_sector(data, pos, end):
        raise CorruptionError(f"{where}: record checksum mismatch at offset {pos}")


def _read_header(data: bytes, partition: int, where: str) -> int:
    """Check the header of ``partition``'s log ``data``; return its ``base_seq``."""
    hsize = fmt.WAL_HEADER.size
    if len(data) < hsize:
        raise CorruptionError(f"{where}: log file is {len(data)} bytes, shorter than its header")
    magic, version, part, _, base_seq, _ = fmt.WAL_HEADER.unpack_from(data)
    if not fmt.sealed(data, hsize):
        raise CorruptionError(f"{where}: log header checksum mismatch")
    if magic != fmt.WAL_MAGIC:
        raise CorruptionError(f"{where}: not a HaloDB log file")
    if not 1 <= version <= fmt.FORMAT_VERSION or part != partition:
        raise CorruptionError(f"{where}: log is version {version} of partition {part}")
    if base_seq >= fmt.SEQ_LIMIT:
        raise CorruptionError(f"{where}: log base_seq {base_seq} is impossibly large")
    return int(base_seq)


def _overlaps_a_zeroed_sector(data: bytes, start: int, stop: int) -> bool:
    """Whether some 512-byte sector (aligned in file offsets) that overlaps the record extent
    ``[start, stop)`` is all zero from ``max(sector start, start)`` to ``min(sector end, end of
    file)``: a sector of unsynced appends that a power cut kept from the disk (it reads as zeros
    past the file's old end), while the file's new size, and maybe later sectors, reached it.

    A flipped byte does not zero a sector, so damage inside a record still fails this unless
    the record's own bytes hold a whole zeroed sector (a value with 512 zero bytes, say), or
    the record's bytes in the file's last, partial sector are all zero."""
    n = len(data)
    stop = min(stop, n)
    sector = start - start % SECTOR
    while sector < stop:
        lo = max(sector, start)
        hi = min(sector + SECTOR, n)
        if data.count(0, lo, hi) == hi - lo:
            return True
        sector += SECTOR
    return False


SECTOR = 512


class LogWriter:
    """Appends records to an open log file, and makes them durable on request.

    ``append`` is called with the owner's lock held. In buffered mode records collect in memory
    and reach the OS when the buffer fills or on :meth:`write_out`; otherwise each append is one
    write to the OS. :meth:`sync_to` is group commit: any number of threads may call it at once,
    and one fsync covers every record written before it started. It fsyncs.
    """

    __slots__ = (
        "buffer",
        "buffer_limit",
        "cond",
        "end",
        "file",
        "sync_error",
        "synced",
        "syncing",
        "written",
    )

    def __init__(self, file: File, end: int, *, buffer_limit: int | None) -> None:
        self.file = file
        self.end = end
        """Offset after the last appended record, buffered or not."""
        self.written = end
        """Offset after the last record handed to the OS."""
        self.synced = end
        """Offset up to which the log is known durable."""
        self.sync_error: BaseException | None = None
        """The error of a failed fsync: every later sync_to raises (see there)."""
        self.buffer: bytearray | None = None if buffer_limit is None else bytearray()
        self.buffer_limit = buffer_limit or 0
        self.syncing = False
        self.cond = threading.Condition(threading.Lock())

    def append(self, record: bytes) -> int:
        """Append one framed record; returns the log offset after it. Does not fsync."""
        buffer = self.buffer
        if buffer is None:
            self.file.write_at(self.written, record)
            self.written += len(record)
        else:
            buffer += record
            if len(buffer) >= self.buffer_limit:
                self.write_out()
        self.end += len(record)
        return self.end

    def write_out(self) -> None:
        """Hand buffered records to the OS. Does not fsync. Caller holds the owner's lock."""
        buffer = self.buffer
        if buffer:
            self.file.write_at(self.written, buffer)
            self.written += len(buffer)
            buffer.clear()

    def sync_to(self, offset: int) -> None:
        """Return once the log is durable up to ``offset`` (already handed to the OS). Fsyncs."""
        cond = self.cond
        with cond:
            while self.synced < offset:
                if self.sync_error is not None:
                    # A failed fsync may have dropped pages this offset needs; fsyncing again
                    # could report success for data that is gone. Never retried.
                    raise OperationalError(
                        f"{self.file.path}: an earlier fsync of this log failed"
                    ) from self.sync_error
                if self.file.closed:  # retired before these records were made durable
                    raise OperationalError(
                        f"{self.file.path}: the log was closed before this write was synced"
                    )
                if self.syncing:
                    cond.wait()
                    continue
                self.syncing = True
                goal = self.written
                cond.release()
                try:
                    self.file.sync()
                except OperationalError as exc:  # (an interrupt is no failed fsync)
                    self.sync_error = exc
                    raise
                finally:
                    cond.acquire()
                    self.syncing = False
                    cond.notify_all()
                self.synced = max(self.synced, goal)

    def retire(self, *, durable: bool) -> None:
        """Close the log. ``durable``: its records are durable elsewhere (flushed into the
        tree), so a writer still waiting to sync them is done; otherwise such a writer gets an
        error, never a success for records that may not be on disk."""
        with self.cond:
            while self.syncing:
                self.cond.wait()
            if durable:
                self.synced = self.end
            self.file.close()
            self.cond.notify_all()

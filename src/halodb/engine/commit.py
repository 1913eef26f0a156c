"""Batches: grouping changes by partition, logging a batch's parts, applying them under the
partitions' epochs, and FULL mode's cross-log durability. Knows nothing of the directory or of
recovery; the engine takes the locks and records failures.

A batch takes one sequence number and the locks of every partition it touches (in index order);
each partition's log gets a part naming all the batch's partitions (a single partition's batch
is a plain write record). Recovery applies a part only when every partition it names has its
part in its log or holds the batch in its tree (see :mod:`halodb.engine.recovery`).
"""

from __future__ import annotations

from collections.abc import Sequence

from halodb import format as fmt
from halodb.errors import DataError
from halodb.hashing import key_hash, route
from halodb.partition import Partition
from halodb.wal import Entry, LogWriter, encode_batch, encode_entries, frame

MAX_RECORD_PAYLOAD = 0xFFFFFFFF - 4096
"""A log record's payload length is a u32; a little is kept for the batch header."""


def group(
    changes: dict[bytes, bytes | None], seed: int, partitions: int, *, clear: bool
) -> dict[int, list[Entry]]:
    """``changes`` by the partition each key routes to (every partition, when ``clear``).
    Raises :class:`DataError` if one partition's part would not fit in a log record."""
    groups: dict[int, list[Entry]] = {i: [] for i in range(partitions)} if clear else {}
    sizes = [0] * partitions
    for key, value in changes.items():
        index = route(key_hash(key, seed), partitions)
        groups.setdefault(index, []).append((key, value))
        sizes[index] += fmt.ENTRY.size + len(key) + (0 if value is None else len(value))
    if max(sizes) > MAX_RECORD_PAYLOAD:
        raise DataError(
            f"batch holds {max(sizes)} bytes for one partition; a batch may hold at most "
            f"{MAX_RECORD_PAYLOAD} bytes per partition (split it into several batches)"
        )
    return groups


def log_parts(
    parts: Sequence[Partition], groups: dict[int, list[Entry]], seq: int, *, clear: bool
) -> list[tuple[LogWriter, int]]:
    """Append the batch's part to each partition's log (their locks held); returns each log
    and the offset to make it durable to. A batch over several partitions reaches the OS at
    once, even in FAST mode, so that a flush of one partition can make its siblings durable
    first (see ``Engine.flush_part``)."""
    ids = [part.index for part in parts]
    flags = fmt.FLAG_CLEAR if clear else 0
    logged = []
    for part in parts:
        entries = groups[part.index]
        if len(ids) == 1:
            record = frame(fmt.REC_WRITE, seq, encode_entries(flags, entries))
        else:
            record = frame(fmt.REC_BATCH, seq, encode_batch(ids, flags, entries))
        assert part.log is not None
        logged.append((part.log, part.log.append(record)))
    if len(parts) > 1:
        for wal, _ in logged:
            wal.write_out()
    return logged


def apply_parts(
    parts: Sequence[Partition], groups: dict[int, list[Entry]], seq: int, *, clear: bool
) -> None:
    """Apply a logged batch to the partitions' memtables (their locks held).

    Readers without a lock (``Engine.get``) must not see the batch in part: every partition's
    epoch is odd from before its first entry is applied to after its last. The values are set,
    not counted up, so an interrupt between two of these stores leaves a partition odd (its
    gets take the lock) only until its next batch."""
    odd: list[int] = []
    try:
        odd = [part.epoch | 1 for part in parts]
        for part, epoch in zip(parts, odd, strict=True):
            part.epoch = epoch
        for part in parts:
            part.apply(groups[part.index], seq, clear=clear, batch=len(parts) > 1)
    finally:
        for part, epoch in zip(parts, odd, strict=True):
            part.epoch = epoch + 1


class LogSync:
    """FULL mode's cross-log durability: which other logs must be durable, and up to where,
    before a record of a given log is acknowledged."""

    __slots__ = ("_after",)

    def __init__(self) -> None:
        self._after: dict[LogWriter, dict[LogWriter, int]] = {}
        """For a log holding a part of a batch over several partitions, the other logs, and
        the offsets up to which they must be durable, before a later record of it is
        acknowledged. Each inner dict is replaced, never changed."""

    def sync(self, wal: LogWriter, end: int) -> None:
        """Make ``wal`` durable up to ``end``, and with it the parts of batches it holds before
        ``end`` in other logs (see :meth:`note_batch`)."""
        wal.sync_to(end)
        after = self._after.get(wal)
        if after:
            for other, offset in after.items():
                other.sync_to(offset)

    def note_batch(self, logged: list[tuple[LogWriter, int]]) -> None:
        """With the locks of a batch's partitions held, after appending its parts (each log
        and the offset after its part): a later record in any of these logs may be
        acknowledged only once every part is durable, and every part of an earlier batch that
        those logs depend on. Otherwise a power cut could lose a part the batch's own fsyncs
        had not reached yet, and recovery, dropping the batch, would cut the acknowledged
        record with it (design.md, "Recovery")."""
        needed = dict(logged)
        for wal, _ in logged:
            for other, offset in self._after.get(wal, {}).items():
                if needed.get(other, -1) < offset:
                    needed[other] = offset
        needed = {other: offset for other, offset in needed.items() if other.synced < offset}
        for wal, _ in logged:
            self._after[wal] = needed

    def follow(self, wal: LogWriter, before: LogWriter, offset: int) -> None:
        """``wal`` starts where ``before`` ends (a new log after a freeze): a record of ``wal``
        may be acknowledged only once ``before`` is durable up to ``offset``, and whatever
        ``before``'s records depend on."""
        needed = dict(self._after.get(before, {}))
        needed[before] = max(offset, needed.get(before, 0))
        needed.update(self._after.get(wal, {}))
        self._after[wal] = {other: end for other, end in needed.items() if other.synced < end}

    def retire(self, wal: LogWriter) -> None:
        """Forget a log replaced by a flush: its records are in the tree."""
        self._after.pop(wal, None)

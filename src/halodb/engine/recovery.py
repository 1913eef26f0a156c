"""Recovery: opening a store's partitions and deciding which logged records apply. Knows
nothing of the directory, the manifest or the lock (see design.md, "Recovery").

:func:`open_partitions` opens every partition (its tree, bloom filter and log read);
:func:`plan` is a pure function of what the logs and trees hold, which knows nothing of files;
:func:`replay` carries a plan out through the partitions.

A batch part is kept only if every partition its batch names has its part in its log or holds
the batch in its tree. A dropped part cuts its partition's log there: the records after it are
dropped too (a partition holds every write up to some point, never a write after one it lost).
A cut can take another batch's part, so that batch is dropped everywhere and cuts its other
partitions in turn, up to a fixpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass

from halodb import format as fmt
from halodb.errors import CorruptionError
from halodb.options import Options
from halodb.partition import Partition
from halodb.vfs import FileSystem
from halodb.wal import Record

MAX_VALUE_SIZE = fmt.MAX_VALUE_SIZE
"""The longest encoded value the store accepts, so the longest a log record may hold."""


@dataclass(frozen=True, slots=True)
class LogState:
    """What recovery needs of one partition: its tree's newest sequence number and its log."""

    index: int
    flushed_seq: int
    """The newest sequence number the partition's tree holds (or its run: see
    ``Partition.covered_seq``)."""
    records: Sequence[Record]
    """The log's intact records, in order."""
    wal_path: str
    tree_path: str


@dataclass(frozen=True, slots=True)
class Plan:
    """What to replay, and what was dropped."""

    replay: list[list[Record]]
    """Per partition, the records to apply to its memtable, in order (close records left out:
    they apply nothing)."""
    cut: list[int]
    """The partitions whose logs lost records to a cut: flushed away on a writable open, so
    that the decision can never change."""
    dropped: int
    """Records dropped, over every partition."""
    next_seq: int
    """The next sequence number to hand out: past every one a log or tree holds."""


def plan(logs: Sequence[LogState], max_key: int) -> Plan:
    """Decide which records apply (see the module docstring); ``logs[i]`` is partition ``i``'s.
    Raises :class:`CorruptionError` for records no store writes (impossible sizes, sequence
    numbers or partitions) and for a batch that a tree holds but its siblings' logs cannot
    complete."""
    if any(state.index != i for i, state in enumerate(logs)):
        raise ValueError("plan() takes every partition's log, in partition order")
    newest, pending, holders = _pending(logs, max_key)
    cut = _cut(logs, pending, holders)
    return Plan(
        replay=[
            [r for r in mine[:keep] if r.rtype != fmt.REC_CLOSE]
            for mine, keep in zip(pending, cut, strict=True)
        ],
        cut=[s.index for s, mine, keep in zip(logs, pending, cut, strict=True) if keep < len(mine)],
        dropped=sum(len(mine) - keep for mine, keep in zip(pending, cut, strict=True)),
        next_seq=newest + 1,
    )


def _pending(
    logs: Sequence[LogState], max_key: int
) -> tuple[int, list[list[Record]], dict[int, dict[int, int]]]:
    """The newest sequence number anywhere; each partition's records that its tree does not
    hold yet (a suffix of its log); and for each batch sequence number among them, partition
    -> index of its part in that partition's list."""
    newest = 0
    pending: list[list[Record]] = []
    holders: dict[int, dict[int, int]] = {}
    for state in logs:
        flushed = state.flushed_seq
        if flushed >= fmt.SEQ_LIMIT:
            raise CorruptionError(
                f"{state.tree_path}: tree holds writes up to sequence {flushed}, "
                "an impossible number"
            )
        newest = max(newest, flushed)
        records = state.records
        _check_records(state, records, len(logs), max_key)
        newest = max(newest, max((record.seq for record in records), default=0))
        mine = [record for record in records if record.seq > flushed]  # not yet in the tree
        for i, record in enumerate(mine):
            if record.rtype == fmt.REC_BATCH:
                holders.setdefault(record.seq, {})[state.index] = i
        pending.append(mine)
    return newest, pending, holders


def _check_records(state: LogState, records: Sequence[Record], n: int, max_key: int) -> None:
    """:func:`_check_record` each of ``records``, the sizes of all their entries at once (a
    log holds many records of one small entry)."""
    entries = [entry for record in records for entry in record.entries]
    keys = max(map(len, (key for key, _ in entries)), default=0)
    values = max(map(len, filter(None, (value for _, value in entries))), default=0)
    if keys > max_key or values > MAX_VALUE_SIZE:
        for record in records:
            _check_record(state, record, n, max_key)
    for record in records:
        if record.rtype == fmt.REC_BATCH:
            _check_record(state, record, n, max_key)


def _check_record(state: LogState, record: Record, n: int, max_key: int) -> None:
    """Refuse a record that no store of ``n`` partitions and ``max_key``-byte keys writes."""
    for key, value in record.entries:
        if len(key) > max_key or (value is not None and len(value) > MAX_VALUE_SIZE):
            raise CorruptionError(
                f"{state.wal_path}: record at sequence {record.seq} holds a "
                f"{len(key)}-byte key or a value over the limits of the store "
                f"({max_key}-byte keys, {MAX_VALUE_SIZE}-byte values)"
            )
    if record.rtype == fmt.REC_BATCH and (
        state.index not in record.partitions or any(not 0 <= q < n for q in record.partitions)
    ):
        raise CorruptionError(
            f"{state.wal_path}: batch part at sequence {record.seq} names "
            f"partitions {record.partitions}"
        )


def _cut(
    logs: Sequence[LogState], pending: list[list[Record]], holders: dict[int, dict[int, int]]
) -> list[int]:
    """How many of each partition's pending records to keep: cut at the first batch part
    whose batch is incomplete, then at every part of a batch a cut took, up to a fixpoint."""
    flushed = [state.flushed_seq for state in logs]
    cut = [len(mine) for mine in pending]
    work: list[tuple[int, int]] = []
    for index, mine in enumerate(pending):
        for i, record in enumerate(mine):
            if record.rtype == fmt.REC_BATCH and not all(
                q in holders[record.seq] or flushed[q] >= record.seq for q in record.partitions
            ):
                work.append((index, i))
                break  # the cut at the first one takes the rest
    while work:
        index, i = work.pop()
        if i >= cut[index]:
            continue
        for record in pending[index][i : cut[index]]:
            if record.rtype != fmt.REC_BATCH:
                continue
            # This part goes, so its batch goes everywhere: cut its other partitions.
            others = holders[record.seq]
            del others[index]
            work.extend(others.items())
            covered = [q for q in record.partitions if flushed[q] >= record.seq]
            if covered:
                raise CorruptionError(
                    f"{logs[index].wal_path}: the batch at sequence {record.seq} is in "
                    f"the tree (or run) of partition {covered[0]} but cannot apply here (a part "
                    "of it, or of a batch before it, is missing from a log)"
                )
        cut[index] = i
    return cut


def open_partitions(
    fs: FileSystem, path: str, partitions: int, page_size: int, seed: int, options: Options
) -> list[Partition]:
    """Open every partition of the store in ``path``: its tree and bloom filter loaded, its log
    read, nothing replayed yet. On failure the partitions opened are closed again."""
    cache_pages = options.cache_size // page_size // partitions
    parts: list[Partition] = []
    try:
        for index in range(partitions):
            parts.append(
                Partition(
                    fs,
                    path,
                    index,
                    page_size=page_size,
                    seed=seed,
                    cache_pages=cache_pages,
                    bloom_bits_per_key=options.bloom_bits_per_key,
                    readonly=options.readonly,
                )
            )
    except BaseException:
        for part in parts:
            with suppress(Exception):
                part.close()
        raise
    return parts


def log_states(parts: Sequence[Partition]) -> list[LogState]:
    """What :func:`plan` needs of opened partitions (their logs read, not yet replayed)."""
    return [
        LogState(part.index, part.covered_seq, part.contents.records, part.wal_path, part.tree_path)
        for part in parts
    ]


def replay(parts: Sequence[Partition], recovered: Plan, buffer_limit: int | None) -> None:
    """Apply ``recovered`` to the partitions' memtables and open their logs for appending
    (``buffer_limit``: FAST mode's buffer, else ``None``)."""
    for part, records in zip(parts, recovered.replay, strict=True):
        part.replay(records)
    for part in parts:
        part.open_log(buffer_limit)

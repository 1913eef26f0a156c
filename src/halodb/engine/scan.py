"""Ordered scans across partitions: each partition read in growing chunks under its lock, the
chunks merged a round at a time. Knows nothing of writes or of the directory."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from halodb.partition import Partition, count_upto

Columns = tuple[list[bytes], list[bytes]]
"""Keys in order and their values, as two lists of the same length."""

SCAN_CHUNK = 1024
FIRST_CHUNK = 32
"""A scan reads each partition FIRST_CHUNK items at first, doubling up to SCAN_CHUNK: short
range scans read little, long ones take few locks."""


def chunks(
    part: Partition,
    lo: bytes | None,
    hi: bytes | None,
    reverse: bool,
    chunk: int,
    guard: Callable[[], None],
    check_open: Callable[[], None],
    first: int = FIRST_CHUNK,
    most: int | None = None,
) -> Iterator[Columns]:
    """Live items of ``part`` in ``[lo, hi)``, in order, at most ``most`` of them (``None``:
    all), in chunks of ``first`` items, then twice as many each time up to ``chunk``. Each
    chunk is read under the partition's lock and resumed after the last key it covered, so
    keys come strictly in order and never twice. A read that tombstones left short is followed
    by one twice its size, whatever ``chunk`` and ``most`` say (what it returns past ``most``
    is cut), so a stretch of deleted keys costs a few reads, not one per key. ``guard`` runs
    before each lock is taken,
    ``check_open`` with it held (both raise if the store was closed meanwhile)."""
    left = -1 if most is None else most
    limit = min(chunk, first) if most is None else max(1, min(chunk, first, most))
    while left:
        guard()
        with part.lock:
            check_open()
            keys, values, edge = part.scan(lo, hi, reverse, limit)
        if 0 < left < len(keys):  # (a read past what is left: see below)
            del keys[left:], values[left:]
            edge = keys[-1]
        if keys:
            yield keys, values
        if edge is None:
            return
        short = len(keys) < limit  # tombstones: the next read covers twice as many keys
        left -= len(keys)
        if short:  # (past ``chunk`` and ``left`` too: only live items count against them)
            limit = min(limit * 2, max(chunk, SCAN_CHUNK))
        else:
            limit = min(limit * 2, chunk) if left < 0 else min(limit * 2, chunk, left)
        if reverse:
            hi = edge
        else:
            lo = edge + b"\x00"


def first_chunk(limit: int | None, partitions: int) -> int:
    """The first chunk each of ``partitions`` reads for a scan of at most ``limit`` items:
    FIRST_CHUNK, or a quarter more than a partition's share of a larger limit (hashing spreads
    keys evenly), so that one round of the merge usually yields them all."""
    if limit is None:
        return FIRST_CHUNK
    return min(limit, max(FIRST_CHUNK, -(-5 * limit // (4 * partitions))))


def take(batches: Iterator[Columns], most: int) -> Iterator[Columns]:
    """The first ``most`` items of ``batches``, lists as they come (the last ones cut)."""
    for keys, values in batches:
        if len(keys) >= most:
            if most:
                yield keys[:most], values[:most]
            return
        most -= len(keys)
        yield keys, values


def merge(sources: list[Iterator[Columns]], reverse: bool) -> Iterator[Columns]:
    """Merge ordered chunk streams into one, a chunk at a time: every buffered item up to the
    smallest last key among the buffers (the largest, reversed) is sorted and yielded; no
    source can still produce a key before that bound."""
    live: list[tuple[Iterator[Columns], Columns]] = []
    for source in sources:
        columns = next(source, None)
        if columns is not None and columns[0]:
            live.append((source, columns))
    while live:
        lasts = [keys[-1] for _, (keys, _) in live]
        bound = max(lasts) if reverse else min(lasts)
        merged: dict[bytes, bytes] = {}
        keep = []
        for source, (keys, values) in live:
            taken = count_upto(keys, bound, reverse)
            merged.update(zip(keys[:taken], values[:taken], strict=True))
            rest = (keys[taken:], values[taken:]) if taken < len(keys) else next(source, None)
            if rest is not None and rest[0]:
                keep.append((source, rest))
        live = keep
        out = sorted(merged, reverse=reverse)  # (partitions hold different keys)
        yield out, list(map(merged.__getitem__, out))

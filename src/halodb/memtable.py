"""One partition's in-memory table of recent writes; knows nothing of logs, trees or files.

A :class:`Memtable` maps encoded keys to encoded values, or to ``None`` for a tombstone (a delete
that the tree below has not yet seen). It is ordered (``sortedcontainers.SortedDict``): a point
lookup is a hash lookup, O(1); an insert of a new key is O(log n); an ordered scan from any key
is O(log n) to start. Its owner (the partition) serialises every call; it is not thread-safe.
"""

from __future__ import annotations

from collections.abc import Iterator

from sortedcontainers import SortedDict

ENTRY_OVERHEAD = 64
"""Bytes charged per entry on top of key and value, for the Python objects that hold them."""


class Memtable:
    """Recent writes of one partition, ordered by key. ``None`` values are tombstones."""

    __slots__ = ("data", "size")

    def __init__(self) -> None:
        self.data: SortedDict = SortedDict()
        self.size = 0
        """Approximate bytes held, used to decide when to flush."""

    def __len__(self) -> int:
        return len(self.data)

    def put(self, key: bytes, value: bytes | None) -> None:
        """Record ``value`` (``None``: a tombstone) for ``key``. O(log n) for a new key."""
        data = self.data
        old = data.get(key, _MISSING)
        if old is _MISSING:
            self.size += len(key) + ENTRY_OVERHEAD
        elif old is not None:
            self.size -= len(old)
        if value is not None:
            self.size += len(value)
        data[key] = value

    def keys(self, lo: bytes | None, hi: bytes | None, *, reverse: bool) -> Iterator[bytes]:
        """Keys in ``[lo, hi)`` (``None``: unbounded), in either order. O(log n) to start."""
        data = self.data
        it: Iterator[bytes] = data.irange(lo, hi, inclusive=(True, False), reverse=reverse)
        return it

    def clear(self) -> None:
        """Forget every entry."""
        self.data = SortedDict()
        self.size = 0


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


_MISSING = _Missing()
MISSING: object = _MISSING
"""What ``Memtable.data.get(key, MISSING)`` returns for a key the memtable does not hold."""

"""One partition's in-memory table of recent writes; knows nothing of logs, trees or files.

A :class:`Memtable` maps encoded keys to encoded values, or to ``None`` for a tombstone (a delete
that the tree below has not yet seen). It is ordered (a ``sortedcontainers.SortedList`` of its
keys beside a dict): a point lookup is a hash lookup, O(1); an insert is O(1) (new keys join the
order in bulk when an ordered read needs it); an ordered scan from any key is O(log n) to
start. Its owner (the partition) serialises every call; it is not thread-safe.
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import repeat

from sortedcontainers import SortedList

ENTRY_OVERHEAD = 64
"""Bytes charged per entry on top of key and value, for the Python objects that hold them."""


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: object = _Missing()
"""What ``Memtable.data.get(key, MISSING)`` returns for a key the memtable does not hold."""


class Memtable:
    """Recent writes of one partition, ordered by key. ``None`` values are tombstones.

    ``data`` is a plain dict (point lookups and overwrites are one hash operation); the key order
    lives in a ``SortedList`` that new keys join lazily, in bulk, the next time an ordered read
    needs it. A put of a new key is therefore O(1), and the first ordered read after k new keys
    pays O(k log n) once.
    """

    __slots__ = ("data", "order", "pending", "size")

    def __init__(self) -> None:
        self.data: dict[bytes, bytes | None] = {}
        self.order = SortedList()
        """Every key of ``data`` except those still in ``pending``, sorted."""
        self.pending: list[bytes] = []
        """Keys added to ``data`` since ``order`` last took them in."""
        self.size = 0
        """Approximate bytes held, used to decide when to flush."""

    def __len__(self) -> int:
        return len(self.data)

    def put(self, key: bytes, value: bytes | None) -> object:
        """Record ``value`` (``None``: a tombstone) for ``key``. O(1).

        Returns what the memtable held for ``key`` before: its value, ``None`` (a tombstone)
        or :data:`MISSING`.
        """
        data = self.data
        old = data.get(key, MISSING)
        if old is MISSING:
            self.size += len(key) + ENTRY_OVERHEAD
            self.pending.append(key)
        elif old is not None:
            self.size -= len(old)  # type: ignore[arg-type]
        if value is not None:
            self.size += len(value)
        data[key] = value
        return old

    def put_all(self, items: dict[bytes, bytes | None]) -> list[object]:
        """:meth:`put` each of ``items`` (a key once each), in bulk; returns what the memtable
        held for each key before, in the order of ``items``."""
        data = self.data
        olds = list(map(data.get, items, repeat(MISSING)))
        added = [key for key, old in zip(items, olds, strict=True) if old is MISSING]
        self.pending += added
        self.size += (
            sum(map(len, added))
            + ENTRY_OVERHEAD * len(added)
            - sum(len(old) for old in olds if old is not None and old is not MISSING)  # type: ignore[arg-type,misc]
            + sum(map(len, filter(None, items.values())))
        )
        data.update(items)
        return olds

    def ordered(self) -> SortedList:
        """The keys, sorted (the new ones join the order now); not to be changed."""
        if self.pending:
            self.order.update(self.pending)
            self.pending = []
        return self.order

    def items(self) -> list[tuple[bytes, bytes | None]]:
        """Every ``(key, value or None)``, in key order."""
        order = self.ordered()
        return list(zip(order, map(self.data.__getitem__, order), strict=True))

    def columns(self, step: int | None = None) -> tuple[list[bytes], list[bytes | None]]:
        """Every key in order, and the values (or ``None``) in the same order.

        Reads ``data`` alone, never the order kept for scans: once the memtable is frozen (no
        longer written) this is safe beside readers that scan it under their lock. With
        ``step``, no call sorts or looks up more than about ``step`` keys: each call holds
        Python's interpreter lock, so other threads wait at most that long for it (sorting a
        quarter of a million keys in one call held it 130 ms).
        """
        data = self.data
        keys = list(data)
        if step is None or len(keys) <= step:
            keys.sort()
            return keys, list(map(data.__getitem__, keys))
        keys = merge_sorted([sorted(keys[i : i + step]) for i in range(0, len(keys), step)], step)
        values: list[bytes | None] = []
        for i in range(0, len(keys), step):
            values += map(data.__getitem__, keys[i : i + step])
        return keys, values

    def clear(self) -> None:
        """Forget every entry."""
        self.data = {}
        self.order = SortedList()
        self.pending = []
        self.size = 0


def merge_sorted(runs: list[list[bytes]], step: int) -> list[bytes]:
    """The sorted ``runs`` (of distinct keys) merged into one sorted list, two at a time in a
    balanced tree (:func:`_merge_two`): O(n log(runs)) in all, and no call handles more than
    about ``2 * step`` keys but for copying a run's untouched tail (references only)."""
    runs = [run for run in runs if run]
    while len(runs) > 1:
        runs = [
            _merge_two(runs[i], runs[i + 1], step) if i + 1 < len(runs) else runs[i]
            for i in range(0, len(runs), 2)
        ]
    return runs[0] if runs else []


def _merge_two(a: list[bytes], b: list[bytes], step: int) -> list[bytes]:
    """Two sorted lists of distinct keys merged, a round at a time: each round takes ``step``
    keys from one list and the other's keys up to the last of them, and sorts those (two
    sorted runs: the sort merges them in linear time). Once a list runs out, the rest of the
    other is copied whole. Keys in order (a list whose keys all come first) take one round
    per ``step`` keys and a copy."""
    out: list[bytes] = []
    i = j = 0
    while i < len(a) and j < len(b):
        a_end = min(i + step, len(a))
        b_end = bisect_right(b, a[a_end - 1], j)
        if b_end - j > step:  # b holds more below a's window: b's window leads
            b_end = j + step
            a_end = bisect_right(a, b[b_end - 1], i)
        chunk = a[i:a_end]
        chunk += b[j:b_end]
        chunk.sort()
        out += chunk
        i, j = a_end, b_end
    out += a[i:]
    out += b[j:]
    return out

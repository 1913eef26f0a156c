"""A B+ tree's row cache: key -> value of rows read lately, within a budget in bytes of memory;
it knows of ``node`` only the ``Overflow`` reference and the objects' sizes, and nothing of
pages or of how the tree is read or written.

Each row is charged its key and value objects (``ROW_OVERHEAD`` and the lengths), and the dict's
table as it is (``dict.__sizeof__``). Past the budget, the older half of the rows is dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import compress, islice, repeat
from operator import is_not

from halodb.btree.node import BYTES_OBJECT, OVERFLOW_OBJECT, Overflow

ROW_OVERHEAD = 2 * BYTES_OBJECT
"""Bytes charged per row-cache entry on top of its key's and value's lengths: the two objects
(an :class:`Overflow` value is charged ``OVERFLOW_OBJECT`` instead of a bytes object). The row
cache's dict table is charged as it is (``dict.__sizeof__``)."""
_ROW_OVERFLOW_EXTRA = OVERFLOW_OBJECT - BYTES_OBJECT - len(Overflow(0, 0, 0))
"""An overflow row's charge beyond ``len(value) + BYTES_OBJECT`` (``len`` of an
:class:`Overflow` is 3)."""

ROW_STEP = 1 << 13
"""Keys :meth:`RowCache.drop_rows` drops in one C-level pass: each holds Python's interpreter
lock, which other threads wait for (a quarter of a million keys at once held it 45 ms)."""

_dict_sizeof = dict.__sizeof__
"""A dict's size with its table (``sys.getsizeof`` less the collector's header, and five times
faster: called on every row added)."""


def _count_overflows(values: Iterable[object]) -> int:
    """How many of ``values`` are :class:`Overflow` references (C-level: no Python loop)."""
    return list(map(type, values)).count(Overflow)


class RowCache:
    """The row cache of a tree (a base class of ``BTree``, whose reads fill it: the hot path
    of warm lookups is one hash lookup in :attr:`rows`, from the tree's owner too)."""

    def __init__(self, budget: int) -> None:
        self.rows: dict[bytes, bytes | Overflow] = {}
        """Row cache: key -> value of the entries of leaves read from disk lately and of keys
        looked up lately, so a warm lookup is one hash lookup. Exact outside a flush: a flush
        drops every key it changes (while it runs, a changed key may still have its old row; its
        owner's memtable still holds it)."""
        self.rows_bytes = 0
        """What the row cache's entries take: keys and values, ``ROW_OVERHEAD`` per entry (and
        more for an :class:`Overflow` value, see ``_ROW_OVERFLOW_EXTRA``); its dict table is
        not included (:meth:`row_cache_bytes` adds it)."""
        self.rows_budget = budget
        """Past this many bytes of memory (:meth:`row_cache_bytes`) the older half of the row
        cache is dropped."""

    def row_cache_bytes(self) -> int:
        """Bytes of memory the row cache takes: its entries (``rows_bytes``) and its dict's
        table. O(1)."""
        return self.rows_bytes + _dict_sizeof(self.rows)

    def _remember_rows(
        self, keys: Sequence[bytes], values: Sequence[bytes | Overflow], big: bool
    ) -> None:
        """Add rows (``big``: some values may be :class:`Overflow`). Keys the cache may already
        hold are charged again: an overestimate that the next shrink corrects."""
        rows = self.rows
        rows.update(zip(keys, values, strict=True))
        added = sum(map(len, keys)) + sum(map(len, values)) + ROW_OVERHEAD * len(keys)
        if big:
            added += _ROW_OVERFLOW_EXTRA * _count_overflows(values)
        self.rows_bytes += added
        if self.rows_bytes + _dict_sizeof(rows) > self.rows_budget:
            self._shrink_rows()

    def _remember_row(self, key: bytes, value: bytes | Overflow) -> None:
        """Add one row the cache does not hold (:meth:`_remember_rows` for one row, without
        its lists: the path of every first lookup of a key)."""
        rows = self.rows
        rows[key] = value
        if type(value) is bytes:
            self.rows_bytes += len(key) + len(value) + ROW_OVERHEAD
        else:
            self.rows_bytes += len(key) + BYTES_OBJECT + OVERFLOW_OBJECT
        if self.rows_bytes + _dict_sizeof(rows) > self.rows_budget:
            self._shrink_rows()

    def _shrink_rows(self) -> None:
        """Drop the older half of the row cache (insertion order), again until it is within
        its budget, and recount its bytes."""
        rows = self.rows
        while True:
            rows = dict(islice(rows.items(), len(rows) // 2, None))
            values = rows.values()
            self.rows_bytes = (
                sum(map(len, rows))
                + sum(map(len, values))
                + ROW_OVERHEAD * len(rows)
                + _ROW_OVERFLOW_EXTRA * _count_overflows(values)
            )
            if self.rows_bytes + _dict_sizeof(rows) <= self.rows_budget or not rows:
                break
        self.rows = rows

    def drop_rows(self, keys: list[bytes]) -> None:
        """After a flush changed ``keys``: each leaves the row cache, which may hold its old
        value (or an overflow reference the flush released). The flush does not put the new
        values there (a lookup does, from the leaves the flush left in the node cache): filling
        it took about 6% of the time of a fill of random keys. (C-level maps: a flush passes
        every key of a memtable through here.)"""
        for i in range(0, len(keys), ROW_STEP):  # (see ROW_STEP)
            rows = self.rows
            if not rows:
                return
            some = keys[i : i + ROW_STEP]
            popped = list(map(rows.pop, some, repeat(None)))
            dropped = len(popped) - popped.count(None)
            if dropped:
                # (filter(None, ...) also leaves out empty values, whose length is 0 anyway.)
                values = list(filter(None, popped))
                self.rows_bytes -= (
                    sum(map(len, compress(some, map(is_not, popped, repeat(None)))))
                    + sum(map(len, values))
                    + ROW_OVERHEAD * dropped
                    + _ROW_OVERFLOW_EXTRA * _count_overflows(values)
                )

    def clear_rows(self) -> None:
        """Forget every row (the tree was cleared, or a flush failed part-way)."""
        self.rows = {}
        self.rows_bytes = 0

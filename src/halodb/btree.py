"""One partition's on-disk B+ tree of encoded keys and values; knows nothing of logs or memtables.

Pages (see ``docs/format.md``): leaves hold sorted keys with their values inline, or a reference
to a chain of overflow pages for values larger than a quarter page; internal nodes hold sorted
separator keys and one child reference (page number and that page's checksum) more than keys.
Child ``i`` holds keys ``>= keys[i-1]`` and ``< keys[i]``. Because every reference carries the
checksum of the page it points to, a stale or misplaced page is detected on read.

The tree is never updated in place: :meth:`BTree.apply` merges a sorted batch of changes into
copies of the touched leaves and of their ancestors, then commits through the pager. Point
lookups are O(height) with a binary search per node; decoded nodes are cached by the pager.
The owner serialises every call; the tree is not thread-safe.

Both caches are bounded in bytes of memory, not in pages or entries: a decoded node takes
several times its page's size (every key and value is an object of its own), so each node is
charged, when it is decoded, an estimate of what it takes (:func:`leaf_cost`,
:func:`internal_cost`, from the object sizes ``sys.getsizeof`` gives), and each row its key and
value objects plus the row cache's dict table.
"""

from __future__ import annotations

import struct
import sys
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, compress, islice, repeat
from operator import add, is_not, le, lt, sub
from typing import Any, NamedTuple

from halodb import format as fmt
from halodb.errors import CorruptionError, InternalError
from halodb.pager import META_PAGES, Pager

_HEADER = fmt.PAGE_HEADER
_HSIZE = _HEADER.size
_REF = fmt.OVERFLOW_REF
_CHILD = fmt.CHILD_REF

Change = tuple[bytes, bytes | None]


class Overflow(NamedTuple):
    """A value kept in a chain of overflow pages."""

    page: int
    crc: int
    length: int


class Leaf:
    """A decoded leaf: sorted keys and their values (bytes, or an :class:`Overflow`).

    Tuples, not lists: a tuple of bytes leaves the garbage collector's books at its first
    collection, so the cached leaves cost the collections that a flush or a scan sets off
    nothing (as lists, every collection walked them: about a tenth of a fill's time)."""

    __slots__ = ("big", "cost", "keys", "values")

    level = 0
    """A leaf's level (a class attribute): compared like :attr:`Internal.level`."""

    def __init__(
        self, keys: tuple[bytes, ...], values: tuple[bytes | Overflow, ...], big: bool, cost: int
    ) -> None:
        self.keys = keys
        self.values = values
        self.big = big
        """Whether any value is an :class:`Overflow`."""
        self.cost = cost
        """Bytes of memory the leaf takes in the node cache (:func:`leaf_cost`)."""


class Internal:
    """A decoded internal node: ``len(keys) + 1`` children with their checksums.

    After deletes an internal node may be left with a single child and no key.
    """

    __slots__ = ("children", "cost", "crcs", "keys", "level")

    def __init__(
        self, keys: list[bytes], children: list[int], crcs: list[int], level: int, cost: int
    ) -> None:
        self.keys = keys
        self.children = children
        self.crcs = crcs
        self.level = level
        """The node's level (at least 1): a cached node reached where another level belongs
        (a page referred to from two levels, or a cycle) is damage, see :meth:`BTree._node`."""
        self.cost = cost
        """Bytes of memory the node takes in the node cache (:func:`internal_cost`)."""


# -- what decoded nodes and rows take in memory ------------------------------------------------
# CPython's object sizes, from sys.getsizeof (which counts the garbage collector's header of the
# objects that have one), plus _PAD per object: the allocator rounds every block up to a
# multiple of 16 bytes, half of that on average. Measured against tracemalloc by
# tests/unit/test_cache_memory.py.

_PAD = 8
_REF_SIZE = struct.calcsize("P")
"""A reference: a slot of a tuple or list."""
BYTES_OBJECT = sys.getsizeof(b"") + _PAD
"""What a bytes object takes on top of its length."""
_INT_OBJECT = sys.getsizeof(1 << 31) + _PAD
"""A page number or checksum (below 2**32) as an int object."""
_TUPLE_OBJECT = sys.getsizeof(()) + _PAD
_LIST_OBJECT = sys.getsizeof([]) + _PAD
DICT_ENTRY = 4 * 3 * _REF_SIZE + 6 * 4
"""A dict entry at worst: three references in a table that may be three quarters empty just
after it grew, and its index slots (4 bytes each, six per entry at worst)."""
OVERFLOW_OBJECT = sys.getsizeof(Overflow(0, 0, 0)) + _PAD + 3 * _INT_OBJECT
"""What an :class:`Overflow` reference takes: the named tuple and its three ints."""
_CACHE_ENTRY = DICT_ENTRY + _INT_OBJECT
"""A node cache entry: its dict entry and the page number."""
_LEAF_BASE = (
    sys.getsizeof(Leaf((), (), False, 0)) + _PAD + 2 * _TUPLE_OBJECT + _CACHE_ENTRY - _HSIZE
)
_LEAF_ENTRY = 2 * (BYTES_OBJECT + _REF_SIZE) - 5
"""(``_HSIZE`` and the 5 bytes a page spends per entry are taken off: :func:`leaf_cost` is given
where a leaf's contents end in its page, not their length.)"""
_OVERFLOW_EXTRA = OVERFLOW_OBJECT - BYTES_OBJECT - _REF.size
"""What an overflow value takes in a leaf beyond the bytes of its reference in the page."""
_INTERNAL_BASE = (
    sys.getsizeof(Internal([], [], [], 1, 0))
    + _PAD
    + 3 * _LIST_OBJECT
    + _CACHE_ENTRY
    + 2 * (_INT_OBJECT + _REF_SIZE)
)
_INTERNAL_ENTRY = BYTES_OBJECT + 2 * _REF_SIZE + 2 * (_INT_OBJECT + _REF_SIZE)
"""A separator (a bytes object in a list that may be over-allocated) and one more child with
its checksum."""


def leaf_cost(n: int, end: int, overflows: int = 0) -> int:
    """Bytes of memory a decoded leaf of ``n`` entries whose contents end at offset ``end`` of
    its page (``overflows`` of its values in overflow pages) takes in the node cache: the node,
    its two tuples, a bytes object per key and value, and its cache entry. O(1)."""
    return _LEAF_BASE + n * _LEAF_ENTRY + end + overflows * _OVERFLOW_EXTRA


def internal_cost(n: int, key_bytes: int) -> int:
    """Bytes of memory a decoded internal node of ``n`` separators (``key_bytes`` long in
    all) takes in the node cache: the node, its three lists, a bytes object per separator, an
    int per child and checksum, and its cache entry. O(1)."""
    return _INTERNAL_BASE + n * _INTERNAL_ENTRY + key_bytes


ROW_OVERHEAD = 2 * BYTES_OBJECT
"""Bytes charged per row-cache entry on top of its key's and value's lengths: the two objects
(an :class:`Overflow` value is charged ``OVERFLOW_OBJECT`` instead of a bytes object). The row
cache's dict table is charged as it is (``dict.__sizeof__``)."""
_ROW_OVERFLOW_EXTRA = OVERFLOW_OBJECT - BYTES_OBJECT - len(Overflow(0, 0, 0))
"""An overflow row's charge beyond ``len(value) + BYTES_OBJECT`` (``len`` of an
:class:`Overflow` is 3)."""

Ref = tuple[bytes, int, int]
"""A written node: a lower bound of its keys, its page number, its checksum."""


def _slices(page: bytes, base: int, ends: tuple[int, ...]) -> list[bytes]:
    """The pieces of ``page`` from ``base`` that end at the cumulative offsets ``ends``.

    (A plain loop: measured three times faster than ``map`` over ``page.__getitem__`` and
    ``slice`` objects, whose method-wrapper calls cost more than the bytecode they save.)"""
    out: list[bytes] = []
    append = out.append
    start = base
    for offset in ends:
        end = base + offset
        append(page[start:end])
        start = end
    return out


def _count_overflows(values: Iterable[object]) -> int:
    """How many of ``values`` are :class:`Overflow` references (C-level: no Python loop)."""
    return list(map(type, values)).count(Overflow)


_dict_sizeof = dict.__sizeof__
"""A dict's size with its table (``sys.getsizeof`` less the collector's header, and five times
faster: called on every row added)."""


def _ascending(ends: tuple[int, ...]) -> bool:
    """Whether cumulative offsets never go down."""
    return all(map(le, ends, islice(ends, 1, None)))


def _sorted(keys: Sequence[bytes]) -> bool:
    """Whether keys are strictly ascending."""
    return all(map(lt, keys, islice(keys, 1, None)))


LAYOUTS_MAX = 512
"""How many leaf layouts ``_LAYOUTS`` holds before it starts again."""
LAYOUTS_BYTES = 4 << 20
"""How many bytes of memory ``_LAYOUTS`` may take before it starts again: a ``Struct`` for a
leaf of ``n`` entries takes about ``64 * n`` bytes, so 512 of them for leaves of small entries
(or large pages) could take tens of megabytes. For the whole process, outside ``cache_size``."""

_LAYOUTS: dict[bytes, struct.Struct | None] = {}
"""Leaf layouts met lately: a leaf's raw offset arrays -> a ``Struct`` that cuts every key and
value of such a leaf in one call (``None``: met once; a layout met twice gets its ``Struct``, so
leaves of variable sizes, whose layouts rarely repeat, do not pay for building one). Shared by
every tree of the process: a layout is only sizes, checked before it is remembered."""


class _Tally:
    """A count that functions update in place (a module global would need ``global``)."""

    __slots__ = ("bytes",)

    def __init__(self) -> None:
        self.bytes = 0


_LAYOUTS_HELD = _Tally()
"""Bytes of memory ``_LAYOUTS`` takes (its keys, entries and ``Struct`` objects). Updated
without a lock, as ``_LAYOUTS`` is: threads decoding in different partitions at once may
miscount a layout, which only moves the next start-again."""


@dataclass(slots=True)
class TreeReport:
    """What :meth:`BTree.check` found: the tree's shape and page accounting."""

    height: int = 0
    nodes_per_level: list[int] = field(default_factory=list)
    """Node count per level, the root's level first."""
    bytes_used_per_level: list[int] = field(default_factory=list)
    keys: int = 0
    overflow_pages: int = 0
    free_pages: int = 0
    page_count: int = 0

    def fill_factor(self, page_size: int) -> float:
        """Average fraction of a node page in use, over all nodes."""
        nodes = sum(self.nodes_per_level)
        usable = page_size - _HSIZE
        return sum(self.bytes_used_per_level) / (nodes * usable) if nodes else 0.0


def limits(page_size: int) -> tuple[int, int]:
    """The largest encoded key, and the largest value kept inline, for a page size."""
    return page_size // 8, page_size // 4


class _Run:
    """Consecutive leaves being rewritten by a flush, merged: written as one."""

    __slots__ = ("big", "keys", "lower", "values")

    def __init__(
        self, lower: bytes, keys: list[bytes], values: list[bytes | Overflow], big: bool
    ) -> None:
        self.lower = lower
        self.keys = keys
        self.values = values
        self.big = big

    def extend(self, keys: list[bytes], values: list[bytes | Overflow], big: bool) -> None:
        self.keys += keys
        self.values += values
        self.big |= big

    def write(self, tree: BTree) -> list[Ref]:
        refs = tree._write_leaves(self.keys, self.values, self.big)
        if refs:
            refs[0] = (self.lower, refs[0][1], refs[0][2])
        return refs


class BTree:
    """The B+ tree of one partition, over its :class:`Pager`."""

    def __init__(self, pager: Pager) -> None:
        self.pager = pager
        self.page_size = pager.page_size
        self.max_key, self.max_inline = limits(pager.page_size)
        self.rows: dict[bytes, bytes | Overflow] = {}
        """Row cache: key -> value of the entries of leaves read from disk lately and of keys
        looked up lately, so a warm lookup is one hash lookup. Exact outside a flush: a flush
        drops every key it changes (while it runs, a changed key may still have its old row; its
        owner's memtable still holds it)."""
        self.rows_bytes = 0
        """What the row cache's entries take: keys and values, ``ROW_OVERHEAD`` per entry (and
        more for an :class:`Overflow` value, see ``_ROW_OVERFLOW_EXTRA``); its dict table is
        not included (:meth:`row_cache_bytes` adds it)."""
        self.rows_budget = pager.cache_budget
        """Past this many bytes of memory (:meth:`row_cache_bytes`) the older half of the row
        cache is dropped (the same budget as the node cache's)."""
        self.usable = pager.page_size - _HSIZE
        self.where = pager.path

    # -- decoding ----------------------------------------------------------------------------

    def _decode(self, page_no: int, page: bytes, level: int) -> Leaf | Internal:
        _, ptype, plevel, n, _, _ = _HEADER.unpack_from(page)
        if plevel != level:
            raise self._damage(page_no, f"node of level {plevel} where level {level} belongs")
        size = len(page)
        try:
            if ptype == fmt.PAGE_LEAF and level == 0:
                if n == 0 or _HSIZE + 5 * n > size:
                    raise self._damage(page_no, f"leaf with impossible count {n}")
                flags = page[_HSIZE : _HSIZE + n]
                offsets = page[_HSIZE + n : _HSIZE + 5 * n]
                layout = _LAYOUTS.get(offsets)
                if layout is not None:  # offsets checked when the layout was made
                    pieces = layout.unpack_from(page)
                    keys: tuple[bytes, ...] = pieces[:n]
                    values: tuple[bytes | Overflow, ...] = pieces[n:]
                    end = layout.size
                else:
                    keys, values, end = self._cut_leaf(page_no, page, n, offsets)
                overflows = 0
                if flags.count(0) != n:
                    values = self._overflows(page_no, flags, values)
                    overflows = flags.count(fmt.VALUE_OVERFLOW)
                if not _sorted(keys):
                    raise self._damage(page_no, "keys out of order")
                return Leaf(keys, values, overflows > 0, leaf_cost(n, end, overflows))
            if ptype == fmt.PAGE_INTERNAL and level > 0:
                children_end = _HSIZE + 8 * (n + 1)
                if children_end + 2 * n > size:
                    raise self._damage(page_no, f"internal node with impossible count {n}")
                refs = fmt.u32_array(2 * (n + 1)).unpack_from(page, _HSIZE)
                kends = fmt.u16_array(n).unpack_from(page, children_end)
                kbase = children_end + 2 * n
                if (n and kbase + kends[-1] > size) or not _ascending(kends):
                    raise self._damage(page_no, "internal node keys run past the page")
                separators = _slices(page, kbase, kends)
                if not _sorted(separators):
                    raise self._damage(page_no, "keys out of order")
                cost = internal_cost(n, kends[-1] if n else 0)
                return Internal(separators, list(refs[0::2]), list(refs[1::2]), level, cost)
        except struct.error as exc:
            raise self._damage(page_no, f"malformed node ({exc})") from exc
        raise self._damage(page_no, f"page type {ptype} is not a node of level {level}")

    def _overflows(
        self, page_no: int, flags: bytes, raw: tuple[bytes | Overflow, ...]
    ) -> tuple[bytes | Overflow, ...]:
        """A leaf's values with its overflow references (by ``flags``) decoded."""
        values = list(raw)
        for i, flag in enumerate(flags):
            if flag == fmt.VALUE_OVERFLOW:
                ref = values[i]
                assert isinstance(ref, bytes)
                if len(ref) != _REF.size:
                    raise self._damage(page_no, "bad overflow reference")
                values[i] = Overflow(*_REF.unpack(ref))
            elif flag != fmt.VALUE_INLINE:
                raise self._damage(page_no, f"unknown value flag {flag}")
        return tuple(values)

    def _cut_leaf(
        self, page_no: int, page: bytes, n: int, offsets: bytes
    ) -> tuple[tuple[bytes, ...], tuple[bytes | Overflow, ...], int]:
        """A leaf's keys and raw values, and where they end in the page, its offsets
        (``offsets``, the raw arrays) checked. The second time a layout is met, it is remembered
        in ``_LAYOUTS``: leaves of keys and values of fixed sizes are then cut in one call.
        ``_LAYOUTS`` starts again when it holds ``LAYOUTS_MAX`` layouts or would take more than
        ``LAYOUTS_BYTES`` of memory."""
        ends = fmt.u16_array(2 * n).unpack(offsets)
        kends, vends = ends[:n], ends[n:]
        kbase = _HSIZE + 5 * n
        vbase = kbase + kends[-1]
        if vbase + vends[-1] > len(page):
            raise self._damage(page_no, "leaf contents run past the page")
        if not (_ascending(kends) and _ascending(vends)):
            raise self._damage(page_no, "leaf offsets out of order")
        keys = tuple(_slices(page, kbase, kends))
        values = tuple(_slices(page, vbase, vends))
        layout: struct.Struct | None = None
        known = offsets in _LAYOUTS
        if known:  # seen once before: worth a Struct
            sizes = [*map(sub, kends, (0, *kends)), *map(sub, vends, (0, *vends))]
            layout = struct.Struct(f"<{kbase}x" + "".join(map("{}s".format, sizes)))
            size = sys.getsizeof(layout) + BYTES_OBJECT + len(layout.format)
        else:
            size = BYTES_OBJECT + len(offsets) + DICT_ENTRY
        held = _LAYOUTS_HELD
        if (not known and len(_LAYOUTS) >= LAYOUTS_MAX) or held.bytes + size > LAYOUTS_BYTES:
            _LAYOUTS.clear()
            held.bytes = 0
        _LAYOUTS[offsets] = layout
        held.bytes += size
        return keys, values, vbase + vends[-1]

    def _damage(self, page_no: int, what: str) -> CorruptionError:
        return CorruptionError(f"{self.where} page {page_no}: {what}")

    def _node(self, page_no: int, crc: int, level: int) -> Leaf | Internal:
        """The node in ``page_no`` where level ``level`` belongs, from the cache or the disk.

        A page reached at two levels (or a cycle, a page among its own descendants) is
        damage: the cache holds nodes by page number only, so a cached node's level is
        compared with the level it is wanted at, as :meth:`_decode` does for a page read."""
        node: Leaf | Internal | None = self.pager.cache.get(page_no)
        if node is None:
            return self._load(page_no, crc, level)  # type: ignore[no-any-return]
        if node.level != level:
            raise self._misplaced(page_no, node.level, level)
        self.pager.stats.cache_hits += 1
        return node

    def _misplaced(self, page_no: int, found: int, level: int) -> CorruptionError:
        return CorruptionError(
            f"{self.where} page {page_no}: node of level {found} where level {level} belongs "
            "(a page reached at two levels, or a cycle)"
        )

    def _load(self, page_no: int, crc: int, level: int) -> Any:
        pager = self.pager
        pager.stats.cache_misses += 1
        node = self._decode(page_no, pager.read_page(page_no, crc, "tree node"), level)
        pager.remember(page_no, node)
        if isinstance(node, Leaf):
            self._remember_rows(node.keys, node.values, node.big)
        return node

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

    def _drop_rows(self, keys: list[bytes]) -> None:
        """After a flush changed ``keys``: each leaves the row cache, which may hold its old
        value (or an overflow reference the flush released). The flush does not put the new
        values there (a lookup does, from the leaves the flush left in the node cache): filling
        it took about 6% of the time of a fill of random keys. (C-level maps: a flush passes
        every key of a memtable through here.)"""
        rows = self.rows
        if rows:
            popped = list(map(rows.pop, keys, repeat(None)))
            dropped = len(popped) - popped.count(None)
            if dropped:
                # (filter(None, ...) also leaves out empty values, whose length is 0 anyway.)
                values = list(filter(None, popped))
                self.rows_bytes -= (
                    sum(map(len, compress(keys, map(is_not, popped, repeat(None)))))
                    + sum(map(len, values))
                    + ROW_OVERHEAD * dropped
                    + _ROW_OVERFLOW_EXTRA * _count_overflows(values)
                )

    # -- reads -------------------------------------------------------------------------------

    def _leaf_for(self, key: bytes) -> Leaf | None:
        """The leaf whose key range holds ``key``; ``None`` for an empty tree. The hot path:
        cache lookups are inlined, and cache hits are counted once per descent."""
        pager = self.pager
        meta = pager.meta
        level = meta.height - 1
        if level < 0:
            return None
        page_no, crc = meta.root, meta.root_crc
        cache = pager.cache
        misses = pager.stats.cache_misses
        # A page reached at two levels (or a cycle) is damage. The descent takes exactly
        # ``height - 1`` steps whatever the pages say, and pays only for the checks that keep
        # it from going wrong: a cached leaf met above level 0 has no children (the
        # AttributeError, free until raised), and what is reached at level 0 must be a leaf.
        # An internal node met at another internal level leads to one of these, to a page read
        # at the wrong level (``_decode``), or to a real leaf; ``check()`` reports it in every
        # case (``_node``, used everywhere else, compares every level).
        try:
            while level:
                inner = cache.get(page_no)
                if inner is None:
                    inner = self._load(page_no, crc, level)
                i = bisect_right(inner.keys, key)
                page_no = inner.children[i]
                crc = inner.crcs[i]
                level -= 1
        except AttributeError:
            if type(cache.get(page_no)) is not Leaf:
                raise
            raise self._misplaced(page_no, 0, level) from None
        leaf = cache.get(page_no)
        if leaf is None:
            leaf = self._load(page_no, crc, 0)
        elif type(leaf) is not Leaf:
            raise self._misplaced(page_no, leaf.level, 0)
        pager.stats.cache_hits += meta.height - (pager.stats.cache_misses - misses)
        return leaf

    def get_cached(self, key: bytes) -> bytes | None:
        """The value of ``key`` if the row cache holds it, else ``None`` (absent or not cached):
        the hot path of warm lookups, one hash lookup."""
        value = self.rows.get(key)
        if value is None or type(value) is bytes:
            return value
        return self.read_overflow(value)  # type: ignore[arg-type]

    def get(self, key: bytes) -> bytes | None:
        """The value of ``key``, or ``None``. O(height * log(fanout))."""
        leaf = self._leaf_for(key)
        if leaf is None:
            return None
        keys = leaf.keys
        i = bisect_left(keys, key)
        if i < len(keys) and keys[i] == key:
            value = leaf.values[i]
            if key not in self.rows:  # (a leaf just read from disk put all its rows there)
                self._remember_row(key, value)
            return value if type(value) is bytes else self.read_overflow(value)  # type: ignore[arg-type]
        return None

    def contains(self, key: bytes) -> bool:
        """Whether ``key`` is in the tree, without reading an overflow value."""
        if key in self.rows:
            return True
        leaf = self._leaf_for(key)
        if leaf is None:
            return False
        keys = leaf.keys
        i = bisect_left(keys, key)
        return i < len(keys) and keys[i] == key

    def _chain_pages(self, ref: Overflow) -> int:
        """How many pages the overflow chain of ``ref`` has; more than the file's pages in use
        is damage (a hostile length must not make a reader follow a looping chain for long)."""
        pages = -(-ref.length // self.usable)
        if pages > self.pager.next_page - META_PAGES:
            raise CorruptionError(
                f"{self.where}: overflow value of {ref.length} bytes at page {ref.page} needs "
                f"{pages} pages, the file has {self.pager.next_page - META_PAGES}"
            )
        return pages

    def read_overflow(self, ref: Overflow) -> bytes:
        """The whole value behind an overflow reference, every page verified."""
        chunk = self.usable
        expected_pages = self._chain_pages(ref)
        parts = []
        seen: set[int] = set()
        page_no, crc = ref.page, ref.crc
        for i in range(expected_pages):
            if page_no in seen:
                raise CorruptionError(f"{self.where} page {page_no}: overflow chain loops")
            seen.add(page_no)
            page = self.pager.read_page(page_no, crc, "overflow")
            _, ptype, _, n, nxt, nxt_crc = _HEADER.unpack_from(page)
            last = i == expected_pages - 1
            if ptype != fmt.PAGE_OVERFLOW or n > chunk or (last and nxt) or (not last and not nxt):
                raise CorruptionError(f"{self.where} page {page_no}: broken overflow chain")
            parts.append(page[_HSIZE : _HSIZE + n])
            page_no, crc = nxt, nxt_crc
        value = b"".join(parts)
        if len(value) != ref.length:
            raise CorruptionError(
                f"{self.where}: overflow value is {len(value)} bytes, not {ref.length}"
            )
        return value

    def _leaves(self, lo: bytes | None, hi: bytes | None, reverse: bool) -> Iterator[Leaf]:
        """The leaves that may hold keys in ``[lo, hi)``, in order (reversed: backwards).

        Each leaf's keys must follow the previous leaf's: a subtree reached twice (which
        could otherwise make the walk visit a page an exponential number of times) is damage,
        met at its second visit."""
        meta = self.pager.meta
        if not meta.height:
            return
        node = self._node
        stack: list[tuple[Internal, int, int]] = []
        top = node(meta.root, meta.root_crc, meta.height - 1)
        if isinstance(top, Leaf):
            yield top
            return

        def start(inner: Internal) -> int:
            if reverse:
                return len(inner.keys) if hi is None else bisect_left(inner.keys, hi)
            return 0 if lo is None else bisect_right(inner.keys, lo)

        stack.append((top, start(top), meta.height - 1))
        step = -1 if reverse else 1
        edge: bytes | None = None  # the last key yielded so far (reversed: the first)
        while stack:
            inner, i, level = stack.pop()
            if not 0 <= i < len(inner.children):
                continue
            stack.append((inner, i + step, level))
            child = node(inner.children[i], inner.crcs[i], level - 1)
            if level == 1:
                assert isinstance(child, Leaf)  # _node checked its level
                keys = child.keys
                if edge is not None and (keys[-1] >= edge if reverse else keys[0] <= edge):
                    raise CorruptionError(
                        f"{self.where} page {inner.children[i]}: leaf keys out of order with "
                        "the previous leaf's"
                    )
                edge = keys[0] if reverse else keys[-1]
                yield child
            else:
                assert isinstance(child, Internal)  # _node checked its level
                stack.append((child, start(child), level - 1))

    def iterate(
        self, lo: bytes | None, hi: bytes | None, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        """``(key, value)`` for keys in ``[lo, hi)``, ascending (or descending), lazily."""
        for items in self.iterate_leaves(lo, hi, reverse=reverse):
            yield from items

    def iterate_leaves(
        self, lo: bytes | None, hi: bytes | None, *, reverse: bool = False
    ) -> Iterator[list[tuple[bytes, bytes]]]:
        """:meth:`iterate` a leaf at a time: one list of ``(key, value)`` per leaf, lazily."""
        for leaf in self._leaves(lo, hi, reverse):
            keys = leaf.keys
            a = 0 if lo is None else bisect_left(keys, lo)
            b = len(keys) if hi is None else bisect_left(keys, hi)
            values = leaf.values
            if not leaf.big:
                if reverse:
                    yield list(zip(reversed(keys[a:b]), reversed(values[a:b]), strict=True))  # type: ignore[arg-type]
                else:
                    yield list(zip(keys[a:b], values[a:b], strict=True))  # type: ignore[arg-type]
            else:
                read = self.read_overflow
                yield [
                    (keys[i], value if type(value := values[i]) is bytes else read(value))  # type: ignore[arg-type]
                    for i in (range(b - 1, a - 1, -1) if reverse else range(a, b))
                ]
            if (reverse and a > 0) or (not reverse and b < len(keys)):
                return

    def iter_keys(self) -> Iterator[bytes]:
        """Every key, ascending (values are not read)."""
        for keys in self.iter_key_runs():
            yield from keys

    def iter_key_runs(self) -> Iterator[Sequence[bytes]]:
        """Every key, ascending, a leaf's keys at a time (values are not read)."""
        for leaf in self._leaves(None, None, False):
            yield leaf.keys

    # -- writes ------------------------------------------------------------------------------

    def apply(self, changes: Sequence[Change], *, clear: bool, flushed_seq: int) -> int:
        """Merge sorted ``changes`` (``None``: delete) into the tree and commit durably.

        With ``clear`` the old contents are dropped first. Returns the new key count.
        Fsyncs (through :meth:`Pager.commit`).
        """
        return self.apply_columns(
            [k for k, _ in changes], [v for _, v in changes], clear=clear, flushed_seq=flushed_seq
        )

    def apply_columns(
        self, keys: list[bytes], values: list[bytes | None], *, clear: bool, flushed_seq: int
    ) -> int:
        """:meth:`apply` with the changes as two parallel lists (sorted, unique keys): no
        tuple per entry, which keeps a large flush from feeding the garbage collector.

        All or nothing in memory too: if anything raises part-way (an I/O error, damage found
        in an old page, an interrupt), the pager forgets the half-built transaction and the
        tree stays the committed one."""
        self.pager.begin()
        try:
            return self._apply(keys, values, clear=clear, flushed_seq=flushed_seq)
        except BaseException:
            self.pager.abort()
            self.rows = {}
            self.rows_bytes = 0
            raise
        finally:
            self._ckeys = []
            self._cvalues = []

    def _apply(
        self, keys: list[bytes], values: list[bytes | None], *, clear: bool, flushed_seq: int
    ) -> int:
        pager = self.pager
        meta = pager.meta
        self._count = 0 if clear else meta.key_count
        height = 0 if clear else meta.height
        if clear:
            # Every page but the meta pages is unused by the new tree: no need to read the old
            # one (which may be damaged: clearing is a way out).
            pager.release_all()
            self.rows = {}
            self.rows_bytes = 0
        if height == 0:
            if None in values:
                live = [(k, v) for k, v in zip(keys, values, strict=True) if v is not None]
                keys = [k for k, _ in live]
                values = [v for _, v in live]
            refs = self._write_leaves(keys, values, False)  # type: ignore[arg-type]
            self._count = len(keys)
            level = 0
        else:
            self._ckeys = keys
            self._cvalues = values
            refs = self._update(meta.root, meta.root_crc, height - 1, 0, len(keys), b"")
            level = height - 1
        # The row cache may hold the old value of any changed key (loading the old leaves above
        # put theirs there): every changed key goes.
        self._drop_rows(keys)
        while len(refs) > 1:
            refs = self._write_internals(refs, level + 1)
            level += 1
        if not refs:
            root, root_crc, new_height = 0, 0, 0
        else:
            _, root, root_crc = refs[0]
            new_height = level + 1
            while new_height > 1:
                top = self._node(root, root_crc, new_height - 1)
                assert isinstance(top, Internal)
                if len(top.children) != 1:
                    break
                pager.release(root)
                root, root_crc = top.children[0], top.crcs[0]
                new_height -= 1
        pager.commit(
            root=root,
            root_crc=root_crc,
            height=new_height,
            flushed_seq=flushed_seq,
            key_count=self._count,
        )
        return self._count

    _ckeys: list[bytes] = []  # noqa: RUF012
    _cvalues: list[bytes | None] = []  # noqa: RUF012
    _count = 0

    def _update(
        self, page_no: int, crc: int, level: int, lo: int, hi: int, lower: bytes
    ) -> list[Ref]:
        node = self._node(page_no, crc, level)
        self.pager.release(page_no)
        if level == 0:
            assert isinstance(node, Leaf)
            refs = self._write_leaves(*self._merge(node, lo, hi))
        else:
            assert isinstance(node, Internal)
            keys, children, crcs = node.keys, node.children, node.crcs
            ckeys = self._ckeys
            out: list[Ref] = []
            run: _Run | None = None
            j = lo
            for i in range(len(children)):
                end = bisect_left(ckeys, keys[i], j, hi) if i < len(keys) else hi
                child_lower = lower if i == 0 else keys[i - 1]
                if end <= j:
                    if run is not None:
                        out.extend(run.write(self))
                        run = None
                    out.append((child_lower, children[i], crcs[i]))
                elif level > 1:
                    out.extend(self._update(children[i], crcs[i], level - 1, j, end, child_lower))
                else:
                    # Neighbouring leaves that change are merged as one run and cut into
                    # full leaves: a copy-on-write rewrite gains nothing from slack, and
                    # splitting each leaf on its own would leave them half full.
                    leaf = self._node(children[i], crcs[i], 0)
                    assert isinstance(leaf, Leaf)
                    self.pager.release(children[i])
                    merged = self._merge(leaf, j, end)
                    if run is None:
                        run = _Run(child_lower, *merged)
                    else:
                        run.extend(*merged)
                j = end
            if run is not None:
                out.extend(run.write(self))
            refs = self._write_internals(out, level) if out else []
        if refs:
            refs[0] = (lower, refs[0][1], refs[0][2])
        return refs

    def _merge(
        self, leaf: Leaf, lo: int, hi: int
    ) -> tuple[list[bytes], list[bytes | Overflow], bool]:
        """A leaf's entries with ``changes[lo:hi]`` applied: keys, values, and whether any value
        may be an :class:`Overflow`. Overflow chains of replaced values are released."""
        ckeys = self._ckeys[lo:hi]
        cvalues = self._cvalues[lo:hi]
        merged: dict[bytes, bytes | Overflow | None] = dict(
            zip(leaf.keys, leaf.values, strict=True)
        )
        if leaf.big:
            for key in ckeys:
                old = merged.get(key)
                if type(old) is Overflow:
                    self._release_overflow(old)
        before = len(merged)
        merged.update(zip(ckeys, cvalues, strict=True))
        if None in cvalues:
            for key, value in zip(ckeys, cvalues, strict=True):
                if value is None:
                    del merged[key]
        self._count += len(merged) - before
        keys = sorted(merged)
        values: list[bytes | Overflow] = list(map(merged.__getitem__, keys))  # type: ignore[arg-type]
        return keys, values, leaf.big

    def _write_overflow(self, value: bytes) -> Overflow:
        chunk = self.usable
        pieces = [value[i : i + chunk] for i in range(0, len(value), chunk)]
        pager = self.pager
        pages = [pager.allocate() for _ in pieces]
        nxt, nxt_crc = 0, 0
        for page_no, piece in zip(reversed(pages), reversed(pieces), strict=True):
            body = _HEADER.pack(0, fmt.PAGE_OVERFLOW, 0, len(piece), nxt, nxt_crc)[4:] + piece
            nxt, nxt_crc = page_no, pager.write_page(page_no, body)
        return Overflow(nxt, nxt_crc, len(value))

    def _release_overflow(self, ref: Overflow) -> None:
        page_no, crc = ref.page, ref.crc
        seen: set[int] = set()
        for _ in range(self._chain_pages(ref)):
            if page_no in seen:
                raise CorruptionError(f"{self.where} page {page_no}: overflow chain loops")
            seen.add(page_no)
            page = self.pager.read_page(page_no, crc, "overflow")
            _, ptype, _, _, nxt, nxt_crc = _HEADER.unpack_from(page)
            if ptype != fmt.PAGE_OVERFLOW:
                raise CorruptionError(f"{self.where} page {page_no}: broken overflow chain")
            self.pager.release(page_no)
            page_no, crc = nxt, nxt_crc

    @staticmethod
    def _split(cum: list[int], capacity: int) -> list[tuple[int, int]]:
        """Split items into runs of balanced size, each within ``capacity`` (unless one item
        alone is larger). ``cum[i]`` is the total size of the first ``i`` items."""
        n = len(cum) - 1
        total = cum[n]
        pages = max(1, -(-total // capacity))
        groups: list[tuple[int, int]] = []
        start = 0
        while start < n:
            left = pages - len(groups)
            if left <= 1:
                end = n
            else:
                end = bisect_left(cum, cum[start] + (total - cum[start]) / left, start + 1, n)
            limit = bisect_right(cum, cum[start] + capacity, start + 1, n + 1) - 1
            end = max(min(end, limit), start + 1)
            groups.append((start, end))
            start = end
        return groups

    def _write_leaves(
        self, keys: list[bytes], values: list[bytes | Overflow], big: bool
    ) -> list[Ref]:
        """Write sorted entries as balanced leaves; ``big``: some values may be overflows."""
        if not keys:
            return []
        max_inline = self.max_inline
        flags: bytearray | None = None
        raw: list[bytes] = values  # type: ignore[assignment]
        if big or max(map(len, raw)) > max_inline:
            flags = bytearray(len(values))
            values = list(values)
            raw = []
            for i, value in enumerate(values):
                stored = value
                if type(value) is bytes and len(value) > max_inline:
                    stored = values[i] = self._write_overflow(value)
                if type(stored) is Overflow:
                    flags[i] = fmt.VALUE_OVERFLOW
                    raw.append(_REF.pack(*stored))
                else:
                    raw.append(stored)  # type: ignore[arg-type]
        klens = list(map(len, keys))
        rlens = list(map(len, raw))
        cum = list(accumulate(map((5).__add__, map(add, klens, rlens)), initial=0))
        cached_keys = tuple(keys)  # see Leaf
        cached_values = tuple(values)
        pager = self.pager
        header = _HEADER.pack
        refs: list[Ref] = []
        for a, b in self._split(cum, self.usable):
            n = b - a
            group_keys = cached_keys[a:b]
            group_flags = bytes(n) if flags is None else bytes(flags[a:b])
            body = b"".join(
                (
                    header(0, fmt.PAGE_LEAF, 0, n, 0, 0)[4:],
                    group_flags,
                    fmt.u16_array(2 * n).pack(*accumulate(klens[a:b]), *accumulate(rlens[a:b])),
                    *group_keys,
                    *raw[a:b],
                )
            )
            page_no = pager.allocate()
            crc = pager.write_page(page_no, body)
            overflows = 0 if flags is None else group_flags.count(fmt.VALUE_OVERFLOW)
            cost = leaf_cost(n, _HSIZE + cum[b] - cum[a], overflows)
            pager.remember(page_no, Leaf(group_keys, cached_values[a:b], overflows > 0, cost))
            refs.append((group_keys[0], page_no, crc))
        return refs

    def _write_internals(self, refs: list[Ref], level: int) -> list[Ref]:
        cum = list(accumulate((10 + len(k) for k, _, _ in refs), initial=0))
        pager = self.pager
        out: list[Ref] = []
        for a, b in self._split(cum, self.usable - 8):
            group = refs[a:b]
            keys = [k for k, _, _ in group[1:]]
            children = [p for _, p, _ in group]
            crcs = [c for _, _, c in group]
            n = len(keys)
            ends = list(accumulate(map(len, keys)))
            body = b"".join(
                (
                    _HEADER.pack(0, fmt.PAGE_INTERNAL, level, n, 0, 0)[4:],
                    b"".join(_CHILD.pack(p, c) for p, c in zip(children, crcs, strict=True)),
                    fmt.u16_array(n).pack(*ends),
                    *keys,
                )
            )
            page_no = pager.allocate()
            crc = pager.write_page(page_no, body)
            cost = internal_cost(n, ends[-1] if n else 0)
            pager.remember(page_no, Internal(keys, children, crcs, level, cost))
            out.append((group[0][0], page_no, crc))
        return out

    # -- verification ------------------------------------------------------------------------

    def check(self) -> TreeReport:
        """Verify every page from disk: checksums, levels, key order and bounds, the key count,
        and that every page is exactly one of meta, tree, overflow, free list or free; and that
        the row cache agrees with the tree.

        Raises :class:`CorruptionError` naming the page; returns the tree's shape.
        """
        pager = self.pager
        meta = pager.meta
        report = TreeReport(height=meta.height, page_count=meta.page_count)
        report.nodes_per_level = [0] * meta.height
        report.bytes_used_per_level = [0] * meta.height
        owner: dict[int, str] = {0: "meta", 1: "meta"}

        def claim(page_no: int, what: str) -> None:
            if not META_PAGES <= page_no < meta.page_count:
                raise CorruptionError(
                    f"{self.where}: {what} page number {page_no} is outside the file "
                    f"(pages in use: {meta.page_count})"
                )
            if page_no in owner:
                raise CorruptionError(
                    f"{self.where} page {page_no} is used as {what} and as {owner[page_no]}"
                )
            owner[page_no] = what

        def walk(page_no: int, crc: int, level: int, low: bytes | None, high: bytes | None) -> None:
            claim(page_no, "tree node")
            page = pager.read_page(page_no, crc, "tree node")
            node = self._decode(page_no, page, level)
            depth = meta.height - 1 - level
            report.nodes_per_level[depth] += 1
            if node.keys and (
                (low is not None and node.keys[0] < low)
                or (high is not None and node.keys[-1] >= high)
            ):
                raise CorruptionError(
                    f"{self.where} page {page_no}: keys outside the parent's bounds"
                )
            if isinstance(node, Leaf):
                report.keys += len(node.keys)
                used = 5 * len(node.keys) + sum(map(len, node.keys))
                for value in node.values:
                    if type(value) is Overflow:
                        used += _REF.size
                        self._claim_overflow(value, claim)
                        report.overflow_pages += -(-value.length // self.usable)
                    else:
                        used += len(value)
                report.bytes_used_per_level[depth] += used
                return
            report.bytes_used_per_level[depth] += 8 + sum(10 + len(k) for k in node.keys)
            bounds = [low, *node.keys, high]
            for i, (child, child_crc) in enumerate(zip(node.children, node.crcs, strict=True)):
                walk(child, child_crc, level - 1, bounds[i], bounds[i + 1])

        if meta.height:
            walk(meta.root, meta.root_crc, meta.height - 1, None, None)
        if report.keys != meta.key_count:
            raise CorruptionError(
                f"{self.where}: tree holds {report.keys} keys, meta page says {meta.key_count}"
            )
        for page_no in pager.freelist_pages:
            claim(page_no, "free-list page")
        for page_no in pager.free:
            claim(page_no, "free page")
        report.free_pages = len(pager.free)
        for key, value in list(self.rows.items()):
            leaf = self._leaf_for(key)
            i = -1 if leaf is None else bisect_left(leaf.keys, key)
            if (
                leaf is None
                or i >= len(leaf.keys)
                or leaf.keys[i] != key
                or leaf.values[i] != value
            ):
                raise InternalError(f"{self.where}: the row cache disagrees with the tree")
        # Every claim lies in [META_PAGES, page_count), once: what is missing is a count, and its
        # first page is the first gap among the claimed ones (O(pages used), not O(page_count):
        # a hostile page_count may describe a huge sparse file).
        missing = meta.page_count - len(owner)
        if missing:
            first = META_PAGES
            for page_no in sorted(p for p in owner if p >= META_PAGES):
                if page_no != first:
                    break
                first += 1
            raise CorruptionError(
                f"{self.where}: {missing} pages are neither used nor free (first: {first})"
            )
        return report

    def _claim_overflow(self, ref: Overflow, claim: Callable[[int, str], None]) -> None:
        page_no, crc = ref.page, ref.crc
        for _ in range(self._chain_pages(ref)):
            claim(page_no, "overflow page")  # (a page met twice is damage)
            page = self.pager.read_page(page_no, crc, "overflow")
            _, _, _, _, page_no, crc = _HEADER.unpack_from(page)
        self.read_overflow(ref)

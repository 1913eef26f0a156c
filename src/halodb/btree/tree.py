"""One partition's on-disk B+ tree of encoded keys and values, and its reads; knows nothing of
logs or memtables.

Point lookups are O(height) with a binary search per node; decoded nodes are cached by the
pager, and the rows of leaves read lately by the tree's row cache (:class:`RowCache`). Because
every reference to a page carries that page's checksum, a stale or misplaced page is detected on
read. Writes and the check have modules of their own: :meth:`BTree.apply_columns` makes a
:class:`TreeWriter` for each flush, :meth:`BTree.check` runs :func:`check_tree`. The owner
serialises every call; the tree is not thread-safe.

Both caches are bounded in bytes of memory, not in pages or entries (see :mod:`.node` for what a
node is charged, :mod:`.rows` for a row).
"""

from __future__ import annotations

import sys
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from halodb import format as fmt
from halodb.btree.check import check_tree
from halodb.btree.compact import Compaction
from halodb.btree.node import (
    HEADER_SIZE,
    Internal,
    Leaf,
    Overflow,
    decode_internal,
    decode_leaf,
    decode_overflow,
    limits,
)
from halodb.btree.rows import RowCache
from halodb.btree.writer import TreeWriter
from halodb.errors import CorruptionError
from halodb.pager import META_PAGES, Meta, Pager
from halodb.reports import TreeReport

Change = tuple[bytes, bytes | None]
"""A change to the tree: a key and its new value (``None``: delete)."""
Fetch = Callable[[int, int, int], "Leaf | Internal"]
"""How a walk gets a node: :meth:`BTree.node`, or :meth:`BTree._walk_node` for long walks."""

WALK_FILL = 1024
"""A :meth:`BTree.head` of this many keys or more, and every :meth:`BTree.leaves` walk, keep a
node read from disk in the cache only if it fits in what is left (:meth:`BTree._walk_node`);
shorter reads make room for theirs, as lookups do."""


class BTree(RowCache):
    """The B+ tree of one partition, over its :class:`Pager`."""

    def __init__(self, pager: Pager) -> None:
        super().__init__(pager.cache_budget)  # the same budget as the node cache's
        self.pager = pager
        self.page_size = pager.page_size
        self.max_key, self.max_inline = limits(pager.page_size)
        self.usable = pager.page_size - HEADER_SIZE
        self.where = pager.path

    # -- nodes -------------------------------------------------------------------------------

    def node(self, page_no: int, crc: int, level: int) -> Leaf | Internal:
        """The node in ``page_no`` where level ``level`` belongs, from the cache or the disk.

        A page reached at two levels (or a cycle, a page among its own descendants) is
        damage: the cache holds nodes by page number only, so a cached node's level is
        compared with the level it is wanted at, as the decoders do for a page read."""
        node: Leaf | Internal | None = self.pager.cache.get(page_no)
        if node is None:
            return self._load(page_no, crc, level)  # type: ignore[no-any-return]
        if node.level != level:
            raise self._misplaced(page_no, node.level, level)
        self.pager.stats.cache_hits += 1
        return node

    def _walk_node(self, page_no: int, crc: int, level: int) -> Leaf | Internal:
        """:meth:`node` for a walk over many leaves (a scan): a node read from disk is kept in
        the node cache only if it fits in what the cache has left, and a leaf's rows are not
        kept. Else a scan over more leaves than the cache holds pushes out half the cache each
        time it fills, and a second scan reads all of it again."""
        pager = self.pager
        if page_no in pager.cache:
            return self.node(page_no, crc, level)
        node = self._read(page_no, crc, level)
        if pager.cache_bytes + node.cost <= pager.cache_budget:
            pager.remember(page_no, node)
        return node

    def _misplaced(self, page_no: int, found: int, level: int) -> CorruptionError:
        return CorruptionError(
            f"{self.where} page {page_no}: node of level {found} where level {level} belongs "
            "(a page reached at two levels, or a cycle)"
        )

    def _load(self, page_no: int, crc: int, level: int) -> Any:
        node = self._read(page_no, crc, level)
        self.pager.remember(page_no, node)
        if isinstance(node, Leaf):
            self._remember_rows(node.keys, node.values, node.big)
        return node

    def _read(self, page_no: int, crc: int, level: int) -> Leaf | Internal:
        """The node in ``page_no`` read from disk and decoded (a cache miss, counted)."""
        pager = self.pager
        pager.stats.cache_misses += 1
        page = pager.read_page(page_no, crc, "tree node")
        if level:  # (decode(), inlined: the path of every cache miss)
            return decode_internal(self.where, page_no, page, level)
        return decode_leaf(self.where, page_no, page)

    # -- reads -------------------------------------------------------------------------------

    def leaf_for(self, key: bytes) -> Leaf | None:
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
        # at the wrong level (the decoders), or to a real leaf; ``check()`` reports it in every
        # case (``node``, used everywhere else, compares every level).
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
        leaf = self.leaf_for(key)
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
        leaf = self.leaf_for(key)
        if leaf is None:
            return False
        keys = leaf.keys
        i = bisect_left(keys, key)
        return i < len(keys) and keys[i] == key

    # -- overflow chains ---------------------------------------------------------------------

    def chain_pages(self, ref: Overflow) -> int:
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
        expected_pages = self.chain_pages(ref)
        parts = []
        seen: set[int] = set()
        page_no, crc = ref.page, ref.crc
        for i in range(expected_pages):
            if page_no in seen:
                raise CorruptionError(f"{self.where} page {page_no}: overflow chain loops")
            seen.add(page_no)
            page = self.pager.read_page(page_no, crc, "overflow")
            _, ptype, _, n, nxt, nxt_crc = decode_overflow(page)
            last = i == expected_pages - 1
            if ptype != fmt.PAGE_OVERFLOW or n > chunk or (last and nxt) or (not last and not nxt):
                raise CorruptionError(f"{self.where} page {page_no}: broken overflow chain")
            parts.append(page[HEADER_SIZE : HEADER_SIZE + n])
            page_no, crc = nxt, nxt_crc
        value = b"".join(parts)
        if len(value) != ref.length:
            raise CorruptionError(
                f"{self.where}: overflow value is {len(value)} bytes, not {ref.length}"
            )
        return value

    def release_overflow(self, ref: Overflow) -> None:
        """Release the pages of an overflow chain (in a flush: its value was replaced)."""
        for page_no in self.overflow_pages(ref):
            self.pager.release(page_no)

    def overflow_pages(self, ref: Overflow) -> list[int]:
        """The page numbers of an overflow chain, in order (each page read and verified)."""
        page_no, crc = ref.page, ref.crc
        pages: list[int] = []
        seen: set[int] = set()
        for _ in range(self.chain_pages(ref)):
            if page_no in seen:
                raise CorruptionError(f"{self.where} page {page_no}: overflow chain loops")
            seen.add(page_no)
            page = self.pager.read_page(page_no, crc, "overflow")
            _, ptype, _, _, nxt, nxt_crc = decode_overflow(page)
            if ptype != fmt.PAGE_OVERFLOW:
                raise CorruptionError(f"{self.where} page {page_no}: broken overflow chain")
            pages.append(page_no)
            page_no, crc = nxt, nxt_crc
        return pages

    # -- ordered reads -----------------------------------------------------------------------

    def leaves(self, lo: bytes | None, hi: bytes | None, reverse: bool) -> Iterator[Leaf]:
        """The leaves that may hold keys in ``[lo, hi)``, in order (reversed: backwards), from
        the first one on to the end of the tree (the caller stops).

        Each leaf's keys must follow the previous leaf's: a subtree reached twice (which
        could otherwise make the walk visit a page an exponential number of times) is damage,
        met at its second visit."""
        meta = self.pager.meta  # (a merge may commit meanwhile: the walk stays on this tree)
        if not meta.height:
            return
        path: list[list[Any]] = []  # [internal node, child index], from the root down
        fetch = self._walk_node
        leaf: Leaf | None = self._first_leaf(fetch, meta, lo, hi, reverse, path)
        edge: bytes | None = None  # the previous leaf's last key (reversed: first)
        while leaf is not None:
            edge = self._follows(leaf.keys, edge, reverse, path)
            yield leaf
            leaf = self._next_leaf(fetch, meta.height, path, reverse)

    def _follows(
        self, keys: tuple[bytes, ...], edge: bytes | None, reverse: bool, path: list[list[Any]]
    ) -> bytes:
        """Check that a leaf's ``keys`` follow ``edge``, the last key of the leaf before
        (reversed: the first; ``None``: no leaf before); returns this leaf's. ``path`` leads to
        the leaf (for the page number in the error)."""
        if edge is not None and (keys[-1] >= edge if reverse else keys[0] <= edge):
            raise CorruptionError(
                f"{self.where} page {path[-1][0].children[path[-1][1]]}: leaf keys out of "
                "order with the previous leaf's"
            )
        return keys[0] if reverse else keys[-1]

    def head(
        self, lo: bytes | None, hi: bytes | None, reverse: bool, limit: int
    ) -> tuple[list[bytes], list[bytes]]:
        """The first ``limit`` keys in ``[lo, hi)`` (``reverse``: the last ones, descending)
        and their values (overflow values read), as two lists.

        Each leaf's part is taken as one slice, and the walk is a loop over a path of
        internal nodes (:meth:`_next_leaf`), not a generator: a range scan of a hundred items
        spends most of its time here. Each leaf's keys must follow the previous leaf's
        (:meth:`_follows`)."""
        keys: list[bytes] = []
        values: list[bytes] = []
        meta = self.pager.meta  # (a merge may commit meanwhile: the walk stays on this tree)
        if not meta.height or limit <= 0:
            return keys, values
        path: list[list[Any]] = []  # [internal node, child index], from the root down
        fetch = self.node if limit < WALK_FILL else self._walk_node
        leaf: Leaf | None = self._first_leaf(fetch, meta, lo, hi, reverse, path)
        edge: bytes | None = None  # the previous leaf's last key (reversed: first)
        while leaf is not None:
            leaf_keys = leaf.keys
            edge = self._follows(leaf_keys, edge, reverse, path)
            a = 0 if lo is None else bisect_left(leaf_keys, lo)
            b = len(leaf_keys) if hi is None else bisect_left(leaf_keys, hi)
            want = limit - len(keys)
            if reverse:
                cut = max(a, b - want)
                part = leaf.values[cut:b][::-1]
                keys += leaf_keys[cut:b][::-1]
            else:
                cut = min(b, a + want)
                part = leaf.values[a:cut]
                keys += leaf_keys[a:cut]
            if leaf.big:
                read = self.read_overflow
                values += [v if type(v) is bytes else read(v) for v in part]  # type: ignore[arg-type]
            else:
                values += part  # type: ignore[arg-type]
            if len(keys) >= limit or (a > 0 if reverse else b < len(leaf_keys)):
                break
            leaf = self._next_leaf(fetch, meta.height, path, reverse)
        return keys, values

    def _first_leaf(
        self,
        fetch: Fetch,
        meta: Meta,
        lo: bytes | None,
        hi: bytes | None,
        reverse: bool,
        path: list[list[Any]],
    ) -> Leaf:
        """The leaf of the tree ``meta`` describes where :meth:`head` starts, the internal
        nodes above it added to ``path`` with the index of the child taken."""
        level = meta.height - 1
        node: Any = fetch(meta.root, meta.root_crc, level)
        while level:
            if reverse:
                i = len(node.keys) if hi is None else bisect_left(node.keys, hi)
            else:
                i = 0 if lo is None else bisect_right(node.keys, lo)
            path.append([node, i])
            level -= 1
            node = fetch(node.children[i], node.crcs[i], level)
        return node  # type: ignore[no-any-return]

    def _next_leaf(
        self, fetch: Fetch, height: int, path: list[list[Any]], reverse: bool
    ) -> Leaf | None:
        """The leaf after the one ``path`` leads to (reversed: before it), ``path`` moved to
        it: the next child of the lowest node that has one, then its first children down
        (reversed: last); ``None`` at the end of the tree. ``height``: the tree's when the
        walk started (a merge that commits meanwhile leaves that tree's pages as they are,
        until the partition's lock, which the reader holds, lets it go)."""
        step = -1 if reverse else 1
        while path:
            entry = path[-1]
            entry[1] += step
            if 0 <= entry[1] < len(entry[0].children):
                break
            path.pop()
        else:
            return None
        level = height - len(path)  # the level of the node at path[-1]
        inner, i = path[-1]
        while True:
            level -= 1
            node: Any = fetch(inner.children[i], inner.crcs[i], level)
            if not level:
                return node  # type: ignore[no-any-return]
            inner = node
            i = len(inner.children) - 1 if reverse else 0
            path.append([inner, i])

    def iterate(
        self, lo: bytes | None, hi: bytes | None, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        """``(key, value)`` for keys in ``[lo, hi)``, ascending (or descending): every one,
        read at once (:meth:`head` without a limit; scans of the store read chunks)."""
        return zip(*self.head(lo, hi, reverse, sys.maxsize), strict=True)

    def iter_keys(self) -> Iterator[bytes]:
        """Every key, ascending (values are not read)."""
        for keys in self.iter_key_runs():
            yield from keys

    def iter_key_runs(self) -> Iterator[Sequence[bytes]]:
        """Every key, ascending, a leaf's keys at a time (values are not read)."""
        for leaf in self.leaves(None, None, False):
            yield leaf.keys

    # -- writes and the check ----------------------------------------------------------------

    def apply(self, changes: Sequence[Change], *, clear: bool, flushed_seq: int) -> int:
        """Merge sorted ``changes`` (``None``: delete) into the tree and commit durably.

        With ``clear`` the old contents are dropped first. Returns the new key count.
        Fsyncs (through :meth:`Pager.commit`).
        """
        return self.apply_columns(
            [k for k, _ in changes], [v for _, v in changes], clear=clear, flushed_seq=flushed_seq
        )

    def apply_columns(
        self,
        keys: list[bytes],
        values: list[bytes | None],
        *,
        clear: bool,
        flushed_seq: int,
        stop: Callable[[], bool] | None = None,
    ) -> int:
        """:meth:`apply` with the changes as two parallel lists (sorted, unique keys), by a
        :class:`TreeWriter` of its own (see :meth:`TreeWriter.apply`: all or nothing).
        ``stop``: asked as the merge goes; ``True`` gives it up (:class:`MergeStopped`)."""
        return TreeWriter(self, keys, values, stop).apply(clear=clear, flushed_seq=flushed_seq)

    def compact_step(self, start: bytes, budget: int) -> Compaction:
        """One compaction step from key ``start``, reading at most ``budget`` leaves, committed
        durably (see :class:`Compaction`); returns it, for where the next step starts
        (``resume``) and the keys whose rows went stale (``moved``)."""
        step = Compaction(self, start, budget)
        step.run()
        return step

    def check(self) -> TreeReport:
        """Verify every page from disk: checksums, levels, key order and bounds, the key count,
        and that every page is exactly one of meta, tree, overflow, free list or free; and that
        the row cache agrees with the tree.

        Raises :class:`CorruptionError` naming the page; returns the tree's shape.
        """
        return check_tree(self)

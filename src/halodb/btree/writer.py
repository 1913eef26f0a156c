"""One flush of a B+ tree: the copy-on-write merge of a sorted batch of changes into new pages,
committed through the pager; it must not know where the changes come from (memtables, logs), nor
how the tree is read: it uses only what its tree gives it (:class:`Tree`).

The tree is never updated in place: a :class:`TreeWriter` merges the changes into copies of the
touched leaves and of their ancestors, releases the pages they replace, and commits. One writer
per flush holds the flush's state (the changes, the key count as it changes); the tree it
writes holds none of it.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable
from itertools import accumulate
from operator import add
from typing import Protocol

from halodb.btree.node import (
    Internal,
    Leaf,
    Overflow,
    decode_leaf,
    encode_internal,
    encode_leaf,
    encode_overflow,
    encode_values,
    internal_cost,
)
from halodb.pager import Pager

Ref = tuple[bytes, int, int]
"""A written node: a lower bound of its keys, its page number, its checksum."""

_UNSEALED = bytes(4)
"""A page's checksum field (the first of ``PAGE_HEADER``), before the body an encoder returns:
the decoders read whole pages and do not look at it (the pager checks it on reads)."""


class Tree(Protocol):
    """What a flush uses of the tree it writes (``BTree``, which makes its writers)."""

    pager: Pager
    usable: int
    max_inline: int

    def node(self, page_no: int, crc: int, level: int) -> Leaf | Internal: ...

    def release_overflow(self, ref: Overflow) -> None: ...

    def read_overflow(self, ref: Overflow) -> bytes: ...

    def overflow_pages(self, ref: Overflow) -> list[int]: ...

    def drop_rows(self, keys: list[bytes]) -> None: ...

    def clear_rows(self) -> None: ...


class MergeStopped(Exception):
    """A flush told to stop (by its ``stop``) gave up part-way; nothing of it was written."""


class Run:
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


def split(cum: list[int], capacity: int) -> list[tuple[int, int]]:
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


class TreeWriter:
    """One flush of ``tree``: sorted, unique ``keys`` and their new ``values`` (``None``:
    delete), as two parallel lists (no tuple per entry, which keeps a large flush from feeding
    the garbage collector). Used once, by :meth:`apply`."""

    __slots__ = (
        "count",
        "keys",
        "max_inline",
        "node",
        "pager",
        "release_overflow",
        "stop",
        "tree",
        "usable",
        "values",
    )

    def __init__(
        self,
        tree: Tree,
        keys: list[bytes],
        values: list[bytes | None],
        stop: Callable[[], bool] | None = None,
    ) -> None:
        self.tree = tree
        self.stop = stop
        """Asked before each subtree is rewritten: ``True`` gives the flush up
        (:class:`MergeStopped`), before its commit."""
        self.pager = tree.pager
        self.usable = tree.usable
        self.max_inline = tree.max_inline
        self.node = tree.node
        """The tree's node fetch, through its node cache (loading a leaf fills its row cache)."""
        self.release_overflow = tree.release_overflow
        self.keys = keys
        self.values = values
        self.count = 0
        """The tree's key count, as the merge changes it."""

    def apply(self, *, clear: bool, flushed_seq: int) -> int:
        """Merge the changes into the tree (``clear``: into an empty tree) and commit durably.
        Returns the new key count. Fsyncs (through :meth:`Pager.commit`).

        All or nothing in memory too: if anything raises part-way (an I/O error, damage found
        in an old page, an interrupt), the pager forgets the half-built transaction and the
        tree stays the committed one (its row cache emptied)."""
        self.pager.begin()
        try:
            return self._apply(clear, flushed_seq)
        except BaseException:
            self.pager.abort()
            self.tree.clear_rows()
            raise

    def _apply(self, clear: bool, flushed_seq: int) -> int:
        pager = self.pager
        meta = pager.meta
        keys, values = self.keys, self.values
        self.count = 0 if clear else meta.key_count
        height = 0 if clear else meta.height
        if clear:
            # Every page but the meta pages is unused by the new tree: no need to read the old
            # one (which may be damaged: clearing is a way out).
            pager.release_all()
            self.tree.clear_rows()
        if height == 0:
            if None in values:
                live = [(k, v) for k, v in zip(keys, values, strict=True) if v is not None]
                keys = [k for k, _ in live]
                values = [v for _, v in live]
            refs = self._write_leaves(keys, values, False)  # type: ignore[arg-type]
            self.count = len(keys)
            level = 0
        else:
            refs = self._update(meta.root, meta.root_crc, height - 1, 0, len(keys), b"")
            level = height - 1
        # The row cache may hold the old value of any changed key (loading the old leaves above
        # put theirs there): every changed key goes.
        self.tree.drop_rows(keys)
        return self._finish(refs, level, flushed_seq)

    def _finish(self, refs: list[Ref], level: int, flushed_seq: int) -> int:
        """Make the written nodes of ``level`` (each a ref) the new tree: internal levels above
        them up to one root, less a root left with one child, and commit. Returns the key
        count."""
        pager = self.pager
        while len(refs) > 1:
            refs = self._write_internals(refs, level + 1)
            level += 1
        if not refs:
            root, root_crc, new_height = 0, 0, 0
        else:
            _, root, root_crc = refs[0]
            new_height = level + 1
            while new_height > 1:
                top = self.node(root, root_crc, new_height - 1)
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
            key_count=self.count,
        )
        return self.count

    def _go_on(self) -> None:
        """Raise :class:`MergeStopped` if the flush is told to stop."""
        if self.stop is not None and self.stop():
            raise MergeStopped

    def _update(
        self, page_no: int, crc: int, level: int, lo: int, hi: int, lower: bytes
    ) -> list[Ref]:
        """The subtree in ``page_no`` with ``changes[lo:hi]`` merged, written: its new nodes
        (the first one's lower bound ``lower``)."""
        self._go_on()
        node = self.node(page_no, crc, level)
        self.pager.release(page_no)
        if level == 0:
            assert isinstance(node, Leaf)
            refs = self._write_leaves(*self._merge(node, lo, hi))
        else:
            assert isinstance(node, Internal)
            keys, children, crcs = node.keys, node.children, node.crcs
            ckeys = self.keys
            out: list[Ref] = []
            run: Run | None = None
            j = lo
            for i in range(len(children)):
                end = bisect_left(ckeys, keys[i], j, hi) if i < len(keys) else hi
                child_lower = lower if i == 0 else keys[i - 1]
                if end <= j:
                    if run is not None:
                        out.extend(self._write_run(run))
                        run = None
                    out.append((child_lower, children[i], crcs[i]))
                elif level > 1:
                    out.extend(self._update(children[i], crcs[i], level - 1, j, end, child_lower))
                else:
                    # Neighbouring leaves that change are merged as one run and cut into
                    # full leaves: a copy-on-write rewrite gains nothing from slack, and
                    # splitting each leaf on its own would leave them half full.
                    self._go_on()
                    leaf = self.node(children[i], crcs[i], 0)
                    assert isinstance(leaf, Leaf)
                    self.pager.release(children[i])
                    merged = self._merge(leaf, j, end)
                    if run is None:
                        run = Run(child_lower, *merged)
                    else:
                        run.extend(*merged)
                j = end
            if run is not None:
                out.extend(self._write_run(run))
            refs = self._write_internals(out, level) if out else []
        if refs:
            refs[0] = (lower, refs[0][1], refs[0][2])
        return refs

    def _merge(
        self, leaf: Leaf, lo: int, hi: int
    ) -> tuple[list[bytes], list[bytes | Overflow], bool]:
        """A leaf's entries with ``changes[lo:hi]`` applied: keys, values, and whether any value
        may be an :class:`Overflow`. Overflow chains of replaced values are released."""
        ckeys = self.keys[lo:hi]
        cvalues = self.values[lo:hi]
        merged: dict[bytes, bytes | Overflow | None] = dict(
            zip(leaf.keys, leaf.values, strict=True)
        )
        if leaf.big:
            for key in ckeys:
                old = merged.get(key)
                if type(old) is Overflow:
                    self.release_overflow(old)
        before = len(merged)
        merged.update(zip(ckeys, cvalues, strict=True))
        if None in cvalues:
            for key, value in zip(ckeys, cvalues, strict=True):
                if value is None:
                    del merged[key]
        self.count += len(merged) - before
        keys = sorted(merged)
        values: list[bytes | Overflow] = list(map(merged.__getitem__, keys))  # type: ignore[arg-type]
        return keys, values, leaf.big

    def _write_run(self, run: Run) -> list[Ref]:
        refs = self._write_leaves(run.keys, run.values, run.big)
        if refs:
            refs[0] = (run.lower, refs[0][1], refs[0][2])
        return refs

    def _write_overflow(self, value: bytes) -> Overflow:
        chunk = self.usable
        pieces = [value[i : i + chunk] for i in range(0, len(value), chunk)]
        pager = self.pager
        pages = [pager.allocate() for _ in pieces]
        nxt, nxt_crc = 0, 0
        for page_no, piece in zip(reversed(pages), reversed(pieces), strict=True):
            nxt, nxt_crc = page_no, pager.write_page(page_no, encode_overflow(piece, nxt, nxt_crc))
        return Overflow(nxt, nxt_crc, len(value))

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
            spill = self._write_overflow
            values = [
                spill(value) if type(value) is bytes and len(value) > max_inline else value
                for value in values
            ]
            raw, flags = encode_values(values)
        klens = list(map(len, keys))
        rlens = list(map(len, raw))
        cum = list(accumulate(map((5).__add__, map(add, klens, rlens)), initial=0))
        pager = self.pager
        refs: list[Ref] = []
        for a, b in split(cum, self.usable):
            group_keys = keys[a:b]
            group_flags = bytes(b - a) if flags is None else bytes(flags[a:b])
            page_no = pager.allocate()
            body = encode_leaf(group_keys, raw[a:b], group_flags, klens[a:b], rlens[a:b])
            crc = pager.write_page(page_no, body)
            # The cache gets the page decoded, not the objects it was made of: those were made
            # one write at a time, strewn through memory, where a decoded page's lie side by
            # side. Scans of a million keys ran 2.3 times as fast over decoded pages, and
            # the next merge (which reads these leaves) a third faster.
            leaf = decode_leaf(pager.path, page_no, _UNSEALED + body)
            pager.remember(page_no, leaf)
            refs.append((leaf.keys[0], page_no, crc))
        return refs

    def _write_internals(self, refs: list[Ref], level: int) -> list[Ref]:
        cum = list(accumulate((10 + len(k) for k, _, _ in refs), initial=0))
        pager = self.pager
        out: list[Ref] = []
        for a, b in split(cum, self.usable - 8):
            group = refs[a:b]
            keys = [k for k, _, _ in group[1:]]
            children = [p for _, p, _ in group]
            crcs = [c for _, _, c in group]
            page_no = pager.allocate()
            crc = pager.write_page(page_no, encode_internal(keys, children, crcs, level))
            cost = internal_cost(len(keys), sum(map(len, keys)))
            pager.remember(page_no, Internal(keys, children, crcs, level, cost))
            out.append((group[0][0], page_no, crc))
        return out

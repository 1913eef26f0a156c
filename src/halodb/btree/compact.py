"""One step of a tree file's compaction: nodes at the end of the file move to free pages nearer
its start, and runs of underfull neighbour leaves are merged into full ones; it must not know
who asks for it, nor when (a sweep of steps: the partition and the engine).

A step is a copy-on-write transaction like a flush (:class:`TreeWriter`, whose writing it
reuses): it sweeps the leaves in key order from ``start``, reading at most about ``budget``
pages (leaves, and the overflow pages of their large values), and rewrites

- every node (leaf, internal node, overflow page) on a page at or past ``limit``, the number of
  pages the file would have without its free pages: there are as many free pages below it as
  pages in use past it, and a transaction takes the lowest free pages first (an overflow chain
  is copied a page at a time);
- the leaves it read under one parent as one run, merged and cut again into balanced full
  leaves, if that saves a tenth of them; else each run of neighbours less than three quarters
  full (or that must move) that would then fit in fewer leaves;
- the children of an internal node, if they are internal nodes that would fit in fewer;
- the ancestors of whatever it rewrote (copy-on-write).

A rewrite that would neither move a page nor save one is not made: a sweep that rewrites
nothing is the last one.

The commit then cuts the file's free end (see :meth:`Pager.commit`); pages this step stopped
using are free from the next step on, so a sweep's last pages leave at the commit after it. No
key or value changes, so the tree's key count and ``flushed_seq`` stay as they are; only the
references of moved overflow chains change (:attr:`Compaction.moved`: the row cache may hold
the old ones).
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate, chain
from operator import add

from halodb import format as fmt
from halodb.btree.node import (
    HEADER_SIZE,
    Internal,
    Leaf,
    Overflow,
    decode_overflow,
    encode_overflow,
)
from halodb.btree.writer import Ref, Run, Tree, TreeWriter, split
from halodb.errors import CorruptionError

_REF_SIZE = fmt.OVERFLOW_REF.size

Entry = tuple[int, Leaf, list[bytes | Overflow], bool]
"""A leaf a step read: its index in its parent, the leaf, its values (overflow chains that
moved, with their new references), and whether it must be rewritten (it, or a chain, moved)."""


def entry_sizes(keys: tuple[bytes, ...], values: list[bytes | Overflow]) -> list[int]:
    """Bytes each entry takes in a leaf page (what ``TreeWriter._write_leaves`` packs)."""
    vlens = [_REF_SIZE if type(v) is Overflow else len(v) for v in values]
    return list(map((5).__add__, map(add, map(len, keys), vlens)))


def pages_for(sizes: list[int], capacity: int) -> int:
    """How many nodes ``TreeWriter`` cuts entries of ``sizes`` into (``capacity`` each)."""
    return len(split(list(accumulate(sizes, initial=0)), capacity))


class Compaction(TreeWriter):
    """One compaction step of ``tree`` (see the module docstring). Used once, by :meth:`run`."""

    __slots__ = ("budget", "limit", "merged", "moved", "read", "resume", "start", "written")

    def __init__(self, tree: Tree, start: bytes, budget: int) -> None:
        super().__init__(tree, [], [])
        self.start = start
        """Leaves whose keys all lie below it were swept by earlier steps."""
        self.budget = max(1, budget)
        """Pages this step reads at most (it stops after the leaf that reaches it)."""
        self.limit = 0
        self.read = 0
        """Pages read so far: leaves, and the overflow pages of their values."""
        self.written = 0
        """Nodes and overflow pages rewritten so far."""
        self.merged = 0
        """Leaves that merging runs saved (fewer leaves than before)."""
        self.resume: bytes | None = None
        """Where the next step starts (``None``: the sweep is done)."""
        self.moved: list[bytes] = []
        """Keys whose overflow chain moved: their rows in the row cache are stale."""

    def run(self) -> bytes | None:
        """Rewrite what this step moves or merges, and commit durably (also with nothing to
        rewrite: the commit cuts the free end of the file). Returns :attr:`resume`.

        All or nothing in memory too, as :meth:`TreeWriter.apply`."""
        pager = self.pager
        pager.begin()
        try:
            self.limit = pager.next_page - len(pager.free)
            meta = pager.meta
            self.count = meta.key_count
            refs: list[Ref] | None = None
            if meta.height:
                refs = self._visit(meta.root, meta.root_crc, meta.height - 1, b"")
            if refs is None:
                refs = [(b"", meta.root, meta.root_crc)] if meta.height else []
            self._finish(refs, max(meta.height - 1, 0), meta.flushed_seq)
        except BaseException:
            pager.abort()
            self.tree.clear_rows()
            raise
        return self.resume

    def _visit(self, page_no: int, crc: int, level: int, lower: bytes) -> list[Ref] | None:
        """The subtree in ``page_no`` with this step's rewrites, written: its new nodes (the
        first one's lower bound ``lower``); ``None`` if nothing in it changed."""
        node = self.node(page_no, crc, level)
        if level == 0:  # a root leaf
            assert isinstance(node, Leaf)
            _, leaf, values, move = self._read_leaf(0, node, page_no)
            if not move:
                return None
            self.pager.release(page_no)
            refs = self._write_run(Run(lower, list(leaf.keys), values, leaf.big))
            self.written += len(refs)
            return refs
        assert isinstance(node, Internal)
        if level == 1:
            out, changed = self._leaf_level(node, lower)
        else:
            out, changed = self._inner_level(node, level, lower)
            if self._merge_children(out, level - 1):
                changed = True
        if not changed and page_no < self.limit:
            return None
        self.pager.release(page_no)
        refs = self._write_internals(out, level) if out else []
        self.written += len(refs)
        if refs:
            refs[0] = (lower, refs[0][1], refs[0][2])
        return refs

    def _inner_level(self, node: Internal, level: int, lower: bytes) -> tuple[list[Ref], bool]:
        keys, children, crcs = node.keys, node.children, node.crcs
        first = bisect_right(keys, self.start)  # the children before it were swept
        out: list[Ref] = [
            (lower if i == 0 else keys[i - 1], children[i], crcs[i]) for i in range(first)
        ]
        changed = False
        for i in range(first, len(children)):
            child_lower = lower if i == 0 else keys[i - 1]
            refs = None
            if self.resume is None:
                refs = self._visit(children[i], crcs[i], level - 1, child_lower)
            if refs is None:
                out.append((child_lower, children[i], crcs[i]))
            else:
                out.extend(refs)
                changed = True
        return out, changed

    def _merge_children(self, refs: list[Ref], level: int) -> bool:
        """Merge the internal nodes of ``level`` that ``refs`` (one node's children) name into
        as few balanced ones as hold their entries, if that is fewer; ``refs`` is changed in
        place. Whether it merged them (deletes leave internal nodes with few children)."""
        if len(refs) < 2:
            return False
        nodes: list[Internal] = []
        grand: list[Ref] = []
        for child_lower, page_no, crc in refs:
            inner = self.node(page_no, crc, level)
            assert isinstance(inner, Internal)  # (node checked its level)
            nodes.append(inner)
            keys = inner.keys
            grand += [
                (child_lower if i == 0 else keys[i - 1], child, child_crc)
                for i, (child, child_crc) in enumerate(zip(inner.children, inner.crcs, strict=True))
            ]
        sizes = [10 + len(key) for key, _, _ in grand]  # (as _write_internals counts them)
        if pages_for(sizes, self.usable - 8) >= len(refs):
            return False
        for _, page_no, _ in refs:
            self.pager.release(page_no)
        new = self._write_internals(grand, level)
        self.written += len(new)
        refs[:] = new
        return True

    def _leaf_level(self, node: Internal, lower: bytes) -> tuple[list[Ref], bool]:
        """The children of a level-1 node, rewritten where this step moves or merges them:
        all those it reads as one run if packing them saves a tenth of them, else each run of
        consecutive candidates (leaves that must move, or less than three quarters full)."""
        keys, children, crcs = node.keys, node.children, node.crcs
        first = bisect_right(keys, self.start)
        read: list[Entry] = []
        for i in range(first, len(children)):
            if self.resume is not None:
                break
            if self.read >= self.budget:
                self.resume = lower if i == 0 else keys[i - 1]
                break
            leaf = self.node(children[i], crcs[i], 0)
            assert isinstance(leaf, Leaf)  # (node checked its level)
            read.append(self._read_leaf(i, leaf, children[i]))
        usable = self.usable
        sizes = [entry_sizes(leaf.keys, values) for _, leaf, values, _ in read]
        runs: list[list[Entry]] = []
        if read and 10 * pages_for(list(chain.from_iterable(sizes)), usable) <= 9 * len(read):
            runs.append(read)
        else:
            joined = False  # whether the last entry of runs[-1] is a candidate
            for entry, entry_size in zip(read, sizes, strict=True):
                candidate = entry[3] or 4 * sum(entry_size) < 3 * usable
                if candidate and joined:
                    runs[-1].append(entry)
                else:
                    runs.append([entry])
                joined = candidate
        out: list[Ref] = [
            (lower if i == 0 else keys[i - 1], children[i], crcs[i]) for i in range(first)
        ]
        changed = False
        for run in runs:
            changed |= self._close_run(run, node, lower, out)
        out += [
            (lower if i == 0 else keys[i - 1], children[i], crcs[i])
            for i in range(first + len(read), len(children))
        ]
        return out, changed

    def _close_run(self, run: list[Entry], node: Internal, lower: bytes, out: list[Ref]) -> bool:
        """Rewrite a run of leaves (appending their new refs to ``out``) if one of them must
        move or merging them saves a leaf; else append their old refs. Whether it rewrote
        them."""
        keys, children, crcs = node.keys, node.children, node.crcs
        if not any(move for *_, move in run):
            sizes = [size for _, leaf, values, _ in run for size in entry_sizes(leaf.keys, values)]
            if len(run) == 1 or pages_for(sizes, self.usable) >= len(run):
                for i, *_ in run:
                    out.append((lower if i == 0 else keys[i - 1], children[i], crcs[i]))
                return False
        first = run[0][0]
        merged = Run(lower if first == 0 else keys[first - 1], [], [], False)
        for i, leaf, values, _ in run:
            self.pager.release(children[i])
            merged.extend(list(leaf.keys), values, leaf.big)
        refs = self._write_run(merged)
        self.written += len(refs)
        self.merged += max(0, len(run) - len(refs))
        out.extend(refs)
        return True

    def _read_leaf(self, index: int, leaf: Leaf, page_no: int) -> Entry:
        """A leaf the sweep reaches (``index`` in its parent, in ``page_no``): its overflow
        chains that reach past the limit are copied lower (see :meth:`_copy_chain`)."""
        self.read += 1
        values: list[bytes | Overflow] = list(leaf.values)
        move = page_no >= self.limit
        if leaf.big:
            limit = self.limit
            pages_of = self.tree.overflow_pages
            for i, value in enumerate(values):
                if type(value) is Overflow:
                    pages = pages_of(value)
                    self.read += len(pages)
                    if max(pages) >= limit:
                        values[i] = self._copy_chain(value, pages)
                        self.moved.append(leaf.keys[i])
                        move = True
        return index, leaf, values, move

    def _copy_chain(self, ref: Overflow, pages: list[int]) -> Overflow:
        """Copy the overflow chain of ``ref`` (its pages ``pages``, in order) into the lowest
        free pages, a page at a time from its end (each page names the next one's checksum),
        releasing the old ones; the new chain's reference."""
        pager = self.pager
        new = [pager.allocate() for _ in pages]
        nxt, nxt_crc = 0, 0
        for old, page_no in zip(reversed(pages), reversed(new), strict=True):
            page = pager.read_page(old, None, "overflow")
            length = decode_overflow(page)[3]
            if length > self.usable:
                raise CorruptionError(f"{pager.path} page {old}: broken overflow chain")
            piece = page[HEADER_SIZE : HEADER_SIZE + length]
            nxt, nxt_crc = page_no, pager.write_page(page_no, encode_overflow(piece, nxt, nxt_crc))
            pager.release(old)
        self.written += len(pages)
        return Overflow(nxt, nxt_crc, ref.length)

"""The check of a B+ tree: every page read from disk and verified, and the tree's shape
reported; it must not change the tree, nor know how the tree is written.

A check verifies checksums, levels, key order and bounds, the key count, that every page is
exactly one of meta, tree node, overflow, free list or free, and that the row cache agrees with
the tree.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Protocol

from halodb import format as fmt
from halodb.btree.node import Leaf, Overflow, decode, decode_overflow
from halodb.errors import CorruptionError, InternalError
from halodb.pager import META_PAGES, Pager
from halodb.reports import TreeReport


class Tree(Protocol):
    """What a check uses of the tree it checks (``BTree``, whose ``check()`` calls
    :func:`check_tree`)."""

    pager: Pager
    where: str
    usable: int
    rows: dict[bytes, bytes | Overflow]

    def leaf_for(self, key: bytes) -> Leaf | None: ...

    def read_overflow(self, ref: Overflow) -> bytes: ...

    def chain_pages(self, ref: Overflow) -> int: ...


def check_tree(tree: Tree) -> TreeReport:
    """Verify every page of ``tree`` from disk (see the module's docstring).

    Raises :class:`CorruptionError` naming the page (:class:`InternalError` if the row cache
    disagrees with the tree); returns the tree's shape.
    """
    return _Check(tree).run()


class _Check:
    """One check: the report as it fills, and which page is used as what."""

    __slots__ = ("meta", "owner", "pager", "report", "tree", "where")

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self.pager = tree.pager
        self.where = tree.where
        self.meta = meta = tree.pager.meta
        self.report = TreeReport(height=meta.height, page_count=meta.page_count)
        self.report.nodes_per_level = [0] * meta.height
        self.report.bytes_used_per_level = [0] * meta.height
        self.owner: dict[int, str] = {0: "meta", 1: "meta"}

    def run(self) -> TreeReport:
        pager, meta, report = self.pager, self.meta, self.report
        if meta.height:
            self.walk(meta.root, meta.root_crc, meta.height - 1, None, None)
        if report.keys != meta.key_count:
            raise CorruptionError(
                f"{self.where}: tree holds {report.keys} keys, meta page says {meta.key_count}"
            )
        for page_no in pager.freelist_pages:
            self.claim(page_no, "free-list page")
        for page_no in pager.free:
            self.claim(page_no, "free page")
        report.free_pages = len(pager.free)
        self.check_rows()
        self.check_all_claimed()
        return report

    def claim(self, page_no: int, what: str) -> None:
        """Note that ``page_no`` is used as ``what``: damage if it lies outside the file, or
        is used as something else too."""
        owner = self.owner
        if not META_PAGES <= page_no < self.meta.page_count:
            raise CorruptionError(
                f"{self.where}: {what} page number {page_no} is outside the file "
                f"(pages in use: {self.meta.page_count})"
            )
        if page_no in owner:
            raise CorruptionError(
                f"{self.where} page {page_no} is used as {what} and as {owner[page_no]}"
            )
        owner[page_no] = what

    def walk(
        self, page_no: int, crc: int, level: int, low: bytes | None, high: bytes | None
    ) -> None:
        """Check the subtree in ``page_no`` (of level ``level``, its keys in ``[low, high)``)."""
        self.claim(page_no, "tree node")
        page = self.pager.read_page(page_no, crc, "tree node")
        node = decode(self.where, page_no, page, level)
        depth = self.meta.height - 1 - level
        self.report.nodes_per_level[depth] += 1
        if node.keys and (
            (low is not None and node.keys[0] < low) or (high is not None and node.keys[-1] >= high)
        ):
            raise CorruptionError(f"{self.where} page {page_no}: keys outside the parent's bounds")
        if isinstance(node, Leaf):
            self.report.bytes_used_per_level[depth] += self.leaf(node)
            return
        self.report.bytes_used_per_level[depth] += 8 + sum(10 + len(k) for k in node.keys)
        bounds = [low, *node.keys, high]
        for i, (child, child_crc) in enumerate(zip(node.children, node.crcs, strict=True)):
            self.walk(child, child_crc, level - 1, bounds[i], bounds[i + 1])

    def leaf(self, leaf: Leaf) -> int:
        """Count a leaf's keys and check its overflow values; the bytes of its page in use."""
        report = self.report
        report.keys += len(leaf.keys)
        used = 5 * len(leaf.keys) + sum(map(len, leaf.keys))
        for value in leaf.values:
            if type(value) is Overflow:
                used += fmt.OVERFLOW_REF.size
                self.claim_overflow(value)
                report.overflow_pages += -(-value.length // self.tree.usable)
            else:
                used += len(value)
        return used

    def claim_overflow(self, ref: Overflow) -> None:
        """Claim the pages of an overflow chain and read its value (every page verified)."""
        page_no, crc = ref.page, ref.crc
        for _ in range(self.tree.chain_pages(ref)):
            self.claim(page_no, "overflow page")  # (a page met twice is damage)
            page = self.pager.read_page(page_no, crc, "overflow")
            _, _, _, _, page_no, crc = decode_overflow(page)
        self.tree.read_overflow(ref)

    def check_rows(self) -> None:
        """Every row of the row cache is in the tree, with the same value."""
        tree = self.tree
        for key, value in list(tree.rows.items()):
            leaf = tree.leaf_for(key)
            i = -1 if leaf is None else bisect_left(leaf.keys, key)
            if (
                leaf is None
                or i >= len(leaf.keys)
                or leaf.keys[i] != key
                or leaf.values[i] != value
            ):
                raise InternalError(f"{self.where}: the row cache disagrees with the tree")

    def check_all_claimed(self) -> None:
        """Every page is claimed. Every claim lies in [META_PAGES, page_count), once: what is
        missing is a count, and its first page is the first gap among the claimed ones
        (O(pages used), not O(page_count): a hostile page_count may describe a huge sparse
        file)."""
        owner = self.owner
        missing = self.meta.page_count - len(owner)
        if missing:
            first = META_PAGES
            for page_no in sorted(p for p in owner if p >= META_PAGES):
                if page_no != first:
                    break
                first += 1
            raise CorruptionError(
                f"{self.where}: {missing} pages are neither used nor free (first: {first})"
            )

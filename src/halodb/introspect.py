"""Read-only views of a store's B+ trees for tools (what ``halodb tree`` draws); it must not
change a store, nor know terminals. The one library module outside the engine that reads the
engine's internals, so that tools never do.

The public API reports a tree's shape (:meth:`Store.check` returns a :class:`TreeReport` per
partition) but not its nodes. :func:`tree_top` reads them: the partition's tree
(``Engine.parts[i].tree``, a ``BTree``: ``pager.meta`` gives the root and height,
``node(page, crc, level)`` a decoded node, through the node cache as a lookup would), under the
partition's lock. Change this module when those internals change.

>>> import halodb, tempfile
>>> with halodb.open(tempfile.mkdtemp(), partitions=1) as db:
...     db.update({f"k{i}": i for i in range(3)})
...     db.flush()
...     tree_top(db, 0, depth=1)
NodeView(page=2, leaf=True, size=3, first='k0', last='k2', children=[])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from halodb.btree import Internal
from halodb.errors import ProgrammingError
from halodb.keys import Key, decode_key
from halodb.reports import TreeReport

if TYPE_CHECKING:
    from halodb.store import Store

__all__ = ["FANOUT", "NodeView", "TreeReport", "level_fill_factors", "tree_top"]

FANOUT: Final = 6
"""Children :func:`tree_top` reads per internal node by default; the others are counted."""


@dataclass
class NodeView:
    """One B+ tree node: its page, kind, key count and first and last keys (for an internal
    node, its separators), and the children read."""

    page: int
    leaf: bool
    size: int
    """Keys in a leaf, separators in an internal node."""
    first: Key | None
    last: Key | None
    children: list[NodeView | int] = field(default_factory=list)
    """The children read, in order; an int stands for that many children left out between
    them."""


def tree_top(store: Store, partition: int, depth: int, *, fanout: int = FANOUT) -> NodeView | None:
    """The top ``depth`` levels of partition ``partition``'s B+ tree, or ``None`` if the tree is
    empty (its keys may all be in the memtable still: :meth:`Store.flush` moves them).

    Of an internal node's children, the first ``fanout - 1`` and the last are read when it has
    more than ``fanout``. Reads O(fanout ** depth) nodes; holds the partition's lock meanwhile.
    ``ProgrammingError`` for a closed store, a partition it does not have or a ``depth`` below 1.
    """
    manager = store._m
    manager.check_open()
    if not 0 <= partition < len(manager.parts):
        raise ProgrammingError(
            f"no partition {partition}: the store has {len(manager.parts)} (0 to "
            f"{len(manager.parts) - 1})"
        )
    if depth < 1 or fanout < 2:
        raise ProgrammingError(
            f"depth must be at least 1 and fanout at least 2 ({depth}, {fanout})"
        )
    part = manager.parts[partition]
    with part.lock:
        tree = part.tree
        meta = tree.pager.meta
        if meta.height == 0:
            return None

        def visit(page: int, crc: int, level: int, remaining: int) -> NodeView:
            node = tree.node(page, crc, level)
            keys = node.keys
            first, last = (decode_key(keys[0]), decode_key(keys[-1])) if keys else (None, None)
            view = NodeView(page=page, leaf=level == 0, size=len(keys), first=first, last=last)
            if isinstance(node, Internal) and remaining > 1:
                n = len(node.children)
                shown = range(n) if n <= fanout else [*range(fanout - 1), n - 1]
                previous = -1
                for i in shown:
                    if i - previous > 1:
                        view.children.append(i - previous - 1)
                    child = visit(node.children[i], node.crcs[i], level - 1, remaining - 1)
                    view.children.append(child)
                    previous = i
            return view

        return visit(meta.root, meta.root_crc, meta.height - 1, depth)


def level_fill_factors(report: TreeReport, page_size: int) -> list[float]:
    """The fill factor of each level of a tree (the root's first): the average fraction of a
    node's page in use, as :meth:`TreeReport.fill_factor` gives it for the whole tree."""
    return [
        TreeReport(1, [n], [b]).fill_factor(page_size)
        for n, b in zip(report.nodes_per_level, report.bytes_used_per_level, strict=True)
    ]

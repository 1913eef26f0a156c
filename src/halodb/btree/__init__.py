"""One partition's on-disk B+ tree of encoded keys and values; knows nothing of logs or
memtables.

A module per part, each importing only those below it (an import-linter contract)::

    tree     BTree: lookups, lazy ordered iteration a leaf at a time, overflow chains; the entry
             points of a flush (apply_columns), of a compaction step and of the check
    compact  Compaction, one per compaction step: nodes move toward the file's start, runs of
             underfull leaves merge (a TreeWriter that writes no change)
    writer   TreeWriter, one per flush: the copy-on-write merge of a sorted batch of changes
    check    the check of every page from disk (its TreeReport is in halodb.reports)
    rows     RowCache, the row cache (a base class of BTree)
    node     each node's page encoder beside its decoder, and what a decoded node costs

``writer`` and ``check`` see the tree through a ``Protocol`` of what they use of it, so that
``tree``, which makes them, is the one module above them. This package re-exports what the
engine and tests use.
"""

from halodb.btree.node import (
    BYTES_OBJECT,
    DICT_ENTRY,
    LAYOUTS,
    LAYOUTS_BYTES,
    LAYOUTS_MAX,
    OVERFLOW_OBJECT,
    Internal,
    Leaf,
    Overflow,
    internal_cost,
    leaf_cost,
    limits,
)
from halodb.btree.rows import ROW_OVERHEAD, ROW_STEP
from halodb.btree.tree import BTree, Change
from halodb.btree.writer import MergeStopped

__all__ = [
    "BYTES_OBJECT",
    "DICT_ENTRY",
    "LAYOUTS",
    "LAYOUTS_BYTES",
    "LAYOUTS_MAX",
    "OVERFLOW_OBJECT",
    "ROW_OVERHEAD",
    "ROW_STEP",
    "BTree",
    "Change",
    "Internal",
    "Leaf",
    "MergeStopped",
    "Overflow",
    "internal_cost",
    "leaf_cost",
    "limits",
]

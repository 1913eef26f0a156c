"""What a store reports about itself: plain records of counters and sizes, returned by
``Store.stats()`` and ``Store.check()``; knows nothing of how they are gathered."""

from __future__ import annotations

from dataclasses import dataclass, field

from halodb import format as fmt


@dataclass(frozen=True, slots=True)
class StoreStats:
    """A snapshot of a store's counters: totals and one :class:`PartitionStats` per partition."""

    path: str
    """The store's directory."""
    keys: int
    """The exact number of keys."""
    durability: str
    """``"full"``, ``"normal"`` or ``"fast"``."""
    page_size: int
    """The B+ tree page size."""
    partitions: tuple[PartitionStats, ...]
    """One :class:`PartitionStats` per partition, in index order."""
    last_recovery_seconds: float
    """The time the whole open took, recovery included."""
    file_bytes: int = 0
    """Bytes of the store's files on disk (its partitions' trees, logs and bloom filters, and
    its manifest and lock file): their lengths. (The blocks of free pages that a clean close
    handed back to the file system are counted: ``du`` shows less.)"""
    live_bytes: int = 0
    """Bytes of the trees' pages that hold data (nodes and overflow values): what the trees
    would take with no free page."""
    worker: str = "off"
    """The background worker that merges frozen memtables into the trees and compacts them:
    ``"idle"``, ``"merging"``, ``"compacting"``, ``"stopped"`` (the store is closing),
    ``"failed"`` (its error stopped the store's writes) or ``"off"`` (read-only, or opened
    with ``background=False``)."""
    stalls: int = 0
    """Writes that waited because a partition's memtable filled while its frozen one was still
    merging, since the store was opened (over every partition)."""
    stall_seconds: float = 0.0
    """The time those writes waited, in all."""
    free_pages: int = 0
    """Free pages of the tree files, over every partition (see ``PartitionStats``)."""
    compact_steps: int = 0
    """Compaction steps since the store was opened (by ``compact()`` or the worker)."""


@dataclass(frozen=True, slots=True)
class CompactReport:
    """What :meth:`Store.compact` did."""

    file_bytes_before: int
    """The store's bytes on disk before (``StoreStats.file_bytes``)."""
    file_bytes_after: int
    """The store's bytes on disk after."""
    steps: int
    """Compaction steps (each one a durable transaction of a tree file)."""
    pages_rewritten: int
    """Tree nodes and overflow pages written anew: moved toward the start of their file, or
    merged with underfull neighbours."""
    leaves_merged: int
    """Leaves fewer than before, by merging runs of underfull neighbours."""
    seconds: float
    """The time it took."""


@dataclass(frozen=True, slots=True)
class PartitionStats:
    """Counters and sizes of one partition at one moment."""

    index: int
    """The partition's number, from 0."""
    keys: int
    """Keys live in the partition (memtable and tree together)."""
    memtable_entries: int
    """Entries in the memtable, tombstones included."""
    memtable_bytes: int
    """The memtable's size as counted against ``memtable_size``."""
    wal_bytes: int
    """The log's length, records still buffered included."""
    tree_height: int
    """Levels of the on-disk B+ tree."""
    tree_keys: int
    """Keys in the tree as of the last flush."""
    pages: int
    """Pages in the tree file."""
    free_pages: int
    """Pages of the tree file free for reuse."""
    cache_hits: int
    """Node-cache lookups that found the node decoded."""
    cache_misses: int
    """Node-cache lookups that read and decoded the page."""
    bloom_negatives: int
    """Lookups the bloom filter answered absent (no tree read)."""
    bloom_rebuilds: int
    """Times the bloom filter was rebuilt from the tree."""
    flushes: int
    """Flushes of the memtable into the tree since the store was opened."""
    recovery_seconds: float
    """Time to open the partition and replay its log."""
    cache_bytes: int
    """Bytes of memory the node cache's decoded nodes take (an estimate made as each node is
    decoded, from CPython's object sizes); at most the partition's share of ``cache_size``
    (and at least 16 pages' worth)."""
    row_cache_bytes: int
    """Bytes of memory the row cache takes (its keys and values as objects, and its dict);
    within the same budget as ``cache_bytes``."""
    file_bytes: int = 0
    """Bytes of the partition's files on disk: its tree, its log (two while a frozen memtable
    merges) and its bloom filter."""
    live_bytes: int = 0
    """Bytes of the tree's pages that hold data (nodes and overflow values); the rest of the
    tree file is free pages (``free_pages``, reused lowest first; those at the file's end are
    cut off at the next commit) and the free list."""
    frozen_entries: int = 0
    """Entries of the frozen memtable: a full one that the worker is merging into the tree
    while the memtable takes new writes, or the run file the last clean close left, until the
    worker has merged it (0 when there is none)."""
    frozen_bytes: int = 0
    """The frozen memtable's size, as counted against ``memtable_size`` (a run's: its keys and
    values, and what they take once decoded)."""
    stalls: int = 0
    """Writes to this partition that waited for its frozen memtable's merge."""
    stall_seconds: float = 0.0
    """The time they waited, in all."""
    compact_steps: int = 0
    """Compaction steps of this partition's tree file since the store was opened."""
    compacted_pages: int = 0
    """Nodes and overflow pages those steps wrote anew."""


@dataclass(slots=True)
class TreeReport:
    """What a tree's check found: the tree's shape and page accounting."""

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
        usable = page_size - fmt.PAGE_HEADER.size
        return sum(self.bytes_used_per_level) / (nodes * usable) if nodes else 0.0

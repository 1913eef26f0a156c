"""One hash partition: its log, memtable, bloom filter and tree; knows nothing of other partitions.

Write path: a framed record is appended to the log (handed to the OS, or buffered in FAST mode),
then the memtable takes the entries and the bloom filter the keys. Read path: the memtable; the
frozen memtable, if any; the tree's row cache (entries of recently decoded leaves and looked-up
keys: a hit is one hash lookup); the bloom filter, whose negative answer skips the tree; then the
tree, through its node cache.

A full memtable is frozen (:meth:`Partition.freeze`): it stops taking writes, a new log file
takes the new records (``pNNN.wal2`` while the frozen memtable's is ``pNNN.wal``), and a new
memtable takes the writes. :meth:`Partition.merge` then merges the frozen memtable into the tree
(durable through the pager's commit), without the partition's lock but for its last step, which
makes the new tree the one readers see; only then does the frozen log go (the new log is renamed
``pNNN.wal`` over it): a log is never deleted before the tree holding its records is durable.

Every method except ``__init__``, ``peek`` and ``merge`` expects the caller (the engine) to
hold ``lock``; ``peek`` is the lock-free first try of a get (see there); ``merge`` takes the
lock itself for its last step, unless told the caller holds it. One merge runs at a time: its
caller holds ``merge_lock`` (taken before ``lock``, never after).
The partition keeps an exact count of its live keys, so the store's ``len()`` never scans.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from itertools import compress, repeat
from operator import is_not
from typing import Any

from sortedcontainers import SortedList

from halodb import format as fmt
from halodb.bloom import BloomFilter, read_filter
from halodb.btree import ROW_STEP, BTree, MergeStopped, limits
from halodb.collector import collector_paused
from halodb.errors import CorruptionError
from halodb.hashing import key_hash
from halodb.memtable import MISSING, Memtable
from halodb.pager import META_PAGES, Pager
from halodb.reports import PartitionStats, TreeReport
from halodb.run import Run, write_run
from halodb.vfs import FileSystem
from halodb.wal import Entry, LogContents, LogWriter, Record, frame, header_bytes, read_log

log = logging.getLogger(__name__)


SORT_STEP = 1 << 14
"""Keys a merge without the lock sorts in one call (see ``Memtable.columns``)."""
COMPACT_STEP = 256
"""Pages a compaction step reads at most, leaves and overflow pages (it stops after the leaf
that reaches it), and so about as many it writes, with the leaves' ancestors: a MiB at the
default page size."""
COMPACT_SWEEPS = 8
"""Sweeps a compaction makes at most: each one moves nodes the previous one could not (free
pages came out of it), and the first usually does most of the work."""
COMPACT_MIN_PAGES = 256
"""The fewest spare free pages for which the worker compacts a tree file on its own."""


def _buffer_limit(wal: LogWriter) -> int | None:
    """The buffer size of ``wal`` (``None``: unbuffered), for the log that replaces it."""
    return None if wal.buffer is None else wal.buffer_limit


def _head(
    keys: list[bytes] | SortedList,
    lo: bytes | None,
    hi: bytes | None,
    reverse: bool,
    limit: int,
    edge: bytes | None,
) -> list[bytes]:
    """The first ``limit`` of sorted ``keys`` in ``[lo, hi)``, ascending or descending, none
    past ``edge`` (``None``: no such bound): one slice."""
    if isinstance(keys, list):
        left, right = partial(bisect_left, keys), partial(bisect_right, keys)
    else:
        left, right = keys.bisect_left, keys.bisect_right
    start = 0 if lo is None else left(lo)
    end = len(keys) if hi is None else left(hi)
    if reverse:
        if edge is not None:
            start = max(start, left(edge))
        start = max(start, end - limit)
    else:
        if edge is not None:
            end = min(end, right(edge))
        end = min(end, start + limit)
    if start >= end:
        return []
    out: list[bytes] = keys[start:end]
    if reverse:
        out.reverse()
    return out


def count_upto(keys: list[bytes], edge: bytes | None, reverse: bool) -> int:
    """How many of ordered ``keys`` (ascending, or descending with ``reverse``) come up to and
    including ``edge`` (``None``: all of them); a binary search."""
    if edge is None:
        return len(keys)
    if not reverse:
        return bisect_right(keys, edge)
    low, high = 0, len(keys)
    while low < high:
        mid = (low + high) // 2
        if keys[mid] >= edge:
            low = mid + 1
        else:
            high = mid
    return low


def _combine(
    keys: list[bytes],
    values: list[Any],
    heads: list[tuple[list[bytes], dict[bytes, bytes | None]]],
    edge: bytes | None,
    reverse: bool,
) -> tuple[list[bytes], list[Any]]:
    """The tree's ``keys`` and ``values`` with the memtables' ``heads`` (each a layer's keys
    and its data, lower layers first) over them, up to ``edge``, in order (tombstones kept)."""
    merged = dict(zip(keys, values, strict=True))
    for layer_keys, data in heads:
        upto = layer_keys[: count_upto(layer_keys, edge, reverse)]
        merged.update(zip(upto, map(data.__getitem__, upto), strict=True))
    keys = sorted(merged, reverse=reverse)
    return keys, list(map(merged.__getitem__, keys))


class Partition:
    """One partition of a store. See the module docstring for the read and write paths."""

    def __init__(
        self,
        fs: FileSystem,
        directory: str,
        index: int,
        *,
        page_size: int,
        seed: int,
        cache_pages: int,
        bloom_bits_per_key: int,
        readonly: bool,
    ) -> None:
        started = time.perf_counter()
        self.fs = fs
        self.index = index
        self.seed = seed
        self.readonly = readonly
        self.bloom_bits_per_key = bloom_bits_per_key
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        """Notified when a merge ends (a writer stalled behind it waits on it)."""
        self.merge_lock = threading.Lock()
        self.tree_path = os.path.join(directory, fmt.partition_file(index, "tree"))
        self.log_paths = (
            os.path.join(directory, fmt.partition_file(index, "wal")),
            os.path.join(directory, fmt.partition_file(index, "wal2")),
        )
        self.wal_path = self.log_paths[0]
        """The log the memtable's records go to (the newer one, when there are two)."""
        self.bloom_path = os.path.join(directory, fmt.partition_file(index, "bloom"))
        self.run_path = os.path.join(directory, fmt.partition_file(index, "run"))
        self.stale_run = False
        """A run file whose writes the tree holds (a merge's leftover), deleted when the log is
        opened for appending."""
        if not fs.exists(self.tree_path):
            raise CorruptionError(f"{self.tree_path}: file is missing")
        self.pager = Pager(fs, self.tree_path, index, page_size, cache_pages, readonly)
        self.tree = BTree(self.pager)
        self.memtable = Memtable()
        self.cleared = False
        """Everything below the memtable is logically gone (a clear not yet merged)."""
        self.log: LogWriter | None = None
        self.batch_seen = False
        """The memtable holds part of a batch that spans partitions (see ``Engine.flush_part``)."""
        self.frozen: Memtable | Run | None = None
        """A full memtable being merged into the tree, or the run a clean close left; read
        after the memtable, before the tree."""
        self.frozen_cleared = False
        """The tree's contents are logically gone below the frozen memtable."""
        self.frozen_batch = False
        """The frozen memtable holds part of a batch that spans partitions."""
        self.frozen_seq = 0
        """The newest sequence number the frozen memtable holds."""
        self.frozen_count = 0
        """Live keys of the frozen memtable and the tree together: the merged tree's count."""
        self.frozen_log: LogWriter | None = None
        """The frozen memtable's log while open for syncing (``None`` after recovery)."""
        self.frozen_path: str | None = None
        """The frozen memtable's log file; deleted once the merge is durable."""
        self.stale_path: str | None = None
        """After recovery: an older log whose records the tree holds already (deleted when the
        log is opened for appending)."""
        self.split_seq: int | None = None
        """After recovery: records up to this sequence number came from the older of two logs,
        and are replayed into the frozen memtable."""
        self.gap_base: int | None = None
        """After recovery: the older log lost its tail, so the newer one's records were left
        out; it is replaced by an empty log after this sequence number."""
        self.bloom_next: BloomFilter | None = None
        """A bloom filter being rebuilt by a merge: new keys go to it too."""
        self.stalls = 0
        self.stall_seconds = 0.0
        self.on_let_go: Callable[[], None] | None = None
        """Called (``lock`` held) as a merge lets go of the frozen memtable: a test hook, to
        check what reads see at that moment."""
        self.epoch = 0
        """Odd while a batch is being applied to the memtable, one entry at a time; changed by
        each batch. A reader without the lock (:meth:`peek`) trusts what it read only if the
        epoch was even and the same before and after."""
        self.bloom_negatives = 0
        self.bloom_rebuilds = 0
        self.flushes = 0
        self.compact_from: bytes | None = None
        """Where the next step of the compaction under way starts (``None``: none under way)."""
        self.sweep_written = 0
        """Nodes the steps of this sweep rewrote (another sweep follows one that rewrote any)."""
        self.sweeps = 0
        """Sweeps of the compaction under way, the one under way included."""
        self.spare = 0
        """Free pages of the tree file that the last merge did not need (see
        :meth:`compact_due`)."""
        self.compact_steps = 0
        """Compaction steps since the store was opened."""
        self.compacted_pages = 0
        """Nodes and overflow pages compaction steps rewrote since the store was opened."""
        self.compact_read = 0
        """Pages compaction steps read since the store was opened."""
        self.bloom_stale = False
        """The bloom filter's file names an older transaction of the tree than the current one
        (compaction steps save it at the compaction's end; a clean close saves it too)."""
        self.merged_leaves = 0
        """Leaves fewer than before, by compaction steps since the store was opened."""
        self.run_due = False
        """The run a clean close left (the frozen memtable) is for the worker to merge: set
        by the engine at the open of a store with a worker. Without one, a run stays until the
        memtable fills (or a flush): the write that fills it merges it first."""
        self.limit = 0
        """Memtable bytes past which a write calls the engine's ``_full`` (``memtable_size``,
        set by the engine)."""
        self.closing = False
        """Set by a close: a merge without the lock stops part-way (all of it forgotten), since
        the close saves the frozen memtable in a run instead."""
        try:
            run = self._open_run()
            self.contents: LogContents = self._read_logs()
            if run is not None and self.split_seq is not None:
                raise CorruptionError(
                    f"{self.frozen_path}: log holds writes after sequence {run.seq}, the "
                    f"newest of the run {self.run_path}, beside a newer log"
                )
            self.count = self.pager.meta.key_count if run is None else run.count
            self.last_seq = self.covered_seq
            self.bloom = self._load_bloom()
        except BaseException:
            self.pager.close()
            raise
        self.recovery_seconds = time.perf_counter() - started

    @property
    def flushed_seq(self) -> int:
        """The newest sequence number the tree holds."""
        return self.pager.meta.flushed_seq

    def merge_due(self) -> bool:
        """Whether the frozen memtable is to be merged now: always, but for a run that is not
        yet due (see :attr:`run_due`)."""
        frozen = self.frozen
        return frozen is not None and (self.run_due or not isinstance(frozen, Run))

    def run_bytes(self) -> int:
        """The size of the run the last close left (0 if none is left to merge)."""
        frozen = self.frozen
        return frozen.size if isinstance(frozen, Run) else 0

    def run_outgrows(self, limit: int) -> bool:
        """Whether a run the last close left, with what the memtable holds over it, would make
        a run of more than ``limit`` bytes (a close merges instead: runs do not grow from
        close to close)."""
        return (
            bool(self.memtable.data)
            and not self.cleared  # (then the run would hold the memtable alone)
            and self.run_bytes() > 0
            and self.run_bytes() + self.memtable.size > limit
        )

    @property
    def covered_seq(self) -> int:
        """The newest sequence number held durably outside the logs: by the tree, or by the
        run a clean close left (recovery skips the log records up to it)."""
        frozen = self.frozen
        if isinstance(frozen, Run):
            return frozen.seq
        return self.pager.meta.flushed_seq

    # -- opening -----------------------------------------------------------------------------

    def _open_run(self) -> Run | None:
        """The run a clean close left, if any and live: made the frozen memtable."""
        if not self.fs.exists(self.run_path):
            return None
        run = Run.open(self.fs, self.run_path, self.index, max_key=limits(self.pager.page_size)[0])
        flushed = self.pager.meta.flushed_seq
        if run.seq <= flushed:  # the tree holds it: its merge's leftover
            self.stale_run = True
            return None
        if run.base_seq != flushed:
            raise CorruptionError(
                f"{self.run_path}: run lies on a tree holding writes up to sequence "
                f"{run.base_seq}, but the tree holds writes up to {flushed}"
            )
        most = len(run) + (0 if run.cleared else self.pager.meta.key_count)
        if run.count > most:
            raise CorruptionError(
                f"{self.run_path}: run counts {run.count} live keys, but it and the tree "
                f"hold at most {most}"
            )
        self.frozen = run
        self.frozen_cleared = run.cleared
        self.frozen_seq = run.seq
        self.frozen_count = run.count
        return run

    def _read_logs(self) -> LogContents:
        """Read the partition's one or two logs; return what recovery is to consider (the older
        log's records, then the newer one's, unless the older lost its tail)."""
        found: list[tuple[LogContents, str]] = []
        for path in self.log_paths:
            if self.fs.exists(path):
                handle = self.fs.open(path)
                try:
                    data = handle.read_all()
                finally:
                    handle.close()
                found.append((read_log(data, self.index, path), path))
        if not found:
            raise CorruptionError(f"{self.log_paths[0]}: file is missing")
        # (Equal base_seqs: a freeze starts the newer log after the older one's last record,
        # above its base_seq; so one of them has no record after it, and is the older: what a
        # recovery replaced, or started a new log after, and then deleted.)
        found.sort(key=lambda item: (item[0].base_seq, bool(item[0].records)))
        flushed = self.covered_seq
        oldest, oldest_path = found[0]
        if oldest.base_seq > flushed:
            raise CorruptionError(
                f"{oldest_path}: log follows sequence {oldest.base_seq} but the tree "
                f"only holds writes up to {flushed}: the tree's newest meta page is damaged, "
                f"or the run file {self.run_path} is missing"
            )
        newest, self.wal_path = found[-1]
        if len(found) == 1:
            return newest
        if newest.base_seq == oldest.base_seq and oldest.records:  # (both have records)
            raise CorruptionError(
                f"{self.wal_path}: log follows sequence {newest.base_seq}, as does the other "
                f"log, {oldest_path}"
            )
        kept = [r for r in oldest.records if r.seq <= newest.base_seq]
        if len(kept) < len(oldest.records):
            # A recovery dropped these (the rest of an interrupted batch, and what followed it)
            # and froze what it kept, starting the newer log after it: they stay dropped.
            log.info(
                "%s: ignoring %d records after sequence %d, which a recovery dropped",
                oldest_path,
                len(oldest.records) - len(kept),
                newest.base_seq,
            )
            oldest = LogContents(oldest.base_seq, kept, oldest.valid_end, False)
        last = kept[-1].seq if kept else oldest.base_seq
        if last <= flushed:  # the tree holds the older log's records: a merge's leftover
            self.stale_path = oldest_path
        else:
            self.frozen_path = oldest_path
            self.split_seq = last
        if newest.base_seq <= max(last, flushed):
            return LogContents(
                newest.base_seq, oldest.records + newest.records, newest.valid_end, newest.torn
            )
        # The older log lost its tail (a power cut): the newer one's records follow writes
        # that are gone, so none of them applies; the newer log is replaced by an empty one.
        log.warning(
            "%s: dropping its %d records, which follow writes that %s lost",
            self.wal_path,
            len(newest.records),
            oldest_path,
        )
        self.gap_base = max(last, flushed)
        return LogContents(self.gap_base, oldest.records, newest.valid_end, False)

    def _load_bloom(self) -> BloomFilter:
        fs = self.fs
        txn = self.pager.meta.txn
        if fs.exists(self.bloom_path):
            try:
                bloom, bloom_txn = read_filter(
                    fs, self.bloom_path, self.index, self.pager.most_keys()
                )
                if bloom_txn == txn:
                    return bloom
                log.info(
                    "%s: bloom filter is of tree txn %d, not %d; rebuilding",
                    self.bloom_path,
                    bloom_txn,
                    txn,
                )
            except CorruptionError as exc:
                log.warning("%s; rebuilding it from the tree", exc)
        return self._rebuild_bloom()

    def _rebuild_bloom(self) -> BloomFilter:
        """A bloom filter built from the tree and the memtables (at open, when the saved one
        cannot be used; saved at the next merge)."""
        self.bloom_rebuilds += 1
        bloom = BloomFilter.for_keys(max(2 * self.count, 1024), self.bloom_bits_per_key)
        tree_gone = self.cleared or (self.frozen is not None and self.frozen_cleared)
        self._fill_bloom(bloom, self._live_in_memory(), tree=not tree_gone)
        self.bloom = bloom
        return bloom

    def _fill_bloom(self, bloom: BloomFilter, live: list[bytes], *, tree: bool) -> None:
        """Add ``live`` keys to ``bloom``, and every key of the tree if ``tree``."""
        seeds = repeat(self.seed)
        if tree:
            for keys in self.tree.iter_key_runs():
                bloom.add_all(map(key_hash, keys, seeds))
        bloom.add_all(map(key_hash, live, seeds))

    def replay(self, records: Sequence[Record]) -> None:
        """Apply recovered log records (already approved by recovery) to the memtable."""
        started = time.perf_counter()
        split = self.split_seq
        run: list[Entry] = []  # entries of consecutive records, applied together
        taken = batch = False  # whether the run has a record (it may have no entry), a batch part
        last = 0
        for record in records:
            if (split is not None and record.seq > split) or record.flags & fmt.FLAG_CLEAR:
                if taken:
                    self._apply_run(run, last, batch)
                    run, taken, batch = [], False, False
                if split is not None and record.seq > split:
                    self._freeze_memory(self.frozen_path)
                    split = None
            if record.flags & fmt.FLAG_CLEAR:
                self.apply(
                    record.entries, record.seq, clear=True, batch=record.rtype == fmt.REC_BATCH
                )
                continue
            run += record.entries
            taken = True
            batch |= record.rtype == fmt.REC_BATCH
            last = record.seq
        if taken:
            self._apply_run(run, last, batch)
        if split is not None and (self.memtable.data or self.cleared):
            self._freeze_memory(self.frozen_path)  # every record was the older log's
        elif split is not None:
            self.stale_path, self.frozen_path = self.frozen_path, None
        self.split_seq = None
        self.recovery_seconds += time.perf_counter() - started

    def open_log(self, buffer_limit: int | None) -> None:
        """Start appending to the log after its last good record, cutting a torn tail (fsynced);
        or, after a clean close, to a fresh log (written as temp, fsync, rename, fsync dir)."""
        if self.readonly:
            return
        if (
            self.stale_path is not None
            and self.contents.base_seq > self.last_seq
            and self.gap_base is None
        ):
            # Recovery dropped every record of the older log the tree did not hold: the newer
            # log starts after them, and must not outlive the older one.
            self.gap_base = self.last_seq
        if self.gap_base is not None:  # (before the stale log goes)
            self.log = self._new_log(self.wal_path, self.gap_base, buffer_limit)
            self.contents = LogContents(self.gap_base, [], self.log.end, False)
            self.gap_base = None
        if self.stale_path is not None:
            # Its records are in the tree. Durably gone before any new record is written, so
            # that it never comes back beside logs written after it.
            self.fs.unlink(self.stale_path)
            self.fs.sync_dir(os.path.dirname(self.stale_path))
            self.stale_path = None
        if self.stale_run:
            self.fs.unlink(self.run_path)  # (its writes are in the tree; kept, it is ignored)
            self.stale_run = False
        if self.log is not None:
            return
        records = self.contents.records
        if (
            records
            and records[-1].rtype == fmt.REC_CLOSE
            and not self.memtable.data
            and (self.frozen is None or isinstance(self.frozen, Run))
        ):
            # Cleanly closed, everything in the tree or a run: start a fresh log rather than
            # write after the close record (after which a torn write would read as damage).
            covered = self.covered_seq
            self.log = self._new_log(self.wal_path, covered, buffer_limit)
            self.contents = LogContents(covered, [], self.log.end, False)
            return
        handle = self.fs.open(self.wal_path, write=True)
        end = self.contents.valid_end
        try:
            if self.contents.torn or handle.size() != end:
                log.warning("%s: dropping a torn tail after offset %d", self.wal_path, end)
                handle.truncate(end)
                handle.sync()
        except BaseException:
            handle.close()
            raise
        self.log = LogWriter(handle, end, buffer_limit=buffer_limit)
        self.contents = LogContents(self.contents.base_seq, [], end, False)

    # -- reads -------------------------------------------------------------------------------

    def peek(self, key: bytes, h: tuple[int, int]) -> object:
        """The value of ``key`` (hashed ``h``) if no tree page is needed to tell: bytes, or
        ``None`` (absent); else :data:`MISSING` (then :meth:`get` it, under the lock).

        Safe without the lock between batches (see :attr:`epoch`): it reads the memtable, the
        row cache and the bloom filter, one dict or bit lookup each, and every other change
        to them keeps a reader in that order right: a put or delete is one dict store; a merge
        drops each key it changed from the row cache before it lets go of the frozen memtable
        (and a freeze makes the memtable frozen before it starts a new one); a new bloom filter
        replaces the old one whole.
        """
        value = self.memtable.data.get(key, MISSING)
        if value is not MISSING:
            return value
        if self.cleared:
            return None
        frozen = self.frozen
        if frozen is not None:
            value = frozen.data.get(key, MISSING)
            if value is not MISSING:
                return value
            if self.frozen_cleared:
                return None
        cached = self.tree.rows.get(key)  # BTree.get_cached, inlined: the hot path of warm reads
        if cached is not None:
            return cached if type(cached) is bytes else MISSING  # an overflow chain to read
        bloom = self.bloom
        # The first probe inlined (most missing keys fail it), then the rest of them.
        if not bloom.bits[h[0] % bloom.nbits] or not bloom.might_contain(h):
            self.bloom_negatives += 1
            return None
        return MISSING

    def get(self, key: bytes, h: tuple[int, int]) -> bytes | None:
        """The value of ``key`` (hashed ``h``), or ``None``. Caller holds the lock."""
        value = self.peek(key, h)
        if value is not MISSING:
            return value  # type: ignore[return-value]
        tree = self.tree
        cached = tree.rows.get(key)
        if cached is not None:
            return tree.read_overflow(cached)  # type: ignore[arg-type]
        return tree.get(key)

    def contains(self, key: bytes, h: tuple[int, int]) -> bool:
        """Whether ``key`` is live, without reading a large value."""
        value = self.memtable.data.get(key, MISSING)
        if value is not MISSING:
            return value is not None
        return self._below(key, h)

    def _below_key(self, key: bytes) -> bool:
        """:meth:`_below` for a key the bloom filter may hold (``cleared`` already asked)."""
        frozen = self.frozen
        if frozen is not None:
            value = frozen.data.get(key, MISSING)
            if value is not MISSING:
                return value is not None
            if self.frozen_cleared:
                return False
        return self.tree.contains(key)

    def _below(self, key: bytes, h: tuple[int, int]) -> bool:
        """Whether ``key`` is live below the memtable: in the frozen memtable, or the tree."""
        if self.cleared:
            return False
        frozen = self.frozen
        if frozen is not None:
            value = frozen.data.get(key, MISSING)
            if value is not MISSING:
                return value is not None
            if self.frozen_cleared:
                return False
        return self.bloom.might_contain(h) and self.tree.contains(key)

    def scan(
        self, lo: bytes | None, hi: bytes | None, reverse: bool, limit: int
    ) -> tuple[list[bytes], list[bytes], bytes | None]:
        """Live keys in ``[lo, hi)``, ascending or descending, and their values, as two lists:
        at most ``limit`` of them, and the last key this read covered (``None``: none is left
        in range). The next read resumes after that key; tombstones may make it lie past the
        last key returned.

        Each layer (memtable, frozen memtable or run, tree) gives at most ``limit`` keys, as
        whole lists; the layers are combined in one dict, upper over lower, and one sort (the
        sort finds the layers' ordered runs and merges them): no Python step per item.
        """
        buried = self.cleared or (self.frozen is not None and self.frozen_cleared)
        keys: list[bytes]
        values: list[Any]
        keys, values = ([], []) if buried else self.tree.head(lo, hi, reverse, limit)
        edge = keys[-1] if len(keys) >= limit else None
        layers: list[Memtable | Run] = []
        if self.frozen is not None and not self.cleared:
            layers.append(self.frozen)
        if self.memtable.data:
            layers.append(self.memtable)
        heads = []
        for layer in layers:  # (each cut at the edge so far: no key past it is read)
            layer_keys = _head(layer.ordered(), lo, hi, reverse, limit, edge)
            if len(layer_keys) >= limit:
                edge = layer_keys[-1]
            if layer_keys:
                heads.append((layer_keys, layer.data))
        if not heads:
            return keys, values, edge  # nothing recent in range: the tree alone
        below = count_upto(keys, edge, reverse)
        if not below and len(heads) == 1:  # one layer alone: its keys and values as they are
            layer_keys, data = heads[0]
            keys = layer_keys[: count_upto(layer_keys, edge, reverse)]
            values = list(map(data.__getitem__, keys))
        else:
            keys, values = _combine(keys[:below], values[:below], heads, edge, reverse)
        if None in values:  # tombstones
            live = list(map(is_not, values, repeat(None)))
            keys = list(compress(keys, live))
            values = list(compress(values, live))
        if len(keys) > limit:
            del keys[limit:], values[limit:]
            edge = keys[-1]
        return keys, values, edge

    # -- writes ------------------------------------------------------------------------------

    def put(self, key: bytes, value: bytes, h: tuple[int, int], seq: int) -> None:
        """Apply one logged put to the memtable, bloom filter and key count."""
        old = self.memtable.put(key, value)
        if self.bloom_next is not None:
            self.bloom_next.add(h)
        if old is MISSING:  # new to the memtable: new to the store unless below it
            if not self.bloom.add(h) or self.cleared:
                self.count += 1
            elif self.frozen is None:
                self.count += not self.tree.contains(key)
            else:
                self.count += not self._below(key, h)
        elif old is None:  # over a tombstone (which the bloom filter may not hold)
            self.bloom.add(h)
            self.count += 1
        # (A live value in the memtable means the key is in the bloom filter already.)
        self.last_seq = seq

    def delete(self, key: bytes, seq: int) -> None:
        """Apply one logged delete of a key the caller found live."""
        self.memtable.put(key, None)
        self.count -= 1
        self.last_seq = seq

    def apply(
        self, entries: Sequence[Entry], seq: int, *, clear: bool, batch: bool = False
    ) -> None:
        """Apply logged entries (``None`` value: delete), after a clear when ``clear``;
        ``batch`` says they are one part of a batch that spans partitions."""
        self.batch_seen |= batch
        if clear:
            self.memtable.clear()
            self.cleared = True
            self.count = 0
        seed = self.seed
        put = self.memtable.put
        bloom = self.bloom
        cleared = self.cleared
        # Whether a key was live before: the memtable's answer, else what lies below it (asked
        # only if the bloom filter may hold it; contains(), inlined as put() does).
        below = self.tree.contains if self.frozen is None else self._below_key
        for key, value in entries:
            h = key_hash(key, seed)
            old = put(key, value)
            if value is not None:
                seen = bloom.add(h)
                if old is MISSING:
                    self.count += not (seen and not cleared and below(key))
                else:
                    self.count += old is None
            elif old is MISSING:
                self.count -= not cleared and bloom.might_contain(h) and below(key)
            else:
                self.count -= old is not None
        if self.bloom_next is not None:
            self.bloom_next.add_all(
                key_hash(key, seed) for key, value in entries if value is not None
            )
        self.last_seq = seq

    def _apply_run(self, entries: list[Entry], seq: int, batch: bool) -> None:
        """:meth:`apply` the entries of consecutive records (no clear among them; ``seq`` the
        last one's), in bulk: each key's last entry decides, and the key count changes by how
        many keys it brings to life or ends."""
        self.batch_seen |= batch
        final = dict(entries)
        olds = self.memtable.put_all(final)
        hashes = list(map(key_hash, final, repeat(self.seed)))
        bloom = self.bloom
        might = bloom.might_contain
        cleared = self.cleared
        below = self.tree.contains if self.frozen is None else self._below_key
        change = 0
        for key, value, old, h in zip(final, final.values(), olds, hashes, strict=True):
            if old is not MISSING:
                change += (value is not None) - (old is not None)
            elif not cleared and might(h) and below(key):  # live below the memtable
                change -= value is None
            else:
                change += value is not None
        self.count += change
        live = [h for h, value in zip(hashes, final.values(), strict=True) if value is not None]
        bloom.add_all(live)
        if self.bloom_next is not None:
            self.bloom_next.add_all(live)
        self.last_seq = seq

    def flush(
        self,
        sync_others: Callable[[], None],
        retire: Callable[[LogWriter], None],
        *,
        force: bool = False,
    ) -> None:
        """Merge the frozen memtable, then the memtable, into the tree (caller holds ``lock``
        and ``merge_lock``), leaving one empty log.

        With nothing to merge, does nothing unless ``force`` (then the log is still replaced,
        dropping records that recovery decided not to apply). ``sync_others`` and ``retire``:
        see :meth:`merge`.
        """
        assert self.log is not None
        if force and self.frozen is not None and self.contents.base_seq > self.last_seq:
            # Recovery cut the older log, whose frozen memtable keeps what it kept: the newer
            # log holds none of it, and starts after records that are now dropped. An empty
            # log after the kept ones replaces it first, so that no state of the files on the
            # way brings them back (the older log's records after it are ignored).
            self._rotate_log()
        if self.frozen is not None:
            self.merge(sync_others, retire, locked=True)
        if not self.memtable.data and not self.cleared:
            if force:
                self._rotate_log()
            return
        self.freeze()
        self.merge(sync_others, retire, locked=True)

    def save_run(self, sync_others: Callable[[], None]) -> None:
        """A clean close's save of the memtables, instead of a merge (caller holds ``lock``
        and ``merge_lock``): the bloom filter, which holds their keys, is saved, then the newest
        entry of every key they hold is written as a run file (durably); then one empty log
        replaces the logs, whose records the run holds. The next open reads the run's header
        only, and its worker merges it. Does nothing with nothing to save.

        A crash on the way leaves the logs (before the run's rename), or the run and logs whose
        records it holds, which recovery skips. When the memtables hold part of a batch that
        spans partitions, ``sync_others`` first makes the other logs durable (as for
        :meth:`merge`). Fsyncs: the bloom filter, the run, the new log, the directory."""
        frozen = self.frozen
        if not self.memtable.data and not self.cleared and not isinstance(frozen, Memtable):
            return  # (a run from the last close is saved already)
        if self.last_seq <= self.flushed_seq:
            return  # (the tree holds it all: a merge interrupted after its commit)
        assert self.log is not None
        if self.batch_seen or (frozen is not None and self.frozen_batch):
            sync_others()
        self.save_bloom()  # (first: the bloom filter of the tree's transaction must hold the
        # run's keys as soon as the run is there; one that holds more only costs a lookup)
        if frozen is None or self.cleared:
            newest = self.memtable.data
        else:
            newest = dict(frozen.data)
            newest.update(self.memtable.data)
        write_run(
            self.fs,
            self.run_path,
            self.index,
            newest,
            cleared=self.cleared or (frozen is not None and self.frozen_cleared),
            base_seq=self.flushed_seq,
            seq=self.last_seq,
            count=self.count,
        )
        self.stale_run = False
        old, frozen_log = self.log, self.frozen_log
        self.log = self._new_log(self.log_paths[0], self.last_seq, _buffer_limit(old))
        self.contents = LogContents(self.last_seq, [], self.log.end, False)
        self.wal_path = self.log_paths[0]
        self.frozen_log = self.frozen_path = None
        try:
            other = self.log_paths[1]
            if self.fs.exists(other):
                self.fs.unlink(other)
                self.fs.sync_dir(os.path.dirname(other))
        finally:  # (their records are in the run, durably)
            for wal in (old, frozen_log):
                if wal is not None:
                    wal.retire(durable=True)

    def freeze(self) -> None:
        """Make the memtable frozen and start a new one, its records going to a new log (the
        other log file: temp, fsync, rename, fsync dir). Caller holds ``lock``; there is no
        frozen memtable yet."""
        old = self.log
        assert old is not None and self.frozen is None
        old.write_out()
        path = self.log_paths[self.log_paths[0] == self.wal_path]
        self.log = self._new_log(path, self.last_seq, _buffer_limit(old))
        self.contents = LogContents(self.last_seq, [], self.log.end, False)
        self._freeze_memory(self.wal_path)
        self.frozen_log = old
        self.wal_path = path

    def _freeze_memory(self, path: str | None) -> None:
        """The memory side of :meth:`freeze` (also recovery's, whose older log is ``path``)."""
        self.frozen = self.memtable  # before the new memtable: see peek()
        self.memtable = Memtable()
        self.frozen_cleared, self.cleared = self.cleared, False
        self.frozen_batch, self.batch_seen = self.batch_seen, False
        self.frozen_seq = self.last_seq
        self.frozen_count = self.count
        self.frozen_path = path

    def merge(
        self,
        sync_others: Callable[[], None],
        retire: Callable[[LogWriter], None],
        *,
        locked: bool = False,
    ) -> None:
        """Merge the frozen memtable into the tree, durably, then let go of it and delete its
        log (its writer, if still open, is retired and passed to ``retire``).

        The caller holds ``merge_lock`` (and ``lock`` if ``locked``: else it is taken for the
        last step only, so reads and writes go on meanwhile: the tree they read is the
        committed one, whose pages the merge does not touch). When the frozen memtable holds
        part of a batch that spans partitions, ``sync_others`` first makes the other logs
        durable: once this tree holds the batch's sequence number, recovery takes this part
        as present. Fsyncs: the tree (twice, through the pager), the bloom filter (when it
        changes) and the directory.
        """
        frozen = self.frozen
        assert frozen is not None
        if self.frozen_batch:
            sync_others()
        with collector_paused():
            keys, values = frozen.columns(None if locked else SORT_STEP)
            try:
                count = self.tree.apply_columns(
                    keys,
                    values,
                    clear=self.frozen_cleared,
                    flushed_seq=self.frozen_seq,
                    stop=None if locked else self._merge_stopped,
                )
            except MergeStopped:  # (a close: it saves the frozen memtable in a run instead)
                return
            del values
        self.spare = self.pager.spare
        if count != self.frozen_count:
            # The files disagree with each other (say, a manifest whose hash seed does not
            # match the bloom filters and trees), which no checksum can see. (The row cache
            # may hold rows that readers took from the tree before this commit.)
            if locked:
                self.tree.clear_rows()
            else:
                with self.lock:
                    self.tree.clear_rows()
            raise CorruptionError(
                f"{self.tree_path}: tree holds {count} keys after a flush, "
                f"but {self.frozen_count} were counted from the tree, log and bloom filter"
            )
        old = self.frozen_log  # (before the lock goes: a writer may freeze again at once)
        if locked:
            self._let_go(keys)
        else:
            # The rows of the changed keys go a step at a time, each under the lock: a reader
            # after the commit reads the new tree, so only rows taken before it are stale, and
            # until the frozen memtable goes it answers for these keys, not the row cache.
            for i in range(0, len(keys), ROW_STEP):
                with self.lock:
                    self.tree.drop_rows(keys[i : i + ROW_STEP])
            with self.lock:
                self._let_go(None)
        del keys
        if old is not None:
            old.retire(durable=True)
            retire(old)
        if count > self.bloom.capacity or self.frozen_cleared:
            self._regrow_bloom(count, locked)
        self.save_bloom()
        self.flushes += 1

    def _merge_stopped(self) -> bool:
        return self.closing

    def compact_due(self, ratio: float) -> bool:
        """Whether the worker should compact the tree file: a compaction is under way, or the
        last merge left at least ``ratio`` of the file's pages (and ``COMPACT_MIN_PAGES``)
        free that it did not need (free pages a merge reuses, as after a fill, do not count).
        """
        if self.compact_from is not None:
            return True
        return self.spare >= max(COMPACT_MIN_PAGES, ratio * self.pager.meta.page_count)

    def compact_step(self, *, locked: bool = False) -> bool:
        """One step of the tree file's compaction (see :class:`~halodb.btree.compact
        .Compaction`), durable; starts one if none is under way. Returns whether it is done:
        a compaction sweeps the tree in steps of ``COMPACT_STEP`` pages, again while a sweep
        rewrote anything (at most ``COMPACT_SWEEPS`` sweeps), and the last sweep's commits cut
        the file's free end.

        The caller holds ``merge_lock`` (and ``lock`` if ``locked``: else it is taken for the
        last step only, as for :meth:`merge`: once it is let go, no reader reads the tree as
        it was before the step, whose pages the next transaction may reuse). Fsyncs: the tree
        (twice, through the pager), the bloom filter (which names the tree's transaction) and
        the directory."""
        if self.compact_from is None:
            self.compact_from, self.sweep_written, self.sweeps = b"", 0, 1
        step = self.tree.compact_step(self.compact_from, COMPACT_STEP)
        self.compact_steps += 1
        self.bloom_stale = True  # (it names the tree's transaction)
        self._drop_moved_rows(step.moved, locked)
        self.sweep_written += step.written
        self.compacted_pages += step.written
        self.compact_read += step.read
        self.merged_leaves += step.merged
        if step.resume is not None:
            self.compact_from = step.resume
            return False
        if self.sweep_written and self.sweeps < COMPACT_SWEEPS:
            self.compact_from, self.sweep_written = b"", 0
            self.sweeps += 1
            return False
        self.compact_from = None
        self.spare = 0
        count = self.pager.meta.key_count
        if self.bloom.capacity > 4 * max(count + len(self.memtable.data), 1024):
            self._regrow_bloom(count, locked)  # sized for the keys that deletes left
        self.save_bloom()
        return True

    def _drop_moved_rows(self, keys: list[bytes], locked: bool) -> None:
        """The step's last part, its commit durable: the rows of ``keys``, whose overflow
        chains moved, leave the row cache, under the lock (a reader of the tree before the
        commit may have put them there). Not to be skipped: an interrupt while waiting for the
        lock waits again, and is raised after."""
        interrupted: BaseException | None = None
        while True:
            try:
                if locked:
                    self.tree.drop_rows(keys)
                else:
                    with self.lock:
                        self.tree.drop_rows(keys)
                break
            except KeyboardInterrupt as exc:
                interrupted = exc
        if interrupted is not None:
            raise interrupted

    def stop_compaction(self) -> None:
        """Forget the compaction under way (the store is closing, or failed)."""
        self.compact_from = None

    def save_bloom(self) -> None:
        """Write the bloom filter's file, naming the tree's transaction (temp, fsync, rename,
        fsync dir)."""
        self.fs.write_new(self.bloom_path, self.bloom.to_bytes(self.index, self.pager.meta.txn))
        self.bloom_stale = False

    def _let_go(self, keys: list[bytes] | None) -> None:
        """The last step of a merge, the tree durable (``lock`` held): the frozen log goes (the
        log in ``pNNN.wal2`` is renamed over it if it was ``pNNN.wal``, so that a partition
        without a frozen memtable has its log there), the row cache forgets the changed
        ``keys``' old values (``None``: the caller did), then the frozen memtable goes, and
        stalled writers are woken."""
        self._drop_frozen_log()
        self.frozen_log = None  # (its writer stays attached, and closed at close, until here)
        if keys is not None:
            self.tree.drop_rows(keys)
        self.frozen = None
        if self.on_let_go is not None:
            self.on_let_go()
        self.cond.notify_all()

    def _drop_frozen_log(self) -> None:
        """Delete the frozen memtable's log (its records are in the durable tree): the log in
        ``pNNN.wal2`` is renamed over it if it is ``pNNN.wal``. A run file goes the same way
        (kept by a crash, it is stale: the tree holds its ``seq``)."""
        if isinstance(self.frozen, Run) and self.fs.exists(self.run_path):
            self.fs.unlink(self.run_path)
        path = self.frozen_path
        if path is not None:
            if path == self.log_paths[0] and self.log is not None:
                self.fs.rename_open(self.log.file, path)
                self.wal_path = path
            else:
                self.fs.unlink(path)
        self.frozen_path = None

    def _regrow_bloom(self, count: int, locked: bool) -> None:
        """Replace the bloom filter by one sized for ``count`` keys and more, built from the
        tree and the memtables. Without ``locked`` it is built without the lock: meanwhile new
        keys go to it as well (``bloom_next``)."""
        self.bloom_rebuilds += 1
        fresh = BloomFilter.for_keys(
            max(2 * (count + len(self.memtable.data) + len(self.frozen or ())), 1024),
            self.bloom_bits_per_key,
        )
        if not locked:
            with self.lock:
                self.bloom_next = fresh
                live = self._live_in_memory()
        else:
            live = self._live_in_memory()
        try:
            self._fill_bloom(fresh, live, tree=True)
        except BaseException:
            if not locked:
                with self.lock:
                    self.bloom_next = None
            raise
        if locked:
            self.bloom = fresh
        else:
            with self.lock:  # one step: a key added meanwhile is in both filters
                self.bloom = fresh
                self.bloom_next = None

    def _live_in_memory(self) -> list[bytes]:
        """The keys with a live value in the memtable or the frozen one (a writer may have
        frozen the memtable again since the merge let go of the last one)."""
        tables = [self.memtable] if self.frozen is None else [self.frozen, self.memtable]
        return [key for table in tables for key, value in table.data.items() if value is not None]

    def _new_log(self, path: str, base_seq: int, buffer_limit: int | None) -> LogWriter:
        """Replace the log in ``path`` by an empty one newer than ``base_seq`` (temp, fsync,
        rename, fsync dir) and return its writer."""
        self.fs.write_new(path, header_bytes(self.index, base_seq))
        handle = self.fs.open(path, write=True)
        try:
            return LogWriter(handle, handle.size(), buffer_limit=buffer_limit)
        except BaseException:
            handle.close()
            raise

    def _rotate_log(self) -> None:
        assert self.log is not None
        old = self.log
        self.log = self._new_log(self.wal_path, self.last_seq, _buffer_limit(old))
        self.contents = LogContents(self.last_seq, [], self.log.end, False)
        old.retire(durable=True)

    # -- inspection --------------------------------------------------------------------------

    def all_keys(self) -> Iterator[bytes]:
        """Every key the partition holds, live or tombstoned, in the tree and the memtables
        (unordered, a key maybe more than once)."""
        if not self.cleared and not (self.frozen is not None and self.frozen_cleared):
            yield from self.tree.iter_keys()
        if self.frozen is not None and not self.cleared:
            yield from self.frozen.data
        yield from self.memtable.data

    def stats(self) -> PartitionStats:
        """This partition's counters."""
        meta = self.pager.meta
        frozen = self.frozen
        return PartitionStats(
            index=self.index,
            keys=self.count,
            memtable_entries=len(self.memtable.data),
            memtable_bytes=self.memtable.size,
            wal_bytes=self.log.end if self.log else self.contents.valid_end,
            tree_height=meta.height,
            tree_keys=meta.key_count,
            pages=meta.page_count,
            free_pages=len(self.pager.free),
            cache_hits=self.pager.stats.cache_hits,
            cache_misses=self.pager.stats.cache_misses,
            bloom_negatives=self.bloom_negatives,
            bloom_rebuilds=self.bloom_rebuilds,
            flushes=self.flushes,
            recovery_seconds=self.recovery_seconds,
            cache_bytes=self.pager.cache_bytes,
            row_cache_bytes=self.tree.row_cache_bytes(),
            file_bytes=self.pager.file.size()
            + sum(map(self.fs.size_of, (*self.log_paths, self.bloom_path, self.run_path))),
            live_bytes=self.pager.page_size
            * (meta.page_count - META_PAGES - meta.free_count - len(self.pager.freelist_pages)),
            frozen_entries=0 if frozen is None else len(frozen),
            frozen_bytes=0 if frozen is None else frozen.size,
            stalls=self.stalls,
            stall_seconds=self.stall_seconds,
            compact_steps=self.compact_steps,
            compacted_pages=self.compacted_pages,
        )

    def check(self) -> TreeReport:
        """Verify the tree, the logs on disk, the bloom filter and the key count (caller holds
        ``lock`` and ``merge_lock``).

        Raises :class:`CorruptionError` naming the file and place.
        """
        report = self.tree.check()
        if self.log is not None:
            self.log.write_out()
        for path in (self.frozen_path, self.wal_path):
            if path is not None:
                handle = self.fs.open(path)
                try:
                    read_log(handle.read_all(), self.index, path)
                finally:
                    handle.close()
        tree_gone = self.cleared or (self.frozen is not None and self.frozen_cleared)
        if not tree_gone:
            seed = self.seed
            might = self.bloom.might_contain
            for key in self.tree.iter_keys():
                if not might(key_hash(key, seed)):
                    raise CorruptionError(
                        f"{self.bloom_path}: bloom filter misses a key the tree holds"
                    )
        live = self._count_layers(0 if tree_gone else report.keys, tree_gone)
        if live != self.count:
            raise CorruptionError(
                f"partition {self.index}: {live} live keys found, {self.count} counted"
            )
        return report

    def _count_layers(self, live: int, tree_gone: bool) -> int:
        """``live`` (the tree's keys) counted up through the memtables, bottom up; checks that
        the bloom filter holds each live key."""
        seed = self.seed
        might = self.bloom.might_contain
        # The frozen memtable (unless cleared) goes first.
        layers: list[Memtable | Run] = [self.memtable]
        if self.frozen is not None and not self.cleared:
            layers.insert(0, self.frozen)
        below: dict[bytes, bytes | None] = {}
        for table in layers:
            for key, value in table.data.items():
                if key in below:
                    was = below[key] is not None
                else:
                    was = not tree_gone and self.tree.contains(key)
                if value is None:
                    live -= was
                    continue
                live += not was
                if not might(key_hash(key, seed)):
                    raise CorruptionError(
                        f"{self.bloom_path}: bloom filter misses a key a memtable holds"
                    )
            below.update(table.data)
        return live

    def close(self, *, clean_seq: int | None = None, write_out: bool = True) -> None:
        """Close the files. With ``clean_seq`` (the caller just flushed) the log gets a close
        record under that sequence number, fsynced: from then on any byte added to the log is
        damage, not a torn tail. Without ``write_out`` records still buffered are dropped (after
        a failed write, which they may have been part of)."""
        log = self.log
        self.log = None
        if self.frozen_log is not None:  # (closed before its merge: recovery replays it)
            self.frozen_log.retire(durable=False)
            self.frozen_log = None
        try:
            if clean_seq is not None and self.bloom_stale:
                self.save_bloom()  # (a compaction stopped part-way)
            if clean_seq is not None:
                self.pager.give_back()  # (the merges' free pages, till the next open reuses them)
            if log is not None:
                if clean_seq is not None:
                    log.append(frame(fmt.REC_CLOSE, clean_seq, b""))
                if write_out:
                    log.write_out()
                if clean_seq is not None:
                    log.sync_to(log.written)
        finally:
            if log is not None:
                log.retire(durable=False)
            self.pager.close()

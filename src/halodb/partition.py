"""One hash partition: its log, memtable, bloom filter and tree; knows nothing of other partitions.

Write path: a framed record is appended to the log (handed to the OS, or buffered in FAST mode),
then the memtable takes the entries and the bloom filter the keys. Read path: the memtable; the
tree's row cache (entries of recently decoded leaves and looked-up keys: a hit is one hash
lookup); the bloom filter, whose negative answer skips the tree; then the tree, through its node
cache.
:meth:`Partition.flush` merges the memtable into the tree (durable through the pager's commit),
saves the bloom filter, and only then replaces the log by an empty one: the log is never cut
before the tree holding its records is durable.

Every method except ``__init__`` and ``peek`` expects the caller (the engine) to hold
``lock``; ``peek`` is the lock-free first try of a get (see there).
The partition keeps an exact count of its live keys, so the store's ``len()`` never scans.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from itertools import repeat

from halodb import format as fmt
from halodb.bloom import BloomFilter, read_filter
from halodb.btree import BTree
from halodb.collector import collector_paused
from halodb.errors import CorruptionError
from halodb.hashing import key_hash
from halodb.memtable import MISSING, Memtable
from halodb.pager import Pager
from halodb.reports import PartitionStats, TreeReport
from halodb.vfs import FileSystem
from halodb.wal import Entry, LogContents, LogWriter, Record, frame, header_bytes, read_log

log = logging.getLogger(__name__)


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
        self.tree_path = os.path.join(directory, fmt.partition_file(index, "tree"))
        self.wal_path = os.path.join(directory, fmt.partition_file(index, "wal"))
        self.bloom_path = os.path.join(directory, fmt.partition_file(index, "bloom"))
        for path in (self.tree_path, self.wal_path):
            if not fs.exists(path):
                raise CorruptionError(f"{path}: file is missing")
        self.pager = Pager(fs, self.tree_path, index, page_size, cache_pages, readonly)
        self.tree = BTree(self.pager)
        self.memtable = Memtable()
        self.cleared = False
        """The tree's contents are logically gone (a clear not yet flushed)."""
        self.log: LogWriter | None = None
        self.batch_seen = False
        """The memtable holds part of a batch that spans partitions (see ``Engine.flush_part``)."""
        self.epoch = 0
        """Odd while a batch is being applied to the memtable, one entry at a time; changed by
        each batch. A reader without the lock (:meth:`peek`) trusts what it read only if the
        epoch was even and the same before and after."""
        self.bloom_negatives = 0
        self.bloom_rebuilds = 0
        self.flushes = 0
        try:
            handle = fs.open(self.wal_path)
            try:
                data = handle.read_all()
            finally:
                handle.close()
            self.contents: LogContents = read_log(data, index, self.wal_path)
            flushed = self.pager.meta.flushed_seq
            if self.contents.base_seq > flushed:
                raise CorruptionError(
                    f"{self.wal_path}: log follows sequence {self.contents.base_seq} but the tree "
                    f"only holds writes up to {flushed}: the tree's newest meta page is damaged"
                )
            self.count = self.pager.meta.key_count
            self.last_seq = flushed
            self.bloom = self._load_bloom()
        except BaseException:
            self.pager.close()
            raise
        self.recovery_seconds = time.perf_counter() - started

    @property
    def flushed_seq(self) -> int:
        """The newest sequence number the tree holds."""
        return self.pager.meta.flushed_seq

    # -- opening -----------------------------------------------------------------------------

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
        return self._rebuild_bloom(save=False)

    def _rebuild_bloom(self, *, save: bool) -> BloomFilter:
        self.bloom_rebuilds += 1
        bloom = BloomFilter.for_keys(max(2 * self.count, 1024), self.bloom_bits_per_key)
        seeds = repeat(self.seed)
        if not self.cleared:
            for keys in self.tree.iter_key_runs():
                bloom.add_all(map(key_hash, keys, seeds))
        live = [key for key, value in self.memtable.data.items() if value is not None]
        bloom.add_all(map(key_hash, live, seeds))
        self.bloom = bloom
        if save and not self.readonly:
            self.fs.write_new(self.bloom_path, bloom.to_bytes(self.index, self.pager.meta.txn))
        return bloom

    def replay(self, records: Sequence[Record]) -> None:
        """Apply recovered log records (already approved by recovery) to the memtable."""
        started = time.perf_counter()
        for record in records:
            self.apply(
                record.entries,
                record.seq,
                clear=bool(record.flags & fmt.FLAG_CLEAR),
                batch=record.rtype == fmt.REC_BATCH,
            )
        self.recovery_seconds += time.perf_counter() - started

    def open_log(self, buffer_limit: int | None) -> None:
        """Start appending to the log after its last good record, cutting a torn tail (fsynced);
        or, after a clean close, to a fresh log (written as temp, fsync, rename, fsync dir)."""
        if self.readonly:
            return
        records = self.contents.records
        if records and records[-1].rtype == fmt.REC_CLOSE and not self.memtable.data:
            # Cleanly closed, everything in the tree: start a fresh log rather than write
            # after the close record (after which a torn write would read as damage).
            self.log = self._new_log(self.flushed_seq, buffer_limit)
            self.contents = LogContents(self.flushed_seq, [], self.log.end, False)
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
        to them keeps a reader in that order right: a put or delete is one dict store; a flush
        drops each key it changed from the row cache before it empties the memtable, and resets
        ``cleared`` first; a new bloom filter replaces the old one whole.
        """
        value = self.memtable.data.get(key, MISSING)
        if value is not MISSING:
            return value
        if self.cleared:
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
        if self.cleared or not self.bloom.might_contain(h):
            return False
        return self.tree.contains(key)

    def scan(
        self, lo: bytes | None, hi: bytes | None, reverse: bool, limit: int
    ) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` live ``(key, value)`` in ``[lo, hi)``, ascending or descending."""
        out: list[tuple[bytes, bytes]] = []
        data = self.memtable.data
        mem = self.memtable.keys(lo, hi, reverse=reverse)
        mkey = next(mem, None)
        if mkey is None:  # nothing recent in range: the tree alone
            if self.cleared:
                return out
            for items in self.tree.iterate_leaves(lo, hi, reverse=reverse):
                out += items
                if len(out) >= limit:
                    del out[limit:]
                    break
            return out
        disk: Iterator[tuple[bytes, bytes]] = (
            iter(()) if self.cleared else self.tree.iterate(lo, hi, reverse=reverse)
        )
        dkv = next(disk, None)
        while len(out) < limit and (mkey is not None or dkv is not None):
            if dkv is None or (
                mkey is not None and (mkey >= dkv[0] if reverse else mkey <= dkv[0])
            ):
                assert mkey is not None
                if dkv is not None and dkv[0] == mkey:
                    dkv = next(disk, None)
                value = data[mkey]
                if value is not None:
                    out.append((mkey, value))
                mkey = next(mem, None)
            else:
                out.append(dkv)
                dkv = next(disk, None)
        return out

    # -- writes ------------------------------------------------------------------------------

    def put(self, key: bytes, value: bytes, h: tuple[int, int], seq: int) -> None:
        """Apply one logged put to the memtable, bloom filter and key count."""
        old = self.memtable.put(key, value)
        if old is MISSING:  # new to the memtable: new to the store unless the tree has it
            if not self.bloom.add(h) or self.cleared or not self.tree.contains(key):
                self.count += 1
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
        tree = self.tree
        for key, value in entries:
            h = key_hash(key, seed)
            old = put(key, value)
            # Whether the key was live before: the memtable's answer, else the tree's (asked
            # only if the bloom filter may hold it; contains(), inlined as put() does).
            if value is not None:
                seen = bloom.add(h)
                if old is MISSING:
                    self.count += not (seen and not cleared and tree.contains(key))
                else:
                    self.count += old is None
            elif old is MISSING:
                self.count -= not cleared and bloom.might_contain(h) and tree.contains(key)
            else:
                self.count -= old is not None
        self.last_seq = seq

    def flush(self, *, force: bool = False) -> None:
        """Merge the memtable into the tree, then replace the log by an empty one.

        With nothing to merge, does nothing unless ``force`` (then the log is still replaced,
        dropping records that recovery decided not to apply). Fsyncs: the tree (twice, through
        the pager), the bloom filter and the new log, each written as temp, fsync, rename,
        fsync directory.
        """
        assert self.log is not None
        if not self.memtable.data and not self.cleared:
            if force:
                self._rotate_log()
            return
        self.log.write_out()
        with collector_paused():
            keys, values = self.memtable.columns()
            cleared = self.cleared
            count = self.tree.apply_columns(keys, values, clear=cleared, flushed_seq=self.last_seq)
            del keys, values  # freed before the collector resumes (its next run would walk them)
        if count != self.count:
            # The files disagree with each other (say, a manifest whose hash seed does not
            # match the bloom filters and trees), which no checksum can see.
            raise CorruptionError(
                f"{self.tree_path}: tree holds {count} keys after a flush, "
                f"but {self.count} were counted from the tree, log and bloom filter"
            )
        self.cleared = False  # before the memtable empties: see peek()
        self.memtable.clear()
        if cleared or count > self.bloom.capacity:
            self._rebuild_bloom(save=False)
        self.fs.write_new(self.bloom_path, self.bloom.to_bytes(self.index, self.pager.meta.txn))
        self._rotate_log()
        self.batch_seen = False
        self.flushes += 1

    def _new_log(self, base_seq: int, buffer_limit: int | None) -> LogWriter:
        """Replace the log by an empty one newer than ``base_seq`` (temp, fsync, rename, fsync
        dir) and return its writer."""
        self.fs.write_new(self.wal_path, header_bytes(self.index, base_seq))
        handle = self.fs.open(self.wal_path, write=True)
        try:
            return LogWriter(handle, handle.size(), buffer_limit=buffer_limit)
        except BaseException:
            handle.close()
            raise

    def _rotate_log(self) -> None:
        assert self.log is not None
        old = self.log
        self.log = self._new_log(self.last_seq, None if old.buffer is None else old.buffer_limit)
        old.retire(durable=True)

    # -- inspection --------------------------------------------------------------------------

    def all_keys(self) -> Iterator[bytes]:
        """Every key the partition holds, live or tombstoned, tree and memtable (unordered)."""
        if not self.cleared:
            yield from self.tree.iter_keys()
        yield from self.memtable.data

    def stats(self) -> PartitionStats:
        """This partition's counters."""
        meta = self.pager.meta
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
        )

    def check(self) -> TreeReport:
        """Verify the tree, the log on disk, the bloom filter and the key count.

        Raises :class:`CorruptionError` naming the file and place.
        """
        report = self.tree.check()
        if self.log is not None:
            self.log.write_out()
        handle = self.fs.open(self.wal_path)
        try:
            read_log(handle.read_all(), self.index, self.wal_path)
        finally:
            handle.close()
        seed = self.seed
        might = self.bloom.might_contain
        if not self.cleared:
            for key in self.tree.iter_keys():
                if not might(key_hash(key, seed)):
                    raise CorruptionError(
                        f"{self.bloom_path}: bloom filter misses a key the tree holds"
                    )
        live = 0 if self.cleared else report.keys
        for key, value in self.memtable.data.items():
            in_tree = not self.cleared and self.tree.contains(key)
            if value is None:
                live -= in_tree
            else:
                live += not in_tree
                if not might(key_hash(key, seed)):
                    raise CorruptionError(
                        f"{self.bloom_path}: bloom filter misses a key the memtable holds"
                    )
        if live != self.count:
            raise CorruptionError(
                f"partition {self.index}: {live} live keys found, {self.count} counted"
            )
        return report

    def close(self, *, clean_seq: int | None = None, write_out: bool = True) -> None:
        """Close the files. With ``clean_seq`` (the caller just flushed) the log gets a close
        record under that sequence number, fsynced: from then on any byte added to the log is
        damage, not a torn tail. Without ``write_out`` records still buffered are dropped (after
        a failed write, which they may have been part of)."""
        log = self.log
        self.log = None
        try:
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

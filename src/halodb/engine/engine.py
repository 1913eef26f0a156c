"""The engine: a store directory of N hash partitions; knows nothing of Python types.

It opens the store (:mod:`~halodb.engine.directory`: lock and manifest;
:mod:`~halodb.engine.recovery`: which logged records apply), routes each encoded key to its
partition (:mod:`halodb.hashing`), hands out the store-wide sequence numbers, runs the hot paths
(get, put, delete), commits batches across partitions (:mod:`~halodb.engine.commit`), merges
the partitions' ordered scans (:mod:`~halodb.engine.scan`), flushes, syncs and closes; the hooks
of :mod:`~halodb.engine.process` close it at exit and forget it in a forked child. A full
memtable is frozen and merged into its tree by the store's :mod:`~halodb.engine.worker` (or, with
``background=False``, by the write that filled it).

Locking: one lock per partition; operations on one key take one lock, batches take several in
index order, ``close`` takes all. Each partition also has a merge lock, held through a merge of
its frozen memtable and always taken before the partition's lock: the worker holds it alone
while it merges (taking the partition's lock for the last step only); ``flush``, ``check`` and
``close`` take both.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, suppress
from functools import partial
from typing import TypeVar

from halodb import format as fmt
from halodb.btree import limits
from halodb.collector import collector_paused
from halodb.engine import process, recovery
from halodb.engine.commit import LogSync, apply_parts, group, log_parts
from halodb.engine.directory import Directory
from halodb.engine.scan import SCAN_CHUNK, Columns, chunks, first_chunk, merge, take
from halodb.engine.worker import Worker
from halodb.errors import CorruptionError, Error, OperationalError, ProgrammingError
from halodb.hashing import key_hash, route
from halodb.memtable import MISSING
from halodb.options import Durability, Options, memtable_limit
from halodb.partition import Partition
from halodb.reports import CompactReport, StoreStats, TreeReport
from halodb.vfs import FileSystem
from halodb.wal import Entry, LogWriter, encode_entries, frame, frame_put

log = logging.getLogger(__name__)

T = TypeVar("T")


class Abandoned(Exception):
    """The failure recorded by :meth:`Engine.abandon`."""


class Engine:
    """N partitions under one directory. See the module docstring."""

    def __init__(
        self, path: str, options: Options, codec: str, fs: FileSystem | None = None
    ) -> None:
        self.fs = fs = fs or FileSystem()
        self.path = path = os.path.abspath(path)
        self.options = options
        self.readonly = options.readonly
        self.closed = False
        self.failure: BaseException | None = None
        self.logs = LogSync()
        """FULL mode: which logs must be durable before a record of another is acknowledged."""
        self.pid = os.getpid()
        started = time.perf_counter()
        self.directory = Directory(fs, path)
        self.durability = options.durability
        self.full = options.durability is Durability.FULL
        self.parts: list[Partition] = []
        self.manifest = m = self.directory.open(options, codec)
        self.memtable_limit = memtable_limit(options.memtable_size, m.partitions)
        self.log_limit = 2 * self.memtable_limit
        """Overwrites grow a log but not its memtable: past this size the partition is flushed
        anyway, which bounds recovery time."""
        try:
            self.seed = m.hash_seed
            self.page_size = m.page_size
            self.max_key, _ = limits(m.page_size)
            # Reading the logs makes an object or more per record, which would set off the
            # cyclic collector again and again over a growing heap (twice the time of a
            # replay): it is paused, as for a merge (the objects make no cycles).
            with collector_paused():
                self.parts = recovery.open_partitions(
                    fs, path, m.partitions, m.page_size, m.hash_seed, options
                )
                next_seq = self._recover()
            merges = options.background and not self.readonly
            for part in self.parts:
                part.limit = self.memtable_limit
                part.run_due = merges  # (a run the last close left: the worker merges it now)
            self.sequence = itertools.count(next_seq)
            """The store-wide sequence numbers: ``next()`` hands out the next one."""
            if m.version < fmt.FORMAT_VERSION and not self.readonly:
                self.manifest = self.directory.upgrade(m)  # only once all else checked out
        except BaseException:
            for part in self.parts:
                with suppress(Exception):
                    part.close()
            self.directory.fail_open()
            raise
        self.directory.creation = None  # the store is open: a later failure removes nothing
        self.recovery_seconds = time.perf_counter() - started
        self.worker: Worker | None = None
        if options.background and not self.readonly:
            self.worker = Worker(
                f"halodb merge {os.path.basename(path)}",
                self.parts,
                self.merge_part,
                self.fail,
                None if options.compact_threshold is None else self.compact_due,
                self.compact_part,
            )
            if any(part.merge_due() for part in self.parts):
                self.worker.wake()  # a run the last close left, or a merge a crash interrupted
        process.register(self)

    # -- opening -----------------------------------------------------------------------------

    def _recover(self) -> int:
        """Replay what the logs hold (see :mod:`halodb.engine.recovery`), open the logs for
        appending, and return the next sequence number."""
        plan = recovery.plan(recovery.log_states(self.parts), self.max_key)
        fast = self.options.durability is Durability.FAST
        recovery.replay(self.parts, plan, self.options.fast_buffer_size if fast else None)
        if plan.dropped:
            log.warning(
                "%s: dropped %d records of partitions %s, from the first part of a batch that a "
                "crash interrupted on",
                self.path,
                plan.dropped,
                plan.cut,
            )
            if not self.readonly:
                # Replace the logs that hold dropped records (after flushing what they keep),
                # so that the decision cannot change later.
                for index in plan.cut:
                    with self.parts[index].lock:
                        self.flush_part(self.parts[index], force=True)
        return plan.next_seq

    # -- guards ------------------------------------------------------------------------------

    def check_open(self) -> None:
        """Raise :class:`ProgrammingError` if the store is closed or used after ``fork()``."""
        if self.pid != os.getpid():
            raise ProgrammingError(
                f"{self.path}: store was opened in process {self.pid}; a forked child must "
                "open the store itself"
            )
        if self.closed:
            raise ProgrammingError(f"{self.path}: store is closed")

    def _guard(self) -> None:
        """Raise at once if closed, or in a forked child (before any lock is taken: another
        thread of the parent may have held it at the fork, and never will release it here)."""
        if self.closed:
            self.check_open()

    def _check_writable(self) -> None:
        self.check_open()
        if self.readonly:
            raise ProgrammingError(f"{self.path}: store is open read-only")
        if self.failure is not None:
            raise OperationalError(
                f"{self.path}: store refuses writes after a failure "
                f"({str(self.failure) or type(self.failure).__name__}); close and reopen it"
            ) from self.failure

    def fail(self, exc: BaseException) -> None:
        """Record a failure: from now on the store refuses writes, and ``close`` merges
        nothing (the logs keep every write; the next open replays them)."""
        if self.failure is None:
            self.failure = exc
            reason = str(exc) or type(exc).__name__
            log.error("%s: refusing further writes after a failure: %s", self.path, reason)

    # -- routing and reads -------------------------------------------------------------------

    def part_of(self, key: bytes) -> tuple[Partition, tuple[int, int]]:
        """The partition of an encoded key, and the key's hash."""
        h = key_hash(key, self.seed)
        return self.parts[route(h, len(self.parts))], h

    def get(self, key: bytes) -> bytes | None:
        """The encoded value of ``key``, or ``None``.

        Tried without the partition's lock first (``Partition.peek``): a read of the memtable,
        the row cache or the bloom filter alone waits for no flush. It is trusted only if no
        batch was being applied to the partition meanwhile (its ``epoch`` even and unchanged),
        so a batch is still seen whole or not at all."""
        h = key_hash(key, self.seed)
        part = self.parts[(h[1] >> 32) % len(self.parts)]  # route(), inlined: the hot path
        if self.closed:  # also after fork(), where another thread may have held the lock
            self.check_open()
        epoch = part.epoch
        if not epoch & 1:
            value = part.peek(key, h)
            if value is not MISSING and part.epoch == epoch:
                return value  # type: ignore[return-value]
        with part.lock:
            if self.closed:
                self.check_open()
            return part.get(key, h)

    def contains(self, key: bytes) -> bool:
        """Whether ``key`` is live."""
        self._guard()
        part, h = self.part_of(key)
        with part.lock:
            self.check_open()
            return part.contains(key, h)

    def __len__(self) -> int:
        self._guard()
        with ExitStack() as stack:
            for part in self.parts:
                stack.enter_context(part.lock)
            self.check_open()
            return sum(p.count for p in self.parts)

    def scan_batches(
        self,
        lo: bytes | None,
        hi: bytes | None,
        *,
        reverse: bool = False,
        chunk: int = SCAN_CHUNK,
        limit: int | None = None,
    ) -> Iterator[Columns]:
        """Live keys in ``[lo, hi)`` across partitions, in key order, and their values, lazily,
        as lists of keys and of values (each chunk in order and after the one before, so a
        caller can process whole lists in one go); at most ``limit`` of them, and no
        partition reads more than that.

        A write made after a partition's chunk was read shows up only if its key lies ahead of
        where that chunk ended (see :mod:`halodb.engine.scan`).
        """
        self._guard()
        self.check_open()
        first = first_chunk(limit, len(self.parts))
        sources = [
            chunks(p, lo, hi, reverse, chunk, self._guard, self.check_open, first, limit)
            for p in self.parts
        ]
        stream = sources[0] if len(sources) == 1 else merge(sources, reverse)
        return stream if limit is None else take(stream, limit)

    # -- writes ------------------------------------------------------------------------------

    def put(self, key: bytes, value: bytes) -> None:
        """Store ``value`` under ``key``; durable as the store's durability mode says."""
        h = key_hash(key, self.seed)
        part = self.parts[(h[1] >> 32) % len(self.parts)]  # route(), inlined: the hot path
        if self.closed:  # also after fork(), where another thread may have held the lock
            self.check_open()
        with part.lock:
            if self.closed or self.failure is not None or self.readonly:
                self._check_writable()
            if part.frozen is not None and self._over(part):
                self._full(part)  # a stall, before this write is applied (see _full)
            # _write_locked, inlined for a put: the hot path of every single put
            wal = part.log
            assert wal is not None
            seq = next(self.sequence)
            try:
                end = wal.append(frame_put(seq, key, value))
            except OperationalError as exc:
                self.fail(exc)
                raise
            try:
                part.put(key, value, h, seq)
            except BaseException as exc:  # logged, not counted: see commit()
                self.fail(exc)
                raise
            if part.memtable.size > part.limit or wal.end > self.log_limit:
                self._full(part, wait=False)
        if self.full:
            self._sync(wal, end)

    def delete(self, key: bytes, *, want_value: bool = False) -> tuple[bool, bytes | None]:
        """Delete ``key`` if live; returns whether it was, and (if asked) its old value."""
        self._guard()
        part, h = self.part_of(key)
        with part.lock:
            self._check_writable()
            self._room(part)
            old = part.get(key, h) if want_value else None
            if not (old is not None if want_value else part.contains(key, h)):
                return False, None
            wal, end = self._write_locked(part, key, None, h)
        if self.full:
            self._sync(wal, end)
        return True, old

    def put_if_absent(self, key: bytes, value: bytes) -> bytes | None:
        """Store ``value`` unless ``key`` is live; returns the live value, or ``None`` if stored."""
        self._guard()
        part, h = self.part_of(key)
        with part.lock:
            self._check_writable()
            self._room(part)
            old = part.get(key, h)
            if old is not None:
                return old
            wal, end = self._write_locked(part, key, value, h)
        if self.full:
            self._sync(wal, end)
        return None

    def _write_locked(
        self, part: Partition, key: bytes, value: bytes | None, h: tuple[int, int]
    ) -> tuple[LogWriter, int]:
        """Log and apply one put (or delete of a live key, ``value`` None) with ``part.lock``
        held, after :meth:`_room`; freeze the memtable if it is full. Returns the log and the
        offset to sync to."""
        wal = part.log
        assert wal is not None
        seq = next(self.sequence)
        try:
            if value is None:
                end = wal.append(frame(fmt.REC_WRITE, seq, encode_entries(0, [(key, None)])))
            else:
                end = wal.append(frame_put(seq, key, value))
        except OperationalError as exc:
            self.fail(exc)
            raise
        try:
            if value is None:
                part.delete(key, seq)  # the caller checked the key is live
            else:
                part.put(key, value, h, seq)
        except BaseException as exc:  # logged, not counted: see commit()
            self.fail(exc)
            raise
        if part.memtable.size > part.limit or wal.end > self.log_limit:
            self._full(part, wait=False)
        return wal, end

    def _make_room(self, parts: list[Partition]) -> None:
        """:meth:`_room` in each of ``parts`` that needs it, before a batch takes their locks:
        one lock at a time (a stall must hold no other partition's lock)."""
        for part in parts:
            if part.frozen is not None and self._over(part):  # (a hint: checked again locked)
                with part.lock:
                    self._check_writable()
                    self._room(part)

    def _room(self, part: Partition) -> None:
        """Before a write to ``part`` (its lock held, and no other): if its memtable is full
        and the frozen one is still merging, wait for the merge (a stall), so that the write is
        applied whole or, if the store is closed or fails meanwhile, not at all."""
        if part.frozen is not None and self._over(part):
            self._full(part)

    def commit(self, changes: dict[bytes, bytes | None], *, clear: bool = False) -> None:
        """Apply ``changes`` (``None``: delete) atomically across partitions, after clearing the
        whole store when ``clear``. All visible and durable together, or none of it."""
        groups = group(changes, self.seed, len(self.parts), clear=clear)
        if not groups:
            return
        self._guard()
        parts = [self.parts[i] for i in sorted(groups)]
        self._make_room(parts)
        with ExitStack() as stack:
            for part in parts:
                stack.enter_context(part.lock)
            self._check_writable()
            seq = next(self.sequence)
            logged = self._log_batch(parts, groups, seq, clear=clear)
            try:
                if self.full and len(parts) > 1:
                    self.logs.note_batch(logged)
                apply_parts(parts, groups, seq, clear=clear)
            except BaseException as exc:
                # Logged whole but not applied, or applied in part (a read of the tree failed,
                # or an interrupt): memory no longer matches the logs, so nothing more is
                # written (a flush could make the half permanent). Reopening replays the logs.
                self.fail(exc)
                raise
            full = [part for part in parts if self._over(part)]
        for part in full:  # one lock at a time: a stall must hold no other partition's lock
            with part.lock:
                if not self.closed and self.failure is None and self._over(part):
                    self._full(part, wait=False)
        if self.full:
            for wal, end in logged:
                self._sync(wal, end)

    def _over(self, part: Partition) -> bool:
        """Whether ``part``'s memtable or log is past its limit (caller holds its lock)."""
        wal = part.log
        return part.memtable.size > part.limit or (wal is not None and wal.end > self.log_limit)

    def _log_batch(
        self, parts: list[Partition], groups: dict[int, list[Entry]], seq: int, *, clear: bool
    ) -> list[tuple[LogWriter, int]]:
        """:func:`~halodb.engine.commit.log_parts`, recording a failure that leaves the logs
        unusable."""
        try:
            return log_parts(parts, groups, seq, clear=clear)
        except OperationalError as exc:
            self.fail(exc)
            raise
        except BaseException as exc:
            # Interrupted (KeyboardInterrupt, ...) with some parts maybe in their logs: no
            # later record may follow them, since recovery drops such a batch and cuts its
            # partitions' logs there (their later writes would go with it).
            if len(parts) > 1:
                self.fail(exc)
            raise

    def _sync(self, wal: LogWriter, end: int) -> None:
        """Make ``wal`` durable up to ``end`` (FULL mode, and ``sync()``), with the parts of
        batches in other logs that its records depend on (see :class:`LogSync`)."""
        try:
            self.logs.sync(wal, end)
        except OperationalError as exc:
            self.fail(exc)
            raise

    def _full(self, part: Partition, *, wait: bool = True) -> None:
        """``part``'s memtable (or log) is full (caller holds its lock): freeze it and have it
        merged. If the frozen one is still merging, a write waits for it first: a stall,
        counted in ``stats()``. Without ``wait`` (after a write is applied) the memtable stays
        full instead, and the next write stalls before it is applied (:meth:`_room`): a
        write that a close or failure ends while it waits is then refused whole, never applied
        and refused."""
        try:
            if part.frozen is not None and not self._frozen_gone(part, wait):
                return
            part.freeze()
        except OperationalError as exc:
            self.fail(exc)
            raise
        if self.full and part.frozen_log is not None and part.log is not None:
            # A record of the new log is acknowledged only once the frozen one is durable
            # too: a power cut that took the frozen log's tail would drop the new log's records.
            self.logs.follow(part.log, part.frozen_log, part.frozen_log.written)
        if self.worker is None:
            self._merge_locked(part)
        else:
            self.worker.wake()

    def _frozen_gone(self, part: Partition, wait: bool) -> bool:
        """Before ``part``'s memtable can freeze: merge its frozen one (no worker), or wait
        for the worker's merge (``wait``). Whether the memtable is to freeze now."""
        if self.worker is None:
            self._merge_locked(part)  # (left by recovery, or by an interrupted merge)
            return True
        if not wait:
            return False
        self._stall(part)
        return self._over(part)  # (else a writer that waited too froze it meanwhile)

    def _stall(self, part: Partition) -> None:
        """Wait (``part``'s lock released meanwhile; the caller holds no other partition's
        lock, which the merge may need) until its frozen memtable is merged."""
        started = time.perf_counter()
        part.stalls += 1
        if self.worker is not None:
            self.worker.wake()  # (a frozen memtable an interrupted flush left: nobody else will)
        try:
            while part.frozen is not None:
                self._check_writable()  # a failed worker, or a close, ends the wait
                part.cond.wait(0.05)
            self._check_writable()  # (closed or failed while the lock was let go)
        finally:
            part.stall_seconds += time.perf_counter() - started

    def _sync_others(self, part: Partition) -> None:
        """Make every other partition's logs durable up to what they handed to the OS (before
        a tree holding part of a batch commits; see :meth:`Partition.merge`). Syncing a log
        takes no partition lock, only the log's own, so no lock order is broken."""
        for other in self.parts:
            if other is not part:
                for wal in (other.log, other.frozen_log):
                    if wal is not None:
                        wal.sync_to(wal.written)

    def _merge_locked(self, part: Partition) -> None:
        """Merge ``part``'s frozen memtable with its lock held (no worker, or a flush)."""
        self._guarded_merge(part, locked=True)

    def merge_part(self, index: int) -> None:
        """Merge partition ``index``'s frozen memtable, if any (the worker's step): under its
        merge lock, its own lock taken for the last step only."""
        part = self.parts[index]
        with part.merge_lock:
            if part.frozen is None or self.closed or self.failure is not None:
                return
            self._guarded_merge(part, locked=False)
        with part.lock:
            # The write that filled the memtable during the merge left it full (it does not
            # wait: see _full): it freezes now, not at the next write, which may never come.
            open_ = not self.closed and self.failure is None
            if open_ and part.frozen is None and self._over(part):
                self._full(part, wait=False)

    def _guarded_merge(self, part: Partition, *, locked: bool) -> None:
        sync_others = partial(self._sync_others, part)
        self._guarded(part, partial(part.merge, sync_others, self.logs.retire, locked=locked))

    def _guarded(self, part: Partition, step: Callable[[], T]) -> T:
        """``step()``, a transaction of ``part``'s tree (a merge, a compaction step), whose
        failure stops the store's writes."""
        try:
            return step()
        except Error as exc:
            # I/O failure, damage met in an old page, a broken invariant: writes stop here.
            # (An interrupt is not recorded: the half-built merge was forgotten whole, and the
            # store goes on as before it.)
            self.fail(exc)
            raise
        except BaseException as exc:
            if part.pager.unsettled:  # interrupted in a commit the file could not settle
                self.fail(exc)
            raise

    def compact_due(self, index: int) -> bool:
        """Whether the worker should compact partition ``index``'s tree file (see
        ``Partition.compact_due``)."""
        ratio = self.options.compact_threshold
        return ratio is not None and self.parts[index].compact_due(ratio)

    def compact_part(self, index: int) -> bool:
        """One compaction step of partition ``index``'s tree file (the worker's, and
        :meth:`compact`'s): under its merge lock, and its lock for the last step only (for the
        whole step without a worker, whose writers merge with the lock alone). Whether its
        compaction is done; ``True`` at once if the store is closed or failed (for the
        worker, which ends the wait)."""
        part = self.parts[index]
        with part.merge_lock:
            if self.closed or self.failure is not None:
                part.stop_compaction()
                return True
            if self.worker is None:
                with part.lock:
                    return self._guarded(part, lambda: part.compact_step(locked=True))
            return self._guarded(part, part.compact_step)

    def compact(self, progress: Callable[[int, int], None] | None = None) -> CompactReport:
        """Compact every tree file to the end (see ``Partition.compact_step``): writes go on
        meanwhile. ``progress(done, total)`` after each step, in pages read of the pages the
        tree files had (each file counts whole once its compaction is done)."""
        self._guard()
        self._check_writable()
        started = time.perf_counter()
        before = self.stats().file_bytes
        sizes = [part.pager.meta.page_count for part in self.parts]
        total = sum(sizes)
        marks = [(p.compact_steps, p.compacted_pages, p.merged_leaves) for p in self.parts]
        done = 0
        for index, part in enumerate(self.parts):
            read = part.compact_read
            while True:
                self._yield_to_merge(part)
                if self.compact_part(index):
                    break
                self._check_writable()
                if progress is not None:
                    progress(done + min(part.compact_read - read, sizes[index]), total)
            self._check_writable()
            done += sizes[index]
            if progress is not None:
                progress(done, total)
        counts = [
            (p.compact_steps - a, p.compacted_pages - b, p.merged_leaves - c)
            for p, (a, b, c) in zip(self.parts, marks, strict=True)
        ]
        return CompactReport(
            file_bytes_before=before,
            file_bytes_after=self.stats().file_bytes,
            steps=sum(c[0] for c in counts),
            pages_rewritten=sum(c[1] for c in counts),
            leaves_merged=sum(c[2] for c in counts),
            seconds=time.perf_counter() - started,
        )

    def _yield_to_merge(self, part: Partition) -> None:
        """Wait while ``part``'s frozen memtable waits for the worker (a merge goes before a
        compaction step, as in the worker's own loop: its writers may be stalled)."""
        if self.worker is None:
            return
        with part.lock:
            while part.frozen is not None:
                self._check_writable()
                self.worker.wake()
                part.cond.wait(0.05)

    def flush_part(self, part: Partition, *, force: bool = False) -> None:
        """Merge one partition's frozen memtable and memtable into its tree (caller holds its
        lock, and its merge lock if a worker runs), leaving it one empty log."""
        self._replacing_log(
            part, lambda: part.flush(lambda: self._sync_others(part), self.logs.retire, force=force)
        )

    def _replacing_log(self, part: Partition, step: Callable[[], None]) -> None:
        """``step()``, which may replace ``part``'s log; a failure stops the store's writes."""
        old = part.log
        try:
            step()
            if old is not None and part.log is not old:
                self.logs.retire(old)  # its records are in the tree
        except Error as exc:
            self.fail(exc)
            raise
        except BaseException as exc:
            if part.pager.unsettled:
                self.fail(exc)
            raise

    def flush(self) -> None:
        """Merge every memtable into its tree (durably), emptying the logs."""
        self._guard()
        self._check_writable()
        for part in self.parts:
            with part.merge_lock, part.lock:
                self._check_writable()
                self.flush_part(part)
        if self.worker is not None:
            self.worker.wake()  # a tree file the merges left with much free space is compacted

    def sync(self) -> None:
        """Durability barrier: every write acknowledged before the call is on disk after it."""
        self._guard()
        self.check_open()
        if self.readonly:
            return
        for part in self.parts:
            with part.lock:
                self._check_writable()
                wal = part.log
                assert wal is not None
                try:
                    wal.write_out()
                except OperationalError as exc:
                    self.fail(exc)
                    raise
                end = wal.written
                frozen = part.frozen_log  # (written out when it froze)
            if frozen is not None:
                self._sync(frozen, frozen.written)
            self._sync(wal, end)

    # -- inspection and lifecycle --------------------------------------------------------------

    def stats(self) -> StoreStats:
        """A snapshot of every partition's counters."""
        self._guard()
        per = []
        for part in self.parts:
            with part.lock:
                self.check_open()
                per.append(part.stats())
        worker = self.worker
        return StoreStats(
            path=self.path,
            keys=sum(p.keys for p in per),
            durability=self.durability.value,
            page_size=self.page_size,
            partitions=tuple(per),
            last_recovery_seconds=self.recovery_seconds,
            file_bytes=sum(p.file_bytes for p in per)
            + sum(
                map(
                    self.fs.size_of,
                    (self.directory.join(fmt.MANIFEST_NAME), self.directory.join(fmt.LOCK_NAME)),
                )
            ),
            live_bytes=sum(p.live_bytes for p in per),
            worker="off" if worker is None else worker.state,
            stalls=sum(p.stalls for p in per),
            stall_seconds=sum(p.stall_seconds for p in per),
            free_pages=sum(p.free_pages for p in per),
            compact_steps=sum(p.compact_steps for p in per),
        )

    def check(self) -> list[TreeReport]:
        """Verify every structure of every partition, and that every key lives in the partition
        it routes to; raises :class:`CorruptionError`."""
        self._guard()
        reports = []
        n, seed = len(self.parts), self.seed
        for part in self.parts:
            with part.merge_lock, part.lock:
                self.check_open()
                reports.append(part.check())
                for key in part.all_keys():
                    if route(key_hash(key, seed), n) != part.index:
                        raise CorruptionError(
                            f"{self.path}: partition {part.index} holds a key that routes to "
                            f"partition {route(key_hash(key, seed), n)}"
                        )
        return reports

    def forget_after_fork(self) -> None:
        """In a forked child: mark the store closed and close this process's copies of its file
        descriptors, lock included, without writing, flushing or unlocking anything (the
        parent's descriptors, and so its lock, stay as they are). Without this the child would
        hold the lock open after the parent closed the store."""
        self.closed = True
        self.worker = None  # (no thread of the parent's runs in the child)
        handles = [p.pager.file for p in self.parts]
        handles += [wal.file for p in self.parts for wal in (p.log, p.frozen_log) if wal]
        for handle in handles:
            with suppress(Error):
                handle.close()
        with suppress(Error):
            self.directory.release()

    def abandon(self) -> None:
        """Close as a crash would leave the store: nothing merged, records still buffered in
        FAST mode dropped, no close record; the files and the lock are released. The next
        open replays the logs. A test hook (:func:`halodb.testing.abandon`)."""
        if self.failure is None:
            self.failure = Abandoned("the store was abandoned, as a crash would leave it")
        self.close()

    def _lock_all(self, stack: ExitStack) -> None:
        """Take every partition's merge lock (a compaction step of another thread ends
        first), then every partition's lock, until ``stack`` closes."""
        for part in self.parts:
            stack.enter_context(part.merge_lock)
        for part in self.parts:
            stack.enter_context(part.lock)

    def _stop_worker(self) -> None:
        """Have a merge under way give up (the close saves what it would merge) and stop the
        worker. Interrupted, the store stays open and its merges go on."""
        for part in self.parts:
            part.closing = True
        if self.worker is not None and self.pid == os.getpid():
            try:
                self.worker.stop()
            except BaseException:
                for part in self.parts:
                    part.closing = False
                self.worker.resume()
                process.register(self)
                raise

    def _save(self, part: Partition) -> None:
        """A clean close's save of ``part``'s memtables (caller holds its locks): a run file,
        or a merge when the run the last close left would grow past ``memtable_size``."""
        if part.run_outgrows(self.memtable_limit):
            self.flush_part(part)
        else:
            self._replacing_log(part, partial(part.save_run, partial(self._sync_others, part)))

    def close(self, *, merge: bool = True) -> None:
        """Save the memtables in run files (unless read-only or failed: see
        ``Partition.save_run``) and close every file; idempotent. Without ``merge`` the
        memtables are not saved: the logs are written out and the next open replays them."""
        process.unregister(self)
        if self.closed:
            return
        self._stop_worker()
        with ExitStack() as stack:
            self._lock_all(stack)
            if self.closed:
                return
            self.closed = True
            error: BaseException | None = None
            try:
                for part in self.parts:
                    clean_seq = None
                    try:
                        if (
                            merge
                            and not self.readonly
                            and self.failure is None
                            and error is None
                            and self.pid == os.getpid()
                        ):
                            self._save(part)
                            clean_seq = next(self.sequence)
                    except BaseException as exc:
                        # A failure was recorded by _save; an interrupt (KeyboardInterrupt, ...)
                        # left everything as it was: either way the rest close without saving,
                        # and the logs still hold every write.
                        error = error or exc
                    finally:
                        try:
                            part.close(clean_seq=clean_seq, write_out=self.failure is None)
                        except OperationalError as exc:
                            self.fail(exc)
                            error = error or exc
            finally:
                self.directory.release()
            if error is not None:
                raise error

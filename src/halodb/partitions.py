"""The partition manager: a store directory of N hash partitions; knows nothing of Python types.

It owns the directory (its manifest, its lock), routes each encoded key to a partition by a stable
hash (MurmurHash3 with a seed recorded in the manifest, never Python's ``hash()``; the partition
is ``(h2 >> 32) % partitions``, bits that the bloom filter's first probe does not use), hands out
the store-wide sequence numbers, commits batches atomically across partitions, merges the
partitions' ordered scans, and recovers the store on open.

Batches across partitions: the batch takes one sequence number and the locks of every partition
it touches (in index order); each partition's log gets a part naming all the batch's partitions.
Recovery applies a part only when every partition it names either has its part in its log or has
a tree that already holds that sequence number; otherwise the whole batch is dropped everywhere
(and the logs are then flushed away so that the decision can never change).

Locking: one lock per partition; operations on one key take one lock, batches take several in
index order, ``close`` takes all.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import secrets
import time
import weakref
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from operator import itemgetter

from halodb import format as fmt
from halodb.bloom import key_hash
from halodb.btree import TreeReport, limits
from halodb.errors import (
    CorruptionError,
    DataError,
    Error,
    InterfaceError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
)
from halodb.memtable import MISSING
from halodb.options import DEFAULT_PAGE_SIZE, DEFAULT_PARTITIONS, Durability, Options
from halodb.pager import new_tree_file
from halodb.partition import Partition, PartitionStats, create_files
from halodb.vfs import FileSystem, Lock
from halodb.wal import (
    Entry,
    LogWriter,
    Record,
    encode_batch,
    encode_entries,
    frame,
    frame_put,
    header_bytes,
)

log = logging.getLogger(__name__)

MAX_VALUE_SIZE = fmt.MAX_VALUE_SIZE
"""The longest encoded value the store accepts, so the longest a log record may hold."""
MAX_RECORD_PAYLOAD = 0xFFFFFFFF - 4096
"""A log record's payload length is a u32; a little is kept for the batch header."""
SCAN_CHUNK = 1024
FIRST_CHUNK = 32
"""A scan reads each partition FIRST_CHUNK items at first, doubling up to SCAN_CHUNK: short
range scans read little, long ones take few locks."""


def route(h: tuple[int, int], partitions: int) -> int:
    """The partition of a key with :func:`key_hash` ``h``: bits of the second half that the
    bloom filter's first probe does not use. Part of the format: never change it."""
    return (h[1] >> 32) % partitions


@dataclass(frozen=True, slots=True)
class Manifest:
    """The store-wide settings fixed at creation."""

    partitions: int
    page_size: int
    hash_seed: int
    created_ns: int
    codec: str
    version: int = fmt.FORMAT_VERSION
    """The format version the manifest was written with."""


def _manifest_bytes(m: Manifest) -> bytes:
    body = fmt.MANIFEST.pack(
        fmt.MANIFEST_MAGIC,
        fmt.FORMAT_VERSION,
        0,
        m.partitions,
        0,
        m.page_size,
        m.hash_seed,
        m.created_ns,
        m.codec.encode("ascii"),
        0,
    )
    return body[:-4] + fmt.U32.pack(fmt.crc(body[:-4]))


def _parse_manifest(data: bytes, where: str) -> Manifest:
    size = fmt.MANIFEST.size
    if data[:8] != fmt.MANIFEST_MAGIC:
        raise InterfaceError(f"{where}: not a HaloDB store (no HaloDB manifest magic)")
    if len(data) != size:
        if len(data) >= 10 and fmt.U16.unpack_from(data, 8)[0] > fmt.FORMAT_VERSION:
            raise NotSupportedError(
                f"{where}: store has a newer format version; upgrade HaloDB to open it"
            )
        raise CorruptionError(f"{where}: manifest is {len(data)} bytes, not {size}")
    _, version, _, partitions, _, page_size, seed, created, codec, crc = fmt.MANIFEST.unpack_from(
        data
    )
    if fmt.crc(data[: size - 4]) != crc:
        raise CorruptionError(f"{where}: manifest checksum mismatch")
    if version > fmt.FORMAT_VERSION:
        raise NotSupportedError(
            f"{where}: store has format version {version}; this HaloDB reads up to "
            f"{fmt.FORMAT_VERSION}. Upgrade HaloDB to open it"
        )
    if (
        version < 1
        or not 1 <= partitions <= 256
        or page_size & (page_size - 1)
        or not 1024 <= page_size <= 65536
    ):
        raise CorruptionError(f"{where}: manifest holds impossible settings")
    try:
        name = codec.rstrip(b"\x00").decode("ascii")
    except UnicodeDecodeError:
        raise CorruptionError(f"{where}: manifest codec name is not ASCII") from None
    return Manifest(partitions, page_size, seed, created, name, version)


def read_manifest(path: str, fs: FileSystem | None = None) -> Manifest:
    """The manifest of the store in directory ``path``, read without opening the store (the
    manifest is only ever replaced whole, by a rename). ``InterfaceError`` if there is no
    store, ``CorruptionError`` if the manifest is damaged."""
    fs = fs or FileSystem()
    manifest_path = os.path.join(path, fmt.MANIFEST_NAME)
    if not fs.exists(manifest_path):
        raise InterfaceError(f"{path}: no HaloDB store here")
    handle = fs.open(manifest_path)
    try:
        data = handle.read_at(0, fmt.MANIFEST.size + 1)
    finally:
        handle.close()
    return _parse_manifest(data, manifest_path)


def _partition_file_kind(name: str) -> tuple[int, str] | None:
    """``(index, suffix)`` for a name like ``p003.wal``, else ``None``."""
    stem, _, suffix = name.partition(".")
    if len(stem) == 4 and stem[0] == "p" and stem[1:].isdigit() and suffix in PART_SUFFIXES:
        return int(stem[1:]), suffix
    return None


PART_SUFFIXES = ("wal", "tree", "bloom", "wal.tmp", "tree.tmp", "bloom.tmp")


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


class Abandoned(Exception):
    """The failure recorded by :meth:`PartitionManager.abandon`."""


@dataclass(slots=True)
class _Creation:
    """What one open's creation of a store made: undone if that open fails."""

    made_dir: bool
    """The store's directory did not exist and this open made it."""
    before: frozenset[str]
    """The names the directory held before (kept by an undo)."""
    locked: bool = False
    """This open holds the creation lock and has begun writing the store's files."""


class PartitionManager:
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
        self._after: dict[LogWriter, dict[LogWriter, int]] = {}
        """FULL mode: for a log holding a part of a batch over several partitions, the other
        logs, and the offsets up to which they must be durable, before a later record of it is
        acknowledged (see ``_sync``). Each inner dict is replaced, never changed."""
        self.pid = os.getpid()
        self._lock: Lock | None = None
        started = time.perf_counter()
        manifest_path = os.path.join(path, fmt.MANIFEST_NAME)
        creation: _Creation | None = None
        try:
            if not fs.exists(manifest_path):
                if fs.exists(path) and not fs.is_dir(path):  # (in this order: no mkdir race)
                    raise InterfaceError(f"{path}: not a directory, so not a HaloDB store")
                if not options.create:
                    raise InterfaceError(
                        f"{path}: no HaloDB store here"
                        + (" (read-only open never creates one)" if options.readonly else "")
                    )
                creation = _Creation(made_dir=False, before=frozenset())
                self._create(codec, creation)
            if self._lock is None:
                self._lock = self._take_lock()
            self.manifest = m = read_manifest(path, fs)
            if options.partitions is not None and options.partitions != m.partitions:
                raise InterfaceError(
                    f"{path}: store has {m.partitions} partitions, not {options.partitions} "
                    "(fixed when the store was created)"
                )
            if options.page_size is not None and options.page_size != m.page_size:
                raise InterfaceError(
                    f"{path}: store has page size {m.page_size}, not {options.page_size} "
                    "(fixed when the store was created)"
                )
            if options.hash_seed is not None and options.hash_seed != m.hash_seed:
                raise InterfaceError(
                    f"{path}: store has hash seed {m.hash_seed}, not {options.hash_seed} "
                    "(fixed when the store was created)"
                )
            if m.codec != codec:
                raise InterfaceError(
                    f"{path}: store was created with value codec {m.codec!r}, "
                    f"opened with {codec!r}; open it with the same codec"
                )
            self.seed = m.hash_seed
            self.page_size = m.page_size
            self.max_key, _ = limits(m.page_size)
            self.parts: list[Partition] = []
            cache_pages = options.cache_size // m.page_size // m.partitions
            for index in range(m.partitions):
                self.parts.append(
                    Partition(
                        fs,
                        path,
                        index,
                        page_size=m.page_size,
                        seed=m.hash_seed,
                        cache_pages=cache_pages,
                        bloom_bits_per_key=options.bloom_bits_per_key,
                        readonly=self.readonly,
                    )
                )
            next_seq = self._recover()
            self._seq = itertools.count(next_seq)
            if m.version < fmt.FORMAT_VERSION and not self.readonly:
                self.manifest = self._upgrade(m)  # only once everything else checked out
        except BaseException:
            for part in getattr(self, "parts", []):
                with suppress(Exception):
                    part.close()
            if creation is not None:
                self._undo_creation(creation)
            if self._lock is not None:
                with suppress(Exception):
                    self._lock.release()
            raise
        self.durability = options.durability
        self.full = options.durability is Durability.FULL
        self.memtable_limit = options.memtable_size
        self.log_limit = 2 * options.memtable_size
        """Overwrites grow a log but not its memtable: past this size the partition is flushed
        anyway, which bounds recovery time."""
        self.recovery_seconds = time.perf_counter() - started
        _OPEN.add(self)

    # -- opening -----------------------------------------------------------------------------

    def _create(self, codec: str, creation: _Creation) -> None:
        """Create the store's directory (not its parents) and files, taking the lock for them
        as ``self._lock``, held until the first open completes: no other process can use a
        store before its creator has opened it, so a failed first open may remove it whole.
        If another process finished creating the store meanwhile, ``self._lock`` stays
        ``None`` (the caller then opens it as any store). ``creation`` records what this call
        made, for :meth:`_undo_creation`."""
        fs, path, options = self.fs, self.path, self.options
        lock_path = os.path.join(path, fmt.LOCK_NAME)
        if fs.is_dir(path):
            names = fs.listdir(path)
            creation.before = frozenset(names)
            try:
                self._check_leftovers(names, options.page_size or DEFAULT_PAGE_SIZE)
            except (CorruptionError, InterfaceError):
                # What looks like data without a manifest may be a store another process is
                # creating this very moment: refuse as locked while it holds the lock, open the
                # store if its creation has finished; only otherwise is the directory foreign.
                if fs.exists(lock_path):
                    other = fs.lock(lock_path, exclusive=True)
                    if other is None:
                        raise OperationalError(
                            f"{path}: store is being created or opened by another process"
                        ) from None
                    other.release()
                if fs.exists(os.path.join(path, fmt.MANIFEST_NAME)):
                    return
                raise
        else:
            parent = os.path.dirname(path)
            if not fs.is_dir(parent):
                raise InterfaceError(
                    f"{parent}: no such directory, so the store {path} cannot be created "
                    "(HaloDB creates only the store's own directory, as mkdir does without -p)"
                )
            creation.made_dir = fs.mkdir(path) is not False  # (False: a racing creator made it)
        existed = fs.exists(lock_path)
        self._write_lock_header(lock_path)  # also fills an empty one left behind
        if not existed:
            fs.sync_dir(path)
        lock = fs.lock(lock_path, exclusive=True)
        if lock is None:
            creation.made_dir = False  # another process's creation: its store, not ours
            raise OperationalError(f"{path}: store is being created or opened by another process")
        try:
            if fs.exists(os.path.join(path, fmt.MANIFEST_NAME)):
                lock.release()
                return
        except BaseException:
            lock.release()
            raise
        self._lock = lock
        creation.locked = True
        manifest = Manifest(
            partitions=options.partitions or DEFAULT_PARTITIONS,
            page_size=options.page_size or DEFAULT_PAGE_SIZE,
            hash_seed=secrets.randbits(32) if options.hash_seed is None else options.hash_seed,
            created_ns=time.time_ns(),
            codec=codec,
        )
        for index in range(manifest.partitions):
            create_files(fs, path, index, manifest.page_size)
        fs.write_new(os.path.join(path, fmt.MANIFEST_NAME), _manifest_bytes(manifest))

    def _undo_creation(self, creation: _Creation) -> None:
        """After a failed first open: remove what :meth:`_create` made (the files it added, and
        the directory if it made it), so that the failure leaves nothing behind. Only under
        the lock (taken here if creation failed before it took it; a lock file is removed only
        by its holder, and :meth:`FileSystem.lock` never grants a removed one), or, with no
        lock file, only a directory this call made; never raises (the open's error matters)."""
        fs, path = self.fs, self.path
        lock: Lock | None = None
        try:
            if not creation.locked:
                lock_path = os.path.join(path, fmt.LOCK_NAME)
                if fmt.LOCK_NAME not in creation.before and fs.exists(lock_path):
                    lock = fs.lock(lock_path, exclusive=True)
                    if lock is None:
                        return  # another process uses the directory now
                elif not creation.made_dir:
                    return
            for name in fs.listdir(path):
                if name not in creation.before and (
                    name in (fmt.LOCK_NAME, fmt.MANIFEST_NAME, fmt.MANIFEST_NAME + ".tmp")
                    or _partition_file_kind(name) is not None
                ):
                    fs.unlink(os.path.join(path, name))
            if creation.made_dir and not fs.listdir(path):
                fs.rmdir(path)
                fs.sync_dir(os.path.dirname(path))
            else:
                fs.sync_dir(path)
        except Exception:
            log.warning("%s: removing what a failed creation made failed", path, exc_info=True)
        finally:
            if lock is not None:
                with suppress(Exception):
                    lock.release()

    def _check_leftovers(self, names: list[str], page_size: int) -> None:
        """A directory without a manifest may be made a store only if it is empty or holds
        what an interrupted creation leaves: the lock, temporary files, and partition files
        exactly as created (a log with no record, a tree with no page). Anything holding data
        means the manifest was lost, and re-creating the store would destroy that data."""
        foreign = []
        for name in names:
            kind = _partition_file_kind(name)
            if name in (fmt.LOCK_NAME, fmt.MANIFEST_NAME + ".tmp") or (
                kind and kind[1].endswith("tmp")
            ):
                continue
            if kind is None:
                foreign.append(name)
                continue
            index, suffix = kind
            fresh = header_bytes(index, 0) if suffix == "wal" else new_tree_file(index, page_size)
            full = os.path.join(self.path, name)
            handle = self.fs.open(full)
            try:
                same = (
                    suffix != "bloom"
                    and handle.size() == len(fresh)
                    and (handle.read_at(0, len(fresh)) == fresh)
                )
            finally:
                handle.close()
            if not same:
                raise CorruptionError(
                    f"{full}: the store's manifest {fmt.MANIFEST_NAME} is missing but its "
                    "partition files hold data; not re-creating the store over them "
                    "(restore the manifest from a backup)"
                )
        if foreign:
            raise InterfaceError(
                f"{self.path}: directory is not empty and is not a HaloDB store "
                f"(it holds {sorted(foreign)[:3]}); choose an empty or new directory"
            )

    def _write_lock_header(self, lock_path: str) -> None:
        """Create the lock file with its header, or give an empty one (version 1), or one a
        failed write left short, its header.
        Written in place, never renamed: a rename would give other processes another inode to
        lock. Fsyncs the file."""
        header = fmt.LOCK_HEADER.pack(fmt.LOCK_MAGIC, fmt.FORMAT_VERSION)
        handle = self.fs.open(lock_path, create=True)
        try:
            size = handle.size()
            # Empty, or a prefix of the header that a failed (short) write left behind.
            if size < len(header) and header.startswith(handle.read_at(0, size)):
                handle.write_at(0, header)
                handle.sync()
        finally:
            handle.close()

    def _upgrade(self, manifest: Manifest) -> Manifest:
        """Bring an older store's manifest and lock file to this format version (the caller
        holds the lock for writing), so an older HaloDB refuses the store cleanly once newer
        pages may be in it."""
        self._write_lock_header(os.path.join(self.path, fmt.LOCK_NAME))
        upgraded = Manifest(
            manifest.partitions,
            manifest.page_size,
            manifest.hash_seed,
            manifest.created_ns,
            manifest.codec,
        )
        self.fs.write_new(os.path.join(self.path, fmt.MANIFEST_NAME), _manifest_bytes(upgraded))
        log.info("%s: upgraded from format version %d", self.path, manifest.version)
        return upgraded

    def _take_lock(self) -> Lock:
        lock_path = os.path.join(self.path, fmt.LOCK_NAME)
        if not self.fs.exists(lock_path):
            raise CorruptionError(f"{lock_path}: lock file is missing")
        lock = self.fs.lock(lock_path, exclusive=not self.readonly)
        if lock is None:
            raise OperationalError(
                f"{self.path}: store is already open for writing"
                + ("" if self.readonly else " or reading")
                + " (in this or another process); close it there first"
            )
        return lock

    def _recover(self) -> int:
        """Decide which log records apply, replay them, open the logs for appending, and
        return the next sequence number (see design.md, "Recovery").

        A batch part is kept only if every partition its batch names has its part in its log
        or holds the batch in its tree. A dropped part cuts its partition's log there: the
        records after it are dropped too (a partition holds every write up to some point, never
        a write after one it lost). A cut can take another batch's part, so that batch is
        dropped everywhere and cuts its other partitions in turn, up to a fixpoint."""
        parts = self.parts
        n = len(parts)
        max_key = self.max_key
        newest = 0
        pending: list[list[Record]] = []
        """Each partition's records that its tree does not hold yet (a suffix of its log)."""
        holders: dict[int, dict[int, int]] = {}
        """For each batch sequence number: partition -> index of its part in ``pending``."""
        for part in parts:
            flushed = part.flushed_seq
            if flushed >= fmt.SEQ_LIMIT:
                raise CorruptionError(
                    f"{part.tree_path}: tree holds writes up to sequence {flushed}, "
                    "an impossible number"
                )
            newest = max(newest, flushed)
            mine: list[Record] = []
            for record in part.contents.records:
                seq = record.seq
                newest = max(newest, seq)
                for key, value in record.entries:
                    if len(key) > max_key or (value is not None and len(value) > MAX_VALUE_SIZE):
                        raise CorruptionError(
                            f"{part.wal_path}: record at sequence {seq} holds a "
                            f"{len(key)}-byte key or a value over the limits of the store "
                            f"({max_key}-byte keys, {MAX_VALUE_SIZE}-byte values)"
                        )
                if record.rtype == fmt.REC_BATCH and (
                    part.index not in record.partitions
                    or any(not 0 <= q < n for q in record.partitions)
                ):
                    raise CorruptionError(
                        f"{part.wal_path}: batch part at sequence {seq} names "
                        f"partitions {record.partitions}"
                    )
                if seq <= flushed:
                    continue  # already in the tree
                if record.rtype == fmt.REC_BATCH:
                    holders.setdefault(seq, {})[part.index] = len(mine)
                mine.append(record)
            pending.append(mine)
        cut = [len(mine) for mine in pending]
        work: list[tuple[int, int]] = []
        for index, mine in enumerate(pending):
            for i, record in enumerate(mine):
                if record.rtype == fmt.REC_BATCH and not all(
                    q in holders[record.seq] or parts[q].flushed_seq >= record.seq
                    for q in record.partitions
                ):
                    work.append((index, i))
                    break  # the cut at the first one takes the rest
        while work:
            index, i = work.pop()
            if i >= cut[index]:
                continue
            for record in pending[index][i : cut[index]]:
                if record.rtype == fmt.REC_BATCH:
                    # This part goes, so its batch goes everywhere: cut its other partitions.
                    others = holders[record.seq]
                    del others[index]
                    work.extend(others.items())
                    covered = [q for q in record.partitions if parts[q].flushed_seq >= record.seq]
                    if covered:
                        raise CorruptionError(
                            f"{parts[index].wal_path}: the batch at sequence {record.seq} is in "
                            f"the tree of partition {covered[0]} but cannot apply here (a part "
                            "of it, or of a batch before it, is missing from a log)"
                        )
            cut[index] = i
        dropped = 0
        for part, mine, keep in zip(parts, pending, cut, strict=True):
            dropped += len(mine) - keep
            # A close record applies nothing; replaying it would only advance last_seq past
            # what the tree holds, and a log rotated without a flush would then start there.
            part.replay([r for r in mine[:keep] if r.rtype != fmt.REC_CLOSE])
        buffer = (
            self.options.fast_buffer_size if self.options.durability is Durability.FAST else None
        )
        for part in parts:
            part.open_log(buffer)
        if dropped:
            cuts = [
                p for p, mine, keep in zip(parts, pending, cut, strict=True) if keep < len(mine)
            ]
            log.warning(
                "%s: dropped %d records of partitions %s, from the first part of a batch that a "
                "crash interrupted on",
                self.path,
                dropped,
                [p.index for p in cuts],
            )
            if not self.readonly:
                # Replace the logs that hold dropped records (after flushing what they keep),
                # so that the decision cannot change later.
                for part in cuts:
                    self._flush_part(part, force=True)
        return newest + 1

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

    def _fail(self, exc: BaseException) -> None:
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
        self, lo: bytes | None, hi: bytes | None, *, reverse: bool = False, chunk: int = SCAN_CHUNK
    ) -> Iterator[list[tuple[bytes, bytes]]]:
        """Live ``(key, value)`` in ``[lo, hi)`` across partitions, in key order, lazily, a list
        at a time (each list in order and after the one before, so a caller can process a whole
        list in one go).

        Each partition is read in growing chunks under its lock; a chunk resumes after the last
        key returned, so keys come strictly in order, never twice, and a write made after a chunk
        was read shows up only if its key lies ahead of where that partition's chunk ended.
        Chunks are merged a round at a time: every buffered item up to the smallest last key
        among the buffers (the largest, reversed) is sorted and yielded; no partition can still
        produce a key before that bound.
        """
        self._guard()
        self.check_open()
        sources = [self._chunks(p, lo, hi, reverse, chunk) for p in self.parts]
        if len(sources) == 1:
            return sources[0]
        return self._merge(sources, reverse)

    @staticmethod
    def _merge(
        sources: list[Iterator[list[tuple[bytes, bytes]]]], reverse: bool
    ) -> Iterator[list[tuple[bytes, bytes]]]:
        live: list[tuple[Iterator[list[tuple[bytes, bytes]]], list[tuple[bytes, bytes]]]] = []
        for source in sources:
            items = next(source, None)
            if items:
                live.append((source, items))
        first = itemgetter(0)
        while live:
            lasts = [items[-1][0] for _, items in live]
            bound = max(lasts) if reverse else min(lasts)
            out: list[tuple[bytes, bytes]] = []
            keep = []
            for source, items in live:
                # items before the first key past the bound (binary search; either order)
                low, high = 0, len(items)
                while low < high:
                    mid = (low + high) // 2
                    if (items[mid][0] >= bound) if reverse else (items[mid][0] <= bound):
                        low = mid + 1
                    else:
                        high = mid
                out.extend(items[:low])
                rest = items[low:] or next(source, [])
                if rest:
                    keep.append((source, rest))
            live = keep
            out.sort(key=first, reverse=reverse)
            yield out

    def _chunks(
        self, part: Partition, lo: bytes | None, hi: bytes | None, reverse: bool, chunk: int
    ) -> Iterator[list[tuple[bytes, bytes]]]:
        limit = min(chunk, FIRST_CHUNK)
        while True:
            self._guard()
            with part.lock:
                self.check_open()
                items = part.scan(lo, hi, reverse, limit)
            if items:
                yield items
            if len(items) < limit:
                return
            limit = min(limit * 2, chunk)
            if reverse:
                hi = items[-1][0]
            else:
                lo = items[-1][0] + b"\x00"

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
            # _write_locked, inlined for a put: the hot path of every single put
            wal = part.log
            assert wal is not None
            seq = next(self._seq)
            try:
                end = wal.append(frame_put(seq, key, value))
            except OperationalError as exc:
                self._fail(exc)
                raise
            try:
                part.put(key, value, h, seq)
            except BaseException as exc:  # logged, not counted: see commit()
                self._fail(exc)
                raise
            if part.memtable.size > self.memtable_limit or wal.end > self.log_limit:
                self._flush_part(part)
        if self.full:
            self._sync(wal, end)

    def delete(self, key: bytes, *, want_value: bool = False) -> tuple[bool, bytes | None]:
        """Delete ``key`` if live; returns whether it was, and (if asked) its old value."""
        self._guard()
        part, h = self.part_of(key)
        with part.lock:
            self._check_writable()
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
        held; flush the partition if its memtable is full. Returns the log and the offset to
        sync to."""
        wal = part.log
        assert wal is not None
        seq = next(self._seq)
        try:
            if value is None:
                end = wal.append(frame(fmt.REC_WRITE, seq, encode_entries(0, [(key, None)])))
            else:
                end = wal.append(frame_put(seq, key, value))
        except OperationalError as exc:
            self._fail(exc)
            raise
        try:
            if value is None:
                part.delete(key, seq)  # the caller checked the key is live
            else:
                part.put(key, value, h, seq)
        except BaseException as exc:  # logged, not counted: see commit()
            self._fail(exc)
            raise
        if part.memtable.size > self.memtable_limit or wal.end > self.log_limit:
            self._flush_part(part)
        return wal, end

    def commit(self, changes: dict[bytes, bytes | None], *, clear: bool = False) -> None:
        """Apply ``changes`` (``None``: delete) atomically across partitions, after clearing the
        whole store when ``clear``. All visible and durable together, or none of it."""
        n = len(self.parts)
        groups: dict[int, list[Entry]] = {}
        if clear:
            groups = {i: [] for i in range(n)}
        seed = self.seed
        sizes = [0] * n
        for key, value in changes.items():
            index = route(key_hash(key, seed), n)
            groups.setdefault(index, []).append((key, value))
            sizes[index] += fmt.ENTRY.size + len(key) + (0 if value is None else len(value))
        if not groups:
            return
        if max(sizes) > MAX_RECORD_PAYLOAD:
            raise DataError(
                f"batch holds {max(sizes)} bytes for one partition; a batch may hold at most "
                f"{MAX_RECORD_PAYLOAD} bytes per partition (split it into several batches)"
            )
        ids = sorted(groups)
        flags = fmt.FLAG_CLEAR if clear else 0
        self._guard()
        parts = [self.parts[i] for i in ids]
        synced = []
        with ExitStack() as stack:
            for part in parts:
                stack.enter_context(part.lock)
            self._check_writable()
            seq = next(self._seq)
            try:
                for part in parts:
                    entries = groups[part.index]
                    if len(ids) == 1:
                        record = frame(fmt.REC_WRITE, seq, encode_entries(flags, entries))
                    else:
                        record = frame(fmt.REC_BATCH, seq, encode_batch(ids, flags, entries))
                    assert part.log is not None
                    synced.append((part.log, part.log.append(record)))
                if len(parts) > 1:
                    # Every part reaches the OS now, even in FAST mode, so that a flush of one
                    # partition can make its siblings durable first (see _flush_part).
                    for part in parts:
                        assert part.log is not None
                        part.log.write_out()
            except OperationalError as exc:
                self._fail(exc)
                raise
            except BaseException as exc:
                # Interrupted (KeyboardInterrupt, ...) with some parts maybe in their logs: no
                # later record may follow them, since recovery drops such a batch and cuts its
                # partitions' logs there (their later writes would go with it).
                if len(parts) > 1:
                    self._fail(exc)
                raise
            # Readers without a lock (get) must not see the batch in part: every partition's
            # epoch is odd from before its first entry is applied to after its last. The
            # values are set, not counted up, so an interrupt between two of these stores
            # leaves a partition odd (its gets take the lock) only until its next batch.
            odd: list[int] = []
            try:
                odd = [part.epoch | 1 for part in parts]
                if self.full and len(parts) > 1:
                    self._note_batch(synced)
                for part, epoch in zip(parts, odd, strict=True):
                    part.epoch = epoch
                for part in parts:
                    part.apply(groups[part.index], seq, clear=clear, batch=len(parts) > 1)
            except BaseException as exc:
                # Logged whole but not applied, or applied in part (a read of the tree failed,
                # or an interrupt): memory no longer matches the logs, so nothing more is
                # written (a flush could make the half permanent). Reopening replays the logs.
                self._fail(exc)
                raise
            finally:
                for part, epoch in zip(parts, odd, strict=True):
                    part.epoch = epoch + 1
            for part in parts:
                assert part.log is not None
                if part.memtable.size > self.memtable_limit or part.log.end > self.log_limit:
                    self._flush_part(part)
        if self.full:
            for wal, end in synced:
                self._sync(wal, end)

    def _sync(self, wal: LogWriter, end: int) -> None:
        """Make ``wal`` durable up to ``end`` (FULL mode, and ``sync()``), and with it the parts
        of batches it holds before ``end`` in other logs (see ``_note_batch``)."""
        try:
            wal.sync_to(end)
            after = self._after.get(wal)
            if after:
                for other, offset in after.items():
                    other.sync_to(offset)
        except OperationalError as exc:
            self._fail(exc)
            raise

    def _note_batch(self, parts: list[tuple[LogWriter, int]]) -> None:
        """FULL mode, with the locks of a batch's partitions held, after appending its parts
        (each log and the offset after its part): a later record in any of these logs may be
        acknowledged only once every part is durable, and every part of an earlier batch that
        those logs depend on. Otherwise a power cut could lose a part the batch's own fsyncs
        had not reached yet, and recovery, dropping the batch, would cut the acknowledged
        record with it (design.md, "Recovery")."""
        needed = dict(parts)
        for wal, _ in parts:
            for other, offset in self._after.get(wal, {}).items():
                if needed.get(other, -1) < offset:
                    needed[other] = offset
        needed = {other: offset for other, offset in needed.items() if other.synced < offset}
        for wal, _ in parts:
            self._after[wal] = needed

    def _flush_part(self, part: Partition, *, force: bool = False) -> None:
        """Flush one partition (caller holds its lock).

        When its memtable holds parts of batches that span partitions, the other partitions'
        logs are fsynced first: once this tree holds a batch's sequence number, recovery treats
        this part as present, so the sibling parts must already be durable in their logs.
        Syncing a log takes no partition lock, only the log's own, so no lock order is broken.
        """
        old = part.log
        try:
            if part.batch_seen:
                for other in self.parts:
                    wal = other.log
                    if other is not part and wal is not None:
                        wal.sync_to(wal.written)
            part.flush(force=force)
            if old is not None and part.log is not old:
                # Retired: its records are in the tree, the logs they depended on synced above.
                self._after.pop(old, None)
        except Error as exc:
            # I/O failure, damage met in an old page, a broken invariant: writes stop here.
            # (An interrupt is not recorded: the half-built flush was forgotten whole, and the
            # store goes on as before it.)
            self._fail(exc)
            raise
        except BaseException as exc:
            if part.pager.unsettled:  # interrupted in a commit the file could not settle
                self._fail(exc)
            raise

    def flush(self) -> None:
        """Merge every memtable into its tree (durably), emptying the logs."""
        self._guard()
        self._check_writable()
        for part in self.parts:
            with part.lock:
                self._check_writable()
                self._flush_part(part)

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
                    self._fail(exc)
                    raise
                end = wal.written
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
        return StoreStats(
            path=self.path,
            keys=sum(p.keys for p in per),
            durability=self.durability.value,
            page_size=self.page_size,
            partitions=tuple(per),
            last_recovery_seconds=self.recovery_seconds,
        )

    def check(self) -> list[TreeReport]:
        """Verify every structure of every partition, and that every key lives in the partition
        it routes to; raises :class:`CorruptionError`."""
        self._guard()
        reports = []
        n, seed = len(self.parts), self.seed
        for part in self.parts:
            with part.lock:
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
        handles = [p.pager.file for p in self.parts] + [p.log.file for p in self.parts if p.log]
        for handle in handles:
            with suppress(Error):
                handle.close()
        if self._lock is not None:
            with suppress(Error):
                self._lock.release()

    def abandon(self) -> None:
        """Close as a crash would leave the store: nothing merged, records still buffered in
        FAST mode dropped, no close record; the files and the lock are released. The next
        open replays the logs. A test hook (:func:`halodb.testing.abandon`)."""
        if self.failure is None:
            self.failure = Abandoned("the store was abandoned, as a crash would leave it")
        self.close()

    def close(self, *, merge: bool = True) -> None:
        """Flush (unless read-only or failed) and close every file; idempotent. Without
        ``merge`` the memtables are not merged into the trees: the logs are written out and
        the next open replays them."""
        _OPEN.discard(self)
        if self.closed:
            return
        with ExitStack() as stack:
            for part in self.parts:
                stack.enter_context(part.lock)
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
                            self._flush_part(part)
                            clean_seq = next(self._seq)
                    except BaseException as exc:
                        # A failure was recorded by _flush_part; an interrupt (KeyboardInterrupt,
                        # ...) left everything as it was: either way the rest close without
                        # flushing, and the logs still hold every write.
                        error = error or exc
                    finally:
                        try:
                            part.close(clean_seq=clean_seq, write_out=self.failure is None)
                        except OperationalError as exc:
                            self._fail(exc)
                            error = error or exc
            finally:
                if self._lock is not None:
                    self._lock.release()
            if error is not None:
                raise error


_OPEN: weakref.WeakSet[PartitionManager] = weakref.WeakSet()
"""Stores open in this process."""


def _after_fork_in_child() -> None:
    """A forked child must not touch its parent's stores (their locks, logs and buffers belong
    to the parent): mark them closed, so any use raises :class:`ProgrammingError` at once."""
    for manager in list(_OPEN):
        manager.forget_after_fork()
    _OPEN.clear()


def _close_at_exit() -> None:
    """Close the stores a program left open, so a normal exit loses nothing, even in FAST mode."""
    for manager in list(_OPEN):
        try:
            manager.close()
        except Exception:
            log.exception("%s: closing at interpreter exit failed", manager.path)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_at_exit)

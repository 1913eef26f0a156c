"""A store's directory: its file names, its lock, its manifest; creating a store, upgrading an
older one, and removing what a failed first open made. Knows nothing of records or keys.

A store directory holds ``HALODB`` (the manifest: the settings fixed at creation), ``LOCK``
(locked shared by read-only opens, exclusively by a writer) and each partition's files
``pNNN.wal``, ``pNNN.tree`` and ``pNNN.bloom``; ``docs/format.md`` defines their bytes.
"""

from __future__ import annotations

import logging
import os
import secrets
from contextlib import suppress
from dataclasses import dataclass

from halodb import format as fmt
from halodb.errors import CorruptionError, InterfaceError, NotSupportedError, OperationalError
from halodb.options import (
    DEFAULT_PAGE_SIZE,
    DEFAULT_PARTITIONS,
    MAX_PAGE_SIZE,
    MAX_PARTITIONS,
    MIN_PAGE_SIZE,
    Options,
)
from halodb.pager import new_tree_file
from halodb.vfs import FileSystem, Lock
from halodb.wal import header_bytes

log = logging.getLogger(__name__)

PART_SUFFIXES = (
    "wal",
    "wal2",
    "tree",
    "bloom",
    "run",
    "wal.tmp",
    "wal2.tmp",
    "tree.tmp",
    "bloom.tmp",
    "run.tmp",
)
"""What follows ``pNNN.`` in the name of a partition's file (``.tmp``: being written)."""


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


def manifest_bytes(m: Manifest) -> bytes:
    """The manifest file holding ``m``, written as this format version."""
    return fmt.seal(
        fmt.MANIFEST.pack(
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
    )


def parse_manifest(data: bytes, where: str) -> Manifest:
    """The manifest in ``data`` (a manifest file's bytes); raises a :class:`CorruptionError`,
    :class:`NotSupportedError` (a newer format) or :class:`InterfaceError` (not a store) that
    names ``where``."""
    size = fmt.MANIFEST.size
    if data[:8] != fmt.MANIFEST_MAGIC:
        raise InterfaceError(f"{where}: not a HaloDB store (no HaloDB manifest magic)")
    if len(data) != size:
        if len(data) >= 10 and fmt.U16.unpack_from(data, 8)[0] > fmt.FORMAT_VERSION:
            raise NotSupportedError(
                f"{where}: store has a newer format version; upgrade HaloDB to open it"
            )
        raise CorruptionError(f"{where}: manifest is {len(data)} bytes, not {size}")
    _, version, _, partitions, _, page_size, seed, created, codec, _ = fmt.MANIFEST.unpack_from(
        data
    )
    if not fmt.sealed(data, size):
        raise CorruptionError(f"{where}: manifest checksum mismatch")
    if version > fmt.FORMAT_VERSION:
        raise NotSupportedError(
            f"{where}: store has format version {version}; this HaloDB reads up to "
            f"{fmt.FORMAT_VERSION}. Upgrade HaloDB to open it"
        )
    if (
        version < 1
        or not 1 <= partitions <= MAX_PARTITIONS
        or page_size & (page_size - 1)
        or not MIN_PAGE_SIZE <= page_size <= MAX_PAGE_SIZE
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
    return parse_manifest(data, manifest_path)


def check_settings(m: Manifest, options: Options, codec: str, path: str) -> None:
    """Refuse an open whose options name settings other than those the store was created
    with (an option left ``None`` takes the store's)."""
    fixed = (
        (options.partitions, m.partitions, f"{m.partitions} partitions"),
        (options.page_size, m.page_size, f"page size {m.page_size}"),
        (options.hash_seed, m.hash_seed, f"hash seed {m.hash_seed}"),
    )
    for asked, stored, has in fixed:
        if asked is not None and asked != stored:
            raise InterfaceError(
                f"{path}: store has {has}, not {asked} (fixed when the store was created)"
            )
    if m.codec != codec:
        raise InterfaceError(
            f"{path}: store was created with value codec {m.codec!r}, "
            f"opened with {codec!r}; open it with the same codec"
        )


def create_files(fs: FileSystem, directory: str, index: int, page_size: int) -> None:
    """Create one partition's empty tree and log (each written atomically and durably)."""
    fs.write_new(
        os.path.join(directory, fmt.partition_file(index, "tree")), new_tree_file(index, page_size)
    )
    fs.write_new(os.path.join(directory, fmt.partition_file(index, "wal")), header_bytes(index, 0))


def partition_file_kind(name: str) -> tuple[int, str] | None:
    """``(index, suffix)`` for a name like ``p003.wal``, else ``None``."""
    stem, _, suffix = name.partition(".")
    if len(stem) == 4 and stem[0] == "p" and stem[1:].isdigit() and suffix in PART_SUFFIXES:
        return int(stem[1:]), suffix
    return None


@dataclass(slots=True)
class Creation:
    """What one open's creation of a store made: undone if that open fails."""

    made_dir: bool
    """The store's directory did not exist and this open made it."""
    before: frozenset[str]
    """The names the directory held before (kept by an undo)."""
    locked: bool = False
    """This open holds the creation lock and has begun writing the store's files."""


class Directory:
    """One store directory, as one open uses it: :meth:`open` creates the store if it must,
    takes the lock and reads the manifest; the lock is held until :meth:`release`, and
    :meth:`fail_open` takes back everything a failed open did."""

    def __init__(self, fs: FileSystem, path: str) -> None:
        self.fs = fs
        self.path = path
        self.lock: Lock | None = None
        self.creation: Creation | None = None
        """What this open made, if it created the store."""

    def join(self, name: str) -> str:
        """The path of the file ``name`` in the directory."""
        return os.path.join(self.path, name)

    def open(self, options: Options, codec: str) -> Manifest:
        """Create the store if there is none (and ``options.create``), lock it (shared when
        ``options.readonly``) and return its manifest, checked against ``options`` and
        ``codec``. On failure, nothing made is left and no lock is held."""
        fs, path = self.fs, self.path
        try:
            if not fs.exists(self.join(fmt.MANIFEST_NAME)):
                if fs.exists(path) and not fs.is_dir(path):  # (in this order: no mkdir race)
                    raise InterfaceError(f"{path}: not a directory, so not a HaloDB store")
                if not options.create:
                    raise InterfaceError(
                        f"{path}: no HaloDB store here"
                        + (" (read-only open never creates one)" if options.readonly else "")
                    )
                self.creation = Creation(made_dir=False, before=frozenset())
                self._create(options, codec, self.creation)
            if self.lock is None:
                self.lock = self._take_lock(readonly=options.readonly)
            manifest = read_manifest(path, fs)
            check_settings(manifest, options, codec, path)
        except BaseException:
            self.fail_open()
            raise
        return manifest

    def fail_open(self) -> None:
        """After a failed open: remove what its creation of the store made, if it made one,
        and release the lock. Never raises (the open's error is the one that matters)."""
        if self.creation is not None:
            self._undo_creation(self.creation)
            self.creation = None
        if self.lock is not None:
            with suppress(Exception):
                self.lock.release()
            self.lock = None

    def release(self) -> None:
        """Release the lock (the store's files must all be closed)."""
        if self.lock is not None:
            self.lock.release()

    def upgrade(self, manifest: Manifest) -> Manifest:
        """Bring an older store's manifest and lock file to this format version (the caller
        holds the lock for writing), so an older HaloDB refuses the store cleanly once newer
        pages may be in it."""
        self._write_lock_header(self.join(fmt.LOCK_NAME))
        upgraded = Manifest(
            manifest.partitions,
            manifest.page_size,
            manifest.hash_seed,
            manifest.created_ns,
            manifest.codec,
        )
        self.fs.write_new(self.join(fmt.MANIFEST_NAME), manifest_bytes(upgraded))
        log.info("%s: upgraded from format version %d", self.path, manifest.version)
        return upgraded

    # -- creation ----------------------------------------------------------------------------

    def _create(self, options: Options, codec: str, creation: Creation) -> None:
        """Create the store's directory (not its parents) and files, taking the lock for them
        as ``self.lock``, held until the first open completes: no other process can use a
        store before its creator has opened it, so a failed first open may remove it whole.
        If another process finished creating the store meanwhile, ``self.lock`` stays
        ``None`` (the caller then opens it as any store). ``creation`` records what this call
        made, for :meth:`_undo_creation`."""
        if self.fs.is_dir(self.path):
            if self._adopt_existing(options, creation):
                return
        else:
            creation.made_dir = self._make_dir()
        lock = self._lock_for_creation(creation)
        if lock is None:
            return
        self.lock = lock
        creation.locked = True
        manifest = Manifest(
            partitions=options.partitions or DEFAULT_PARTITIONS,
            page_size=options.page_size or DEFAULT_PAGE_SIZE,
            hash_seed=secrets.randbits(32) if options.hash_seed is None else options.hash_seed,
            created_ns=self.fs.time_ns(),
            codec=codec,
        )
        for index in range(manifest.partitions):
            create_files(self.fs, self.path, index, manifest.page_size)
        self.fs.write_new(self.join(fmt.MANIFEST_NAME), manifest_bytes(manifest))

    def _adopt_existing(self, options: Options, creation: Creation) -> bool:
        """An existing directory without a manifest: check it may become the store (see
        :meth:`_check_leftovers`). True if another process's creation finished meanwhile."""
        fs, path = self.fs, self.path
        names = fs.listdir(path)
        creation.before = frozenset(names)
        try:
            self._check_leftovers(names, options.page_size or DEFAULT_PAGE_SIZE)
        except (CorruptionError, InterfaceError):
            # What looks like data without a manifest may be a store another process is
            # creating this very moment: refuse as locked while it holds the lock, open the
            # store if its creation has finished; only otherwise is the directory foreign.
            lock_path = self.join(fmt.LOCK_NAME)
            if fs.exists(lock_path):
                other = fs.lock(lock_path, exclusive=True)
                if other is None:
                    raise OperationalError(
                        f"{path}: store is being created or opened by another process"
                    ) from None
                other.release()
            if fs.exists(self.join(fmt.MANIFEST_NAME)):
                return True
            raise
        return False

    def _make_dir(self) -> bool:
        """Make the store's directory (its parent must exist); False if a racing creator
        made it first."""
        parent = os.path.dirname(self.path)
        if not self.fs.is_dir(parent):
            raise InterfaceError(
                f"{parent}: no such directory, so the store {self.path} cannot be created "
                "(HaloDB creates only the store's own directory, as mkdir does without -p)"
            )
        return self.fs.mkdir(self.path) is not False

    def _lock_for_creation(self, creation: Creation) -> Lock | None:
        """Write the lock file (if new) and take it exclusively; ``None`` if another process
        finished creating the store meanwhile."""
        fs, path = self.fs, self.path
        lock_path = self.join(fmt.LOCK_NAME)
        existed = fs.exists(lock_path)
        self._write_lock_header(lock_path)  # also fills an empty one left behind
        if not existed:
            fs.sync_dir(path)
        lock = fs.lock(lock_path, exclusive=True)
        if lock is None:
            creation.made_dir = False  # another process's creation: its store, not ours
            raise OperationalError(f"{path}: store is being created or opened by another process")
        try:
            if fs.exists(self.join(fmt.MANIFEST_NAME)):
                lock.release()
                return None
        except BaseException:
            lock.release()
            raise
        return lock

    def _undo_creation(self, creation: Creation) -> None:
        """After a failed first open: remove what :meth:`_create` made (the files it added, and
        the directory if it made it), so that the failure leaves nothing behind. Only under
        the lock (taken here if creation failed before it took it; a lock file is removed only
        by its holder, and :meth:`FileSystem.lock` never grants a removed one), or, with no
        lock file, only a directory this call made; never raises (the open's error matters)."""
        fs, path = self.fs, self.path
        lock: Lock | None = None
        try:
            if not creation.locked:
                lock_path = self.join(fmt.LOCK_NAME)
                if fmt.LOCK_NAME not in creation.before and fs.exists(lock_path):
                    lock = fs.lock(lock_path, exclusive=True)
                    if lock is None:
                        return  # another process uses the directory now
                elif not creation.made_dir:
                    return
            self._remove_made(creation)
        except Exception:
            log.warning("%s: removing what a failed creation made failed", path, exc_info=True)
        finally:
            if lock is not None:
                with suppress(Exception):
                    lock.release()

    def _remove_made(self, creation: Creation) -> None:
        """Remove the store's files that were not there before ``creation``, and the directory
        if it made it and it is empty then."""
        fs, path = self.fs, self.path
        for name in fs.listdir(path):
            if name not in creation.before and (
                name in (fmt.LOCK_NAME, fmt.MANIFEST_NAME, fmt.MANIFEST_NAME + ".tmp")
                or partition_file_kind(name) is not None
            ):
                fs.unlink(self.join(name))
        if creation.made_dir and not fs.listdir(path):
            fs.rmdir(path)
            fs.sync_dir(os.path.dirname(path))
        else:
            fs.sync_dir(path)

    def _check_leftovers(self, names: list[str], page_size: int) -> None:
        """A directory without a manifest may be made a store only if it is empty or holds
        what an interrupted creation leaves: the lock, temporary files, and partition files
        exactly as created (a log with no record, a tree with no page). Anything holding data
        means the manifest was lost, and re-creating the store would destroy that data."""
        foreign = []
        for name in names:
            kind = partition_file_kind(name)
            if name in (fmt.LOCK_NAME, fmt.MANIFEST_NAME + ".tmp") or (
                kind and kind[1].endswith("tmp")
            ):
                continue
            if kind is None:
                foreign.append(name)
            elif not self._as_created(name, *kind, page_size):
                raise CorruptionError(
                    f"{self.join(name)}: the store's manifest {fmt.MANIFEST_NAME} is missing but "
                    "its partition files hold data; not re-creating the store over them "
                    "(restore the manifest from a backup)"
                )
        if foreign:
            raise InterfaceError(
                f"{self.path}: directory is not empty and is not a HaloDB store "
                f"(it holds {sorted(foreign)[:3]}); choose an empty or new directory"
            )

    def _as_created(self, name: str, index: int, suffix: str, page_size: int) -> bool:
        """Whether the partition file ``name`` holds exactly what creation writes."""
        fresh = header_bytes(index, 0) if suffix == "wal" else new_tree_file(index, page_size)
        handle = self.fs.open(self.join(name))
        try:
            return (
                suffix != "bloom"
                and handle.size() == len(fresh)
                and handle.read_at(0, len(fresh)) == fresh
            )
        finally:
            handle.close()

    # -- the lock ----------------------------------------------------------------------------

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

    def _take_lock(self, *, readonly: bool) -> Lock:
        lock_path = self.join(fmt.LOCK_NAME)
        if not self.fs.exists(lock_path):
            raise CorruptionError(f"{lock_path}: lock file is missing")
        lock = self.fs.lock(lock_path, exclusive=not readonly)
        if lock is None:
            raise OperationalError(
                f"{self.path}: store is already open for writing"
                + ("" if readonly else " or reading")
                + " (in this or another process); close it there first"
            )
        return lock

"""A file system that fails the k-th system call of one kind, and knows what a power cut leaves.

This is the tests' one model of what a power cut leaves at the granularity of whole files: a
file as of its last fsync, a name as of the last fsync of its directory. (:mod:`powersim` is the
finer tool: it cuts at the granularity of sectors and pending writes, for every crash point of a
workload.)

:class:`FaultFS` is a :class:`halodb.vfs.FileSystem` for the I/O fault loops of
``test_iofaults.py`` (in the manner of SQLite's ``ioerr`` tests). Armed with a :class:`Fault`,
it counts the calls of one kind of operation (``KINDS``) and makes the k-th one fail, either
``once`` (later calls succeed) or ``persistent`` (that call and every later one of the kind
fail). The failure is an ``OSError`` (EIO or ENOSPC) raised where the real system call would
raise it and turned into ``halodb.OperationalError`` the way :mod:`halodb.vfs` does, so the
engine sees exactly what a failing disk would show it. A *short* write first writes part of the
buffer (``os.pwrite`` returning fewer bytes than asked), then fails with ENOSPC, which is what
``File.write_at``'s loop meets when the disk fills in the middle of a write. Unarmed, it injects
nothing and is only the durability model.

The model covers the store directory ``root`` only: for every file (followed through renames
and unlinks by an identity of its own, never by inode number, which the OS reuses) the bytes it
held at its last successful fsync, and for the directory the names it held at its last
successful directory fsync. Both are read *before* the fsync, so an image holds only what the
fsync covered; a name created, renamed or removed is durable only once the directory is synced.
:meth:`FaultFS.crash_copy` builds what a power cut at that moment may leave:

- ``optimistic=False``: a failed fsync made nothing durable, files never fsynced are empty, and
  a name created, renamed or removed since the last directory fsync is as it was then;
- ``optimistic=True``: a failed fsync (of a file or of the directory) still reached the disk
  whole, as a disk may do before it reports an error.

``before_sync(path)``, when set, runs at the start of every fsync of a file (before any fault
it may meet): a place to take crash copies at each step of a workload. The model is
thread-safe: threads may write, fsync, rename and take crash copies at once; when two fsyncs
of one file (or of the directory) overlap, the image read later wins, whichever returns first.

Real fsyncs are skipped unless ``real_fsync`` (the model decides durability, and the loops run
thousands of cases); everything else is real I/O on real files.
"""

from __future__ import annotations

import errno
import itertools
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from halodb.errors import OperationalError
from halodb.vfs import File, FileSystem, Lock

KINDS = ("write", "fsync", "sync_dir", "rename", "unlink", "truncate", "open")
"""The operations a fault can hit. ``open`` covers opening any file, the lock file included."""

ERRORS = ("EIO", "ENOSPC", "short", "torn")
"""``short``: half the buffer is written, then ENOSPC; ``torn``: all but its last byte."""


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str
    k: int
    error: str = "EIO"
    persistent: bool = False

    def __post_init__(self) -> None:
        assert self.kind in KINDS and self.error in ERRORS and self.k >= 1
        assert self.kind == "write" or self.error not in ("short", "torn")

    def __str__(self) -> str:
        mode = "persistent" if self.persistent else "once"
        return f"{self.kind}#{self.k} {self.error} {mode}"


Read = tuple[int, bytes | dict[str, int]]
"""What :meth:`FaultFS.read_for_fsync` took: its place in the order of reads, and a file's
bytes or the directory's names."""


def _oserror(error: str, path: str) -> OSError:
    code = errno.EIO if error == "EIO" else errno.ENOSPC
    return OSError(code, f"{os.strerror(code)} (injected)", path)


class FaultFS(FileSystem):
    """See the module docstring. ``injected`` lists every error raised so far."""

    def __init__(self, root: str | os.PathLike[str], *, real_fsync: bool = False) -> None:
        self.root = os.path.abspath(root)
        self.real_fsync = real_fsync
        self.fault: Fault | None = None
        self.calls = dict.fromkeys(KINDS, 0)
        """Calls of each kind since the last :meth:`arm` (counted only while armed)."""
        self.injected: list[OSError] = []
        self.before_sync: Callable[[str], None] | None = None
        """When set, called with a file's path at the start of each fsync of it."""
        self.mutex = threading.Lock()
        """Guards the model and the fault counts (never held while ``before_sync`` runs)."""
        self._ids = itertools.count(1)
        self._reads = itertools.count(1)
        """Orders the reads of images and listings, so that a later read is never replaced
        by an earlier one whose fsync returned after it."""
        self._read_of: dict[tuple[bool, int], int] = {}
        """(optimistic model?, identity or 0 for the names) -> the read its image came from."""
        self.current: dict[str, int] = {}
        """Path (in ``root``) -> identity of the file that has that name now."""
        self.images: dict[int, bytes] = {}
        self.images_hopeful: dict[int, bytes] = {}
        self.names: dict[str, int] = {}
        self.names_hopeful: dict[str, int] = {}
        self.seed()

    # -- faults --------------------------------------------------------------------------------

    def arm(self, fault: Fault) -> None:
        with self.mutex:
            self.fault = fault
            self.calls = dict.fromkeys(KINDS, 0)
            self.injected = []

    def disarm(self) -> None:
        self.fault = None

    def hit(self, kind: str, path: str) -> OSError | None:
        """Count one call of ``kind``; the error to raise if it is to fail."""
        fault = self.fault
        if fault is None or fault.kind != kind:
            return None
        with self.mutex:
            self.calls[kind] += 1
            n = self.calls[kind]
            if n == fault.k or (fault.persistent and n > fault.k):
                exc = _oserror(fault.error, path)
                self.injected.append(exc)
                return exc
        return None

    # -- the durability model --------------------------------------------------------------

    def seed(self) -> None:
        """Take every file now in ``root`` as durable, content and name (a clean start)."""
        with self.mutex:
            self.current.clear()
            self.images.clear()
            self.images_hopeful.clear()
            self._read_of.clear()
            if os.path.isdir(self.root):
                for name in os.listdir(self.root):
                    full = os.path.join(self.root, name)
                    fid = next(self._ids)
                    self.current[full] = fid
                    with open(full, "rb") as handle:
                        self.images[fid] = self.images_hopeful[fid] = handle.read()
            self.names = self._listing()
            self.names_hopeful = dict(self.names)

    def _listing(self) -> dict[str, int]:
        """The names in ``root`` now. The caller holds ``mutex``."""
        return {
            os.path.basename(p): fid
            for p, fid in self.current.items()
            if os.path.dirname(p) == self.root
        }

    def _tracked(self, path: str) -> bool:
        return os.path.dirname(os.path.abspath(path)) == self.root

    def read_for_fsync(self, handle: File | None) -> Read:
        """Read, in order, the image of the file of ``handle`` or, for ``None``, the names in
        ``root``: what an fsync starting now would make durable."""
        with self.mutex:
            return next(self._reads), self._listing() if handle is None else handle.read_all()

    def fsync_done(self, fid: int, read: Read, *, failed: bool) -> None:
        """Record ``read`` (from :meth:`read_for_fsync`; ``fid`` 0 for the names) as made
        durable by an fsync, in the optimistic model only if the fsync ``failed``; never over a
        later read."""
        order, data = read
        with self.mutex:
            for hopeful in (True,) if failed else (False, True):
                if self._read_of.get((hopeful, fid), 0) > order:
                    continue
                self._read_of[hopeful, fid] = order
                if isinstance(data, bytes):
                    (self.images_hopeful if hopeful else self.images)[fid] = data
                elif hopeful:
                    self.names_hopeful = dict(data)
                else:
                    self.names = dict(data)

    def crash_copy(self, target: str | os.PathLike[str], *, optimistic: bool = False) -> None:
        """Write into new directory ``target`` what a power cut now may leave of ``root``."""
        with self.mutex:
            names = dict(self.names_hopeful if optimistic else self.names)
            images = dict(self.images_hopeful if optimistic else self.images)
        os.mkdir(target)
        for name, fid in names.items():
            with open(os.path.join(target, name), "wb") as out:
                out.write(images.get(fid, b""))

    # -- the FileSystem seam ----------------------------------------------------------------

    def open(self, path: str, *, write: bool = False, create: bool = False) -> File:
        exc = self.hit("open", path)
        if exc is not None:
            raise OperationalError(f"opening {path!r} failed: {exc.strerror}") from exc
        full = os.path.abspath(path)
        with self.mutex:
            existed = os.path.lexists(path)
            handle = super().open(path, write=write, create=create)
            if self._tracked(full) and (not existed or full not in self.current):
                self.current[full] = next(self._ids)
            fid = self.current.get(full, 0)
        return FaultFile(self, handle.path, handle.fd, fid)

    def lock(self, path: str, *, exclusive: bool) -> Lock | None:
        exc = self.hit("open", path)
        if exc is not None:
            raise OperationalError(f"opening {path!r} failed: {exc.strerror}") from exc
        return super().lock(path, exclusive=exclusive)

    def rename(self, src: str, dst: str) -> None:
        exc = self.hit("rename", dst)
        if exc is not None:
            raise OperationalError(f"renaming '{src} -> {dst}' failed: {exc.strerror}") from exc
        with self.mutex:
            super().rename(src, dst)
            fid = self.current.pop(os.path.abspath(src), None)
            if fid is not None:
                self.current[os.path.abspath(dst)] = fid

    def unlink(self, path: str) -> None:
        exc = self.hit("unlink", path)
        if exc is not None:
            raise OperationalError(f"removing {path!r} failed: {exc.strerror}") from exc
        with self.mutex:
            super().unlink(path)
            self.current.pop(os.path.abspath(path), None)

    def sync_dir(self, path: str) -> None:
        exc = self.hit("sync_dir", path)
        mine = os.path.abspath(path) == self.root
        listing = self.read_for_fsync(None) if mine else None  # before the fsync: what it covers
        if exc is not None:
            if listing is not None:
                self.fsync_done(0, listing, failed=True)
            raise OperationalError(f"syncing directory {path!r} failed: {exc.strerror}") from exc
        if self.real_fsync:
            super().sync_dir(path)
        if listing is not None:
            self.fsync_done(0, listing, failed=False)


class FaultFile(File):
    """A file of a :class:`FaultFS`: its writes, fsyncs and truncations can fail."""

    __slots__ = ("fid",)
    fs: FaultFS

    def __init__(self, fs: FaultFS, path: str, fd: int, fid: int) -> None:
        super().__init__(fs, path, fd)
        self.fid = fid

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        exc = self.fs.hit("write", self.path)
        if exc is not None:
            fault = self.fs.fault
            assert fault is not None
            if fault.error in ("short", "torn"):
                done = len(data) // 2 if fault.error == "short" else len(data) - 1
                if done > 0:
                    os.pwrite(self.fd, memoryview(data)[:done], offset)
            raise OperationalError(f"writing {self.path!r} failed: {exc.strerror}") from exc
        super().write_at(offset, data)

    def sync(self) -> None:
        fs = self.fs
        if fs.before_sync is not None:
            fs.before_sync(self.path)
        exc = fs.hit("fsync", self.path)
        image = fs.read_for_fsync(self) if self.fid else None  # before the fsync: what it covers
        if exc is not None:
            if image is not None:
                fs.fsync_done(self.fid, image, failed=True)
            raise OperationalError(f"syncing {self.path!r} failed: {exc.strerror}") from exc
        if fs.real_fsync:
            super().sync()
        if image is not None:
            fs.fsync_done(self.fid, image, failed=False)

    def truncate(self, size: int) -> None:
        exc = self.fs.hit("truncate", self.path)
        if exc is not None:
            raise OperationalError(f"truncating {self.path!r} failed: {exc.strerror}") from exc
        super().truncate(size)

"""The one seam through which HaloDB touches the operating system; knows nothing of formats.

Every open, read, write, fsync, rename, unlink, truncate and lock goes through a
:class:`FileSystem`, so that tests can subclass it to inject faults or to drop writes that were
never synced. Every ``OSError`` leaves this module as an :class:`OperationalError` that names the
file and chains the original error.

Files are created ``0600`` and directories ``0700``; files are opened with ``O_NOFOLLOW`` so a
planted symlink is never followed. Nothing here fsyncs unless a method says so.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress

from halodb.errors import OperationalError

FILE_MODE = 0o600
DIR_MODE = 0o700
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_TEMPORARY_ATTEMPTS = 100
"""Fresh names :meth:`FileSystem.create_temporary` tries before it gives up."""
_PUNCH_HOLE = 0x02 | 0x01
"""``FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`` (Linux): free a range's blocks, keep the size."""


def _fallocate() -> object | None:
    """libc's ``fallocate`` (Linux), or ``None`` where there is none."""
    if not sys.platform.startswith("linux") or ctypes.sizeof(ctypes.c_long) != 8:
        return None  # (a 32-bit libc's fallocate takes 32-bit offsets)
    try:
        function = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    function.restype = ctypes.c_int
    return function


_FALLOCATE = _fallocate()


@contextmanager
def _oserror(action: str, path: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise OperationalError(f"{action} {path!r} failed: {exc.strerror or exc}") from exc


class File:
    """An open file: positional reads and writes, appends, fsync and truncate.

    Not thread-safe by itself; its owner serialises access.
    """

    __slots__ = ("closed", "fd", "fs", "path")

    def __init__(self, fs: FileSystem, path: str, fd: int) -> None:
        self.fs = fs
        self.path = path
        self.fd = fd
        self.closed = False

    def read_at(self, offset: int, size: int) -> bytes:
        """Read up to ``size`` bytes at ``offset`` (fewer at the end of the file)."""
        try:
            return os.pread(self.fd, size, offset)
        except OSError as exc:
            raise OperationalError(f"reading {self.path!r} failed: {exc.strerror or exc}") from exc

    def read_all(self) -> bytes:
        """The whole file."""
        size = self.size()
        chunks = []
        offset = 0
        while offset < size:
            chunk = self.read_at(offset, min(size - offset, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write all of ``data`` at ``offset``. Does not fsync."""
        try:
            done = os.pwrite(self.fd, data, offset)
            if done == len(data):
                return
            view = memoryview(data)[done:]
            offset += done
            while view:
                done = os.pwrite(self.fd, view, offset)
                if done <= 0:
                    raise OSError(errno.ENOSPC, "no progress writing")
                view = view[done:]
                offset += done
        except OSError as exc:
            raise OperationalError(f"writing {self.path!r} failed: {exc.strerror or exc}") from exc

    def sync(self) -> None:
        """fsync: everything written so far is durable when this returns."""
        with _oserror("syncing", self.path):
            os.fsync(self.fd)

    def truncate(self, size: int) -> None:
        """Cut or extend the file to ``size`` bytes. Does not fsync."""
        with _oserror("truncating", self.path):
            os.ftruncate(self.fd, size)

    def punch(self, offset: int, size: int) -> bool:
        """Give the blocks of ``[offset, offset + size)`` back to the file system: the range
        then reads as zeros, the file keeps its size. Whether it could (not where the file
        system or the platform cannot: the bytes stay). Does not fsync."""
        if _FALLOCATE is None:
            return False
        if _FALLOCATE(self.fd, _PUNCH_HOLE, offset, size) == 0:  # type: ignore[operator]
            return True
        code = ctypes.get_errno()
        if code in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return False
        raise OperationalError(
            f"giving space of {self.path!r} back failed: {os.strerror(code)}"
        ) from OSError(code, os.strerror(code))

    def size(self) -> int:
        """The file's current size in bytes."""
        with _oserror("reading the size of", self.path):
            return os.fstat(self.fd).st_size

    def close(self) -> None:
        """Close the descriptor; idempotent."""
        if not self.closed:
            self.closed = True
            with _oserror("closing", self.path):
                os.close(self.fd)


class Lock:
    """An advisory lock (``flock``) on a file, held until :meth:`release`."""

    __slots__ = ("fd", "path")

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd: int | None = fd

    def release(self) -> None:
        """Release the lock and close its descriptor; idempotent."""
        fd, self.fd = self.fd, None
        if fd is not None:
            with _oserror("unlocking", self.path):
                os.close(fd)


class AtomicFile:
    """What :meth:`FileSystem.atomic_writer` yields: a file being written under a temporary
    name, as a stream. Writes are buffered here and go out through :meth:`File.write_at`.

    Not thread-safe; not durable until the ``with`` block of :meth:`FileSystem.atomic_writer`
    ends.
    """

    __slots__ = ("_buffer", "_handle", "_offset")

    BUFFER_SIZE = 1 << 16
    """Bytes gathered before they are written out."""

    def __init__(self, handle: File) -> None:
        self._handle = handle
        self._buffer = bytearray()
        self._offset = 0

    @property
    def path(self) -> str:
        """The temporary file's path (renamed over the target when the block ends)."""
        return self._handle.path

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data``; returns its length. Does not fsync."""
        self._buffer += data
        if len(self._buffer) >= self.BUFFER_SIZE:
            self.flush()
        return len(data)

    def flush(self) -> None:
        """Write out what is buffered (to the OS, not to the disk: no fsync)."""
        if self._buffer:
            self._handle.write_at(self._offset, self._buffer)
            self._offset += len(self._buffer)
            self._buffer.clear()


class FileSystem:
    """Operating-system file access. Subclass to inject faults in tests."""

    def time_ns(self) -> int:
        """The wall clock, in nanoseconds since the epoch, that a store's files are stamped
        with (a new store's creation time). A test's file system may fix it, so that the same
        writes give the same bytes."""
        return time.time_ns()

    def open(self, path: str, *, write: bool = False, create: bool = False) -> File:
        """Open ``path``; ``create`` makes it (0600) if missing, implying ``write``."""
        flags = _NOFOLLOW | _CLOEXEC
        if create:
            flags |= os.O_RDWR | os.O_CREAT
        elif write:
            flags |= os.O_RDWR
        else:
            flags |= os.O_RDONLY
        with _oserror("opening", path):
            fd = os.open(path, flags, FILE_MODE)
        return File(self, path, fd)

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists (without following a final symlink). ``OperationalError``
        if the answer is unknown (permission denied on a parent directory, ...)."""
        try:
            os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            raise OperationalError(f"looking up {path!r} failed: {exc.strerror or exc}") from exc
        return True

    def size_of(self, path: str) -> int:
        """The size of the file ``path`` (0 if there is none). ``OperationalError`` if the
        answer is unknown."""
        try:
            return os.lstat(path).st_size
        except (FileNotFoundError, NotADirectoryError):
            return 0
        except OSError as exc:
            raise OperationalError(f"looking up {path!r} failed: {exc.strerror or exc}") from exc

    def is_dir(self, path: str) -> bool:
        """Whether ``path`` is a directory."""
        return os.path.isdir(path)

    def listdir(self, path: str) -> list[str]:
        """Names in directory ``path``."""
        with _oserror("listing", path):
            return os.listdir(path)

    def mkdir(self, path: str) -> bool:
        """Create directory ``path`` (0700; not its parents) and make it durable (its parent
        fsynced). ``False`` if a directory is there already (left as it is)."""
        with _oserror("creating directory", path):
            try:
                os.mkdir(path, DIR_MODE)
            except FileExistsError:
                if not os.path.isdir(path):
                    raise
                return False
        try:
            self.sync_dir(os.path.dirname(os.path.abspath(path)))
        except BaseException:
            with suppress(OSError):
                os.rmdir(path)  # not made, as far as the caller knows
            raise
        return True

    def rmdir(self, path: str) -> None:
        """Remove empty directory ``path``. Does not fsync its parent."""
        with _oserror("removing directory", path):
            os.rmdir(path)

    def rename(self, src: str, dst: str) -> None:
        """Atomically replace ``dst`` by ``src``. Does not fsync the directory."""
        with _oserror("renaming", f"{src} -> {dst}"):
            os.replace(src, dst)

    def rename_open(self, handle: File, dst: str) -> None:
        """``rename`` the file open in ``handle`` to ``dst``; ``handle`` goes by its new name
        from then on (its writes still reach the same file). Does not fsync the directory."""
        self.rename(handle.path, dst)
        handle.path = dst

    def unlink(self, path: str) -> None:
        """Remove ``path``. Does not fsync the directory."""
        with _oserror("removing", path):
            os.unlink(path)

    def sync_dir(self, path: str) -> None:
        """fsync directory ``path`` so that creates, renames and unlinks in it are durable."""
        with _oserror("syncing directory", path):
            fd = os.open(path, os.O_RDONLY | _CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def lock(self, path: str, *, exclusive: bool) -> Lock | None:
        """Take a non-blocking ``flock`` on existing file ``path``; ``None`` if another holds it,
        or if the file was removed (by the holder of its lock) before the lock was granted."""
        with _oserror("opening", path):
            fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError as exc:
            os.close(fd)
            raise OperationalError(f"locking {path!r} failed: {exc.strerror}") from exc
        try:  # the file locked must still be the one at ``path``: its holder may remove it
            current = os.stat(path, follow_symlinks=False)
            held = os.fstat(fd)
            same = (current.st_ino, current.st_dev) == (held.st_ino, held.st_dev)
        except FileNotFoundError:
            same = False
        except OSError as exc:
            os.close(fd)
            raise OperationalError(f"locking {path!r} failed: {exc.strerror}") from exc
        if not same:
            os.close(fd)
            return None
        return Lock(path, fd)

    def write_new(self, path: str, data: bytes | Sequence[bytes | bytearray | memoryview]) -> None:
        """Make ``path`` hold exactly ``data`` (or its pieces, one after another), atomically
        and durably.

        Writes a temporary file, fsyncs it, renames it over ``path`` and fsyncs the directory:
        after a crash ``path`` holds either its old content or ``data``, never a mix.
        """
        tmp = path + ".tmp"
        if self.exists(tmp):
            self.unlink(tmp)
        handle = self.open(tmp, create=True)
        try:
            try:
                if isinstance(data, bytes):
                    handle.write_at(0, data)
                else:
                    at = 0
                    for piece in data:
                        handle.write_at(at, piece)
                        at += len(piece)
                handle.sync()
            finally:
                handle.close()
            self.rename(tmp, path)
        except BaseException:
            with suppress(OSError, OperationalError):
                self.unlink(tmp)  # (what a crash here leaves, the next write_new removes)
            raise
        self.sync_dir(os.path.dirname(os.path.abspath(path)))

    def create_temporary(self, directory: str, prefix: str) -> File:
        """Create and open a new, empty file ``PREFIX.RANDOM.tmp`` in ``directory`` (0600,
        ``O_EXCL`` and ``O_NOFOLLOW``: a fresh name, never a file or link planted in advance).
        Does not fsync."""
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
        for _ in range(_TEMPORARY_ATTEMPTS):
            path = os.path.join(directory, f"{prefix}.{os.urandom(6).hex()}.tmp")
            try:
                fd = os.open(path, flags, FILE_MODE)
            except FileExistsError:
                continue
            except OSError as exc:
                raise OperationalError(f"creating {path!r} failed: {exc.strerror or exc}") from exc
            return File(self, path, fd)
        raise OperationalError(
            f"creating a temporary file in {directory!r} failed: every name tried was taken"
        )

    @contextmanager
    def atomic_writer(self, path: str) -> Iterator[AtomicFile]:
        """A new content for ``path``, written as a stream, atomically and durably.

        Yields an :class:`AtomicFile` over a temporary file beside ``path``
        (:meth:`create_temporary`). When the block ends, the temporary file is fsynced, renamed
        over ``path`` and the directory fsynced: after a crash ``path`` holds either its old
        content or the whole new one, never a mix. If the block or any of those steps raises,
        the temporary file is removed and ``path`` is left as it was (unless only the last
        fsync, of the directory, failed).
        """
        directory, name = os.path.split(os.path.abspath(path))
        handle = self.create_temporary(directory, name)
        try:
            try:
                out = AtomicFile(handle)
                yield out
                out.flush()
                handle.sync()
            finally:
                handle.close()
            self.rename(handle.path, path)
        except BaseException:
            with suppress(OSError, OperationalError):
                self.unlink(handle.path)
            raise
        self.sync_dir(directory)

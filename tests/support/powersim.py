"""A simulated disk that can lose power, and a harness that cuts it at every step of a workload.

:class:`SimFS` is a :class:`halodb.vfs.FileSystem` held entirely in memory. It keeps what the OS
shows (the page cache) apart from what a power cut would leave on the disk:

- every inode has a *durable image* (its bytes as of its last fsync) and the list of its
  *pending* writes and truncates since then, in order; ``File.sync`` makes them durable;
- every directory has a *durable* name table (name -> inode) and the list of its pending
  creates, renames and unlinks; ``sync_dir`` makes them durable. An fsync of a file does not
  make its name durable; a rename is not durable until its directory is synced. (Directories
  themselves are made before any power cut, at store creation, and count as durable.)

:meth:`SimFS.crash_images` lists what the disk may hold if the power were cut right now, each a
named *variant* in one of three families:

- ``"ordered"``: every file keeps a prefix of its pending writes. Everything pending lost
  (``lost``), everything kept (``kept``: what a crash of the process leaves), the directory's
  pending operations reverted in part or in whole (``names k/n``) or alone kept
  (``data-lost``), the last pending write of a file torn (a byte prefix of it reached the disk,
  the file ends there), and independent per-file prefixes across files (``prefixes``);
- ``"zero-tail"``: a file's new size reached the disk but its changed sectors (512 bytes) only
  up to some boundary; the rest hold their old bytes, zeros past the old end;
- ``"reorder"``: a later change of a file reached the disk without an earlier one: some of its
  changed sectors but not an earlier one, or some of its pending writes but not an earlier one
  that shares no sector with them. (Two writes into one sector cannot be reordered: the disk
  writes a sector with everything written to it so far.)

:class:`Run` executes a workload (a sequence of the operations in :data:`OPS`) on a store held
by a :class:`SimFS`, takes the crash images before every write, truncate, fsync, create,
rename, unlink and directory sync (and once at the end), opens each distinct image as a new store
(:func:`recover`, which also cuts the power during that recovery) and judges what it holds
against the promise of the durability mode (:class:`Judge`).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import halodb
import halodb.testing
from halodb.errors import OperationalError
from halodb.hashing import key_hash, route
from halodb.keys import encode_key
from halodb.vfs import File, FileSystem, Lock
from support.stores import DurabilityName

SECTOR = 512
"""The unit a disk writes atomically: a torn write keeps whole sectors."""

# -- the simulated file system ---------------------------------------------------------------

DataOp = tuple[Any, ...]
"""A pending change of an inode: ``("w", offset, data)`` a write, ``("t", size)`` a truncate."""

DirOp = tuple[Any, ...]
"""A pending change of a directory: ``("link", name, ino)``, ``("unlink", name)``,
``("rename", src, dst, ino)``."""


class Inode:
    """One file's bytes as the OS shows them, as the disk holds them, and the writes between."""

    __slots__ = ("data", "durable", "pending")

    def __init__(self, data: bytes = b"") -> None:
        self.data = bytearray(data)
        self.durable = bytes(data)
        self.pending: list[DataOp] = []


class Directory:
    """A directory's names as the OS shows them, as the disk holds them, and the changes between."""

    __slots__ = ("durable", "names", "pending")

    def __init__(self) -> None:
        self.names: dict[str, int] = {}
        self.durable: dict[str, int] = {}
        self.pending: list[DirOp] = []


@dataclass(frozen=True)
class Image:
    """What a disk holds: directories and files (full path -> bytes)."""

    dirs: tuple[str, ...]
    files: tuple[tuple[str, bytes], ...]
    digest: bytes = field(default=b"", compare=False)

    @staticmethod
    def of(dirs: Iterable[str], files: Iterable[tuple[str, bytes]]) -> Image:
        dirs, files = tuple(sorted(dirs)), tuple(sorted(files))
        h = hashlib.blake2b(digest_size=20)
        for path, data in files:
            h.update(b"%s\0%d\0" % (path.encode(), len(data)))
            h.update(data)
        return Image(dirs, files, h.digest())


def _apply(durable: bytes, ops: Sequence[DataOp]) -> bytes:
    """``durable`` with ``ops`` applied in order."""
    if not ops:
        return durable
    buf = bytearray(durable)
    for op in ops:
        kind = op[0]
        if kind == "t":
            size = op[1]
            if size < len(buf):
                del buf[size:]
            else:
                buf.extend(bytes(size - len(buf)))
            continue
        offset, data = op[1], op[2]
        if len(buf) < offset:
            buf.extend(bytes(offset - len(buf)))
        buf[offset : offset + len(data)] = data
    return bytes(buf)


class SimFile(File):
    """An open file of a :class:`SimFS`."""

    __slots__ = ("inode", "name")
    fs: SimFS

    def __init__(self, fs: SimFS, path: str, inode: Inode) -> None:
        super().__init__(fs, path, -1)
        self.inode = inode
        self.name = os.path.basename(path)

    def _open(self) -> Inode:
        if self.closed:
            raise OperationalError(f"{self.path!r}: file is closed")
        return self.inode

    def read_at(self, offset: int, size: int) -> bytes:
        return bytes(self._open().data[offset : offset + size])

    def read_all(self) -> bytes:
        return bytes(self._open().data)

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        inode = self._open()
        data = bytes(data)
        self.fs.event(f"write {self.name} [{offset}, {offset + len(data)})")
        buf = inode.data
        if len(buf) < offset:
            buf.extend(bytes(offset - len(buf)))
        buf[offset : offset + len(data)] = data
        inode.pending.append(("w", offset, data))

    def sync(self) -> None:
        inode = self._open()
        self.fs.event(f"fsync {self.name}")
        inode.durable = bytes(inode.data)
        inode.pending = []

    def truncate(self, size: int) -> None:
        inode = self._open()
        self.fs.event(f"truncate {self.name} to {size}")
        buf = inode.data
        if size < len(buf):
            del buf[size:]
        else:
            buf.extend(bytes(size - len(buf)))
        inode.pending.append(("t", size))

    def punch(self, offset: int, size: int) -> bool:
        # Blocks given back read as zeros: a write of zeros, as unsynced as any other.
        inode = self._open()
        assert offset + size <= len(inode.data), "a punch keeps the file's size"
        self.fs.event(f"punch {self.name} [{offset}, {offset + size})")
        inode.data[offset : offset + size] = bytes(size)
        inode.pending.append(("w", offset, bytes(size)))
        return True

    def size(self) -> int:
        return len(self._open().data)

    def close(self) -> None:
        self.closed = True


class _SimLock(Lock):
    __slots__ = ()

    def release(self) -> None:
        self.fd = None


class SimFS(FileSystem):
    """An in-memory file system that knows what a power cut would leave (module docstring).

    ``hook(event)``, when set, runs before every change (write, truncate, fsync, create,
    rename, unlink, directory sync): the place to cut the power.
    """

    def __init__(self, image: Image | None = None) -> None:
        self.inodes: dict[int, Inode] = {}
        self.dirs: dict[str, Directory] = {}
        self._numbers = itertools.count(1)
        self.dir_order: list[tuple[str, DirOp]] = []
        """Every pending directory operation, oldest first (across directories)."""
        self.hook: Callable[[str], None] | None = None
        if image is None:  # the disk has a root and the directory the store is made in
            self.dirs["/"] = Directory()
            self.dirs[os.path.dirname(STORE)] = Directory()
        if image is not None:
            for path in image.dirs:
                self.dirs[path] = Directory()
            for path, data in image.files:
                parent, name = os.path.split(path)
                ino = self._new_inode(data)
                self.dirs[parent].names[name] = ino
                self.dirs[parent].durable[name] = ino

    def _new_inode(self, data: bytes = b"") -> int:
        ino = next(self._numbers)
        self.inodes[ino] = Inode(data)
        return ino

    def event(self, what: str) -> None:
        """A change is about to happen: let the hook cut the power first."""
        if self.hook is not None:
            self.hook(what)

    def _dir_of(self, path: str) -> tuple[Directory, str, str]:
        parent, name = os.path.split(path)
        directory = self.dirs.get(parent)
        if directory is None:
            raise OperationalError(f"{path!r}: no such directory {parent!r}")
        return directory, parent, name

    def _dir_op(self, parent: str, op: DirOp) -> None:
        self.dirs[parent].pending.append(op)
        self.dir_order.append((parent, op))

    # -- FileSystem ------------------------------------------------------------------------

    def open(self, path: str, *, write: bool = False, create: bool = False) -> File:
        directory, parent, name = self._dir_of(path)
        ino = directory.names.get(name)
        if ino is None:
            if not create:
                raise OperationalError(f"opening {path!r} failed: No such file or directory")
            self.event(f"create {name}")
            ino = self._new_inode()
            directory.names[name] = ino
            self._dir_op(parent, ("link", name, ino))
        return SimFile(self, path, self.inodes[ino])

    def exists(self, path: str) -> bool:
        if path in self.dirs:
            return True
        parent, name = os.path.split(path)
        return parent in self.dirs and name in self.dirs[parent].names

    def is_dir(self, path: str) -> bool:
        return path in self.dirs

    def size_of(self, path: str) -> int:
        parent, name = os.path.split(path)
        ino = self.dirs[parent].names.get(name) if parent in self.dirs else None
        return 0 if ino is None else len(self.inodes[ino].data)

    def listdir(self, path: str) -> list[str]:
        if path not in self.dirs:
            raise OperationalError(f"listing {path!r} failed: No such directory")
        return sorted(self.dirs[path].names)

    def mkdir(self, path: str) -> bool:
        # Directories are made before any crash point (at store creation): durable at once.
        made = path not in self.dirs
        while path not in self.dirs:
            self.dirs[path] = Directory()
            path = os.path.dirname(path)
        return made

    def rmdir(self, path: str) -> None:
        # Only a failed creation removes a directory, before any crash point.
        if path not in self.dirs or self.dirs[path].names:
            raise OperationalError(f"removing directory {path!r} failed: not an empty directory")
        del self.dirs[path]

    def rename(self, src: str, dst: str) -> None:
        directory, parent, sname = self._dir_of(src)
        _, dparent, dname = self._dir_of(dst)
        assert parent == dparent, "HaloDB renames within a directory"
        if sname not in directory.names:
            raise OperationalError(f"renaming {src!r} failed: No such file")
        self.event(f"rename {sname} -> {dname}")
        ino = directory.names.pop(sname)
        directory.names[dname] = ino
        self._dir_op(parent, ("rename", sname, dname, ino))

    def unlink(self, path: str) -> None:
        directory, parent, name = self._dir_of(path)
        if name not in directory.names:
            raise OperationalError(f"removing {path!r} failed: No such file")
        self.event(f"unlink {name}")
        del directory.names[name]
        self._dir_op(parent, ("unlink", name))

    def sync_dir(self, path: str) -> None:
        if path not in self.dirs:
            raise OperationalError(f"syncing directory {path!r} failed: No such directory")
        self.event(f"sync_dir {os.path.basename(path) or path}")
        directory = self.dirs[path]
        directory.durable = dict(directory.names)
        directory.pending = []
        self.dir_order = [(d, op) for d, op in self.dir_order if d != path]

    def lock(self, path: str, *, exclusive: bool) -> Lock | None:
        if not self.exists(path):
            raise OperationalError(f"opening {path!r} failed: No such file")
        return _SimLock(path, -1)

    # -- power cuts ------------------------------------------------------------------------

    def image(self) -> Image:
        """What the OS shows now (what a crash of the process, not of the power, leaves)."""
        return self._image(len(self.dir_order), None)

    def quiet(self) -> bool:
        """Whether nothing is pending: the disk holds exactly what the OS shows."""
        return not self.dir_order and not any(self.inodes[i].pending for i in self._reachable())

    def _reachable(self) -> set[int]:
        """Inodes a crash image may name: in the names shown, on disk, or in between."""
        reachable: set[int] = set()
        for directory in self.dirs.values():
            reachable.update(directory.names.values())
            reachable.update(directory.durable.values())
        reachable.update(op[-1] for _, op in self.dir_order if op[0] != "unlink")
        return reachable

    def _image(self, dir_ops: int, data: dict[int, list[DataOp] | bytes] | None) -> Image:
        """The disk with the first ``dir_ops`` pending directory operations, and for each inode
        the pending data ops ``data[ino]`` applied to its durable image, or the bytes
        ``data[ino]`` (``data`` ``None``: what the OS shows; an inode not in it: its durable
        image)."""
        tables = {path: dict(d.durable) for path, d in self.dirs.items()}
        for parent, op in self.dir_order[:dir_ops]:
            table = tables[parent]
            if op[0] == "link":
                table[op[1]] = op[2]
            elif op[0] == "unlink":
                table.pop(op[1], None)
            else:
                table.pop(op[1], None)
                table[op[2]] = op[3]
        files = []
        for parent, table in tables.items():
            for name, ino in table.items():
                inode = self.inodes[ino]
                if data is None:
                    content = bytes(inode.data)
                else:
                    chosen = data.get(ino, ())
                    content = chosen if isinstance(chosen, bytes) else _apply(inode.durable, chosen)
                files.append((os.path.join(parent, name), content))
        return Image.of(self.dirs, files)

    def _name_of(self, ino: int) -> str:
        for directory in self.dirs.values():
            for table in (directory.names, directory.durable):
                for name, number in table.items():
                    if number == ino:
                        return name
        for _, op in self.dir_order:
            if op[-1] == ino:
                return str(op[-2])
        return f"inode{ino}"

    def crash_images(self, rng: random.Random) -> Iterator[tuple[str, str, Image]]:
        """``(variant, family, image)`` for what a power cut now may leave (module docstring).

        Identical images may repeat under different names; ``rng`` picks the sampled ones."""
        files = [
            (ino, self.inodes[ino].pending)
            for ino in sorted(self._reachable())
            if self.inodes[ino].pending
        ]
        ndir = len(self.dir_order)
        everything: dict[int, list[DataOp] | bytes] = {ino: list(p) for ino, p in files}

        yield "lost", "ordered", self._image(0, {})
        yield "kept", "ordered", self._image(ndir, everything)
        if not files and not ndir:
            return
        for k in range(ndir):
            yield f"names {k}/{ndir}", "ordered", self._image(k, everything)
        if ndir and files:
            yield "data-lost", "ordered", self._image(ndir, {})

        # The last write of a file torn: a byte prefix of it reached the disk, the file ends there.
        for ino, pending in files:
            last = pending[-1]
            if last[0] != "w" or len(last[2]) < 2:
                continue
            offset, data = last[1], last[2]
            for keep in sorted({len(data) // 2, len(data) - 1}):
                torn = {**everything, ino: [*pending[:-1], ("w", offset, data[:keep])]}
                yield (
                    f"torn {self._name_of(ino)}: {keep} of the {len(data)} bytes at {offset}",
                    "ordered",
                    self._image(ndir, torn),
                )

        # Per-file prefixes of the pending writes, across files: every combination if few.
        sizes = [len(pending) + 1 for _, pending in files]
        total = 1
        for size in sizes:
            total *= size
        if total <= 32:
            combos: Iterable[tuple[int, ...]] = itertools.product(*map(range, sizes))
        else:
            combos = sorted({tuple(rng.randrange(s) for s in sizes) for _ in range(16)})
        for combo in combos:
            if all(c == 0 for c in combo) or all(c == s - 1 for c, s in zip(combo, sizes)):
                continue
            chosen: dict[int, list[DataOp] | bytes] = {
                ino: pending[:c] for (ino, pending), c in zip(files, combo)
            }
            label = ", ".join(
                f"{self._name_of(ino)} {c}/{len(pending)}"
                for (ino, pending), c in zip(files, combo)
            )
            yield f"prefixes [{label}]", "ordered", self._image(ndir, chosen)
            if ndir:
                k = rng.randrange(ndir)
                yield f"prefixes [{label}], names {k}/{ndir}", "ordered", self._image(k, chosen)

        for ino, pending in files:
            yield from self._sector_images(ino, pending, everything, ndir, rng)
            yield from self._write_reorders(ino, pending, everything, ndir, rng)

    def _sector_images(
        self,
        ino: int,
        pending: list[DataOp],
        everything: dict[int, list[DataOp] | bytes],
        ndir: int,
        rng: random.Random,
    ) -> Iterator[tuple[str, str, Image]]:
        """The file's new size reached the disk but only some of its changed sectors did
        (the rest hold their old bytes, zeros past the old end): a prefix of them ("zero-tail")
        or a later one without an earlier one ("reorder")."""
        inode = self.inodes[ino]
        final = bytes(inode.data)
        if any(op[0] == "t" for op in pending) or len(final) < len(inode.durable):
            return
        old = inode.durable + bytes(len(final) - len(inode.durable))
        dirty = [
            s for s in range(0, len(final), SECTOR) if final[s : s + SECTOR] != old[s : s + SECTOR]
        ]
        if not dirty:
            return
        name = self._name_of(ino)

        def mix(kept: Iterable[int]) -> bytes:
            out = bytearray(old)
            for s in kept:
                out[s : s + SECTOR] = final[s : s + SECTOR]
            return bytes(out)

        def first_lost(kept: Iterable[int]) -> int:
            """The first byte at which the image differs from what the OS shows."""
            s = min(set(dirty) - set(kept))
            return next(i for i in range(s, s + SECTOR) if final[i] != old[i])

        cuts: Sequence[int] = range(len(dirty))
        if len(dirty) > 12:
            cuts = sorted({round(i * (len(dirty) - 1) / 11) for i in range(12)})
        for i in cuts:
            yield (
                f"zero tail {name}: size {len(final)} on disk, sectors from {dirty[i]} lost "
                f"(first byte lost: {first_lost(dirty[:i])})",
                "zero-tail",
                self._image(ndir, {**everything, ino: mix(dirty[:i])}),
            )
        if len(dirty) < 2:
            return
        subsets = {tuple(dirty[1:]), (dirty[-1],)}
        for _ in range(8):
            pick = tuple(s for s in dirty if rng.random() < 0.5)
            if pick and pick != tuple(dirty[: len(pick)]):
                subsets.add(pick)
            if len(subsets) >= 4:
                break
        for pick in sorted(subsets):
            yield (
                f"reorder {name}: of changed sectors {dirty}, only {list(pick)} reached the disk "
                f"(first byte lost: {first_lost(pick)})",
                "reorder",
                self._image(ndir, {**everything, ino: mix(pick)}),
            )

    def _write_reorders(
        self,
        ino: int,
        pending: list[DataOp],
        everything: dict[int, list[DataOp] | bytes],
        ndir: int,
        rng: random.Random,
    ) -> Iterator[tuple[str, str, Image]]:
        """A later pending write of the file reached the disk and an earlier one did not. Only
        subsets a disk can produce: a dropped write shares no sector with a later kept one
        (the page cache writes a sector with everything written to it so far)."""
        n = len(pending)
        if n < 2 or any(op[0] != "w" for op in pending):
            return

        def sectors(op: DataOp) -> set[int]:
            first, end = op[1] // SECTOR, (op[1] + len(op[2]) - 1) // SECTOR
            return set(range(first, end + 1))

        candidates = {tuple(range(1, n)), (n - 1,)}
        for _ in range(8):
            candidates.add(tuple(i for i in range(n) if rng.random() < 0.5))
        name = self._name_of(ino)
        for pick in sorted(candidates):
            if pick == tuple(range(len(pick))):
                continue  # a prefix: not a reordering
            dropped = [i for i in range(n) if i not in pick]
            if any(
                sectors(pending[i]) & sectors(pending[j]) for i in dropped for j in pick if j > i
            ):
                continue
            lost = min(pending[i][1] for i in dropped)
            yield (
                f"reorder {name}: of {n} pending writes only {list(pick)} reached the disk "
                f"(first byte lost: {lost})",
                "reorder",
                self._image(ndir, {**everything, ino: [pending[i] for i in pick]}),
            )


# -- the store, its workloads and the promise ------------------------------------------------

STORE = "/powersim/db"
HASH_SEED = 0x5EED_1234
"""Routing seed of every store here (fixed, so that a failure reproduces exactly)."""
PARTITIONS = 2
OPTIONS: dict[str, Any] = {
    "partitions": PARTITIONS,
    "page_size": 1024,
    "memtable_size": 64 * 1024,
    "fast_buffer_size": 4096,
    "background": False,  # merges run in the writing thread: crash points in a fixed order
}
MODES: tuple[DurabilityName, ...] = ("full", "normal", "fast")
OPS = ("put", "big", "delete", "overwrite", "batch", "flush", "compact", "reopen")
BIG = 3000
"""Characters of a large value: more than a page (1024), so a flush puts it in overflow pages."""

TREE_KEYS = [("tree", i) for i in range(8)]
MEM_KEYS = [("mem", i) for i in range(4)]
DELETE_TARGETS = [("tree", "big"), ("mem", 0), ("tree", 2)]
OVERWRITE_TARGETS = [("tree", 3), ("mem", 1), ("tree", 1)]
BATCH_DELETES = [("tree", 4), ("mem", 2), ("tree", 5)]


def partition_of(key: Any) -> int:
    """The partition ``key`` routes to in every store here."""
    return route(key_hash(encode_key(key), HASH_SEED), PARTITIONS)


def _batch_keys(position: int) -> list[Any]:
    """Two new keys for the batch at ``position``: one in each partition."""
    out = []
    for want in range(PARTITIONS):
        out.append(
            next(k for i in itertools.count() if partition_of(k := ("batch", position, i)) == want)
        )
    return out


DELETED = object()
BATCH_GAP = "batch dropped under later writes in partition"
"""How a judge names a partition that kept writes made after a batch that recovery dropped."""


@dataclass
class Write:
    """The changes one operation makes (``DELETED`` for a delete), all or nothing."""

    op: int
    changes: dict[Any, Any]

    @property
    def parts(self) -> set[int]:
        return {partition_of(k) for k in self.changes}


def changes_of(op: str, position: int) -> dict[Any, Any]:
    """What operation ``op`` at ``position`` of a workload writes (empty for flush, reopen)."""
    if op == "put":
        return {("put", position): f"put@{position}"}
    if op == "big":
        return {("big", position): f"big@{position}:" + "B" * BIG}
    if op == "delete":
        return {DELETE_TARGETS[position]: DELETED}
    if op == "overwrite":
        return {OVERWRITE_TARGETS[position]: f"over@{position}"}
    if op == "batch":
        b0, b1 = _batch_keys(position)
        return {b0: f"batch@{position}", b1: f"batch@{position}", BATCH_DELETES[position]: DELETED}
    return {}


_BASE: tuple[Image, dict[Any, Any]] | None = None


def base(*, fresh: bool = False) -> tuple[Image, dict[Any, Any]]:
    """The store every workload starts from, fully durable, and what it holds (built once, or
    anew with ``fresh``: by an engine with a planted bug in its log format, say).

    Keys in both trees (one with a value in overflow pages) and, written after the flush and
    synced, keys in both logs (so that the workload's open replays them into the memtables)."""
    global _BASE  # noqa: PLW0603
    if _BASE is None or fresh:
        fs = SimFS()
        db = halodb.open(STORE, filesystem=fs, hash_seed=HASH_SEED, **OPTIONS)
        model: dict[Any, Any] = {}
        for key in TREE_KEYS:
            db[key] = model[key] = f"{key[0]}{key[1]}"
        db["tree", "big"] = model["tree", "big"] = "treebig:" + "T" * BIG
        db["gone", "gap"] = "H" * BIG  # (in the partition of ("tree", "big"), before it)
        db.flush()
        # A value written and deleted again, then one more merge: the pages at the end of the
        # tree file are free when a workload first commits, which cuts them off (a step for
        # the power to be cut at).
        db["gone", "big"] = "G" * BIG
        db.flush()
        del db["gone", "big"]
        db.flush()
        db["gone", "big"] = "g"
        del db["gone", "big"]
        db.flush()
        # Free pages below pages in use, in the other partition: a compaction moves the
        # overflow pages of ("tree", "big") into them.
        del db["gone", "gap"]
        db.flush()
        for key in MEM_KEYS:
            db[key] = model[key] = f"{key[0]}{key[1]}"
        db["tree", 1] = model["tree", 1] = "tree1-v2"
        db.sync()
        assert fs.quiet(), "the base store must be wholly durable"
        image = fs.image()
        halodb.testing.abandon(db)
        parts = [partition_of(k) for k in model]
        assert all(parts.count(p) >= 3 for p in range(PARTITIONS)), "keys in every partition"
        if fresh:
            return image, model
        _BASE = image, model
    return _BASE


def workloads(max_ops: int) -> list[tuple[str, ...]]:
    """Every sequence of 1 to ``max_ops`` operations of :data:`OPS`."""
    return [w for n in range(1, max_ops + 1) for w in itertools.product(OPS, repeat=n)]


def run_op(db: halodb.Store, op: str, position: int, reopen: Callable[[], halodb.Store]) -> Any:
    """Perform ``op``; returns the store (a new one after ``reopen``)."""
    changes = changes_of(op, position)
    if op in ("put", "big", "overwrite"):
        ((key, value),) = changes.items()
        db[key] = value
    elif op == "delete":
        (key,) = changes
        del db[key]
    elif op == "batch":
        with db.batch() as b:
            for key, value in changes.items():
                if value is DELETED:
                    del b[key]
                else:
                    b[key] = value
    elif op == "flush":
        db.flush()
    elif op == "compact":
        db.compact()
    else:
        assert op == "reopen"
        return reopen()
    return db


# -- judging what a crash image holds --------------------------------------------------------


@dataclass
class Outcome:
    """What opening a crash image gave: the items, or why it failed."""

    items: dict[Any, Any] | None
    error: str = ""


def recover(image: Image, *, nested: dict[bytes, Outcome] | None = None) -> Outcome:
    """Open ``image`` as a store, check it, read it; close, reopen, and read it again.

    Every step must succeed, ``check()`` must be clean, ``len()`` must agree with the items, and
    the second open must find what the first did (recovery's decision never changes later).

    With ``nested`` (a cache of outcomes), the power is also cut before every change the first
    open makes (cutting a torn tail, replacing a log, flushing after dropping parts of a batch),
    and each such image must recover to the same items as the uninterrupted recovery did."""
    fs = SimFS(image)
    cuts: list[tuple[str, str, Image]] = []
    if nested is not None:
        rng = random.Random(image.digest)

        def cut(event: str) -> None:
            for variant, _, crashed in fs.crash_images(rng):
                cuts.append((event, variant, crashed))

        fs.hook = cut
    try:
        with _quiet():
            db = halodb.open(STORE, filesystem=fs, **OPTIONS)
    except Exception as exc:
        return Outcome(None, f"open failed: {type(exc).__name__}: {exc}")
    finally:
        fs.hook = None
    outcome = _read_back(db, fs)
    if outcome.items is None or nested is None:
        return outcome
    seen = {image.digest}
    for event, variant, crashed in cuts:
        if crashed.digest in seen:
            continue
        seen.add(crashed.digest)
        if crashed.digest not in nested:
            nested[crashed.digest] = recover(crashed)
        again = nested[crashed.digest]
        if again.items != outcome.items:
            found = again.error
            if not found:
                assert again.items is not None  # an outcome without an error has its items
                found = _diff(outcome.items, again.items)
            return Outcome(
                None,
                f"{RECOVERY_CUT} before {event!r}, variant {variant!r}, the next open "
                f"differs from the uninterrupted recovery: {found}",
            )
    return outcome


RECOVERY_CUT = "after a power cut during recovery"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Recovery logs a warning for every torn tail and dropped batch: thousands here."""
    logger = logging.getLogger("halodb")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _read_back(db: halodb.Store, fs: SimFS) -> Outcome:
    """Check and read a freshly recovered store, close it, reopen it and read it again."""
    stage = "check()"
    try:
        db.check()
        stage = "reading"
        items = dict(db.items())
        if len(db) != len(items):
            return Outcome(None, f"len() is {len(db)} but {len(items)} items were read")
        stage = "close()"
        db.close()
        stage = "the second open"
        with _quiet():
            db = halodb.open(STORE, filesystem=fs, **OPTIONS)
        stage = "check() after the second open"
        db.check()
        again = dict(db.items())
        if again != items:
            return Outcome(None, f"the second open reads {_diff(items, again)}")
        db.close()
    except Exception as exc:
        return Outcome(None, f"{stage} failed: {type(exc).__name__}: {exc}")
    finally:
        if not db.closed:
            halodb.testing.abandon(db)
    return Outcome(items)


def _show(value: Any) -> str:
    if value is DELETED:
        return "<absent>"
    text = repr(value)
    return text if len(text) <= 24 else text[:21] + "..."


def _diff(want: dict[Any, Any], got: dict[Any, Any]) -> str:
    """The keys whose values differ, as ``key: got (want ...)``."""
    out = []
    for key in sorted(set(want) | set(got), key=repr):
        a, b = want.get(key, DELETED), got.get(key, DELETED)
        if a != b:
            out.append(f"{key!r}: {_show(b)} (expected {_show(a)})")
    return "; ".join(out[:4]) + (f"; and {len(out) - 4} more" if len(out) > 4 else "")


@dataclass(frozen=True)
class Point:
    """A moment to cut the power: before event ``index`` (or at the end), and what the
    workload had done by then."""

    index: int
    event: str
    acked: int
    """Operations that had returned."""
    inflight: int | None
    """The operation running, if any."""
    barrier: int
    """Operations that had returned before the last completed flush() or close()."""


@dataclass(frozen=True)
class Violation:
    """A broken promise, named so that it can be reproduced."""

    mode: str
    workload: tuple[str, ...]
    point: Point
    variant: str
    family: str
    problem: str

    def __str__(self) -> str:
        return (
            f"[mode={self.mode} workload={'+'.join(self.workload)} "
            f"cut=#{self.point.index} before {self.point.event!r} "
            f"(acked {self.point.acked} ops, in flight: {self.point.inflight}) "
            f"variant={self.variant!r}] {self.problem}"
        )


class Judge:
    """The promise of a mode for one workload (README, "Durability"):

    - ``"full"``: every acknowledged write survives;
    - ``"normal"``, ``"fast"``: for each partition, every write up to some point survives, and
      at least every write acknowledged before a ``flush()`` or ``close()`` that returned (both
      make the trees durable: design.md, "Flush" and "Close");
    - every mode: a batch is all or nothing, and nothing that was never written appears.

    So each partition must hold its base state with a prefix of its writes applied, of a length
    between what is promised and what had been issued, and the prefixes must agree on each
    batch."""

    def __init__(self, mode: str, workload: Sequence[str], base_items: dict[Any, Any]) -> None:
        self.mode = mode
        self.writes = [
            Write(i, changes) for i, op in enumerate(workload) if (changes := changes_of(op, i))
        ]
        self.per_part: list[list[Write]] = [
            [w for w in self.writes if p in w.parts] for p in range(PARTITIONS)
        ]
        self.base = [
            {k: v for k, v in base_items.items() if partition_of(k) == p} for p in range(PARTITIONS)
        ]
        self.states = [
            [self._without(p, c, ()) for c in range(len(self.per_part[p]) + 1)]
            for p in range(PARTITIONS)
        ]
        """``states[p][c]``: partition ``p`` after its first ``c`` writes."""
        self._parts: dict[Any, int] = {}

    def _without(self, p: int, count: int, skip: Sequence[Write]) -> dict[Any, Any]:
        """Partition ``p``'s base with its first ``count`` writes applied, except ``skip``."""
        state = dict(self.base[p])
        for w in self.per_part[p][:count]:
            if any(w is s for s in skip):
                continue
            for key, value in w.changes.items():
                if partition_of(key) != p:
                    continue
                if value is DELETED:
                    state.pop(key, None)
                else:
                    state[key] = value
        return state

    def _part(self, key: Any) -> int:
        if key not in self._parts:
            self._parts[key] = partition_of(key)
        return self._parts[key]

    def __call__(self, outcome: Outcome, point: Point) -> str | None:
        """The broken promise, or ``None``."""
        if outcome.items is None:
            return outcome.error
        promised_ops = point.acked if self.mode == "full" else point.barrier
        observed: list[dict[Any, Any]] = [{} for _ in range(PARTITIONS)]
        for key, value in outcome.items.items():
            observed[self._part(key)][key] = value
        choices = []
        for p in range(PARTITIONS):
            writes = self.per_part[p]
            floor = sum(w.op < promised_ops for w in writes)
            ceiling = sum(w.op < point.acked or w.op == point.inflight for w in writes)
            states = self.states[p]
            fits = [c for c in range(floor, ceiling + 1) if states[c] == observed[p]]
            if not fits:
                lower = [c for c in range(floor) if states[c] == observed[p]]
                if lower:
                    lost = writes[lower[-1]]
                    return (
                        f"partition {p} lost a write promised durable (op {lost.op}): it holds "
                        f"{lower[-1]} of its writes, {floor} were promised; "
                        f"{_diff(states[floor], observed[p])}"
                    )
                batches = [w for w in writes[floor:ceiling] if len(w.parts) > 1]
                for n in range(1, len(batches) + 1):
                    for skip in itertools.combinations(batches, n):
                        if any(
                            self._without(p, c, skip) == observed[p]
                            for c in range(writes.index(skip[-1]) + 2, ceiling + 1)
                        ):
                            return (
                                f"{BATCH_GAP} {p}: it holds later writes but not the batches "
                                f"of ops {[w.op for w in skip]} before them, so no prefix of "
                                "its writes"
                            )
                return (
                    f"partition {p} holds a state no prefix of its writes gives "
                    f"({floor} to {ceiling} of {len(writes)} allowed): "
                    f"{_diff(states[ceiling], observed[p])}"
                )
            choices.append(fits)
        batches = [w for w in self.writes if len(w.parts) > 1]
        for combo in itertools.product(*choices):
            if all(
                len({combo[p] > self.per_part[p].index(b) for p in b.parts}) == 1 for b in batches
            ):
                return None
        return f"a batch is torn: partitions hold prefixes {choices} that split a batch"


# -- a run: one workload in one mode, cut at every step ---------------------------------------

OUTCOMES: dict[bytes, Outcome] = {}
"""Recovery outcomes by image digest, shared by runs of the unchanged engine."""
NESTED: dict[bytes, Outcome] = {}
"""The same for images of a power cut during recovery (not cut again)."""


@dataclass
class Report:
    """What a run found."""

    mode: str
    workload: tuple[str, ...]
    points: int = 0
    variants: int = 0
    images: int = 0
    violations: dict[str, list[Violation]] = field(default_factory=dict)
    """Broken promises by variant family."""


class Run:
    """Execute ``workload`` in ``mode`` on the base store, cutting the power before every change
    (and at the end) and judging every crash image; see the module docstring."""

    def __init__(
        self,
        mode: DurabilityName,
        workload: Sequence[str],
        *,
        seed: int,
        cache: dict[bytes, Outcome] | None = None,
        families: Sequence[str] = ("ordered", "zero-tail", "reorder"),
        fresh_base: bool = False,
    ) -> None:
        self.mode = mode
        self.workload = tuple(workload)
        self.rng = random.Random(f"{seed}:{mode}:{'+'.join(workload)}")
        self.cache = OUTCOMES if cache is None else cache
        self.nested = NESTED if cache is None else {}
        self.families = families
        self.fresh_base = fresh_base
        self.acked = 0
        self.inflight: int | None = None
        self.barrier = 0
        self.cuts: list[tuple[Point, list[tuple[str, str, bytes]]]] = []
        """Each crash point, with its distinct images: ``(variant, family, digest)``."""
        self.todo: dict[bytes, Image] = {}
        """Images not in the cache yet, to recover once the workload is done."""
        self.fs = SimFS()

    def _cut(self, event: str) -> None:
        point = Point(len(self.cuts), event, self.acked, self.inflight, self.barrier)
        seen: set[bytes] = set()
        variants = []
        for variant, family, image in self.fs.crash_images(self.rng):
            if family not in self.families or image.digest in seen:
                continue
            seen.add(image.digest)
            variants.append((variant, family, image.digest))
            if image.digest not in self.cache:
                self.todo[image.digest] = image
        self.cuts.append((point, variants))

    def execute(self) -> Report:
        image, base_items = base(fresh=self.fresh_base)
        self.fs = fs = SimFS(image)
        db = halodb.open(STORE, filesystem=fs, durability=self.mode, **OPTIONS)

        def reopen() -> halodb.Store:
            db.close()
            self.barrier = self.acked
            return halodb.open(STORE, filesystem=fs, durability=self.mode, **OPTIONS)

        fs.hook = self._cut
        try:
            for position, op in enumerate(self.workload):
                self.inflight = position
                db = run_op(db, op, position, reopen)
                self.inflight = None
                self.acked += 1
                if op == "flush":
                    self.barrier = self.acked
            self._cut("the end of the workload")
        finally:
            fs.hook = None
            if not db.closed:
                halodb.testing.abandon(db)
        for digest, crashed in self.todo.items():
            self.cache[digest] = recover(crashed, nested=self.nested)
        judge = Judge(self.mode, self.workload, base_items)
        report = Report(self.mode, self.workload, points=len(self.cuts), images=len(self.todo))
        for point, variants in self.cuts:
            report.variants += len(variants)
            for variant, family, digest in variants:
                problem = judge(self.cache[digest], point)
                if problem is not None:
                    report.violations.setdefault(family, []).append(
                        Violation(self.mode, self.workload, point, variant, family, problem)
                    )
        return report

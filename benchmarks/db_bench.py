"""db_bench for HaloDB: one workload, run against HaloDB and its peers in one process.

A LevelDB ``db_bench``-style script, not a test: it times fills, point reads, scans, deletes,
reopen and bytes on disk for every engine it can import, prints ops/s and µs/op per benchmark
per engine, and HaloDB's ratio to each peer.  It must not know HaloDB's internals: it uses only
the public API (``halodb.open``, mapping protocol, ``batch``, ``range``, ``items``, ``flush``,
``close``), exactly as an application would.

Usage::

    python benchmarks/db_bench.py                       # --num 1000000, every engine found
    python benchmarks/db_bench.py --num 20000 --engines halodb,sqlite3,lmdb --json out.json

Every engine gets a fresh directory under ``--workdir`` and the same keys, values and access
orders, generated from ``--seed`` before any timing.  Loops are identical across engines: each
one calls an adapter method bound to a local, so every engine pays the same Python call
overhead per operation.  Results are checked (found counts, a sample of values, range
contents) outside the timed regions; an engine that returns wrong data is reported as failed.
See benchmarks/README.md for what each benchmark measures and how ratios are defined.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import gc
import importlib
import importlib.metadata
import inspect
import json
import math
import os
import platform
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, ClassVar, Protocol

MACHINE_NOTE = (
    "shared, noisy machine: compare ratios within one run, not absolute numbers across runs"
)
DURABILITIES = ("full", "normal", "fast")
SUBJECT = "halodb"

Item = tuple[bytes, bytes]
Result = dict[str, Any]

# Benchmarks reported as throughput (ops/s, µs/op), in report order.
THROUGHPUT = (
    "fillrandom",
    "fillbatch",
    "readrandom",
    "readmissing",
    "readseq",
    "seekrandom",
    "deleterandom",
)
# Benchmarks reported as a put-latency histogram (lower is better; p99 is the headline).
LATENCIES = ("fill_latency",)
LATENCY_KEYS = ("p50_us", "p99_us", "p999_us", "max_us")
# Benchmarks reported as a duration (lower is better).
DURATIONS = ("reopen", "reopen_flushed", "crash_reopen", "reopen_readonly")
# Benchmarks reported as a size (lower is better).
SIZES = ("bytes", "bytes_deleted", "bytes_compacted")
ORDERED_ONLY = frozenset({"readseq", "seekrandom"})
# Phases that cost about one more fill each; on by default, --no-<name> skips one.
OPTIONAL_PHASES = ("latency", "crash", "compact")
# The first argument that makes this script the crash phase's child (see crash_child).
CRASH_CHILD = "--crash-child"

DESCRIPTIONS = {
    "fillrandom": "one put per operation, random key order, fresh store",
    "fillbatch": "puts in batches of --batch-size, one commit per batch, fresh store",
    "readrandom": "gets of existing keys in shuffled order",
    "readmissing": "gets of absent keys",
    "readseq": "full ordered scan, ops = items",
    "seekrandom": "range scans of --scan-length items from random start keys, ops = scans",
    "deleterandom": "deletes of half the keys, random order",
    "fill_latency": "the latency of each put of a fill like fillrandom's, fresh store",
    "reopen": "close + open after fillrandom without an explicit flush",
    "reopen_flushed": "close + open right after the engine's flush (if it has one)",
    "crash_reopen": "open after SIGKILL of a child process that did the fill, no close",
    "reopen_readonly": "read-only open of the cleanly closed fillbatch store",
    "bytes": "bytes on disk (du) after fillrandom, store closed",
    "bytes_deleted": "bytes on disk after deleting 90% of the fillbatch store's keys",
    "bytes_compacted": "bytes on disk after those deletes and the engine's compaction",
}


class EngineUnavailableError(Exception):
    """The engine's module cannot be imported here; the engine is skipped with a note."""


class VerificationError(Exception):
    """An engine returned data that does not match what was written."""


# --------------------------------------------------------------------------------------------
# Adapters: one small interface over every engine.
# --------------------------------------------------------------------------------------------


class Adapter(ABC):
    """One engine behind the benchmark's interface.

    ``open`` may be called again after ``close`` on the same directory (reopen).  ``get``
    returns None for an absent key.  ``scan`` and ``range`` are only called when ``ordered``
    is true; ``flush`` only when ``has_flush`` is true; ``open_readonly`` only when
    ``has_readonly`` is true.
    """

    name = ""
    module = ""  # distribution name for the version report
    ordered = True
    has_flush = False
    has_readonly = False

    def __init__(self, durability: str) -> None:
        self.durability = durability
        self.is_open = False

    @abstractmethod
    def open(self, path: Path) -> None: ...

    @abstractmethod
    def put(self, key: bytes, value: bytes) -> None: ...

    def put_batch(self, items: Sequence[Item]) -> None:
        """Write ``items`` as one unit; engines without batches just loop."""
        put = self.put
        for key, value in items:
            put(key, value)

    @abstractmethod
    def get(self, key: bytes) -> bytes | None: ...

    @abstractmethod
    def delete(self, key: bytes) -> None: ...

    def scan(self) -> Iterator[Item]:
        raise NotImplementedError(f"{self.name} has no ordered iteration")

    def range(self, start: bytes, count: int) -> list[Item]:
        raise NotImplementedError(f"{self.name} has no ordered iteration")

    def flush(self) -> None:
        raise NotImplementedError(f"{self.name} has no flush")

    def open_readonly(self, path: Path) -> None:
        """Open the store at ``path`` read-only; ``get`` and ``close`` must work after it."""
        raise NotImplementedError(f"{self.name} has no read-only open")

    def compact(self) -> bool:
        """Run the engine's compaction to the end; False if it has none."""
        return False

    def replayed_records(self) -> int | None:
        """Log records the last open replayed, if the engine can tell (None if not)."""
        return None

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def pairing(self) -> str:
        """How --durability maps onto this engine's settings."""

    def version(self) -> str:
        try:
            return importlib.metadata.version(self.module or self.name)
        except importlib.metadata.PackageNotFoundError:
            return "?"


def _import(name: str) -> Any:
    """Import an optional peer, or raise EngineUnavailableError with the reason."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise EngineUnavailableError(f"cannot import {name}: {exc}") from exc


class _HaloBatch(Protocol):
    def __setitem__(self, key: bytes, value: bytes, /) -> None: ...
    def __delitem__(self, key: bytes, /) -> None: ...


class _HaloStore(Protocol):
    """The slice of HaloDB's public API that the benchmark uses.

    HaloDB types keys and values widely (str, int, tuple keys; codec-decoded values); bytes in
    come back as bytes, which the benchmark checks outside its timings.
    """

    def __setitem__(self, key: bytes, value: bytes, /) -> None: ...
    def __delitem__(self, key: bytes, /) -> None: ...
    def get(self, key: bytes, /) -> Any: ...
    def batch(self) -> AbstractContextManager[_HaloBatch]: ...
    def range(
        self, start: bytes | None = ..., stop: bytes | None = ..., *, limit: int | None = ...
    ) -> Iterable[tuple[Any, Any]]: ...
    def items(self) -> Iterable[tuple[Any, Any]]: ...
    def flush(self) -> None: ...
    def stats(self) -> Any: ...
    def close(self) -> None: ...


class HaloDBAdapter(Adapter):
    """HaloDB, the subject, through its public API only."""

    name = "halodb"
    has_flush = True
    has_readonly = True

    def __init__(self, durability: str) -> None:
        super().__init__(durability)
        try:
            import halodb  # lazy: the peers still run where halodb cannot be imported
        except ImportError as exc:
            raise EngineUnavailableError(f"cannot import halodb: {exc}") from exc
        if not hasattr(halodb, "open"):
            raise EngineUnavailableError("halodb has no open() yet")
        self._halodb = halodb
        self._db: _HaloStore | None = None
        self._limit = "limit" in inspect.signature(halodb.Store.range).parameters
        """``range(limit=)`` exists (older HaloDBs, compared by compare.py, cut with islice)."""

    def open(self, path: Path) -> None:
        durability: Any = self.durability  # one of HaloDB's names, checked by open()
        db: _HaloStore = self._halodb.open(str(path), durability=durability)
        self._db = db

    def _store(self) -> _HaloStore:
        assert self._db is not None
        return self._db

    def put(self, key: bytes, value: bytes) -> None:
        self._store()[key] = value

    def put_batch(self, items: Sequence[Item]) -> None:
        with self._store().batch() as batch:
            for key, value in items:
                batch[key] = value

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self._store().get(key)
        return value

    def delete(self, key: bytes) -> None:
        del self._store()[key]

    def scan(self) -> Iterator[Item]:
        return iter(self._store().items())

    def range(self, start: bytes, count: int) -> list[Item]:
        store = self._store()
        if self._limit:  # pushed down to every partition (HaloDB since range(limit=))
            return list(store.range(start=start, limit=count))
        return list(islice(store.range(start=start), count))

    def flush(self) -> None:
        self._store().flush()

    def open_readonly(self, path: Path) -> None:
        db: _HaloStore = self._halodb.open(str(path), readonly=True)
        self._db = db

    def compact(self) -> bool:
        store = self._store()
        if not hasattr(store, "compact"):  # not in HaloDB's API yet
            return False
        store.compact()
        return True

    def replayed_records(self) -> int | None:
        # Right after an open, the memtables hold exactly the log records it replayed.
        return sum(int(part.memtable_entries) for part in self._store().stats().partitions)

    def close(self) -> None:
        self._store().close()
        self._db = None

    def pairing(self) -> str:
        return f'durability="{self.durability}"'


class SQLiteAdapter(Adapter):
    """sqlite3 from the stdlib: WAL, a WITHOUT ROWID table, one transaction per put."""

    name = "sqlite3"
    has_flush = True
    has_readonly = True
    SYNCHRONOUS: ClassVar[dict[str, str]] = {"full": "FULL", "normal": "NORMAL", "fast": "OFF"}
    PUT = "INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)"
    GET = "SELECT v FROM kv WHERE k = ?"
    DELETE = "DELETE FROM kv WHERE k = ?"
    SCAN = "SELECT k, v FROM kv ORDER BY k"
    RANGE = "SELECT k, v FROM kv WHERE k >= ? ORDER BY k LIMIT ?"

    def __init__(self, durability: str) -> None:
        super().__init__(durability)
        self._conn: sqlite3.Connection | None = None
        self._cur: sqlite3.Cursor | None = None

    def open(self, path: Path) -> None:
        # isolation_level=None: autocommit, so every put is its own transaction.
        conn = sqlite3.connect(path / "kv.sqlite3", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.SYNCHRONOUS[self.durability]}")
        conn.execute("CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID")
        self._conn = conn
        self._cur = conn.cursor()

    def _cursor(self) -> sqlite3.Cursor:
        assert self._cur is not None
        return self._cur

    def _connection(self) -> sqlite3.Connection:
        assert self._conn is not None
        return self._conn

    def put(self, key: bytes, value: bytes) -> None:
        self._cursor().execute(self.PUT, (key, value))

    def put_batch(self, items: Sequence[Item]) -> None:
        cur = self._cursor()
        cur.execute("BEGIN")
        cur.executemany(self.PUT, items)
        cur.execute("COMMIT")

    def get(self, key: bytes) -> bytes | None:
        row = self._cursor().execute(self.GET, (key,)).fetchone()
        if row is None:
            return None
        value: bytes = row[0]
        return value

    def delete(self, key: bytes) -> None:
        self._cursor().execute(self.DELETE, (key,))

    def scan(self) -> Iterator[Item]:
        return iter(self._connection().execute(self.SCAN))

    def range(self, start: bytes, count: int) -> list[Item]:
        return self._cursor().execute(self.RANGE, (start, count)).fetchall()

    def flush(self) -> None:
        self._connection().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def open_readonly(self, path: Path) -> None:
        uri = (path / "kv.sqlite3").absolute().as_uri() + "?mode=ro"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)
        # connect() reads nothing; a first query opens the file and reads the schema.
        conn.execute("SELECT 1 FROM kv LIMIT 1").fetchall()
        self._conn = conn
        self._cur = conn.cursor()

    def compact(self) -> bool:
        self._connection().execute("VACUUM")
        return True

    def close(self) -> None:
        self._connection().close()
        self._conn = self._cur = None

    def pairing(self) -> str:
        return f"WAL, synchronous={self.SYNCHRONOUS[self.durability]}"

    def version(self) -> str:
        return sqlite3.sqlite_version


class LMDBAdapter(Adapter):
    """py-lmdb: one write transaction per put, one read transaction per get, writemap off."""

    name = "lmdb"
    has_readonly = True
    MAP_SIZE = 1 << 36  # address space only: without writemap the file grows as used

    def __init__(self, durability: str) -> None:
        super().__init__(durability)
        self._lmdb = _import("lmdb")
        self._env: Any = None

    def open(self, path: Path) -> None:
        sync = self.durability == "full"
        self._env = self._lmdb.open(
            str(path), map_size=self.MAP_SIZE, sync=sync, metasync=sync, writemap=False
        )

    def open_readonly(self, path: Path) -> None:
        self._env = self._lmdb.open(str(path), readonly=True)

    def put(self, key: bytes, value: bytes) -> None:
        with self._env.begin(write=True) as txn:
            txn.put(key, value)

    def put_batch(self, items: Sequence[Item]) -> None:
        with self._env.begin(write=True) as txn:
            txn.cursor().putmulti(items)

    def get(self, key: bytes) -> bytes | None:
        with self._env.begin() as txn:
            value: bytes | None = txn.get(key)
        return value

    def delete(self, key: bytes) -> None:
        with self._env.begin(write=True) as txn:
            txn.delete(key)

    def scan(self) -> Iterator[Item]:
        with self._env.begin() as txn:
            yield from txn.cursor()

    def range(self, start: bytes, count: int) -> list[Item]:
        with self._env.begin() as txn:
            cursor = txn.cursor()
            if not cursor.set_range(start):
                return []
            return list(islice(cursor, count))

    def close(self) -> None:
        self._env.close()
        self._env = None

    def pairing(self) -> str:
        if self.durability == "full":
            return "sync=True, metasync=True (fsync per commit)"
        return "sync=False, writemap=False (commits reach the OS, no fsync)"


class PlyvelAdapter(Adapter):
    """plyvel (LevelDB): put/delete with sync matched to durability, WriteBatch for batches."""

    name = "plyvel"

    def __init__(self, durability: str) -> None:
        super().__init__(durability)
        self._plyvel = _import("plyvel")
        self._db: Any = None
        self._sync = durability == "full"

    def open(self, path: Path) -> None:
        self._db = self._plyvel.DB(str(path), create_if_missing=True)

    def put(self, key: bytes, value: bytes) -> None:
        self._db.put(key, value, sync=self._sync)

    def put_batch(self, items: Sequence[Item]) -> None:
        with self._db.write_batch(sync=self._sync) as batch:
            for key, value in items:
                batch.put(key, value)

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self._db.get(key)
        return value

    def delete(self, key: bytes) -> None:
        self._db.delete(key, sync=self._sync)

    def scan(self) -> Iterator[Item]:
        with self._db.iterator() as it:
            yield from it

    def range(self, start: bytes, count: int) -> list[Item]:
        with self._db.iterator(start=start) as it:
            return list(islice(it, count))

    def compact(self) -> bool:
        self._db.compact_range()
        return True

    def close(self) -> None:
        self._db.close()
        self._db = None

    def pairing(self) -> str:
        if self._sync:
            return "sync=True (fsync per write)"
        return "sync=False (log written to the OS per write, no fsync)"


class RocksDictAdapter(Adapter):
    """rocksdict (RocksDB) in raw mode: bytes keys and values, no pickling."""

    name = "rocksdict"
    has_flush = True

    def __init__(self, durability: str) -> None:
        super().__init__(durability)
        self._rocksdict = _import("rocksdict")
        self._db: Any = None

    def open(self, path: Path) -> None:
        rd = self._rocksdict
        options = rd.Options(raw_mode=True)
        options.create_if_missing(True)
        write_options = rd.WriteOptions()
        write_options.sync = self.durability == "full"
        if self.durability == "fast":
            write_options.disable_wal = True
        self._db = rd.Rdict(str(path), options)
        self._db.set_write_options(write_options)

    def put(self, key: bytes, value: bytes) -> None:
        self._db.put(key, value)

    def put_batch(self, items: Sequence[Item]) -> None:
        batch = self._rocksdict.WriteBatch(raw_mode=True)
        for key, value in items:
            batch.put(key, value)
        self._db.write(batch)

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self._db.get(key)
        return value

    def delete(self, key: bytes) -> None:
        self._db.delete(key)

    def scan(self) -> Iterator[Item]:
        return iter(self._db.items())

    def range(self, start: bytes, count: int) -> list[Item]:
        return list(islice(self._db.items(from_key=start), count))

    def flush(self) -> None:
        self._db.flush()

    def close(self) -> None:
        self._db.close()
        self._db = None

    def pairing(self) -> str:
        return {
            "full": "WriteOptions.sync=True (fsync per write)",
            "normal": "default WriteOptions (WAL written to the OS per write, no fsync)",
            "fast": "WriteOptions.disable_wal = True (no WAL)",
        }[self.durability]


class DiskCacheAdapter(Adapter):
    """diskcache.Cache: SQLite underneath, no eviction, transact() for batches; unordered."""

    name = "diskcache"
    ordered = False
    SYNCHRONOUS: ClassVar[dict[str, int]] = {"full": 2, "normal": 1, "fast": 0}

    def __init__(self, durability: str) -> None:
        super().__init__(durability)
        self._diskcache = _import("diskcache")
        self._cache: Any = None

    def open(self, path: Path) -> None:
        self._cache = self._diskcache.Cache(
            str(path),
            eviction_policy="none",
            size_limit=1 << 62,
            sqlite_synchronous=self.SYNCHRONOUS[self.durability],
        )

    def put(self, key: bytes, value: bytes) -> None:
        self._cache[key] = value

    def put_batch(self, items: Sequence[Item]) -> None:
        cache = self._cache
        with cache.transact():
            for key, value in items:
                cache[key] = value

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self._cache.get(key)
        return value

    def delete(self, key: bytes) -> None:
        del self._cache[key]

    def close(self) -> None:
        self._cache.close()
        self._cache = None

    def pairing(self) -> str:
        names = {2: "FULL", 1: "NORMAL", 0: "OFF"}
        return f"WAL, sqlite_synchronous={names[self.SYNCHRONOUS[self.durability]]}"


def _identity(data: bytes) -> bytes:
    return data


class SqliteDictAdapter(Adapter):
    """sqlitedict.SqliteDict(autocommit=True), raw bytes values; unordered (rowid order)."""

    name = "sqlitedict"
    ordered = False

    def __init__(self, durability: str) -> None:
        super().__init__(durability)
        self._sqlitedict = _import("sqlitedict")
        self._db: Any = None

    def open(self, path: Path) -> None:
        db = self._sqlitedict.SqliteDict(
            str(path / "kv.sqlite3"),
            tablename="kv",
            autocommit=True,
            journal_mode="WAL",
            encode=_identity,
            decode=_identity,
        )
        # sqlitedict sets synchronous=OFF on its connection; match the pairing instead.
        db.conn.execute(f"PRAGMA synchronous={SQLiteAdapter.SYNCHRONOUS[self.durability]}")
        self._db = db

    def put(self, key: bytes, value: bytes) -> None:
        self._db[key] = value

    def put_batch(self, items: Sequence[Item]) -> None:
        self._db.update(items)

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self._db.get(key)
        return value

    def delete(self, key: bytes) -> None:
        del self._db[key]

    def close(self) -> None:
        self._db.close()
        self._db = None

    def pairing(self) -> str:
        return f"autocommit=True, WAL, synchronous={SQLiteAdapter.SYNCHRONOUS[self.durability]}"


class SemiDBMAdapter(Adapter):
    """semidbm: append-only file plus an in-memory index rebuilt on open; unordered."""

    name = "semidbm"
    ordered = False
    has_readonly = True

    def __init__(self, durability: str) -> None:
        super().__init__(durability)
        self._semidbm = _import("semidbm")
        self._db: Any = None
        self._sync = durability == "full"

    def open(self, path: Path) -> None:
        self._db = self._semidbm.open(str(path), "c")

    def open_readonly(self, path: Path) -> None:
        self._db = self._semidbm.open(str(path), "r")

    def compact(self) -> bool:
        self._db.compact()
        return True

    def put(self, key: bytes, value: bytes) -> None:
        self._db[key] = value
        if self._sync:
            self._db.sync()

    def put_batch(self, items: Sequence[Item]) -> None:
        db = self._db
        for key, value in items:
            db[key] = value
        if self._sync:
            db.sync()

    def get(self, key: bytes) -> bytes | None:
        db = self._db
        if key in db:
            value: bytes = db[key]
            return value
        return None

    def delete(self, key: bytes) -> None:
        del self._db[key]
        if self._sync:
            self._db.sync()

    def close(self) -> None:
        self._db.close()
        self._db = None

    def pairing(self) -> str:
        if self._sync:
            return "sync() (fsync) after every write"
        return "unbuffered os.write per write, no fsync"


ENGINES: dict[str, Callable[[str], Adapter]] = {
    "halodb": HaloDBAdapter,
    "sqlite3": SQLiteAdapter,
    "lmdb": LMDBAdapter,
    "plyvel": PlyvelAdapter,
    "rocksdict": RocksDictAdapter,
    "diskcache": DiskCacheAdapter,
    "sqlitedict": SqliteDictAdapter,
    "semidbm": SemiDBMAdapter,
}


# --------------------------------------------------------------------------------------------
# The workload: every key, value and access order, generated before any timing.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    pairs: list[Item]  # fill order (random keys)
    batches: list[list[Item]]  # pairs cut into --batch-size lists
    expected: dict[bytes, bytes]
    sorted_keys: list[bytes]
    read_keys: list[bytes]  # existing keys, shuffled
    missing_keys: list[bytes]  # keys never written
    seek_starts: list[bytes]  # random start keys for range scans
    scan_length: int
    delete_keys: list[bytes]  # half the keys, random order
    check_keys: list[bytes]  # a small sample for value checks outside the timings
    purge_keys: list[bytes]  # 90% of the keys, random order (the delete-then-compact phase)
    survivors: list[Item]  # the pairs purge_keys leaves, in fill order
    key_size: int
    value_size: int
    seed: int  # make_pairs(random.Random(seed), ...) gives ``pairs`` again (crash child)


def make_pairs(rng: random.Random, num: int, key_size: int, value_size: int) -> dict[bytes, bytes]:
    """``num`` distinct random keys, each with a random value, in fill order."""
    expected: dict[bytes, bytes] = {}
    while len(expected) < num:
        key = rng.randbytes(key_size)
        if key not in expected:
            expected[key] = rng.randbytes(value_size)
    return expected


def make_workload(
    num: int,
    key_size: int,
    value_size: int,
    reads: int,
    scans: int,
    scan_length: int,
    batch_size: int,
    seed: int,
) -> Workload:
    rng = random.Random(seed)
    expected = make_pairs(rng, num, key_size, value_size)
    pairs = list(expected.items())
    keys = [key for key, _ in pairs]

    read_keys = rng.sample(keys, reads) if reads <= num else rng.choices(keys, k=reads)

    missing: list[bytes] = []
    while len(missing) < reads:
        key = rng.randbytes(key_size)
        if key not in expected:
            missing.append(key)

    seek_starts = [rng.randbytes(key_size) for _ in range(scans)]
    delete_keys = rng.sample(keys, num // 2)
    check_keys = rng.sample(keys, min(num, 200))
    # Drawn last, so that every earlier key, value and order is what it always was.
    purge_keys = rng.sample(keys, num * 9 // 10)
    purged = set(purge_keys)

    return Workload(
        pairs=pairs,
        batches=[pairs[i : i + batch_size] for i in range(0, num, batch_size)],
        expected=expected,
        sorted_keys=sorted(keys),
        read_keys=read_keys,
        missing_keys=missing,
        seek_starts=seek_starts,
        scan_length=scan_length,
        delete_keys=delete_keys,
        check_keys=check_keys,
        purge_keys=purge_keys,
        survivors=[pair for pair in pairs if pair[0] not in purged],
        key_size=key_size,
        value_size=value_size,
        seed=seed,
    )


# --------------------------------------------------------------------------------------------
# Timed phases.  Each binds the adapter method to a local and runs one plain loop.
# --------------------------------------------------------------------------------------------


def _throughput(ops: int, seconds: float, **extra: Any) -> Result:
    return {
        "ops": ops,
        "seconds": seconds,
        "ops_per_sec": ops / seconds if seconds > 0 else float("inf"),
        "us_per_op": seconds / ops * 1e6 if ops else 0.0,
        **extra,
    }


def bench_fillrandom(db: Adapter, wl: Workload) -> Result:
    put = db.put
    pairs = wl.pairs
    gc.collect()
    start = time.perf_counter()
    for key, value in pairs:
        put(key, value)
    seconds = time.perf_counter() - start
    return _throughput(len(pairs), seconds)


def bench_fillbatch(db: Adapter, wl: Workload) -> Result:
    put_batch = db.put_batch
    batches = wl.batches
    gc.collect()
    start = time.perf_counter()
    for batch in batches:
        put_batch(batch)
    seconds = time.perf_counter() - start
    return _throughput(len(wl.pairs), seconds, batches=len(batches))


def _bench_reads(db: Adapter, keys: list[bytes]) -> tuple[int, float]:
    get = db.get
    found = 0
    gc.collect()
    start = time.perf_counter()
    for key in keys:
        if get(key) is not None:
            found += 1
    return found, time.perf_counter() - start


def bench_readrandom(db: Adapter, wl: Workload) -> Result:
    found, seconds = _bench_reads(db, wl.read_keys)
    if found != len(wl.read_keys):
        raise VerificationError(f"readrandom found {found} of {len(wl.read_keys)} keys")
    return _throughput(len(wl.read_keys), seconds, found=found)


def bench_readmissing(db: Adapter, wl: Workload) -> Result:
    found, seconds = _bench_reads(db, wl.missing_keys)
    if found:
        raise VerificationError(f"readmissing found {found} keys that were never written")
    return _throughput(len(wl.missing_keys), seconds, found=found)


def bench_readseq(db: Adapter, wl: Workload) -> Result:
    scan = db.scan
    count = 0
    gc.collect()
    start = time.perf_counter()
    for _item in scan():
        count += 1
    seconds = time.perf_counter() - start
    if count != len(wl.sorted_keys):
        raise VerificationError(f"readseq saw {count} items, expected {len(wl.sorted_keys)}")
    head = [(key, wl.expected[key]) for key in wl.sorted_keys[:1000]]
    if [tuple(item) for item in islice(db.scan(), len(head))] != head:
        raise VerificationError("readseq: the first items are out of order or wrong")
    return _throughput(count, seconds)


def bench_seekrandom(db: Adapter, wl: Workload) -> Result:
    range_ = db.range
    starts = wl.seek_starts
    length = wl.scan_length
    items = 0
    gc.collect()
    start = time.perf_counter()
    for first in starts:
        items += len(range_(first, length))
    seconds = time.perf_counter() - start

    sorted_keys = wl.sorted_keys
    want = sum(
        min(length, len(sorted_keys) - bisect.bisect_left(sorted_keys, first)) for first in starts
    )
    if items != want:
        raise VerificationError(f"seekrandom returned {items} items, expected {want}")
    for first in starts[:20]:
        lo = bisect.bisect_left(sorted_keys, first)
        head = [(key, wl.expected[key]) for key in sorted_keys[lo : lo + length]]
        if [tuple(item) for item in db.range(first, length)] != head:
            raise VerificationError(f"seekrandom: wrong items from start key {first.hex()}")
    return _throughput(len(starts), seconds, items=items, scan_length=length)


def bench_deleterandom(db: Adapter, wl: Workload) -> Result:
    delete = db.delete
    keys = wl.delete_keys
    gc.collect()
    start = time.perf_counter()
    for key in keys:
        delete(key)
    seconds = time.perf_counter() - start
    deleted = set(keys)
    for key in wl.check_keys:
        want = None if key in deleted else wl.expected[key]
        if db.get(key) != want:
            raise VerificationError(f"after deleterandom, key {key.hex()} reads wrong")
    return _throughput(len(keys), seconds)


def bench_fill_latency(db: Adapter, wl: Workload, path: Path) -> Result:
    """The fillrandom puts into a fresh store, each timed on its own.  A separate phase: the
    two clock reads per put cost HaloDB's fillrandom about 7% of its throughput."""
    path.mkdir()
    db.open(path)
    db.is_open = True
    put = db.put
    pairs = wl.pairs
    clock = time.perf_counter_ns
    latencies: list[int] = []
    append = latencies.append
    gc.collect()
    for key, value in pairs:
        start = clock()
        put(key, value)
        append(clock() - start)
    check_values(db, wl, "after fill_latency")
    db.close()
    db.is_open = False
    return latency_summary(latencies)


def latency_summary(latencies_ns: list[int]) -> Result:
    """p50, p99, p99.9 (nearest rank), max and mean of ``latencies_ns``, in µs."""
    ordered = sorted(latencies_ns)
    count = len(ordered)

    def rank(fraction: float) -> float:
        return ordered[max(0, math.ceil(fraction * count) - 1)] / 1e3

    return {
        "puts": count,
        "p50_us": rank(0.50),
        "p99_us": rank(0.99),
        "p999_us": rank(0.999),
        "max_us": ordered[-1] / 1e3,
        "mean_us": sum(ordered) / count / 1e3,
    }


def crash_child(spec: dict[str, Any]) -> int:
    """The crash phase's child: fill a fresh store like fillrandom, say so on stdout, then
    wait to be killed without closing it.  ``spec`` names the engine and the workload."""
    db = ENGINES[spec["engine"]](spec["durability"])
    rng = random.Random(spec["seed"])
    pairs = list(make_pairs(rng, spec["num"], spec["key_size"], spec["value_size"]).items())
    db.open(Path(spec["path"]))
    put = db.put
    for key, value in pairs:
        put(key, value)
    print(f"filled {len(pairs)} {pairs[-1][0].hex()}", flush=True)
    sys.stdin.read()  # the parent kills us; if it died instead, leave without closing
    os._exit(3)


def bench_crash_reopen(db: Adapter, wl: Workload, path: Path) -> Result:
    """Fill a fresh store in a child process, SIGKILL it once every put is acknowledged (no
    close, no flush), then time the open here: the replay of whatever was not flushed."""
    path.mkdir()
    spec = {
        "engine": db.name,
        "durability": db.durability,
        "path": str(path),
        "num": len(wl.pairs),
        "key_size": wl.key_size,
        "value_size": wl.value_size,
        "seed": wl.seed,
    }
    # The child imports the same modules (HaloDB's tree included) as this process.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    command = [sys.executable, os.path.abspath(__file__), CRASH_CHILD, json.dumps(spec)]
    pipe = subprocess.PIPE
    with subprocess.Popen(command, stdin=pipe, stdout=pipe, stderr=pipe, env=env) as child:
        assert child.stdout is not None
        line = child.stdout.readline().decode()
        child.kill()  # SIGKILL on POSIX
        _, err = child.communicate()
    if line.split() != ["filled", str(len(wl.pairs)), wl.pairs[-1][0].hex()]:
        tail = err.decode(errors="replace")[-2000:]
        raise RuntimeError(f"the crash phase's child did not fill the store: {line!r}\n{tail}")
    on_disk, _ = disk_usage(path)
    gc.collect()
    start = time.perf_counter()
    db.open(path)
    open_s = time.perf_counter() - start
    db.is_open = True
    records = db.replayed_records()
    if db.durability != "fast":  # "fast" may lose acknowledged writes to a crash
        check_values(db, wl, "after crash_reopen")
    db.close()
    db.is_open = False
    return {
        "seconds": open_s,
        "open_seconds": open_s,
        "records": records,
        "records_per_sec": records / open_s if records is not None and open_s > 0 else None,
        "bytes_at_kill": on_disk,
    }


def bench_reopen_readonly(db: Adapter, wl: Workload, path: Path) -> Result:
    """Time a read-only open of the cleanly closed store at ``path``."""
    if not db.has_readonly:
        return {"skipped": "n/a: no read-only open"}
    gc.collect()
    start = time.perf_counter()
    db.open_readonly(path)
    open_s = time.perf_counter() - start
    db.is_open = True
    check_values(db, wl, "after read-only open")
    db.close()
    db.is_open = False
    return {"seconds": open_s, "open_seconds": open_s}


def bench_delete_compact(db: Adapter, wl: Workload, path: Path, fresh: Path) -> dict[str, Result]:
    """Delete 90% of the keys of the full, closed store at ``path``; its bytes on disk after
    the deletes and after the engine's compaction (if any), each against a fresh store
    ``fresh`` loaded with only the survivors."""
    db.open(path)
    db.is_open = True
    delete = db.delete
    gc.collect()
    start = time.perf_counter()
    for key in wl.purge_keys:
        delete(key)
    delete_s = time.perf_counter() - start
    db.close()
    db.is_open = False
    deleted_bytes, _ = disk_usage(path)

    db.open(path)
    db.is_open = True
    gc.collect()
    start = time.perf_counter()
    compacted = db.compact()
    compact_s = time.perf_counter() - start
    purged = set(wl.purge_keys)
    for key in wl.check_keys:
        if db.get(key) != (None if key in purged else wl.expected[key]):
            raise VerificationError(f"after the 90% deletes, key {key.hex()} reads wrong")
    db.close()
    db.is_open = False
    compacted_bytes, _ = disk_usage(path)

    fresh.mkdir()
    db.open(fresh)
    db.is_open = True
    put_batch = db.put_batch
    step = len(wl.batches[0]) if wl.batches else 1
    for i in range(0, len(wl.survivors), step):
        put_batch(wl.survivors[i : i + step])
    db.close()
    db.is_open = False
    fresh_bytes, _ = disk_usage(fresh)

    def size(on_disk: int, **extra: Any) -> Result:
        vs_fresh = on_disk / fresh_bytes if fresh_bytes else None
        return {"bytes": on_disk, "fresh_bytes": fresh_bytes, "vs_fresh": vs_fresh, **extra}

    survivors = len(wl.survivors)
    deleted = size(deleted_bytes, deletes=len(purged), survivors=survivors, delete_seconds=delete_s)
    if not compacted:
        return {"bytes_deleted": deleted, "bytes_compacted": {"skipped": "n/a: no compaction"}}
    return {
        "bytes_deleted": deleted,
        "bytes_compacted": size(compacted_bytes, compact_seconds=compact_s),
    }


def reopen(db: Adapter, path: Path) -> tuple[Result, int, int]:
    """Close and reopen ``db``; returns timings and the closed store's du/apparent bytes."""
    gc.collect()
    start = time.perf_counter()
    db.close()
    closed = time.perf_counter()
    db.is_open = False
    on_disk, apparent = disk_usage(path)
    gc.collect()
    start_open = time.perf_counter()
    db.open(path)
    opened = time.perf_counter()
    db.is_open = True
    close_s = closed - start
    open_s = opened - start_open
    timing = {"seconds": close_s + open_s, "close_seconds": close_s, "open_seconds": open_s}
    return timing, on_disk, apparent


def check_values(db: Adapter, wl: Workload, when: str) -> None:
    for key in wl.check_keys:
        got = db.get(key)
        if got != wl.expected[key]:
            shown = None if got is None else f"{len(got)} bytes"
            raise VerificationError(f"{when}: key {key.hex()} reads {shown}, wrong value")


def disk_usage(path: Path) -> tuple[int, int]:
    """(bytes allocated as du counts them, apparent bytes) of every file under ``path``."""
    allocated = apparent = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(os.path.join(root, name))
                allocated += st.st_blocks * 512
                apparent += st.st_size
    return allocated, apparent


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_engine(
    db: Adapter, wl: Workload, workdir: Path, phases: Iterable[str] = OPTIONAL_PHASES
) -> dict[str, Result]:
    """Run every phase on ``db`` in fresh directories under ``workdir``; removed after.
    ``phases`` are the optional phases to run (see OPTIONAL_PHASES)."""
    results: dict[str, Result] = {}
    base = Path(tempfile.mkdtemp(prefix=f"db_bench-{db.name}-", dir=workdir))

    def record(name: str, result: Result) -> None:
        results[name] = result
        if "ops_per_sec" in result:
            log(
                f"  [{db.name}] {name:<14} {result['ops']:>10,} ops  "
                f"{result['seconds']:9.3f} s  {result['ops_per_sec']:>12,.0f} ops/s"
            )
        elif "seconds" in result:
            log(f"  [{db.name}] {name:<14} {result['seconds'] * 1e3:10.1f} ms")
        elif "p99_us" in result:
            log(f"  [{db.name}] {name:<14} p99 {result['p99_us']:.1f} µs")
        elif "bytes" in result:
            log(f"  [{db.name}] {name:<14} {result['bytes'] / 2**20:10.2f} MiB")

    def not_ordered(name: str) -> None:
        results[name] = {"skipped": "n/a: no ordered iteration"}

    try:
        # Store 1: fillrandom, then everything that reads or changes a filled store.
        path = base / "fillrandom"
        path.mkdir()
        db.open(path)
        db.is_open = True
        record("fillrandom", bench_fillrandom(db, wl))
        check_values(db, wl, "after fillrandom")
        open_bytes, _ = disk_usage(path)

        timing, on_disk, apparent = reopen(db, path)
        record("reopen", timing)
        results["bytes"] = {
            "bytes": on_disk,
            "apparent_bytes": apparent,
            "open_bytes": open_bytes,
            "bytes_per_key": on_disk / len(wl.pairs),
        }
        check_values(db, wl, "after reopen")

        record("readrandom", bench_readrandom(db, wl))
        record("readmissing", bench_readmissing(db, wl))
        if db.ordered:
            record("readseq", bench_readseq(db, wl))
            record("seekrandom", bench_seekrandom(db, wl))
        else:
            not_ordered("readseq")
            not_ordered("seekrandom")

        if db.has_flush:
            gc.collect()
            start = time.perf_counter()
            db.flush()
            flush_s = time.perf_counter() - start
            timing, _, _ = reopen(db, path)
            record("reopen_flushed", {**timing, "flush_seconds": flush_s})
            check_values(db, wl, "after flush and reopen")
        else:
            results["reopen_flushed"] = {"skipped": "n/a: no flush"}

        record("deleterandom", bench_deleterandom(db, wl))
        db.close()
        db.is_open = False

        # Store 2: fillbatch into a fresh directory.
        path = base / "fillbatch"
        path.mkdir()
        db.open(path)
        db.is_open = True
        record("fillbatch", bench_fillbatch(db, wl))
        check_values(db, wl, "after fillbatch")
        db.close()
        db.is_open = False
        results["fillbatch"]["bytes_closed"] = disk_usage(path)[0]

        # The new phases: the closed fillbatch store, then fresh stores of their own.
        record("reopen_readonly", bench_reopen_readonly(db, wl, path))
        run_optional_phases(db, wl, base, frozenset(phases), record)
    finally:
        if db.is_open:
            with contextlib.suppress(Exception):
                db.close()
            db.is_open = False
        shutil.rmtree(base, ignore_errors=True)
    return results


def run_optional_phases(
    db: Adapter,
    wl: Workload,
    base: Path,
    phases: frozenset[str],
    record: Callable[[str, Result], None],
) -> None:
    """The phases that each cost about one more fill; a skipped one is recorded as such."""
    if "compact" in phases:
        sizes = bench_delete_compact(db, wl, base / "fillbatch", base / "survivors")
        for name, result in sizes.items():
            record(name, result)
    else:
        record("bytes_deleted", {"skipped": "n/a: --no-compact"})
        record("bytes_compacted", {"skipped": "n/a: --no-compact"})
    if "latency" in phases:
        record("fill_latency", bench_fill_latency(db, wl, base / "latency"))
    else:
        record("fill_latency", {"skipped": "n/a: --no-latency"})
    if "crash" in phases:
        record("crash_reopen", bench_crash_reopen(db, wl, base / "crash"))
    else:
        record("crash_reopen", {"skipped": "n/a: --no-crash"})


def best_of(runs: list[dict[str, Result]]) -> dict[str, Result]:
    """Each figure's best over several rounds: the most ops/s, the least time, and each
    latency percentile's least on its own. (The noise of a shared machine only ever slows a
    run down.) Sizes on disk are the same in every round."""
    best: dict[str, Result] = {}
    for name, first in runs[0].items():
        candidates = [run[name] for run in runs if name in run]
        if "ops_per_sec" in first:
            best[name] = max(candidates, key=lambda r: float(r["ops_per_sec"]))
        elif "seconds" in first:
            best[name] = min(candidates, key=lambda r: float(r["seconds"]))
        elif "p99_us" in first:
            lowest = {key: min(float(r[key]) for r in candidates) for key in LATENCY_KEYS}
            best[name] = {**min(candidates, key=lambda r: float(r["p99_us"])), **lowest}
        else:
            best[name] = first
    return best


# --------------------------------------------------------------------------------------------
# Ratios and the report.
# --------------------------------------------------------------------------------------------


def ratio(subject: Result | None, peer: Result | None, bench: str) -> float | None:
    """HaloDB's advantage over ``peer`` on ``bench``: > 1 means HaloDB is better.

    Throughput: halodb ops/s ÷ peer ops/s.  Put latency: peer p99 ÷ halodb p99.  Reopen: peer
    seconds ÷ halodb seconds.  Bytes on disk: peer bytes ÷ halodb bytes.
    """
    if not subject or not peer:
        return None
    if bench in THROUGHPUT:
        if "ops_per_sec" not in subject or "ops_per_sec" not in peer:
            return None
        return float(subject["ops_per_sec"]) / float(peer["ops_per_sec"])
    key = "p99_us" if bench in LATENCIES else "seconds" if bench in DURATIONS else "bytes"
    if key not in subject or key not in peer or not subject[key]:
        return None
    return float(peer[key]) / float(subject[key])


def compute_ratios(results: dict[str, dict[str, Result]]) -> dict[str, dict[str, float | None]]:
    if SUBJECT not in results:
        return {}
    subject = results[SUBJECT]
    return {
        peer: {
            bench: ratio(subject.get(bench), results[peer].get(bench), bench)
            for bench in (*THROUGHPUT, *LATENCIES, *DURATIONS, *SIZES)
        }
        for peer in results
        if peer != SUBJECT
    }


def format_report(
    results: dict[str, dict[str, Result]], ratios: dict[str, dict[str, float | None]]
) -> str:
    """The report: a table each of throughput, put latency, reopen times, bytes on disk and
    the delete-then-compact sizes, with a row per engine, then HaloDB's ratio to each peer (if
    any)."""
    engines = list(results)
    width = max([len(name) for name in engines] + [10])
    lines = [
        *_throughput_table(results, width),
        "",
        *_latency_table(results, width),
        "",
        *_duration_table(results, width),
        "",
        *_bytes_table(results, width),
        "",
        *_compact_table(results, width),
    ]
    if ratios:
        lines += ["", *_ratio_table(ratios)]
    return "\n".join(lines)


def _throughput_table(results: dict[str, dict[str, Result]], width: int) -> list[str]:
    """Ops/s and µs/op of each throughput benchmark, a row per engine."""
    lines = [f"{'benchmark':<14} {'engine':<{width}} {'ops/s':>13} {'µs/op':>10}"]
    for bench in THROUGHPUT:
        for i, engine in enumerate(results):
            label = bench if i == 0 else ""
            result = results[engine].get(bench, {})
            if "ops_per_sec" in result:
                cells = f"{result['ops_per_sec']:>13,.0f} {result['us_per_op']:>10.2f}"
            else:
                cells = f"{'n/a':>13} {'n/a':>10}"
            lines.append(f"{label:<14} {engine:<{width}} {cells}")
    lines.append(
        "(readseq: ops = items scanned; seekrandom: ops = range scans; n/a: engine has no "
        "ordered iteration)"
    )
    return lines


def _cell(value: Any, spec: str, width: int, scale: float = 1.0) -> str:
    """``value`` times ``scale`` formatted by ``spec`` in ``width`` columns; n/a if None."""
    return f"{'n/a':>{width}}" if value is None else f"{value * scale:>{width}{spec}}"


def _latency_table(results: dict[str, dict[str, Result]], width: int) -> list[str]:
    """Put-latency percentiles of each latency benchmark, a row per engine."""
    lines = [
        f"{'benchmark':<14} {'engine':<{width}} {'p50 µs':>13} {'p99 µs':>10} "
        f"{'p99.9 µs':>10} {'max ms':>10}"
    ]

    def cells(result: Result) -> str:
        if "p99_us" not in result:
            return f"{result.get('skipped', 'n/a'):>13}"
        return (
            f"{result['p50_us']:>13.1f} {result['p99_us']:>10.1f} "
            f"{result['p999_us']:>10.1f} {result['max_us'] / 1e3:>10.2f}"
        )

    return lines + _rows(results, LATENCIES, 14, width, cells)


def _rows(
    results: dict[str, dict[str, Result]],
    benches: Sequence[str],
    label_width: int,
    width: int,
    cells: Callable[[Result], str],
) -> list[str]:
    """A row per benchmark and engine: the benchmark's name on its first row, then ``cells``."""
    return [
        f"{bench if i == 0 else '':<{label_width}} {engine:<{width}} "
        f"{cells(results[engine].get(bench, {}))}"
        for bench in benches
        for i, engine in enumerate(results)
    ]


def _duration_table(results: dict[str, dict[str, Result]], width: int) -> list[str]:
    """Total, close and open milliseconds of each reopen benchmark, and the log records the
    open replayed (where the engine tells), a row per engine."""
    lines = [
        f"{'benchmark':<15} {'engine':<{width}} {'total ms':>12} {'close ms':>10} "
        f"{'open ms':>10} {'records':>10} {'records/s':>12}"
    ]

    def cells(result: Result) -> str:
        if "seconds" not in result:
            return f"{result.get('skipped', 'n/a'):>12}"
        return " ".join(
            (
                _cell(result["seconds"], ".1f", 12, 1e3),
                _cell(result.get("close_seconds"), ".1f", 10, 1e3),
                _cell(result["open_seconds"], ".1f", 10, 1e3),
                _cell(result.get("records"), ",.0f", 10),
                _cell(result.get("records_per_sec"), ",.0f", 12),
            )
        )

    lines += _rows(results, DURATIONS, 15, width, cells)
    lines.append(
        "(crash_reopen: open after SIGKILL, close n/a; records: log records replayed, n/a "
        "where the engine cannot tell)"
    )
    return lines


def _bytes_table(results: dict[str, dict[str, Result]], width: int) -> list[str]:
    """Bytes on disk, closed and open, and bytes per key, a row per engine."""
    lines = [
        f"{'benchmark':<14} {'engine':<{width}} {'MiB (du)':>13} {'B/key':>10} {'MiB open':>10}"
    ]
    for i, engine in enumerate(results):
        label = "bytes" if i == 0 else ""
        result = results[engine].get("bytes", {})
        if "bytes" in result:
            cells = (
                f"{result['bytes'] / 2**20:>13.2f} {result['bytes_per_key']:>10.1f} "
                f"{result['open_bytes'] / 2**20:>10.2f}"
            )
        else:
            cells = f"{'n/a':>13}"
        lines.append(f"{label:<14} {engine:<{width}} {cells}")
    return lines


def _compact_table(results: dict[str, dict[str, Result]], width: int) -> list[str]:
    """Bytes on disk after deleting 90% of the keys and after compacting, each against a fresh
    store of the survivors, a row per engine."""
    lines = [
        "delete 90% of the keys, then compact; ÷ fresh = bytes ÷ a fresh store of the survivors",
        f"{'engine':<{width}} {'MiB deleted':>11} {'÷ fresh':>8} {'MiB compact':>11} "
        f"{'÷ fresh':>8} {'compact ms':>10} {'MiB fresh':>10}",
    ]
    for engine, figures in results.items():
        deleted = figures.get("bytes_deleted", {})
        compacted = figures.get("bytes_compacted", {})
        if "bytes" not in deleted:
            lines.append(f"{engine:<{width}} {deleted.get('skipped', 'n/a'):>11}")
            continue
        if "bytes" in compacted:
            after = (
                f"{compacted['bytes'] / 2**20:>11.2f} {compacted['vs_fresh']:>7.2f}x "
                f"{compacted['compact_seconds'] * 1e3:>10.1f}"
            )
        else:
            after = f"{compacted.get('skipped', 'n/a'):>31}"
        lines.append(
            f"{engine:<{width}} {deleted['bytes'] / 2**20:>11.2f} {deleted['vs_fresh']:>7.2f}x "
            f"{after} {deleted['fresh_bytes'] / 2**20:>10.2f}"
        )
    return lines


def _ratio_table(ratios: dict[str, dict[str, float | None]]) -> list[str]:
    """HaloDB's ratio to each peer on every benchmark, a column per peer."""
    peers = list(ratios)
    col = max([len(p) for p in peers] + [8])
    lines = [
        "HaloDB ratio to each peer, > 1 means HaloDB is better: throughput = halodb ops/s ÷ "
        "peer ops/s;",
        "latency, reopen and bytes = peer ÷ halodb (put p99, time, bytes on disk)",
        f"{'benchmark':<15} " + " ".join(f"{p:>{col}}" for p in peers),
    ]
    for bench in (*THROUGHPUT, *LATENCIES, *DURATIONS, *SIZES):
        row = []
        for peer in peers:
            value = ratios[peer].get(bench)
            row.append(f"{'n/a':>{col}}" if value is None else f"{value:>{col - 1}.2f}x")
        lines.append(f"{bench:<15} " + " ".join(row))
    return lines


# --------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="db_bench-style benchmark of HaloDB against peer key-value stores.",
        epilog=MACHINE_NOTE,
    )
    parser.add_argument("--num", type=int, default=1_000_000, help="keys to write")
    parser.add_argument("--value-size", type=int, default=100, help="bytes per value")
    parser.add_argument("--key-size", type=int, default=16, help="bytes per key")
    parser.add_argument("--seed", type=int, default=1, help="seed for keys, values, orders")
    parser.add_argument("--reads", type=int, default=None, help="gets per read phase (--num)")
    parser.add_argument("--scans", type=int, default=None, help="range scans (--num / 100)")
    parser.add_argument("--scan-length", type=int, default=100, help="items per range scan")
    parser.add_argument("--batch-size", type=int, default=1000, help="puts per batch")
    parser.add_argument(
        "--engines",
        default=",".join(ENGINES),
        help=f"comma-separated, from {','.join(ENGINES)} (default: all; absent ones skipped)",
    )
    parser.add_argument("--durability", choices=DURABILITIES, default="normal")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every engine this many times, interleaved, and keep each figure's best",
    )
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    parser.add_argument(
        "--no-latency", action="store_true", help="skip fill_latency (one more fill)"
    )
    parser.add_argument(
        "--no-crash", action="store_true", help="skip crash_reopen (one more fill, in a child)"
    )
    parser.add_argument(
        "--no-compact",
        action="store_true",
        help="skip the delete-then-compact phase (90%% deletes, compaction, a survivors store)",
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where the temporary stores go (system temp)"
    )
    args = parser.parse_args(argv)
    if args.num < 1 or args.key_size < 4 or args.value_size < 0 or args.batch_size < 1:
        parser.error("need --num >= 1, --key-size >= 4, --value-size >= 0, --batch-size >= 1")
    if args.rounds < 1:
        parser.error("need --rounds >= 1")
    args.reads = args.num if args.reads is None else args.reads
    args.scans = max(1, args.num // 100) if args.scans is None else args.scans
    names = [name.strip() for name in args.engines.split(",") if name.strip()]
    unknown = [name for name in names if name not in ENGINES]
    if unknown:
        parser.error(f"unknown engine(s) {', '.join(unknown)}; choose from {', '.join(ENGINES)}")
    args.engine_names = names
    args.phases = [name for name in OPTIONAL_PHASES if not getattr(args, f"no_{name}")]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark the command line asks for; exit status 1 if an engine failed."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == [CRASH_CHILD]:
        return crash_child(json.loads(argv[1]))
    args = parse_args(argv)
    workdir: Path = args.workdir or Path(tempfile.gettempdir())
    workdir.mkdir(parents=True, exist_ok=True)

    config = {
        "num": args.num,
        "key_size": args.key_size,
        "value_size": args.value_size,
        "reads": args.reads,
        "scans": args.scans,
        "scan_length": args.scan_length,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "durability": args.durability,
        "rounds": args.rounds,
        "phases": ",".join(args.phases) or "none",
    }
    print("db_bench: " + " ".join(f"{k}={v}" for k, v in config.items()))
    print(f"python {platform.python_version()} on {platform.platform()}")
    print(MACHINE_NOTE)

    adapters, skipped = load_engines(args.engine_names, args.durability)
    print_pairing(adapters, args.durability)

    log("generating workload ...")
    wl = make_workload(
        args.num,
        args.key_size,
        args.value_size,
        args.reads,
        args.scans,
        args.scan_length,
        args.batch_size,
        args.seed,
    )

    results, rounds, failed = run_rounds(adapters, wl, workdir, args.rounds, args.phases)
    ratios = compute_ratios(results)
    print()
    if results:
        print(format_report(results, ratios))
    if SUBJECT not in results:
        print(f"\n(no ratios: {SUBJECT} did not run)")
    print()
    print(MACHINE_NOTE)

    if args.json is not None:
        document = {
            "machine_note": MACHINE_NOTE,
            "config": config,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "descriptions": DESCRIPTIONS,
            "ratio_definition": {
                "throughput": "halodb ops/s / peer ops/s",
                "latency": "peer put p99 / halodb put p99",
                "reopen": "peer seconds / halodb seconds",
                "bytes": "peer bytes / halodb bytes",
                "meaning": "> 1 means HaloDB is better",
            },
            "engines": {
                db.name: {
                    "version": db.version(),
                    "pairing": db.pairing(),
                    "results": results.get(db.name),
                    "rounds": rounds.get(db.name, []),
                    "error": failed.get(db.name),
                }
                for db in adapters
            },
            "skipped": skipped,
            "ratios": ratios,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if failed else 0


def load_engines(names: Sequence[str], durability: str) -> tuple[list[Adapter], dict[str, str]]:
    """An adapter for each engine named that can be imported here, and why the others could
    not (each also noted on stdout)."""
    adapters: list[Adapter] = []
    skipped: dict[str, str] = {}
    for name in names:
        try:
            adapters.append(ENGINES[name](durability))
        except EngineUnavailableError as exc:
            skipped[name] = str(exc)
            print(f"note: skipping {name}: {exc}")
    return adapters, skipped


def print_pairing(adapters: Sequence[Adapter], durability: str) -> None:
    """Print how ``durability`` maps onto each engine's settings, and the like-for-like peer."""
    print(f"durability pairing for --durability {durability}:")
    for db in adapters:
        print(f"  {db.name:<11} {db.version():<10} {db.pairing()}")
    if durability == "normal":
        print(
            '  like-for-like peer: halodb durability="normal" <-> sqlite3 WAL + '
            "synchronous=NORMAL (survives a process crash, not power loss)"
        )
    elif durability == "full":
        print('  like-for-like peer: halodb durability="full" <-> sqlite3 WAL + synchronous=FULL')
    print()


def run_rounds(
    adapters: Sequence[Adapter],
    wl: Workload,
    workdir: Path,
    count: int,
    phases: Sequence[str] = OPTIONAL_PHASES,
) -> tuple[dict[str, dict[str, Result]], dict[str, list[dict[str, Result]]], dict[str, str]]:
    """Run every engine ``count`` times, interleaved; return each engine's best figures, every
    round's figures, and the error of each engine that failed (and was not run again)."""
    results: dict[str, dict[str, Result]] = {}
    rounds: dict[str, list[dict[str, Result]]] = {}
    failed: dict[str, str] = {}
    for round_no in range(count):
        # Odd rounds run the engines in reverse order, so that a slow spell of the shared
        # machine does not always fall on the same engine.
        for db in adapters if round_no % 2 == 0 else adapters[::-1]:
            if db.name in failed:
                continue
            log(f"running {db.name} (round {round_no + 1} of {count}) ...")
            try:
                engine_results = run_engine(db, wl, workdir, phases)
            except Exception as exc:
                failed[db.name] = f"{type(exc).__name__}: {exc}"
                log(traceback.format_exc())
                print(f"FAILED {db.name}: {failed[db.name]}")
                results.pop(db.name, None)
                continue
            rounds.setdefault(db.name, []).append(engine_results)
            results[db.name] = best_of(rounds[db.name])
    return results, rounds, failed


if __name__ == "__main__":
    sys.exit(main())

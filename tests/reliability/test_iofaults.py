"""I/O fault loops, in the manner of SQLite's ``ioerr`` tests.

For each public operation that touches the disk (``SCENARIOS``: creating a store, over nothing
or over what an interrupted creation left; reopening a closed store; recovery with logs to
replay, a torn log tail, a batch part to drop; the upgrade of the version-1 golden store; put,
delete, pop, popitem, setdefault, a batch over both partitions, update, clear, flush, sync,
close, several of them also when they flush a partition), for each kind of system call
(``faultfs.KINDS``: write, fsync, directory fsync, rename, unlink, truncate, open) and each
error (EIO, ENOSPC, a short write), the k-th call of that kind made by the operation fails, for
k = 1, 2, ... until the operation completes without reaching a k-th call. A fault fires
``once`` (later calls succeed) or is ``persistent`` (every later call of the kind fails too).
Every case starts from a copy of a prepared store (partitions=2, page_size=1024, the smallest
memtable and log buffer), then checks:

- the operation raised ``halodb.OperationalError`` whose ``__cause__`` chain holds the injected
  ``OSError``; the engine has no call whose failure it may ignore, so an operation that
  returns normally after a fault fired is a failure;
- the store then refuses writes, ``sync()`` and ``flush()`` (a failed fsync is never retried into
  a false success), reads show every acknowledged write with the failed operation all or
  nothing, and ``check()`` is clean;
- ``close()`` (which may raise) releases everything: no file descriptor is left open, and the lock
  is free;
- reopened with a plain ``FileSystem``, ``check()`` is clean, every acknowledged write is there
  with its value, and the failed operation is there whole or not at all (in ``"fast"`` mode,
  writes still buffered when the store failed may be lost, so each partition holds a prefix of
  its writes, batches whole or not at all); the LOCK file is its 10-byte header;
- a power cut at the moment of the failure (``FaultFS.crash_copy``, in two versions: the failed
  fsync made nothing durable, or all of it) leaves a store that opens, checks clean and holds,
  in ``"full"`` mode, every acknowledged write, otherwise a prefix of each partition's writes.

Loops that run into a known engine defect are marked ``xfail(strict=True)``, and fail anyway if
they find anything but that defect (``_defect``).

The default run is sized for CI: ``"normal"`` and ``"full"`` for every operation, ``"fast"`` for
some, EIO everywhere and short writes. ``HALODB_STRESS=1`` runs the whole matrix: every
durability mode for every operation, EIO and ENOSPC, short and torn writes, and bigger stores
(so more calls to fail). The number of faults injected is printed at the end of the module
(``pytest -s``). Cases run on a RAM disk when ``/dev/shm`` exists (``HALODB_IOFAULT_TMP`` to
choose). Stores are created with a fixed hash seed (``HALODB_IOFAULT_SEED`` to change it), so a
run is reproducible.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import itertools
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import halodb
import halodb.testing
from halodb import format as fmt
from halodb import testing
from halodb.hashing import key_hash, route
from halodb.keys import decode_key, encode_key
from halodb.vfs import File, FileSystem
from halodb.wal import frame_put
from support.faultfs import KINDS, Fault, FaultFS
from support.stores import DurabilityName, batch_apply

STRESS = bool(os.environ.get("HALODB_STRESS"))
HASH_SEED = int(os.environ.get("HALODB_IOFAULT_SEED", "1234567")) % 2**32
OPTIONS: dict[str, Any] = {
    "partitions": 2,
    "page_size": 1024,
    "memtable_size": 64 * 1024,
    "fast_buffer_size": 4096,
    # Merges in the writing thread: the k-th call of a kind is then the same call in every
    # run. (A fault met by a merge in the background: test_background.py.)
    "background": False,
}
BASE_KEYS = 600 if STRESS else 120
MAX_K = 1000
GOLDEN_V1 = Path(__file__).resolve().parents[1] / "golden" / "v1-store"
LOCK_BYTES = fmt.LOCK_HEADER.pack(fmt.LOCK_MAGIC, fmt.FORMAT_VERSION)
HAVE_PROC = Path("/proc/self/fd").is_dir()

pytestmark = pytest.mark.skipif(not HAVE_PROC, reason="counts file descriptors in /proc")


def _open_fds() -> dict[str, str]:
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            out[fd] = os.readlink(f"/proc/self/fd/{fd}")
    return out


def _causes(exc: BaseException | None) -> list[BaseException]:
    chain: list[BaseException] = []
    while exc is not None and all(exc is not seen for seen in chain):
        chain.append(exc)
        exc = exc.__cause__
    return chain


# -- the model: acknowledged writes, and what a store may hold after a failure ----------------


@dataclass
class Event:
    """One write operation: its changes (encoded key -> value, ``None`` deletes) after an
    optional clear."""

    what: str
    changes: dict[bytes, Any]
    clear: bool = False


def _encoded(changes: dict[Any, Any]) -> dict[bytes, Any]:
    return {encode_key(key): value for key, value in changes.items()}


def _observe(db: halodb.Store) -> dict[bytes, Any]:
    """The store's contents by encoded key (keys such as ``1`` and ``1.0`` are distinct)."""
    return {encode_key(key): value for key, value in db.items()}


@dataclass
class History:
    """What a case wrote: the state it started from, the acknowledged writes since, in order,
    and the write the faulted operation attempted (``pending``). Keys are encoded."""

    base: dict[bytes, Any]
    seed: int
    partitions: int
    events: list[Event] = field(default_factory=list)
    pending: Event | None = None
    _serial: Iterator[int] = field(default_factory=itertools.count)

    def part(self, key: bytes) -> int:
        return route(key_hash(key, self.seed), self.partitions)

    def parts(self, event: Event) -> set[int]:
        if event.clear:
            return set(range(self.partitions))
        return {self.part(key) for key in event.changes}

    def key_for(self, part: int, prefix: str) -> str:
        """A new key (never used before in this case) of partition ``part``."""
        while True:
            key = f"{prefix}{next(self._serial):05d}"
            if self.part(encode_key(key)) == part:
                return key

    def state(self, events: list[Event] | None = None) -> dict[bytes, Any]:
        out = dict(self.base)
        for event in self.events if events is None else events:
            _apply(out, event)
        return out

    # recorded writes (acknowledged when they return)

    def put(self, db: halodb.Store, key: Any, value: Any) -> None:
        db[key] = value
        self.events.append(Event(f"put {key!r}", _encoded({key: value})))

    def delete(self, db: halodb.Store, key: Any) -> None:
        del db[key]
        self.events.append(Event(f"delete {key!r}", _encoded({key: None})))

    def batch(self, db: halodb.Store, changes: dict[Any, Any]) -> None:
        batch_apply(db, changes)
        self.events.append(Event(f"batch of {len(changes)}", _encoded(changes)))

    def clear(self, db: halodb.Store) -> None:
        db.clear()
        self.events.append(Event("clear", {}, clear=True))

    def attempt(self, what: str, changes: dict[Any, Any], *, clear: bool = False) -> None:
        """Announce the write the operation under test is about to make."""
        self.pending = Event(what, _encoded(changes), clear)

    def acknowledge(self) -> None:
        if self.pending is not None:
            self.events.append(self.pending)
            self.pending = None


def _apply(
    state: dict[bytes, Any], event: Event, keep: Callable[[bytes], bool] | None = None
) -> None:
    if event.clear:
        for key in [k for k in state if keep is None or keep(k)]:
            del state[key]
    for key, value in event.changes.items():
        if keep is not None and not keep(key):
            continue
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value


def _diff(observed: dict[bytes, Any], expected: dict[bytes, Any]) -> str:
    missing = [k for k in expected if k not in observed]
    extra = [k for k in observed if k not in expected]
    wrong = [k for k in expected if k in observed and observed[k] != expected[k]]
    return f"missing {missing[:5]}, unexpected {extra[:5]}, wrong values {wrong[:5]}"


def judge(observed: dict[bytes, Any], hist: History, *, everything: bool) -> str | None:
    """Why ``observed`` is not a state the store may hold, or ``None`` if it is.

    With ``everything``, it must hold every acknowledged write, and the pending one whole or not
    at all. Otherwise (a power cut, or FAST mode) each partition holds its starting state plus a
    prefix of its own writes, and a write over several partitions is in all of them or in none.
    """
    events = hist.events + ([hist.pending] if hist.pending is not None else [])
    acked = len(hist.events)
    choices: list[list[int]] = []
    per_part: list[list[int]] = []
    for p in range(hist.partitions):
        mine = [i for i, e in enumerate(events) if p in hist.parts(e)]
        per_part.append(mine)

        def keep(key: bytes, p: int = p) -> bool:
            return hist.part(key) == p

        state = {k: v for k, v in hist.base.items() if keep(k)}
        want = {k: v for k, v in observed.items() if keep(k)}
        fits = []
        for length in range(len(mine) + 1):
            if state == want:
                fits.append(length)
            if length < len(mine):
                _apply(state, events[mine[length]], keep)
        floor = sum(1 for i in mine if i < acked) if everything else 0
        fits = [n for n in fits if n >= floor]
        if not fits:
            full = {k: v for k, v in hist.state().items() if keep(k)}
            return (
                f"partition {p} holds no allowed state "
                f"({'every acknowledged write' if everything else 'a prefix of its writes'}); "
                f"against all acknowledged writes: {_diff(want, full)}"
            )
        choices.append(fits)
    for lengths in itertools.product(*choices):
        included = [set(per_part[p][:n]) for p, n in enumerate(lengths)]
        if all(
            len({i in included[p] for p in hist.parts(e)}) == 1
            for i, e in enumerate(events)
            if len(hist.parts(e)) > 1
        ):
            return None
    return "a write over several partitions is in some of them only"


# -- stores to start from ---------------------------------------------------------------------


def _abandon(db: halodb.Store) -> None:
    """Drop the store as a crash would (see support.stores.abandon): no flush, no close record."""
    halodb.testing.abandon(db)


def _value(i: int) -> str:
    return f"big {i} " * 60 if i % 10 == 3 else f"value {i}"


@dataclass
class Template:
    path: Path
    model: dict[bytes, Any]
    seed: int
    partitions: int


def _make_template(kind: str, path: Path) -> Template:
    """The store a case starts from (copied for every case)."""
    if kind == "v1":
        shutil.copytree(GOLDEN_V1, path)
        with halodb.open(path, readonly=True) as db:
            return Template(
                path, _observe(db), testing.engine(db).seed, len(testing.engine(db).parts)
            )
    if kind == "none":
        return Template(path, {}, HASH_SEED, OPTIONS["partitions"])
    if kind == "leftovers":
        # what a creation interrupted before its manifest leaves: the lock file, partition
        # files exactly as created, temporary files (which the next write_new removes)
        _abandon(halodb.open(path, hash_seed=HASH_SEED, **OPTIONS))
        (path / fmt.MANIFEST_NAME).rename(path / f"{fmt.MANIFEST_NAME}.tmp")
        (path / fmt.partition_file(1, "wal.tmp")).write_bytes(b"half a log")
        (path / fmt.partition_file(1, "wal")).unlink()
        return Template(path, {}, HASH_SEED, OPTIONS["partitions"])
    plain: dict[str, Any] = {}
    with halodb.open(path, hash_seed=HASH_SEED, **OPTIONS) as db:
        for i in range(BASE_KEYS):
            db[f"k{i:04d}"] = plain[f"k{i:04d}"] = _value(i)
        db.flush()
        for i in range(0, BASE_KEYS, 7):  # a second transaction: free pages to reuse
            db[f"k{i:04d}"] = plain[f"k{i:04d}"] = f"second {i}"
        for i in range(5, BASE_KEYS, 11):
            del db[f"k{i:04d}"]
            del plain[f"k{i:04d}"]
        db.flush()
        seed, partitions = testing.engine(db).seed, len(testing.engine(db).parts)
    model = _encoded(plain)
    # leftovers of new files a crash interrupted before their rename: write_new removes each
    # (an unlink to fail) when it next writes that file
    (path / fmt.partition_file(0, "wal.tmp")).write_bytes(b"a log that never made it")
    (path / fmt.partition_file(1, "bloom.tmp")).write_bytes(b"a bloom filter never renamed")
    if kind != "clean":
        db = halodb.open(path, **OPTIONS)
        hist = History(model, seed, partitions)
        for i in range(12):
            hist.put(db, f"log{i:03d}", _value(i))
        hist.delete(db, "k0001")
        hist.put(db, "k0002", "overwritten in the log")
        hist.batch(db, {hist.key_for(0, "lb"): "b0", hist.key_for(1, "lb"): "b1", "k0004": None})
        cut = None
        if kind == "dropped":
            # a batch over both partitions, its part in partition 1 lost in the crash
            wal = testing.engine(db).parts[1].log
            assert wal is not None
            cut = wal.end
            with db.batch() as b:
                b[hist.key_for(0, "dropped")] = "lost"
                b[hist.key_for(1, "dropped")] = "lost"
        model = hist.state()
        _abandon(db)
        wal1 = path / fmt.partition_file(1, "wal")
        if cut is not None:
            os.truncate(wal1, cut)
        if kind == "torn":
            record = frame_put(10**9, b"torn", b"x" * 200)
            with open(path / fmt.partition_file(0, "wal"), "ab") as out:
                out.write(record[: len(record) // 2])
    with halodb.open(path, readonly=True) as db:
        assert _observe(db) == model, f"template {kind} does not hold its model"
    return Template(path, model, seed, partitions)


# -- operations -------------------------------------------------------------------------------


def _some_writes(db: halodb.Store, hist: History, durability: str) -> None:
    """Recent writes in both partitions' memtables (and logs) before the operation."""
    for p in (0, 1):
        for _ in range(3):
            hist.put(db, hist.key_for(p, "new"), "fresh " * 8)
    hist.put(db, "k0003", "overflow replaced " * 30)
    hist.delete(db, "k0006")
    hist.delete(db, "k0013")


def _live_tree_key(hist: History, part: int, skip: int = 0) -> str:
    """A live key of partition ``part`` that only the template's tree holds (no write of the
    case touched it, so it is in no memtable)."""
    touched = {key for event in hist.events for key in event.changes}
    keys = [k for k in sorted(hist.state()) if hist.part(k) == part and k not in touched]
    found = [decode_key(k) for k in keys]
    return [k for k in found if isinstance(k, str) and k.startswith("k")][skip]


# Each preparation runs before the fault is armed; each operation is one public call (after
# announcing the write it makes, if any, with ``hist.attempt``).

Step = Callable[[halodb.Store, History, str], Any]


def _prep_buffer(db: halodb.Store, hist: History, durability: str) -> None:
    """FAST mode: partition 0's log buffer nearly full, so that the next put hands it over."""
    wal = testing.engine(db).parts[0].log
    assert wal is not None
    if wal.buffer is not None:
        while len(wal.buffer) < wal.buffer_limit - 700:
            hist.put(db, hist.key_for(0, "buf"), "b" * 100)


def _memtable_nearly_full(part: int) -> Step:
    def prepare(db: halodb.Store, hist: History, durability: str) -> None:
        """Partition ``part``'s memtable 8 bytes short of its limit: the next write flushes."""
        memtable = testing.engine(db).parts[part].memtable
        limit = testing.engine(db).memtable_limit
        while limit - memtable.size > 2500:
            hist.put(db, hist.key_for(part, "fill"), "m" * 900)
        key = hist.key_for(part, "fill")
        hist.put(db, key, "")
        # an overwrite grows the memtable by the difference of the values' lengths
        hist.put(db, key, "m" * (limit - 8 - memtable.size))
        assert memtable.size == limit - 8, (memtable.size, limit)

    return prepare


def _prep_cleared(db: halodb.Store, hist: History, durability: str) -> None:
    hist.clear(db)
    hist.put(db, hist.key_for(0, "after"), "after the clear")
    hist.put(db, hist.key_for(1, "after"), "after the clear " * 20)


def _op_put(db: halodb.Store, hist: History, durability: str) -> None:
    key = hist.key_for(0, "op")
    hist.attempt(f"put {key!r}", {key: "p" * 800})
    db[key] = "p" * 800


def _op_put_flush(db: halodb.Store, hist: History, durability: str) -> None:
    key = hist.key_for(1, "op")
    hist.attempt(f"put {key!r}", {key: "flushing " * 20})
    db[key] = "flushing " * 20


def _op_delete(db: halodb.Store, hist: History, durability: str) -> None:
    key = _live_tree_key(hist, 0, 3)
    hist.attempt(f"delete {key!r}", {key: None})
    del db[key]


def _op_pop(db: halodb.Store, hist: History, durability: str) -> None:
    key = _live_tree_key(hist, 1, 2)
    expected = hist.state()[encode_key(key)]
    hist.attempt(f"pop {key!r}", {key: None})
    assert db.pop(key) == expected


def _op_popitem(db: halodb.Store, hist: History, durability: str) -> None:
    state = hist.state()
    first = min(state)
    key = decode_key(first)
    hist.attempt(f"popitem {key!r}", {key: None})
    assert db.popitem() == (key, state[first])


def _op_setdefault(db: halodb.Store, hist: History, durability: str) -> None:
    key = hist.key_for(1, "op")
    hist.attempt(f"setdefault {key!r}", {key: "default"})
    assert db.setdefault(key, "default") == "default"


def _op_batch(db: halodb.Store, hist: History, durability: str) -> None:
    changes: dict[Any, Any] = {hist.key_for(p, "op"): f"batch {p}" * 9 for p in (0, 1, 0, 1)}
    changes[_live_tree_key(hist, 1, 4)] = None
    changes[_live_tree_key(hist, 0, 5)] = "batch overwrite"
    hist.attempt("batch", changes)
    batch_apply(db, changes)


def _op_update(db: halodb.Store, hist: History, durability: str) -> None:
    changes = {hist.key_for(p, "upd"): f"update {p}" * 30 for p in (1, 0, 1)}
    hist.attempt("update", changes)
    db.update(changes)


def _op_clear(db: halodb.Store, hist: History, durability: str) -> None:
    hist.attempt("clear", {}, clear=True)
    db.clear()


def _op_flush(db: halodb.Store, hist: History, durability: str) -> None:
    db.flush()


def _op_sync(db: halodb.Store, hist: History, durability: str) -> None:
    db.sync()


def _op_close(db: halodb.Store, hist: History, durability: str) -> None:
    db.close()


def _op_open(path: Path, fs: FaultFS, durability: DurabilityName) -> halodb.Store:
    return halodb.open(path, filesystem=fs, durability=durability, **OPTIONS)


def _op_open_readonly(path: Path, fs: FaultFS, durability: DurabilityName) -> halodb.Store:
    return halodb.open(path, filesystem=fs, readonly=True)


def _op_open_v1(path: Path, fs: FaultFS, durability: DurabilityName) -> halodb.Store:
    return halodb.open(path, filesystem=fs, durability=durability, background=False)


@dataclass(frozen=True)
class Scenario:
    """A public operation under test, and the state it starts from."""

    name: str
    template: str
    """``clean`` (cleanly closed, with leftover temporary files), ``abandoned`` (logs to
    replay), ``torn`` (and a torn log tail), ``dropped`` (and a batch part lost), ``v1`` (the
    golden version-1 store), ``leftovers`` (of an interrupted creation), ``none``."""
    run: Callable[..., Any]
    prepare: tuple[Step, ...] = (_some_writes,)
    opens: bool = False
    """The operation is ``halodb.open``; otherwise it runs on a store opened from the template."""
    fast: bool = False
    """Also run in FAST mode in the default (CI) run."""


SCENARIOS = {
    s.name: s
    for s in [
        Scenario("create", "none", _op_open, (), opens=True, fast=True),
        Scenario("create_leftovers", "leftovers", _op_open, (), opens=True),
        Scenario("reopen", "clean", _op_open, (), opens=True),
        Scenario("recover", "abandoned", _op_open, (), opens=True, fast=True),
        Scenario("recover_torn", "torn", _op_open, (), opens=True),
        Scenario("open_readonly", "torn", _op_open_readonly, (), opens=True),
        Scenario("recover_dropped", "dropped", _op_open, (), opens=True),
        Scenario("upgrade_v1", "v1", _op_open_v1, (), opens=True),
        Scenario("put", "clean", _op_put, (_some_writes, _prep_buffer), fast=True),
        Scenario("put_flush", "clean", _op_put_flush, (_some_writes, _memtable_nearly_full(1))),
        Scenario("delete", "clean", _op_delete),
        Scenario("delete_flush", "clean", _op_delete, (_some_writes, _memtable_nearly_full(0))),
        Scenario("pop", "clean", _op_pop),
        Scenario("pop_flush", "clean", _op_pop, (_some_writes, _memtable_nearly_full(1))),
        Scenario("popitem", "clean", _op_popitem),
        Scenario("setdefault", "clean", _op_setdefault),
        Scenario("batch", "clean", _op_batch, fast=True),
        Scenario(
            "batch_flush", "clean", _op_batch, (_some_writes, _memtable_nearly_full(1)), fast=True
        ),
        Scenario("update", "clean", _op_update),
        Scenario("clear", "clean", _op_clear),
        Scenario("flush", "clean", _op_flush, fast=True),
        Scenario("flush_cleared", "clean", _op_flush, (_some_writes, _prep_cleared)),
        Scenario("sync", "clean", _op_sync, fast=True),
        Scenario("close", "clean", _op_close, fast=True),
    ]
}


# -- one case ---------------------------------------------------------------------------------


@dataclass
class Problem:
    """One broken promise found by a case: ``what`` names the check (see ``Case``)."""

    what: str
    message: str

    def __str__(self) -> str:
        return f"{self.what}: {self.message}"


@dataclass
class Case:
    """One fault injection: copy the template, open, prepare, arm, run the operation, check.

    Every check records a :class:`Problem` rather than stopping the case, so a known defect
    does not hide what the later checks would find. The checks: ``error`` (what the operation
    raised), ``refusal`` (writes after the failure), ``memory`` (contents and ``check()`` of the
    failed store), ``close``, ``fds``, ``reopen``, ``lock`` (the LOCK file's header), ``crash``
    (the power-cut copies)."""

    scenario: Scenario
    durability: DurabilityName
    template: Template
    fault: Fault
    workdir: Path
    problems: list[Problem] = field(default_factory=list)
    fired: bool = False

    @property
    def where(self) -> str:
        return f"[{self.scenario.name} {self.durability} {self.fault}]"

    def problem(self, what: str, message: str) -> None:
        self.problems.append(Problem(what, f"{self.where} {message}"))

    @contextlib.contextmanager
    def checking(self, what: str) -> Iterator[None]:
        """Record anything the block raises (an assertion or an engine error) as a problem."""
        try:
            yield
        except AssertionError as exc:
            self.problem(what, str(exc))
        except Exception as exc:
            self.problem(what, f"raised {exc!r}")

    def run(self) -> bool:
        """Run the case; whether the fault fired. Problems go to ``self.problems``."""
        path = self.workdir / "store"
        try:
            if self.template.path.exists():
                shutil.copytree(self.template.path, path)
            else:  # open() creates the store's directory, not its parents
                self.workdir.mkdir(parents=True)
            self._run(path)
            return self.fired
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _run(self, path: Path) -> None:
        sc, durability = self.scenario, self.durability
        hist = History(dict(self.template.model), self.template.seed, self.template.partitions)
        fs = FaultFS(path)
        fds = _open_fds()
        db: halodb.Store | None = None
        if not sc.opens:
            db = halodb.open(path, filesystem=fs, durability=durability, **OPTIONS)
            for step in sc.prepare:
                step(db, hist, durability)
        fs.arm(self.fault)
        error: BaseException | None = None
        try:
            if sc.opens:
                db = sc.run(path, fs, durability)
            else:
                assert db is not None
                sc.run(db, hist, durability)
        except Exception as exc:
            error = exc
        injected = list(fs.injected)
        self.fired = bool(injected)
        fs.disarm()
        with self.checking("error"):
            if not injected:
                assert error is None, f"failed with no fault injected: {error!r}"
                hist.acknowledge()
            else:
                assert error is not None, f"{len(injected)} injected errors went unreported"
                assert isinstance(error, halodb.OperationalError), f"raised {error!r}"
                assert any(c is e for c in _causes(error) for e in injected), (
                    f"{error!r} does not chain the injected error: {_causes(error)}"
                )
        with self.checking("error"):
            # A flush pauses the garbage collector: a failing one must still restore it.
            if not gc.isenabled():
                gc.enable()  # (for the cases after this one)
                raise AssertionError("the garbage collector was left disabled")
        crash = self.workdir / "crash"
        fs.crash_copy(crash)
        fs.crash_copy(self.workdir / "crash-hopeful", optimistic=True)
        if db is not None and not db.closed:
            if injected:
                with self.checking("refusal"):
                    self._refuses(db, injected)
            with self.checking("memory"):
                problem = judge(_observe(db), hist, everything=True)
                assert problem is None, f"in memory after the failure: {problem}"
            with self.checking("memory"):
                try:
                    db.check()
                except halodb.Error as exc:
                    raise AssertionError(f"check() of the failed store raised {exc!r}") from exc
        if db is not None:
            with self.checking("close"):
                try:
                    db.close()  # after a failure it may raise, having released everything
                except halodb.Error as exc:
                    assert injected, f"close() raised with no fault injected: {exc!r}"
                assert db.closed, "close() raised and left the store open"
                db.close()  # idempotent: nothing to do, nothing raised the second time
        leaked = {fd: target for fd, target in _open_fds().items() if fd not in fds}
        for fd in leaked:  # so that one leak does not spill into the next case
            with contextlib.suppress(OSError):
                os.close(int(fd))
        if leaked:
            self.problem("fds", f"file descriptors left open: {sorted(leaked.values())}")
        everything = durability != "fast" or not injected
        with self.checking("reopen"):
            self._verify_reopen(path, hist, everything=everything)
        for copy, name in ((crash, "power cut"), (self.workdir / "crash-hopeful", "power cut+")):
            with self.checking("crash"):
                _verify_crash(copy, hist, everything=durability == "full", where=name)

    def _refuses(self, db: halodb.Store, injected: list[OSError]) -> None:
        attempts: list[tuple[str, Callable[[], Any]]] = [
            ("a put", lambda: db.__setitem__("probe", "refused")),
            ("a batch", lambda: db.update({"probe": 1, "probe2": 2})),
            ("sync()", db.sync),
            ("flush()", db.flush),
            ("clear()", db.clear),
        ]
        for attempt, call in attempts:
            try:
                call()
            except halodb.OperationalError as exc:
                assert any(c is e for c in _causes(exc) for e in injected), (
                    f"{attempt} was refused for another reason: {exc!r}"
                )
            else:
                raise AssertionError(f"{attempt} succeeded after the failure")

    def _verify_reopen(self, path: Path, hist: History, *, everything: bool) -> None:
        """Open with a plain FileSystem (so the lock must be free): check() clean, the model's
        contents, and a LOCK file that is exactly its header."""
        db = halodb.open(path, partitions=hist.partitions, page_size=OPTIONS["page_size"])
        try:
            db.check()
            observed = _observe(db)
            assert len(db) == len(observed), f"len() {len(db)} != {len(observed)} keys"
        finally:
            db.close()
        problem = judge(observed, hist, everything=everything)
        assert problem is None, f"reopened: {problem}"
        lock = (path / fmt.LOCK_NAME).read_bytes()
        if lock != LOCK_BYTES:
            self.problem("lock", f"reopened: LOCK holds {lock!r}, not its 10-byte header")


def _verify_crash(path: Path, hist: History, *, everything: bool, where: str) -> None:
    """Open what a power cut left with a plain FileSystem: check() clean, an allowed state."""
    if not (path / fmt.MANIFEST_NAME).exists():
        # the creation never became durable: the directory is leftovers, to be created over
        assert not hist.base and not hist.events, f"{where}: the manifest was lost"
        with halodb.open(path, **OPTIONS) as db:
            db.check()
            assert len(db) == 0
        return
    with halodb.open(path, partitions=hist.partitions, page_size=OPTIONS["page_size"]) as db:
        db.check()
        observed = _observe(db)
    problem = judge(observed, hist, everything=everything)
    assert problem is None, f"{where}: {problem}"


# -- the loops --------------------------------------------------------------------------------

ERRORS_CI: dict[str, tuple[str, ...]] = {"write": ("EIO", "short")}
ERRORS_STRESS: dict[str, tuple[str, ...]] = {
    "write": ("EIO", "ENOSPC", "short", "torn"),
    "fsync": ("EIO", "ENOSPC"),
    "rename": ("EIO", "ENOSPC"),
    "open": ("EIO", "ENOSPC"),
}
FLUSHING = ("put_flush", "delete_flush", "pop_flush", "batch_flush", "flush", "flush_cleared")
"""Scenarios whose operation flushes a partition while the store stays open."""


class KnownDefect(Exception):
    """Raised by a loop whose only problems are those of the engine defect it is marked with."""


@dataclass(frozen=True)
class Defect:
    reason: str
    signs: tuple[str, ...]
    """The checks (``Problem.what``) through which the defect shows."""


def _defect(scenario: str, durability: str, kind: str, error: str, how: str) -> Defect | None:
    """The engine defect a loop runs into (it is then marked xfail, strict), if any."""
    return None


def _params() -> Iterator[Any]:
    for sc in SCENARIOS.values():
        modes = ["normal", "full"] + (["fast"] if STRESS or sc.fast else [])
        for durability in modes:
            for kind in KINDS:
                errors = (ERRORS_STRESS if STRESS else ERRORS_CI).get(kind, ("EIO",))
                for error in errors:
                    for how in ("once", "persistent"):
                        defect = _defect(sc.name, durability, kind, error, how)
                        marks = []
                        if defect is not None:
                            marks.append(
                                pytest.mark.xfail(
                                    strict=True, raises=KnownDefect, reason=defect.reason
                                )
                            )
                        yield pytest.param(
                            sc.name,
                            durability,
                            kind,
                            error,
                            how,
                            id=f"{sc.name}-{durability}-{kind}-{error}-{how}",
                            marks=marks,
                        )


INJECTED: dict[str, int] = {}


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Template]]:
    base = tmp_path_factory.mktemp("templates")
    made = {
        kind: _make_template(kind, base / kind)
        for kind in sorted({s.template for s in SCENARIOS.values()})
    }
    started = time.perf_counter()
    yield made
    total = sum(INJECTED.values())
    print(
        f"\ntest_iofaults: {total} faults injected in {len(INJECTED)} loops "
        f"({'stress' if STRESS else 'default'} size, HALODB_IOFAULT_SEED={HASH_SEED}, "
        f"{time.perf_counter() - started:.1f} s)"
    )
    by_op: dict[str, dict[str, int]] = {}
    for name, fired in INJECTED.items():
        op, _, kind, *_ = name.split("-")
        by_op.setdefault(op, dict.fromkeys(KINDS, 0))[kind] += fired
    for op, kinds in by_op.items():
        print(f"  {op:16} " + " ".join(f"{kind}={n}" for kind, n in kinds.items()))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where cases run: a RAM disk if there is one (cases copy, reopen and fsync stores
    thousands of times), else the test's temporary directory. ``HALODB_IOFAULT_TMP`` chooses."""
    parent = os.environ.get("HALODB_IOFAULT_TMP")
    if parent is None and os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        parent = "/dev/shm"
    if parent is None:
        yield tmp_path_factory.mktemp("cases")
        return
    path = Path(tempfile.mkdtemp(prefix="halodb-iofaults-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize(("scenario", "durability", "kind", "error", "how"), list(_params()))
def test_every_kth_call_fails_cleanly(
    templates: dict[str, Template],
    scratch: Path,
    request: pytest.FixtureRequest,
    scenario: str,
    durability: DurabilityName,
    kind: str,
    error: str,
    how: str,
) -> None:
    """Fail the k-th call of ``kind`` made by the operation, k = 1, 2, ... until the operation
    no longer reaches a k-th call; every case must keep every promise (module docstring)."""
    sc = SCENARIOS[scenario]
    name = request.node.callspec.id
    problems: list[Problem] = []
    fired = 0
    for k in range(1, MAX_K + 1):
        fault = Fault(kind, k, error, persistent=how == "persistent")
        case = Case(sc, durability, templates[sc.template], fault, scratch / f"{name}-k{k}")
        if not case.run():
            problems += case.problems
            break
        problems += case.problems
        fired += 1
    else:
        raise AssertionError(f"{name}: still reaching a {kind} call after {MAX_K} of them")
    INJECTED[name] = fired
    defect = _defect(scenario, durability, kind, error, how)
    unknown = [p for p in problems if defect is None or p.what not in defect.signs]
    if unknown:
        raise AssertionError(
            f"{len(unknown)} broken promises in {fired} injections:\n"
            + "\n".join(str(p) for p in unknown[:20])
        )
    if problems:
        raise KnownDefect(f"{len(problems)} cases show the known defect, first: {problems[0]}")


# -- File.write_at's loop, and a failed fsync under group commit --------------------------------


def test_write_at_finishes_short_writes_and_reports_a_stalled_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``os.pwrite`` may write less than asked: ``File.write_at`` writes the rest; a write that
    makes no progress is ENOSPC, and one that fails part-way is an OperationalError chaining
    the OSError. (The fault loops inject at the ``File`` level; this covers the loop below.)"""
    real = os.pwrite
    script: list[int | OSError] = []

    def pwrite(fd: int, data: Any, offset: int) -> int:
        step = script.pop(0) if script else None
        if isinstance(step, OSError):
            raise step
        if step is None:
            return real(fd, data, offset)
        return real(fd, memoryview(data)[:step], offset)

    handle = FileSystem().open(str(tmp_path / "f"), create=True)
    try:
        monkeypatch.setattr(os, "pwrite", pwrite)
        script[:] = [3, 1, 4]  # then the last 2 bytes in one call
        handle.write_at(0, b"abcdefghij")
        assert handle.read_at(0, 100) == b"abcdefghij"
        script[:] = [2, 0]
        with pytest.raises(halodb.OperationalError) as info:
            handle.write_at(10, b"klmnop")
        cause = info.value.__cause__
        assert isinstance(cause, OSError) and cause.errno == errno.ENOSPC
        script[:] = [2, OSError(errno.EIO, "injected")]
        with pytest.raises(halodb.OperationalError) as info:
            handle.write_at(10, b"klmnop")
        cause = info.value.__cause__
        assert isinstance(cause, OSError) and cause.errno == errno.EIO
    finally:
        monkeypatch.undo()
        handle.close()


class _GatedSync(FileSystem):
    """Fails the first fsync of a log, and holds it until ``release`` is set."""

    def __init__(self) -> None:
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def open(self, path: str, *, write: bool = False, create: bool = False) -> File:
        handle = super().open(path, write=write, create=create)
        return _GatedFile(self, handle.path, handle.fd)


class _GatedFile(File):
    __slots__ = ()
    fs: _GatedSync

    def sync(self) -> None:
        fs = self.fs
        if fs.armed and self.path.endswith(".wal"):
            fs.armed = False
            fs.entered.set()
            fs.release.wait(10)
            try:
                raise OSError(errno.EIO, "injected")
            except OSError as exc:
                raise halodb.OperationalError(f"syncing {self.path!r} failed") from exc
        super().sync()


def test_a_failed_fsync_is_not_retried_into_a_success_by_a_waiting_writer(tmp_path: Path) -> None:
    """Group commit, ``"full"`` mode: writer A fsyncs the log; writer B appends its record after
    A's and waits for A's fsync. A's fsync fails. B must not fsync again and report success:
    a failed fsync may have dropped the dirty pages of A's record (the kernel marks them clean
    and reports the error once), so B's own fsync succeeding proves nothing about the log before
    B's record, without which B's record cannot be read back."""
    fs = _GatedSync()
    db = halodb.open(tmp_path / "s", filesystem=fs, durability="full", partitions=1)
    wal = testing.engine(db).parts[0].log
    assert wal is not None
    results: dict[str, BaseException | None] = {}

    def run(name: str, call: Callable[[], Any]) -> None:
        try:
            call()
            results[name] = None
        except BaseException as exc:
            results[name] = exc

    fs.armed = True
    a = threading.Thread(target=run, args=("A", lambda: db.__setitem__("a", 1)))
    b = threading.Thread(target=run, args=("B", lambda: db.__setitem__("b", 2)))
    try:
        a.start()
        assert fs.entered.wait(10), "writer A never reached its fsync"
        b.start()
        deadline = time.monotonic() + 10
        while not wal.cond._waiters and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.001)
        assert wal.cond._waiters, "writer B never waited for A's fsync"  # type: ignore[attr-defined]
        fs.release.set()
        a.join(10)
        b.join(10)
        assert isinstance(results["A"], halodb.OperationalError), results["A"]
        if results["B"] is None:
            pytest.fail("B's put succeeded after the fsync before it failed")
        assert isinstance(results["B"], halodb.OperationalError), results["B"]
        with pytest.raises(halodb.OperationalError, match="refuses writes"):
            db["c"] = 3
    finally:
        fs.release.set()
        for thread in (a, b):
            if thread.ident is not None:
                thread.join(10)
        db.close()

"""The process model (README, "Threads and processes"; design.md, "Concurrency"), across real
processes.

Promised: one process at a time may open a store for writing; any other open, writable or
read-only, from another process or a second handle, fails *at once* with ``OperationalError``
("already open ..."); several processes may open it ``readonly=True`` together, and a read-only
open never changes a byte on disk (nor a name, a size or a timestamp), whatever state the store
is in; a ``Store`` is unusable in a child after ``fork()`` (``ProgrammingError``), and the child
neither writes the parent's buffered data nor releases the parent's lock, however it ends; a
lock dies with its process, even one killed by ``SIGKILL``.

Every child is a fresh interpreter (``subprocess``; the fork tests fork inside one), started
together through a barrier: each prints ``ready`` and waits for a line on stdin. Timing
assertions measure only the ``halodb.open()`` call, in the child that made it.

``HALODB_STRESS=1`` runs many more turns; each test prints what it counted (``pytest -s``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import halodb
import halodb.testing
from halodb import format as fmt
from halodb.wal import encode_batch, frame

STRESS = bool(os.environ.get("HALODB_STRESS"))
PROCESSES = 8
LOCKED_WITHIN = 0.100
"""Seconds: the issue's bound on how long a refused open may take (it must not wait)."""
WRITER_REFUSED = "already open for writing or reading"
READER_REFUSED = "already open for writing ("
GOLDEN_V1 = Path(__file__).resolve().parents[1] / "golden" / "v1-store"
WATCHDOG = 600 if STRESS else 120


class Child:
    """A Python child process running ``script``, talked to a line at a time."""

    def __init__(self, script: str, *args: object) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script, *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def line(self) -> str:
        """The child's next line; fails the test (with the child's stderr) if it ended."""
        assert self.proc.stdout is not None
        text = self.proc.stdout.readline()
        if not text:
            self.kill()
            assert self.proc.stderr is not None
            raise AssertionError(
                f"child {self.proc.pid} ended (status {self.proc.returncode}) without a line:\n"
                + self.proc.stderr.read()
            )
        return text.strip()

    def json(self) -> Any:
        return json.loads(self.line())

    def send(self, text: str = "go") -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def finish(self) -> None:
        """Wait for a normal exit with status 0."""
        _, err = self.proc.communicate(timeout=WATCHDOG)
        assert self.proc.returncode == 0, f"child {self.proc.pid} failed:\n{err}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def spawn() -> Iterator[Callable[..., Child]]:
    """``spawn(script, *args)``; every child is killed at teardown, and all of them if the test
    outlives the watchdog (a hang, e.g. an open that blocks on the lock, then fails the test
    instead of blocking it)."""
    children: list[Child] = []

    def kill_all() -> None:
        for child in children:
            if child.proc.poll() is None:
                child.proc.kill()

    watchdog = threading.Timer(WATCHDOG, kill_all)
    watchdog.daemon = True
    watchdog.start()

    def _spawn(script: str, *args: object) -> Child:
        child = Child(script, *args)
        children.append(child)
        return child

    try:
        yield _spawn
    finally:
        watchdog.cancel()
        for child in children:
            child.kill()
            for stream in (child.proc.stdin, child.proc.stdout, child.proc.stderr):
                if stream is not None:
                    stream.close()


def start_together(children: list[Child]) -> None:
    """The start barrier: every child has printed ``ready``; then all are released at once."""
    for child in children:
        assert child.line() == "ready"
    for child in children:
        child.send()


def fingerprint(path: Path) -> dict[str, Any]:
    """Everything a read-only open must leave alone: the directory's listing, its timestamps,
    and for every entry its type, inode, mode, size, timestamps and a hash of its bytes."""
    out: dict[str, Any] = {}
    st = os.lstat(path)
    out["."] = (st.st_ino, st.st_mode, st.st_mtime_ns, st.st_ctime_ns)
    for name in sorted(os.listdir(path)):
        full = path / name
        st = os.lstat(full)
        digest = hashlib.sha256(full.read_bytes()).hexdigest() if full.is_file() else None
        out[name] = (st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, digest)
    return out


def abandon(db: halodb.Store) -> None:
    """Close without flushing or writing close records, leaving the logs as a crash would."""
    halodb.testing.abandon(db)


# ----------------------------------------------------------------------- writers take turns

CONTENDER = r"""
import json, os, random, sys, time
import halodb

path, markers, me, rounds, nkeys, mode = sys.argv[1:7]
me, rounds, nkeys = int(me), int(rounds), int(nkeys)
rng = random.Random(me)
WRITER = "W"
report = {"me": me, "refused": 0, "refused_slow": 0, "max_refusal": 0.0, "turns": [],
          "overlaps": [], "bad_messages": [], "inconsistent": []}
print("ready", flush=True)
sys.stdin.readline()
for r in range(rounds):
    readonly = mode == "mixed" and r % 3 == 1
    while True:
        started = time.perf_counter()
        try:
            db = halodb.open(path, readonly=readonly)
        except halodb.OperationalError as exc:
            took = time.perf_counter() - started
            report["refused"] += 1
            report["refused_slow"] += took >= 0.1
            report["max_refusal"] = max(report["max_refusal"], took)
            expected = ("already open for writing (" if readonly
                        else "already open for writing or reading")
            if expected not in str(exc):
                report["bad_messages"].append(str(exc))
            time.sleep(rng.uniform(0.0005, 0.004))
            continue
        break
    # Dekker-style markers, made after the open and removed before the close: a writer must
    # see no other marker at all, a reader no writer's.
    if readonly:
        mine = os.path.join(markers, f"R.{me}")
        os.close(os.open(mine, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    else:
        mine = os.path.join(markers, WRITER)
        try:
            os.close(os.open(mine, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            report["overlaps"].append([r, "another writer's marker"])
            mine = None
    others = [n for n in os.listdir(markers) if n != os.path.basename(mine or "")]
    if readonly:
        others = [n for n in others if n == WRITER]
    if others:
        report["overlaps"].append([r, others])
    t_in = time.monotonic_ns()
    turns = db.get("turns", 0)
    present = sum(1 for key in db if key != "turns")
    if present != turns * nkeys:  # every earlier writer turn is there whole
        report["inconsistent"].append([r, turns, present])
    if not readonly:
        for i in range(nkeys):
            db[("k", me, r, i)] = {"by": me, "round": r, "i": i}
        db["turns"] = turns + 1
    time.sleep(rng.uniform(0, 0.004))  # hold it a moment: others are refused meanwhile
    t_out = time.monotonic_ns()
    if mine is not None:
        os.unlink(mine)
    db.close()
    report["turns"].append([t_in, t_out, readonly])
print(json.dumps(report), flush=True)
"""


@pytest.mark.parametrize("mode", ["writers", "mixed"])
def test_processes_take_turns_and_every_refusal_is_immediate(
    tmp_path: Path, spawn: Callable[..., Child], mode: str
) -> None:
    """Eight processes contend for one store, each retrying until it gets in, writing its keys
    (read-modify-writing a shared counter) and closing. In ``mixed`` mode every third turn is a
    read-only open. Promised: a writer is always alone and read-only holders never overlap a
    writer; every refused open raises ``OperationalError`` with the "already open" message
    within 100 ms (measured around ``open()`` in the refused process); no turn is lost (the
    counter, read-modified-written by every writer, counts every writer turn); and at the end
    every process's writes are present."""
    rounds = 40 if STRESS else 4
    nkeys = 10
    path, markers = tmp_path / "s", tmp_path / "markers"
    markers.mkdir()
    with halodb.open(path, partitions=2):
        pass
    started = time.monotonic()
    children = [spawn(CONTENDER, path, markers, me, rounds, nkeys, mode) for me in range(PROCESSES)]
    start_together(children)
    reports = [child.json() for child in children]
    for child in children:
        child.finish()
    elapsed = time.monotonic() - started

    for report in reports:
        assert report["overlaps"] == [], report
        assert report["bad_messages"] == [], report
        assert report["inconsistent"] == [], report
    # No writer's turn overlaps any other turn, by the system-wide monotonic clock.
    turns = sorted((t_in, t_out, ro, r["me"]) for r in reports for t_in, t_out, ro in r["turns"])
    for i, (in_a, out_a, ro_a, me_a) in enumerate(turns):
        for in_b, out_b, ro_b, me_b in turns[i + 1 :]:
            if in_b > out_a:
                break  # sorted by start: no later turn overlaps this one
            assert ro_a and ro_b, f"a writer's turn overlaps another: processes {me_a}, {me_b}"
    writer_turns = {(r["me"], i) for r in reports for i, t in enumerate(r["turns"]) if not t[2]}
    refused = sum(r["refused"] for r in reports)
    slowest = max(r["max_refusal"] for r in reports)
    assert refused > 0, "no process was ever refused: the test did not contend"
    assert slowest < LOCKED_WITHIN, (
        f"a refused open took {slowest * 1000:.1f} ms "
        f"({sum(r['refused_slow'] for r in reports)} of {refused} refusals took 100 ms or more)"
    )
    with halodb.open(path) as db:
        assert db["turns"] == len(writer_turns)
        expected: dict[Any, Any] = {"turns": len(writer_turns)}
        for me, r in writer_turns:
            for i in range(nkeys):
                expected[("k", me, r, i)] = {"by": me, "round": r, "i": i}
        assert dict(db.items()) == expected
        assert len(db) == len(expected)
        db.check()
    print(
        f"\n{mode}: {PROCESSES} processes x {rounds} turns ({len(writer_turns)} writer turns, "
        f"{PROCESSES * rounds - len(writer_turns)} read-only), {refused} refused opens, "
        f"slowest refusal {slowest * 1000:.2f} ms, {elapsed:.2f} s"
    )


# ----------------------------------------------------------------------------- creation race

CREATOR = r"""
import json, sys, time
import halodb

path, me = sys.argv[1], int(sys.argv[2])
errors = []
print("ready", flush=True)
sys.stdin.readline()
while True:
    try:
        db = halodb.open(path, partitions=2)
        break
    except halodb.OperationalError:
        time.sleep(0.001)
    except halodb.Error as exc:  # not what the README promises: recorded, then retried
        errors.append(f"{type(exc).__name__}: {exc}")
        time.sleep(0.001)
for i in range(20):
    db[("c", me, i)] = i
db.close()
print(json.dumps(errors), flush=True)
"""


def test_processes_racing_to_create_a_store_all_get_in(
    tmp_path: Path, spawn: Callable[..., Child]
) -> None:
    """Eight processes open a store that does not exist yet, at once, each retrying on
    ``OperationalError``: exactly one store is created (every process's keys end up in it, under
    one manifest), nobody's data is lost, and every refusal is ``OperationalError`` (the race
    is rare; ``test_an_open_racing_a_creation_is_refused_as_locked`` pins one way into it
    deterministically)."""
    trials = 20 if STRESS else 1
    wrong: list[str] = []
    for trial in range(trials):
        path = tmp_path / f"fresh{trial}"
        children = [spawn(CREATOR, path, me) for me in range(PROCESSES)]
        start_together(children)
        errors = [child.json() for child in children]
        for child in children:
            child.finish()
        with halodb.open(path) as db:
            expected = {("c", me, i): i for me in range(PROCESSES) for i in range(20)}
            assert dict(db.items()) == expected
            db.check()
        wrong += [e for errs in errors for e in errs]
    print(
        f"\ncreation race: {trials} x {PROCESSES} processes, "
        f"{len(wrong)} refusals other than OperationalError"
        + (f" (first: {wrong[0][:100]})" if wrong else "")
    )
    assert not wrong, wrong[:3]


@pytest.mark.parametrize("written", [True, False])
def test_an_open_racing_a_creation_is_refused_as_locked(tmp_path: Path, written: bool) -> None:
    """README: while another handle holds the store for writing, an open "fails at once with
    OperationalError", also when that handle created the store a moment ago. Here the opener
    found no manifest, and before it listed the directory the store was created (and, with
    ``written``, written to) by another handle. Reproduced across processes by
    ``test_processes_racing_to_create_a_store_all_get_in`` about once in ten runs."""
    from halodb.vfs import FileSystem

    path = tmp_path / "s"
    holder: list[halodb.Store] = []

    class Racing(FileSystem):
        def exists(self, p: str) -> bool:
            answer = super().exists(p)
            if p.endswith(fmt.MANIFEST_NAME) and not holder:
                db = halodb.open(path, partitions=2)  # the other process wins the race
                holder.append(db)
                if written:
                    db.update({i: i for i in range(50)})
            return answer

    try:
        with pytest.raises(halodb.OperationalError, match=r"already open|being created"):
            halodb.open(path, filesystem=Racing())
    finally:
        for db in holder:
            db.close()
    with halodb.open(path) as db:
        assert len(db) == (50 if written else 0)


# ---------------------------------------------------------------------- read-only processes

READER = r"""
import hashlib, json, sys, time
import halodb

path = sys.argv[1]
print("ready", flush=True)
sys.stdin.readline()
started = time.perf_counter()
db = halodb.open(path, readonly=True)
opened = time.perf_counter() - started
print("in", flush=True)
sys.stdin.readline()  # every reader holds the store at this point
items = list(db.items())
keys = list(db)
assert keys == [k for k, _ in items]
assert list(db.range(reverse=True)) == items[::-1]
for key, value in items[:: max(1, len(items) // 50)]:
    assert db[key] == value and key in db
assert len(db) == len(items)
assert db.first() == (items[0] if items else None)
assert db.last() == (items[-1] if items else None)
db.check()
stats = db.stats()
db.sync()  # nothing to do on a read-only store
refused = []
for name, attempt in [
    ("put", lambda: db.__setitem__("new", 1)),
    ("delete", lambda: db.__delitem__(keys[0] if keys else "x")),
    ("update", lambda: db.update({"new": 1})),
    ("flush", db.flush),
    ("clear", db.clear),
]:
    try:
        attempt()
    except halodb.ProgrammingError:
        refused.append(name)
db.close()
print(json.dumps({"digest": hashlib.sha256(repr(items).encode()).hexdigest(),
                  "keys": len(items), "stats_keys": stats.keys, "refused": refused,
                  "open_seconds": opened}), flush=True)
"""


def _make_clean(path: Path) -> None:
    with halodb.open(path, partitions=2, page_size=1024) as db:
        db.update({("k", i): "v" * (i % 300) for i in range(400)})
        db.flush()
        db.update({("late", i): i for i in range(50)})


def _make_unflushed(path: Path) -> None:
    db = halodb.open(path, partitions=2, page_size=1024)
    db.update({("k", i): i for i in range(300)})
    db.flush()
    db.update({("k", i): -i for i in range(0, 300, 3)})
    for i in range(1, 300, 7):
        del db[("k", i)]
    with db.batch() as b:
        b["batched"] = [1, 2]
        b[("k", 1)] = "back"
    abandon(db)


def _make_torn(path: Path) -> None:
    _make_unflushed(path)
    wal = path / fmt.partition_file(1, "wal")
    half = frame(fmt.REC_WRITE, 10**6, b"\x00" + b"x" * 60)[:40]
    wal.write_bytes(wal.read_bytes() + half)


def _make_bloomless(path: Path) -> None:
    _make_clean(path)
    (path / fmt.partition_file(0, "bloom")).unlink()
    bloom = path / fmt.partition_file(1, "bloom")
    data = bytearray(bloom.read_bytes())
    data[-1] ^= 0xFF
    bloom.write_bytes(bytes(data))


def _make_dropped_batch(path: Path) -> None:
    _make_unflushed(path)
    wal = path / fmt.partition_file(0, "wal")  # a batch part whose sibling never got logged
    wal.write_bytes(
        wal.read_bytes() + frame(fmt.REC_BATCH, 10**6, encode_batch((0, 1), 0, [(b"k", b"v")]))
    )


def _make_v1(path: Path) -> None:
    shutil.copytree(GOLDEN_V1, path)


STATES: dict[str, Callable[[Path], None]] = {
    "closed cleanly": _make_clean,  # a writer replaces each log by a fresh one
    "unflushed logs": _make_unflushed,  # a writer opens the logs for appending
    "torn tail": _make_torn,  # a writer cuts the tail
    "missing and damaged blooms": _make_bloomless,  # rebuilt in memory; a writer saves them
    "dropped batch part": _make_dropped_batch,  # a writer flushes every partition at once
    "format version 1": _make_v1,  # a writer upgrades the manifest and the lock file
}


@pytest.mark.parametrize("state", list(STATES))
def test_read_only_processes_share_a_store_and_change_nothing(
    tmp_path: Path, spawn: Callable[..., Child], state: str
) -> None:
    """README: several processes may open a store ``readonly=True`` together, and read-only
    means "never change a byte on disk". Three read-only processes hold the store at once and
    read it all (items, reverse range, point reads, len, first/last), ``check()``, ``stats()``
    and ``sync()``, and every write is refused with ``ProgrammingError``. Even for stores a
    writable open would change (a log to replace, open for appending, a torn tail to cut, blooms
    to save, dropped batch parts to flush away, a version-1 store to upgrade), the directory's
    listing and every file's bytes, size, inode, mode and timestamps are unchanged. As a control,
    a writable open of the same store does change the fingerprint."""
    path = tmp_path / "s"
    STATES[state](path)
    before = fingerprint(path)
    with halodb.open(path, readonly=True) as db:  # one in this process too
        expected = list(db.items())
    digest = hashlib.sha256(repr(expected).encode()).hexdigest()
    readers = [spawn(READER, path) for _ in range(3)]
    start_together(readers)
    for reader in readers:
        assert reader.line() == "in"
    # all three hold the store now: a writer is refused, another reader is not
    with pytest.raises(halodb.OperationalError, match=WRITER_REFUSED):
        halodb.open(path)
    with halodb.open(path, readonly=True) as db:
        assert len(db) == len(expected)
    for reader in readers:
        reader.send()
    reports = [reader.json() for reader in readers]
    for reader in readers:
        reader.finish()
    for report in reports:
        assert report["digest"] == digest
        assert report["keys"] == report["stats_keys"] == len(expected)
        assert report["refused"] == ["put", "delete", "update", "flush", "clear"]
    assert fingerprint(path) == before
    with halodb.open(path) as db:  # the control: a writer does change it
        assert list(db.items()) == expected
    assert fingerprint(path) != before


WRITER = r"""
import sys
import halodb

path = sys.argv[1]
db = halodb.open(path, durability=sys.argv[2])
db.update({("w", i): i for i in range(100)})
db["single"] = "acknowledged"
print("holding", flush=True)
sys.stdin.readline()
db["after"] = "readers were refused"
db.close()
print("closed", flush=True)
"""

REFUSED_READER = r"""
import json, sys, time
import halodb

path = sys.argv[1]
print("ready", flush=True)
sys.stdin.readline()
report = {}
for mode in ("readonly", "writable"):
    started = time.perf_counter()
    try:
        halodb.open(path, readonly=mode == "readonly")
        report[mode] = ["opened", 0.0]
    except halodb.OperationalError as exc:
        report[mode] = [str(exc), time.perf_counter() - started]
print(json.dumps(report), flush=True)
sys.stdin.readline()  # the writer has closed now: read-only opens succeed, together
with halodb.open(path, readonly=True) as db:
    print(json.dumps(len(db)), flush=True)
    sys.stdin.readline()
"""


@pytest.mark.parametrize("durability", ["fast", "normal"])
def test_a_read_only_open_is_refused_while_another_process_writes(
    tmp_path: Path, spawn: Callable[..., Child], durability: str
) -> None:
    """README: while one process has the store open for writing, "any other open (for writing
    or reading, from another process ...) fails at once with OperationalError": read-only opens
    from four processes are refused (message "already open for writing") within 100 ms, as are
    writable ones, and the refusals leave the writer's files alone. Once the writer closes, the
    four read-only opens succeed together and see everything it wrote."""
    path = tmp_path / "s"
    writer = spawn(WRITER, path, durability)
    assert writer.line() == "holding"
    before = fingerprint(path)
    readers = [spawn(REFUSED_READER, path) for _ in range(4)]
    start_together(readers)
    for report in (reader.json() for reader in readers):
        for mode, expected in (("readonly", READER_REFUSED), ("writable", WRITER_REFUSED)):
            message, took = report[mode]
            assert expected in message, (mode, message)
            assert took < LOCKED_WITHIN, (mode, took)
    for readonly in (True, False):
        with pytest.raises(halodb.OperationalError, match="already open for writing"):
            halodb.open(path, readonly=readonly)
    assert fingerprint(path) == before
    writer.send()
    assert writer.line() == "closed"
    writer.finish()
    for reader in readers:
        reader.send()
    assert [reader.json() for reader in readers] == [102] * 4  # all four hold it together
    with pytest.raises(halodb.OperationalError, match=WRITER_REFUSED):
        halodb.open(path)
    for reader in readers:
        reader.send()
        reader.finish()


# ---------------------------------------------------------------------------------- fork()

FORKER = r"""
import json, os, signal, sys, time
import halodb

path, mode, ending = sys.argv[1:4]
readonly = mode == "readonly"
db = halodb.open(path, readonly=readonly, durability="fast")
if not readonly:
    for i in range(100):
        db[("parent", i)] = i  # FAST mode: still buffered in this process
print("opened", flush=True)
sys.stdin.readline()  # the test fingerprints the files now
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    results = {}
    for name, attempt in [
        ("put", lambda: db.__setitem__(("child", 1), 1)),
        ("get", lambda: db.get(("parent", 1))),
        ("len", lambda: len(db)),
        ("contains", lambda: ("parent", 1) in db),
        ("iterate", lambda: list(db)),
        ("batch", lambda: db.update({("child", 2): 2})),
        ("sync", db.sync),
        ("flush", db.flush),
        ("stats", db.stats),
        ("check", db.check),
    ]:
        try:
            attempt()
            results[name] = "no error"
        except halodb.ProgrammingError as exc:
            results[name] = "refused" if "forked child" in str(exc) else str(exc)
        except BaseException as exc:
            results[name] = repr(exc)
    # the child may open the store itself, but the parent holds it: refused at once
    started = time.perf_counter()
    try:
        halodb.open(path).close()
        results["own open"] = "opened"
    except halodb.OperationalError as exc:
        results["own open"] = str(exc)
    results["own open seconds"] = time.perf_counter() - started
    if ending == "close":
        db.close()  # does nothing in the child: no flush, no close record, no unlock
        results["closed"] = db.closed
    os.write(w, json.dumps(results).encode())
    os.close(w)
    if ending == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if ending == "os._exit":
        os._exit(0)
    sys.exit(0)  # "exit" and "close": a normal interpreter exit, atexit handlers and all
os.close(w)
chunks = []
while chunk := os.read(r, 65536):
    chunks.append(chunk)
_, status = os.waitpid(pid, 0)
print(json.dumps({"child": json.loads(b"".join(chunks) or b"{}"),
                  "status": os.waitstatus_to_exitcode(status)}), flush=True)
sys.stdin.readline()  # the test checks the files and the lock now
if not readonly:
    db[("parent", "after")] = "the parent goes on"
    assert db[("parent", 5)] == 5
db.close()
print("closed", flush=True)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.parametrize("ending", ["exit", "close", "os._exit", "sigkill"])
@pytest.mark.parametrize("mode", ["write", "readonly"])
def test_a_forked_child_is_refused_and_leaves_the_parents_lock_and_files_alone(
    tmp_path: Path, spawn: Callable[..., Child], mode: str, ending: str
) -> None:
    """README: "A Store is not usable in a child after fork()". Every use in the child raises
    ``ProgrammingError`` (naming the forked child); the child's own open is refused at once
    because the parent still holds the store; and whether the child calls ``close()`` and exits
    normally (atexit handlers run), just exits, ``os._exit``s or is SIGKILLed, it writes none of
    the parent's FAST-mode buffer and no close record (every file is as before the fork) and
    releases nothing: after it is gone, a writable open from another process is still refused
    (and, for a read-only parent, a read-only one still allowed). The parent then goes on
    writing, and closes with every write of its own and none of the child's."""
    path = tmp_path / "s"
    with halodb.open(path, partitions=2) as db:
        db["existing"] = 1
        db.flush()  # (no run for the parent's worker to merge while the files are compared)
    forker = spawn(FORKER, path, mode, ending)
    assert forker.line() == "opened"
    before = fingerprint(path)
    forker.send()
    report = forker.json()
    child = report["child"]
    assert report["status"] == (-signal.SIGKILL if ending == "sigkill" else 0), report
    refused = {k: v for k, v in child.items() if k not in ("own open", "own open seconds")}
    refused.pop("closed", None)
    assert set(refused.values()) == {"refused"}, child
    assert len(refused) == 10
    assert WRITER_REFUSED in child["own open"], child
    assert child["own open seconds"] < LOCKED_WITHIN, child
    if ending == "close":
        assert child["closed"] is True
    # the child is gone: nothing of the parent's changed, its lock still holds
    assert fingerprint(path) == before
    started = time.perf_counter()
    with pytest.raises(halodb.OperationalError, match=WRITER_REFUSED):
        halodb.open(path)
    assert time.perf_counter() - started < LOCKED_WITHIN
    if mode == "readonly":
        with halodb.open(path, readonly=True) as db:
            assert db["existing"] == 1
    forker.send()
    assert forker.line() == "closed"
    forker.finish()
    with halodb.open(path) as db:
        expected: dict[Any, Any] = {"existing": 1}
        if mode == "write":
            expected.update({("parent", i): i for i in range(100)})
            expected["parent", "after"] = "the parent goes on"
        assert dict(db.items()) == expected
        db.check()


# --------------------------------------------------------------------------------- SIGKILL

HOLDER = r"""
import json, os, sys, time
import halodb

path, mode, forks = sys.argv[1:4]
db = halodb.open(path, readonly=mode == "readonly")
if mode == "write":
    for i in range(200):
        db[("acked", i)] = i  # NORMAL durability: handed to the OS, so survives a kill
grandchild = 0
if forks == "fork":
    r, w = os.pipe()
    grandchild = os.fork()
    if grandchild == 0:  # outlives its parent, holding nothing of the store's
        os.write(w, b"x")  # the fork handlers have run by now
        time.sleep(120)
        os._exit(0)
    os.read(r, 1)
print(json.dumps({"grandchild": grandchild}), flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("forks", ["no fork", "fork"])
@pytest.mark.parametrize("mode", ["write", "readonly"])
def test_the_lock_of_a_sigkilled_process_is_released(
    tmp_path: Path, spawn: Callable[..., Child], mode: str, forks: str
) -> None:
    """A process holding the store (for writing, or read-only) is SIGKILLed: no close, no
    atexit. While it lived a writable open was refused; once it is dead the next writable open
    succeeds at the first attempt, even when the dead process had forked a child that is still
    alive (the fork handler closed the child's copy of the lock), and the killed writer's
    acknowledged writes are all there."""
    path = tmp_path / "s"
    with halodb.open(path, partitions=2) as db:
        db["before"] = 0
    cycles = 10 if STRESS else 1
    for _ in range(cycles):
        holder = spawn(HOLDER, path, mode, forks)
        grandchild = holder.json()["grandchild"]
        try:
            with pytest.raises(halodb.OperationalError, match=WRITER_REFUSED):
                halodb.open(path)
            holder.proc.send_signal(signal.SIGKILL)
            assert holder.proc.wait(timeout=30) == -signal.SIGKILL
            if grandchild:
                os.kill(grandchild, 0)  # still alive
            with halodb.open(path) as db:  # the first attempt succeeds
                expected: dict[Any, Any] = {"before": 0}
                if mode == "write":
                    expected.update({("acked", i): i for i in range(200)})
                assert dict(db.items()) == expected
                db.check()
        finally:
            if grandchild:
                os.kill(grandchild, signal.SIGKILL)
    print(f"\nSIGKILL ({mode}, {forks}): {cycles} holders killed, the lock released each time")

"""Crash tests: a child process writes to a store and is SIGKILLed at a random moment, over and
over; after each kill the parent reopens the store and checks it against what was acknowledged.

The child logs ``pending <op>`` before each call and ``ack <id>`` after it returns, one unbuffered
write per line, so the parent knows every acknowledged op and the single op in flight. Every
value is unique (it names the op that wrote it), so a value that was never written, or one from
the wrong op, cannot pass for a right one.

``HALODB_CRASH_CYCLES`` (default 300 per durability mode, the CI size; ``nox -s stress`` runs
20,000) and ``HALODB_SEED`` (default random) configure the loop; the seed is printed, and named
in every failure, to reproduce a run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import halodb
import halodb.testing
from halodb.keys import encode_key
from support.stores import DurabilityName

CYCLES = int(os.environ.get("HALODB_CRASH_CYCLES", "300"))
SEED = int(os.environ.get("HALODB_SEED", str(random.SystemRandom().randrange(1 << 32))))
NKEYS = 10_000
POINT_READS = 2000
OPTIONS: dict[str, Any] = {"partitions": 4, "page_size": 1024, "memtable_size": 64 * 1024}

CHILD = r"""
import json, os, random, sys
import halodb

cfg = json.loads(sys.argv[1])
log = open(cfg["log"], "ab", buffering=0)


def emit(line):
    log.write((line + "\n").encode())


def key_of(n):
    return (n, f"k{n:05d}", ("t", n), b"b%05d" % n)[n % 4]


def value_of(rng, op_id, n):
    r = rng.random()
    if r < 0.1:  # large: stored in overflow pages
        return "%d:%d:" % (op_id, n) + "L" * rng.randrange(300, 3000)
    if r < 0.25:
        return {"op": op_id, "n": n, "pad": [rng.random()] * rng.randrange(4)}
    return "%d:%d:" % (op_id, n) + "s" * rng.randrange(40)


rng = random.Random(cfg["seed"])
emit("opening")
db = halodb.open(cfg["store"], durability=cfg["mode"], **cfg["options"])
emit("opened")
op_id = cfg["first_op"]
nkeys = cfg["nkeys"]
while True:
    op_id += 1
    r = rng.random()
    if r < 0.5:
        n = rng.randrange(nkeys)
        op = {"id": op_id, "kind": "put", "changes": [[n, value_of(rng, op_id, n)]]}
    elif r < 0.65:
        op = {"id": op_id, "kind": "delete", "changes": [[rng.randrange(nkeys), None]]}
    elif r < 0.98:
        changes = {}
        for _ in range(rng.randrange(2, 12)):
            n = rng.randrange(nkeys)
            changes[n] = None if rng.random() < 0.25 else value_of(rng, op_id, n)
        op = {"id": op_id, "kind": "batch", "changes": sorted(changes.items())}
    elif r < 0.99:
        op = {"id": op_id, "kind": "flush", "changes": []}
    elif r < 0.995:  # the close leaves run files, which the open's worker merges
        op = {"id": op_id, "kind": "reopen", "changes": []}
    elif r < 0.99975:
        op = {"id": op_id, "kind": "compact", "changes": []}
    else:
        op = {"id": op_id, "kind": "clear", "changes": []}
    emit("pending " + json.dumps(op))
    kind = op["kind"]
    if kind == "put":
        (n, value), = op["changes"]
        db[key_of(n)] = value
    elif kind == "delete":
        db.pop(key_of(op["changes"][0][0]), None)
    elif kind == "batch":
        with db.batch() as b:
            for n, value in op["changes"]:
                if value is None:
                    del b[key_of(n)]
                else:
                    b[key_of(n)] = value
    elif kind == "flush":
        db.flush()
    elif kind == "compact":
        db.compact()
    elif kind == "reopen":
        db.close()
        db = halodb.open(cfg["store"], durability=cfg["mode"], **cfg["options"])
    else:
        db.clear()
    emit("ack %d" % op_id)
"""


def key_of(n: int) -> halodb.Key:
    """The key the child writes for key number ``n`` (a mix of key types)."""
    return (n, f"k{n:05d}", ("t", n), b"b%05d" % n)[n % 4]


def number_of(key: Any) -> int:
    """The key number of a key read back from the store."""
    if type(key) is int:
        return key
    if type(key) is str:
        return int(key[1:])
    if type(key) is tuple:
        return int(key[1])
    assert type(key) is bytes, key
    return int(key[1:])


@dataclass
class Op:
    id: int
    kind: str
    changes: dict[int, Any]
    acked: bool = False


@dataclass
class Cycle:
    """What one child run logged."""

    ops: list[Op] = field(default_factory=list)
    opened: bool = False


def parse_log(path: Path) -> Cycle:
    cycle = Cycle()
    by_id: dict[int, Op] = {}
    text = path.read_bytes().decode()
    lines = text.split("\n")
    for line in lines[:-1]:  # the last piece is empty or a line the kill cut short
        if line == "opened":
            cycle.opened = True
        elif line.startswith("pending "):
            raw = json.loads(line[len("pending ") :])
            op = Op(raw["id"], raw["kind"], {n: v for n, v in raw["changes"]})
            assert not cycle.ops or cycle.ops[-1].acked, "a new op before the last was acked"
            cycle.ops.append(op)
            by_id[op.id] = op
        elif line.startswith("ack "):
            by_id[int(line[4:])].acked = True
    return cycle


def apply(state: dict[int, Any], op: Op) -> None:
    if op.kind == "clear":
        state.clear()
    for n, value in op.changes.items():
        if value is None:
            state.pop(n, None)
        else:
            state[n] = value


def read_store(path: Path, mode: DurabilityName, where: str) -> dict[int, Any]:
    """Open the store, check it, read it every way, close it (sometimes as a crash would)."""
    rng = random.Random(where)
    if rng.random() < 0.2 and (path / "HALODB").exists():
        # a read-only open first: it must see what the read-write open then sees
        with halodb.open(path, readonly=True) as ro:
            ro.check()
            readonly_items = list(ro.items())
    else:
        readonly_items = None
    db = halodb.open(path, durability=mode, **OPTIONS)
    try:
        db.check()
        items = list(db.items())
        keys = [k for k, _ in items]
        assert keys == sorted(keys, key=encode_key), f"{where}: keys out of order"
        assert list(reversed(db)) == keys[::-1], f"{where}: reversed iteration differs"
        assert len(db) == len(items), f"{where}: len() is {len(db)}, iteration gives {len(items)}"
        state = {number_of(k): v for k, v in items}
        assert len(state) == len(items)
        for n in rng.sample(range(NKEYS), POINT_READS):  # the bloom filter and tree path
            assert db.get(key_of(n)) == state.get(n), f"{where}: get({key_of(n)!r}) differs"
        if readonly_items is not None:
            assert readonly_items == items, f"{where}: read-only open saw another state"
    finally:
        if rng.random() < 0.5:
            halodb.testing.abandon(db)  # leave the logs unflushed
        else:
            db.close()
    return state


def run_child(
    script: Path, store: Path, log: Path, mode: str, rng: random.Random, first_op: int
) -> tuple[int, str]:
    """Start the child, SIGKILL it at a random moment; return its exit code and stderr."""
    cfg = {
        "store": str(store),
        "log": str(log),
        "mode": mode,
        "seed": rng.randrange(1 << 32),
        "first_op": first_op,
        "nkeys": NKEYS,
        "options": OPTIONS,
    }
    when = rng.random()
    if when < 0.25:  # while the store opens and recovers (about 10 ms)
        mark, delay = b"opening\n", rng.uniform(0, 0.008)
    elif when < 0.35:  # in the middle of an explicit flush (a few ms)
        mark, delay = b'"kind": "flush"', rng.uniform(0, 0.004)
    elif when < 0.45:  # in the middle of a compaction (its steps: a few ms each)
        mark, delay = b'"kind": "compact"', rng.uniform(0, 0.01)
    elif when < 0.55:  # in a reopen: the close's run files, or the worker's merge of them
        mark, delay = b'"kind": "reopen"', rng.uniform(0, 0.02)
    else:  # at any moment of a run of writes (which flush on their own now and then)
        mark, delay = b"opened\n", rng.uniform(0.05, 0.4)
    proc = subprocess.Popen(
        [sys.executable, str(script), json.dumps(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            if log.exists() and mark in log.read_bytes():
                break
            time.sleep(0.001)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err.decode(errors="replace")


def crash_cycles(
    tmp_path: Path, mode: DurabilityName
) -> Iterator[tuple[str, Cycle, dict[int, Any]]]:
    """Run the kill loop; yield (where, what the child logged, the state read back)."""
    print(f"HALODB_SEED={SEED} HALODB_CRASH_CYCLES={CYCLES} mode={mode}")
    rng = random.Random(f"{SEED}-{mode}")
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    store = tmp_path / "store"
    for number in range(CYCLES):
        where = f"{mode} cycle {number} (HALODB_SEED={SEED})"
        log = tmp_path / f"cycle{number}.log"
        code, err = run_child(script, store, log, mode, rng, (number + 1) * 10_000_000)
        assert code == -signal.SIGKILL, f"{where}: the child died by itself:\n{err}"
        cycle = parse_log(log)
        state = read_store(store, mode, where)
        yield where, cycle, state


def check_batches_atomic(where: str, ops: list[Op], state: dict[int, Any]) -> None:
    """A batch is all or nothing: if any key shows a value the batch wrote, every other key
    of the batch shows the batch's change or that of a later op on that key."""
    later: dict[int, list[Op]] = {}
    for op in reversed(ops):
        if op.kind == "batch" and any(
            state.get(n) == v and v is not None for n, v in op.changes.items()
        ):
            for n, value in op.changes.items():
                if state.get(n) == value:
                    continue
                explained = any(
                    (o.kind == "clear" and state.get(n) is None)
                    or (n in o.changes and o.changes[n] == state.get(n))
                    for o in later.get(n, []) + later.get(-1, [])
                )
                assert explained, (
                    f"{where}: batch {op.id} is half applied: key {n} holds "
                    f"{str(state.get(n))[:40]!r}, not the batch's {str(value)[:40]!r} nor a "
                    f"later op's value"
                )
        for n in op.changes:
            later.setdefault(n, []).append(op)
        if op.kind == "clear":
            later.setdefault(-1, []).append(op)


@pytest.mark.parametrize("mode", ["normal", "full"])
def test_sigkill_loses_nothing_acknowledged(tmp_path: Path, mode: DurabilityName) -> None:
    """normal and full: every acknowledged op survives; the op in flight is all or nothing."""
    model: dict[int, Any] = {}
    ops_run = killed_opening = killed_flushing = killed_compacting = 0
    for where, cycle, state in crash_cycles(tmp_path, mode):
        killed_opening += not cycle.opened
        pending = None
        for op in cycle.ops:
            if op.acked:
                apply(model, op)
            else:
                assert pending is None
                pending = op
        ops_run += len(cycle.ops)
        killed_flushing += pending is not None and pending.kind == "flush"
        killed_compacting += pending is not None and pending.kind == "compact"
        if pending is None or pending.kind in ("flush", "compact"):
            candidates = [model]
        else:
            applied = dict(model)
            apply(applied, pending)
            candidates = [model, applied]
        if state not in candidates:
            wrong = sorted(n for n in set(state) | set(model) if state.get(n) != model.get(n))
            detail = [(n, str(model.get(n))[:30], str(state.get(n))[:30]) for n in wrong[:5]]
            pytest.fail(
                f"{where}: the store differs from the acknowledged writes at {len(wrong)} keys "
                f"(pending op: {pending and (pending.kind, pending.id)}); "
                f"(key, acknowledged, found): {detail}"
            )
        model = state
    print(
        f"{mode}: {CYCLES} cycles ({killed_opening} killed while opening, {killed_flushing} "
        f"during an explicit flush, {killed_compacting} during a compaction), {ops_run} ops, "
        f"{len(model)} keys at the end"
    )


def test_sigkill_fast_mode_loses_only_whole_recent_writes(tmp_path: Path) -> None:
    """fast: acknowledged writes may be lost, but the store is consistent: check() passes,
    each value is one written to that key, nothing older than the last durable state comes
    back, writes acknowledged before a flush survive, and batches are all or nothing."""
    state_before: dict[int, Any] = {}
    ops_run = killed_opening = 0
    for where, cycle, state in crash_cycles(tmp_path, "fast"):
        ops = cycle.ops
        ops_run += len(ops)
        killed_opening += not cycle.opened
        durable = dict(state_before)  # what a crash cannot take away
        durable_at = 0
        for i, op in enumerate(ops):
            if op.acked and op.kind == "flush":
                durable_at = i + 1
        for op in ops[:durable_at]:
            apply(durable, op)
        for n in set(state) | set(durable):
            options = [durable.get(n)]
            options += [
                None if op.kind == "clear" else op.changes[n]
                for op in ops[durable_at:]
                if n in op.changes or op.kind == "clear"
            ]
            assert state.get(n) in options, (
                f"{where}: key {n} holds {str(state.get(n))[:40]!r}, which is neither its "
                f"durable value {str(durable.get(n))[:40]!r} nor written after it"
            )
        check_batches_atomic(where, ops, state)
        state_before = state
    print(
        f"fast: {CYCLES} cycles ({killed_opening} killed while opening), {ops_run} ops, "
        f"{len(state_before)} keys at the end"
    )


# ---------------------------------------------------------------------------------------------
# Deterministic regressions for crash windows too narrow for the random loop to hit often.
# ---------------------------------------------------------------------------------------------


def _keys_by_partition(db: halodb.Store, count: int) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {i: [] for i in range(len(db.stats().partitions))}
    i = 0
    while min(len(v) for v in found.values()) < count:
        key = f"key{i}"
        i += 1
        found[halodb.testing.partition_of(db, key)].append(key)
    return found


def test_batch_dropped_by_recovery_stays_dropped(tmp_path: Path) -> None:
    """A kill between the appends of a batch's parts leaves one part logged; recovery drops
    it. Later writes elsewhere must not make a later recovery bring that half back."""
    path = tmp_path / "db"
    db = halodb.open(path, partitions=2, page_size=1024)
    keys = _keys_by_partition(db, 2)
    a, b = keys[0][0], keys[1][0]
    db[a], db[b] = "old-a", "old-b"
    db.flush()
    with db.batch() as batch:
        batch[a], batch[b] = "new-a", "new-b"
    halodb.testing.abandon(db)
    # the state a SIGKILL between the two appends leaves: partition 1 never got its part
    wal1 = path / "p001.wal"
    with wal1.open("r+b") as handle:
        handle.truncate(28)

    db = halodb.open(path)
    assert (db[a], db[b]) == ("old-a", "old-b")
    db[keys[1][1]] = "a later write to partition 1"
    db.close()  # flushes partition 1 past the batch's sequence number

    db = halodb.open(path)
    try:
        db.check()
        assert (db[a], db[b]) == ("old-a", "old-b"), "half of a dropped batch came back"
    finally:
        db.close()


CHILD_FAST_BATCH = r"""
import os, signal, sys
import halodb
import halodb.testing
from halodb.keys import encode_key

db = halodb.open(sys.argv[1], partitions=2, page_size=1024, durability="fast",
                 memtable_size=64 * 1024)
keys = {0: [], 1: []}
i = 0
while min(len(v) for v in keys.values()) < 3000:
    key = "key%d" % i
    i += 1
    keys[halodb.testing.partition_of(db, key)].append(key)
with db.batch() as b:
    b[keys[0][0]] = "batch"
    b[keys[1][0]] = "batch"
n = 1
while db.stats().partitions[1].flushes == 0:  # partition 1 fills its memtable and flushes
    db[keys[1][n]] = "x" * 100
    n += 1
sys.stdout.write("%s %s\n" % (keys[0][0], keys[1][0]))
sys.stdout.flush()
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_fast_mode_batch_survives_whole_or_not_at_all(tmp_path: Path) -> None:
    """fast: a batch over two partitions, then one partition flushes, then a crash. The other
    partition's part was only in the process's buffer; the batch must still be atomic."""
    path = tmp_path / "db"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD_FAST_BATCH, str(path)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    a, b = proc.stdout.decode().split()
    with halodb.open(path) as db:
        db.check()
        got = (db.get(a), db.get(b))
    assert got in (("batch", "batch"), (None, None)), f"batch half applied: {got}"

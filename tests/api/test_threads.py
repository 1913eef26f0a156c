"""Threads: concurrent writers and readers on one store, and group commit under "full".

Every value written names its key and a version, so a reader can tell whether a value it saw is
one a writer really wrote for that key (never a torn, mixed-up or invented one).
"""

from __future__ import annotations

import itertools
import random
import sys
import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import halodb
from halodb import testing
from halodb.hashing import key_hash
from halodb.keys import encode_key
from halodb.memtable import MISSING
from halodb.values import DefaultCodec
from support.faultfs import FaultFS
from support.stores import SMALL

WRITERS = 4
SPAN = 400
"""Keys per writer: writer ``w`` owns the int keys ``[w * 100_000, w * 100_000 + SPAN)``."""


def _run(threads: list[threading.Thread], errors: list[BaseException]) -> None:
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, errors


def _guard(errors: list[BaseException], body: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        try:
            body()
        except BaseException as exc:
            errors.append(exc)

    return run


def _int_keyed(pairs: Iterable[tuple[halodb.Key, Any]]) -> list[tuple[int, Any]]:
    """``pairs`` read from a store whose keys are all ints, each key checked to be one."""
    checked = []
    for key, value in pairs:
        assert isinstance(key, int), key
        checked.append((key, value))
    return checked


def test_writers_and_readers_run_concurrently(tmp_path: Path) -> None:
    db = halodb.open(tmp_path / "db", **SMALL)
    errors: list[BaseException] = []
    models: list[dict[int, list[Any]]] = [{} for _ in range(WRITERS)]
    written: list[set[tuple[int, int]]] = [set() for _ in range(WRITERS)]
    seen: list[list[tuple[int, Any]]] = [[], []]
    writers_done = threading.Event()
    deadline = time.monotonic() + 1.5

    def writer(w: int) -> None:
        rng = random.Random(w)
        model, mine = models[w], written[w]
        base = w * 100_000
        version = 0

        def value_for(key: int) -> list[Any]:
            nonlocal version
            version += 1
            mine.add((key, version))
            # Sometimes large enough for an overflow chain (page size 1 KiB).
            return [key, version, "p" * rng.choice([0, 10, 100, 400, 1500])]

        while time.monotonic() < deadline:
            key = base + rng.randrange(SPAN)
            r = rng.random()
            if r < 0.55:
                model[key] = db[key] = value_for(key)
            elif r < 0.75:
                if key in model:
                    del db[key]
                    del model[key]
                else:
                    try:
                        del db[key]
                    except KeyError:
                        pass
                    else:
                        raise AssertionError(f"deleted {key}, which writer {w} never wrote")
            elif r < 0.85:
                assert db.pop(key, None) == model.pop(key, None)
            else:
                with db.batch() as b:
                    for _ in range(rng.randrange(1, 20)):
                        k = base + rng.randrange(SPAN)
                        if rng.random() < 0.3:
                            del b[k]
                            model.pop(k, None)
                        else:
                            model[k] = value_for(k)
                            b[k] = model[k]
            if rng.random() < 0.01:
                assert db.get(key) == model.get(key)

    def reader(r: int) -> None:
        rng = random.Random(100 + r)
        log = seen[r]
        while not writers_done.is_set():
            choice = rng.randrange(4)
            if choice == 0:
                pairs = _int_keyed(db.items())
                descending = False
            elif choice == 1:
                w = rng.randrange(WRITERS)
                lo = w * 100_000 + rng.randrange(SPAN)
                pairs = _int_keyed(db.range(lo, lo + rng.randrange(1, 200)))
                assert all(lo <= k for k, _ in pairs)
                descending = False
            elif choice == 2:
                pairs = _int_keyed(db.range(reverse=True))
                descending = True
            else:
                pairs = _int_keyed((k, None) for k in db)
                descending = False
            keys = [k for k, _ in pairs]
            if descending:
                assert all(a > b for a, b in itertools.pairwise(keys)), "not decreasing"
            else:
                assert all(a < b for a, b in itertools.pairwise(keys)), "not increasing"
            log.extend(p for p in pairs if p[1] is not None)
            len(db)
            db.stats()

    threads = [threading.Thread(target=_guard(errors, partial(writer, w))) for w in range(4)]
    readers = [threading.Thread(target=_guard(errors, partial(reader, r))) for r in range(2)]
    for t in readers:
        t.start()
    try:
        _run(threads, errors)
    finally:
        writers_done.set()
        for t in readers:
            t.join(timeout=120)
    assert not errors, errors

    all_written = set().union(*written)
    assert sum(len(log) for log in seen) > 1000, "the readers saw too little to mean anything"
    for key, value in (pair for log in seen for pair in log):
        assert isinstance(value, list) and value[0] == key, (key, value)
        assert (key, value[1]) in all_written, f"{key}: value {value[:2]} was never written"

    expected: dict[int, Any] = {}
    for model in models:
        expected.update(model)
    assert len(expected) > 100
    assert len(db) == len(expected)
    assert dict(db.items()) == expected
    assert any(p.flushes for p in db.stats().partitions)
    db.check()
    db.close()
    with halodb.open(tmp_path / "db") as again:
        assert len(again) == len(expected)
        assert dict(again.items()) == expected
        again.check()


def test_full_durability_with_eight_threads_group_commit(tmp_path: Path) -> None:
    """Under "full", a write has been fsynced when it returns, even while other threads share
    the fsync (group commit) and logs are being replaced by flushes."""
    path = str(tmp_path / "db")
    fs = FaultFS(path, real_fsync=True)  # real fsyncs take time: threads do share them
    db = halodb.open(path, durability="full", filesystem=fs, **SMALL)
    errors: list[BaseException] = []
    per_thread = 150
    acknowledged: list[dict[tuple[int, int] | tuple[int, int, str], str]] = [{} for _ in range(8)]

    def writer(t: int) -> None:
        rng = random.Random(t)
        for i in range(per_thread):
            value = f"{t}:{i}:" + "x" * rng.choice([5, 50, 300])
            if i % 10 == 9:
                with db.batch() as b:
                    b[(t, i)] = value
                    b[(t, i, "b")] = value
                acknowledged[t][(t, i, "b")] = value
            else:
                db[(t, i)] = value
            acknowledged[t][(t, i)] = value

    _run([threading.Thread(target=_guard(errors, partial(writer, t))) for t in range(8)], errors)
    expected: dict[Any, str] = {}
    for acks in acknowledged:
        expected.update(acks)
    assert len(expected) == 8 * per_thread + 8 * (per_thread // 10)

    # A power cut now: only what was fsynced survives, and that must be every write.
    fs.crash_copy(tmp_path / "crashed")
    with halodb.open(tmp_path / "crashed") as crashed:
        assert dict(crashed.items()) == expected
        crashed.check()

    assert dict(db.items()) == expected
    db.close()
    with halodb.open(path, durability="full") as again:
        assert len(again) == len(expected)
        assert dict(again.items()) == expected
        again.check()


def test_close_while_threads_are_busy(tmp_path: Path) -> None:
    """Closing under load: every thread stops with ProgrammingError and nothing else; each write
    either returned (and is in the store after reopen) or raised (and is not)."""
    db = halodb.open(tmp_path / "db", **SMALL)
    errors: list[BaseException] = []
    stopped: list[BaseException] = []
    models: list[dict[int, str]] = [{} for _ in range(WRITERS)]
    started = threading.Barrier(WRITERS + 2 + 1)

    def writer(w: int) -> None:
        rng = random.Random(w)
        model = models[w]
        base = w * 100_000
        started.wait()
        try:
            for i in range(10**9):
                key = base + rng.randrange(SPAN)
                if rng.random() < 0.2:
                    if db.pop(key, None) is not None:
                        del model[key]
                elif rng.random() < 0.1:
                    with db.batch() as b:
                        b[key] = b[key + 1] = f"b{i}"
                    model[key] = model[key + 1] = f"b{i}"
                else:
                    value = f"v{i}" * rng.choice([1, 50])
                    db[key] = value
                    model[key] = value
        except halodb.ProgrammingError as exc:
            stopped.append(exc)

    def reader() -> None:
        started.wait()
        try:
            while True:
                for _ in db.items():
                    pass
                db.first()
                len(db)
        except halodb.ProgrammingError as exc:
            stopped.append(exc)

    threads = [threading.Thread(target=_guard(errors, partial(writer, w))) for w in range(4)]
    threads += [threading.Thread(target=_guard(errors, reader)) for _ in range(2)]
    for t in threads:
        t.start()
    started.wait()
    time.sleep(0.5)
    db.close()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, errors
    assert len(stopped) == WRITERS + 2
    expected: dict[int, str] = {}
    for model in models:
        expected.update(model)
    with halodb.open(tmp_path / "db") as again:
        assert dict(again.items()) == expected
        again.check()


def test_len_never_sees_half_a_batch(tmp_path: Path) -> None:
    """Each batch deletes 20 keys and adds 20 across partitions, so the store always holds
    exactly 200 keys (or 0 right after a clear); len() from another thread must agree."""
    db = halodb.open(tmp_path / "db", **SMALL)
    errors: list[BaseException] = []
    size = 200
    live = list(range(size))
    db.update(dict.fromkeys(live, "x"))
    done = threading.Event()
    lengths: list[int] = []

    def writer() -> None:
        rng = random.Random(9)
        fresh = size
        try:
            for round_ in range(300):
                if round_ % 50 == 49:
                    db.clear()
                    live[:] = range(fresh, fresh + size)
                    fresh += size
                    db.update(dict.fromkeys(live, "z" * 100))
                    continue
                with db.batch() as b:
                    for _ in range(20):
                        del b[live.pop(rng.randrange(len(live)))]
                        b[fresh] = "y" * rng.choice([10, 300])
                        live.append(fresh)
                        fresh += 1
        finally:
            done.set()

    def reader() -> None:
        while not done.is_set():
            lengths.append(len(db))

    _run(
        [
            threading.Thread(target=_guard(errors, writer)),
            threading.Thread(target=_guard(errors, reader)),
        ],
        errors,
    )
    assert len(lengths) > 100
    assert set(lengths) <= {0, size}, sorted(set(lengths))
    assert sorted(db) == sorted(live)
    db.check()
    db.close()


def test_gets_never_see_half_a_batch(tmp_path: Path) -> None:
    """Gets read without the partition lock when they can: a batch must still be seen whole.

    Each batch sets every key of ``KEYS`` (spread over all partitions, several per partition)
    to the same new int. A reader that gets them one after another sees a batch's value only
    once the whole batch is applied, so what it reads never goes down. Switching threads every
    microsecond makes a switch land inside a batch's apply thousands of times per run (without
    the partitions' epochs this fails within a few hundred batches), and the small memtable
    makes the flushes, which change the row cache and bloom filters under the reader, frequent.
    """
    keys = [f"k{i}" for i in range(64)]
    db = halodb.open(tmp_path / "db", **SMALL)
    db.update(dict.fromkeys(keys, 0))
    errors: list[BaseException] = []
    done = threading.Event()
    reads = [0]

    def writer() -> None:
        try:
            for version in range(1, 1500):
                with db.batch() as b:
                    for key in keys:
                        b[key] = version
                if version % 100 == 0:
                    db[f"pad{version}"] = "x" * 2000  # more flushes
        finally:
            done.set()

    def reader(order: list[str]) -> None:
        get = db.get
        while not done.is_set():
            seen = [get(key) for key in order]
            reads[0] += 1
            assert seen == sorted(seen), seen

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        _run(
            [
                threading.Thread(target=_guard(errors, writer)),
                threading.Thread(target=_guard(errors, lambda: reader(keys))),
                threading.Thread(target=_guard(errors, lambda: reader(keys[::-1]))),
            ],
            errors,
        )
    finally:
        sys.setswitchinterval(old)
    assert reads[0] > 100
    assert all(db[key] == 1499 for key in keys)
    assert db.stats().partitions[0].flushes > 0
    db.check()
    db.close()


def test_a_merge_lets_go_of_the_frozen_memtable_only_once_its_keys_read_from_the_tree(
    tmp_path: Path,
) -> None:
    """What a get without the lock relies on: at the moment a merge lets go of the frozen
    memtable (after a clear too), every key already reads from below it, with the right
    value."""
    db = halodb.open(tmp_path / "db", partitions=1)
    db.update({f"old{i}": i for i in range(300)})
    db.flush()
    db.clear()
    fresh = {f"new{i}": "v" * (i % 7) for i in range(300)}
    db.update(fresh)
    db["big"] = "b" * 5000  # an overflow value: never read without the lock
    part = testing.engine(db).parts[0]
    peeked: dict[str, object] = {}
    seen: dict[str, object] = {}

    def let_go() -> None:
        assert part.frozen is None and not part.memtable.data
        for key in [*fresh, "old7", "big"]:
            encoded = encode_key(key)
            h = key_hash(encoded, part.seed)
            peeked[key] = value = part.peek(encoded, h)
            # MISSING sends a get under the lock, which this merge holds: read as it will.
            seen[key] = part.get(encoded, h) if value is MISSING else value

    part.on_let_go = let_go
    db.flush()
    assert peeked["big"] is MISSING  # an overflow value: never answered without the lock
    assert seen.pop("old7") is None  # cleared
    assert seen.pop("big") == DefaultCodec().encode("b" * 5000)
    assert seen == {key: DefaultCodec().encode(value) for key, value in fresh.items()}
    assert db["big"] == "b" * 5000
    db.close()

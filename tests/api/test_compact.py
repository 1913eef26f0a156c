"""Compaction: ``Store.compact()`` gives a store's free space back, to the end, while reads and
writes go on; the background worker does it on its own past ``compact_threshold``; nothing is
lost or changed on the way, and ``check()`` passes after every step."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import halodb
import halodb.partition

SMALL: dict[str, Any] = {"partitions": 2, "page_size": 1024, "memtable_size": 64 * 1024}


def _fill(db: halodb.Store, n: int, value: str = "v" * 100) -> list[str]:
    keys = [f"k{i:06d}" for i in range(n)]
    random.Random(7).shuffle(keys)
    for start in range(0, n, 1000):
        with db.batch() as batch:
            for key in keys[start : start + 1000]:
                batch[key] = value
    db.flush()
    return keys


def _thinned(db: halodb.Store, n: int, kept: int) -> list[str]:
    """:func:`_fill` ``n`` keys, delete all but the last ``kept`` of them, and flush."""
    keys = _fill(db, n)
    for key in keys[: n - kept]:
        del db[key]
    db.flush()
    return keys


def _fresh_bytes(tmp_path: Path, items: dict[str, Any]) -> int:
    """The bytes on disk of a new store loaded with ``items`` (and flushed)."""
    with halodb.open(tmp_path / "fresh", **SMALL) as db:
        with db.batch() as batch:
            for key, value in items.items():
                batch[key] = value
        db.flush()
        return db.stats().file_bytes


def test_compact_after_deleting_most_keys_gives_the_space_back(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with halodb.open(path, compact_threshold=None, **SMALL) as db:
        keys = _thinned(db, 20_000, 2_000)
        before = db.stats()
        assert before.free_pages > 1000
        report = db.compact()
        after = db.stats()
        db.check()
        survivors = {key: "v" * 100 for key in keys[18_000:]}
        assert dict(db.items()) == survivors
    assert report.file_bytes_before == before.file_bytes
    assert report.file_bytes_after == after.file_bytes
    assert report.steps >= 2 and report.pages_rewritten > 0 and report.seconds >= 0
    assert after.free_pages < 16
    assert after.file_bytes <= 1.15 * _fresh_bytes(tmp_path, survivors)
    with halodb.open(path, **SMALL) as db:  # it all was durable, and opens as it was left
        assert dict(db.items()) == survivors
        db.check()
        assert db.stats().partitions[0].bloom_rebuilds == 0


def test_compact_merges_underfull_leaves(tmp_path: Path) -> None:
    # Each merge deletes one key of every third leaf or so (keys 40 apart, a leaf holds about
    # 13): a merge rewrites each changed leaf on its own, so the leaves are left 40% full.
    with halodb.open(tmp_path / "s", compact_threshold=None, partitions=1, page_size=1024) as db:
        db.update({f"k{i:06d}": "v" * 60 for i in range(4000)})
        db.flush()
        for m in range(24):
            for i in range(m, 4000, 40):
                del db[f"k{i:06d}"]
            db.flush()
        shape = db.check()[0]
        assert shape.fill_factor(1024) < 0.6
        report = db.compact()
        assert report.leaves_merged > shape.nodes_per_level[-1] // 3
        packed = db.check()[0]
        assert packed.nodes_per_level[-1] < shape.nodes_per_level[-1] * 0.6
        assert packed.fill_factor(1024) > 0.85
        assert dict(db.items()) == {f"k{i:06d}": "v" * 60 for i in range(4000) if i % 40 >= 24}


def test_compact_moves_overflow_values(tmp_path: Path) -> None:
    path = tmp_path / "s"
    big = {f"b{i:04d}": bytes([i % 251]) * (1500 + i) for i in range(300)}
    with halodb.open(path, compact_threshold=None, partitions=1, page_size=1024) as db:
        db.update(big)
        db.flush()
        for key in list(big)[:250]:
            del db[key]
        db.flush()
        for key in list(big)[250:]:
            assert db[key] == big[key]  # the row cache holds their overflow references now
        size = (path / "p000.tree").stat().st_size
        db.compact()
        assert (path / "p000.tree").stat().st_size < size // 3
        for key in list(big)[250:]:
            assert db[key] == big[key]
        db.check()
    with halodb.open(path, partitions=1, page_size=1024) as db:
        assert dict(db.items()) == {k: v for k, v in list(big.items())[250:]}
        db.check()


def test_compact_twice_rewrites_nothing_the_second_time(tmp_path: Path) -> None:
    with halodb.open(tmp_path / "s", compact_threshold=None, **SMALL) as db:
        keys = _fill(db, 5000)
        for key in keys[::3]:
            del db[key]
        db.flush()
        db.compact()
        size = db.stats().file_bytes
        again = db.compact()
        assert again.pages_rewritten == 0 and again.leaves_merged == 0
        assert again.file_bytes_after <= size
        db.check()


def test_compact_an_empty_or_new_store(tmp_path: Path) -> None:
    with halodb.open(tmp_path / "s", **SMALL) as db:
        report = db.compact()
        assert report.pages_rewritten == 0
        db["a"] = 1  # in the memtable only: compaction leaves memtables alone
        db.compact()
        assert dict(db.items()) == {"a": 1}
        db.clear()
        db.flush()
        db.compact()
        assert len(db) == 0
        db.check()


def test_progress_goes_up_to_the_total(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    with halodb.open(tmp_path / "s", compact_threshold=None, **SMALL) as db:
        _thinned(db, 5000, 1_000)
        db.compact(lambda done, total: calls.append((done, total)))
    assert calls
    totals = {total for _, total in calls}
    assert len(totals) == 1
    dones = [done for done, _ in calls]
    assert dones == sorted(dones) and dones[-1] == totals.pop()


def test_an_error_in_progress_stops_it_between_two_steps(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with halodb.open(path, compact_threshold=None, background=False, **SMALL) as db:
        keys = _thinned(db, 8000, 1_000)

        def stop(done: int, total: int) -> None:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            db.compact(stop)
        assert db.stats().compact_steps == 1
        db.check()
        db["new"] = "still writable"
        db.compact()  # goes on from where it stopped
        survivors = {key: "v" * 100 for key in keys[7000:]} | {"new": "still writable"}
        assert dict(db.items()) == survivors
        db.check()


def test_reads_and_writes_go_on_during_compaction(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with halodb.open(path, compact_threshold=None, **SMALL) as db:
        keys = _thinned(db, 20_000, 4_000)
        model: dict[str, Any] = {key: "v" * 100 for key in keys[16_000:]}
        errors: list[BaseException] = []
        done = threading.Event()

        def writer() -> None:
            try:
                i = 0
                while not done.is_set() or i < 3000:
                    key = f"w{i:06d}"
                    db[key] = i
                    model[key] = i
                    if i % 7 == 0:
                        old = keys[16_000 + i % 4000]
                        assert db[old] == model[old]
                    i += 1
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            report = db.compact()
        finally:
            done.set()
            thread.join()
        assert not errors
        assert report.pages_rewritten > 0
        assert dict(db.items()) == model
        db.check()


def test_without_a_worker_compaction_still_works(tmp_path: Path) -> None:
    with halodb.open(tmp_path / "s", background=False, **SMALL) as db:
        keys = _thinned(db, 10_000, 1_000)
        before = db.stats().file_bytes
        db.compact()
        assert db.stats().file_bytes < before // 4
        assert db.stats().worker == "off"
        assert dict(db.items()) == {key: "v" * 100 for key in keys[9000:]}
        db.check()


def _wait_for(condition: Any, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_worker_compacts_on_its_own_past_the_threshold(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with halodb.open(path, **SMALL) as db:  # compact_threshold: 0.25 by default
        keys = _fill(db, 20_000)
        full = db.stats()
        assert full.compact_steps == 0  # a fill's merges reuse what they free
        for key in keys[:18_000]:
            del db[key]
        db.flush()
        _wait_for(lambda: db.stats().compact_steps > 0 and db.stats().worker == "idle")
        _wait_for(lambda: db.stats().file_bytes < full.file_bytes // 4)
        assert dict(db.items()) == {key: "v" * 100 for key in keys[18_000:]}
        db.check()


def test_no_compaction_of_its_own_without_a_threshold(tmp_path: Path) -> None:
    with halodb.open(tmp_path / "s", compact_threshold=None, **SMALL) as db:
        _thinned(db, 10_000, 1_000)
        time.sleep(0.2)
        assert db.stats().compact_steps == 0
        assert db.stats().free_pages > 500


@pytest.mark.parametrize("bad", [0, -0.5, 1.5, "0.5", True, float("nan")])
def test_a_bad_threshold_is_refused(tmp_path: Path, bad: Any) -> None:
    with pytest.raises(halodb.InterfaceError, match="compact_threshold"):
        halodb.open(tmp_path / "s", compact_threshold=bad)
    assert not (tmp_path / "s").exists()


def test_compact_refuses_a_read_only_or_closed_store(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with halodb.open(path) as db:
        db["a"] = 1
    with halodb.open(path, readonly=True) as db, pytest.raises(halodb.ProgrammingError):
        db.compact()
    db = halodb.open(path)
    db.close()
    with pytest.raises(halodb.ProgrammingError):
        db.compact()


@pytest.mark.parametrize(("seed", "background"), [(0, False), (1, True), (2, False)])
def test_small_steps_with_writes_between_them_keep_every_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int, background: bool
) -> None:
    """Steps of eight pages (many steps, many sweeps), values inline and in overflow pages,
    writes and merges between the steps, ``check()`` after some of them."""
    monkeypatch.setattr(halodb.partition, "COMPACT_STEP", 8)
    rng = random.Random(seed)
    model: dict[str, str] = {}
    path = tmp_path / "s"
    options: dict[str, Any] = {**SMALL, "background": background, "compact_threshold": None}
    with halodb.open(path, **options) as db:

        def churn(count: int) -> None:
            for _ in range(count):
                key = f"k{rng.randrange(3000):05d}" * rng.choice((1, 1, 3))
                if rng.random() < 0.5:
                    value = rng.choice("xyz") * rng.choice((5, 50, 300, 1500, 3000))
                    db[key] = model[key] = value
                elif key in model:
                    del db[key], model[key]

        def between(done: int, total: int) -> None:
            churn(rng.randrange(20))
            if rng.random() < 0.2:
                db.flush()
            if rng.random() < 0.03:  # (check() reads every page: some of the states)
                db.check()

        for _ in range(3):
            churn(rng.randrange(300, 1000))
            db.flush()
            report = db.compact(between)
            db.check()
            assert report.steps > 2
            assert dict(db.items()) == model
            assert all(db[key] == value for key, value in list(model.items())[:100])
    with halodb.open(path, **options) as db:
        assert dict(db.items()) == model
        db.check()


def test_a_compaction_stopped_part_way_leaves_no_bloom_filter_to_rebuild(tmp_path: Path) -> None:
    """Steps save the bloom filter (which names the tree's transaction) only at the end; a
    clean close saves it if a compaction stopped part-way, so the next open uses it."""
    path = tmp_path / "s"
    with halodb.open(path, compact_threshold=None, background=False, **SMALL) as db:
        _thinned(db, 8000, 1_000)

        def stop(done: int, total: int) -> None:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            db.compact(stop)
    with halodb.open(path, **SMALL) as db:
        assert [p.bloom_rebuilds for p in db.stats().partitions] == [0, 0]
        db.check()

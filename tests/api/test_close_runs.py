"""A clean close saves the memtables in run files instead of merging them into the trees; the
next open reads them lazily, and its worker merges them (docs/design.md, "Close";
docs/format.md, "Run file")."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

import halodb
from halodb import format as fmt
from halodb.run import write_run
from halodb.vfs import FileSystem

OPTIONS: dict[str, Any] = {"partitions": 2, "page_size": 1024}


def _runs(path: Path) -> list[str]:
    return sorted(p.name for p in path.glob("*.run"))


def _files(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def _settled(db: halodb.Store, path: Path) -> None:
    """Wait for the worker to merge the runs (it starts at the open)."""
    deadline = time.monotonic() + 30
    while _runs(path) or any(p.frozen_entries for p in db.stats().partitions):
        assert time.monotonic() < deadline, "the worker did not merge the runs"
        time.sleep(0.01)


def test_a_clean_close_leaves_the_memtables_in_runs_not_in_the_trees(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with halodb.open(path, **OPTIONS) as db:
        db.update({f"k{i:04d}": i for i in range(500)})
        db.flush()
        trees = [p.tree_keys for p in db.stats().partitions]
        db.update({f"k{i:04d}": -i for i in range(0, 500, 3)})  # overwrites
        db.update({f"n{i:04d}": "new" for i in range(200)})
        for i in range(1, 500, 7):
            del db[f"k{i:04d}"]
        expected = dict(db.items())
    assert _runs(path) == ["p000.run", "p001.run"]
    with halodb.open(path, background=False) as db:
        stats = db.stats()
        assert [p.tree_keys for p in stats.partitions] == trees  # nothing was merged
        assert all(p.frozen_entries > 0 for p in stats.partitions)  # the runs, not decoded
        assert all(p.memtable_entries == 0 for p in stats.partitions)
        assert len(db) == len(expected)
        assert dict(db.items()) == expected
        assert all(db[k] == v for k, v in expected.items())
        assert "k0001" not in db and db.get("k0008") is None
        db.check()
        db.flush()  # merges the runs into the trees, and deletes them
        assert _runs(path) == []
        assert sum(p.tree_keys for p in db.stats().partitions) == len(expected)
        assert dict(db.items()) == expected
        db.check()


def test_the_worker_merges_the_runs_right_after_the_open(tmp_path: Path) -> None:
    """The next open's worker merges the runs at once (an ordered read over a run and a tree
    is slower than over the tree alone), while reads and writes go on and read right."""
    path = tmp_path / "s"
    with halodb.open(path, **OPTIONS) as db:
        db.update({i: str(i) for i in range(3000)})
    assert _runs(path) == ["p000.run", "p001.run"]
    with halodb.open(path) as db:
        assert db[10] == "10"
        db[3000] = "new"  # (no scan before the merge: nothing but the open starts it)
        _settled(db, path)
        assert sum(p.tree_keys for p in db.stats().partitions) == 3000
        assert [k for k, _ in db.range(100, 110)] == list(range(100, 110))
        assert [k for k, _ in db.range(2990, reverse=True)][:3] == [3000, 2999, 2998]
        assert dict(db.items()) == {**{i: str(i) for i in range(3000)}, 3000: "new"}
        db.check()


def test_without_a_worker_a_run_stays_until_the_memtable_fills(tmp_path: Path) -> None:
    """Opened with ``background=False`` (or read-only) nothing merges a run in the
    background: it stays, and the write that fills the memtable merges it first."""
    path = tmp_path / "s"
    options = {**OPTIONS, "memtable_size": 1 << 20}
    with halodb.open(path, **options) as db:
        db.update({i: str(i) for i in range(2000)})
    with halodb.open(path, background=False, **options) as db:
        assert all(db[i] == str(i) for i in range(2000))
        assert _runs(path) == ["p000.run", "p001.run"]
        for i in range(2000, 12000):
            db[i] = "w" * 200
        assert _runs(path) == []
        assert sum(p.tree_keys for p in db.stats().partitions) >= 2000
        assert dict(db.items()) == {i: str(i) if i < 2000 else "w" * 200 for i in range(12000)}
        db.check()


def test_ordered_reads_over_memtable_run_and_tree_read_right(tmp_path: Path) -> None:
    """A scan reads memtable, run and tree together a list at a time: every ordered read, in
    either direction, with or without a limit, sees the newest value of each key, deletes in
    the memtable over the run and in the run over the tree included."""
    path = tmp_path / "s"
    model: dict[int, str] = {}
    with halodb.open(path, **OPTIONS) as db:
        db.update({i: f"tree {i}" for i in range(0, 3000, 2)})
        db.flush()
        for i in range(0, 3000, 3):
            db[i] = f"run {i}"
        for i in range(0, 3000, 10):
            del db[i]
        model = {k: v for k, v in db.items() if isinstance(k, int)}
    with halodb.open(path, background=False) as db:
        for i in range(0, 3000, 7):
            db[i] = f"memtable {i}"
            model[i] = f"memtable {i}"
        for i in range(1, 3000, 11):
            db.pop(i, None)
            model.pop(i, None)
        for i in range(1000, 2000):  # a stretch of tombstones: chunks that hold no item
            db.pop(i, None)
            model.pop(i, None)
        want = sorted(model.items())
        assert list(db.items()) == want
        assert list(db.range(reverse=True)) == want[::-1]
        for start in (None, 5, 1000, 1500, 2999):
            for limit in (1, 7, 100, 5000):
                head = [kv for kv in want if start is None or kv[0] >= start][:limit]
                assert list(db.range(start, limit=limit)) == head
                tail = [kv for kv in want[::-1] if start is None or kv[0] < start][:limit]
                assert list(db.range(None, start, reverse=True, limit=limit)) == tail
        assert list(db.range(100, 200)) == [kv for kv in want if 100 <= kv[0] < 200]
        assert _runs(path) == ["p000.run", "p001.run"]
        db.flush()
        assert _runs(path) == []
        assert list(db.items()) == want


def test_writes_over_a_run_are_saved_with_it_at_the_next_close(tmp_path: Path) -> None:
    """Opened without a worker, the run stays; a close then writes one run of the newest of
    both, and deletes of keys in the run and in the tree stick."""
    path = tmp_path / "s"
    with halodb.open(path, **OPTIONS) as db:
        db.update({f"t{i}": "tree" for i in range(100)})
        db.flush()
        db.update({f"r{i}": "run" for i in range(100)})
    model = {**{f"t{i}": "tree" for i in range(100)}, **{f"r{i}": "run" for i in range(100)}}
    for round_ in range(3):
        with halodb.open(path, background=False) as db:
            for i in range(round_, 100, 4):
                db[f"r{i}"] = f"again {round_}"
                model[f"r{i}"] = f"again {round_}"
                del db[f"t{i}"]
                model.pop(f"t{i}", None)
            db[("round", round_)] = str(round_)
            model[("round", round_)] = str(round_)  # type: ignore[index]
        assert _runs(path) == ["p000.run", "p001.run"]
        with halodb.open(path, readonly=True) as db:
            assert dict(db.items()) == model
            assert len(db) == len(model)
            db.check()


def test_a_close_without_writes_keeps_the_runs_as_they_are(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with halodb.open(path, **OPTIONS) as db:
        db.update({i: i for i in range(300)})
    runs = {name: (path / name).read_bytes() for name in _runs(path)}
    with halodb.open(path, background=False) as db:
        assert db[7] == 7
    assert {name: (path / name).read_bytes() for name in _runs(path)} == runs


def test_a_read_only_open_reads_the_runs_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with halodb.open(path, **OPTIONS) as db:
        db.update({i: "x" * (i % 50) for i in range(1000)})
        del db[5]
    before = _files(path)
    with halodb.open(path, readonly=True) as db:
        assert len(db) == 999
        assert db[6] == "x" * 6 and 5 not in db
        assert [k for k, _ in db.range(10, 15)] == [10, 11, 12, 13, 14]
        db.check()
    assert _files(path) == before


def test_a_clear_saved_in_a_run_hides_the_tree(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with halodb.open(path, **OPTIONS) as db:
        db.update({i: i for i in range(400)})
        db.flush()
        db.clear()
        db["after"] = "the clear"
    with halodb.open(path, background=False) as db:
        assert dict(db.items()) == {"after": "the clear"}
        assert len(db) == 1
        db.check()
        db.flush()
        assert dict(db.items()) == {"after": "the clear"}
        assert sum(p.tree_keys for p in db.stats().partitions) == 1


def test_a_close_during_merges_gives_them_up_and_loses_nothing(tmp_path: Path) -> None:
    """Small memtables freeze again and again, so the worker is merging when the close comes:
    the close gives the merge up and saves its frozen memtable in the run instead."""
    path = tmp_path / "s"
    model: dict[int, str] = {}
    for round_ in range(4):
        with halodb.open(path, **OPTIONS, memtable_size=64 * 1024) as db:
            for i in range(3000):
                key = (i * 7919 + round_) % 5000
                db[key] = model[key] = f"{round_}:{i}:" + "v" * 40
    with halodb.open(path, readonly=True) as db:
        assert dict(db.items()) == model
        db.check()


def test_a_stale_run_is_ignored_and_deleted(tmp_path: Path) -> None:
    """A run whose merge is durable but whose deletion was lost (a power cut) comes back: the
    tree holds its writes, so it is ignored (and deleted by a writable open)."""
    path = tmp_path / "s"
    with halodb.open(path, partitions=1) as db:
        db.update({i: "old" for i in range(100)})
    old_run = (path / "p000.run").read_bytes()
    with halodb.open(path, partitions=1, background=False) as db:
        db.flush()  # merges the run (and deletes it)
        db.update({i: "new" for i in range(50)})
        db.flush()
    (path / "p000.run").write_bytes(old_run)
    expected = {i: "new" if i < 50 else "old" for i in range(100)}
    with halodb.open(path, readonly=True) as db:
        assert dict(db.items()) == expected
    assert (path / "p000.run").exists()
    with halodb.open(path) as db:
        assert dict(db.items()) == expected
    assert _runs(path) == []


def test_a_run_on_another_tree_is_refused(tmp_path: Path) -> None:
    """A run lies on the tree as it was at the close (``base_seq``): put beside another tree,
    it is refused, never mixed in."""
    path = tmp_path / "s"
    with halodb.open(path, partitions=1) as db:
        db["a"] = 1
        db.flush()
    write_run(
        FileSystem(),
        str(path / fmt.partition_file(0, "run")),
        0,
        {b"\x30b": b"\x01x"},
        cleared=False,
        base_seq=0,
        seq=99,
        count=2,
    )
    with pytest.raises(halodb.CorruptionError, match=r"p000\.run: run lies on a tree"):
        halodb.open(path)


def test_a_store_with_runs_copied_elsewhere_opens_there(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with halodb.open(path, **OPTIONS) as db:
        db.update({f"k{i}": i for i in range(100)})
    shutil.copytree(path, tmp_path / "copy")
    with halodb.open(tmp_path / "copy") as db:
        assert dict(db.items()) == {f"k{i}": i for i in range(100)}
        db.check()


def test_runs_do_not_grow_from_close_to_close(tmp_path: Path) -> None:
    """Sessions that each write too little to fill a memtable: each close folds its writes
    into the run, until the run would pass ``memtable_size``; that close merges instead."""
    path = tmp_path / "s"
    limit = 64 * 1024
    model: dict[int, str] = {}
    merged = False
    for session in range(12):
        with halodb.open(path, **OPTIONS, memtable_size=limit, background=False) as db:
            for i in range(150):
                key = session * 150 + i
                db[key] = model[key] = "v" * 100
        sizes = [p.stat().st_size for p in path.glob("*.run")]
        assert all(size < 2 * limit for size in sizes), sizes
        merged |= len(sizes) < 2
    assert merged, "no close ever merged: the runs only grew"
    with halodb.open(path, readonly=True) as db:
        assert dict(db.items()) == model
        db.check()


def test_a_directory_without_manifest_holding_a_run_is_not_recreated(tmp_path: Path) -> None:
    """A run file holds data: a directory that lost its manifest but has one is damage (never
    made a new store over it); a run's temporary file is an interrupted write's leftover."""
    path = tmp_path / "s"
    with halodb.open(path, partitions=1) as db:
        db["a"] = 1
    for name in (fmt.MANIFEST_NAME, "p000.bloom", "p000.tree", "p000.wal"):
        (path / name).unlink()
    with pytest.raises(halodb.CorruptionError, match=r"p000\.run"):
        halodb.open(path)
    (path / "p000.run").rename(path / "p000.run.tmp")
    with halodb.open(path, partitions=1) as db:  # only leftovers: the store is created
        assert len(db) == 0


class _InterruptOnce(FileSystem):
    """Raises KeyboardInterrupt at the first rename or unlink of a log once armed: a merge
    interrupted after its commit, before it lets go of the frozen memtable's log."""

    armed = False

    def _maybe(self, path: str) -> None:
        if self.armed and path.endswith((".wal", ".wal2")):
            self.armed = False
            raise KeyboardInterrupt

    def rename_open(self, handle: Any, dst: str) -> None:
        self._maybe(dst)
        super().rename_open(handle, dst)

    def unlink(self, path: str) -> None:
        self._maybe(path)
        super().unlink(path)


def test_a_close_after_a_flush_interrupted_past_its_commit_opens_again(tmp_path: Path) -> None:
    """The flush's tree holds everything, but its frozen memtable was never let go: the close
    has nothing newer than the tree to save, and the next open finds every write."""
    path = tmp_path / "s"
    fs = _InterruptOnce()
    db = halodb.open(path, partitions=1, background=False, filesystem=fs)
    db.update({i: str(i) for i in range(200)})
    fs.armed = True
    with pytest.raises(KeyboardInterrupt):
        db.flush()
    assert not fs.armed, "the interrupt never came"
    db.close()
    with halodb.open(path) as db:
        assert dict(db.items()) == {i: str(i) for i in range(200)}
        db.check()

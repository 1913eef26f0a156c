"""``halodb.introspect``: read-only views of a store's B+ trees (what ``halodb tree`` draws),
checked against what the public API says of the same trees (``Store.check()``, the keys)."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import pytest

import halodb
from halodb import introspect
from halodb.introspect import NodeView


def _store(path: Path, n: int) -> halodb.Store:
    db = halodb.open(path, partitions=1, page_size=1024)
    db.update({f"user:{i:05d}": {"i": i} for i in range(n)})
    db.flush()
    return db


def _leaves(view: NodeView) -> list[NodeView]:
    if view.leaf:
        return [view]
    return [leaf for c in view.children if isinstance(c, NodeView) for leaf in _leaves(c)]


def _files(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def test_an_empty_tree_has_no_top(tmp_path: Path) -> None:
    with halodb.open(tmp_path / "s", partitions=2) as db:
        assert [introspect.tree_top(db, i, 2) for i in range(2)] == [None, None]
        db["in the memtable"] = 1  # not in a tree until a flush
        assert [introspect.tree_top(db, i, 2) for i in range(2)] == [None, None]


def test_a_single_leaf_holds_every_key(tmp_path: Path) -> None:
    with _store(tmp_path / "s", 10) as db:
        top = introspect.tree_top(db, 0, 3)
        assert top is not None
        assert (top.leaf, top.size, top.children) == (True, 10, [])
        assert (top.first, top.last) == ("user:00000", "user:00009")
        assert db.check()[0].height == 1


def _levels(view: NodeView) -> list[list[NodeView]]:
    levels, level = [], [view]
    while level:
        levels.append(level)
        level = [c for node in level for c in node.children if isinstance(c, NodeView)]
    return levels


def test_the_whole_tree_read_matches_its_shape_and_keys(tmp_path: Path) -> None:
    with _store(tmp_path / "s", 3000) as db:
        (report,) = db.check()
        assert report.height == 3
        top = introspect.tree_top(db, 0, report.height, fanout=10**6)  # every node read
        assert top is not None and not top.leaf
        levels = _levels(top)
        assert [len(level) for level in levels] == report.nodes_per_level
        for level in levels[:-1]:
            assert all(len(node.children) == node.size + 1 for node in level)
        leaves = _leaves(top)
        assert leaves == levels[-1] and all(leaf.leaf for leaf in leaves)
        assert sum(leaf.size for leaf in leaves) == report.keys == 3000
        assert (leaves[0].first, leaves[-1].last) == ("user:00000", "user:02999")
        for left, right in itertools.pairwise(leaves):
            assert isinstance(left.last, str) and isinstance(right.first, str)
            assert left.last < right.first


def test_fanout_reads_the_first_children_and_the_last_and_counts_the_others(
    tmp_path: Path,
) -> None:
    with _store(tmp_path / "s", 1000) as db:
        assert db.check()[0].height == 2
        everything = introspect.tree_top(db, 0, 2, fanout=10**6)
        top = introspect.tree_top(db, 0, 2)
        assert top is not None and everything is not None
        n = len(everything.children)
        assert n > introspect.FANOUT
        shown = introspect.FANOUT - 1
        left_out = n - shown - 1
        assert top.children == [*everything.children[:shown], left_out, everything.children[-1]]
        assert introspect.tree_top(db, 0, 1) == NodeView(
            top.page, top.leaf, top.size, top.first, top.last, []
        )


def test_typed_keys_come_back_decoded(tmp_path: Path) -> None:
    with halodb.open(tmp_path / "s", partitions=1) as db:
        db.update({("order", 2024, i): i for i in range(5)})
        db[b"\xff"] = 0
        db.flush()
        top = introspect.tree_top(db, 0, 1)
        assert top is not None
        assert (top.first, top.last) == (b"\xff", ("order", 2024, 4))  # bytes sort before tuples


def test_level_fill_factors_average_to_the_trees(tmp_path: Path) -> None:
    with _store(tmp_path / "s", 3000) as db:
        (report,) = db.check()
        page_size = db.stats().page_size
        levels = introspect.level_fill_factors(report, page_size)
        assert len(levels) == report.height
        assert all(0 < f <= 1 for f in levels)
        nodes = report.nodes_per_level
        average = sum(f * n for f, n in zip(levels, nodes, strict=True)) / sum(nodes)
        assert average == pytest.approx(report.fill_factor(page_size))


def test_reading_the_top_changes_nothing_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _store(path, 3000).close()
    before = _files(path)
    with halodb.open(path, readonly=True) as db:
        assert introspect.tree_top(db, 0, 8) is not None
        assert len(db) == 3000
    assert _files(path) == before


def test_bad_arguments_and_a_closed_store_are_programming_errors(tmp_path: Path) -> None:
    db = _store(tmp_path / "s", 10)
    for partition, depth in ((1, 2), (-1, 2), (0, 0)):
        with pytest.raises(halodb.ProgrammingError):
            introspect.tree_top(db, partition, depth)
    with pytest.raises(halodb.ProgrammingError, match="no partition 1: the store has 1"):
        introspect.tree_top(db, 1, 2)
    db.close()
    with pytest.raises(halodb.ProgrammingError):
        introspect.tree_top(db, 0, 2)

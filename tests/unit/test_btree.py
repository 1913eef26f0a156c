"""The B+ tree through its own API: random changes against a dict, overflow values, clears,
shrinking, damage; the leaf layout cache."""

from __future__ import annotations

import random
from bisect import bisect_left
from pathlib import Path

import pytest

from halodb import btree as btree_module
from halodb import format as fmt
from halodb.btree import (
    BYTES_OBJECT,
    OVERFLOW_OBJECT,
    ROW_OVERHEAD,
    BTree,
    Internal,
    Leaf,
    limits,
)
from halodb.btree.node import decode
from halodb.errors import CorruptionError
from halodb.vfs import FileSystem
from support.stores import new_pager

PAGE = 1024
FS = FileSystem()


def _tree(tmp_path: Path, cache_pages: int = 64) -> BTree:
    return BTree(new_pager(tmp_path, cache_pages=cache_pages))


def _verify(
    tree: BTree, model: dict[bytes, bytes], rng: random.Random, gone: set[bytes] | None = None
) -> None:
    """The tree equals ``model`` by every read path; ``gone``: keys deleted at some point."""
    tree.check()
    # The row cache's byte count may overestimate (a leaf read from disk charges rows it
    # holds already), never underestimate.
    assert tree.rows_bytes >= _row_bytes(tree)
    for key, value in model.items():  # the row cache may miss, never be wrong
        assert tree.get_cached(key) in (None, value), key
    for key in sorted(gone or ())[:300]:
        if key not in model:
            assert tree.get_cached(key) is None, key
            assert tree.get(key) is None and not tree.contains(key), key
    items = sorted(model.items())
    keys = [k for k, _ in items]
    assert list(tree.iterate(None, None)) == items
    assert list(tree.iterate(None, None, reverse=True)) == items[::-1]
    assert tree.pager.meta.key_count == len(model)
    for _ in range(6):
        lo = rng.choice([None, _rand_key(rng), *keys[:1], *rng.sample(keys, min(2, len(keys)))])
        hi = rng.choice([None, _rand_key(rng), *rng.sample(keys, min(2, len(keys)))])
        a = 0 if lo is None else bisect_left(keys, lo)
        b = len(keys) if hi is None else bisect_left(keys, hi)
        want = items[a:b] if a < b else []
        assert list(tree.iterate(lo, hi)) == want, (lo, hi)
        assert list(tree.iterate(lo, hi, reverse=True)) == want[::-1], (lo, hi)
        limit = rng.choice([1, 7, 100, len(keys) + 1])
        for reverse, wanted in ((False, want), (True, want[::-1])):
            head = tree.head(lo, hi, reverse, limit)
            assert head == ([k for k, _ in wanted[:limit]], [v for _, v in wanted[:limit]])
    for key in rng.sample(keys, min(25, len(keys))):
        assert tree.get(key) == model[key]
        assert tree.contains(key)
    for _ in range(10):
        key = _rand_key(rng)
        assert tree.get(key) == model.get(key)
        assert tree.contains(key) == (key in model)


def _row_bytes(tree: BTree) -> int:
    """What the row cache's entries take: a bytes object per key and value (an overflow value
    is an ``Overflow`` named tuple and its three ints instead)."""
    assert ROW_OVERHEAD == 2 * BYTES_OBJECT
    return sum(
        len(k) + BYTES_OBJECT + (len(v) + BYTES_OBJECT if type(v) is bytes else OVERFLOW_OBJECT)
        for k, v in tree.rows.items()
    )


def _rand_key(rng: random.Random) -> bytes:
    if rng.random() < 0.8:
        return b"k%05d" % rng.randrange(4000)
    return bytes(rng.randrange(256) for _ in range(rng.randrange(1, limits(PAGE)[0] + 1)))


def _rand_value(rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.08:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(257, 4000)))  # overflow
    if r < 0.15:
        return b"v" * rng.randrange(200, 257)  # large but inline
    return b"v%d" % rng.randrange(10**9) * rng.randrange(1, 4)


@pytest.mark.parametrize("cache_pages", [16, 4096])
def test_btree_random_changes_against_a_dict(tmp_path: Path, cache_pages: int) -> None:
    rng = random.Random(cache_pages)
    tree = _tree(tmp_path, cache_pages)
    model: dict[bytes, bytes] = {}
    gone: set[bytes] = set()
    for round_no in range(45):
        seq = round_no + 1
        changes: dict[bytes, bytes | None] = {}
        size = rng.choice([1, 5, 40, 150, 400])
        delete_share = 0.1 if round_no < 10 else 0.35
        for _ in range(size):
            if model and rng.random() < delete_share:
                changes[rng.choice(list(model))] = None
            elif rng.random() < 0.05:
                changes[_rand_key(rng)] = None  # delete of an absent key
            else:
                changes[_rand_key(rng)] = _rand_value(rng)
        count = tree.apply(sorted(changes.items()), clear=False, flushed_seq=seq)
        for key, value in changes.items():
            if value is None:
                model.pop(key, None)
                gone.add(key)
            else:
                model[key] = value
        assert count == len(model)
        assert tree.pager.meta.flushed_seq == seq
        if cache_pages == 4096:  # every node in the cache: flushes account rows exactly
            assert tree.rows_bytes == _row_bytes(tree)
        _verify(tree, model, rng, gone)
    tree.pager.close()
    tree = _tree(tmp_path, cache_pages)
    _verify(tree, model, rng, gone)
    assert tree.pager.meta.height >= 2
    tree.pager.close()


@pytest.mark.parametrize("size", [0, 1, 256, 257, PAGE - 16, PAGE - 15, 5000, 3 * (PAGE - 16)])
def test_btree_value_sizes_inline_and_overflow(tmp_path: Path, size: int) -> None:
    tree = _tree(tmp_path)
    value = bytes(random.Random(size).randrange(256) for _ in range(size))
    changes = [(b"a", b"small"), (b"big", value), (b"z", b"small")]
    tree.apply(changes, clear=False, flushed_seq=1)
    report = tree.check()
    expected_pages = 0 if size <= limits(PAGE)[1] else -(-size // (PAGE - fmt.PAGE_HEADER.size))
    assert report.overflow_pages == expected_pages
    assert tree.get(b"big") == value
    tree.pager.close()
    tree = _tree(tmp_path)
    assert tree.get(b"big") == value
    assert dict(tree.iterate(None, None))[b"big"] == value
    # replacing and then deleting the value gives its overflow pages back
    tree.apply([(b"big", b"tiny")], clear=False, flushed_seq=2)
    assert tree.check().overflow_pages == 0 and tree.get(b"big") == b"tiny"
    tree.apply([(b"big", None)], clear=False, flushed_seq=3)
    report = tree.check()
    assert report.keys == 2 and tree.get(b"big") is None
    tree.pager.close()


def test_btree_damaged_overflow_page_is_detected(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    tree.apply([(b"big", b"x" * 3000)], clear=False, flushed_seq=1)
    tree.pager.close()
    path = tmp_path / "p000.tree"
    data = bytearray(path.read_bytes())
    data[3 * PAGE + 100] ^= 1  # the overflow chain's second page
    path.write_bytes(bytes(data))
    tree = _tree(tmp_path)
    with pytest.raises(CorruptionError):
        tree.get(b"big")
    with pytest.raises(CorruptionError):
        tree.check()
    tree.pager.close()


def test_btree_clear(tmp_path: Path) -> None:
    rng = random.Random(5)
    tree = _tree(tmp_path)
    old = {b"k%05d" % i: _rand_value(rng) for i in range(800)}
    tree.apply(sorted(old.items()), clear=False, flushed_seq=1)
    assert tree.check().keys == 800
    new = {b"n%03d" % i: b"x" * 300 for i in range(5)}
    new_items: list[tuple[bytes, bytes | None]] = sorted(new.items())
    assert tree.apply([*new_items, (b"zz", None)], clear=True, flushed_seq=2) == 5
    _verify(tree, new, rng, set(old))
    assert tree.apply([], clear=True, flushed_seq=3) == 0
    report = tree.check()
    assert report.keys == 0 and tree.pager.meta.height == 0
    assert list(tree.iterate(None, None)) == []
    tree.pager.close()
    tree = _tree(tmp_path)
    assert list(tree.iterate(None, None)) == [] and tree.get(b"n000") is None
    tree.pager.close()


def test_btree_delete_down_to_one_leaf(tmp_path: Path) -> None:
    """Deleting all but a leaf's worth of keys leaves a root with one child, which the tree
    must shrink away (or at least keep readable)."""
    tree = _tree(tmp_path)
    model = {b"k%04d" % i: b"x" * 50 for i in range(200)}
    tree.apply(sorted(model.items()), clear=False, flushed_seq=1)
    assert tree.pager.meta.height == 2
    doomed = sorted(model)[3:]
    tree.apply([(k, None) for k in doomed], clear=False, flushed_seq=2)
    for key in doomed:
        del model[key]
    _verify(tree, model, random.Random(0))
    tree.pager.close()


def test_btree_internal_node_left_with_one_child(tmp_path: Path) -> None:
    """Deleting every leaf but one under an internal node (height 3) must keep the tree
    readable: each node it writes must be one it can read back."""
    tree = _tree(tmp_path)
    model = {b"k%04d" % i: b"x" * 50 for i in range(3000)}
    tree.apply(sorted(model.items()), clear=False, flushed_seq=1)
    assert tree.pager.meta.height == 3
    # keep one key in each thousand: every level-1 node keeps a single leaf
    doomed = [k for i, k in enumerate(sorted(model)) if i % 1000 != 500]
    tree.apply([(k, None) for k in doomed], clear=False, flushed_seq=2)
    for key in doomed:
        del model[key]
    tree.pager.close()
    tree = _tree(tmp_path)
    _verify(tree, model, random.Random(0))
    tree.pager.close()


@pytest.mark.parametrize("reverse", [False, True])
def test_a_walk_stays_on_the_tree_it_started_on_when_a_merge_commits(
    tmp_path: Path, reverse: bool
) -> None:
    """A merge commits without the partition's lock, so a reader's walk may see the tree's
    meta change under it (here: the tree grows a level). The pages of the tree it started on
    stay as they were until the reader lets the lock go, and the walk must finish on them."""
    tree = _tree(tmp_path)
    model = {b"k%04d" % i: b"x" * 50 for i in range(200)}
    tree.apply(sorted(model.items()), clear=False, flushed_seq=1)
    assert tree.pager.meta.height == 2
    walk = tree.leaves(None, None, reverse)  # (each leaf's keys ascending)
    seen = sorted(next(walk).keys, reverse=reverse)
    more = {b"m%04d" % i: b"y" * 50 for i in range(3000)}
    tree.apply(sorted(more.items()), clear=False, flushed_seq=2)
    assert tree.pager.meta.height == 3
    for leaf in walk:
        seen += sorted(leaf.keys, reverse=reverse)
    assert seen == sorted(model, reverse=reverse)
    tree.pager.close()


# -- leaf layouts ------------------------------------------------------------------------------


def _leaf_pages(tree: BTree) -> list[tuple[int, bytes]]:
    """Every leaf of ``tree`` as (page number, raw page), read from disk."""
    pager = tree.pager
    out: list[tuple[int, bytes]] = []

    def walk(page_no: int, crc: int, level: int) -> None:
        page = pager.read_page(page_no, crc, "node")
        if level == 0:
            out.append((page_no, page))
            return
        node = decode(tree.where, page_no, page, level)
        assert isinstance(node, Internal)
        for child, child_crc in zip(node.children, node.crcs, strict=True):
            walk(child, child_crc, level - 1)

    meta = pager.meta
    walk(meta.root, meta.root_crc, meta.height - 1)
    return out


def _fixed_tree(tmp_path: Path, count: int = 2000) -> BTree:
    tree = _tree(tmp_path)
    changes = [(b"@%015d" % i, b"\x00" + b"v" * 40) for i in range(count)]
    tree.apply(changes, clear=False, flushed_seq=1)
    return tree


def test_a_leaf_layout_met_twice_is_remembered_and_decodes_the_same(tmp_path: Path) -> None:
    btree_module.LAYOUTS.clear()
    tree = _fixed_tree(tmp_path)
    pages = _leaf_pages(tree)
    assert len(pages) > 10
    first = [decode(tree.where, n, page, 0) for n, page in pages]  # the slicing loop, then Structs
    assert any(layout is not None for layout in btree_module.LAYOUTS.values())
    again = [decode(tree.where, n, page, 0) for n, page in pages]  # every layout remembered now
    for a, b in zip(first, again, strict=True):
        assert isinstance(a, Leaf) and isinstance(b, Leaf)
        assert (a.keys, a.values, a.big) == (b.keys, b.values, b.big)
    keys = [key for leaf in again for key in leaf.keys]
    assert keys == [b"@%015d" % i for i in range(2000)]
    tree.pager.close()


def test_damage_in_a_leaf_of_a_remembered_layout_is_still_found(tmp_path: Path) -> None:
    btree_module.LAYOUTS.clear()
    tree = _fixed_tree(tmp_path)
    page_no, page = _leaf_pages(tree)[1]
    for _ in range(2):
        decode(tree.where, page_no, page, 0)
    _, _, _, n, _, _ = fmt.PAGE_HEADER.unpack_from(page)
    head = fmt.PAGE_HEADER.size
    assert btree_module.LAYOUTS[page[head + n : head + 5 * n]] is not None
    kbase = head + 5 * n
    swapped = page[:kbase] + page[kbase + 16 : kbase + 32] + page[kbase : kbase + 16]
    swapped += page[kbase + 32 :]  # the first two keys (16 bytes each) in the wrong order
    with pytest.raises(CorruptionError, match="keys out of order"):
        decode(tree.where, page_no, swapped, 0)
    flags = bytearray(page)
    flags[head] = 7
    with pytest.raises(CorruptionError, match="unknown value flag 7"):
        decode(tree.where, page_no, bytes(flags), 0)
    with pytest.raises(CorruptionError, match="malformed node"):
        decode(tree.where, page_no, page[: kbase + 100], 0)  # shorter than the layout
    tree.pager.close()


def test_leaves_of_varied_sizes_keep_the_layout_cache_bounded(tmp_path: Path) -> None:
    btree_module.LAYOUTS.clear()
    tree = _tree(tmp_path)
    rng = random.Random(5)
    changes = sorted(
        {_rand_key(rng): b"\x00" + b"v" * rng.randrange(200) for _ in range(20_000)}.items()
    )
    tree.apply(changes, clear=False, flushed_seq=1)
    pages = _leaf_pages(tree)
    assert len(pages) > btree_module.LAYOUTS_MAX
    for n, page in pages:
        decode(tree.where, n, page, 0)
    assert 0 < len(btree_module.LAYOUTS) <= btree_module.LAYOUTS_MAX
    tree.pager.close()

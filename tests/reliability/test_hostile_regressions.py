"""Regressions of the tree-file defects the hostile suite found (``test_hostile.py``), each
pinned where the hostile cases do not reach it on their own: the node cache used at another
level, impossible meta fields, looping overflow and free-list chains in files large enough that
a bound on the page count alone would not stop them, a subtree reached twice on every level,
pages freed twice, and ``check()`` on pages it cannot account for.

Whatever could allocate without bound or run for long when the fix regresses runs in a forked
child under the hostile suite's address-space limit and timeout.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_hostile import (
    BUDGET,
    PAGE,
    Template,
    TreeImage,
    _full_read,
    build_template,
    force_crc,
    internal_page,
    ordered,
    run_isolated,
)

import halodb
from halodb.btree import BTree, Internal, Leaf, Overflow
from halodb.pager import MAX_COUNTER, META_PAGES, Pager, new_tree_file
from halodb.vfs import FileSystem

FS = FileSystem()
BIG = b"\x01big"
"""The key of the value kept in overflow pages (5000 bytes: five pages)."""


def _keys(n: int) -> list[bytes]:
    return [b"\x30k%05d" % i for i in range(n)]


def _tree_file(tmp_path: Path, n: int = 300, *, big: bool = False, rewrite: bool = False) -> str:
    """A tree file of ``n`` keys (height 2 from about 60 keys on, with 1 KiB pages), with a
    value in overflow pages if ``big``, and a free list if ``rewrite`` (a second commit)."""
    path = str(tmp_path / "p000.tree")
    FS.write_new(path, new_tree_file(0, PAGE))
    pager = Pager(FS, path, 0, PAGE, 64, False)
    changes = [(k, b"v" * (i % 50 + 1)) for i, k in enumerate(_keys(n))]
    if big:
        changes.insert(0, (BIG, b"B" * 5000))
    BTree(pager).apply(changes, clear=False, flushed_seq=1)
    if rewrite:
        BTree(pager).apply(changes[::7], clear=False, flushed_seq=2)
    pager.close()
    return path


def _open(path: str) -> BTree:
    return BTree(Pager(FS, path, 0, PAGE, 256, False))


def _edit(path: str, **fields: int) -> TreeImage:
    """Rewrite fields of the current meta page (its checksum recomputed)."""
    img = TreeImage(Path(path).read_bytes())
    img.write_meta(**fields)
    Path(path).write_bytes(bytes(img.data))
    return img


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    """The hostile suite's template store."""
    return build_template(tmp_path_factory.mktemp("regressions") / "template")


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """A directory in memory (``/dev/shm``) where there is one: sparse files cost nothing."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="halodb-regressions-", dir=shm))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- 1. the node cache and the level ------------------------------------------------------------


def test_a_cached_leaf_where_an_internal_node_belongs_is_damage(tmp_path: Path) -> None:
    tree = _open(_tree_file(tmp_path))
    meta = tree.pager.meta
    assert meta.height == 2
    keys = _keys(300)
    leaf = tree.leaf_for(keys[0])
    assert isinstance(leaf, Leaf)
    tree.pager.cache[meta.root] = leaf  # as if the root's page had been reached as a leaf
    with pytest.raises(halodb.CorruptionError, match="level 0 where level 1 belongs"):
        tree.get(keys[-1])
    with pytest.raises(halodb.CorruptionError, match="level 0 where level 1 belongs"):
        list(tree.iterate(None, None))
    with pytest.raises(halodb.CorruptionError, match="level 0 where level 1 belongs"):
        tree.head(None, None, False, 1000)
    with pytest.raises(halodb.CorruptionError, match="level 0 where level 1 belongs"):
        tree.apply([(keys[5], b"x")], clear=False, flushed_seq=2)
    tree.pager.close()


def test_a_cached_internal_node_where_a_leaf_belongs_is_damage(tmp_path: Path) -> None:
    tree = _open(_tree_file(tmp_path))
    meta = tree.pager.meta
    keys = _keys(300)
    root = tree.node(meta.root, meta.root_crc, 1)
    assert isinstance(root, Internal) and root.level == 1
    tree.leaf_for(keys[-1])
    tree.pager.cache[root.children[-1]] = root  # a cycle: the root is its own last child
    with pytest.raises(halodb.CorruptionError, match="level 1 where level 0 belongs"):
        tree.get(keys[-1])
    tree.rows, tree.rows_bytes = {}, 0  # (a row-cache hit answers without a descent)
    with pytest.raises(halodb.CorruptionError, match="level 1 where level 0 belongs"):
        tree.contains(keys[-1])
    with pytest.raises(halodb.CorruptionError, match="level 1 where level 0 belongs"):
        list(tree.iterate(None, None, reverse=True))
    with pytest.raises(halodb.CorruptionError, match="level 1 where level 0 belongs"):
        tree.head(None, None, True, 1000)
    tree.get(keys[0])  # the other leaves are fine
    tree.pager.close()


def _doubled(levels: int) -> Any:
    """Single-key internal pages stacked on the root up to ``levels`` levels, each naming the
    page below it as both its children: 2^(levels - 2) paths down to every leaf."""

    def edit(path: Path, tpl: Template) -> None:
        img = TreeImage((path / "p000.tree").read_bytes())
        below, crc = img.meta["root"], img.meta["root_crc"]
        for level in range(img.meta["height"], levels):
            page = img.append(internal_page(level, [(below, crc), (below, crc)], [b"\x30zzz"]))
            below, crc = page, img.seal(page)
        img.meta.update(root=below, root_crc=crc, height=levels, page_count=img.pages())
        img.write_meta()
        (path / "p000.tree").write_bytes(bytes(img.data))

    return edit


# -- hostile stores in a forked child ----------------------------------------------------------


def _verdict(tpl: Template, tmp_path: Path, edit: Any) -> tuple[str, str]:
    store = tmp_path / "store"
    store.mkdir()
    for name, data in tpl.files.items():
        (store / name).write_bytes(data)
    edit(store, tpl)
    verdict, detail, _ = run_isolated(_full_read, str(store), [ordered(tpl.state())])
    shutil.rmtree(store)
    return verdict, detail


def test_a_subtree_reached_twice_on_every_level_is_found_at_once(
    template: Template,
    tmp_path: Path,
) -> None:
    """64 levels whose pages each name the page below twice: without the check that every leaf
    follows the previous one, a scan would visit the leaves 2^62 times."""
    verdict, detail = _verdict(template, tmp_path, _doubled(64))
    assert verdict == "detected", detail
    assert "out of order with the previous leaf" in detail


def _looping_overflow(length: int, pages_in_use: int) -> Any:
    """The big value's overflow chain goes back to its first page after its second one, and the
    file is grown (sparse) to ``pages_in_use`` pages, all counted in use: a bound on the pages
    a value may need does not stop the loop then, only the check for a page met twice does."""

    def edit(path: Path, tpl: Template) -> None:
        img = TreeImage((path / "p000.tree").read_bytes())
        page, at = img.overflow_ref()
        img.set_u32(page, at + 8, length)
        img.reseal()
        first = img.u32(page, at)
        second = img.u32(first, 8)
        target = 0x5EEDC0DE
        img.set_u32(second, 8, first)
        img.set_u32(second, 12, target)
        img.set_u32(first, 12, img.seal(second))
        force_crc(img.data, first, PAGE - 4, target)
        img.meta["page_count"] = pages_in_use
        img.reseal(frozenset({first, second}))
        (path / "p000.tree").write_bytes(bytes(img.data))
        os.truncate(path / "p000.tree", pages_in_use * PAGE)

    return edit


def test_a_looping_overflow_chain_in_a_large_file_is_found_at_once(
    template: Template,
    tmp_path: Path,
) -> None:
    """2^31 bytes claimed: 2.1 million pages, fewer than the 2^24 in use; following the loop
    that long would read 2 GiB."""
    verdict, detail = _verdict(template, tmp_path, _looping_overflow(1 << 31, 1 << 24))
    assert verdict == "detected", detail
    assert "overflow chain loops" in detail


def test_releasing_a_looping_overflow_chain_is_found_at_once(
    template: Template,
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    for name, data in template.files.items():
        (store / name).write_bytes(data)
    _looping_overflow(1 << 31, 1 << 24)(store, template)
    tree = BTree(Pager(FS, str(store / "p000.tree"), 0, PAGE, 64, True))
    refs = [
        v for leaf in tree.leaves(None, None, False) for v in leaf.values if type(v) is Overflow
    ]
    assert len(refs) == 1
    ref = refs[0]
    assert type(ref) is Overflow and ref.length == 1 << 31

    def release() -> tuple[str, str]:
        tree.pager.begin()
        try:
            tree.release_overflow(ref)
        except halodb.CorruptionError as exc:
            return "detected", str(exc)
        finally:
            tree.pager.abort()
        return "ok", "released"

    verdict, detail, _ = run_isolated(release)
    tree.pager.close()
    assert verdict == "detected", detail
    assert "overflow chain loops" in detail


def test_an_overflow_value_longer_than_the_file_is_refused_before_reading(tmp_path: Path) -> None:
    tree = _open(_tree_file(tmp_path, big=True))
    leaf = tree.leaf_for(BIG)
    assert leaf is not None
    ref = leaf.values[leaf.keys.index(BIG)]
    assert type(ref) is Overflow and tree.read_overflow(ref) == b"B" * 5000
    pages = tree.pager.next_page - META_PAGES
    too_long = Overflow(ref.page, ref.crc, (pages + 1) * (PAGE - 16))
    with pytest.raises(halodb.CorruptionError, match="needs"):
        tree.read_overflow(too_long)
    tree.pager.begin()
    with pytest.raises(halodb.CorruptionError, match="needs"):
        tree.release_overflow(too_long)
    tree.pager.abort()
    tree.pager.close()


# -- 3. and 4. meta fields ---------------------------------------------------------------------


def _most_keys(img: TreeImage) -> int:
    """The bound of format.md ("Choosing the meta page") on ``key_count``."""
    meta = img.meta
    per_free_list_page = (PAGE - 16) // 4
    free_list_pages = -(-meta["free_count"] // per_free_list_page)
    leaf_pages = (
        meta["page_count"] - 2 - meta["free_count"] - free_list_pages - (meta["height"] - 1)
    )
    return leaf_pages * min((PAGE - 16) // 5, 0xFFFF)


def test_key_count_is_bounded_by_what_the_pages_can_hold(tmp_path: Path) -> None:
    path = _tree_file(tmp_path, rewrite=True)
    img = TreeImage(Path(path).read_bytes())
    assert img.meta["free_count"] and img.meta["key_count"] == 300
    most = _most_keys(img)
    _edit(path, key_count=most)
    _open(path).pager.close()  # (check() would find the count wrong, but it is possible)
    for impossible in (most + 1, 1 << 31, (1 << 64) - 1, 0):
        _edit(path, key_count=impossible)
        with pytest.raises(halodb.CorruptionError, match="keys in a tree of height"):
            _open(path)


def test_an_empty_tree_holds_no_key(tmp_path: Path) -> None:
    path = str(tmp_path / "p000.tree")
    FS.write_new(path, new_tree_file(0, PAGE))
    _edit(path, key_count=1)
    with pytest.raises(halodb.CorruptionError, match="1 keys in a tree of height 0"):
        _open(path)


def test_free_count_and_height_must_fit_in_the_pages(tmp_path: Path) -> None:
    path = _tree_file(tmp_path, rewrite=True)
    img = TreeImage(Path(path).read_bytes())
    meta = dict(img.meta)
    room = meta["page_count"] - 2 - meta["height"]  # free pages and free-list pages
    _edit(path, free_count=room)  # room - 1 free pages need one free-list page: too many
    with pytest.raises(halodb.CorruptionError, match="impossible free list"):
        _open(path)
    _edit(path, free_count=meta["free_count"], height=meta["page_count"] - 1)
    with pytest.raises(halodb.CorruptionError, match="impossible root"):
        _open(path)


@pytest.mark.parametrize("field", ["txn", "flushed_seq"])
def test_txn_and_flushed_seq_stay_below_2_62(tmp_path: Path, field: str) -> None:
    path = _tree_file(tmp_path)
    _edit(path, **{field: MAX_COUNTER - 2})
    _open(path).pager.close()
    for impossible in (MAX_COUNTER, (1 << 64) - 1):
        _edit(path, **{field: impossible})
        with pytest.raises(halodb.CorruptionError, match=r"impossible txn .* or flushed_seq"):
            _open(path)


def test_a_commit_refuses_what_the_next_open_would_refuse(tmp_path: Path) -> None:
    path = _tree_file(tmp_path)
    _edit(path, txn=MAX_COUNTER - 1)
    tree = _open(path)
    before = Path(path).read_bytes()
    with pytest.raises(halodb.CorruptionError, match="impossible"):
        tree.apply([(b"\x30new", b"x")], clear=False, flushed_seq=2)
    tree.pager.close()
    assert Path(path).read_bytes() == before  # refused before anything was written
    _edit(path, txn=7)
    tree = _open(path)
    with pytest.raises(halodb.CorruptionError, match="impossible"):
        tree.apply([(b"\x30new", b"x")], clear=False, flushed_seq=MAX_COUNTER)
    tree.apply([(b"\x30new", b"x")], clear=False, flushed_seq=MAX_COUNTER - 1)  # the largest
    tree.pager.close()
    tree = _open(path)
    assert tree.get(b"\x30new") == b"x"
    assert tree.pager.meta.flushed_seq == MAX_COUNTER - 1
    tree.pager.close()


def test_a_page_freed_twice_is_refused_at_commit(tmp_path: Path) -> None:
    path = _tree_file(tmp_path)
    pager = Pager(FS, path, 0, PAGE, 64, False)
    before = Path(path).read_bytes()
    meta = pager.meta
    pager.begin()
    pager.release(meta.root)
    pager.release(meta.root)
    with pytest.raises(halodb.CorruptionError, match="freed twice"):
        pager.commit(
            root=meta.root,
            root_crc=meta.root_crc,
            height=meta.height,
            flushed_seq=meta.flushed_seq,
            key_count=meta.key_count,
        )
    pager.abort()
    assert pager.meta == meta
    pager.close()
    assert Path(path).read_bytes() == before


# -- 6. the free list --------------------------------------------------------------------------


def test_a_free_list_longer_than_its_count_stops_at_once(tmp_path: Path) -> None:
    """A free-list chain of distinct pages is read only until it holds more than
    ``free_count`` pages."""
    path = _tree_file(tmp_path, rewrite=True)
    img = TreeImage(Path(path).read_bytes())
    count = img.meta["free_count"]
    _edit(path, free_count=count - 1)
    with pytest.raises(halodb.CorruptionError, match=f"more than the {count - 1} pages"):
        _open(path)


# -- 7. check() on a huge page count -----------------------------------------------------------


def test_check_names_the_first_page_it_cannot_account_for(tmp_path: Path) -> None:
    path = _tree_file(tmp_path, rewrite=True)
    img = TreeImage(Path(path).read_bytes())
    head = img.meta["free_head"]
    n = img.u16(head, 6)
    listed = [img.u32(head, 16 + 4 * i) for i in range(n)]
    dropped = listed[-1]  # no longer listed: neither used nor free
    img.set_u16(head, 6, n - 1)
    img.set_u32(head, 16 + 4 * (n - 1), 0)
    img.meta["free_count"] -= 1
    img.reseal()
    Path(path).write_bytes(bytes(img.data))
    tree = _open(path)
    with pytest.raises(
        halodb.CorruptionError, match=rf": 1 pages are neither used nor free \(first: {dropped}\)"
    ):
        tree.check()
    tree.pager.close()
    # and pages at the end of the file, counted in use and never claimed
    end = img.pages()
    Path(path).write_bytes(bytes(img.data) + bytes(3 * PAGE))
    _edit(path, page_count=end + 3)
    tree = _open(path)
    with pytest.raises(
        halodb.CorruptionError, match=rf": 4 pages are neither used nor free \(first: {dropped}\)"
    ):
        tree.check()
    tree.pager.close()


def test_check_of_a_2_tib_page_count_counts_without_listing(scratch: Path) -> None:
    path = _tree_file(scratch)
    end = TreeImage(Path(path).read_bytes()).pages()
    _edit(path, page_count=1 << 31)
    os.truncate(path, (1 << 31) * PAGE)

    def check() -> tuple[str, str]:
        tree = _open(path)
        try:
            tree.check()
        except halodb.CorruptionError as exc:
            return "detected", str(exc)
        finally:
            tree.pager.close()
        return "ok", "clean"

    verdict, detail, seconds = run_isolated(check)
    assert verdict == "detected", detail
    assert f"{(1 << 31) - end} pages are neither used nor free (first: {end})" in detail
    assert seconds < BUDGET


def test_every_valid_tree_still_checks_clean(tmp_path: Path) -> None:
    """The new bounds refuse nothing a real tree holds: trees of every height up to 3, with and
    without free pages and overflow values, open, read back and check clean."""
    for n, big, rewrite in itertools.product((0, 1, 60, 3000), (False, True), (False, True)):
        where = tmp_path / f"{n}-{big}-{rewrite}"
        where.mkdir()
        tree = _open(_tree_file(where, n, big=big, rewrite=rewrite))
        report = tree.check()
        assert report.keys == n + big == tree.pager.meta.key_count
        assert [k for k, _ in tree.iterate(None, None)] == sorted([*_keys(n), *[BIG] * big])
        tree.pager.close()

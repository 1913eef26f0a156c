"""The pager through its own API: pages, meta pages and their fallback, the free list, damage."""

from __future__ import annotations

from pathlib import Path

import pytest

from halodb import format as fmt
from halodb.errors import CorruptionError
from halodb.pager import Pager, new_tree_file
from halodb.vfs import FileSystem
from support.stores import new_pager

PAGE = 1024
FS = FileSystem()


def _body(tag: int, fill: int = 100) -> bytes:
    return fmt.PAGE_HEADER.pack(0, fmt.PAGE_OVERFLOW, 0, fill, 0, 0)[4:] + bytes([tag]) * fill


def _committed(pager: Pager, count: int, modulo: int | None = None) -> list[int]:
    """``count`` new pages written (a page's body from its number, ``% modulo``) and committed
    as transaction 1 of an empty tree; their numbers."""
    pages = [pager.allocate() for _ in range(count)]
    for p in pages:
        pager.write_page(p, _body(p if modulo is None else p % modulo))
    pager.commit(root=0, root_crc=0, height=0, flushed_seq=1, key_count=0)
    return pages


def test_pager_new_file_opens_empty(tmp_path: Path) -> None:
    pager = new_pager(tmp_path)
    meta = pager.meta
    assert (meta.height, meta.root, meta.page_count, meta.key_count, meta.free_count) == (
        0,
        0,
        2,
        0,
        0,
    )
    assert meta.txn == 1 and pager.free == []
    assert (tmp_path / "p000.tree").stat().st_size == 2 * PAGE
    pager.close()
    pager.close()  # idempotent


def test_pager_allocate_write_commit_reopen(tmp_path: Path) -> None:
    pager = new_pager(tmp_path)
    pages = [pager.allocate() for _ in range(3)]
    assert pages == [2, 3, 4]
    crcs = [pager.write_page(p, _body(p)) for p in pages]
    pager.commit(root=3, root_crc=crcs[1], height=1, flushed_seq=42, key_count=7)
    assert pager.meta.txn == 2
    pager.close()

    pager = new_pager(tmp_path)
    meta = pager.meta
    assert (meta.txn, meta.root, meta.root_crc, meta.height) == (2, 3, crcs[1], 1)
    assert (meta.flushed_seq, meta.key_count, meta.page_count) == (42, 7, 5)
    for page_no, crc in zip(pages, crcs, strict=True):
        page = pager.read_page(page_no, crc, "test")
        assert page[4:] == _body(page_no) + bytes(PAGE - 4 - len(_body(page_no)))
    with pytest.raises(CorruptionError, match="not the version"):
        pager.read_page(2, crcs[0] ^ 1, "test")
    for outside in (0, 1, 5, 10**6):
        with pytest.raises(CorruptionError, match="outside"):
            pager.read_page(outside, None, "test")
    pager.close()


def test_pager_page_written_at_the_wrong_place_is_detected(tmp_path: Path) -> None:
    pager = new_pager(tmp_path)
    for page_no in (pager.allocate(), pager.allocate()):
        pager.write_page(page_no, _body(page_no))
    pager.commit(root=0, root_crc=0, height=0, flushed_seq=1, key_count=0)
    pager.close()
    path = tmp_path / "p000.tree"
    data = bytearray(path.read_bytes())
    data[3 * PAGE : 4 * PAGE] = data[2 * PAGE : 3 * PAGE]
    path.write_bytes(bytes(data))
    pager = new_pager(tmp_path)
    pager.read_page(2, None, "test")
    with pytest.raises(CorruptionError, match="checksum"):
        pager.read_page(3, None, "test")
    pager.close()


def test_pager_freed_pages_are_reused_only_from_the_next_txn(tmp_path: Path) -> None:
    pager = new_pager(tmp_path)
    first = _committed(pager, 10)

    for p in first[:6]:
        pager.release(p)
    during = [pager.allocate() for _ in range(4)]
    assert not set(during) & set(first), "a page freed by this txn was reused by it"
    for p in during:
        pager.write_page(p, _body(p))
    pager.commit(root=0, root_crc=0, height=0, flushed_seq=2, key_count=0)
    free_after = set(pager.free)
    assert set(first[:6]) <= free_after

    pager.close()
    pager = new_pager(tmp_path)
    assert set(pager.free) == free_after
    assert pager.meta.free_count == len(free_after)
    reused = {pager.allocate() for _ in range(len(free_after))}
    assert reused == free_after
    assert pager.allocate() == pager.meta.page_count  # then the file grows
    pager.close()


def test_pager_free_list_spanning_several_pages(tmp_path: Path) -> None:
    pager = new_pager(tmp_path)
    pages = _committed(pager, 700, 256)
    for p in pages[:-1]:  # (the last page stays in use: free pages at the end would be cut)
        pager.release(p)
    pager.commit(root=0, root_crc=0, height=0, flushed_seq=2, key_count=0)
    pager.commit(root=0, root_crc=0, height=0, flushed_seq=3, key_count=0)
    pager.close()
    pager = new_pager(tmp_path)
    # every page but the meta pages, the last one and the free-list pages themselves is free
    assert len(pager.freelist_pages) >= 3
    assert pager.meta.page_count == pages[-1] + 1
    assert sorted(pager.free + pager.freelist_pages) == list(range(2, pages[-1]))
    pager.close()


def _two_commits(tmp_path: Path) -> tuple[int, int]:
    pager = new_pager(tmp_path)
    a = pager.allocate()
    crc_a = pager.write_page(a, _body(1))
    pager.commit(root=a, root_crc=crc_a, height=1, flushed_seq=10, key_count=1)
    pager.release(a)
    b = pager.allocate()
    crc_b = pager.write_page(b, _body(2))
    pager.commit(root=b, root_crc=crc_b, height=1, flushed_seq=20, key_count=2)
    assert pager.meta.txn == 3
    pager.close()
    return a, b


@pytest.mark.parametrize("tear", ["zero-tail", "half-written", "zeroed", "bit-flip", "cut-file"])
def test_pager_meta_fallback_when_the_newest_meta_page_is_torn(tmp_path: Path, tear: str) -> None:
    a, _ = _two_commits(tmp_path)
    path = tmp_path / "p000.tree"
    data = bytearray(path.read_bytes())
    newest = 3 % 2
    start = newest * PAGE
    if tear == "zero-tail":
        data[start + 40 : start + PAGE] = bytes(PAGE - 40)
    elif tear == "half-written":  # the old meta page of that slot, half overwritten
        data[start + 36 : start + PAGE] = new_tree_file(0, PAGE)[start + 36 : start + PAGE]
    elif tear == "zeroed":
        data[start : start + PAGE] = bytes(PAGE)
    elif tear == "bit-flip":
        data[start + 30] ^= 0x04
    path.write_bytes(bytes(data))
    if tear == "cut-file":
        # the newest meta names more pages than the file holds: that is damage, not a tear
        with path.open("r+b") as handle:
            handle.truncate(3 * PAGE)
        with pytest.raises(CorruptionError):
            new_pager(tmp_path)
        return
    pager = new_pager(tmp_path)
    assert (pager.meta.txn, pager.meta.root, pager.meta.flushed_seq) == (2, a, 10)
    assert pager.read_page(a, pager.meta.root_crc, "test")[4:].startswith(_body(1))
    pager.close()


def test_pager_both_meta_pages_damaged(tmp_path: Path) -> None:
    _two_commits(tmp_path)
    path = tmp_path / "p000.tree"
    data = bytearray(path.read_bytes())
    data[10] ^= 1
    data[PAGE + 10] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptionError, match="both meta pages"):
        new_pager(tmp_path)


def test_pager_meta_of_another_partition_or_page_size(tmp_path: Path) -> None:
    _two_commits(tmp_path)
    (tmp_path / "p000.tree").rename(tmp_path / "p001.tree")
    with pytest.raises(CorruptionError):
        new_pager(tmp_path, partition=1)
    with pytest.raises(CorruptionError):
        Pager(FS, str(tmp_path / "p001.tree"), 0, 2048, 16, False)


# -- space comes back: lowest pages first, the free end cut off ------------------------------


def test_pager_takes_the_lowest_free_pages_first(tmp_path: Path) -> None:
    pager = new_pager(tmp_path)
    _committed(pager, 20)
    for p in (15, 4, 9, 12):
        pager.release(p)
    pager.commit(root=0, root_crc=0, height=0, flushed_seq=2, key_count=0)
    pager.begin()
    assert [pager.allocate() for _ in range(3)] == sorted(set(pager.free) | {4, 9, 12})[:3]
    pager.close()


def test_pager_cuts_the_free_end_of_the_file_once_no_meta_page_counts_it(tmp_path: Path) -> None:
    path = tmp_path / "p000.tree"
    pager = new_pager(tmp_path)
    pages = [pager.allocate() for _ in range(40)]
    crcs = {p: pager.write_page(p, _body(p % 200)) for p in pages}
    pager.commit(root=pages[0], root_crc=crcs[pages[0]], height=1, flushed_seq=1, key_count=1)
    size = path.stat().st_size
    assert size == pager.meta.page_count * PAGE
    for p in pages[5:]:
        pager.release(p)
    pager.commit(root=pages[0], root_crc=crcs[pages[0]], height=1, flushed_seq=2, key_count=1)
    # Released by that commit: the older meta page still reaches them, so they stay (and the
    # free list takes a page more).
    assert path.stat().st_size >= size
    # The next commits take the free list down to the lowest pages, and cut what is above.
    for seq in (3, 4):
        pager.commit(root=pages[0], root_crc=crcs[pages[0]], height=1, flushed_seq=seq, key_count=1)
    assert path.stat().st_size <= 10 * PAGE  # meta pages, 5 pages in use, free-list pages
    assert path.stat().st_size == pager.meta.page_count * PAGE
    assert all(p < pager.meta.page_count for p in pager.free + pager.freelist_pages)
    pager.close()
    # The older meta page counts pages the file no longer has: not damage.
    pager = new_pager(tmp_path)
    assert pager.meta.flushed_seq == 4
    assert pager.read_page(pages[0], crcs[pages[0]], "test")
    pager.close()


def test_pager_newest_meta_page_beyond_the_file_is_damage(tmp_path: Path) -> None:
    path = tmp_path / "p000.tree"
    pager = new_pager(tmp_path)
    _committed(pager, 10)
    pager.close()
    with open(path, "r+b") as f:
        f.truncate(8 * PAGE)
    with pytest.raises(CorruptionError, match="12 pages in use but the file holds 8"):
        new_pager(tmp_path)

"""Golden files: the checked-in store of every format version still opens and reads back exactly.

``tests/golden/vN-store`` was written by ``tests/golden/make_golden.py`` when N was the current
format version (run it only to add a store for a new format version, never to "fix" this test).
Its content is described losslessly in ``vN-store.expected.json``. Part of the data is in the
trees and part only in the logs, so opening it exercises both the tree format and log recovery.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

import halodb
from halodb import format as fmt
from halodb.keys import encode_key

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
VERSIONS = list(range(1, fmt.FORMAT_VERSION + 1))


def untag_key(tagged: dict[str, Any]) -> Any:
    ((kind, raw),) = tagged.items()
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float.fromhex(raw)
    if kind == "str":
        return raw
    if kind == "bytes":
        return bytes.fromhex(raw)
    if kind == "tuple":
        return tuple(untag_key(item) for item in raw)
    raise ValueError(f"unknown key tag {kind!r}")


def untag_value(tagged: dict[str, Any]) -> Any:
    ((kind, raw),) = tagged.items()
    if kind == "bytes":
        return bytes.fromhex(raw)
    if kind in ("str", "json"):
        return raw
    raise ValueError(f"unknown value tag {kind!r}")


class Golden:
    """One version's golden store and what it must hold."""

    def __init__(self, version: int) -> None:
        self.version = version
        self.store = GOLDEN / f"v{version}-store"
        self.description = json.loads((GOLDEN / f"v{version}-store.expected.json").read_text())
        self.expected: list[tuple[Any, Any]] = [
            (untag_key(k), untag_value(v)) for k, v in self.description["items"]
        ]
        self.absent: list[Any] = [untag_key(k) for k in self.description["absent"]]


@pytest.fixture(params=VERSIONS, ids=[f"v{v}" for v in VERSIONS])
def golden(request: pytest.FixtureRequest) -> Golden:
    return Golden(request.param)


def _files(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def _same(a: Any, b: Any) -> bool:
    """Equal, of the same types all the way down, and -0.0 is not 0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and isinstance(b, float):
        return a.hex() == b.hex()
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def _verify(db: halodb.Store, golden: Golden) -> None:
    expected, absent = golden.expected, golden.absent
    db.check()
    items = list(db.items())
    assert [encode_key(k) for k, _ in items] == [encode_key(k) for k, _ in expected]
    for (key, value), (want_key, want_value) in zip(items, expected, strict=True):
        assert _same(key, want_key), (key, want_key)
        assert _same(value, want_value), (key, value, want_value)
    assert len(db) == len(expected)
    assert [encode_key(k) for k in reversed(db)] == [encode_key(k) for k, _ in expected[::-1]]
    for key, value in expected:
        assert _same(db[key], value), key
        assert key in db
    for key in absent:
        assert key not in db and db.get(key, "absent") == "absent", key
    first, last = db.first(), db.last()
    assert first is not None and last is not None
    assert _same(first[0], expected[0][0]) and _same(last[0], expected[-1][0])


def test_golden_store_is_what_its_version_says_with_data_in_trees_and_logs(
    golden: Golden,
) -> None:
    """The checked-in files are what the other tests claim: their format version, records in
    every log, keys in every tree, a value in overflow pages. Read through the format's own
    structs, each version's layout."""
    store, description, version = golden.store, golden.description, golden.version
    manifest = (store / fmt.MANIFEST_NAME).read_bytes()
    magic, manifest_version, _, partitions, _, page_size, *_ = fmt.MANIFEST.unpack_from(manifest)
    assert (magic, manifest_version) == (fmt.MANIFEST_MAGIC, version)
    assert (partitions, page_size) == (description["partitions"], description["page_size"])
    assert (partitions, page_size) == (2, 1024)
    assert description["format_version"] == version
    lock = (store / "LOCK").read_bytes()
    if version == 1:
        assert lock == b""
    else:
        assert fmt.LOCK_HEADER.unpack(lock) == (fmt.LOCK_MAGIC, version)
    for index in range(partitions):
        wal = (store / fmt.partition_file(index, "wal")).read_bytes()
        wal_magic, wal_version, wal_part, *_ = fmt.WAL_HEADER.unpack_from(wal)
        assert (wal_magic, wal_version, wal_part) == (fmt.WAL_MAGIC, version, index)
        assert len(wal) > fmt.WAL_HEADER.size + fmt.WAL_RECORD.size, "a log without records"
        tree = (store / fmt.partition_file(index, "tree")).read_bytes()
        if version == 1:
            metas = [fmt.META_V1.unpack_from(tree, slot * page_size)[1:] for slot in (0, 1)]
        else:
            assert tree.startswith(fmt.TREE_MAGIC)
            metas = [fmt.META.unpack_from(tree, slot * page_size)[:-1] for slot in (0, 1)]
        # (magic, version, partition, page_size, txn, root, root_crc, height, reserved,
        #  page_count, free_head, free_head_crc, free_count, flushed_seq, key_count)
        newest = max(metas, key=lambda m: m[4])
        assert newest[:3] == (fmt.TREE_MAGIC, version, index)
        assert newest[7] >= 2, "tree height: the golden store should have internal nodes"
        assert newest[14] > 0, "tree key count"
    if version >= 4:  # run files a clean close left, on the trees as they are
        for index in range(partitions):
            run = (store / fmt.partition_file(index, "run")).read_bytes()
            head = fmt.RUN_HEADER.unpack_from(run)
            assert head[:3] == (fmt.RUN_MAGIC, version, index)
            assert head[7] > 0, "a run without entries"
    if version == 3:  # partition 0 left with a frozen memtable's log and the newer one
        wal2 = (store / fmt.partition_file(0, "wal2")).read_bytes()
        assert fmt.WAL_HEADER.unpack_from(wal2)[:3] == (fmt.WAL_MAGIC, version, 0)
        assert len(wal2) > fmt.WAL_HEADER.size + fmt.WAL_RECORD.size, "a log without records"
        bases = [
            fmt.WAL_HEADER.unpack_from((store / fmt.partition_file(0, n)).read_bytes())[4]
            for n in ("wal", "wal2")
        ]
        assert bases[0] < bases[1], "p000.wal2 is the newer log"
    big = dict((encode_key(k), v) for k, v in golden.expected)[encode_key("overflow")]
    assert len(big) > page_size


def test_golden_store_opens_and_reads_back_exactly(tmp_path: Path, golden: Golden) -> None:
    copy = tmp_path / "store"
    shutil.copytree(golden.store, copy)
    with halodb.open(copy, background=False) as db:
        _verify(db, golden)
        assert db.stats().partitions[0].memtable_entries > 0  # the logs were replayed
        # version 3: the records of p000.wal make the frozen memtable again, merged later;
        # version 4: the run is the frozen memtable
        assert (db.stats().partitions[0].frozen_entries > 0) == (golden.version >= 3)
    # closing saved the memtables (in the trees before version 4, in run files since): the
    # data must survive that too
    with halodb.open(copy) as db:
        _verify(db, golden)
        assert all(p.memtable_entries == 0 for p in db.stats().partitions)
        assert not (copy / fmt.partition_file(0, "wal2")).exists()
        db["new key"] = "written by this version"
    with halodb.open(copy, readonly=True) as db:
        assert db["new key"] == "written by this version"
        assert len(db) == len(golden.expected) + 1
        db.check()
    # a store opened for writing is brought to the current format version
    manifest = (copy / fmt.MANIFEST_NAME).read_bytes()
    assert fmt.MANIFEST.unpack_from(manifest)[1] == fmt.FORMAT_VERSION
    assert fmt.LOCK_HEADER.unpack((copy / "LOCK").read_bytes())[1] >= 1


def test_golden_store_read_only_changes_nothing(tmp_path: Path, golden: Golden) -> None:
    copy = tmp_path / "store"
    shutil.copytree(golden.store, copy)
    before = _files(golden.store)
    assert _files(copy) == before
    with halodb.open(copy, readonly=True) as db:
        _verify(db, golden)
        with pytest.raises(halodb.ProgrammingError):
            db["x"] = 1
    assert _files(copy) == before, "a read-only open changed the store's files"
    assert _files(golden.store) == before

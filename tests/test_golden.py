"""Golden files: the checked-in format-version-1 store still opens and reads back exactly.

``tests/golden/v1-store`` was written by ``tests/golden/make_golden.py`` (run it only to add a
store for a new format version, never to "fix" this test). Its content is described losslessly
in ``v1-store.expected.json``. Part of the data is in the trees and part only in the logs, so
opening it exercises both the tree format and log recovery.
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

GOLDEN = Path(__file__).parent / "golden"
STORE = GOLDEN / "v1-store"
DESCRIPTION = json.loads((GOLDEN / "v1-store.expected.json").read_text())


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


EXPECTED: list[tuple[Any, Any]] = [(untag_key(k), untag_value(v)) for k, v in DESCRIPTION["items"]]
ABSENT: list[Any] = [untag_key(k) for k in DESCRIPTION["absent"]]


def _files(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def _same(a: Any, b: Any) -> bool:
    """Equal, of the same types all the way down, and -0.0 is not 0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a.hex() == b.hex()
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def _verify(db: halodb.Store) -> None:
    db.check()
    items = list(db.items())
    assert [encode_key(k) for k, _ in items] == [encode_key(k) for k, _ in EXPECTED]
    for (key, value), (want_key, want_value) in zip(items, EXPECTED, strict=True):
        assert _same(key, want_key), (key, want_key)
        assert _same(value, want_value), (key, value, want_value)
    assert len(db) == len(EXPECTED)
    assert [encode_key(k) for k in reversed(db)] == [encode_key(k) for k, _ in EXPECTED[::-1]]
    for key, value in EXPECTED:
        assert _same(db[key], value), key
        assert key in db
    for key in ABSENT:
        assert key not in db and db.get(key, "absent") == "absent", key
    first, last = db.first(), db.last()
    assert first is not None and last is not None
    assert _same(first[0], EXPECTED[0][0]) and _same(last[0], EXPECTED[-1][0])


def test_golden_store_is_format_version_1_with_data_in_trees_and_logs() -> None:
    """The checked-in files are what the other tests claim: version 1, records in every log,
    keys in every tree, a value in overflow pages. Read through the format's own structs."""
    manifest = (STORE / fmt.MANIFEST_NAME).read_bytes()
    magic, version, _, partitions, _, page_size, *_ = fmt.MANIFEST.unpack_from(manifest)
    assert (magic, version) == (fmt.MANIFEST_MAGIC, 1)
    assert (
        (partitions, page_size)
        == (DESCRIPTION["partitions"], DESCRIPTION["page_size"])
        == (
            2,
            1024,
        )
    )
    assert DESCRIPTION["format_version"] == 1
    assert (STORE / "LOCK").exists()
    for index in range(partitions):
        wal = (STORE / fmt.partition_file(index, "wal")).read_bytes()
        wal_magic, wal_version, wal_part, *_ = fmt.WAL_HEADER.unpack_from(wal)
        assert (wal_magic, wal_version, wal_part) == (fmt.WAL_MAGIC, 1, index)
        assert len(wal) > fmt.WAL_HEADER.size + fmt.WAL_RECORD.size, "a log without records"
        tree = (STORE / fmt.partition_file(index, "tree")).read_bytes()
        metas = [fmt.META.unpack_from(tree, slot * page_size) for slot in (0, 1)]
        newest = max(metas, key=lambda m: m[5])
        assert newest[1:4] == (fmt.TREE_MAGIC, 1, index)
        assert newest[8] >= 2, "tree height: the golden store should have internal nodes"
        assert newest[15] > 0, "tree key count"
    big = dict((encode_key(k), v) for k, v in EXPECTED)[encode_key("overflow")]
    assert len(big) > page_size


def test_golden_store_opens_and_reads_back_exactly(tmp_path: Path) -> None:
    copy = tmp_path / "v1-store"
    shutil.copytree(STORE, copy)
    with halodb.open(copy) as db:
        _verify(db)
        assert db.stats().partitions[0].memtable_entries > 0  # the logs were replayed
    # closing flushed the logs into the trees: the data must survive that too
    with halodb.open(copy) as db:
        _verify(db)
        assert all(p.memtable_entries == 0 for p in db.stats().partitions)
        db["new key"] = "written by this version"
    with halodb.open(copy, readonly=True) as db:
        assert db["new key"] == "written by this version"
        assert len(db) == len(EXPECTED) + 1
        db.check()


def test_golden_store_read_only_changes_nothing(tmp_path: Path) -> None:
    copy = tmp_path / "v1-store"
    shutil.copytree(STORE, copy)
    before = _files(STORE)
    assert _files(copy) == before
    with halodb.open(copy, readonly=True) as db:
        _verify(db)
        with pytest.raises(halodb.ProgrammingError):
            db["x"] = 1
    assert _files(copy) == before, "a read-only open changed the store's files"
    assert _files(STORE) == before

"""Write the checked-in golden store of the current format version and what it holds.

Run from the repository root, once per format version, and check the output in::

    .venv/bin/python tests/golden/make_golden.py

It writes ``tests/golden/vN-store/`` (N: ``halodb.format.FORMAT_VERSION``; two partitions,
1 KiB pages) and ``tests/golden/vN-store.expected.json``. The content is fixed: keys of every
type, JSON, str and bytes values, a value spread over overflow pages, deleted keys; part of it
flushed into the trees and part left only in the logs (the store is abandoned as a crash
would leave it, so the logs keep their records, including a batch across both partitions). The
hash seed and the creation time differ from run to run, but both are recorded in the manifest,
so any run's files are self-consistent. In version 3, partition 0 was left with two logs: its
memtable was frozen (a merge the crash interrupted), and later records went to the new log.
From version 4 on, part of the data is in run files: a clean close left it there, unmerged,
and the records after it are in the logs.
Never regenerate an older version's store after a format change: old stores must keep opening;
the new version's store is added beside them.

Keys and values are described losslessly in a tagged JSON form:
``{"int": "-12"}``, ``{"float": "0x1.8p+0"}`` (``float.hex``), ``{"str": "..."}``,
``{"bytes": "00ff"}`` (hex), ``{"tuple": [...]}`` for keys; ``{"str": ...}``, ``{"bytes": hex}``
or ``{"json": value}`` for values.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import halodb
import halodb.testing
from halodb import format as fmt
from halodb.keys import encode_key

HERE = Path(__file__).resolve().parent
STORE = HERE / f"v{fmt.FORMAT_VERSION}-store"
EXPECTED = HERE / f"v{fmt.FORMAT_VERSION}-store.expected.json"


def tag_key(key: Any) -> Any:
    """The tagged JSON form of a key."""
    if type(key) is int:
        return {"int": str(key)}
    if type(key) is float:
        return {"float": key.hex()}
    if type(key) is str:
        return {"str": key}
    if type(key) is bytes:
        return {"bytes": key.hex()}
    if type(key) is tuple:
        return {"tuple": [tag_key(k) for k in key]}
    raise TypeError(f"not a key: {key!r}")


def tag_value(value: Any) -> Any:
    """The tagged JSON form of a value."""
    if type(value) is bytes:
        return {"bytes": value.hex()}
    if type(value) is str:
        return {"str": value}
    return {"json": value}


FLUSHED: list[tuple[Any, Any]] = [
    # str keys
    ("", "empty str key"),
    ("a", "a"),
    ("héllo wörld", {"greeting": True, "n": 1}),
    ("nul\x00inside", b"\x00\x01\x02"),
    ("emoji \U0001f389", "\U0001f389"),
    ("lone \ud800 surrogate", "value with a lone \udfff surrogate"),
    # bytes keys
    (b"", b""),
    (b"\x00", "zero byte key"),
    (b"\xff\xff\xff", b"\xff" * 10),
    (b"raw", [1, 2.5, None, True, False, "s", [], {}]),
    # int keys, including huge and negative
    (0, 0),
    (1, 1),
    (-1, -1),
    (255, 255.0),
    (256, -0.0),
    (-256, 2**100),
    (2**64, "two to the 64"),
    (-(2**64), "minus two to the 64"),
    (10**100, "googol"),
    (-(10**100), "minus googol"),
    (2**900, {"big": 2**1000}),
    # float keys
    (0.0, "zero float"),
    (-1.5, 1e300),
    (1e300, 5e-324),
    (float("inf"), "inf key"),
    (float("-inf"), "minus inf key"),
    (5e-324, "smallest subnormal"),
    (0.1, 0.1),
    # tuple keys
    ((), "empty tuple"),
    (("user", 1), {"name": "alice", "tags": ["a", "b"]}),
    (("user", 2), {"name": "bob", "deep": [[[[{"x": None}]]]]}),
    (("user", 1, "x\x00y"), "escaped nul in a tuple"),
    ((("nested",), b"\x00"), "nested tuple"),
    ((1.5, -2, b"", ""), "mixed tuple"),
    # a value larger than a page: overflow pages
    ("overflow", "O" * 2500 + "V" * 2500),
    ("overflow-bytes", bytes(range(256)) * 20),
    # deleted again while flushed: the log holds the tombstone
    ("deleted-in-log", "flushed, then deleted in the log"),
    # overwritten in the log
    (("user", 3), "old value in the tree"),
]
for i in range(60):  # enough keys for tree heights above one
    FLUSHED.append((f"filler {i:03d}", {"i": i, "pad": "p" * (i % 40)}))

DELETED_BEFORE_FLUSH: list[halodb.Key] = ["deleted-in-tree", 77, ("gone",)]

IN_RUN_PUTS: list[tuple[Any, Any]] = [
    ("run only", "a value a clean close left in a run file"),
    (("user", 2), {"name": "bob", "moved": "to the run"}),
    (b"run\x00bytes", b"\x00\xffrun"),
    ("run overflow", "R" * 2600),
    (-1.25, "float key in the run"),
]
for i in range(0, 60, 7):
    IN_RUN_PUTS.append((f"filler {i:03d}", f"overwritten in the run {i}"))
DELETED_IN_RUN: list[halodb.Key] = ["filler 001", ("user", 1, "x\x00y"), 10**100]

IN_LOG_PUTS: list[tuple[Any, Any]] = [
    ("log only", "a value only in the log"),
    (-7, ["log", -7]),
    (b"log\x00bytes", b"\x00log"),
    (("user", 3), "new value in the log"),
    ("log overflow", "L" * 3000),
]
IN_LOG_BATCH: list[tuple[Any, Any]] = [
    ("batch 1", "one"),
    ("batch 2", "two"),
    (("batch", 3), 3),
    (4.25, "batch float key"),
    (b"batch 5", b"five"),
    ("batch 6", {"six": 6}),
]


def build(store: Path) -> dict[bytes, tuple[Any, Any]]:
    """Write the store; returns its expected content, by encoded key (``0`` and ``0.0`` are
    two keys of the store but one of a dict)."""
    if store.exists():
        shutil.rmtree(store)
    expected: dict[bytes, tuple[Any, Any]] = {}
    db = halodb.open(store, partitions=2, page_size=1024, background=False)
    for key in DELETED_BEFORE_FLUSH:
        db[key] = "soon deleted"
    for key, value in FLUSHED:
        db[key] = value
        expected[encode_key(key)] = (key, value)
    for key in DELETED_BEFORE_FLUSH:
        del db[key]
    db.flush()
    for key, value in IN_LOG_PUTS:
        db[key] = value
        expected[encode_key(key)] = (key, value)
    del db["deleted-in-log"]
    del expected[encode_key("deleted-in-log")]
    # Version 4: a clean close leaves these in run files (the trees do not hold them); the
    # records written after the next open are in the logs.
    db.close()
    db = halodb.open(store, background=False)
    for key, value in IN_RUN_PUTS:
        db[key] = value
        expected[encode_key(key)] = (key, value)
    for key in DELETED_IN_RUN:
        del db[key]
        del expected[encode_key(key)]
    db.close()
    db = halodb.open(store, background=False)
    db[("after", "the run")] = "in the log after the run"
    expected[encode_key(("after", "the run"))] = (("after", "the run"), "in the log after the run")
    with db.batch() as batch:
        for key, value in IN_LOG_BATCH:
            batch[key] = value
            expected[encode_key(key)] = (key, value)
        del batch["a"]
        del expected[encode_key("a")]
    parts = {halodb.testing.partition_of(db, k) for k, _ in IN_LOG_BATCH}
    assert parts == {0, 1}, "the batch must span both partitions"
    # abandon: as a crash would, leave the log records unflushed
    halodb.testing.abandon(db)
    for name in ("p000.wal", "p001.wal"):
        assert (store / name).stat().st_size > 28, f"{name}: a log without records"
    for name in ("p000.run", "p001.run"):
        assert (store / name).stat().st_size > fmt.RUN_HEADER.size, f"{name}: an empty run"
    return expected


def main() -> int:
    expected = build(STORE)
    ordered = [expected[k] for k in sorted(expected)]
    description = {
        "format_version": fmt.FORMAT_VERSION,
        "partitions": 2,
        "page_size": 1024,
        "codec": "halo1",
        "items": [[tag_key(k), tag_value(v)] for k, v in ordered],
        "absent": [
            tag_key(k) for k in [*DELETED_BEFORE_FLUSH, *DELETED_IN_RUN, "deleted-in-log", "a"]
        ],
    }
    # one item per line, so that a diff of this file is readable
    lines = ["{"]
    for name, item in description.items():
        if isinstance(item, list):
            rows = [json.dumps(row, ensure_ascii=True) for row in item]
            lines.append(f' "{name}": [\n  ' + ",\n  ".join(rows) + "\n ],")
        else:
            lines.append(f' "{name}": {json.dumps(item)},')
    lines[-1] = lines[-1].rstrip(",")
    EXPECTED.write_text("\n".join(lines) + "\n}\n")
    with halodb.open(STORE, readonly=True) as db:  # the files say what the description says
        db.check()
        assert list(db.items()) == ordered
    print(f"wrote {STORE} and {EXPECTED.name}: {len(ordered)} keys")
    return 0


if __name__ == "__main__":
    sys.exit(main())

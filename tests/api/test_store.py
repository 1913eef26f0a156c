"""The public API of halodb, checked as a demanding user would: the dict protocol, typed keys,
values and codecs, ordered ranges, batches, large values, durability modes, inspection and the
lifecycle (close, locks, read-only, bad directories, bad options, newer formats)."""

from __future__ import annotations

import inspect
import math
import os
import pickle
import random
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import halodb
from halodb import errors
from halodb import format as fmt
from halodb.vfs import File, FileSystem
from support.faultfs import FaultFS
from support.stores import SMALL, DurabilityName, abandon, snapshot, stable_id

Opener = Callable[..., halodb.Store]
WAL_HEADER_SIZE = fmt.WAL_HEADER.size


def wal_bytes(db: halodb.Store) -> list[int]:
    return [p.wal_bytes for p in db.stats().partitions]


def fill(db: halodb.Store, n: int, size: int = 20) -> dict[Any, Any]:
    """Put ``n`` int keys with str values of about ``size`` characters; return the model."""
    model = {}
    for i in range(n):
        model[i] = f"{i}:" + "v" * size
        db[i] = model[i]
    return model


class Thing:
    """A custom object: not a JSON value, but picklable (module level)."""

    def __init__(self, x: int) -> None:
        self.x = x

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Thing) and other.x == self.x

    __hash__ = object.__hash__


# ---------------------------------------------------------------------------------------------
# The dict protocol
# ---------------------------------------------------------------------------------------------


def test_getitem_setitem_and_missing_key(open_store: Opener) -> None:
    db = open_store()
    db["a"] = "1"
    assert db["a"] == "1"
    db["a"] = "2"
    assert db["a"] == "2"
    with pytest.raises(KeyError) as info:
        db["b"]
    assert info.value.args == ("b",)
    with pytest.raises(KeyError):
        db[b"a"]  # bytes and str are different keys


def test_delitem_removes_and_absent_key_writes_nothing(open_store: Opener, tmp_path: Path) -> None:
    db = open_store()
    model = fill(db, 300)
    del db[5]
    del model[5]
    assert 5 not in db
    with pytest.raises(KeyError):
        db[5]
    db.flush()
    before_len, before_wal = len(db), wal_bytes(db)
    before_files = snapshot(tmp_path / "db")
    for key in (5, 10_000, "5", -1, (5,)):
        with pytest.raises(KeyError):
            del db[key]
    assert len(db) == before_len == len(model)
    assert wal_bytes(db) == before_wal
    assert snapshot(tmp_path / "db") == before_files
    db.close()
    db = open_store()
    assert len(db) == len(model)
    assert dict(db.items()) == model


def test_contains(open_store: Opener) -> None:
    db = open_store()
    db["k"] = "v"
    db[1] = "one"
    db[("t", 1)] = "t"
    assert "k" in db and 1 in db and ("t", 1) in db
    assert "x" not in db and 2 not in db and ("t", 2) not in db and b"k" not in db
    assert 1.0 not in db  # 1 and 1.0 are different keys (documented)
    for unsupported in ([1], None, True, False, {"k": 1}, {1}, object(), 1j, ("t", [1])):
        assert unsupported not in db
    nan = float("nan")
    assert nan not in db  # NaN is no key (DataError inside): not contained
    assert b"x" * 10_000 not in db  # too long to be a key
    assert len(db) == 3


def test_len_is_exact_through_overwrites_deletes_batches_clear_and_reopen(
    open_store: Opener,
) -> None:
    db = open_store()
    assert len(db) == 0
    fill(db, 500)
    assert len(db) == 500
    fill(db, 500, size=40)  # overwrites, some after a flush
    assert len(db) == 500
    for i in range(0, 500, 5):
        del db[i]
    assert len(db) == 400
    with db.batch() as b:
        for i in range(0, 500, 5):
            b[i] = "back"  # 100 new
        for i in range(1, 500, 5):
            del b[i]  # 100 deleted
        for i in range(1000, 1010):
            del b[i]  # absent: no effect
        b[2] = "overwrite"
    assert len(db) == 400
    assert db.stats().keys == 400
    db.close()
    db = open_store()
    assert len(db) == 400
    db.clear()
    assert len(db) == 0
    db[1] = "x"
    assert len(db) == 1
    db.close()
    db = open_store()
    assert len(db) == 1
    assert list(db.items()) == [(1, "x")]


def test_get(open_store: Opener) -> None:
    db = open_store()
    db["a"] = {"x": 1}
    assert db.get("a") == {"x": 1}
    assert db.get("b") is None
    assert db.get("b", 7) == 7
    assert db.get(("no", "such")) is None
    unhashable: Any = [1]  # not a key type: the check under test is at run time
    with pytest.raises(TypeError):
        db.get(unhashable)


def test_pop(open_store: Opener) -> None:
    db = open_store()
    fill(db, 200)
    assert db.pop(7) == "7:" + "v" * 20
    assert 7 not in db
    assert len(db) == 199
    with pytest.raises(KeyError):
        db.pop(7)
    assert db.pop(7, "dflt") == "dflt"
    assert db.pop(7, None) is None
    assert len(db) == 199
    db.flush()
    assert db.pop(8) == "8:" + "v" * 20  # from the tree, not the memtable
    assert len(db) == 198


@pytest.mark.parametrize("partitions", [1, 4])
def test_popitem_takes_the_first_key_in_order(open_store: Opener, partitions: int) -> None:
    db = open_store(partitions=partitions)
    keys = list(range(300))
    random.Random(1).shuffle(keys)
    for k in keys:
        db[k] = str(k)
    db.flush()
    db[-5] = "neg"
    assert db.popitem() == (-5, "neg")
    for expected in range(300):
        assert db.popitem() == (expected, str(expected))
    assert len(db) == 0
    with pytest.raises(KeyError):
        db.popitem()


def test_setdefault(open_store: Opener) -> None:
    db = open_store()
    assert db.setdefault("a", [1, 2]) == [1, 2]
    assert db["a"] == [1, 2]
    assert db.setdefault("a", "other") == [1, 2]
    assert db["a"] == [1, 2]
    assert db.setdefault("n") is None
    assert "n" in db and db["n"] is None
    assert len(db) == 2
    with pytest.raises(TypeError):
        db.setdefault("t", (1, 2))
    assert "t" not in db


def test_update_with_mapping_pairs_kwargs_and_keys_object(open_store: Opener) -> None:
    db = open_store()
    db.update({"a": 1, 2: "two"})
    db.update([("b", 2), (("t", 1), None)])
    db.update(c=3, d=[4])
    db.update({"e": 5}, f=6)

    class KeysOnly:
        def keys(self) -> list[str]:
            return ["g"]

        def __getitem__(self, key: str) -> str:
            return key.upper()

    db.update(KeysOnly())
    db.update()
    assert dict(db.items()) == {
        "a": 1,
        2: "two",
        "b": 2,
        ("t", 1): None,
        "c": 3,
        "d": [4],
        "e": 5,
        "f": 6,
        "g": "G",
    }


def test_update_is_atomic(open_store: Opener) -> None:
    db = open_store()
    db["keep"] = "old"
    before = wal_bytes(db)
    with pytest.raises(TypeError):
        db.update([("keep", "new"), ("x", 1), ("bad", (1, 2))])
    with pytest.raises(TypeError):
        db.update({"keep": "new", None: 1})

    def pairs() -> Any:
        yield ("keep", "new")
        raise RuntimeError("source failed")

    with pytest.raises(RuntimeError):
        db.update(pairs())
    with pytest.raises(ValueError):
        db.update([("keep", "new"), ("a", "b", "c")])
    assert dict(db.items()) == {"keep": "old"}
    assert wal_bytes(db) == before


def test_clear(open_store: Opener) -> None:
    db = open_store()
    fill(db, 2000)  # several flushes: the trees hold keys
    for i in range(2000, 2100):
        db[i] = "mem"  # and the memtables too
    db.clear()
    assert len(db) == 0
    assert list(db) == []
    assert db.first() is None and db.last() is None
    assert 5 not in db and db.get(2050) is None
    db[3] = "after"
    assert list(db.items()) == [(3, "after")]
    db.check()
    db.close()
    db = open_store()
    assert list(db.items()) == [(3, "after")]
    db.check()
    db.clear()
    db.flush()
    assert len(db) == 0
    assert all(r.keys == 0 for r in db.check())
    db.close()
    db = open_store()
    assert len(db) == 0 and list(db) == []


def test_keys_values_items_views(open_store: Opener) -> None:
    db = open_store()
    model = {i: {"n": i} for i in range(50)}
    db.update(model)
    keys, values, items = db.keys(), db.values(), db.items()
    assert len(keys) == len(values) == len(items) == 50
    assert list(keys) == list(range(50))
    assert list(values) == [{"n": i} for i in range(50)]
    assert list(items) == [(i, {"n": i}) for i in range(50)]
    assert 3 in keys and 99 not in keys
    assert (3, {"n": 3}) in items and (3, {"n": 4}) not in items
    assert {"n": 3} in values
    db[100] = "late"  # views are live
    assert len(keys) == 51 and list(keys)[-1] == 100
    assert keys == set(range(50)) | {100}


@pytest.mark.parametrize("partitions", [1, 4])
def test_iteration_order_matches_sorted_order(open_store: Opener, partitions: int) -> None:
    db = open_store(partitions=partitions)
    keys = list(range(-1500, 1500, 3))
    random.Random(partitions).shuffle(keys)
    for k in keys:
        db[k] = k * 2
    for k in keys[::7]:
        del db[k]
    expected = sorted(set(keys) - set(keys[::7]))
    assert list(db) == expected
    assert list(reversed(db)) == expected[::-1]
    assert [k for k, _ in db.items()] == expected
    assert list(db.values()) == [k * 2 for k in expected]
    assert len(db) == len(expected)
    db.close()
    db = open_store(partitions=partitions)
    assert list(db) == expected
    assert list(reversed(db)) == expected[::-1]


@pytest.mark.parametrize("partitions", [1, 4])
def test_writing_while_iterating(open_store: Opener, partitions: int) -> None:
    """Keys come strictly in order and never twice, even when the loop body overwrites and
    deletes the keys it is given and the memtables flush between chunks."""
    db = open_store(partitions=partitions)
    for i in range(3000):
        db[i] = [i, 0]
    seen = []
    for key, value in db.items():
        seen.append(key)
        assert value == [key, 0], "a key came twice, or with a value from this loop"
        assert isinstance(key, int)
        if key % 3 == 0:
            del db[key]
        else:
            db[key] = [key, 1, "x" * 50]  # large enough to force flushes along the way
    assert seen == list(range(3000))
    assert db.stats().partitions[0].flushes > 0
    assert dict(db.items()) == {i: [i, 1, "x" * 50] for i in range(3000) if i % 3}
    for key in db:
        del db[key]
    assert len(db) == 0 and list(db) == []


def test_equality_with_dict(open_store: Opener) -> None:
    db = open_store()
    model = {i: [i, str(i)] for i in range(100)}
    db.update(model)
    assert db == model
    assert model == db
    assert (db != model) is False
    assert db != {**model, 0: "changed"}
    assert db != {k: v for k, v in model.items() if k != 5}
    assert db != {**{k: v for k, v in model.items() if k != 5}, 1000: [5, "5"]}
    assert db != {**model, 100: [100, "100"]}
    assert db != 5
    assert db != list(model.items())
    with pytest.raises(TypeError):
        hash(db)
    other = open_store("other")
    other.update(model)
    assert db == other


def test_reversed(open_store: Opener) -> None:
    db = open_store()
    assert list(reversed(db)) == []
    db.update({"b": 1, "a": 2, "c": 3})
    assert list(reversed(db)) == ["c", "b", "a"]


# ---------------------------------------------------------------------------------------------
# Typed keys
# ---------------------------------------------------------------------------------------------

TYPED_KEYS: dict[str, list[Any]] = {
    "bytes": [
        b"",
        b"\x00",
        b"\x00\x00",
        b"\x00\x01",
        b"\x01",
        b"a",
        b"ab",
        b"a\xff",
        b"\xff",
        b"\xff\xff",
        b"\xfe\xff\xff",
    ],
    "str": [
        "",
        "\x00",
        "a",
        "a\x00",
        "ab",
        "b",
        "z" * 40,
        "\x7f",
        "\x80",
        "é",
        "\uffff",
        "\U0001f600",
        "\U00010000",
        "\ud800",
        "user:1",
        "user:10",
        "user:2",
    ],
    "int": [
        0,
        1,
        -1,
        2,
        -2,
        127,
        128,
        255,
        256,
        -255,
        -256,
        -257,
        65535,
        65536,
        2**63,
        -(2**63),
        2**64,
        10**40,
        -(10**40),
        10**40 + 1,
        -(10**40) - 1,
        10**100,
        -(10**100),
    ],
    "float": [
        0.0,
        1.0,
        -1.0,
        0.5,
        -0.5,
        1e-300,
        -1e-300,
        5e-324,
        -5e-324,
        1.7976931348623157e308,
        -1.7976931348623157e308,
        math.inf,
        -math.inf,
        3.14,
        -3.14,
        1e20,
        -1e20,
    ],
    "tuple": [
        (),
        ("user", 7),
        ("user", 10),
        ("user", -1),
        ("user", 7, "x"),
        ("user", 7, ""),
        ("users", 1),
        ("user\x00", 1),
        ("a", 1),
        ("a", 10**30),
        ("b", -(10**30)),
        ("user", 2**70),
        ("us", 7),
        ("", 0),
    ],
}


@pytest.mark.parametrize("partitions", [1, 4])
@pytest.mark.parametrize("kind", sorted(TYPED_KEYS))
def test_typed_keys_sort_like_python_and_keep_their_type(
    open_store: Opener, kind: str, partitions: int
) -> None:
    keys = TYPED_KEYS[kind]
    assert len(set(keys)) == len(keys)
    db = open_store(partitions=partitions)
    shuffled = keys[:]
    random.Random(3).shuffle(shuffled)
    for i, k in enumerate(shuffled):
        db[k] = i
    expected = sorted(keys)
    for _ in range(2):
        got = list(db)
        assert got == expected
        assert [type(k) for k in got] == [type(k) for k in expected]
        assert list(reversed(db)) == expected[::-1]
        for i, k in enumerate(shuffled):
            assert db[k] == i
        db.close()
        db = open_store(partitions=partitions)


def test_tuple_keys_nest_and_sort(open_store: Opener) -> None:
    db = open_store()
    keys: list[tuple[halodb.Key, halodb.Key]] = [
        ("a", ("b", 1)),
        ("a", ("b", 2)),
        ("a", ("b",)),
        ("a", ("c", 0)),
        ("a", ()),
        ((1, 2), 3),
        ((1,), 9),
        ((1, 2, 3), 0),
    ]
    pairs = [k for k in keys if isinstance(k[0], str)]
    nums = [k for k in keys if isinstance(k[0], tuple)]
    for k in keys:
        db[k] = repr(k)
    assert list(db.range(prefix=("a",))) == [(k, repr(k)) for k in sorted(pairs)]
    assert [k for k in db if isinstance(k, tuple) and isinstance(k[0], tuple)] == sorted(nums)


def test_cross_type_order_is_int_float_str_bytes_tuple(open_store: Opener) -> None:
    db = open_store()
    keys: list[halodb.Key] = [("t",), b"b", "s", 1.5, 7]
    for k in keys:
        db[k] = 0
    assert list(db) == [7, 1.5, "s", b"b", ("t",)]


def test_int_and_float_are_different_keys_and_minus_zero_is_zero(open_store: Opener) -> None:
    db = open_store()
    db[1] = "int"
    db[1.0] = "float"
    assert len(db) == 2 and db[1] == "int" and db[1.0] == "float"
    assert [type(k) for k in db] == [int, float]
    db[-0.0] = "zero"
    assert db[0.0] == "zero"
    assert 0.0 in db
    (zero,) = [k for k in db if k == 0]
    assert math.copysign(1.0, zero) == 1.0


def test_bytes_like_and_subclass_keys_come_back_as_plain_types(open_store: Opener) -> None:
    db = open_store()

    class S(str):
        pass

    db[bytearray(b"ba")] = 1
    db[memoryview(b"mv")] = 2
    db[S("sub")] = 3
    assert db[b"ba"] == 1 and db[b"mv"] == 2 and db["sub"] == 3
    assert [type(k) for k in db] == [str, bytes, bytes]


@pytest.mark.parametrize(
    "key",
    [
        True,
        False,
        None,
        [1],
        {"a": 1},
        {1},
        object(),
        1j,
        ("a", True),
        ("a", None),
        ("a", [1]),
        frozenset(),
    ],
    ids=stable_id,
)
def test_unsupported_key_types_raise_type_error_and_write_nothing(
    open_store: Opener, key: Any
) -> None:
    db = open_store()
    db["x"] = 1
    before = wal_bytes(db)
    with pytest.raises(TypeError):
        db[key] = 1
    with pytest.raises(TypeError):
        db[key]
    with pytest.raises(TypeError):
        del db[key]
    with pytest.raises(TypeError):
        db.setdefault(key, 1)
    with pytest.raises(TypeError), db.batch() as b:
        b["y"] = 1
        b[key] = 1
    assert wal_bytes(db) == before
    assert dict(db.items()) == {"x": 1}


@pytest.mark.parametrize("key", [math.nan, ("a", math.nan), -math.nan])
def test_nan_key_raises_data_error_and_writes_nothing(open_store: Opener, key: Any) -> None:
    db = open_store()
    with pytest.raises(halodb.DataError):
        db[key] = 1
    assert db.get(key) is None  # as a dict answers for a key it cannot hold (issue 10)
    with pytest.raises(KeyError):
        db[key]
    assert len(db) == 0
    assert wal_bytes(db) == [WAL_HEADER_SIZE] * 4


def test_key_length_limit(open_store: Opener) -> None:
    db = open_store(partitions=1)  # one partition: the tree's shape does not depend on the seed
    longest = None
    for n in range(1, 2000):
        try:
            db[b"k" * n] = n
        except halodb.DataError:
            break
        longest = n
    assert longest is not None and 100 <= longest < 1999
    assert len(db) == longest
    with pytest.raises(halodb.DataError):
        db[b"k" * (longest + 1)] = 1
    with pytest.raises(halodb.DataError):
        db["k" * 5000] = 1
    with pytest.raises(halodb.DataError):
        db[("k" * 5000,)] = 1
    assert len(db) == longest
    # Many keys of the longest size, with values at the inline limit: deep internal nodes.
    big_keys = {bytes([i % 256, i // 256]) + b"x" * (longest - 2): b"v" * 250 for i in range(1200)}
    db.update(big_keys)
    db.flush()
    db.check()
    db.close()
    db = open_store(partitions=1)
    assert db[b"k" * longest] == longest
    for k, v in big_keys.items():
        assert db[k] == v
    assert len(db) == longest + len(big_keys)
    db.check()


# ---------------------------------------------------------------------------------------------
# Values and codecs
# ---------------------------------------------------------------------------------------------

VALUES: list[Any] = [
    b"",
    b"\x00",
    bytes(range(256)),
    "",
    "text",
    "\x00é\U0001f600",
    "\ud800",
    0,
    -1,
    10**50,
    1.5,
    -0.0,
    math.inf,
    -math.inf,
    True,
    False,
    None,
    [],
    {},
    [1, [2, [3, []]]],
    {"a": {"b": [None, True, 1.25, "x", {"c": []}]}, "": 0},
    ["mixed", 1, 2.0, None, False],
]


def test_values_round_trip_exactly(open_store: Opener) -> None:
    db = open_store()
    for i, v in enumerate(VALUES):
        db[i] = v

    def same(a: Any, b: Any) -> bool:
        if type(a) is not type(b):
            return False
        if isinstance(a, float):
            return a == b and math.copysign(1, a) == math.copysign(1, b)
        if isinstance(a, list):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        return bool(a == b)

    for stage in ("memtable", "tree", "reopened"):
        for i, v in enumerate(VALUES):
            assert same(db[i], v), (stage, i, v, db[i])
        if stage == "memtable":
            db.flush()
        elif stage == "tree":
            db.close()
            db = open_store()


def test_bytearray_value_comes_back_as_bytes(open_store: Opener) -> None:
    db = open_store()
    db["a"] = bytearray(b"xy")
    db["b"] = memoryview(b"zw")
    assert db["a"] == b"xy" and type(db["a"]) is bytes
    assert db["b"] == b"zw"


@pytest.mark.parametrize(
    "value",
    [
        (1, 2),
        {1, 2},
        frozenset(),
        Thing(1),
        object(),
        1j,
        {1: "int key"},
        [1, (2,)],
        {"a": {1, 2}},
        [b"bytes inside"],
        bytes,
    ],
    ids=stable_id,
)
def test_unsupported_values_raise_type_error_and_write_nothing(
    open_store: Opener, value: Any
) -> None:
    db = open_store()
    db["k"] = "old"
    before = wal_bytes(db)
    with pytest.raises(TypeError):
        db["k"] = value
    with pytest.raises(TypeError):
        db["new"] = value
    with pytest.raises(TypeError), db.batch() as b:
        b["other"] = 1
        b["new"] = value
    assert dict(db.items()) == {"k": "old"}
    assert wal_bytes(db) == before


def test_pickle_codec_is_an_explicit_opt_in(tmp_path: Path) -> None:
    path = tmp_path / "p"
    values = {
        "tuple": (1, "a"),
        "set": {1, 2},
        "thing": Thing(5),
        "bytes": b"\x00",
        "nested": {1: [(2,)]},
    }
    with halodb.open(path, value_codec=halodb.PickleCodec(), **SMALL) as db:
        db.update(values)
        assert dict(db.items()) == values
    with halodb.open(path, value_codec=halodb.PickleCodec()) as db:
        assert dict(db.items()) == values
        assert type(db["tuple"]) is tuple and type(db["thing"]) is Thing
    with pytest.raises(halodb.InterfaceError):
        halodb.open(path)
    with pytest.raises(halodb.InterfaceError):
        halodb.open(path, readonly=True)
    # The failed opens released the lock.
    with halodb.open(path, value_codec=halodb.PickleCodec()) as db:
        assert len(db) == len(values)


def test_default_store_refuses_the_pickle_codec(tmp_path: Path) -> None:
    path = tmp_path / "d"
    with halodb.open(path) as db:
        db["a"] = 1
    with pytest.raises(halodb.InterfaceError):
        halodb.open(path, value_codec=halodb.PickleCodec())
    with halodb.open(path) as db:
        assert db["a"] == 1


# ---------------------------------------------------------------------------------------------
# Ordered access: range, prefix, first, last
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def evens(open_store: Opener) -> halodb.Store:
    """Even int keys 0..398 (across every partition and both memtable and tree)."""
    db = open_store()
    for k in range(0, 200, 2):
        db[k] = f"v{k}"
    db.flush()
    for k in range(200, 400, 2):
        db[k] = f"v{k}"
    return db


def test_range_is_half_open(evens: halodb.Store) -> None:
    keys = list(range(0, 400, 2))
    bounds = [None, -10, 0, 1, 2, 3, 99, 100, 101, 198, 199, 200, 201, 397, 398, 399, 400, 1000]
    for start in bounds:
        for stop in bounds:
            expected = [
                (k, f"v{k}")
                for k in keys
                if (start is None or k >= start) and (stop is None or k < stop)
            ]
            assert list(evens.range(start, stop)) == expected, (start, stop)
            assert list(evens.range(start, stop, reverse=True)) == expected[::-1], (start, stop)


def test_range_keyword_arguments_and_defaults(evens: halodb.Store) -> None:
    assert [k for k, _ in evens.range(start=390)] == [390, 392, 394, 396, 398]
    assert [k for k, _ in evens.range(stop=6)] == [0, 2, 4]
    assert [k for k, _ in evens.range(stop=6, reverse=True)] == [4, 2, 0]
    assert len(list(evens.range())) == 200
    assert list(evens.range(10, 10)) == []
    assert list(evens.range(20, 10)) == []
    assert list(evens.range(20, 10, reverse=True)) == []


def test_range_is_lazy(evens: halodb.Store) -> None:
    it = evens.range()
    assert not isinstance(it, list | tuple)
    assert iter(it) is it
    assert next(it) == (0, "v0")
    assert next(it) == (2, "v2")
    it = evens.range(reverse=True)
    assert next(it) == (398, "v398")


@pytest.fixture
def mixed(open_store: Opener) -> halodb.Store:
    db = open_store()
    keys: list[Any] = [
        "use",
        "user",
        "user:",
        "user:1",
        "user:10",
        "user:2",
        "user:9",
        "user;",
        "users",
        "user:\U0001f600",
        "\x00",
        "",
        "uses",
        b"user:1",
        b"\xff",
        b"\xff\x00",
        b"\xff\xff",
        b"\xfe\xff",
        b"",
        b"\x00",
        ("user",),
        ("user", 1),
        ("user", 2, "x"),
        ("user", 7),
        ("users", 1),
        ("user\x00x",),
        ("use",),
        ("user", -3),
        ("a", 1),
        ("a", 10),
        ("a", 1, 5),
        ("user", ("nested",)),
        7,
        1.5,
    ]
    for k in keys:
        db[k] = repr(k)
    return db


def _keys(it: Any) -> list[Any]:
    return [k for k, _ in it]


def test_prefix_str(mixed: halodb.Store) -> None:
    assert _keys(mixed.range(prefix="user:")) == [
        "user:",
        "user:1",
        "user:10",
        "user:2",
        "user:9",
        "user:\U0001f600",
    ]
    assert _keys(mixed.range(prefix="user:", reverse=True)) == [
        "user:\U0001f600",
        "user:9",
        "user:2",
        "user:10",
        "user:1",
        "user:",
    ]
    assert _keys(mixed.range(prefix="user")) == [
        "user",
        "user:",
        "user:1",
        "user:10",
        "user:2",
        "user:9",
        "user:\U0001f600",
        "user;",
        "users",
    ]
    all_str = sorted(k for k in mixed if isinstance(k, str))
    assert _keys(mixed.range(prefix="")) == all_str
    assert list(mixed.range(prefix="nothing")) == []
    assert mixed.get("user:1") == repr("user:1")


def test_prefix_bytes(mixed: halodb.Store) -> None:
    assert _keys(mixed.range(prefix=b"\xff")) == [b"\xff", b"\xff\x00", b"\xff\xff"]
    assert _keys(mixed.range(prefix=b"\xff\xff")) == [b"\xff\xff"]
    assert _keys(mixed.range(prefix=b"user")) == [b"user:1"]
    assert _keys(mixed.range(prefix=b"")) == sorted(k for k in mixed if isinstance(k, bytes))


def test_prefix_tuple(mixed: halodb.Store) -> None:
    assert _keys(mixed.range(prefix=("user",))) == [
        ("user",),
        ("user", -3),
        ("user", 1),
        ("user", 2, "x"),
        ("user", 7),
        ("user", ("nested",)),
    ]
    assert _keys(mixed.range(prefix=("a", 1))) == [("a", 1), ("a", 1, 5)]
    assert _keys(mixed.range(prefix=("user", 2))) == [("user", 2, "x")]
    assert _keys(mixed.range(prefix=("user", ("nested",)))) == [("user", ("nested",))]
    assert _keys(mixed.range(prefix=("user", ("nest",)))) == []
    assert _keys(mixed.range(prefix=())) == [k for k in mixed if isinstance(k, tuple)]
    assert _keys(mixed.range(prefix=("use",))) == [("use",)]


def test_prefix_combined_with_start_and_stop(mixed: halodb.Store) -> None:
    assert _keys(mixed.range("user:10", "user:9", prefix="user:")) == ["user:10", "user:2"]
    assert _keys(mixed.range("user:10", "user:9", prefix="user:", reverse=True)) == [
        "user:2",
        "user:10",
    ]
    assert _keys(mixed.range("a", "user:2", prefix="user:")) == ["user:", "user:1", "user:10"]
    assert _keys(mixed.range("user:2", "zzz", prefix="user:")) == [
        "user:2",
        "user:9",
        "user:\U0001f600",
    ]
    assert _keys(mixed.range("v", None, prefix="user:")) == []
    assert _keys(mixed.range(None, "t", prefix="user:")) == []
    assert _keys(mixed.range(("user", 0), ("user", 7), prefix=("user",))) == [
        ("user", 1),
        ("user", 2, "x"),
    ]


def test_prefix_rejects_unsupported_types(mixed: halodb.Store) -> None:
    bad: Any  # not a prefix type: the check under test is at run time
    for bad in (7, 1.5, True, [1], {"a": 1}):
        with pytest.raises(TypeError):
            list(mixed.range(prefix=bad))


def test_first_and_last(open_store: Opener) -> None:
    db = open_store()
    assert db.first() is None and db.last() is None
    db[50] = "mid"
    assert db.first() == db.last() == (50, "mid")
    for k in range(100):
        db[k] = k
    assert db.first() == (0, 0) and db.last() == (99, 99)
    db.flush()
    del db[0]
    del db[99]
    assert db.first() == (1, 1) and db.last() == (98, 98)
    db.clear()
    assert db.first() is None and db.last() is None


def test_empty_store_ranges(open_store: Opener) -> None:
    db = open_store()
    assert list(db) == [] and list(reversed(db)) == []
    assert list(db.range()) == [] and list(db.range(reverse=True)) == []
    assert list(db.range(prefix="a")) == [] and list(db.range(1, 5)) == []


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------


def test_batch_commits_at_the_end_of_the_block(open_store: Opener) -> None:
    db = open_store()
    db["gone"] = 1
    with db.batch() as b:
        b["a"] = 1
        b.put("b", [2])
        del b["gone"]
        b.delete("never-there")
        assert len(b) == 4
        assert "a" not in db and "gone" in db  # reads see the store, not the batch
    assert dict(db.items()) == {"a": 1, "b": [2]}
    assert len(db) == 2


def test_batch_last_change_of_a_key_wins(open_store: Opener) -> None:
    db = open_store()
    db["x"] = "old"
    with db.batch() as b:
        b["x"] = "mid"
        del b["x"]
        b["y"] = 1
        b["y"] = 2
        b["z"] = 1
        del b["z"]
    assert dict(db.items()) == {"y": 2}
    assert len(db) == 1


def test_batch_exception_discards_and_propagates(open_store: Opener) -> None:
    db = open_store()
    db["keep"] = 1
    before = wal_bytes(db)

    class Boom(Exception):
        pass

    with pytest.raises(Boom), db.batch() as b:
        for i in range(100):
            b[i] = i
        del b["keep"]
        raise Boom
    assert dict(db.items()) == {"keep": 1}
    assert wal_bytes(db) == before


def test_batch_over_many_partitions_is_all_or_nothing(open_store: Opener) -> None:
    db = open_store()
    with db.batch() as b:
        for i in range(300):
            b[("k", i)] = i
    touched = [p.memtable_entries > 0 for p in db.stats().partitions]
    assert all(touched)
    assert len(db) == 300
    abandon(db)  # the batch is replayed from every partition's log
    db = open_store()
    assert dict(db.items()) == {("k", i): i for i in range(300)}
    db.check()


@pytest.mark.parametrize("how", ["flush", "close"])
@pytest.mark.parametrize("mode", ["normal", "fast"])
def test_batch_stays_atomic_through_a_power_cut_while_flushing(
    tmp_path: Path, mode: DurabilityName, how: str
) -> None:
    """flush() and close() merge partition after partition. Under "normal" and "fast" a power
    cut may lose a batch that was never synced, but never half of it: crash copies taken before
    every fsync they make must each hold all of the batch or none of it."""
    path = tmp_path / "db"
    fs = FaultFS(path)
    db = halodb.open(path, filesystem=fs, durability=mode, **{**SMALL, "partitions": 2})
    db["before"] = 0
    db.flush()
    batch: dict[halodb.Key, int] = {i: i for i in range(50)}
    db.update(batch)
    assert all(p.memtable_entries for p in db.stats().partitions)
    crashes: list[Path] = []

    def power_cut(_: str) -> None:
        crashes.append(tmp_path / f"crash{len(crashes)}")
        fs.crash_copy(crashes[-1])

    fs.before_sync = power_cut
    if how == "flush":
        db.flush()
    else:
        db.close()
    fs.before_sync = None
    db.close()
    assert len(crashes) >= 4
    for crash in crashes:
        with halodb.open(crash) as crashed:
            got = dict(crashed.items())
        assert got in ({"before": 0}, {"before": 0, **batch}), (
            f"{crash.name}: {len(got) - 1} of the batch's {len(batch)} keys survived"
        )


def test_batch_cannot_be_reused(open_store: Opener) -> None:
    db = open_store()
    with db.batch() as b:
        b["a"] = 1
    with pytest.raises(halodb.ProgrammingError):
        b["b"] = 2
    with pytest.raises(halodb.ProgrammingError):
        del b["a"]
    with pytest.raises(halodb.ProgrammingError):
        b.commit()
    b2 = db.batch()
    b2["c"] = 3
    b2.commit()
    with pytest.raises(halodb.ProgrammingError):
        b2.commit()
    b3 = db.batch()
    b3["d"] = 4
    b3.discard()
    with pytest.raises(halodb.ProgrammingError):
        b3["d"] = 4
    with pytest.raises(halodb.ProgrammingError):
        b3.commit()
    assert dict(db.items()) == {"a": 1, "c": 3}


def test_empty_batch_and_explicit_commit_inside_block(open_store: Opener) -> None:
    db = open_store()
    with db.batch():
        pass
    with db.batch() as b:
        b["a"] = 1
        b.commit()
    assert dict(db.items()) == {"a": 1}
    assert len(db) == 1


# ---------------------------------------------------------------------------------------------
# Large values
# ---------------------------------------------------------------------------------------------


def test_sixteen_mib_value_round_trips(tmp_path: Path) -> None:
    big = random.Random(16).randbytes(16 * 1024 * 1024)
    text = "é" * (4 * 1024 * 1024)
    path = tmp_path / "big"
    with halodb.open(path) as db:
        db["big"] = big
        db["text"] = text
        db["small"] = b"s"
        assert db["big"] == big
        db.flush()
        assert db["big"] == big and db["text"] == text
        db.check()
    with halodb.open(path) as db:
        assert db["big"] == big and db["text"] == text and db["small"] == b"s"
        assert list(db) == ["big", "small", "text"]
        db["big"] = b"now small"
        db.flush()
        db.check()
    with halodb.open(path) as db:
        assert db["big"] == b"now small" and db["text"] == text
        del db["text"]
        db.flush()
        db.check()


def test_values_around_the_inline_and_page_limits(open_store: Opener) -> None:
    db = open_store()
    page = 1024
    sizes = sorted(
        {
            0,
            1,
            page // 4 - 2,
            page // 4 - 1,
            page // 4,
            page // 4 + 1,
            page // 4 + 2,
            page - 17,
            page - 16,
            page - 15,
            page,
            2 * (page - 16) - 1,
            2 * (page - 16),
            2 * (page - 16) + 1,
            3 * page,
            20_000,
        }
    )
    model: dict[tuple[str, int], bytes | str] = {}
    for i, size in enumerate(sizes):
        model[("b", size)] = bytes([i % 256]) * size
        model[("s", size)] = chr(0x41 + i % 26) * size
    rng = random.Random(4)
    order = list(model)
    rng.shuffle(order)
    for k in order:
        db[k] = model[k]
    assert dict(db.items()) == model
    db.flush()
    db.check()
    assert dict(db.items()) == model
    # Swap large and small values: overflow chains are freed and reused.
    for (kind, size), _ in list(model.items()):
        model[(kind, size)] = model[(kind, sizes[-1 - sizes.index(size)])]
        db[(kind, size)] = model[(kind, size)]
    db.flush()
    db.check()
    db.close()
    db = open_store()
    assert dict(db.items()) == model
    for k in order[::2]:
        del db[k]
        del model[k]
    db.flush()
    db.check()
    assert dict(db.items()) == model


# ---------------------------------------------------------------------------------------------
# Durability modes, sync, flush
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["full", "normal", "fast"])
def test_durability_modes_end_to_end(open_store: Opener, mode: str) -> None:
    db = open_store(durability=mode)
    assert db.stats().durability == mode
    model: dict[Any, Any] = {}
    rng = random.Random(mode)
    for i in range(1500):
        k = rng.randrange(400)
        if rng.random() < 0.2 and k in model:
            del db[k]
            del model[k]
        else:
            model[k] = [i, "x" * rng.randrange(300)]
            db[k] = model[k]
        if i % 250 == 0:
            with db.batch() as b:
                for j in range(10):
                    b[("batch", i, j)] = j
                    model[("batch", i, j)] = j
    db.sync()
    assert dict(db.items()) == model
    db.close()
    db = open_store(durability=mode)
    assert dict(db.items()) == model
    assert len(db) == len(model)
    db.check()


@pytest.mark.parametrize("mode", ["full", "normal", "fast"])
def test_sync_puts_every_record_in_the_log_file(
    open_store: Opener, tmp_path: Path, mode: str
) -> None:
    db = open_store(durability=mode)
    for i in range(20):
        db[i] = "x"
    db.sync()
    on_disk = sum(os.path.getsize(tmp_path / "db" / fmt.partition_file(p, "wal")) for p in range(4))
    assert on_disk == sum(wal_bytes(db)) > 4 * WAL_HEADER_SIZE


@pytest.mark.parametrize("mode", ["full", "normal", "fast"])
def test_sync_is_a_barrier_against_power_loss(tmp_path: Path, mode: DurabilityName) -> None:
    """Every write acknowledged before sync() survives a power cut right after it (and under
    "full", every acknowledged write survives one at any moment)."""
    path = tmp_path / "db"
    fs = FaultFS(path)
    db = halodb.open(path, filesystem=fs, durability=mode, **SMALL)
    model: dict[Any, Any] = {}
    rng = random.Random(mode)
    for i in range(1200):
        k = rng.randrange(300)
        if rng.random() < 0.2:
            db.pop(k, None)
            model.pop(k, None)
        elif rng.random() < 0.1:
            with db.batch() as b:
                for j in range(5):
                    b[(k, j)] = model[(k, j)] = i
        else:
            db[k] = model[k] = "x" * rng.choice([1, 100, 400])
        if mode == "full" and i % 300 == 299:
            fs.crash_copy(tmp_path / f"full{i}")
            with halodb.open(tmp_path / f"full{i}") as crashed:
                assert dict(crashed.items()) == model, i
    db.sync()
    fs.crash_copy(tmp_path / "crashed")
    with halodb.open(tmp_path / "crashed") as crashed:
        assert dict(crashed.items()) == model
        crashed.check()
    db.close()


def test_flush_empties_memtables_and_logs(open_store: Opener, tmp_path: Path) -> None:
    db = open_store()
    fill(db, 100)
    del db[3]
    db.clear()
    db.update({i: i for i in range(50)})
    assert any(p.memtable_entries for p in db.stats().partitions)
    db.flush()
    stats = db.stats()
    for p in stats.partitions:
        assert p.memtable_entries == 0
        assert p.memtable_bytes == 0
        assert p.wal_bytes == WAL_HEADER_SIZE
        logs = [
            tmp_path / "db" / fmt.partition_file(p.index, kind)
            for kind in ("wal", "wal2")
            if (tmp_path / "db" / fmt.partition_file(p.index, kind)).exists()
        ]
        assert [os.path.getsize(log) for log in logs] == [WAL_HEADER_SIZE]  # one log, empty
        assert p.frozen_entries == 0
    assert sum(p.tree_keys for p in stats.partitions) == 50
    db.flush()  # again, with nothing to do
    assert wal_bytes(db) == [WAL_HEADER_SIZE] * 4
    assert dict(db.items()) == {i: i for i in range(50)}


def test_fast_buffer_reaches_the_log_on_close(open_store: Opener) -> None:
    db = open_store(durability="fast")
    db["a"] = 1
    db.close()
    db = open_store(durability="normal")
    assert db["a"] == 1


# ---------------------------------------------------------------------------------------------
# stats() and check()
# ---------------------------------------------------------------------------------------------


def test_stats_fields(open_store: Opener, tmp_path: Path) -> None:
    db = open_store(background=False)  # (the fill's merges done when it returns)
    empty = db.stats()
    assert isinstance(empty, halodb.StoreStats)
    assert empty.keys == 0 and empty.page_size == 1024 and empty.durability == "normal"
    assert empty.path == os.path.abspath(tmp_path / "db") == db.path
    assert isinstance(empty.last_recovery_seconds, float) and empty.last_recovery_seconds >= 0
    model = fill(db, 3000, size=30)
    for i in range(0, 3000, 4):
        del db[i]
        del model[i]
    stats = db.stats()
    assert stats.keys == len(db) == len(model)
    assert len(stats.partitions) == 4
    assert [p.index for p in stats.partitions] == [0, 1, 2, 3]
    for p in stats.partitions:
        assert isinstance(p, halodb.PartitionStats)
        for name in (
            "keys",
            "memtable_entries",
            "memtable_bytes",
            "wal_bytes",
            "tree_height",
            "tree_keys",
            "pages",
            "free_pages",
            "cache_hits",
            "cache_misses",
            "bloom_negatives",
            "bloom_rebuilds",
            "flushes",
        ):
            value = getattr(p, name)
            assert type(value) is int and value >= 0, (name, value)
        assert isinstance(p.recovery_seconds, float)
        assert p.flushes >= 1
        assert p.tree_height >= 2
        assert p.pages > 2 + p.free_pages
        assert p.wal_bytes >= WAL_HEADER_SIZE
        assert p.keys > 0
    assert sum(p.keys for p in stats.partitions) == stats.keys
    db.flush()
    after = db.stats()
    for p, q in zip(stats.partitions, after.partitions, strict=True):
        assert q.tree_keys == q.keys == p.keys
        assert q.flushes == p.flushes + 1
    absent_before = sum(p.bloom_negatives for p in after.partitions)
    for i in range(10_000, 10_200):
        assert db.get(i) is None
    absent_after = sum(p.bloom_negatives for p in db.stats().partitions)
    assert absent_after - absent_before > 150  # the bloom filters answer for most absent keys


def test_check_reports_and_passes_after_many_mutations(open_store: Opener) -> None:
    db = open_store()
    rng = random.Random(7)
    model: dict[Any, Any] = {}
    for i in range(4000):
        k = rng.randrange(800)
        roll = rng.random()
        if roll < 0.25 and k in model:
            del db[k]
            del model[k]
        elif roll < 0.3:
            with db.batch() as b:
                for j in range(rng.randrange(1, 8)):
                    kk = rng.randrange(800)
                    b[kk] = j
                    model[kk] = j
        else:
            model[k] = "x" * rng.choice([1, 10, 100, 300, 2000])
            db[k] = model[k]
        if i == 2000:
            reports = db.check()
    reports = db.check()
    assert len(reports) == 4
    db.flush()
    reports = db.check()
    assert sum(r.keys for r in reports) == len(db) == len(model)
    for r in reports:
        assert r.height >= 2
        assert len(r.nodes_per_level) == r.height and r.nodes_per_level[0] == 1
        assert r.page_count >= 2 + sum(r.nodes_per_level) + r.overflow_pages + r.free_pages
        assert 0 < r.fill_factor(1024) <= 1
    assert dict(db.items()) == model


# ---------------------------------------------------------------------------------------------
# Lifecycle
# ---------------------------------------------------------------------------------------------


def test_close_is_idempotent_and_with_closes(tmp_path: Path) -> None:
    with halodb.open(tmp_path / "s") as db:
        db["a"] = 1
        assert not db.closed
    assert db.closed
    db.close()
    db.close()
    assert "closed" in repr(db)
    with halodb.open(tmp_path / "s") as db:
        assert db["a"] == 1


USES_AFTER_CLOSE: list[tuple[str, Callable[[halodb.Store], Any]]] = [
    ("getitem", lambda db: db["a"]),
    ("get", lambda db: db.get("a")),
    ("setitem", lambda db: db.__setitem__("a", 2)),
    ("delitem", lambda db: db.__delitem__("a")),
    ("contains", lambda db: "a" in db),
    ("len", len),
    ("iter", list),
    ("reversed", lambda db: list(reversed(db))),
    ("keys", lambda db: list(db.keys())),
    ("values", lambda db: list(db.values())),
    ("items", lambda db: list(db.items())),
    ("range", lambda db: list(db.range())),
    ("range-prefix", lambda db: list(db.range(prefix="a"))),
    ("first", lambda db: db.first()),
    ("last", lambda db: db.last()),
    ("pop", lambda db: db.pop("a")),
    ("popitem", lambda db: db.popitem()),
    ("setdefault", lambda db: db.setdefault("z", 1)),
    ("update", lambda db: db.update({"z": 1})),
    ("clear", lambda db: db.clear()),
    ("batch", lambda db: db.batch()),
    ("stats", lambda db: db.stats()),
    ("check", lambda db: db.check()),
    ("flush", lambda db: db.flush()),
    ("sync", lambda db: db.sync()),
    ("eq", lambda db: db == {"a": 1}),
]


@pytest.mark.parametrize(("name", "use"), USES_AFTER_CLOSE, ids=[n for n, _ in USES_AFTER_CLOSE])
def test_any_use_after_close_raises_programming_error(
    open_store: Opener, name: str, use: Callable[[halodb.Store], Any]
) -> None:
    db = open_store()
    db["a"] = 1
    db.close()
    with pytest.raises(halodb.ProgrammingError):
        use(db)


def test_batch_opened_before_close_cannot_commit(open_store: Opener) -> None:
    db = open_store()
    b = db.batch()
    b["a"] = 1
    db.close()
    with pytest.raises(halodb.ProgrammingError):
        b.commit()
    db = open_store()
    assert "a" not in db


@pytest.mark.parametrize(
    "make",
    [
        iter,
        reversed,
        lambda db: iter(db.items()),
        lambda db: iter(db.values()),
        lambda db: db.range(),
        lambda db: db.range(reverse=True),
    ],
    ids=["iter", "reversed", "items", "values", "range", "range-reverse"],
)
def test_iterator_started_before_close_raises_on_next_chunk(
    open_store: Opener, make: Callable[[halodb.Store], Any]
) -> None:
    db = open_store()
    fill(db, 5000, size=2)
    it = make(db)
    next(it)
    db.close()
    with pytest.raises(halodb.ProgrammingError):
        for _ in it:
            pass


def test_second_open_in_the_same_process_fails_at_once(open_store: Opener, tmp_path: Path) -> None:
    db = open_store()
    db["a"] = 1
    opens: list[dict[str, Any]] = [{}, {"readonly": True}]
    for options in opens:
        with pytest.raises(halodb.OperationalError):
            halodb.open(tmp_path / "db", **options)
    with pytest.raises(halodb.OperationalError):
        halodb.open(str(tmp_path / "db") + "/")
    assert db["a"] == 1  # the failed opens did not disturb the open store
    db["b"] = 2
    db.close()
    with halodb.open(tmp_path / "db") as again:
        assert dict(again.items()) == {"a": 1, "b": 2}


def _open_in_child(path: Path, readonly: bool = False) -> int:
    code = textwrap.dedent(
        f"""
        import sys, halodb
        try:
            db = halodb.open({str(path)!r}, readonly={readonly!r})
        except halodb.OperationalError:
            sys.exit(3)
        db.close()
        sys.exit(0)
        """
    )
    return subprocess.run([sys.executable, "-c", code], timeout=60, check=False).returncode


def test_open_in_another_process_fails_while_open_for_writing(
    open_store: Opener, tmp_path: Path
) -> None:
    db = open_store()
    db["a"] = 1
    assert _open_in_child(tmp_path / "db") == 3
    assert _open_in_child(tmp_path / "db", readonly=True) == 3
    db.close()
    assert _open_in_child(tmp_path / "db") == 0


def test_readonly_store_reads_refuses_writes_and_changes_no_byte(tmp_path: Path) -> None:
    path = tmp_path / "ro"
    db = halodb.open(path, **SMALL)
    model = fill(db, 2000)
    with db.batch() as b:
        for i in range(10):
            b[("b", i)] = i
            model[("b", i)] = i
    db["unflushed"] = "in the log only"
    model["unflushed"] = "in the log only"
    abandon(db)  # leaves log records for the read-only open to replay
    before = snapshot(path)
    assert any(name.endswith(".wal") for name in before)

    db = halodb.open(path, readonly=True)
    assert db.readonly and "read-only" in repr(db)
    assert len(db) == len(model)
    assert dict(db.items()) == model
    assert db["unflushed"] == "in the log only"
    assert db.get(5) == model[5] and 5 in db and 99_999 not in db
    assert list(db.range(10, 13)) == [(k, model[k]) for k in (10, 11, 12)]
    assert db.first() == (0, model[0])
    assert next(reversed(db)) == ("b", 9)
    assert db.stats().keys == len(model)
    db.check()
    db.sync()
    writes: list[Callable[[], Any]] = [
        lambda: db.__setitem__("x", 1),
        lambda: db.__setitem__(5, "new"),
        lambda: db.__delitem__(5),
        lambda: db.pop(5),
        db.popitem,
        lambda: db.setdefault("x", 1),
        lambda: db.update({"x": 1}),
        db.clear,
        db.flush,
    ]
    for write in writes:
        with pytest.raises(halodb.ProgrammingError):
            write()
    with pytest.raises(halodb.ProgrammingError), db.batch() as b:
        b["x"] = 1
    assert dict(db.items()) == model
    db.close()
    assert snapshot(path) == before
    with halodb.open(path) as db:  # and a writer may open it afterwards
        assert dict(db.items()) == model


def test_two_readonly_opens_may_share_a_store(tmp_path: Path) -> None:
    with halodb.open(tmp_path / "s") as db:
        db["a"] = 1
    with (
        halodb.open(tmp_path / "s", readonly=True) as r1,
        halodb.open(tmp_path / "s", readonly=True) as r2,
    ):
        assert r1["a"] == r2["a"] == 1
        with pytest.raises(halodb.OperationalError):
            halodb.open(tmp_path / "s")


def test_readonly_open_of_a_missing_store(tmp_path: Path) -> None:
    with pytest.raises(halodb.InterfaceError):
        halodb.open(tmp_path / "missing", readonly=True)
    assert not (tmp_path / "missing").exists()
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(halodb.InterfaceError):
        halodb.open(tmp_path / "emptydir", readonly=True)
    assert list((tmp_path / "emptydir").iterdir()) == []
    with pytest.raises(halodb.InterfaceError):
        halodb.open(tmp_path / "missing2", create=False)
    assert not (tmp_path / "missing2").exists()


def test_opening_a_foreign_directory_or_a_file(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    before = snapshot(foreign)
    with pytest.raises(halodb.InterfaceError):
        halodb.open(foreign)
    assert snapshot(foreign) == before
    assert sorted(os.listdir(foreign)) == ["notes.txt"]
    a_file = tmp_path / "file"
    a_file.write_bytes(b"data")
    with pytest.raises(halodb.InterfaceError):
        halodb.open(a_file)
    with pytest.raises(halodb.InterfaceError):
        halodb.open(a_file, readonly=True)
    assert a_file.read_bytes() == b"data"


def test_open_creates_only_the_stores_own_directory(tmp_path: Path) -> None:
    """Like mkdir without -p (issue 10): a missing parent is named, and nothing is created."""
    with pytest.raises(halodb.InterfaceError, match=r"/a/b: no such directory"):
        halodb.open(tmp_path / "a" / "b" / "c")
    assert list(tmp_path.iterdir()) == []
    with halodb.open(tmp_path / "c") as db:
        db["x"] = 1
    with halodb.open(os.fsencode(tmp_path / "c")) as db:  # bytes paths work too
        assert db["x"] == 1


def _patch_manifest_version(path: Path, version: int) -> None:
    manifest = path / fmt.MANIFEST_NAME
    data = manifest.read_bytes()
    fields = list(fmt.MANIFEST.unpack(data))
    fields[1] = version
    body = fmt.MANIFEST.pack(*fields)
    manifest.write_bytes(body[:-4] + fmt.U32.pack(fmt.crc(body[:-4])))


def test_newer_format_version_is_not_supported(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with halodb.open(path) as db:
        db["a"] = 1
    _patch_manifest_version(path, fmt.FORMAT_VERSION + 1)
    # {} twice: the failed open released the lock
    opens: list[dict[str, Any]] = [{}, {"readonly": True}, {}]
    for options in opens:
        with pytest.raises(halodb.NotSupportedError) as info:
            halodb.open(path, **options)
        assert str(fmt.FORMAT_VERSION + 1) in str(info.value)
    _patch_manifest_version(path, fmt.FORMAT_VERSION)
    with halodb.open(path) as db:
        assert db["a"] == 1


@pytest.mark.parametrize(
    "options",
    [
        {"durability": "paranoid"},
        {"durability": 1},
        {"durability": None},
        {"page_size": 1000},
        {"page_size": 512},
        {"page_size": 131072},
        {"page_size": "4096"},
        {"page_size": 4096.0},
        {"partitions": 0},
        {"partitions": 257},
        {"partitions": -1},
        {"partitions": True},
        {"partitions": 2.0},
        {"memtable_size": 0},
        {"memtable_size": -5},
        {"memtable_size": "big"},
        {"cache_size": -1},
        {"bloom_bits_per_key": 0},
        {"fast_buffer_size": 1},
        {"readonly": "yes"},
        {"readonly": 1},
        {"create": None},
    ],
    ids=stable_id,
)
def test_bad_options_raise_interface_error_before_touching_disk(
    tmp_path: Path, options: dict[str, Any]
) -> None:
    with pytest.raises(halodb.InterfaceError):
        halodb.open(tmp_path / "s", **options)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("options", [{"bogus": 1}, {"page_sizes": 1024}], ids=stable_id)
def test_unknown_options_raise_type_error_before_touching_disk(
    tmp_path: Path, options: dict[str, Any]
) -> None:
    """open() has a typed keyword signature: mypy and IDEs catch these; at run time Python
    refuses them."""
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        halodb.open(tmp_path / "s", **options)
    assert not (tmp_path / "s").exists()


def test_durability_accepts_enum_and_any_case(tmp_path: Path) -> None:
    with halodb.open(tmp_path / "a", durability=halodb.Durability.FAST) as db:
        assert db.stats().durability == "fast"
    upper: Any = "FULL"  # not a declared name: any case is accepted at run time
    with halodb.open(tmp_path / "b", durability=upper) as db:
        assert db.stats().durability == "full"


def test_fixed_options_must_match_the_existing_store(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with halodb.open(path, partitions=2, page_size=2048) as db:
        db["a"] = 1
    with pytest.raises(halodb.InterfaceError):
        halodb.open(path, partitions=4)
    with pytest.raises(halodb.InterfaceError):
        halodb.open(path, partitions=1, readonly=True)
    with pytest.raises(halodb.InterfaceError):
        halodb.open(path, page_size=4096)
    with halodb.open(path, partitions=2) as db:  # the failed opens released the lock
        assert db["a"] == 1
        assert len(db.stats().partitions) == 2 and db.stats().page_size == 2048
    with halodb.open(path) as db:
        assert len(db.stats().partitions) == 2


def test_path_must_be_a_path(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        halodb.open(5)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Exceptions
# ---------------------------------------------------------------------------------------------

ERROR_CLASSES = [
    obj
    for _, obj in inspect.getmembers(errors, inspect.isclass)
    if issubclass(obj, BaseException) and obj.__module__ == errors.__name__
]


def test_every_error_class_is_exported() -> None:
    assert len(ERROR_CLASSES) >= 10
    for cls in ERROR_CLASSES:
        assert getattr(halodb, cls.__name__) is cls
        assert cls.__name__ in halodb.__all__
        assert issubclass(cls, halodb.Error)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_error_pickles(cls: type[Exception]) -> None:
    exc = cls("what failed, where; a hint")
    again = pickle.loads(pickle.dumps(exc))
    assert type(again) is cls
    assert again.args == exc.args and str(again) == str(exc)


def test_raised_errors_pickle(tmp_path: Path) -> None:
    with halodb.open(tmp_path / "s") as db:
        try:
            halodb.open(tmp_path / "s")
        except halodb.OperationalError as exc:
            again = pickle.loads(pickle.dumps(exc))
            assert type(again) is halodb.OperationalError and str(again) == str(exc)
            assert str(tmp_path / "s") in str(exc)
        else:
            pytest.fail("second open succeeded")
        assert not db.closed


# ---------------------------------------------------------------------------------------------
# Regressions: tree shapes that once made a flushed store unreadable
# ---------------------------------------------------------------------------------------------


def test_long_keys_keep_the_tree_readable_after_flush(tmp_path: Path) -> None:
    """Internal levels of many long separator keys must never produce a one-child node."""
    for n in range(60, 90):
        path = tmp_path / f"s{n}"
        keys = [i.to_bytes(2, "big") + b"k" * 125 for i in range(n)]
        with halodb.open(path, page_size=1024, partitions=1) as db:
            for k in keys:
                db[k] = b"v" * 250
            db.flush()
            db.check()
        with halodb.open(path) as db:
            assert list(db) == keys, n
            assert db[keys[-1]] == b"v" * 250


def test_deleting_most_of_a_subtree_keeps_the_tree_readable(tmp_path: Path) -> None:
    """Deletes that leave an internal node with a single child must not corrupt the tree."""
    windows: list[tuple[int, ...]] = [
        (1024, 2000),
        (1008, 2000),
        (10, 990),
        (2000, 4990),
        (3000, 3990),
    ]
    rng = random.Random(5)
    windows += [tuple(sorted(rng.sample(range(5000), 2))) for _ in range(5)]
    for n, (lo, hi) in enumerate(windows):
        path = tmp_path / f"s{n}"
        with halodb.open(path, page_size=1024, partitions=1) as db:
            for i in range(5000):
                db[i] = "v" * 50
            db.flush()
            for k in range(lo, hi):
                del db[k]
            db.flush()
            db.check()
        with halodb.open(path) as db:
            expected = [k for k in range(5000) if not lo <= k < hi]
            assert list(db) == expected, (lo, hi)
            assert len(db) == len(expected)


def test_deleting_all_but_one_leaf_then_flushing(tmp_path: Path) -> None:
    """A two-level tree shrinking to a single leaf must flush (and close) cleanly."""
    path = tmp_path / "s"
    with halodb.open(path, page_size=1024, partitions=1) as db:
        for i in range(100):
            db[i] = "v" * 100
        db.flush()
        assert db.stats().partitions[0].tree_height >= 2
        for i in range(1, 100):
            del db[i]
        db.flush()
        db.check()
        assert list(db.items()) == [(0, "v" * 100)]
    with halodb.open(path) as db:
        assert list(db.items()) == [(0, "v" * 100)]


class _InterruptingFile(File):
    armed = False

    def sync(self) -> None:
        if _InterruptingFile.armed:
            _InterruptingFile.armed = False
            raise KeyboardInterrupt
        super().sync()


class _InterruptingFileSystem(FileSystem):
    """Raises KeyboardInterrupt (a Ctrl-C) from the next fsync once armed."""

    def open(self, path: str, *, write: bool = False, create: bool = False) -> File:
        handle = super().open(path, write=write, create=create)
        return _InterruptingFile(self, handle.path, handle.fd)


def test_close_interrupted_during_its_flush_still_releases_the_store(tmp_path: Path) -> None:
    """close() marks the store closed first, so it cannot be retried: whatever interrupts its
    flush, it must still close every file and release the lock, or the path stays locked for
    the life of the process."""
    path = tmp_path / "s"
    db = halodb.open(path, filesystem=_InterruptingFileSystem(), **SMALL)
    db.update({i: i for i in range(100)})
    _InterruptingFile.armed = True
    try:
        with pytest.raises(KeyboardInterrupt):
            db.close()
    finally:
        _InterruptingFile.armed = False
    assert db.closed
    db.close()  # idempotent, even now
    with halodb.open(path) as again:  # no OperationalError: the lock was released
        assert dict(again.items()) == {i: i for i in range(100)}

"""Unit tests for halodb.values: exact round trips, strict rejection, damage -> CorruptionError."""

from __future__ import annotations

import collections
import contextlib
import doctest
import enum
import math
import pickle
import struct
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from halodb import values
from halodb.errors import CorruptionError, DataError
from halodb.values import (
    MAX_DEPTH,
    MAX_INT_DIGITS,
    DefaultCodec,
    PickleCodec,
    ValueCodec,
)

CODEC = DefaultCodec()

any_text = st.text(alphabet=st.characters(exclude_categories=()))
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**300), max_value=10**300),
    st.floats(allow_nan=False),
    st.sampled_from([-0.0, math.inf, -math.inf, 5e-324]),
    any_text,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(any_text, inner, max_size=5),
    ),
    max_leaves=30,
)


def same(a: Any, b: Any) -> bool:
    """Equal, of the same types, dict keys in the same order, -0.0 distinct from 0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack(">d", a) == struct.pack(">d", b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def test_doctests_run() -> None:
    assert doctest.testmod(values).failed == 0


# --------------------------------------------------------------------------- DefaultCodec


def test_name_and_protocol() -> None:
    assert CODEC.name == "halo1"
    assert isinstance(CODEC, ValueCodec)
    assert isinstance(PickleCodec(), ValueCodec)


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (b"", b"\x00"),
        (b"\x00\xff", b"\x00\x00\xff"),
        ("", b"\x01"),
        ("\u00e9\ud800", b"\x01\xc3\xa9\xed\xa0\x80"),
        (None, b"\x02null"),
        (True, b"\x02true"),
        (-3, b"\x02-3"),
        (1.5, b"\x021.5"),
        (-0.0, b"\x02-0.0"),
        (math.inf, b"\x02Infinity"),
        ([1, "\u00e9"], b'\x02[1,"\xc3\xa9"]'),
        ({"b": 1, "a": [None]}, b'\x02{"b":1,"a":[null]}'),
    ],
)
def test_golden_encoding(value: object, encoded: bytes) -> None:
    assert CODEC.encode(value) == encoded
    assert same(CODEC.decode(encoded), value)


@given(st.binary())
def test_bytes_round_trip(value: bytes) -> None:
    back = CODEC.decode(CODEC.encode(value))
    assert type(back) is bytes
    assert back == value


@given(any_text)
def test_str_round_trip_including_surrogates(value: str) -> None:
    assert same(CODEC.decode(CODEC.encode(value)), value)


@given(json_values)
def test_json_values_round_trip_exactly(value: Any) -> None:
    assert same(CODEC.decode(CODEC.encode(value)), value)


def test_nan_round_trips_as_nan() -> None:
    back = CODEC.decode(CODEC.encode([math.nan]))
    assert isinstance(back, list)
    assert math.isnan(back[0])


def test_bytearray_and_memoryview_are_stored_as_bytes() -> None:
    for raw in (bytearray(b"ab"), memoryview(b"ab")):
        assert CODEC.encode(raw) == CODEC.encode(b"ab")
        assert type(CODEC.decode(CODEC.encode(raw))) is bytes


def test_decode_accepts_memoryview() -> None:
    assert CODEC.decode(memoryview(CODEC.encode(b"ab"))) == b"ab"  # type: ignore[arg-type]


def test_shared_references_are_fine() -> None:
    shared = [1, 2]
    assert CODEC.decode(CODEC.encode({"a": shared, "b": shared})) == {"a": [1, 2], "b": [1, 2]}


class Color(enum.IntEnum):
    RED = 1


class MyStr(str):
    __slots__ = ()


@pytest.mark.parametrize(
    ("value", "where", "what"),
    [
        ((1, 2), "value", "tuple"),
        ({1, 2}, "value", "set"),
        (frozenset(), "value", "frozenset"),
        (object(), "value", "object"),
        (1j, "value", "complex"),
        (Color.RED, "value", "Color"),
        (MyStr("x"), "value", "MyStr"),
        (collections.OrderedDict(a=1), "value", "OrderedDict"),
        ([b"x"], "value[0]", "bytes"),
        ({"a": [1, 2, (3,)]}, "value['a'][2]", "tuple"),
        ({"a": {"b": bytearray()}}, "value['a']['b']", "bytearray"),
        ({1: "x"}, "value", "dict key 1 of type int"),
        ({"a": {None: 1}}, "value['a']", "dict key None of type NoneType"),
        ([[{"k": {2.5}}]], "value[0][0]['k']", "set"),
    ],
)
def test_values_that_would_not_round_trip_raise_type_error(
    value: object, where: str, what: str
) -> None:
    with pytest.raises(TypeError) as info:
        CODEC.encode(value)
    message = str(info.value)
    assert message.startswith(f"{where}: ")
    assert what in message


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_depth_limit() -> None:
    assert CODEC.decode(CODEC.encode(nested(MAX_DEPTH))) == nested(MAX_DEPTH)
    with pytest.raises(DataError, match="nested deeper"):
        CODEC.encode(nested(MAX_DEPTH + 1))
    with pytest.raises(DataError):
        CODEC.encode(nested(10_000))


def test_cycle_is_a_data_error() -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(DataError):
        CODEC.encode(cycle)
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(DataError):
        CODEC.encode(loop)


def test_int_digit_limit() -> None:
    biggest = 10**MAX_INT_DIGITS - 1
    assert CODEC.decode(CODEC.encode([biggest, -biggest])) == [biggest, -biggest]
    with pytest.raises(DataError, match="decimal digits"):
        CODEC.encode(10**MAX_INT_DIGITS)
    with pytest.raises(DataError, match=r"value\[1\]"):
        CODEC.encode([0, -(10**MAX_INT_DIGITS)])


def test_int_beyond_this_process_lowered_limit_is_a_data_error_not_corruption() -> None:
    data = b"\x02" + b"1" * 2000  # halo1 writes ints of up to MAX_INT_DIGITS digits
    old = sys.get_int_max_str_digits()
    try:
        sys.set_int_max_str_digits(1000)
        with pytest.raises(DataError, match="set_int_max_str_digits"):
            CODEC.decode(data)
    finally:
        sys.set_int_max_str_digits(old)


def test_int_longer_than_halo1_ever_writes_is_corruption() -> None:
    data = b"\x02" + b"1" * (MAX_INT_DIGITS + 1)
    old = sys.get_int_max_str_digits()
    try:
        for limit in (MAX_INT_DIGITS, MAX_INT_DIGITS + 10):
            sys.set_int_max_str_digits(limit)
            with pytest.raises(CorruptionError, match="never writes"):
                CODEC.decode(b"\x02" + b"1" * (limit + 1))
        sys.set_int_max_str_digits(MAX_INT_DIGITS)
        with pytest.raises(CorruptionError):
            CODEC.decode(data)
    finally:
        sys.set_int_max_str_digits(old)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x03",
        b"\xff abc",
        b"\x01\xff",
        b"\x01\xc3",
        b"\x02",
        b"\x02{",
        b"\x02[1,]",
        b"\x02\xff",
        b'\x02{"a":1}x',
        b"\x02" + b"[" * 100_000,
    ],
)
def test_malformed_data_raises_corruption_error(data: bytes) -> None:
    with pytest.raises(CorruptionError):
        CODEC.decode(data)


@given(st.binary(max_size=64))
def test_decode_arbitrary_bytes_raises_only_corruption_error(data: bytes) -> None:
    with contextlib.suppress(CorruptionError):
        CODEC.decode(data)


# --------------------------------------------------------------------------- PickleCodec


def test_pickle_codec_round_trips_what_json_cannot() -> None:
    codec = PickleCodec()
    assert codec.name == "pickle"
    value = {(1, 2): {3, 4}, "c": Color.RED, "b": b"x", "o": collections.OrderedDict(a=1)}
    back = codec.decode(codec.encode(value))
    assert back == value
    assert type(back) is dict
    assert codec.encode(value)[1] == pickle.HIGHEST_PROTOCOL


def test_pickle_codec_rejects_unpicklable_with_type_error() -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        PickleCodec().encode(lambda: 1)


@pytest.mark.parametrize("data", [b"", b"\x80", b"garbage", pickle.dumps([1, 2])[:-3]])
def test_pickle_codec_damage_raises_corruption_error(data: bytes) -> None:
    with pytest.raises(CorruptionError):
        PickleCodec().decode(data)


# --------------------------------------------------------------------------- registry

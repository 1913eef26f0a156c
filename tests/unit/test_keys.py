"""Unit tests for halodb.keys: round trip, order, prefixes, canonical decoding, errors."""

from __future__ import annotations

import doctest
import math
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from halodb import keys
from halodb.errors import CorruptionError, DataError
from halodb.keys import (
    MAX_DEPTH,
    Key,
    decode_key,
    encode_key,
    encode_prefix,
    prefix_range,
    prefix_upper_bound,
)
from support.stores import stable_id

# --------------------------------------------------------------------------- strategies

BIG = 2**5000

ints = st.one_of(
    st.integers(min_value=-70000, max_value=70000),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.integers(min_value=-BIG, max_value=BIG),
    st.sampled_from([0, 1, -1, 255, 256, -255, -256, 2**63, -(2**63), BIG, -BIG]),
)
floats = st.one_of(
    st.floats(allow_nan=False),
    st.sampled_from([0.0, -0.0, math.inf, -math.inf, 5e-324, -5e-324, 1.0, -1.0]),
)
# Every code point, lone surrogates included, with 0x00 and 0xFF-ish characters favoured.
chars = st.one_of(
    st.sampled_from(["\x00", "\x01", "\xff", "a", "\ud800", "\udfff", "\U0010ffff"]),
    st.characters(exclude_categories=()),
)
texts = st.text(alphabet=chars, max_size=12)
blobs = st.one_of(
    st.binary(max_size=12),
    st.lists(st.sampled_from([b"\x00", b"\xff", b"\x01", b"a"]), max_size=6).map(b"".join),
)

SCALARS: dict[str, st.SearchStrategy[Any]] = {
    "int": ints,
    "float": floats,
    "str": texts,
    "bytes": blobs,
}

# A shape is a scalar type name or a list of shapes (a tuple whose i-th element has shape i).
shapes = st.recursive(
    st.sampled_from(sorted(SCALARS)),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=8,
)


def key_of_shape(shape: Any) -> st.SearchStrategy[Any]:
    """Keys of ``shape``; a tuple shape yields tuples of any prefix length of it."""
    if isinstance(shape, str):
        return SCALARS[shape]
    elements = [key_of_shape(s) for s in shape]
    return st.integers(0, len(shape)).flatmap(lambda n: st.tuples(*elements[:n]))


any_keys = shapes.flatmap(key_of_shape)


@st.composite
def same_shape_pairs(draw: st.DrawFn) -> tuple[Any, Any]:
    shape = draw(shapes)
    return draw(key_of_shape(shape)), draw(key_of_shape(shape))


def sign(x: int) -> int:
    return (x > 0) - (x < 0)


def cmp(a: Any, b: Any) -> int:
    return sign((a > b) - (a < b))


def same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (0.0 is not -0.0 here)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return struct.pack(">d", a) == struct.pack(">d", b)
    return bool(a == b)


def normalised(key: Any) -> Any:
    """``key`` as decode_key gives it back: -0.0 becomes 0.0, bytes-likes become bytes."""
    if isinstance(key, tuple):
        return tuple(normalised(k) for k in key)
    if isinstance(key, float) and key == 0.0:
        return 0.0
    if isinstance(key, bytearray | memoryview):
        return bytes(key)
    return key


# --------------------------------------------------------------------------- golden bytes

GOLDEN: list[tuple[Key, bytes]] = [
    (0, b"\x10\x01\x00\x00"),
    (1, b"\x10\x01\x00\x01\x01"),
    (255, b"\x10\x01\x00\x01\xff"),
    (256, b"\x10\x01\x00\x02\x01\x00"),
    (-1, b"\x10\x00\xff\xfe\xfe"),
    (-256, b"\x10\x00\xff\xfd\xfe\xff"),
    (1.0, b"\x20\xbf\xf0\x00\x00\x00\x00\x00\x00"),
    (-1.0, b"\x20\x40\x0f\xff\xff\xff\xff\xff\xff"),
    (0.0, b"\x20\x80\x00\x00\x00\x00\x00\x00\x00"),
    (math.inf, b"\x20\xff\xf0\x00\x00\x00\x00\x00\x00"),
    (-math.inf, b"\x20\x00\x0f\xff\xff\xff\xff\xff\xff"),
    ("", b"\x30"),
    ("a\x00", b"\x30a\x00"),
    ("\u00e9", b"\x30\xc3\xa9"),
    ("\ud800", b"\x30\xed\xa0\x80"),
    (b"", b"\x40"),
    (b"a\x00\xff", b"\x40a\x00\xff"),
    ((), b"\x50"),
    (((),), b"\x50\x50\x00"),
    (("a", b"\x00", 1), b"\x50\x30a\x00\x40\x00\xff\x00\x10\x01\x00\x01\x01"),
    (("a\x00b",), b"\x50\x30a\x00\xffb\x00"),
    ((1.0, ("x",)), b"\x50\x20\xbf\xf0\x00\x00\x00\x00\x00\x00\x50\x30x\x00\x00"),
]


@pytest.mark.parametrize(("key", "encoded"), GOLDEN, ids=[repr(k) for k, _ in GOLDEN])
def test_golden_encoding(key: Key, encoded: bytes) -> None:
    assert encode_key(key) == encoded
    assert same(decode_key(encoded), key)


def test_doctests_run() -> None:
    assert doctest.testmod(keys).failed == 0


# --------------------------------------------------------------------------- round trip


@given(any_keys)
def test_round_trip(key: Any) -> None:
    assert same(decode_key(encode_key(key)), normalised(key))


@given(ints)
def test_int_round_trip_including_huge(n: int) -> None:
    assert decode_key(encode_key(n)) == n
    assert decode_key(encode_key((n, n))) == (n, n)


@given(texts)
def test_str_round_trip_with_nul_and_surrogates(s: str) -> None:
    assert decode_key(encode_key(s)) == s
    assert decode_key(encode_key((s, s))) == (s, s)


def test_negative_zero_is_the_same_key_as_zero() -> None:
    assert encode_key(-0.0) == encode_key(0.0)
    assert encode_key((-0.0, "a")) == encode_key((0.0, "a"))
    back = decode_key(encode_key(-0.0))
    assert isinstance(back, float)
    assert math.copysign(1.0, back) == 1.0


def test_bytearray_and_memoryview_come_back_as_bytes() -> None:
    for raw in (bytearray(b"a\x00"), memoryview(b"a\x00")):
        assert encode_key(raw) == encode_key(b"a\x00")
        assert type(decode_key(encode_key(raw))) is bytes
        assert encode_key(("k", raw)) == encode_key(("k", b"a\x00"))
        assert decode_key(encode_key(("k", raw))) == ("k", b"a\x00")


def test_subclasses_are_stored_as_their_base_type() -> None:
    class S(str):
        pass

    class N(int):
        pass

    assert encode_key(S("x")) == encode_key("x")
    assert encode_key(N(5)) == encode_key(5)
    assert encode_key((S("x"), N(5))) == encode_key(("x", 5))
    assert type(decode_key(encode_key(S("x")))) is str


def test_decode_accepts_bytes_like() -> None:
    data = encode_key(("a", 1))
    assert decode_key(bytearray(data)) == ("a", 1)
    assert decode_key(memoryview(data)) == ("a", 1)


def test_nesting_up_to_the_limit_round_trips() -> None:
    key: Any = ()
    for _ in range(MAX_DEPTH - 1):
        key = (key,)
    assert decode_key(encode_key(key)) == key


# --------------------------------------------------------------------------- order


@given(same_shape_pairs())
def test_order_matches_python_for_keys_of_one_shape(pair: tuple[Any, Any]) -> None:
    a, b = pair
    assert cmp(a, b) == cmp(encode_key(a), encode_key(b))


@given(st.lists(ints, min_size=2, max_size=20))
def test_ints_sort_like_python(ns: list[int]) -> None:
    assert sorted(ns, key=encode_key) == sorted(ns)


@given(st.lists(floats, min_size=2, max_size=20))
def test_floats_sort_like_python(fs: list[float]) -> None:
    assert [encode_key(f) for f in sorted(fs)] == sorted(encode_key(f) for f in fs)


def test_shorter_tuple_sorts_first() -> None:
    ordered: list[Key] = [(), ("a",), ("a", ""), ("a", "\x00"), ("a", "b"), ("a\x00",), ("b",)]
    assert sorted(ordered, key=encode_key) == ordered
    nested: list[Key] = [((1,), 0), ((1, 2), 0), ((2,), 0)]
    assert sorted(nested, key=encode_key) == nested


TYPE_RANK = {int: 0, float: 1, str: 2, bytes: 3, tuple: 4}


@given(any_keys, any_keys)
def test_tag_order_between_types(a: Any, b: Any) -> None:
    ra, rb = TYPE_RANK[type(a)], TYPE_RANK[type(b)]
    if ra != rb:
        assert cmp(ra, rb) == cmp(encode_key(a), encode_key(b))


def test_tag_order_inside_tuples() -> None:
    ordered: list[Key] = [("k", 10**9), ("k", -1.5), ("k", ""), ("k", b""), ("k", ())]
    assert sorted(ordered, key=encode_key) == ordered


# --------------------------------------------------------------------------- prefixes


def in_range(key: Any, prefix: Any) -> bool:
    lo, hi = prefix_range(prefix)
    return lo <= encode_key(key) < hi


@given(texts, texts)
def test_str_prefix(p: str, s: str) -> None:
    lo = encode_prefix(p)
    assert encode_key(p + s).startswith(lo)
    assert encode_key(s).startswith(lo) == s.startswith(p)
    assert in_range(s, p) == s.startswith(p)
    assert in_range(p + s, p)


@given(blobs, blobs)
def test_bytes_prefix(p: bytes, s: bytes) -> None:
    lo = encode_prefix(p)
    assert encode_key(p + s).startswith(lo)
    assert encode_key(s).startswith(lo) == s.startswith(p)
    assert in_range(s, p) == s.startswith(p)


@st.composite
def tuple_prefix_cases(draw: st.DrawFn) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    shape = draw(st.lists(shapes, max_size=4))
    return draw(key_of_shape(shape)), draw(key_of_shape(shape))


@given(tuple_prefix_cases())
def test_tuple_prefix(case: tuple[tuple[Any, ...], tuple[Any, ...]]) -> None:
    prefix, key = case
    has_prefix = key[: len(prefix)] == prefix
    if has_prefix:
        assert encode_key(key).startswith(encode_prefix(prefix))
    assert in_range(key, prefix) == has_prefix
    assert encode_key(prefix + key).startswith(encode_prefix(prefix))
    assert in_range(prefix + key, prefix)


@given(any_keys, st.one_of(texts, blobs, st.tuples(), st.tuples(texts), st.tuples(ints, blobs)))
def test_prefix_range_never_holds_keys_of_another_type(key: Any, prefix: Any) -> None:
    if type(key) is not type(prefix):
        assert not in_range(key, prefix)


def test_tuple_prefix_does_not_match_longer_element() -> None:
    p = encode_prefix(("user",))
    assert encode_key(("user",)).startswith(p)
    assert encode_key(("user", 7)).startswith(p)
    assert encode_key(("user", "x", b"y")).startswith(p)
    assert not encode_key(("users",)).startswith(p)
    assert not encode_key(("users", 7)).startswith(p)
    assert not encode_key("user").startswith(p)
    assert encode_prefix(()) == b"\x50"
    good: list[Key] = [("user",), ("user", 7), ("user", "x", b"y"), ("user", ("z",))]
    for key in good:
        assert in_range(key, ("user",))
    bad: list[Key] = [("users",), ("user\x00",), ("user\x00x", 1), ("usea",), ("uses",), "user"]
    for key in bad:
        assert not in_range(key, ("user",))


def test_tuple_prefix_startswith_alone_is_not_enough() -> None:
    # Documented limitation of the format: the terminator 0x00 of "user" is the first
    # byte of the escape 0x00 0xFF of "user\x00"; prefix_range tells them apart.
    assert encode_key(("user\x00",)).startswith(encode_prefix(("user",)))
    assert not in_range(("user\x00",), ("user",))
    assert not in_range((b"a\x00",), (b"a",))


@pytest.mark.parametrize("bad", [1, 1.5, True, None, ["a"]])
def test_prefix_rejects_other_types(bad: Any) -> None:
    with pytest.raises(TypeError, match="prefix"):
        encode_prefix(bad)


@pytest.mark.parametrize(
    ("p", "bound"),
    [
        (b"", None),
        (b"\xff", None),
        (b"\xff\xff", None),
        (b"a", b"b"),
        (b"a\xff", b"b"),
        (b"a\xfe", b"a\xff"),
        (b"\x00", b"\x01"),
        (b"\x50", b"\x51"),
    ],
)
def test_prefix_upper_bound_examples(p: bytes, bound: bytes | None) -> None:
    assert prefix_upper_bound(p) == bound


@given(st.binary(max_size=6), st.binary(max_size=6), st.binary(max_size=6))
def test_prefix_upper_bound_is_the_least_bound(p: bytes, s: bytes, other: bytes) -> None:
    hi = prefix_upper_bound(p)
    if hi is None:
        assert p.strip(b"\xff") == b""
        return
    assert p + s < hi
    if not other.startswith(p) and other > p:
        assert other >= hi


# --------------------------------------------------------------------------- rejected keys


@pytest.mark.parametrize(
    "bad",
    [None, True, False, [1], {"a": 1}, {1}, object(), 1j, ("a", None), (True,), ((1, [2]),)],
    ids=stable_id,
)
def test_unsupported_types_raise_type_error(bad: Any) -> None:
    with pytest.raises(TypeError, match=r"is not supported.*bytes, str, int, float") as info:
        encode_key(bad)
    inner: Any = bad
    while isinstance(inner, tuple):
        inner = inner[-1]
    assert type(inner).__name__ in str(info.value)


def test_type_error_names_the_position() -> None:
    with pytest.raises(TypeError, match=r"key\[1\]\[0\]: NoneType"):
        encode_key(("a", (None,)))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [
        math.nan,
        ("a", math.nan),
        ((math.nan,),),
        2 ** (8 * 0xFFFF),
        -(2 ** (8 * 0xFFFF)),
        ("a", 2 ** (8 * 0xFFFF)),
    ],
    ids=["nan", "nan-in-tuple", "nan-nested", "int-too-big", "int-too-small", "big-in-tuple"],
)
def test_unstorable_values_raise_data_error(bad: Any) -> None:
    with pytest.raises(DataError):
        encode_key(bad)


def test_largest_int_round_trips() -> None:
    for n in (2 ** (8 * 0xFFFF) - 1, -(2 ** (8 * 0xFFFF) - 1)):
        assert decode_key(encode_key(n)) == n


def test_nesting_deeper_than_the_limit_is_a_data_error() -> None:
    key: Any = ()
    for _ in range(MAX_DEPTH):
        key = (key,)
    with pytest.raises(DataError, match="nested deeper"):
        encode_key(key)
    for _ in range(5000):
        key = (key,)
    with pytest.raises(DataError):
        encode_key(key)


# --------------------------------------------------------------------------- decoding damage


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"\x11",
        b"\xff",
        b"\x10",
        b"\x10\x01",
        b"\x10\x01\x00\x01",  # truncated magnitude
        b"\x10\x01\x00\x01\x00",  # non-minimal positive
        b"\x10\x00\xff\xfe\xff",  # non-minimal negative
        b"\x10\x00\xff\xff",  # negative of length 0
        b"\x10\x02\x00\x00",  # bad sign byte
        b"\x10\x01\x00\x00\x00",  # trailing byte
        b"\x20" + b"\x00" * 7,  # truncated float
        b"\x20" + b"\x80" + b"\x00" * 8,  # trailing byte
        b"\x20\xff\xf8" + b"\x00" * 6,  # NaN
        b"\x20\x7f" + b"\xff" * 7,  # -0.0
        b"\x30\xff",
        b"\x30\xc3",
        b"\x50\x00",
        b"\x50\x30a",  # unterminated str
        b"\x50\x30a\x00\xff",  # escape, then unterminated
        b"\x50\x30\xff\x00",  # invalid UTF-8 in element
        b"\x50\x40a\x00\x60",  # unknown tag after an element
        b"\x50\x50",  # unterminated tuple
        b"\x50\x50\x10",
        b"\x50" * (MAX_DEPTH + 1) + b"\x00" * MAX_DEPTH,
        b"\x50" * 100_000,
    ],
)
def test_malformed_encodings_raise_corruption_error(data: bytes) -> None:
    with pytest.raises(CorruptionError):
        decode_key(data)


def check_decode(data: bytes) -> None:
    try:
        key = decode_key(data)
    except CorruptionError:
        return
    assert encode_key(key) == data


@given(st.binary(max_size=40))
def test_decode_arbitrary_bytes_is_canonical_or_corruption(data: bytes) -> None:
    check_decode(data)


@st.composite
def damaged_encodings(draw: st.DrawFn) -> bytes:
    data = bytearray(encode_key(draw(any_keys)))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        i = draw(st.integers(0, len(data)))
        if op == "cut":
            del data[i:]
        elif op == "insert":
            data[i:i] = bytes([draw(st.sampled_from([0x00, 0x01, 0x10, 0x30, 0x50, 0xFF]))])
        elif data and i < len(data):
            if op == "flip":
                data[i] ^= 1 << draw(st.integers(0, 7))
            else:
                del data[i]
    return bytes(data)


@settings(max_examples=500)
@given(damaged_encodings())
def test_decode_damaged_encodings_is_canonical_or_corruption(data: bytes) -> None:
    check_decode(data)

"""Order-preserving typed key encoding; knows nothing of stores, files, pages or values.

A key is ``bytes``, ``str``, ``int``, ``float`` or a ``tuple`` of keys. ``encode_key`` turns it
into bytes whose lexicographic order is the Python order of the keys (within one type, and
for tuples whose elements agree in type position by position); across types the tag order
applies. This is on-disk format: the values below are forever (mirrored in docs/format.md).

Type tags (first byte), and so the order between types::

    0x10 int  <  0x20 float  <  0x30 str  <  0x40 bytes  <  0x50 tuple

Layouts (``||`` is concatenation; "BE" is big-endian)::

    int    0x10 || 0x01 || L:u16 BE || |n| BE in L minimal bytes          n >= 0 (0 -> L = 0)
           0x10 || 0x00 || (0xFFFF - L):u16 BE || each byte of |n| ^ 0xFF n < 0  (L >= 1)
           L <= 0xFFFF, else DataError
    float  0x20 || u64 BE of the IEEE-754 double, with all bits inverted if the sign bit
           is set, else only the sign bit set; -0.0 is stored as 0.0; NaN -> DataError
    str    0x30 || UTF-8 (surrogatepass)                              top level
    bytes  0x40 || raw bytes                                          top level
    tuple  0x50 || element || element || ...                          top level, no terminator

Inside a tuple int and float are as above (self-delimiting); the others are::

    str    0x30 || UTF-8 (surrogatepass), each 0x00 escaped as 0x00 0xFF || 0x00
    bytes  0x40 || raw bytes,             each 0x00 escaped as 0x00 0xFF || 0x00
    tuple  0x50 || element || ... || 0x00

Every element starts with a tag >= 0x10, so the 0x00 terminator makes a tuple that is a
prefix of another sort first, as in Python. Tuples nest at most ``MAX_DEPTH`` deep.
A prefix scan over tuples must use ``prefix_range``, not ``startswith``: the encoding of
``("a\\x00",)`` starts with that of ``("a",)`` (terminator 0x00 vs escape 0x00 0xFF).

``bool`` and enum members (``IntEnum``, ``IntFlag``, ``StrEnum``) are rejected: they would come
back as a plain ``int`` or ``str``, losing what they are (other subclasses of ``int`` and
``str`` are stored as their base type). ``bytearray`` and ``memoryview`` are accepted and come
back as ``bytes`` (a released ``memoryview`` is an ``InterfaceError``). Note ``1`` and ``1.0``
are different keys.
``decode_key`` accepts only canonical encodings and raises ``CorruptionError`` otherwise,
so ``encode_key(decode_key(b)) == b`` whenever it returns.

>>> encode_key("ab")
b'0ab'
>>> decode_key(encode_key(("user", -7, 2.5)))
('user', -7, 2.5)
>>> encode_key(-1) < encode_key(0) < encode_key(255) < encode_key(256)
True
>>> encode_key(("user", 7)).startswith(encode_prefix(("user",)))
True
>>> prefix_upper_bound(b"ab\\xff")
b'ac'
"""

from __future__ import annotations

import enum
import math
import struct
from typing import TypeAlias

from halodb.errors import CorruptionError, DataError, InterfaceError

__all__ = [
    "MAX_DEPTH",
    "Key",
    "KeyLike",
    "decode_key",
    "encode_key",
    "encode_prefix",
    "prefix_range",
    "prefix_upper_bound",
]

Key: TypeAlias = bytes | str | int | float | tuple["Key", ...]
"""A HaloDB key as decoded: bytes, str, int (not bool), float (not NaN) or a tuple of keys."""

KeyLike: TypeAlias = bytes | bytearray | memoryview | str | int | float | tuple["KeyLike", ...]
"""What ``encode_key`` accepts: a ``Key``, with bytearray and memoryview read as bytes."""

MAX_DEPTH = 32
"""Deepest tuple nesting accepted; a top-level tuple is depth 1."""

# DO NOT CHANGE THESE VALUES: they are on-disk format.
TAG_INT = 0x10
TAG_FLOAT = 0x20
TAG_STR = 0x30
TAG_BYTES = 0x40
TAG_TUPLE = 0x50
_END = 0x00  # terminator of str, bytes and tuple inside a tuple
_ESC = 0xFF  # 0x00 0xFF inside an element stands for one 0x00 byte

_B_INT = b"\x10"
_B_FLOAT = b"\x20"
_B_STR = b"\x30"
_B_BYTES = b"\x40"
_B_TUPLE = b"\x50"
_B_END = b"\x00"
_B_ZERO = b"\x00"
_B_ESCAPED_ZERO = b"\x00\xff"

_INT_HEADER = struct.Struct(">BH")  # sign byte (0x00 negative, 0x01 non-negative), length
_F64 = struct.Struct(">d")
_U64 = struct.Struct(">Q")
_SIGN = 1 << 63
_ALL = (1 << 64) - 1
_NEG_ZERO_BITS = _U64.unpack(_F64.pack(-0.0))[0]
_MAX_LEN = 0xFFFF
_FLOAT_PAYLOAD = 8

_ACCEPTED = (
    "bytes, str, int, float or a tuple of those (bool and enum members such as IntEnum, "
    "which would come back as plain int or str, and None are not keys)"
)


def _raw(where: str, data: bytes | bytearray | memoryview) -> bytes:
    """``bytes(data)``; ``InterfaceError`` for a released ``memoryview``."""
    try:
        return bytes(data)
    except ValueError as exc:
        raise InterfaceError(f"{where}: {exc}") from None


# --------------------------------------------------------------------------- encoding


def encode_key(key: KeyLike) -> bytes:
    """Return the order-preserving encoding of ``key``.

    O(len of the encoding). Raises ``TypeError`` for an unsupported type (bool, None,
    list, ...), ``DataError`` for NaN, an int of more than 65535 bytes, or tuples nested
    deeper than ``MAX_DEPTH``.

    >>> encode_key(b"\\x00")
    b'@\\x00'
    """
    if type(key) is str:
        return _B_STR + key.encode("utf-8", "surrogatepass")
    if type(key) is bytes:
        return _B_BYTES + key
    if type(key) is int:
        return _B_INT + _int_payload(key)
    if type(key) is tuple:
        out = [_B_TUPLE]
        _encode_items(key, out, 1, "key")
        return b"".join(out)
    return _encode_other(key)


def _encode_other(key: object) -> bytes:
    """Encode a top-level key that is not an exact str, bytes, int or tuple."""
    if isinstance(key, bool | enum.Enum):
        raise TypeError(f"key: {type(key).__name__} is not supported; keys must be {_ACCEPTED}")
    if isinstance(key, float):
        if math.isnan(key):
            raise DataError("key: NaN cannot be a key (it is not equal to itself)")
        return _B_FLOAT + _float_payload(key)
    if isinstance(key, str):
        return _B_STR + str.encode(key, "utf-8", "surrogatepass")
    if isinstance(key, bytes | bytearray | memoryview):
        return _B_BYTES + _raw("key", key)
    if isinstance(key, int):
        return _B_INT + _int_payload(int(key))
    if isinstance(key, tuple):
        out = [_B_TUPLE]
        _encode_items(key, out, 1, "key")
        return b"".join(out)
    raise TypeError(f"key: {type(key).__name__} is not supported; keys must be {_ACCEPTED}")


def _int_payload(n: int) -> bytes:
    """Sign byte, length and magnitude of ``n`` (see the module docstring)."""
    if n >= 0:
        length = (n.bit_length() + 7) >> 3
        if length > _MAX_LEN:
            raise DataError(f"int key too large: {length} bytes, at most {_MAX_LEN}")
        return _INT_HEADER.pack(1, length) + n.to_bytes(length, "big")
    m = -n
    length = (m.bit_length() + 7) >> 3
    if length > _MAX_LEN:
        raise DataError(f"int key too large: {length} bytes, at most {_MAX_LEN}")
    inverted = m ^ ((1 << (length << 3)) - 1)
    return _INT_HEADER.pack(0, _MAX_LEN - length) + inverted.to_bytes(length, "big")


def _float_payload(f: float) -> bytes:
    """Eight bytes that sort as ``f`` does; -0.0 becomes 0.0. ``f`` must not be NaN."""
    if f == 0.0:
        f = 0.0
    bits: int = _U64.unpack(_F64.pack(f))[0]
    bits = bits ^ _ALL if bits & _SIGN else bits | _SIGN
    return _U64.pack(bits)


def _encode_items(items: tuple[object, ...], out: list[bytes], depth: int, path: str) -> None:
    """Append the in-tuple encoding of each of ``items`` (the tuple at ``path``) to ``out``.

    The common element types are handled inline: this loop is on every tuple get and put.
    """
    append = out.append
    for i, item in enumerate(items):
        if type(item) is str:
            raw = item.encode("utf-8", "surrogatepass")
            if 0 in raw:  # int membership: a bytes needle is much slower here
                raw = raw.replace(_B_ZERO, _B_ESCAPED_ZERO)
            append(_B_STR + raw + _B_END)
        elif type(item) is int:
            append(_B_INT + _int_payload(item))
        elif type(item) is bytes:
            raw = item.replace(_B_ZERO, _B_ESCAPED_ZERO) if 0 in item else item
            append(_B_BYTES + raw + _B_END)
        else:
            _encode_element(item, out, depth, path, i)


def _encode_element(item: object, out: list[bytes], depth: int, path: str, index: int) -> None:
    """Append the in-tuple encoding of ``item`` (``path[index]``), any supported type."""
    if type(item) is float:
        if math.isnan(item):
            raise DataError(f"{path}[{index}]: NaN cannot be a key (it is not equal to itself)")
        out.append(_B_FLOAT + _float_payload(item))
    elif isinstance(item, tuple):
        if depth >= MAX_DEPTH:
            raise DataError(f"{path}[{index}]: tuples nested deeper than {MAX_DEPTH}")
        out.append(_B_TUPLE)
        _encode_items(item, out, depth + 1, f"{path}[{index}]")
        out.append(_B_END)
    elif isinstance(item, bool | enum.Enum):
        raise TypeError(
            f"{path}[{index}]: {type(item).__name__} is not supported; "
            f"tuple elements must be {_ACCEPTED}"
        )
    elif isinstance(item, str):  # a str subclass: stored, and read back, as plain str
        _encode_items((str.__str__(item),), out, depth, path)
    elif isinstance(item, int):
        _encode_items((int(item),), out, depth, path)
    elif isinstance(item, float):
        _encode_element(float(item), out, depth, path, index)
    elif isinstance(item, bytes | bytearray | memoryview):
        _encode_items((_raw(f"{path}[{index}]", item),), out, depth, path)
    else:
        raise TypeError(
            f"{path}[{index}]: {type(item).__name__} is not supported; "
            f"tuple elements must be {_ACCEPTED}"
        )


def encode_prefix(prefix: str | bytes | bytearray | memoryview | tuple[KeyLike, ...]) -> bytes:
    """Return bytes that every key starting with ``prefix`` encodes to a string starting with.

    A str or bytes prefix matches top-level str or bytes keys with that prefix; a tuple
    prefix matches tuples whose first elements equal it (``("user",)`` matches
    ``("user", 7)`` but not ``("users",)``). ``int`` and ``float`` are not prefixes.

    For a str or bytes prefix the converse holds too. For a tuple prefix it does not:
    ``("user\\x00x",)`` also encodes to bytes starting with ``encode_prefix(("user",))``,
    because the prefix's 0x00 terminator is the first byte of the 0x00 0xFF escape. Scan
    with ``prefix_range``, which excludes exactly those keys.

    >>> encode_prefix("us")
    b'0us'
    """
    if isinstance(prefix, str | bytes | bytearray | memoryview | tuple) and not isinstance(
        prefix, bool
    ):
        return encode_key(prefix)
    raise TypeError(
        f"prefix: {type(prefix).__name__} is not supported; a prefix must be str, bytes or tuple"
    )


def prefix_range(
    prefix: str | bytes | bytearray | memoryview | tuple[KeyLike, ...],
) -> tuple[bytes, bytes]:
    """Return ``(lo, hi)`` such that a key has ``prefix`` iff ``lo <= encode_key(key) < hi``.

    ``lo`` is ``encode_prefix(prefix)``. For str and bytes, ``hi`` is
    ``prefix_upper_bound(lo)``. For a tuple, ``hi`` is
    ``lo + b"\\xff"``: after a tuple prefix a matching key continues with a type tag
    (< 0xFF) or ends, while 0xFF there means an escaped 0x00 inside the prefix's last
    str or bytes element, i.e. a different element (``"user\\x00x"``, not ``"user"``).

    >>> lo, hi = prefix_range(("user",))
    >>> lo <= encode_key(("user", 7)) < hi, lo <= encode_key(("user\\x00",)) < hi
    (True, False)
    """
    lo = encode_prefix(prefix)
    if isinstance(prefix, tuple):
        return lo, lo + b"\xff"
    hi = prefix_upper_bound(lo)
    assert hi is not None  # lo starts with a type tag, which is below 0xFF
    return lo, hi


def prefix_upper_bound(p: bytes) -> bytes | None:
    """Return the smallest byte string greater than every string that starts with ``p``.

    ``None`` when no such string exists (``p`` is empty or all 0xFF). Use it as the
    exclusive end of a prefix scan.

    >>> prefix_upper_bound(b"\\xff\\xff") is None
    True
    """
    stripped = bytes(p).rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes((stripped[-1] + 1,))


# --------------------------------------------------------------------------- decoding


def decode_key(data: bytes | bytearray | memoryview) -> Key:
    """Return the key whose encoding is ``data``; the inverse of ``encode_key``.

    O(len(data)). Raises ``CorruptionError`` for anything ``encode_key`` would not
    produce: an unknown tag, a truncated payload, trailing bytes, invalid UTF-8, a
    non-minimal int, NaN or -0.0, or nesting deeper than ``MAX_DEPTH``.
    """
    if type(data) is not bytes:
        data = bytes(data)
    if not data:
        raise CorruptionError("key: empty encoding")
    tag = data[0]
    if tag == TAG_STR:
        return _decode_utf8(data[1:], 0)
    if tag == TAG_BYTES:
        return data[1:]
    value: Key
    if tag == TAG_INT:
        value, end = _decode_int(data, 1)
    elif tag == TAG_FLOAT:
        value, end = _decode_float(data, 1)
    elif tag == TAG_TUPLE:
        return _decode_items(data, 1, 1, nested=False)[0]
    else:
        raise CorruptionError(f"key: unknown type tag 0x{tag:02x} at offset 0")
    if end != len(data):
        raise CorruptionError(f"key: {len(data) - end} trailing bytes at offset {end}")
    return value


def _decode_utf8(raw: bytes, offset: int) -> str:
    try:
        return raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise CorruptionError(f"key: invalid UTF-8 in str at offset {offset + exc.start}") from exc


def _decode_int(data: bytes, pos: int) -> tuple[int, int]:
    """Decode the int payload at ``data[pos:]``; return the int and the end offset."""
    header_end = pos + _INT_HEADER.size
    if header_end > len(data):
        raise CorruptionError(f"key: truncated int header at offset {pos}")
    sign, stored = _INT_HEADER.unpack_from(data, pos)
    if sign == 1:
        length = stored
    elif sign == 0:
        length = _MAX_LEN - stored
        if length == 0:
            raise CorruptionError(f"key: negative int of length 0 at offset {pos}")
    else:
        raise CorruptionError(f"key: bad int sign byte 0x{sign:02x} at offset {pos}")
    end = header_end + length
    if end > len(data):
        raise CorruptionError(f"key: truncated int at offset {pos}")
    if length == 0:
        return 0, end
    first = data[header_end]
    if sign == 1:
        if first == 0:
            raise CorruptionError(f"key: non-minimal int at offset {pos}")
        return int.from_bytes(data[header_end:end], "big"), end
    if first == 0xFF:
        raise CorruptionError(f"key: non-minimal int at offset {pos}")
    inverted = int.from_bytes(data[header_end:end], "big")
    return -(inverted ^ ((1 << (length << 3)) - 1)), end


def _decode_float(data: bytes, pos: int) -> tuple[float, int]:
    """Decode the float payload at ``data[pos:]``; return the float and the end offset."""
    end = pos + _FLOAT_PAYLOAD
    if end > len(data):
        raise CorruptionError(f"key: truncated float at offset {pos}")
    bits: int = _U64.unpack_from(data, pos)[0]
    bits = bits ^ _SIGN if bits & _SIGN else bits ^ _ALL
    if bits == _NEG_ZERO_BITS:
        raise CorruptionError(f"key: -0.0 is not canonical (offset {pos})")
    value: float = _F64.unpack(_U64.pack(bits))[0]
    if math.isnan(value):
        raise CorruptionError(f"key: NaN float at offset {pos}")
    return value, end


def _unescape(data: bytes, pos: int, end: int) -> tuple[bytes, int]:
    """Undo 0x00 0xFF escaping from ``pos``; ``data[end]`` is the first 0x00, an escape.

    Return the raw bytes and the offset of the 0x00 terminator.
    """
    find = data.find
    n = len(data)
    pieces: list[bytes] = []
    start = pos
    while end + 1 < n and data[end + 1] == _ESC:
        pieces.append(data[start : end + 1])  # keep the 0x00, drop the 0xFF
        start = end + 2
        end = find(_B_ZERO, start)
        if end < 0:
            raise CorruptionError(f"key: unterminated element at offset {pos - 1}")
    pieces.append(data[start:end])
    return b"".join(pieces), end


def _decode_items(
    data: bytes, pos: int, depth: int, *, nested: bool
) -> tuple[tuple[Key, ...], int]:
    """Decode tuple elements from ``pos``: up to the 0x00 terminator if ``nested``, else to
    the end. Return the tuple and the offset after it.

    Str, bytes and int elements are handled inline: this loop is on every tuple get.
    """
    items: list[Key] = []
    append = items.append
    find = data.find
    n = len(data)
    while pos < n:
        tag = data[pos]
        pos += 1
        if tag in (TAG_STR, TAG_BYTES):
            end = find(_B_ZERO, pos)
            if end < 0:
                raise CorruptionError(f"key: unterminated element at offset {pos - 1}")
            if end + 1 < n and data[end + 1] == _ESC:
                raw, end = _unescape(data, pos, end)
            else:
                raw = data[pos:end]
            append(_decode_utf8(raw, pos) if tag == TAG_STR else raw)
            pos = end + 1
        elif tag == TAG_INT:
            number, pos = _decode_int(data, pos)
            append(number)
        elif tag == TAG_FLOAT:
            real, pos = _decode_float(data, pos)
            append(real)
        elif tag == TAG_TUPLE and depth < MAX_DEPTH:
            inner, pos = _decode_items(data, pos, depth + 1, nested=True)
            append(inner)
        elif tag == _END and nested:
            return tuple(items), pos
        else:
            raise _bad_element(tag, pos - 1)
    if nested:
        raise CorruptionError(f"key: unterminated tuple ending at offset {n}")
    return tuple(items), pos


def _bad_element(tag: int, offset: int) -> CorruptionError:
    """The error for a tuple element ``_decode_items`` cannot decode: the tag at ``offset`` is
    unknown, or opens a tuple nested deeper than ``MAX_DEPTH``."""
    if tag == TAG_TUPLE:
        return CorruptionError(f"key: tuples nested deeper than {MAX_DEPTH} at offset {offset}")
    return CorruptionError(f"key: unknown type tag 0x{tag:02x} at offset {offset}")

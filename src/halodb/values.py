"""Value codecs: Python objects to bytes and back; knows nothing of keys, files or stores.

A store records its codec's ``name`` when it is created; opening it with a codec of another
name is refused. The default codec, ``halo1``, stores (first byte is
the tag; DO NOT CHANGE THESE VALUES, they are on-disk format)::

    0x00  bytes   raw bytes follow (bytearray and memoryview are stored as bytes)
    0x01  str     UTF-8 with surrogatepass follows
    0x02  JSON    UTF-8 (surrogatepass) of json.dumps(value, ensure_ascii=False,
                  allow_nan=True, separators=(",", ":")), for int, float, bool, None,
                  list and dict with str keys, nested at most MAX_DEPTH deep

Values are validated before anything is encoded so that they come back exactly: a tuple,
set, bytes inside a container, a non-str dict key, a subclass (IntEnum, OrderedDict, ...)
or any other object raises ``TypeError`` naming where it is. ``PickleCodec`` stores any
picklable object, but only on explicit opt-in: unpickling data from an untrusted store
runs arbitrary code.

>>> codec = DefaultCodec()
>>> codec.encode({"a": [1, 2.5, None]})
b'\\x02{"a":[1,2.5,null]}'
>>> codec.decode(codec.encode(b"raw"))
b'raw'
"""

from __future__ import annotations

import json
import sys
from typing import Final, Protocol, runtime_checkable

from halodb.errors import CorruptionError, DataError, InterfaceError

__all__ = [
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "DefaultCodec",
    "PickleCodec",
    "ValueCodec",
]

MAX_DEPTH = 100
"""Deepest list/dict nesting the default codec accepts; a top-level container is depth 1."""

MAX_INT_DIGITS = 4300
"""Most decimal digits of an int inside a JSON value: Python's default int/str limit."""

# DO NOT CHANGE THESE VALUES: they are on-disk format.
TAG_BYTES = 0x00
TAG_STR = 0x01
TAG_JSON = 0x02

_B_BYTES = b"\x00"
_B_STR = b"\x01"
_B_JSON = b"\x02"

_INT_LIMIT = 10**MAX_INT_DIGITS
_SUPPORTED = (
    "values must be bytes, str, or int, float, bool, None, list and dict with str keys "
    "(nested); use PickleCodec for other types"
)
_dumps = json.JSONEncoder(
    ensure_ascii=False, allow_nan=True, separators=(",", ":"), check_circular=False
).encode
_loads = json.JSONDecoder().decode


@runtime_checkable
class ValueCodec(Protocol):
    """Turns values into bytes and back. ``decode(encode(v))`` must equal ``v``.

    ``name`` is recorded on disk when a store is created and must never change meaning.
    ``decode`` raises ``CorruptionError`` for bytes it could not have produced.
    """

    @property
    def name(self) -> str:
        """The codec's on-disk name."""
        ...

    def encode(self, value: object) -> bytes:
        """Return the bytes for ``value``; ``TypeError`` if it cannot be stored faithfully."""
        ...

    def decode(self, data: bytes) -> object:
        """Return the value ``data`` was encoded from."""
        ...


class DefaultCodec:
    """The ``halo1`` codec: bytes and str stored raw, JSON-able values as compact JSON.

    O(size of the value); stateless and thread-safe.

    >>> DefaultCodec().decode(DefaultCodec().encode([True, -0.0, float("inf")]))
    [True, -0.0, inf]
    """

    name: Final = "halo1"

    def encode(self, value: object) -> bytes:
        """Return the ``halo1`` bytes for ``value``.

        Raises ``TypeError`` for a value that would not round-trip exactly, ``DataError``
        for nesting deeper than ``MAX_DEPTH`` (or a cycle) or an int of more than
        ``MAX_INT_DIGITS`` digits.
        """
        if type(value) is bytes:
            return _B_BYTES + value
        if type(value) is str:
            return _B_STR + value.encode("utf-8", "surrogatepass")
        if type(value) is bytearray or type(value) is memoryview:
            try:
                return _B_BYTES + bytes(value)
            except ValueError as exc:  # a released memoryview
                raise InterfaceError(f"value: {exc}") from None
        try:
            _check_json(value, 0)
        except _Unstorable as exc:
            raise exc.public() from None
        try:
            text = _dumps(value)
        except ValueError as exc:  # this process lowered sys.set_int_max_str_digits()
            raise DataError(f"value cannot be written as JSON: {exc}") from exc
        return _B_JSON + text.encode("utf-8", "surrogatepass")

    def decode(self, data: bytes) -> object:
        """Return the value ``data`` was encoded from; ``CorruptionError`` if malformed."""
        if not data:
            raise CorruptionError("value: empty encoding (no codec tag)")
        tag = data[0]
        if tag == TAG_BYTES:
            return data[1:]
        if tag == TAG_STR:
            return _utf8(data[1:], "str")
        if tag == TAG_JSON:
            text = _utf8(data[1:], "JSON")
            try:
                return _loads(text)
            except json.JSONDecodeError as exc:
                raise CorruptionError(f"value: malformed JSON: {exc}") from exc
            except RecursionError as exc:
                raise CorruptionError("value: JSON nested too deeply to decode") from exc
            except ValueError as exc:  # int longer than sys.get_int_max_str_digits()
                limit = sys.get_int_max_str_digits()
                if limit == 0 or limit >= MAX_INT_DIGITS:  # longer than halo1 ever writes
                    raise CorruptionError(
                        f"value: JSON int of more than {MAX_INT_DIGITS} digits, which halo1 "
                        "never writes"
                    ) from exc
                raise DataError(  # this process lowered the limit
                    f"value: {exc}; raise the limit with sys.set_int_max_str_digits()"
                ) from exc
        raise CorruptionError(f"value: unknown codec tag 0x{tag:02x} for codec halo1")


def _utf8(raw: bytes, what: str) -> str:
    try:
        return bytes(raw).decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise CorruptionError(f"value: invalid UTF-8 in {what} at offset {exc.start + 1}") from exc


class _Unstorable(Exception):  # internal: never escapes this module
    """Raised inside ``_check_json``; collects the path on the way out."""

    def __init__(self, error: type[Exception], message: str) -> None:
        super().__init__(message)
        self.error = error
        self.message = message
        self.path: list[str] = []  # innermost segment first

    def public(self) -> Exception:
        path = self.path[::-1]
        if len(path) > _PATH_SHOWN:  # the first two and the last steps, and the depth
            path = [*path[:2], "…", path[-1], f" ({len(self.path)} levels)"]
        return self.error(f"value{''.join(path)}: {self.message}")


_PATH_SHOWN = 4
"""A deeper path to an unstorable part of a value is shortened in the error message."""


# Flat on purpose (hot path: every put of a JSON value): split into a list and a dict helper it
# measured 4-6% slower on small records (one more call per container), so C901 is waived here.
def _check_json(value: object, depth: int) -> None:  # noqa: C901
    """Raise ``_Unstorable`` unless ``value`` is made only of types JSON gives back exactly.

    Paths are built only on the error path, so a valid value costs one call per node.
    """
    if type(value) is str or type(value) is float or type(value) is bool or value is None:
        return
    if type(value) is int:
        if -_INT_LIMIT < value < _INT_LIMIT:
            return
        raise _Unstorable(DataError, f"int has more than {MAX_INT_DIGITS} decimal digits")
    if type(value) is list:
        if depth >= MAX_DEPTH:
            raise _Unstorable(DataError, f"nested deeper than {MAX_DEPTH} (or a cycle)")
        for i, item in enumerate(value):
            try:
                _check_json(item, depth + 1)
            except _Unstorable as exc:
                exc.path.append(f"[{i}]")
                raise
        return
    if type(value) is dict:
        if depth >= MAX_DEPTH:
            raise _Unstorable(DataError, f"nested deeper than {MAX_DEPTH} (or a cycle)")
        for k, item in value.items():
            if type(k) is not str:
                raise _Unstorable(
                    TypeError,
                    f"dict key {k!r:.60} of type {type(k).__name__} is not supported; "
                    "dict keys must be str",
                )
            try:
                _check_json(item, depth + 1)
            except _Unstorable as exc:
                exc.path.append(f"[{k!r:.60}]")
                raise
        return
    raise _Unstorable(TypeError, f"{type(value).__name__} is not supported; {_SUPPORTED}")


class PickleCodec:
    """The ``pickle`` codec: any picklable object, at ``pickle.HIGHEST_PROTOCOL``.

    Explicit opt-in only. WARNING: decoding unpickles, and unpickling data from an
    untrusted store executes arbitrary code. Open only stores you wrote yourself.

    >>> PickleCodec().decode(PickleCodec().encode({1, 2}))
    {1, 2}
    """

    name: Final = "pickle"

    # pickle is imported in the methods, not at the top: a process that never opts in never
    # loads it.

    def encode(self, value: object) -> bytes:
        """Return the pickle of ``value``; ``TypeError`` if it cannot be pickled."""
        import pickle

        try:
            return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except RecursionError as exc:
            raise DataError("value: nested too deeply to pickle") from exc
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise TypeError(f"value: {type(value).__name__} cannot be pickled: {exc}") from exc

    def decode(self, data: bytes) -> object:
        """Return the unpickled value; ``CorruptionError`` if ``data`` does not unpickle."""
        import pickle

        try:
            # Explicit opt-in codec: the caller chose pickle and trusts the store.
            return pickle.loads(data)  # noqa: S301
        except Exception as exc:
            raise CorruptionError(f"value: cannot unpickle ({type(exc).__name__}: {exc})") from exc

"""Keys and values typed on the command line: the Python-literal form both ways (a parser that
evaluates nothing, and :func:`literal_text`, which it reads back); it must not know the store,
the terminal or how a command shows its results.

By default every key typed is a ``str``. With ``-t``/``--typed`` keys are Python literals; with
``-T``/``--typed-value`` the value ``put`` stores is a literal too. Literals (``42``, ``2.5``,
``b'\\x00'``, ``('user', 42)``) are read by a small AST walker that accepts only literals.
"""

from __future__ import annotations

import ast
from typing import Final, cast

import halodb
from halodb.cli.status import ECHO_LIMIT, EXIT_USAGE, CliError, echo
from halodb.errors import brief
from halodb.keys import Key, encode_key

_KEY_HINT = (
    "a typed key is a Python literal: 'text', b'bytes', 42, 2.5 or a tuple such as ('user', 42)"
)
_MAX_LITERAL_DEPTH = 100
_BIG_INT = 10**4000
_CODEC: Final = halodb.DefaultCodec()


class LiteralError(ValueError):
    """Text that is not one of the literals the CLI accepts."""


def parse_literal(text: str, *, value: bool = False) -> object:
    """The Python literal ``text`` stands for, without evaluating anything.

    Accepts str, bytes, int, float (also ``inf`` and ``nan``) and tuples of these; with
    ``value`` also ``True``, ``False``, ``None``, lists and dicts with str keys (what the value
    codec stores). Anything else (names, calls, operators, f-strings) raises ``ValueError``.

    >>> parse_literal("('user', -7, b'\\\\x00')")
    ('user', -7, b'\\x00')
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise LiteralError(f"not a Python literal ({exc.msg})") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise LiteralError(f"not a usable literal ({exc})") from None
    return _literal(tree.body, value, 0)


def _literal(node: ast.expr, value: bool, depth: int) -> object:
    """What ``node``, ``depth`` deep in a literal, stands for (see :func:`parse_literal`)."""
    if depth > _MAX_LITERAL_DEPTH:
        raise LiteralError(f"nested deeper than {_MAX_LITERAL_DEPTH}")
    if isinstance(node, ast.Constant):
        return _constant(node.value, value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        return _signed(node, value, depth)
    if isinstance(node, ast.Name) and node.id in ("inf", "nan"):
        return float(node.id)
    if isinstance(node, ast.Tuple):
        return tuple(_literal(item, value, depth + 1) for item in node.elts)
    if value and isinstance(node, ast.List):
        return [_literal(item, value, depth + 1) for item in node.elts]
    if value and isinstance(node, ast.Dict):
        return _dict(node, depth)
    raise _not_a_literal(node, value)


def _constant(v: object, value: bool) -> object:
    """A constant's value, if a key (or with ``value``, a value) may be one."""
    if type(v) in (str, bytes, int, float) or (value and (v is None or type(v) is bool)):
        return v
    raise LiteralError(f"{v!r} is not allowed here")


def _signed(node: ast.UnaryOp, value: bool, depth: int) -> int | float:
    """A number with a sign (``-7``, ``+2.5``, ``-inf``)."""
    operand = _literal(node.operand, False, depth + 1)
    if type(operand) in (int, float):
        number = cast(int | float, operand)
        return -number if isinstance(node.op, ast.USub) else number
    raise _not_a_literal(node, value)


def _dict(node: ast.Dict, depth: int) -> dict[str, object]:
    """A dict value: str keys only."""
    result: dict[str, object] = {}
    for key_node, value_node in zip(node.keys, node.values, strict=True):
        if not (isinstance(key_node, ast.Constant) and type(key_node.value) is str):
            raise LiteralError("dict keys must be str literals")
        result[key_node.value] = _literal(value_node, True, depth + 1)
    return result


def _not_a_literal(node: ast.expr, value: bool) -> LiteralError:
    """The error for ``node``, which is not an accepted literal; a set gets a hint."""
    if isinstance(node, ast.Set) or (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("set", "frozenset")
    ):
        if value:
            return LiteralError("a set is not a storable value; use a list instead, such as [1, 2]")
        return LiteralError("a set is not a key; use a tuple instead, such as (1, 2)")
    return LiteralError(f"{ast.unparse(node)[:40]!r} is not a literal (nothing is evaluated)")


def literal_text(obj: object) -> str:
    """``obj`` as a Python literal that :func:`parse_literal` reads back (repr, but total)."""
    if type(obj) is int and not -_BIG_INT < obj < _BIG_INT:
        return hex(obj)  # repr() refuses ints beyond sys.get_int_max_str_digits()
    if type(obj) is tuple:
        items = [literal_text(item) for item in obj]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    if type(obj) is list:
        return "[" + ", ".join(literal_text(item) for item in obj) + "]"
    if type(obj) is dict:
        return "{" + ", ".join(f"{k!r}: {literal_text(v)}" for k, v in obj.items()) + "}"
    return repr(obj)


def key_text(key: Key) -> str:
    """``key`` as a literal for an error message, cut to :data:`ECHO_LIMIT` characters."""
    text = literal_text(key)
    return text if len(text) <= ECHO_LIMIT else text[:ECHO_LIMIT] + "…"


# ----------------------------------------------------------------------------- command-line words


def parse_key(text: str, typed: bool) -> Key:
    """The key a command-line word names: the word itself, or with ``typed`` a literal."""
    if not typed:
        return text
    try:
        key = parse_literal(text)
        encode_key(key)  # type: ignore[arg-type]  # validates the type, NaN, size
    except (LiteralError, TypeError, halodb.DataError) as exc:
        message = f"bad typed key {echo(text)}: {brief(str(exc))}; {_KEY_HINT}"
        raise CliError(EXIT_USAGE, message) from None
    return cast(Key, key)


def parse_prefix(text: str, typed: bool) -> str | bytes | tuple[Key, ...]:
    """A ``--prefix``: a str, or with ``typed`` a str, bytes or tuple literal."""
    if not typed:
        return text
    key = parse_key(text, typed)
    if not isinstance(key, str | bytes | tuple):
        raise CliError(EXIT_USAGE, f"bad prefix {echo(text)}: a prefix is a str, bytes or tuple")
    return key


def bounds(
    prefix: str | None, start: str | None, stop: str | None, *, typed: bool
) -> tuple[Key | None, Key | None, str | bytes | tuple[Key, ...] | None]:
    """The parsed ``start``, ``stop`` and ``prefix`` of a range."""
    lo = None if start is None else parse_key(start, typed)
    hi = None if stop is None else parse_key(stop, typed)
    pre = None if prefix is None else parse_prefix(prefix, typed)
    return lo, hi, pre


def parse_value(
    raw: str | bytes,
    *,
    typed: bool = False,
    as_bytes: bool = False,
    codec: halodb.ValueCodec | None = None,
) -> object:
    """The value to store for ``raw`` (a command-line word, or bytes read from stdin).

    Text is stored as ``str``; stdin bytes as ``str`` when they are UTF-8 without a NUL byte,
    else as ``bytes``;
    ``as_bytes`` always stores ``bytes``; ``typed`` reads a literal (str, bytes, numbers, True,
    False, None, lists and dicts), checked against ``codec`` (the store's value codec; by
    default the default codec, which stores no tuples).
    """
    if as_bytes:
        return raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogateescape")
    if isinstance(raw, bytes):
        try:
            if b"\x00" in raw and not typed:
                return raw  # NUL: binary data, even if it decodes
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            if typed:
                raise CliError(EXIT_USAGE, "bad typed value: stdin is not UTF-8 text") from None
            return raw
    if not typed:
        return raw
    try:
        value = parse_literal(raw, value=True)
        (codec or _CODEC).encode(value)
    except (LiteralError, TypeError, halodb.DataError) as exc:
        message = f"bad typed value {echo(raw)}: {brief(str(exc))}"
        raise CliError(EXIT_USAGE, message) from None
    return value

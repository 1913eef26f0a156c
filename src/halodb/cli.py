"""The ``halodb`` command: an interactive shell and subcommands for scripts; the only module that
talks to a terminal. It must not know how the engine stores anything.

Everything goes through the public API (:func:`halodb.open` and :class:`halodb.Store`), with one
exception kept in :func:`_read_tree_top`: the public API reports a B+ tree's shape
(``Store.check()``) but not its nodes, so drawing the top of a tree reads them directly.

Exit codes (also documented in ``docs/cli.md``)::

    0    success
    1    key not found (get, delete)
    2    usage error: unknown command or option, missing argument, bad key literal, bad input data
    3    store error: locked by another process, corrupted, not a store, I/O failure
    130  interrupted (Ctrl-C)
    141  stdout was closed early (``halodb list | head``); nothing more is printed

No user mistake prints a traceback, and every error is one ``error:`` line, usage errors
included (typer would draw them in a box); set ``HALODB_DEBUG=1`` to see a traceback for an
internal error.
The engine's log messages are printed as ``warning:`` and ``error:`` lines like the command's own
(``HALODB_DEBUG=1`` shows its ``info:`` and ``debug:`` lines too).

Typed keys: by default every key typed is a ``str``. With ``-t``/``--typed`` keys are Python
literals, and keys and values are shown as literals; with ``-T``/``--typed-value`` the value
``put`` stores is a literal too. Literals (``42``, ``2.5``, ``b'\\x00'``, ``('user', 42)``) are
read by a small AST walker that accepts only literals: nothing is ever evaluated.

Value codecs: a store opens whatever codec wrote it (the name in its manifest, read by
:func:`halodb.codec_name`), through :class:`_StoreCodec`; the commands that read no values never
decode one, and those that do use the default codec only for a store that uses it, any other
only when ``--codec`` names it (pickle runs code from the store's files when it decodes).

JSON Lines (``dump``, ``load``, ``list --json``): one ``{"key": K, "value": V}`` object a line,
where str, int, float, bool, null, lists and dicts are plain JSON and the types JSON lacks are
tagged single-key objects: ``{"$bytes": base64}``, ``{"$tuple": [...]}``, ``{"$float": "inf"}``,
``{"$int": "0x..."}`` (ints too long for decimal JSON) and ``{"$dict": {...}}`` (a dict whose only
key starts with ``$``, so that it is not read as a tag).
"""

from __future__ import annotations

import ast
import base64
import binascii
import contextlib
import dataclasses
import difflib
import inspect
import io
import json
import logging
import math
import os
import re
import shlex
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from types import FrameType, TracebackType
from typing import IO, Annotated, Any, Final, cast

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text
from rich.tree import Tree
from typer.core import TyperCommand, TyperGroup

import halodb
from halodb.btree import Internal, TreeReport
from halodb.keys import Key, decode_key, encode_key
from halodb.values import DefaultCodec

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_PIPE",
    "EXIT_STORE",
    "EXIT_USAGE",
    "CliError",
    "Session",
    "Shell",
    "app",
    "from_json",
    "literal_text",
    "main",
    "parse_key",
    "parse_literal",
    "parse_value",
    "show_key",
    "show_value",
    "to_json",
]

EXIT_OK: Final = 0
EXIT_NOT_FOUND: Final = 1
EXIT_USAGE: Final = 2
EXIT_STORE: Final = 3
EXIT_INTERRUPTED: Final = 130
EXIT_PIPE: Final = 141
"""What a shell reports for a program killed by SIGPIPE (128 + 13): its reader went away."""

DEFAULT_PATH: Final = "./halodb-data"
HELP_OPTIONS: Final = ["-h", "--help"]
HISTORY_LENGTH: Final = 1000
TREE_FANOUT: Final = 6
"""Children drawn per internal node by ``tree``; the rest are summarised as "... N more"."""

_MISSING: Any = object()
_CODEC = DefaultCodec()

DEFAULT_CODEC: Final = "halo1"
CODECS: Final[dict[str, Callable[[], halodb.ValueCodec]]] = {
    "halo1": halodb.DefaultCodec,
    "pickle": halodb.PickleCodec,
}
"""The value codecs ``--codec`` names. pickle is used only when named: unpickling runs code
from the store's files."""


class CliError(Exception):
    """A failure to report in one line, with the exit status it maps to."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


# ----------------------------------------------------------------------------- typed literals

_KEY_HINT = (
    "a typed key is a Python literal: 'text', b'bytes', 42, 2.5 or a tuple such as ('user', 42)"
)
_MAX_LITERAL_DEPTH = 100


class _LiteralError(ValueError):
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
        raise _LiteralError(f"not a Python literal ({exc.msg})") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise _LiteralError(f"not a usable literal ({exc})") from None
    return _literal(tree.body, value, 0)


def _literal(node: ast.expr, value: bool, depth: int) -> object:
    if depth > _MAX_LITERAL_DEPTH:
        raise _LiteralError(f"nested deeper than {_MAX_LITERAL_DEPTH}")
    if isinstance(node, ast.Constant):
        v = node.value
        if type(v) in (str, bytes, int, float) or (value and (v is None or type(v) is bool)):
            return v
        raise _LiteralError(f"{v!r} is not allowed here")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        operand = _literal(node.operand, False, depth + 1)
        if type(operand) in (int, float):
            number = cast(int | float, operand)
            return -number if isinstance(node.op, ast.USub) else number
    elif isinstance(node, ast.Name) and node.id in ("inf", "nan"):
        return float(node.id)
    elif isinstance(node, ast.Tuple):
        return tuple(_literal(item, value, depth + 1) for item in node.elts)
    elif value and isinstance(node, ast.List):
        return [_literal(item, value, depth + 1) for item in node.elts]
    elif value and isinstance(node, ast.Dict):
        result: dict[str, object] = {}
        for key_node, value_node in zip(node.keys, node.values, strict=True):
            if not (isinstance(key_node, ast.Constant) and type(key_node.value) is str):
                raise _LiteralError("dict keys must be str literals")
            result[key_node.value] = _literal(value_node, value, depth + 1)
        return result
    elif isinstance(node, ast.Set) or (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("set", "frozenset")
    ):
        if value:
            raise _LiteralError("a set is not a storable value; use a list instead, such as [1, 2]")
        raise _LiteralError("a set is not a key; use a tuple instead, such as (1, 2)")
    raise _LiteralError(f"{ast.unparse(node)[:40]!r} is not a literal (nothing is evaluated)")


_ECHO_LIMIT = 60
"""Characters of a bad input an error message repeats."""


def _echo(text: str) -> str:
    """``text`` quoted for an error message, cut to its first :data:`_ECHO_LIMIT` characters."""
    if len(text) <= _ECHO_LIMIT:
        return repr(text)
    return f"{text[:_ECHO_LIMIT]!r}… ({len(text):,} characters)"


_MESSAGE_LIMIT = 200
"""Characters of an exception's text an error message repeats (see :func:`_brief`)."""
_SUBSCRIPTS = re.compile(r"(?:\[[^\]\n]*\]){6,}")
_SUBSCRIPT = re.compile(r"\[[^\]\n]*\]")


def _brief(text: str, limit: int = _MESSAGE_LIMIT) -> str:
    """An exception's text cut for a one-line error: a long path into a nested value
    (``value[0][0][0]...``, one subscript a level) is shortened to its first two and last
    subscripts and its depth, and whatever is still longer than ``limit`` is cut.

    >>> _brief("value" + "[0]" * 101 + ": nested deeper than 100")
    'value[0][0]…[0] (101 levels): nested deeper than 100'
    """

    def shorten(match: re.Match[str]) -> str:
        parts = _SUBSCRIPT.findall(match.group())
        return f"{''.join(parts[:2])}…{parts[-1]} ({len(parts)} levels)"

    text = _SUBSCRIPTS.sub(shorten, text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _key_text(key: Key) -> str:
    """``key`` as a literal for an error message, cut to :data:`_ECHO_LIMIT` characters."""
    text = literal_text(key)
    return text if len(text) <= _ECHO_LIMIT else text[:_ECHO_LIMIT] + "…"


def parse_key(text: str, typed: bool) -> Key:
    """The key a command-line word names: the word itself, or with ``typed`` a literal."""
    if not typed:
        return text
    try:
        key = parse_literal(text)
        encode_key(key)  # type: ignore[arg-type]  # validates the type, NaN, size
    except (_LiteralError, TypeError, halodb.DataError) as exc:
        message = f"bad typed key {_echo(text)}: {_brief(str(exc))}; {_KEY_HINT}"
        raise CliError(EXIT_USAGE, message) from None
    return cast(Key, key)


def parse_prefix(text: str, typed: bool) -> str | bytes | tuple[Key, ...]:
    """A ``--prefix``: a str, or with ``typed`` a str, bytes or tuple literal."""
    if not typed:
        return text
    key = parse_key(text, typed)
    if not isinstance(key, str | bytes | tuple):
        raise CliError(EXIT_USAGE, f"bad prefix {_echo(text)}: a prefix is a str, bytes or tuple")
    return key


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
    except (_LiteralError, TypeError, halodb.DataError) as exc:
        message = f"bad typed value {_echo(raw)}: {_brief(str(exc))}"
        raise CliError(EXIT_USAGE, message) from None
    return value


# ----------------------------------------------------------------------------- showing data

# Characters that could move the cursor, ring the bell, start an escape sequence or not encode.
_UNSAFE_BLOCK = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_UNSAFE_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_BIG_INT = 10**4000


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


def show_key(key: Key, *, typed: bool = False) -> str:
    """A key on one line: a printable str as is, anything else (or everything, if ``typed``)
    as a Python literal."""
    if type(key) is str and not typed and not _UNSAFE_LINE.search(key):
        return key
    return literal_text(key)


def _printable(text: str) -> str:
    """``text`` with every character that could disturb a terminal written as an escape."""
    return _UNSAFE_LINE.sub(lambda m: repr(m.group())[1:-1], text)


def show_value(value: object, *, typed: bool = False, one_line: bool = False) -> str:
    """A value for a terminal: text as is (unless it holds control characters), bytes as a
    ``b'...'`` literal, other values as JSON; with ``typed``, always a Python literal.
    A value JSON cannot hold (a set or an object, from a store using the pickle codec) is
    shown as its ``repr()``, escaped."""
    if typed:
        return _printable(literal_text(value))
    if type(value) is str:
        unsafe = _UNSAFE_LINE if one_line else _UNSAFE_BLOCK
        return repr(value) if unsafe.search(value) else value
    if type(value) is bytes:
        return repr(value)
    try:
        exact = _plain_json(value, 0)
        text = json.dumps(value, ensure_ascii=False) if exact else ""
    except (TypeError, ValueError, RecursionError):
        exact = False
    if not exact:
        return _printable(literal_text(value))
    return json.dumps(value) if _UNSAFE_BLOCK.search(text) else text


def _plain_json(value: object, depth: int) -> bool:
    """Whether JSON shows ``value`` exactly: what the default codec stores (a store using
    the pickle codec may hold tuples, sets, dicts with other keys...)."""
    t = type(value)
    if t is str or t is int or t is float or t is bool or value is None:
        return True
    if depth > 200:
        return False
    if t is list:
        return all(_plain_json(item, depth + 1) for item in cast(list[object], value))
    if t is dict:
        items = cast(dict[object, object], value).items()
        return all(type(k) is str and _plain_json(v, depth + 1) for k, v in items)
    return False


# ----------------------------------------------------------------------------- JSON Lines

_TAGS = ("$bytes", "$tuple", "$float", "$int", "$dict")


def to_json(obj: object) -> Any:
    """``obj`` as plain JSON data, with the types JSON lacks tagged (see the module docstring).

    >>> to_json(("user", b"\\x00", float("inf")))
    {'$tuple': ['user', {'$bytes': 'AA=='}, {'$float': 'inf'}]}
    """
    t = type(obj)
    if t is str or t is bool or obj is None:
        return obj
    if t is int:
        n = cast(int, obj)
        return n if -_BIG_INT < n < _BIG_INT else {"$int": hex(n)}
    if t is float:
        f = cast(float, obj)
        return f if math.isfinite(f) else {"$float": repr(f)}
    if t is bytes:
        return {"$bytes": base64.b64encode(cast(bytes, obj)).decode("ascii")}
    if t is tuple:
        return {"$tuple": [to_json(item) for item in cast(tuple[object, ...], obj)]}
    if t is list:
        return [to_json(item) for item in cast(list[object], obj)]
    if t is dict:
        d = {k: to_json(v) for k, v in cast(dict[str, object], obj).items()}
        return {"$dict": d} if len(d) == 1 and next(iter(d)).startswith("$") else d
    raise TypeError(f"{t.__name__} has no JSON form")


def from_json(obj: Any) -> Any:
    """The inverse of :func:`to_json`; ``ValueError`` for a malformed or unknown tag."""
    if isinstance(obj, list):
        return [from_json(item) for item in obj]
    if isinstance(obj, dict):
        if len(obj) == 1:
            ((tag, inner),) = obj.items()
            if tag.startswith("$"):
                return _untag(tag, inner)
        return {k: from_json(v) for k, v in obj.items()}
    return obj


def _untag(tag: str, inner: Any) -> Any:
    if tag == "$bytes" and isinstance(inner, str):
        return base64.b64decode(inner, validate=True)
    if tag == "$tuple" and isinstance(inner, list):
        return tuple(from_json(item) for item in inner)
    if tag == "$float" and inner in ("inf", "-inf", "nan"):
        return float(inner)
    if tag == "$int" and isinstance(inner, str):
        return int(inner, 0)
    if tag == "$dict" and isinstance(inner, dict):
        return {k: from_json(v) for k, v in inner.items()}
    if tag in _TAGS:
        raise ValueError(f"malformed {tag} tag: {json.dumps(inner)[:60]}")
    raise ValueError(f"unknown tag {tag!r} (the tags are {', '.join(_TAGS)})")


def json_line(key: Key, value: object = _MISSING) -> str:
    """One JSON Lines record (without ``value``: ``{"key": K}``), always encodable as UTF-8.

    ``CliError`` (usage) for a value JSON Lines cannot hold: a set or another object, which a
    store using the pickle codec may hold.
    """
    record = {"key": to_json(key)}
    if value is not _MISSING:
        try:
            record["value"] = to_json(value)
        except (TypeError, RecursionError) as exc:
            raise CliError(
                EXIT_USAGE,
                f"cannot write the value of {_key_text(key)} as JSON: {_brief(str(exc))} (JSON "
                "Lines hold bytes, str, numbers, booleans, None, tuples, lists and dicts)",
            ) from None
    text = json.dumps(record, ensure_ascii=False, allow_nan=False)
    if _UNSAFE_BLOCK.search(text):  # lone surrogates in a str: escape them as \\udxxx
        text = json.dumps(record, allow_nan=False)
    return text


def parse_record(raw: bytes, where: str) -> tuple[Key, object]:
    """The key and value of one JSON Lines record; ``CliError`` (usage) if malformed."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CliError(EXIT_USAGE, f"{where}: not UTF-8 (byte {exc.start})") from None
    except (ValueError, RecursionError) as exc:
        raise CliError(EXIT_USAGE, f"{where}: bad JSON ({exc})") from None
    if not isinstance(obj, dict) or set(obj) != {"key", "value"}:
        raise CliError(EXIT_USAGE, f'{where}: expected {{"key": ..., "value": ...}}')
    try:
        key, value = from_json(obj["key"]), from_json(obj["value"])
        encode_key(key)
    except (ValueError, TypeError, RecursionError, binascii.Error, halodb.DataError) as exc:
        raise CliError(EXIT_USAGE, f"{where}: {_brief(str(exc))}") from None
    return cast(Key, key), value


# ----------------------------------------------------------------------------- terminal output


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """Raise, for :meth:`Session.guard` and :func:`main` to end quietly with
        :data:`EXIT_PIPE` (rich's default exits with status 1, which means "not found" here)."""
        self.quiet = True
        raise BrokenPipeError


def _console(*, stderr: bool = False) -> Console:
    """A console over the current ``sys.stdout``/``sys.stderr`` (tests swap them)."""
    return _Console(stderr=stderr, highlight=False, markup=False, emoji=False, soft_wrap=True)


def _error(message: str) -> None:
    _console(stderr=True).print(Text.assemble(("error: ", "bold red"), message))


def _warn(message: str) -> None:
    _console(stderr=True).print(Text.assemble(("warning: ", "bold yellow"), message))


def _debugging() -> bool:
    return bool(os.environ.get("HALODB_DEBUG"))


def _report_interrupt(message: str = "interrupted") -> None:
    """The ``error:`` line of a Ctrl-C, on a line of its own: after whatever output was pending
    and, on a terminal, after the ``^C`` the terminal echoed in the middle of a line."""
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
    with contextlib.suppress(OSError, ValueError):
        if sys.stderr.isatty():
            sys.stderr.write("\n")
    _error(message)


class _LogLines(logging.Handler):
    """Prints the engine's log records (the ``halodb`` logger) as the command's own lines:
    ``warning: ...``, ``error: ...`` on stderr.

    While a command runs (:meth:`Session.guard`), error records are held back: when the command
    then fails with a store error, its one ``error:`` line reports the problem and the held
    records are dropped, so that a failure is not reported twice in two wordings.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self._held: list[logging.LogRecord] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        with self.lock or contextlib.nullcontext():
            if self._held is not None and record.levelno >= logging.ERROR:
                self._held.append(record)
                return
        self._show(record)

    def _show(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            exc = record.exc_info[1] if record.exc_info else None
            if exc is not None:
                message += f" ({type(exc).__name__}: {exc})"
            if record.levelno >= logging.ERROR:
                _error(message)
            elif record.levelno >= logging.WARNING:
                _warn(message)
            else:
                label = "info: " if record.levelno >= logging.INFO else "debug: "
                _console(stderr=True).print(Text.assemble((label, "dim"), message))
            if exc is not None and record.exc_info and _debugging():
                sys.stderr.write(logging.Formatter().formatException(record.exc_info) + "\n")
        except Exception:
            self.handleError(record)

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """Hold error records back until the end of the block, :meth:`drop` or
        :meth:`print_held`."""
        with self.lock or contextlib.nullcontext():
            outermost = self._held is None
            if outermost:
                self._held = []
        try:
            yield
        finally:
            if outermost:
                self.print_held()
                with self.lock or contextlib.nullcontext():
                    self._held = None

    def drop(self) -> None:
        """Forget the held records: the failure they describe is being reported."""
        with self.lock or contextlib.nullcontext():
            if self._held is not None:
                self._held.clear()

    def print_held(self) -> None:
        """Print the held records now."""
        with self.lock or contextlib.nullcontext():
            held = self._held or []
            if self._held is not None:
                self._held = []
        for record in held:
            self._show(record)


_LOG_LINES = _LogLines()


def _configure_logging() -> None:
    """Route the ``halodb`` logger to :data:`_LOG_LINES`: warnings and errors, or with
    ``HALODB_DEBUG`` everything. Without this, Python's last-resort handler would print bare
    messages."""
    logger = logging.getLogger("halodb")
    if _LOG_LINES not in logger.handlers:
        logger.addHandler(_LOG_LINES)
    logger.setLevel(logging.DEBUG if _debugging() else logging.WARNING)


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n:,} " + (word if n == 1 else plural or word + "s")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _store_exists(path: str) -> bool:
    """Whether opening ``path`` could find something: anything but a missing or empty directory."""
    if not os.path.exists(path):
        return False
    return not (os.path.isdir(path) and not os.listdir(path))


class _PipeClosed(Exception):
    """Stdout is a pipe whose reader went away (``halodb list | head``): end the program quietly.

    Not an ``OSError``, so that typer does not turn it into exit status 1 on its way to
    :func:`main`.
    """


class _StopPaging(Exception):
    """The reader pressed q at a ``-- more --`` prompt."""


class _Pager:
    """Writes lines to stdout, stopping after each screenful at a ``-- more --`` prompt.

    Paging is on only in the shell with both stdin and stdout on a terminal; space or Enter
    shows the next page, ``a`` all the rest, ``q`` stops. Ctrl-C interrupts as anywhere else.
    """

    def __init__(self, enabled: bool) -> None:
        size = shutil.get_terminal_size()
        self.rows = size.lines - 1
        self.columns = max(size.columns, 20)
        self.enabled = enabled and self.rows >= 3
        self.used = 0

    def line(self, text: str) -> None:
        if self.enabled:
            need = max(1, -(-len(text) // self.columns))
            if self.used + need > self.rows:
                self._more()
                self.used = 0
            self.used += need
        sys.stdout.write(text + "\n")

    def _more(self) -> None:
        out = sys.stdout
        try:
            key = _read_key("-- more -- (space: next page, a: all, q: stop)")
        except KeyboardInterrupt:
            raise  # the prompt stays, and the interrupt's error line follows on a line of its own
        except BaseException:
            out.write("\r\x1b[K")
            raise
        out.write("\r\x1b[K")  # the prompt goes: the next line takes its place
        out.flush()
        if key in ("q", "Q", "\x04", "\x1b"):
            raise _StopPaging
        if key in ("a", "A"):
            self.enabled = False


def _read_key(prompt: str) -> str:
    """Show ``prompt`` and return one key press, without waiting for Enter."""
    out = sys.stdout
    try:
        import termios
        import tty
    except ImportError:  # not POSIX: fall back to a line
        return input(prompt)[:1] or " "
    fd = sys.stdin.fileno()
    old = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd, termios.TCSANOW)  # not TCSAFLUSH: keep a key typed ahead
        out.write(prompt)
        out.flush()
        data = os.read(fd, 1)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)
    return data.decode("latin-1") or "q"


@contextlib.contextmanager
def _progress(
    enabled: bool, description: str, total: float | None
) -> Iterator[Callable[[float], None]]:
    """A transient progress bar on stderr; yields ``update(completed)``."""
    if not enabled:
        yield lambda _completed: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn()]
    if total is not None:
        columns.append(TimeRemainingColumn())
    else:
        columns.append(MofNCompleteColumn())
    with Progress(*columns, console=_console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda completed: progress.update(task, completed=completed)


class _NoInterrupt:
    """Holds Ctrl-C back while a store write runs, then raises it: an interrupt never lands in
    the middle of a write (the shell goes on afterwards with the same open store)."""

    def __init__(self) -> None:
        self._installed = False
        self._old: Any = None
        self._pending = False

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self._pending = True

    def __enter__(self) -> _NoInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._installed:
            signal.signal(
                signal.SIGINT, self._old if self._old is not None else signal.default_int_handler
            )
        if self._pending and exc_type is None:
            raise KeyboardInterrupt


# ----------------------------------------------------------------------------- value codecs


class _StoreCodec:
    """The value codec the command opens a store with: it bears the name recorded in the
    store's manifest, so that a store written with any codec opens, and it encodes and
    decodes with ``inner``, the codec chosen for the command (``--codec``, or the default
    codec for a store that uses it). Without one (a command that reads no values, or a store
    whose codec was not chosen) ``encode`` and ``decode`` raise ``InterfaceError`` with
    ``refusal``, which names the store's codec and ``--codec``. Commands that read only keys
    use ``Store.range_keys``, which decodes no value.
    """

    def __init__(self, name: str, inner: halodb.ValueCodec | None, refusal: str) -> None:
        self.name = name
        self.inner = inner
        self.refusal = refusal

    def encode(self, value: object) -> bytes:
        if self.inner is None:
            raise halodb.InterfaceError(self.refusal)
        return self.inner.encode(value)

    def decode(self, data: bytes) -> object:
        if self.inner is None:
            raise halodb.InterfaceError(self.refusal)
        return self.inner.decode(data)


def _codec_option(value: str | None) -> str | None:
    """``--codec``: one of :data:`CODECS`."""
    if value is not None and value not in CODECS:
        raise typer.BadParameter(
            f"unknown codec {value!r}: the codecs are halo1 (the default) and pickle"
        )
    return value


# ----------------------------------------------------------------------------- the session


def _ask_on_stderr(prompt: str) -> str:
    """A question on the command line: shown on stderr (stdout is for data), read from stdin."""
    sys.stdout.flush()
    sys.stderr.write(prompt)
    sys.stderr.flush()
    answer = sys.stdin.readline()
    if not answer:
        raise EOFError
    return answer


class Session:
    """What a command works on: the store path and value codec, and in the shell the open
    store and batch.

    On the command line each command opens the store (read-only for reads, so that several
    readers can run together) and closes it. In the shell the store stays open, is created on
    the first write, and falls back to read-only when another process is reading it.

    Values are decoded with the codec ``codec`` names (``--codec``), or the default codec for
    a store that uses it; a store using another codec opens all the same for the commands
    that read no values (see :class:`_StoreCodec`).
    """

    def __init__(
        self,
        path: str,
        *,
        in_shell: bool = False,
        ask: Callable[[str], str] | None = None,
        can_ask: bool | None = None,
        codec: str | None = None,
    ) -> None:
        self.path = path
        self.in_shell = in_shell
        self.ask = ask or (input if in_shell else _ask_on_stderr)
        """Shows a question, returns the answer; ``EOFError`` at end of input."""
        self.can_ask = can_ask
        """Whether a question may be asked: ``None`` means when stdin is a terminal (never
        otherwise: the answer would be read from the data or the script piped in)."""
        self.codec_choice = codec
        """The codec named by ``--codec``, if any."""
        self.codec: _StoreCodec | None = None
        """The codec the open store was opened with."""
        self.db: halodb.Store | None = None
        self.batch: halodb.Batch | None = None
        self.batch_note_shown = False

    # -- the value codec -------------------------------------------------------------------

    def _stored_codec(self) -> str | None:
        """The codec name in the store's manifest; ``None`` if there is no store there (yet):
        then opening it says what is wrong, or creates it."""
        try:
            return halodb.codec_name(self.path)
        except halodb.InterfaceError:
            return None

    def _codec_for(self, stored: str | None, *, values: bool = True) -> _StoreCodec:
        """The codec to open the store with, whose codec is ``stored`` (``None``: a new
        store): decoding with the codec chosen, or the default one if the store uses it;
        without ``values``, none (the command reads no values)."""
        choice = self.codec_choice
        if choice is not None and stored is not None and choice != stored:
            raise CliError(
                EXIT_USAGE,
                f"{os.path.abspath(self.path)}: the store's values use the {stored!r} codec, "
                f"not {choice!r} (--codec {stored} reads them)",
            )
        name = stored or choice or DEFAULT_CODEC
        inner: halodb.ValueCodec | None = None
        if values and choice is not None:
            inner = CODECS[choice]()
        elif values and name == DEFAULT_CODEC:
            inner = halodb.DefaultCodec()
        return _StoreCodec(name, inner, self._refusal(name))

    def _refusal(self, name: str) -> str:
        """Why values encoded with codec ``name`` are not read or written, and what to do."""
        where = os.path.abspath(self.path)
        if name == "pickle":
            how = (
                "start the shell with --codec pickle (halodb --codec pickle)"
                if self.in_shell
                else "add --codec pickle"
            )
            return (
                f"{where}: the store's values use the 'pickle' codec, which is used only when "
                f"asked for: to read or write values, {how}; unpickling runs code from the "
                "store's files, so do it only for a store you trust"
            )
        if name == DEFAULT_CODEC:
            return f"{where}: this command reads no values (a bug in HaloDB; please report it)"
        return (
            f"{where}: the store's values use the {name!r} codec, which the halodb command "
            f"does not know (--codec knows {', '.join(CODECS)}); open the store from Python "
            "with its codec to read or write values"
        )

    @staticmethod
    def _decoding(codec: _StoreCodec) -> halodb.ValueCodec:
        if codec.inner is None:
            raise CliError(EXIT_USAGE, codec.refusal)
        return codec.inner

    def value_codec(self) -> halodb.ValueCodec:
        """The codec values are encoded with, for checking a value before the store opens;
        ``CliError`` if this store's values cannot be read or written (another codec)."""
        if self.in_shell and self.codec is not None:
            return self._decoding(self.codec)
        return self._decoding(self._codec_for(self._stored_codec()))

    # -- the store -------------------------------------------------------------------------

    @contextlib.contextmanager
    def store(
        self, *, write: bool, create: bool = True, values: bool
    ) -> Iterator[halodb.Store | None]:
        """The store, open for ``write`` or reading, and for ``values`` (the command reads or
        writes values: ``CliError`` if the store's codec was not chosen) or not (the store's
        values stay undecoded, whatever its codec). ``None`` when there is none yet and the
        command needs none: a read in the shell, or a write with ``create=False``.

        On the command line a read of a missing store raises (exit status 3): it never creates.
        """
        if self.in_shell:
            yield self._shell_store(write, create, values)
            return
        if write and not create and not _store_exists(self.path):
            yield None
            return
        codec = self._codec_for(self._stored_codec(), values=values)
        if values:
            self._decoding(codec)
        db = halodb.open(self.path, readonly=not write, value_codec=codec)
        self.codec = codec
        try:
            yield db
        finally:
            self.codec = None
            db.close()

    def _shell_store(self, write: bool, create: bool, values: bool) -> halodb.Store | None:
        if self.db is None:
            if _store_exists(self.path):
                self.open_existing()
            elif write and create:
                codec = self._codec_for(None)
                self.db = halodb.open(self.path, value_codec=codec)
                self.codec = codec
                self.info(f"created a new store at {self.db.path}")
            else:
                return None
        assert self.db is not None and self.codec is not None
        if write and self.db.readonly:
            raise CliError(
                EXIT_STORE,
                f"{self.db.path}: this shell has the store open read-only (another process was "
                "reading it when the shell opened it); close that one and restart the shell",
            )
        if values:
            self._decoding(self.codec)
        return self.db

    def open_existing(self) -> None:
        """Open the existing store for writing, or read-only if other processes are reading it."""
        codec = self._codec_for(self._stored_codec())
        try:
            self.db = halodb.open(self.path, create=False, value_codec=codec)
        except halodb.OperationalError:
            # raises if a writer holds it
            self.db = halodb.open(self.path, readonly=True, value_codec=codec)
            _warn(f"{self.db.path}: another process is reading the store; this shell is read-only")
        self.codec = codec

    def keys(
        self,
        db: halodb.Store | None,
        prefix: str | None,
        start: str | None,
        stop: str | None,
        *,
        typed: bool,
        reverse: bool = False,
    ) -> Iterator[Key]:
        """The keys of a range of the open store ``db``, read without decoding any value."""
        lo, hi, pre = _bounds(prefix, start, stop, typed=typed)
        if db is None:
            return iter(())
        return db.range_keys(lo, hi, reverse=reverse, prefix=pre)

    def close(self) -> None:
        """Discard an open batch and close the store (which flushes it)."""
        if self.batch is not None:
            pending = len(self.batch)
            self.batch.discard()
            self.batch = None
            if pending:
                _warn(f"discarded the uncommitted batch of {_plural(pending, 'change')}")
        if self.db is not None:
            db, self.db = self.db, None
            self.codec = None
            db.close()

    # -- output ----------------------------------------------------------------------------

    def out(self, text: str) -> None:
        """A line of data, on stdout."""
        sys.stdout.write(text + "\n")

    def info(self, text: str) -> None:
        """A status line: on stdout in the shell, on stderr on the command line (stdout is data)."""
        if self.in_shell:
            sys.stdout.write(text + "\n")
        else:
            _console(stderr=True).print(text, style="dim")

    def pager(self) -> _Pager:
        return _Pager(self.in_shell and sys.stdin.isatty() and sys.stdout.isatty())

    def may_ask(self) -> bool:
        """Whether a question can be asked: only on a terminal, so that a question never
        reads its answer from a script or data piped in."""
        return sys.stdin.isatty() if self.can_ask is None else self.can_ask

    def confirm(self, question: str) -> bool:
        """Ask a yes/no question; no by default and at end of input. Ctrl-C raises
        ``KeyboardInterrupt`` (the command ends with status 130). Callers check
        :meth:`may_ask` first."""
        try:
            answer = self.ask(f"{question} [y/N] ")
        except EOFError:
            # Ctrl-D leaves the cursor after the question
            (sys.stdout if self.in_shell else sys.stderr).write("\n")
            return False
        return answer.strip().lower() in ("y", "yes")

    def note_batch_reads(self) -> None:
        if self.batch is not None and not self.batch_note_shown:
            self.batch_note_shown = True
            self.info("(note: reads see the store, not the uncommitted batch)")

    # -- errors ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Turn every failure inside into one line on stderr and ``typer.Exit(status)``.

        A closed stdout (``halodb list | head``) becomes :class:`_PipeClosed`, which ends the
        program quietly (see :func:`main`).
        """
        with _LOG_LINES.holding():
            try:
                yield
                return
            except (typer.Exit, typer.Abort, typer.TyperException, _PipeClosed):
                raise
            except BrokenPipeError:
                raise _PipeClosed from None
            except CliError as exc:
                code, message = exc.code, exc.message
            except KeyboardInterrupt:
                code, message = EXIT_INTERRUPTED, "interrupted"
            except halodb.DataError as exc:
                code, message = EXIT_USAGE, _brief(str(exc), 2 * _MESSAGE_LIMIT)
            except halodb.CorruptionError as exc:
                code = EXIT_STORE
                message = (
                    f"the store is damaged: {_brief(str(exc), 2 * _MESSAGE_LIMIT)} (restore it "
                    "from a dump or a backup)"
                )
            except halodb.Error as exc:
                code, message = EXIT_STORE, _brief(str(exc), 2 * _MESSAGE_LIMIT)
            except OSError as exc:
                where = f"{exc.filename}: " if exc.filename else ""
                code, message = EXIT_STORE, f"{where}{exc.strerror or exc}"
            except Exception as exc:
                if _debugging():
                    raise
                code = EXIT_STORE
                message = (
                    f"internal error: {type(exc).__name__}: {exc} (a bug in HaloDB; please "
                    "report it; HALODB_DEBUG=1 shows the traceback)"
                )
            if code == EXIT_STORE:
                _LOG_LINES.drop()  # what the engine logged about it: this line reports it
            else:
                _LOG_LINES.print_held()
            if code == EXIT_INTERRUPTED:
                _report_interrupt(message)
            else:
                _error(message)
            raise typer.Exit(code)


def _session(ctx: typer.Context, path: str | None = None, codec: str | None = None) -> Session:
    """The command's session, with the ``--path`` and ``--codec`` given after the command
    name (they override those given before it; the shell refuses them: it works on one store)."""
    obj = ctx.obj
    s = obj if isinstance(obj, Session) else Session(os.environ.get("HALODB_PATH") or DEFAULT_PATH)
    if path is None and codec is None:
        return s
    if s.in_shell:
        given = " and ".join(name for name, v in (("--path", path), ("--codec", codec)) if v)
        _error(
            f"{given}: the shell works on one store ({os.path.abspath(s.path)}), chosen when "
            "it starts: halodb --path DIR --codec NAME"
        )
        raise typer.Exit(EXIT_USAGE)
    if path is not None:
        s.path = path
    if codec is not None:
        s.codec_choice = codec
    return s


# ----------------------------------------------------------------------------- the commands


@contextlib.contextmanager
def _pipe_closes_quietly() -> Iterator[None]:
    try:
        yield
    except BrokenPipeError:
        raise _PipeClosed from None


class _QuietPipe:
    """Output to a closed pipe ends the program quietly (typer would exit with status 1, which
    means "not found" here): also for ``--help`` and in the shell. Mixed into click classes."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with _pipe_closes_quietly():
            return super().make_context(*args, **kwargs)  # type: ignore[misc]

    def invoke(self, ctx: Any) -> Any:
        with _pipe_closes_quietly():
            return super().invoke(ctx)  # type: ignore[misc]


class _PlainFlags:
    """Help that shows no type for a flag (typer shows ``<bool>`` beside every flag, which
    takes no value). Mixed into click classes."""

    def get_params(self, ctx: Any) -> Any:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""  # what typer's help shows in the type column
        return params


_NEGATIVE_NUMBER = re.compile(r"-(?:\.?\d|inf\Z|nan\Z)", re.IGNORECASE)
"""A word that is a negative number (``-5``, ``-0.0``, ``-.5``, ``-1e3``, ``-inf``), not an
option: no option of any command is a digit."""


def _numbers_as_values(args: list[str], params: list[Any]) -> list[str]:
    """``args`` with the negative numbers that are not an option's value moved, with the
    other keys and values, after a ``--``, so that the parser takes them for values:
    ``put -t -0.0 x`` is ``put -t -- -0.0 x``. ``args`` themselves if they hold none."""
    taking = {
        opt
        for p in params
        if p.param_type_name == "option" and not getattr(p, "is_flag", False)
        for opt in p.opts
    }

    def takes_next(word: str) -> bool:
        if word.startswith("--"):
            return word in taking
        for i, char in enumerate(word[1:], 1):  # a cluster of short options, such as -tn
            if f"-{char}" in taking:
                return i == len(word) - 1  # else it takes the rest of the word
        return False

    options: list[str] = []
    values: list[str] = []
    moved = False
    words = iter(args)
    for word in words:
        if word == "--":
            values.extend(words)
        elif _NEGATIVE_NUMBER.match(word):
            values.append(word)
            moved = True
        elif word.startswith("-") and len(word) > 1:
            options.append(word)
            if takes_next(word):
                options.extend(islice(words, 1))
        else:
            values.append(word)
    return [*options, "--", *values] if moved else args


class _NumbersAsValues:
    """A negative number is a key or a value (``put temp -5``), not an unknown option.
    Mixed into click commands."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        params = self.get_params(ctx)  # type: ignore[attr-defined]
        return super().parse_args(ctx, _numbers_as_values(args, params))  # type: ignore[misc,no-any-return]


def _usage_message(exc: typer.TyperException, see: str) -> str:
    """A usage error on one line: the parser's message; for an unknown option, a reminder that
    a key or value starting with '-' goes after '--'; and ``see``, where the options are."""
    message = exc.format_message().rstrip(".")
    notes = []
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoSuchOption" and ctx is not None:  # click's class, not exported
        names = [
            p.metavar or p.name.upper()
            for p in ctx.command.params
            if p.param_type_name == "argument"
        ]
        if names:
            notes.append(
                f"a {' or '.join(names)} that starts with '-' goes after '--': "
                f"{ctx.info_name} -- {' '.join(names)}"
            )
    if see:
        notes.append(see)
    return f"{message} ({'; '.join(notes)})" if notes else message


class _Command(_QuietPipe, _PlainFlags, _NumbersAsValues, TyperCommand):
    """A ``halodb`` subcommand. In the shell its help leaves out ``--path`` and ``--codec``:
    the shell's store is chosen when it starts."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        shown: list[Any] = []
        if isinstance(ctx.obj, Session) and ctx.obj.in_shell:
            params: list[Any] = self.params
            shown = [p for p in params if p.name in ("path", "codec") and not p.hidden]
        for param in shown:
            param.hidden = True
        try:
            super().format_help(ctx, formatter)
        finally:
            for param in shown:
                param.hidden = False


class _Group(_QuietPipe, _PlainFlags, TyperGroup):
    """The ``halodb`` group. Usage errors are one ``error:`` line, like every other error
    (typer draws them in a box)."""

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        def run(standalone: bool) -> Any:
            return super(_Group, self).main(
                args=args,
                prog_name=prog_name,
                complete_var=complete_var,
                standalone_mode=standalone,
                windows_expand_args=windows_expand_args,
                **extra,
            )

        if not standalone_mode:
            return run(False)
        try:
            result = run(False)
        except typer.TyperException as exc:
            ctx = getattr(exc, "ctx", None)
            see = ""
            if exc.exit_code == EXIT_USAGE and ctx is not None:
                see = f"see '{ctx.command_path} --help'"
            _error(_usage_message(exc, see))
            sys.exit(exc.exit_code)
        except typer.Abort:
            _error("aborted")
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(result if isinstance(result, int) else EXIT_OK)


def _store_path(value: str | None) -> str | None:
    """``--path`` and ``shell DIR``: an empty path is a mistake, not the current directory."""
    if value == "":
        raise typer.BadParameter("the store directory cannot be empty")
    return value


app = typer.Typer(
    cls=_Group,
    name="halodb",
    help=(
        "HaloDB: an embeddable, crash-safe, ordered key-value store.\n\n"
        "Without a command, opens the interactive shell on the store. The store is the "
        "directory given by --path, else the HALODB_PATH environment variable, else "
        "./halodb-data (created on first write).\n\n"
        "Exit status: 0 success, 1 key not found, 2 usage error, 3 store error "
        "(locked, corrupted, not a store), 130 interrupted, 141 output pipe closed."
    ),
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": HELP_OPTIONS},
)

PathOption = Annotated[
    str | None,
    typer.Option(
        "--path",
        "-p",
        metavar="DIR",
        callback=_store_path,
        rich_help_panel="Store",
        help="The store directory (also before the command; else $HALODB_PATH, else "
        "./halodb-data).",
    ),
]
CODEC_HELP: Final = (
    "The codec of the store's values: halo1 (the default) or pickle. pickle is used only when "
    "named: unpickling runs code from the store's files."
)
CodecOption = Annotated[
    str | None,
    typer.Option(
        "--codec", metavar="NAME", callback=_codec_option, rich_help_panel="Store", help=CODEC_HELP
    ),
]
Typed = Annotated[
    bool,
    typer.Option(
        "--typed",
        "-t",
        help="Keys are Python literals: 42, b'\\x00', ('user', 1); output shows types as literals.",
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]
KeyArg = Annotated[
    str, typer.Argument(metavar="KEY", help="The key: a string, or with -t a Python literal.")
]
Prefix = Annotated[str | None, typer.Option("--prefix", help="Only keys with this prefix.")]
Start = Annotated[str | None, typer.Option("--start", help="Only keys >= START.")]
Stop = Annotated[str | None, typer.Option("--stop", help="Only keys < STOP.")]
Progress = Annotated[
    bool | None,
    typer.Option("--progress/--no-progress", help="Show a progress bar (default: on a terminal)."),
]


def _command(
    name: str | None = None, *, panel: str
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """``app.command`` with the docstring's paragraphs reflowed for typer's rich help."""

    def register(func: Callable[..., None]) -> Callable[..., None]:
        paragraphs = inspect.cleandoc(func.__doc__ or "").split("\n\n")
        text = "\n\n".join(" ".join(p.split()) for p in paragraphs)
        return app.command(name, cls=_Command, help=text, rich_help_panel=panel)(func)

    return register


def _version(value: bool) -> None:
    if value:
        typer.echo(f"halodb {halodb.__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    path: Annotated[
        str,
        typer.Option(
            "--path",
            "-p",
            envvar="HALODB_PATH",
            metavar="DIR",
            callback=_store_path,
            help="The store directory (before or after the command): this, else $HALODB_PATH, "
            "else ./halodb-data (created on first write).",
        ),
    ] = DEFAULT_PATH,
    codec: Annotated[
        str | None,
        typer.Option("--codec", metavar="NAME", callback=_codec_option, help=CODEC_HELP),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    if not isinstance(ctx.obj, Session):
        ctx.obj = Session(path, codec=codec)
    if ctx.invoked_subcommand is None:
        raise typer.Exit(Shell(path, codec=codec).run())


@_command(panel="Data")
def put(
    ctx: typer.Context,
    key: KeyArg,
    value: Annotated[
        str,
        typer.Argument(
            metavar="VALUE",
            help="The value; - reads stdin (on the command line, not in the shell).",
        ),
    ],
    typed: Typed = False,
    typed_value: Annotated[
        bool,
        typer.Option(
            "--typed-value", "-T", help="VALUE is a Python literal: 42, b'..', [1, 2], {'a': 1}."
        ),
    ] = False,
    as_bytes: Annotated[
        bool, typer.Option("--bytes", "-b", help="Store the value as bytes, not text.")
    ] = False,
    path: PathOption = None,
    codec: CodecOption = None,
) -> None:
    """Store VALUE under KEY.

    VALUE is stored as text (str); with --bytes as bytes; with -T as the Python literal it
    spells (a number, bytes, a list, a dict...). '-' reads the value from stdin (on the
    command line, not in the shell): stored as text if it is UTF-8 without NUL bytes, else as
    bytes. A negative number is a value (put temp -5); another value that starts with '-'
    goes after '--' (put -- KEY -VALUE).
    """
    s = _session(ctx, path, codec)
    with s.guard():
        k = parse_key(key, typed)
        raw: str | bytes = value
        if value == "-":
            if s.in_shell:
                raise CliError(EXIT_USAGE, "'-' (read stdin) works on the command line only")
            raw = sys.stdin.buffer.read()
        v = parse_value(raw, typed=typed_value, as_bytes=as_bytes, codec=s.value_codec())
        if s.batch is not None:
            s.batch[k] = v
            s.info(f"queued ({_plural(len(s.batch), 'change')} in the batch)")
            return
        with _NoInterrupt(), s.store(write=True, values=True) as db:
            assert db is not None
            db[k] = v
        if s.in_shell:
            s.info("OK")


@_command(panel="Data")
def get(
    ctx: typer.Context,
    key: KeyArg,
    typed: Typed = False,
    as_json: AsJson = False,
    raw: Annotated[
        bool, typer.Option("--raw", help="Write the value's exact bytes (for binary values).")
    ] = False,
    path: PathOption = None,
    codec: CodecOption = None,
) -> None:
    """Print the value of KEY.

    Text is printed as is, bytes as a b'...' literal (--raw writes the exact bytes, and in
    the shell a newline after them if they do not end with one), other values as JSON.
    Exit status 1 if KEY is absent.
    """
    s = _session(ctx, path, codec)
    with s.guard():
        k = parse_key(key, typed)
        with s.store(write=False, values=True) as db:
            value = _MISSING if db is None else db.get(k, _MISSING)
        if value is _MISSING:
            s.note_batch_reads()
            raise CliError(EXIT_NOT_FOUND, f"not found: {literal_text(k)}")
        if as_json:
            s.out(json_line(k, value))
        elif raw:
            if isinstance(value, bytes):
                data = value
            elif isinstance(value, str):
                data = value.encode("utf-8", "surrogatepass")
            else:
                try:
                    if not _plain_json(value, 0):
                        raise TypeError(type(value).__name__)
                    data = json.dumps(value).encode()
                except (TypeError, ValueError, RecursionError):
                    raise CliError(
                        EXIT_USAGE,
                        f"the value of {_key_text(k)} is a {type(value).__name__}, which has "
                        "no raw form (--raw writes bytes, text and JSON values)",
                    ) from None
            if s.in_shell and data and not data.endswith(b"\n"):
                data += b"\n"  # the prompt starts a line of its own
            sys.stdout.flush()
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        else:
            s.out(show_value(value, typed=typed))
        s.note_batch_reads()


@_command(panel="Data")
def delete(
    ctx: typer.Context,
    key: KeyArg,
    typed: Typed = False,
    path: PathOption = None,
    codec: CodecOption = None,
) -> None:
    """Delete KEY.

    Exit status 1 if KEY is absent.
    """
    s = _session(ctx, path, codec)
    with s.guard():
        k = parse_key(key, typed)
        if s.batch is not None:
            del s.batch[k]
            s.info(f"queued ({_plural(len(s.batch), 'change')} in the batch)")
            return
        with _NoInterrupt(), s.store(write=True, create=False, values=False) as db:
            try:
                if db is None:
                    raise KeyError(k)
                del db[k]
            except KeyError:
                raise CliError(EXIT_NOT_FOUND, f"not found: {literal_text(k)}") from None
        if s.in_shell:
            s.info("OK")


def _bounds(
    prefix: str | None, start: str | None, stop: str | None, *, typed: bool
) -> tuple[Key | None, Key | None, str | bytes | tuple[Key, ...] | None]:
    """The parsed ``start``, ``stop`` and ``prefix`` of a range."""
    lo = None if start is None else parse_key(start, typed)
    hi = None if stop is None else parse_key(stop, typed)
    pre = None if prefix is None else parse_prefix(prefix, typed)
    return lo, hi, pre


def _scan(
    db: halodb.Store | None,
    prefix: str | None,
    start: str | None,
    stop: str | None,
    *,
    typed: bool,
    reverse: bool = False,
) -> Iterator[tuple[Key, Any]]:
    lo, hi, pre = _bounds(prefix, start, stop, typed=typed)
    if db is None:
        return iter(())
    return db.range(lo, hi, reverse=reverse, prefix=pre)


@_command("list", panel="Data")
def list_(
    ctx: typer.Context,
    prefix: Prefix = None,
    start: Start = None,
    stop: Stop = None,
    reverse: Annotated[bool, typer.Option("--reverse", "-r", help="Largest key first.")] = False,
    limit: Annotated[
        int | None,
        typer.Option("--limit", "-n", min=0, max=sys.maxsize, help="At most this many keys."),
    ] = None,
    keys_only: Annotated[
        bool, typer.Option("--keys-only", "-k", help="Keys only (no value is read).")
    ] = False,
    typed: Typed = False,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="JSON Lines, one {key, value} object a line ({key} with -k)."),
    ] = False,
    path: PathOption = None,
    codec: CodecOption = None,
) -> None:
    """List keys and values in key order.

    One 'key TAB value' a line; text that would break the line (tabs, newlines, control
    characters) is shown as a Python literal, as are keys that are not text.
    """
    s = _session(ctx, path, codec)
    with s.guard():
        with s.store(write=False, values=not keys_only) as db:
            items: Iterator[tuple[Key, Any]]
            if keys_only:
                keys = s.keys(db, prefix, start, stop, typed=typed, reverse=reverse)
                items = ((key, _MISSING) for key in keys)
            else:
                items = _scan(db, prefix, start, stop, typed=typed, reverse=reverse)
            if limit is not None:
                items = islice(items, limit)
            pager = s.pager()
            shown = 0
            try:
                for key, value in items:
                    if as_json:
                        line = json_line(key, value)
                    elif keys_only:
                        line = show_key(key, typed=typed)
                    else:
                        line = show_key(key, typed=typed) + "\t"
                        line += show_value(value, typed=typed, one_line=True)
                    pager.line(line)
                    shown += 1
            except _StopPaging:
                s.info(f"(stopped after {_plural(shown, 'key')})")
                return
        if s.in_shell and not as_json:
            more = "; --limit reached" if limit is not None and shown == limit else ""
            s.info(f"({_plural(shown, 'key')}{more})" if shown else "(no keys)")
        s.note_batch_reads()


@_command(panel="Data")
def count(
    ctx: typer.Context,
    prefix: Prefix = None,
    start: Start = None,
    stop: Stop = None,
    typed: Typed = False,
    as_json: Annotated[bool, typer.Option("--json", help='Print {"keys": N}.')] = False,
    path: PathOption = None,
    codec: CodecOption = None,
) -> None:
    """Print the number of keys.

    All keys: at once. In a range or with a prefix: by a scan of the keys (no value is read).
    """
    s = _session(ctx, path, codec)
    with s.guard(), s.store(write=False, values=False) as db:
        if db is not None and prefix is None and start is None and stop is None:
            n = len(db)
        else:
            n = sum(1 for _ in s.keys(db, prefix, start, stop, typed=typed))
        s.out(json.dumps({"keys": n}) if as_json else str(n))


@_command(panel="Data")
def clear(
    ctx: typer.Context,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    path: PathOption = None,
    codec: CodecOption = None,
) -> None:
    """Delete every key, atomically.

    Asks first; --yes skips the question (needed when stdin is not a terminal, also in a
    shell reading a script: the answer is never read from the script).
    """
    s = _session(ctx, path, codec)
    with s.guard():
        if s.batch is not None:
            raise CliError(EXIT_USAGE, "clear cannot be part of a batch; 'commit' or 'abort' first")
        with s.store(write=True, create=False, values=False) as db:
            if db is None:
                s.info("no store yet: nothing to clear")
                return
            n = len(db)
            if not n:
                s.info("the store is empty already")
                return
            if not yes:
                if not s.may_ask():
                    raise CliError(
                        EXIT_USAGE,
                        "clear deletes every key: confirm with --yes (no terminal to ask)",
                    )
                confirmed = s.confirm(f"Delete every key in {db.path} ({_plural(n, 'key')})?")
                if not confirmed:
                    s.info("nothing deleted")
                    return
            with _NoInterrupt():
                db.clear()
            s.info(f"deleted {_plural(n, 'key')}")


def _hit_rate(hits: int, misses: int) -> str:
    return f"{100 * hits / (hits + misses):.0f}%" if hits + misses else "-"


def _stats_rows(st: halodb.StoreStats) -> list[tuple[str, list[str], str]]:
    """(counter, value per partition, total) for every counter ``stats`` shows."""
    parts = st.partitions

    def counts(values: list[int]) -> tuple[list[str], str]:
        return [f"{v:,}" for v in values], f"{sum(values):,}"

    def sizes(values: list[int]) -> tuple[list[str], str]:
        return [_size(v) for v in values], _size(sum(values))

    rows: list[tuple[str, tuple[list[str], str]]] = [
        ("keys", counts([p.keys for p in parts])),
        ("memtable entries", counts([p.memtable_entries for p in parts])),
        ("memtable size", sizes([p.memtable_bytes for p in parts])),
        ("log size", sizes([p.wal_bytes for p in parts])),
        ("tree height", ([str(p.tree_height) for p in parts],
                         str(max((p.tree_height for p in parts), default=0)))),
        ("tree keys", counts([p.tree_keys for p in parts])),
        ("pages", counts([p.pages for p in parts])),
        ("free pages", counts([p.free_pages for p in parts])),
        ("cache hits", ([_hit_rate(p.cache_hits, p.cache_misses) for p in parts],
                        _hit_rate(sum(p.cache_hits for p in parts),
                                  sum(p.cache_misses for p in parts)))),
        ("bloom skips", counts([p.bloom_negatives for p in parts])),
        ("flushes", counts([p.flushes for p in parts])),
    ]  # fmt: skip
    return [(name, per, total) for name, (per, total) in rows]


def _stats_table(st: halodb.StoreStats, width: int) -> Table:
    """The counters: a column per partition and the total when that fits in ``width``,
    else a row per partition and a total row."""
    title = (
        f"{st.path}: {_plural(st.keys, 'key')} in {_plural(len(st.partitions), 'partition')}, "
        f"page size {st.page_size}, durability {st.durability}, "
        f"opened in {st.last_recovery_seconds:.3f} s"
    )
    rows = _stats_rows(st)
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    cell = max(len(v) for _, per, total in rows for v in (*per, total)) + 2
    if 18 + cell * (len(st.partitions) + 1) <= width:
        table.add_column("partition", style="bold")
        for p in st.partitions:
            table.add_column(str(p.index), justify="right")
        table.add_column("total", justify="right", style="bold")
        for name, per, total in rows:
            table.add_row(name, *per, total)
        return table
    table.add_column("partition", style="bold")
    for name, _, _ in rows:
        table.add_column(name, justify="right")
    for i in range(len(st.partitions)):
        table.add_row(str(i), *(per[i] for _, per, _ in rows))
    table.add_section()
    table.add_row("total", *(total for _, _, total in rows), style="bold")
    return table


@_command(panel="Inspect")
def stats(
    ctx: typer.Context, as_json: AsJson = False, path: PathOption = None, codec: CodecOption = None
) -> None:
    """Show counters and sizes per partition, and totals."""
    s = _session(ctx, path, codec)
    with s.guard(), s.store(write=False, values=False) as db:
        if db is None:
            s.info(f"no store at {s.path} yet (it is created on first write)")
            return
        st = db.stats()
        if as_json:
            s.out(json.dumps(dataclasses.asdict(st), indent=2))
        else:
            console = _console()
            console.print(_stats_table(st, console.width))


@dataclass
class _NodeView:
    """One drawn B+ tree node: page, kind, key count and key range, drawn children."""

    page: int
    leaf: bool
    size: int
    first: bytes | None
    last: bytes | None
    children: list[_NodeView | int] = field(default_factory=list)
    """Drawn children; an int stands for that many children left out."""


def _read_tree_top(db: halodb.Store, index: int, depth: int) -> _NodeView | None:
    """The top ``depth`` levels of partition ``index``'s B+ tree, or ``None`` if it is empty.

    ENGINE INTERNALS, read-only, kept to this one function: the public API reports a tree's
    shape (``Store.check()``) but not its nodes. Reads ``PartitionManager.parts[i].tree``
    (a ``BTree``: ``pager.meta`` root and height, ``_node(page, crc, level)``) under the
    partition's lock. Change this function if those internals change.
    """
    part = db._m.parts[index]
    with part.lock:
        tree = part.tree
        meta = tree.pager.meta
        if meta.height == 0:
            return None

        def visit(page: int, crc: int, level: int, remaining: int) -> _NodeView:
            node = tree._node(page, crc, level)
            keys = node.keys
            first, last = (keys[0], keys[-1]) if keys else (None, None)
            view = _NodeView(page=page, leaf=level == 0, size=len(keys), first=first, last=last)
            if isinstance(node, Internal) and remaining > 1:
                n = len(node.children)
                shown = range(n) if n <= TREE_FANOUT else [*range(TREE_FANOUT - 1), n - 1]
                previous = -1
                for i in shown:
                    if i - previous > 1:
                        view.children.append(i - previous - 1)
                    child = visit(node.children[i], node.crcs[i], level - 1, remaining - 1)
                    view.children.append(child)
                    previous = i
            return view

        return visit(meta.root, meta.root_crc, meta.height - 1, depth)


def _short_key(encoded: bytes | None) -> str:
    if encoded is None:
        return "-"
    text = literal_text(decode_key(encoded))
    return text if len(text) <= 32 else text[:31] + "…"


def _node_label(view: _NodeView) -> str:
    kind, what = ("leaf", "key") if view.leaf else ("internal", "separator")
    if view.size == 1:
        span = _short_key(view.first)
    else:
        span = f"{_short_key(view.first)} … {_short_key(view.last)}" if view.size else ""
    return f"page {view.page} · {kind} · {_plural(view.size, what)}" + (
        f" · {span}" if span else ""
    )


def _draw(branch: Tree, view: _NodeView) -> None:
    for child in view.children:
        if isinstance(child, int):
            branch.add(f"… {_plural(child, 'more node')}", style="dim")
        else:
            _draw(branch.add(_node_label(child)), child)


def _tree_json(index: int, report: TreeReport, page_size: int, memtable: int) -> dict[str, Any]:
    return {
        "partition": index,
        **dataclasses.asdict(report),
        "fill_factor": report.fill_factor(page_size),
        "memtable_entries": memtable,
    }


@_command(panel="Inspect")
def tree(
    ctx: typer.Context,
    depth: Annotated[
        int, typer.Option("--depth", "-d", min=1, max=8, help="Levels to draw, from the root.")
    ] = 2,
    partition: Annotated[
        int | None, typer.Option("--partition", "-P", min=0, help="Only this partition.")
    ] = None,
    as_json: AsJson = False,
    path: PathOption = None,
    codec: CodecOption = None,
) -> None:
    """Show each partition's B+ tree.

    Its height, nodes per level, fill factor, and a drawing of its top levels. Verifies the
    whole store on the way (like check).
    """
    s = _session(ctx, path, codec)
    with s.guard(), s.store(write=False, values=False) as db:
        if db is None:
            s.info(f"no store at {s.path} yet (it is created on first write)")
            return
        reports = db.check()
        st = db.stats()
        indexes = range(len(reports)) if partition is None else [partition]
        if partition is not None and partition >= len(reports):
            raise CliError(EXIT_USAGE, f"no partition {partition}: the store has {len(reports)}")
        if as_json:
            data = [
                _tree_json(i, reports[i], st.page_size, st.partitions[i].memtable_entries)
                for i in indexes
            ]
            s.out(json.dumps(data, indent=2))
            return
        console = _console()
        for i in indexes:
            r = reports[i]
            fill = r.fill_factor(st.page_size)
            title = Text.assemble(
                (f"partition {i}", "bold"),
                f": height {r.height}, {_plural(r.keys, 'key')} in the tree, fill factor "
                f"{fill:.0%}, {_plural(r.page_count, 'page')} "
                f"({r.free_pages} free, {r.overflow_pages} overflow)",
            )
            console.print(title)
            levels = [
                f"{_plural(n, 'node')} {TreeReport(1, [n], [b]).fill_factor(st.page_size):.0%} full"
                for n, b in zip(r.nodes_per_level, r.bytes_used_per_level, strict=True)
            ]
            if levels:
                console.print("  nodes per level, root first: " + " → ".join(levels))
            pending = st.partitions[i].memtable_entries
            if pending:
                console.print(
                    f"  memtable: {_plural(pending, 'entry', 'entries')} "
                    "not in the tree yet ('flush' moves them)"
                )
            top = _read_tree_top(db, i, depth)
            if top is None:
                console.print("  (empty tree)")
            else:
                drawing = Tree(_node_label(top), guide_style="dim")
                _draw(drawing, top)
                console.print(drawing)


@_command(panel="Inspect")
def check(
    ctx: typer.Context, as_json: AsJson = False, path: PathOption = None, codec: CodecOption = None
) -> None:
    """Verify every page, checksum and structure.

    Exit status 3 if anything is damaged.
    """
    s = _session(ctx, path, codec)
    with s.guard(), s.store(write=False, values=False) as db:
        if db is None:
            s.info(f"no store at {s.path} yet: nothing to check")
            return
        try:
            reports = db.check()
        except halodb.CorruptionError as exc:
            if as_json:
                s.out(json.dumps({"ok": False, "error": str(exc)}))
            raise
        st = db.stats()
        pages = sum(r.page_count for r in reports)
        if as_json:
            s.out(json.dumps({"ok": True, "partitions": len(reports), "keys": st.keys,
                              "pages": pages}))  # fmt: skip
        else:
            s.out(
                f"ok: {_plural(len(reports), 'partition')}, {_plural(st.keys, 'key')}, "
                f"{_plural(pages, 'page')} verified"
            )


@_command(panel="Inspect")
def flush(ctx: typer.Context, path: PathOption = None, codec: CodecOption = None) -> None:
    """Move the memtables into the on-disk trees."""
    s = _session(ctx, path, codec)
    with s.guard(), _NoInterrupt(), s.store(write=True, create=False, values=False) as db:
        if db is None:
            s.info("no store yet: nothing to flush")
            return
        pending = sum(p.memtable_entries for p in db.stats().partitions)
        db.flush()
        s.info(f"flushed {_plural(pending, 'memtable entry', 'memtable entries')}")


@_command(panel="Bulk")
def dump(
    ctx: typer.Context,
    file: Annotated[
        str | None, typer.Argument(metavar="FILE", help="Where to write; stdout if omitted or -.")
    ] = None,
    prefix: Prefix = None,
    start: Start = None,
    stop: Stop = None,
    typed: Typed = False,
    progress: Progress = None,
    path: PathOption = None,
    codec: CodecOption = None,
) -> None:
    """Write keys and values as JSON Lines.

    One {"key": ..., "value": ...} object a line; bytes, tuples and non-finite floats are
    tagged ({"$bytes": base64}, {"$tuple": [...]}, {"$float": "inf"}) so that load gives back
    exactly the same keys and values.
    """
    s = _session(ctx, path, codec)
    with s.guard(), s.store(write=False, values=True) as db:
        items = _scan(db, prefix, start, stop, typed=typed)
        to_stdout = file in (None, "-")
        whole = prefix is None and start is None and stop is None
        total = len(db) if db is not None and whole else None
        if progress is None:  # on a terminal, unless the records go to that terminal too
            progress = sys.stderr.isatty() and not (to_stdout and sys.stdout.isatty())
        tmp: str | None = None  # the temporary file beside FILE, once made
        created = False  # whether tmp is ours to remove
        n = 0

        def write_error(exc: OSError) -> Exception:
            """An error writing the file names the file the user named, not the temporary."""
            if to_stdout:
                return exc  # stdout: a closed pipe ends the program quietly
            return CliError(EXIT_STORE, f"cannot write {file}: {exc.strerror or exc}")

        @contextlib.contextmanager
        def writing() -> Iterator[None]:
            try:
                yield
            except OSError as exc:
                raise write_error(exc) from None

        try:
            out: IO[str]
            with contextlib.ExitStack() as stack:
                if to_stdout:
                    out = sys.stdout
                else:
                    target = os.path.abspath(cast(str, file))
                    with writing():
                        # A fresh name made with O_EXCL (0600): never a file or link planted
                        # in advance.
                        fd, tmp = tempfile.mkstemp(
                            prefix=os.path.basename(target) + ".",
                            suffix=".tmp",
                            dir=os.path.dirname(target),
                        )
                    created = True
                    out = stack.enter_context(open(fd, "w", encoding="utf-8", newline="\n"))
                update = stack.enter_context(_progress(progress, "dumping", total))
                for key, value in items:
                    line = json_line(key, value) + "\n"
                    try:
                        out.write(line)
                    except OSError as exc:
                        raise write_error(exc) from None
                    n += 1
                    if not n & 1023:
                        update(n)
                with writing():
                    out.flush()
                    if tmp is not None:
                        os.fsync(out.fileno())
            if tmp is not None:
                with writing():
                    os.replace(tmp, cast(str, file))
                created = False
        finally:
            if tmp is not None and created:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        s.info(f"dumped {_plural(n, 'record')}" + ("" if to_stdout else f" to {file}"))


@_command(panel="Bulk")
def load(
    ctx: typer.Context,
    file: Annotated[
        str,
        typer.Argument(
            metavar="FILE",
            help="JSON Lines as written by dump; - reads stdin (on the command line, not in "
            "the shell).",
        ),
    ],
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size", min=0, help="Records applied atomically together; 0: the whole file."
        ),
    ] = 10_000,
    progress: Progress = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    path: PathOption = None,
    codec: CodecOption = None,
) -> None:
    """Add the records of a JSON Lines file.

    Reads what dump writes. Each batch of records is applied atomically; on a bad line the
    batches before it stay, the rest is not applied, and the error says what was loaded.
    """
    s = _session(ctx, path, codec)
    with s.guard():
        if s.batch is not None:
            raise CliError(EXIT_USAGE, "load cannot be part of a batch; 'commit' or 'abort' first")
        if file == "-" and s.in_shell:
            raise CliError(EXIT_USAGE, "'-' (read stdin) works on the command line only")
        name = "stdin" if file == "-" else file
        try:
            source: IO[bytes] = sys.stdin.buffer if file == "-" else open(file, "rb")  # noqa: SIM115
        except OSError as exc:
            raise CliError(EXIT_USAGE, f"cannot read {file}: {exc.strerror}") from None
        with contextlib.ExitStack() as stack:
            if file != "-":
                stack.enter_context(source)
            try:
                total: float | None = os.fstat(source.fileno()).st_size or None
            except (OSError, ValueError, io.UnsupportedOperation):
                total = None
            show = progress if progress is not None else sys.stderr.isatty()
            update = stack.enter_context(_progress(show, f"loading {name}", total))
            db = stack.enter_context(s.store(write=True, values=True))
            assert db is not None
            records, batches = _load_lines(db, source, name, batch_size, update)
        if as_json:
            s.out(json.dumps({"records": records, "batches": batches, "source": name}))
        s.info(
            f"loaded {_plural(records, 'record')} in {_plural(batches, 'batch', 'batches')} "
            f"from {name} into {db.path}"
        )


def _load_lines(
    db: halodb.Store,
    source: IO[bytes],
    name: str,
    batch_size: int,
    update: Callable[[float], None],
) -> tuple[int, int]:
    """Apply the records of ``source``; returns (records, batches) committed."""
    records = batches = pending_records = position = 0
    pending = db.batch()

    def commit() -> None:
        nonlocal records, batches, pending_records, pending
        with _NoInterrupt():  # a Ctrl-C held back meanwhile is raised after the bookkeeping
            pending.commit()
            records += pending_records
            batches += 1
            pending_records = 0
            pending = db.batch()
        update(position)

    def done_so_far() -> str:
        if not batches:
            return "nothing was loaded"
        done = f"{_plural(records, 'record')} in {_plural(batches, 'batch', 'batches')}"
        return f"{done} were loaded"

    try:
        for lineno, raw in enumerate(source, 1):
            position += len(raw)
            if not raw.strip():
                continue
            where = f"{name} line {lineno}"
            key, value = parse_record(raw, where)
            try:
                pending[key] = value
            except (TypeError, halodb.DataError) as exc:
                raise CliError(EXIT_USAGE, f"{where}: {_brief(str(exc))}") from None
            pending_records += 1
            if batch_size and pending_records >= batch_size:
                commit()
        if pending_records:
            commit()
    except CliError as exc:
        pending.discard()
        before = " before it" if batches else ""
        raise CliError(exc.code, f"{exc.message}; {done_so_far()}{before}") from None
    except KeyboardInterrupt:
        pending.discard()
        raise CliError(
            EXIT_INTERRUPTED, f"interrupted while loading {name}: {done_so_far()}"
        ) from None
    return records, batches


@_command("shell", panel="Shell")
def shell_command(
    ctx: typer.Context,
    directory: Annotated[
        str | None,
        typer.Argument(metavar="DIR", callback=_store_path, help="The store (default: --path)."),
    ] = None,
    path: PathOption = None,
    codec: CodecOption = None,
) -> None:
    """Open the interactive shell (as plain 'halodb' does)."""
    s = _session(ctx)
    if s.in_shell:
        _error("this is the shell already")
        raise typer.Exit(EXIT_USAGE)
    s = _session(ctx, path, codec)
    raise typer.Exit(Shell(directory or s.path, codec=s.codec_choice).run())


# ----------------------------------------------------------------------------- the shell

_SHELL_ONLY: dict[str, str] = {
    "batch": "Queue puts and deletes until commit.",
    "commit": "Apply the batch's changes atomically.",
    "abort": "Discard the batch's changes.",
    "help": "List commands; 'help COMMAND' shows its options.",
    "quit": "Leave the shell (also Ctrl-D).",
}
_ORDER = (
    "put", "get", "delete", "list", "count", "clear", "batch", "commit", "abort",
    "stats", "tree", "check", "flush", "dump", "load", "help", "quit",
)  # fmt: skip
COMPLETIONS: Final = 50
"""Most keys Tab offers; past it, only the prefix all the keys share."""
_NEEDS_QUOTES = re.compile(r"[\s'\"\\]|[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
"""What a key completed unquoted must not hold: what the shell's line splitting would change."""
ALIASES: dict[str, str] = {
    "set": "put", "del": "delete", "rm": "delete", "ls": "list", "exit": "quit",
    "begin": "batch", "multi": "batch", "exec": "commit", "rollback": "abort", "discard": "abort",
    "\\q": "quit", ".quit": "quit", ".exit": "quit", ".help": "help", "\\?": "help", "?": "help",
}  # fmt: skip


def _codec_note(name: str) -> str:
    """The banner's line about a store whose value codec the shell was not started with."""
    if name in CODECS:
        return (
            f"Its values use the {name!r} codec: keys, counts and stats work; to read or write "
            f"values, start the shell with --codec {name} (unpickling runs code from the "
            "store's files: only for a store you trust)."
        )
    return (
        f"Its values use the {name!r} codec, which the halodb command does not know: keys, "
        "counts and stats work; values cannot be read or written."
    )


class Shell:
    """The interactive shell: one store kept open, a prompt with readline editing and history,
    lines split like a POSIX shell (``put "my key" "a value"``).

    :meth:`onecmd` runs one line and returns ``True`` when the shell should end; the terminal
    loop (:meth:`run`) and the tests both drive it. Commands other than the shell's own
    (batch, commit, abort, help, quit) are the command-line subcommands, run on the open store.
    """

    def __init__(
        self,
        path: str,
        *,
        input_func: Callable[[str], str] = input,
        interactive: bool | None = None,
        codec: str | None = None,
    ) -> None:
        """``interactive``: prompts, a banner, readline, and questions (``clear``'s) answered
        from ``input_func``; by default when stdin and stdout are terminals. A shell reading a
        script never asks: a question would read its answer from the script's next line.
        ``codec``: the value codec named by ``--codec``."""
        self.interactive = (
            sys.stdin.isatty() and sys.stdout.isatty() if interactive is None else interactive
        )
        can_ask = sys.stdin.isatty() if interactive is None else interactive
        self.session = Session(path, in_shell=True, ask=input_func, can_ask=can_ask, codec=codec)
        self.input_func = input_func
        self.status = EXIT_OK
        """Exit status of the last failed command (what a non-interactive shell exits with)."""
        group = typer.main.get_command(app)
        assert isinstance(group, TyperGroup)
        self.commands: dict[str, TyperCommand] = {
            name: cast(TyperCommand, cmd) for name, cmd in group.commands.items() if name != "shell"
        }
        self._matches: list[str] = []

    @property
    def prompt(self) -> str:
        s = self.session
        if s.batch is not None:
            return f"halodb (batch: {_plural(len(s.batch), 'change')})> "
        if s.db is not None and s.db.readonly:
            return "halodb (read-only)> "
        return "halodb> "

    # -- running -------------------------------------------------------------------------

    def start(self) -> int:
        """Open the store if there is one; print the banner. Returns an exit status."""
        s = self.session
        try:
            with s.guard():
                if _store_exists(s.path):
                    s.open_existing()
        except typer.Exit as exc:
            return exc.exit_code
        if self.interactive:
            if s.db is not None:
                state = " (read-only)" if s.db.readonly else ""
                sys.stdout.write(
                    f"HaloDB {halodb.__version__} shell on {s.db.path}{state}: "
                    f"{_plural(len(s.db), 'key')}.\n"
                )
                if s.codec is not None and s.codec.inner is None:
                    sys.stdout.write(_codec_note(s.codec.name) + "\n")
            else:
                where = os.path.abspath(s.path)
                sys.stdout.write(
                    f"HaloDB {halodb.__version__} shell: no store at {where} yet; "
                    "the first write creates it.\n"
                )
            sys.stdout.write("Type 'help' for the commands, 'quit' or Ctrl-D to leave.\n")
        return EXIT_OK

    def run(self) -> int:
        """The read-eval loop until quit or end of input; returns the exit status."""
        code = self.start()
        if code:
            return code
        history = self._setup_readline() if self.interactive else None
        if self.interactive and threading.current_thread() is threading.main_thread():
            # Ctrl-C cancels the line even when this process was started with SIGINT ignored
            # (as background jobs and some supervisors start their children).
            signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            while True:
                try:
                    line = self.input_func(self.prompt if self.interactive else "")
                except EOFError:
                    if self.interactive:
                        sys.stdout.write("\n")
                    break
                except KeyboardInterrupt:
                    sys.stdout.write("\n")  # Ctrl-C cancels the line, not the shell
                    continue
                if self.onecmd(line):
                    break
        finally:
            self._save_history(history)
            try:
                self.close()
            except typer.Exit as exc:
                return exc.exit_code
        return EXIT_OK if self.interactive else self.status

    def close(self) -> None:
        """Discard an open batch, close the store."""
        with self.session.guard():
            self.session.close()

    def onecmd(self, line: str) -> bool:
        """Run one line; ``True`` means the shell should end. A closed stdout raises
        :class:`_PipeClosed`, which ends the shell."""
        with _pipe_closes_quietly():
            try:
                return self._onecmd(line)
            except KeyboardInterrupt:
                _report_interrupt()
                self.status = EXIT_INTERRUPTED
                return False
            finally:
                sys.stdout.flush()

    def _onecmd(self, line: str) -> bool:
        line = line.strip()
        if not line or line.startswith("#"):
            return False
        first = line.split(None, 1)[0]
        if first in ("\\q", "\\?"):  # psql's words, which shlex would unescape
            line = ALIASES[first] + line[len(first) :]
        try:
            words = shlex.split(line)
        except ValueError as exc:
            return self._fail(EXIT_USAGE, f'bad quoting: {exc} (quote keys and values like "a b")')
        if not words:
            return False
        name = ALIASES.get(words[0].lower(), words[0].lower())
        args = words[1:]
        if name == "quit":
            return True
        if name == "help":
            self._help(args)
        elif name in ("batch", "commit", "abort"):
            if args:
                return self._fail(EXIT_USAGE, f"{name} takes no arguments")
            self._guarded(getattr(self, f"_{name}"))
        elif name == "shell":
            self._fail(EXIT_USAGE, "this is the shell already")
        elif name in self.commands:
            self._run(self.commands[name], name, args)
        else:
            known = [*self.commands, *_SHELL_ONLY, *ALIASES]
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean '{ALIASES.get(close[0], close[0])}'?" if close else ""
            self._fail(EXIT_USAGE, f"unknown command '{words[0]}'{hint} (type 'help' for the list)")
        return False

    def _fail(self, code: int, message: str) -> bool:
        _error(message)
        self.status = code
        return False

    def _run(self, command: TyperCommand, name: str, args: list[str]) -> None:
        try:
            code = command.main(
                args=args,
                prog_name=name,
                standalone_mode=False,
                obj=self.session,
                help_option_names=HELP_OPTIONS,  # as on the command line (the app's setting)
            )
        except typer.TyperException as exc:  # a usage error (exit status 2) or like it
            see = f"see 'help {name}'" if exc.exit_code == EXIT_USAGE else ""
            self._fail(exc.exit_code, _usage_message(exc, see))
            return
        except typer.Abort:
            self._fail(EXIT_INTERRUPTED, "aborted")
            return
        if isinstance(code, int) and code:
            self.status = code

    def _guarded(self, action: Callable[[], None]) -> None:
        try:
            with self.session.guard():
                action()
        except typer.Exit as exc:
            self.status = exc.exit_code

    # -- the shell's own commands --------------------------------------------------------

    def _batch(self) -> None:
        s = self.session
        if s.batch is not None:
            raise CliError(EXIT_USAGE, "a batch is open already: 'commit' or 'abort' it first")
        with s.store(write=True, values=False) as db:
            assert db is not None
            s.batch = db.batch()
        s.batch_note_shown = False
        s.info("batch started: put and delete are queued until 'commit' (or 'abort')")

    def _commit(self) -> None:
        s = self.session
        if s.batch is None:
            raise CliError(EXIT_USAGE, "no batch is open ('batch' starts one)")
        batch, s.batch = s.batch, None
        n = len(batch)
        with _NoInterrupt():
            batch.commit()
        s.info(f"committed {_plural(n, 'change')}")

    def _abort(self) -> None:
        s = self.session
        if s.batch is None:
            raise CliError(EXIT_USAGE, "no batch is open ('batch' starts one)")
        n = len(s.batch)
        s.batch.discard()
        s.batch = None
        s.info(f"discarded {_plural(n, 'change')}")

    def _help(self, args: list[str]) -> None:
        if args:
            name = ALIASES.get(args[0].lower(), args[0].lower())
            if name in _SHELL_ONLY:
                sys.stdout.write(f"{name}: {_SHELL_ONLY[name]}\n")
            elif name in self.commands:
                self._run(self.commands[name], name, ["--help"])
            else:
                self._fail(EXIT_USAGE, f"no command '{args[0]}' (type 'help' for the list)")
            return
        aliases: dict[str, list[str]] = {}
        for alias, target in ALIASES.items():
            if alias.isalpha():
                aliases.setdefault(target, []).append(alias)
        table = Table(box=None, show_header=False, padding=(0, 2, 0, 0))
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        table.add_column(style="dim", no_wrap=True)
        for name in _ORDER:
            if name in _SHELL_ONLY:
                text = _SHELL_ONLY[name]
            else:
                text = self.commands[name].get_short_help_str(limit=60)
            table.add_row(name, text, ", ".join(aliases.get(name, ())))
        console = _console()
        console.print("Commands:")
        console.print(table)
        for line in (
            'Keys and values with spaces go in quotes: put "my key" "a value".',
            "With -t keys are Python literals: get -t \"('user', 42)\"; -T for put's value.",
            "Ctrl-C cancels a line or a listing; quit or Ctrl-D leaves.",
        ):
            console.print(line)

    # -- readline ------------------------------------------------------------------------

    def _setup_readline(self) -> str | None:
        try:
            import readline
        except ImportError:
            return None
        path = os.environ.get("HALODB_HISTORY", os.path.expanduser("~/.halodb_history"))
        readline.set_history_length(HISTORY_LENGTH)
        if path:
            with contextlib.suppress(OSError):
                readline.read_history_file(path)
        readline.set_completer_delims(" \t\n\"'")
        readline.set_completer(self._complete)
        if "libedit" in (readline.__doc__ or ""):
            readline.parse_and_bind("bind ^I rl_complete")
        else:
            readline.parse_and_bind("tab: complete")
        return path or None

    @staticmethod
    def _save_history(path: str | None) -> None:
        if path is None:
            return
        import readline

        with contextlib.suppress(OSError):
            readline.write_history_file(path)

    def _complete(self, text: str, state: int) -> str | None:
        if state == 0:
            try:
                self._matches = self.completions(text)
            except Exception:  # completion must never break the prompt
                self._matches = []
        return self._matches[state] if state < len(self._matches) else None

    def completions(self, text: str, line: str | None = None) -> list[str]:
        """Completions of ``text``: command names first, then options, then str keys."""
        if line is None:
            import readline

            line = readline.get_line_buffer()[: readline.get_begidx()]
        words = line.split()
        if not words:
            names = sorted({*self.commands, *_SHELL_ONLY, "exit"})
            return [name + " " for name in names if name.startswith(text)]
        name = ALIASES.get(words[0].lower(), words[0].lower())
        command = self.commands.get(name)
        if command is None:
            return []
        if text.startswith("-"):
            options = sorted(
                o
                for p in command.params
                for o in getattr(p, "opts", ())
                if p.name not in ("path", "codec")  # the shell's store is chosen at its start
            )
            return [o + " " for o in options if o.startswith(text)]
        db = self.session.db
        if name in ("get", "put", "delete") and len(words) == 1 and db is not None:
            return self._key_completions(db, text)
        return []

    def _key_completions(self, db: halodb.Store, text: str) -> list[str]:
        """The str keys that start with ``text``, if there are at most
        :data:`COMPLETIONS` and none needs quotes; else only what is certain: the prefix all
        of them share (readline inserts it), up to a character that would need quotes.

        The prefix all keys of the range share is that of its first and last keys (keys are
        in order), so it costs two short reads, however many keys match.
        """
        s = self.session
        found = list(islice(s.keys(db, text, None, None, typed=False), COMPLETIONS + 1))
        if not found:
            return []
        matches = [k for k in found if isinstance(k, str)]  # all of them: a str prefix
        if len(matches) <= COMPLETIONS and not any(_NEEDS_QUOTES.search(k) for k in matches):
            return matches
        if len(matches) <= COMPLETIONS:
            last = matches[-1]
        else:
            last_key = next(s.keys(db, text, None, None, typed=False, reverse=True))
            last = last_key if isinstance(last_key, str) else matches[-1]
        first = matches[0]
        size = min(len(first), len(last))
        same = next((i for i in range(size) if first[i] != last[i]), size)
        common = first[:same]
        quote = _NEEDS_QUOTES.search(common)
        if quote is not None:
            common = common[: quote.start()]
        return [common] if len(common) > len(text) else []


# ----------------------------------------------------------------------------- entry point


def _stdout_file() -> tuple[int, int] | None:
    """The device and inode of the file stdout writes to, if it has one."""
    try:
        st = os.fstat(sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    return st.st_dev, st.st_ino


def _devnull_file() -> tuple[int, int] | None:
    try:
        st = os.stat(os.devnull)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _silence_stdout() -> None:
    """After a closed pipe: point stdout at the null device, so that flushing what is left of
    it at exit does not fail again (the recipe of Python's documentation on SIGPIPE)."""
    try:
        fd = sys.stdout.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError, AttributeError):
        return
    try:
        os.dup2(devnull, fd)
    except OSError:
        pass
    finally:
        os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    """The ``halodb`` program (also ``python -m halodb``); returns the exit status."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    _configure_logging()
    stdout_was = _stdout_file()
    try:
        try:
            app(args=argv, prog_name="halodb")
            status = EXIT_OK
        except SystemExit as exc:
            code = exc.code
            status = code if isinstance(code, int) else (EXIT_OK if code is None else EXIT_USAGE)
        sys.stdout.flush()  # output that fit in the buffer meets a closed pipe here
    except (_PipeClosed, BrokenPipeError):
        _silence_stdout()
        return EXIT_PIPE
    if status == 1 and stdout_was != _stdout_file() == _devnull_file():
        # typer's help met a closed pipe: rich pointed stdout at the null device and exited 1
        return EXIT_PIPE
    return status

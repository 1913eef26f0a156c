"""The JSON Lines interchange format of ``halodb dump`` and ``load``, as a library; it must not
know terminals, exit statuses or how the engine stores anything (it reads and writes a store
through the public API, and writes files through :meth:`FileSystem.atomic_writer`).

One ``{"key": K, "value": V}`` object a line, where str, int, float, bool, null, lists and dicts
are plain JSON and the types JSON lacks are tagged single-key objects: ``{"$bytes": base64}``,
``{"$tuple": [...]}``, ``{"$float": "inf"}``, ``{"$int": "0x..."}`` (ints too long for decimal
JSON) and ``{"$dict": {...}}`` (a dict whose only key starts with ``$``, so that it is not read as
a tag). So :func:`load` gives back exactly the keys and values :func:`dump` wrote, types included.

>>> import halodb, io, tempfile
>>> with halodb.open(tempfile.mkdtemp()) as db:
...     db[("user", 1)] = b"\\x00"
...     out = io.StringIO()
...     _ = dump(db, out)
...     out.getvalue()
'{"key": {"$tuple": ["user", 1]}, "value": {"$bytes": "AA=="}}\\n'

Errors: a value JSON Lines cannot hold, or a bad input line, is ``DataError`` (its message names
the key, or the line); an output file that cannot be written is ``OperationalError`` naming the
file as given. Both functions take a report (:class:`DumpReport`, :class:`LoadReport`) that says
how far they got, also when they raise.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import math
import os
import re
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, TextIO, cast

from halodb.errors import DataError, OperationalError, brief
from halodb.keys import Key, KeyLike, encode_key
from halodb.vfs import FileSystem

if TYPE_CHECKING:
    from halodb.store import Store

__all__ = [
    "TAGS",
    "DumpReport",
    "LoadReport",
    "dump",
    "from_json",
    "load",
    "parse_record",
    "record",
    "to_json",
    "write",
]

TAGS: Final = ("$bytes", "$tuple", "$float", "$int", "$dict")
_BIG_INT = 10**4000
_NO_VALUE: Any = object()
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
"""Characters that would not encode as UTF-8 (lone surrogates) or disturb a terminal."""
_PROGRESS_EVERY = 1024
"""Records between two calls of a dump's ``progress``."""


# ----------------------------------------------------------------------------- the tagged form


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
    if tag in TAGS:
        raise ValueError(f"malformed {tag} tag: {json.dumps(inner)[:60]}")
    raise ValueError(f"unknown tag {tag!r} (the tags are {', '.join(TAGS)})")


# ----------------------------------------------------------------------------- one record


def record(key: Key, value: object = _NO_VALUE) -> str:
    """One JSON Lines record, without its newline (without ``value``: ``{"key": K}``); always
    encodable as UTF-8 (a lone surrogate in a str is written as a ``\\udxxx`` escape).

    ``DataError`` for a value JSON Lines cannot hold: a set or another object, which a store
    using the pickle codec may hold.

    >>> record(("user", 1), {"tags": ["a"]})
    '{"key": {"$tuple": ["user", 1]}, "value": {"tags": ["a"]}}'
    """
    line = {"key": to_json(key)}
    if value is not _NO_VALUE:
        try:
            line["value"] = to_json(value)
        except (TypeError, RecursionError) as exc:
            raise DataError(
                f"cannot write the value of {_key_text(key)} as JSON: {brief(str(exc))} (JSON "
                "Lines hold bytes, str, numbers, booleans, None, tuples, lists and dicts)"
            ) from None
    text = json.dumps(line, ensure_ascii=False, allow_nan=False)
    if _UNSAFE.search(text):  # lone surrogates in a str: escape them as \\udxxx
        text = json.dumps(line, allow_nan=False)
    return text


def parse_record(raw: bytes, where: str) -> tuple[Key, object]:
    """The key and value of one JSON Lines record (a line as bytes); ``DataError`` naming
    ``where`` (such as ``"dump.jsonl line 7"``) if it is malformed or its key is no key."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{where}: not UTF-8 (byte {exc.start})") from None
    except (ValueError, RecursionError) as exc:
        raise DataError(f"{where}: bad JSON ({exc})") from None
    if not isinstance(obj, dict) or set(obj) != {"key", "value"}:
        raise DataError(f'{where}: expected {{"key": ..., "value": ...}}')
    try:
        key, value = from_json(obj["key"]), from_json(obj["value"])
        encode_key(key)
    except (ValueError, TypeError, RecursionError, binascii.Error, DataError) as exc:
        raise DataError(f"{where}: {brief(str(exc))}") from None
    return cast(Key, key), value


# ----------------------------------------------------------------------------- dump


@dataclass
class DumpReport:
    """How far a :func:`dump` got: after it returns, or after it raised."""

    records: int = 0
    """Records written (to the temporary file, when the output is a path)."""
    failed: Literal["value", "output"] | None = None
    """What stopped it: a value JSON Lines cannot hold (``DataError``), or the output file
    (``OperationalError``); ``None`` when it did not fail, or failed reading the store."""


def dump(
    store: Store,
    file: str | os.PathLike[str] | TextIO,
    *,
    start: KeyLike | None = None,
    stop: KeyLike | None = None,
    prefix: str | bytes | tuple[KeyLike, ...] | None = None,
    progress: Callable[[int], None] | None = None,
    report: DumpReport | None = None,
    filesystem: FileSystem | None = None,
) -> DumpReport:
    """Write the records of ``store`` with ``start <= key < stop`` and ``prefix`` (as
    :meth:`Store.range` takes them), in key order, to ``file``; see :func:`write`.
    Streams: O(1) memory, one pass over the range."""
    return write(
        store.range(start, stop, prefix=prefix),
        file,
        progress=progress,
        report=report,
        filesystem=filesystem,
    )


def write(
    records: Iterable[tuple[Key, object]],
    file: str | os.PathLike[str] | TextIO,
    *,
    progress: Callable[[int], None] | None = None,
    report: DumpReport | None = None,
    filesystem: FileSystem | None = None,
) -> DumpReport:
    """Write ``(key, value)`` pairs as JSON Lines to ``file``: a path or a text stream.

    A path is written atomically and durably (through ``filesystem``'s
    :meth:`~halodb.vfs.FileSystem.atomic_writer`: a temporary file beside it, fsynced, renamed
    over it, the directory fsynced): it holds the whole dump or is left as it was, and a
    temporary file is never left behind. A stream is written as it is, flushed at the end, and
    its errors (``BrokenPipeError``...) pass through unchanged.

    ``progress(records)`` is called every 1024 records. ``DataError`` for a value JSON Lines
    cannot hold, ``OperationalError`` (``"cannot write FILE: reason"``) when the path cannot
    be written.
    """
    report = DumpReport() if report is None else report
    if not isinstance(file, str | os.PathLike):
        _write_lines(records, file.write, progress, report)
        file.flush()
        return report
    name = os.fspath(file)
    fs = filesystem or FileSystem()
    writing = False  # what the records raise passes through; the writer's errors are named
    try:
        with fs.atomic_writer(name) as out:
            writing = True

            def emit(line: str) -> None:
                try:
                    out.write(line.encode())
                except OperationalError as exc:
                    raise _cannot_write(name, exc, report) from exc

            _write_lines(records, emit, progress, report)
            writing = False
    except OperationalError as exc:
        if writing:
            raise
        raise _cannot_write(name, exc, report) from exc
    return report


def _write_lines(
    records: Iterable[tuple[Key, object]],
    emit: Callable[[str], object],
    progress: Callable[[int], None] | None,
    report: DumpReport,
) -> None:
    for key, value in records:
        try:
            line = record(key, value) + "\n"
        except DataError:
            report.failed = "value"
            raise
        emit(line)
        report.records += 1
        if progress is not None and not report.records % _PROGRESS_EVERY:
            progress(report.records)


def _cannot_write(name: str, exc: OperationalError, report: DumpReport) -> OperationalError:
    """The error of an output that cannot be written, naming the file given (not its
    temporary) and the operating system's reason."""
    report.failed = "output"
    cause = exc.__cause__
    reason = (cause.strerror or str(cause)) if isinstance(cause, OSError) else str(exc)
    return OperationalError(f"cannot write {name}: {reason}")


# ----------------------------------------------------------------------------- load


@dataclass
class LoadReport:
    """How far a :func:`load` got: after it returns, or after it raised."""

    records: int = 0
    """Records committed."""
    batches: int = 0
    """Batches committed."""
    bad_line: int | None = None
    """The number of the line whose record stopped the load (``DataError``), if one did."""


def load(
    store: Store,
    file: Iterable[bytes],
    *,
    name: str | None = None,
    batch_size: int = 10_000,
    progress: Callable[[int], None] | None = None,
    atomically: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
    report: LoadReport | None = None,
) -> LoadReport:
    """Add the records of ``file`` (lines of bytes: a file opened ``"rb"``) to ``store``,
    committing each ``batch_size`` records (0: all of them) as one atomic batch. Blank lines
    are skipped. Streams: memory for one batch.

    ``name`` names the input in error messages (default: ``file.name``). ``progress(position)``
    is called after each commit with the bytes read so far. Each commit, with the report's
    bookkeeping, runs inside ``atomically()`` (the ``halodb`` command passes one that holds
    Ctrl-C back until it is done).

    On a bad line (``DataError``, naming the line) or any other exception, the batch being
    filled is discarded and the batches before it stay: the report (pass one to read it after
    an exception) says how many.
    """
    report = LoadReport() if report is None else report
    source = str(getattr(file, "name", "input")) if name is None else name
    position = pending_records = 0
    pending = store.batch()

    def commit() -> None:
        nonlocal pending, pending_records
        with atomically():  # what it holds back meanwhile is raised after the bookkeeping
            pending.commit()
            report.records += pending_records
            report.batches += 1
            pending_records = 0
            pending = store.batch()
        if progress is not None:
            progress(position)

    try:
        for lineno, raw in enumerate(file, 1):
            position += len(raw)
            if not raw.strip():
                continue
            where = f"{source} line {lineno}"
            try:
                key, value = parse_record(raw, where)
            except DataError:
                report.bad_line = lineno
                raise
            try:
                pending[key] = value
            except (TypeError, DataError) as exc:
                report.bad_line = lineno
                raise DataError(f"{where}: {brief(str(exc))}") from None
            pending_records += 1
            if batch_size and pending_records >= batch_size:
                commit()
        if pending_records:
            commit()
    except BaseException:
        pending.discard()
        raise
    return report


# ----------------------------------------------------------------------------- messages
# A key's literal is the halodb command's own (halodb.cli.literals.literal_text, which sits
# above this module); tests/unit/test_jsonl.py proves they agree.

_ECHO_LIMIT = 60


def key_literal(key: object) -> str:
    """A key as a Python literal (repr, with ints too long for ``repr()`` in hex)."""
    if type(key) is int and not -_BIG_INT < key < _BIG_INT:
        return hex(key)
    if type(key) is tuple:
        items = [key_literal(item) for item in key]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    return repr(key)


def _key_text(key: Key) -> str:
    """``key`` as a literal for a message, cut to 60 characters."""
    text = key_literal(key)
    return text if len(text) <= _ECHO_LIMIT else text[:_ECHO_LIMIT] + "…"

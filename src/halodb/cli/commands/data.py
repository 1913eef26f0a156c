"""The data commands (put, get, delete, list, count, clear): thin wrappers over the public API;
they must not know how the store is opened, how errors become exit statuses or the shell."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Annotated, Any

import typer

from halodb.cli.literals import key_text, literal_text, parse_key, parse_value
from halodb.cli.render import MISSING, json_line, plain_json, plural, show_key, show_value
from halodb.cli.session import session_of
from halodb.cli.status import EXIT_NOT_FOUND, EXIT_USAGE, CliError
from halodb.cli.terminal import NoInterrupt, StopPaging
from halodb.cli.typer_app import (
    AsJson,
    CodecOption,
    KeyArg,
    PathOption,
    Prefix,
    Start,
    Stop,
    Typed,
    command,
)
from halodb.keys import Key


@command(panel="Data")
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
    s = session_of(ctx, path, codec)
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
            s.info(f"queued ({plural(len(s.batch), 'change')} in the batch)")
            return
        with NoInterrupt(), s.store(write=True, values=True) as db:
            assert db is not None
            db[k] = v
        if s.in_shell:
            s.info("OK")


@command(panel="Data")
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
    s = session_of(ctx, path, codec)
    with s.guard():
        k = parse_key(key, typed)
        with s.store(write=False, values=True) as db:
            value = MISSING if db is None else db.get(k, MISSING)
        if value is MISSING:
            s.note_batch_reads()
            raise CliError(EXIT_NOT_FOUND, f"not found: {literal_text(k)}")
        if as_json:
            s.out(json_line(k, value))
        elif raw:
            _write_raw(s.in_shell, k, value)
        else:
            s.out(show_value(value, typed=typed))
        s.note_batch_reads()


def _write_raw(in_shell: bool, key: Key, value: object) -> None:
    """``get --raw``: the value's exact bytes on stdout (text as UTF-8, plain JSON values as
    JSON); in the shell with a newline after them, so that the prompt starts a line."""
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
    else:
        try:
            if not plain_json(value, 0):
                raise TypeError(type(value).__name__)
            data = json.dumps(value).encode()
        except (TypeError, ValueError, RecursionError):
            raise CliError(
                EXIT_USAGE,
                f"the value of {key_text(key)} is a {type(value).__name__}, which has "
                "no raw form (--raw writes bytes, text and JSON values)",
            ) from None
    if in_shell and data and not data.endswith(b"\n"):
        data += b"\n"  # the prompt starts a line of its own
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


@command(panel="Data")
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
    s = session_of(ctx, path, codec)
    with s.guard():
        k = parse_key(key, typed)
        if s.batch is not None:
            del s.batch[k]
            s.info(f"queued ({plural(len(s.batch), 'change')} in the batch)")
            return
        with NoInterrupt(), s.store(write=True, create=False, values=False) as db:
            try:
                if db is None:
                    raise KeyError(k)
                del db[k]
            except KeyError:
                raise CliError(EXIT_NOT_FOUND, f"not found: {literal_text(k)}") from None
        if s.in_shell:
            s.info("OK")


@command("list", panel="Data")
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
    s = session_of(ctx, path, codec)
    with s.guard():
        with s.store(write=False, values=not keys_only) as db:
            found = s.scan(
                db,
                prefix,
                start,
                stop,
                typed=typed,
                reverse=reverse,
                limit=limit,
                keys_only=keys_only,
            )
            items: Iterator[tuple[Key, Any]] = (
                ((key, MISSING) for key in found) if keys_only else found
            )
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
            except StopPaging:
                s.info(f"(stopped after {plural(shown, 'key')})")
                return
        if s.in_shell and not as_json:
            more = "; --limit reached" if limit is not None and shown == limit else ""
            s.info(f"({plural(shown, 'key')}{more})" if shown else "(no keys)")
        s.note_batch_reads()


@command(panel="Data")
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
    s = session_of(ctx, path, codec)
    with s.guard(), s.store(write=False, values=False) as db:
        if db is not None and prefix is None and start is None and stop is None:
            n = len(db)
        else:
            n = sum(1 for _ in s.scan(db, prefix, start, stop, typed=typed, keys_only=True))
        s.out(json.dumps({"keys": n}) if as_json else str(n))


@command(panel="Data")
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
    s = session_of(ctx, path, codec)
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
                confirmed = s.confirm(f"Delete every key in {db.path} ({plural(n, 'key')})?")
                if not confirmed:
                    s.info("nothing deleted")
                    return
            with NoInterrupt():
                db.clear()
            s.info(f"deleted {plural(n, 'key')}")

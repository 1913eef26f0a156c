"""The bulk commands (dump, load): thin wrappers over :func:`halodb.jsonl.dump` and
:func:`halodb.jsonl.load`, choosing the file, the progress bar and the messages; they must not
know the JSON Lines format, how a file is written safely, or the shell."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from typing import IO, Annotated

import typer

import halodb
from halodb import jsonl
from halodb.cli.literals import bounds
from halodb.cli.render import plural
from halodb.cli.session import session_of
from halodb.cli.status import EXIT_INTERRUPTED, EXIT_STORE, EXIT_USAGE, CliError
from halodb.cli.terminal import NoInterrupt
from halodb.cli.terminal import progress as progress_bar
from halodb.cli.typer_app import (
    CodecOption,
    PathOption,
    Prefix,
    Progress,
    Start,
    Stop,
    Typed,
    command,
)


@command(panel="Bulk")
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
    s = session_of(ctx, path, codec)
    with s.guard(), s.store(write=False, values=True) as db:
        lo, hi, pre = bounds(prefix, start, stop, typed=typed)
        to_stdout = file in (None, "-")
        whole = prefix is None and start is None and stop is None
        total = len(db) if db is not None and whole else None
        if progress is None:  # on a terminal, unless the records go to that terminal too
            progress = sys.stderr.isatty() and not (to_stdout and sys.stdout.isatty())
        target = sys.stdout if file is None or file == "-" else file
        report = jsonl.DumpReport()
        try:
            with progress_bar(progress, "dumping", total) as update:
                if db is None:  # the shell, before the first write: nothing to dump
                    jsonl.write((), target, report=report)
                else:
                    jsonl.dump(db, target, start=lo, stop=hi, prefix=pre, progress=update,
                               report=report)  # fmt: skip
        except halodb.DataError as exc:
            if report.failed != "value":
                raise
            raise CliError(EXIT_USAGE, str(exc)) from None
        except halodb.OperationalError as exc:
            if report.failed != "output":
                raise
            raise CliError(EXIT_STORE, str(exc)) from None
        s.info(f"dumped {plural(report.records, 'record')}" + ("" if to_stdout else f" to {file}"))


@command(panel="Bulk")
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
    s = session_of(ctx, path, codec)
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
        report = jsonl.LoadReport()
        with contextlib.ExitStack() as stack:
            if file != "-":
                stack.enter_context(source)
            try:
                total: float | None = os.fstat(source.fileno()).st_size or None
            except (OSError, ValueError, io.UnsupportedOperation):
                total = None
            show = progress if progress is not None else sys.stderr.isatty()
            update = stack.enter_context(progress_bar(show, f"loading {name}", total))
            db = stack.enter_context(s.store(write=True, values=True))
            assert db is not None
            try:
                jsonl.load(db, source, name=name, batch_size=batch_size, progress=update,
                           atomically=NoInterrupt, report=report)  # fmt: skip
            except halodb.DataError as exc:
                if report.bad_line is None:
                    raise
                before = " before it" if report.batches else ""
                message = f"{exc}; {_loaded(report)}{before}"
                raise CliError(EXIT_USAGE, message) from None
            except KeyboardInterrupt:
                message = f"interrupted while loading {name}: {_loaded(report)}"
                raise CliError(EXIT_INTERRUPTED, message) from None
        if as_json:
            s.out(json.dumps({"records": report.records, "batches": report.batches,
                              "source": name}))  # fmt: skip
        s.info(
            f"loaded {plural(report.records, 'record')} in "
            f"{plural(report.batches, 'batch', 'batches')} from {name} into {db.path}"
        )


def _loaded(report: jsonl.LoadReport) -> str:
    """What a load that stopped had loaded, for its error line."""
    if not report.batches:
        return "nothing was loaded"
    done = f"{plural(report.records, 'record')} in {plural(report.batches, 'batch', 'batches')}"
    return f"{done} were loaded"

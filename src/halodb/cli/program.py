"""The ``halodb`` program: :func:`main` (the entry point, also ``python -m halodb``), the options
given before a command, and the two ways into the shell (no command, or ``shell``); it must not
know what any command does.

(Named ``program``, not ``main``: :mod:`halodb.cli` re-exports :func:`main`, which would hide
a submodule of that name.)
"""

from __future__ import annotations

import io
import os
import sys
from typing import Annotated

import typer

import halodb
from halodb.cli import commands  # noqa: F401  (registers the subcommands: help lists shell last)
from halodb.cli.session import DEFAULT_PATH, Session, session_of
from halodb.cli.shell import Shell
from halodb.cli.status import EXIT_OK, EXIT_PIPE, EXIT_USAGE, configure_logging, error
from halodb.cli.terminal import PipeClosed
from halodb.cli.typer_app import (
    CODEC_HELP,
    CodecOption,
    PathOption,
    app,
    codec_option,
    command,
    store_path,
)

__all__ = ["main"]


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
            callback=store_path,
            help="The store directory (before or after the command): this, else $HALODB_PATH, "
            "else ./halodb-data (created on first write).",
        ),
    ] = DEFAULT_PATH,
    codec: Annotated[
        str | None,
        typer.Option("--codec", metavar="NAME", callback=codec_option, help=CODEC_HELP),
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


@command("shell", panel="Shell")
def shell_command(
    ctx: typer.Context,
    directory: Annotated[
        str | None,
        typer.Argument(metavar="DIR", callback=store_path, help="The store (default: --path)."),
    ] = None,
    path: PathOption = None,
    codec: CodecOption = None,
) -> None:
    """Open the interactive shell (as plain 'halodb' does)."""
    s = session_of(ctx)
    if s.in_shell:
        error("this is the shell already")
        raise typer.Exit(EXIT_USAGE)
    s = session_of(ctx, path, codec)
    raise typer.Exit(Shell(directory or s.path, codec=s.codec_choice).run())


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
    configure_logging()
    stdout_was = _stdout_file()
    try:
        try:
            app(args=argv, prog_name="halodb")
            status = EXIT_OK
        except SystemExit as exc:
            code = exc.code
            status = code if isinstance(code, int) else (EXIT_OK if code is None else EXIT_USAGE)
        sys.stdout.flush()  # output that fit in the buffer meets a closed pipe here
    except (PipeClosed, BrokenPipeError):
        _silence_stdout()
        return EXIT_PIPE
    if status == 1 and stdout_was != _stdout_file() == _devnull_file():
        # typer's help met a closed pipe: rich pointed stdout at the null device and exited 1
        return EXIT_PIPE
    return status

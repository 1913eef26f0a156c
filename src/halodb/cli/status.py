"""Exit statuses and the one-line error policy of the ``halodb`` command; it must not know the
commands, the store session or how anything is shown but as an ``error:`` or ``warning:`` line.

Exit statuses (also documented in ``docs/cli.md``)::

    0    success
    1    key not found (get, delete)
    2    usage error: unknown command or option, missing argument, bad key literal, bad input data
    3    store error: locked by another process, corrupted, not a store, I/O failure
    130  interrupted (Ctrl-C)
    141  stdout was closed early (``halodb list | head``); nothing more is printed

No user mistake prints a traceback, and every error is one ``error:`` line (:func:`guard`),
usage errors included (:func:`usage_message`; typer would draw them in a box); set
``HALODB_DEBUG=1`` to see a traceback for an internal error. The engine's log messages are
printed as ``warning:`` and ``error:`` lines like the command's own (:class:`LogLines`;
``HALODB_DEBUG=1`` shows its ``info:`` and ``debug:`` lines too).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Final

import typer
from rich.text import Text

import halodb
from halodb.cli.terminal import PipeClosed, console
from halodb.errors import MESSAGE_LIMIT, brief

EXIT_OK: Final = 0
EXIT_NOT_FOUND: Final = 1
EXIT_USAGE: Final = 2
EXIT_STORE: Final = 3
EXIT_INTERRUPTED: Final = 130
EXIT_PIPE: Final = 141
"""What a shell reports for a program killed by SIGPIPE (128 + 13): its reader went away."""


class CliError(Exception):
    """A failure to report in one line, with the exit status it maps to."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


# ----------------------------------------------------------------------------- one line

ECHO_LIMIT: Final = 60
"""Characters of a bad input an error message repeats."""


def echo(text: str) -> str:
    """``text`` quoted for an error message, cut to its first :data:`ECHO_LIMIT` characters."""
    if len(text) <= ECHO_LIMIT:
        return repr(text)
    return f"{text[:ECHO_LIMIT]!r}… ({len(text):,} characters)"


def error(message: str) -> None:
    """An ``error:`` line on stderr."""
    console(stderr=True).print(Text.assemble(("error: ", "bold red"), message))


def warn(message: str) -> None:
    """A ``warning:`` line on stderr."""
    console(stderr=True).print(Text.assemble(("warning: ", "bold yellow"), message))


def debugging() -> bool:
    """Whether ``HALODB_DEBUG`` asks for tracebacks and the engine's every log line."""
    return bool(os.environ.get("HALODB_DEBUG"))


def report_interrupt(message: str = "interrupted") -> None:
    """The ``error:`` line of a Ctrl-C, on a line of its own: after whatever output was pending
    and, on a terminal, after the ``^C`` the terminal echoed in the middle of a line."""
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
    with contextlib.suppress(OSError, ValueError):
        if sys.stderr.isatty():
            sys.stderr.write("\n")
    error(message)


def usage_message(exc: typer.TyperException, see: str) -> str:
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


# ----------------------------------------------------------------------------- the engine's log


class LogLines(logging.Handler):
    """Prints the engine's log records (the ``halodb`` logger) as the command's own lines:
    ``warning: ...``, ``error: ...`` on stderr.

    While a command runs (:func:`guard`), error records are held back: when the command then
    fails with a store error, its one ``error:`` line reports the problem and the held records
    are dropped, so that a failure is not reported twice in two wordings.
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
                error(message)
            elif record.levelno >= logging.WARNING:
                warn(message)
            else:
                label = "info: " if record.levelno >= logging.INFO else "debug: "
                console(stderr=True).print(Text.assemble((label, "dim"), message))
            if exc is not None and record.exc_info and debugging():
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


LOG_LINES = LogLines()


def configure_logging() -> None:
    """Route the ``halodb`` logger to :data:`LOG_LINES`: warnings and errors, or with
    ``HALODB_DEBUG`` everything. Without this, Python's last-resort handler would print bare
    messages."""
    logger = logging.getLogger("halodb")
    if LOG_LINES not in logger.handlers:
        logger.addHandler(LOG_LINES)
    logger.setLevel(logging.DEBUG if debugging() else logging.WARNING)


# ----------------------------------------------------------------------------- the policy


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """Turn every failure inside into one line on stderr and ``typer.Exit(status)``.

    A closed stdout (``halodb list | head``) becomes :class:`PipeClosed`, which ends the
    program quietly (see :func:`halodb.cli.program.main`).
    """
    with LOG_LINES.holding():
        try:
            yield
            return
        except (typer.Exit, typer.Abort, typer.TyperException, PipeClosed):
            raise
        except BrokenPipeError:
            raise PipeClosed from None
        except (CliError, KeyboardInterrupt, halodb.Error, OSError) as exc:
            code, message = _failure(exc)
        except Exception as exc:
            if debugging():
                raise
            code = EXIT_STORE
            message = (
                f"internal error: {type(exc).__name__}: {exc} (a bug in HaloDB; please "
                "report it; HALODB_DEBUG=1 shows the traceback)"
            )
        _report(code, message)
        raise typer.Exit(code)


def _failure(exc: CliError | KeyboardInterrupt | halodb.Error | OSError) -> tuple[int, str]:
    """The exit status and the one line that report an expected failure."""
    if isinstance(exc, CliError):
        return exc.code, exc.message
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    if isinstance(exc, halodb.DataError):
        return EXIT_USAGE, brief(str(exc), 2 * MESSAGE_LIMIT)
    if isinstance(exc, halodb.CorruptionError):
        return EXIT_STORE, (
            f"the store is damaged: {brief(str(exc), 2 * MESSAGE_LIMIT)} (restore it "
            "from a dump or a backup)"
        )
    if isinstance(exc, halodb.Error):
        return EXIT_STORE, brief(str(exc), 2 * MESSAGE_LIMIT)
    where = f"{exc.filename}: " if exc.filename else ""
    return EXIT_STORE, f"{where}{exc.strerror or exc}"


def _report(code: int, message: str) -> None:
    """Print the line that reports a failure, and what the engine logged about it unless the
    line says it all (a store error)."""
    if code == EXIT_STORE:
        LOG_LINES.drop()  # what the engine logged about it: this line reports it
    else:
        LOG_LINES.print_held()
    if code == EXIT_INTERRUPTED:
        report_interrupt(message)
    else:
        error(message)

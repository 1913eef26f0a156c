"""The terminal under the ``halodb`` command: consoles over stdout and stderr, the pager, key
presses, progress bars, Ctrl-C held back during a write, readline and Tab completion; it must
not know the commands, the store session or what an error means (``status`` decides that).

Everything here reads ``sys.stdin``/``sys.stdout``/``sys.stderr`` when called, never at import,
so that tests may swap them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from itertools import islice
from types import FrameType, TracebackType
from typing import Any, Final

from rich.console import Console

from halodb.keys import Key

HISTORY_LENGTH: Final = 1000
COMPLETIONS: Final = 50
"""Most keys Tab offers; past it, only the prefix all the keys share."""
_NEEDS_QUOTES = re.compile(r"[\s'\"\\]|[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
"""What a key completed unquoted must not hold: what the shell's line splitting would change."""


# ----------------------------------------------------------------------------- output


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """Raise, for the error policy and :func:`halodb.cli.program.main` to end quietly with
        status 141 (rich's default exits with status 1, which means "not found" here)."""
        self.quiet = True
        raise BrokenPipeError


def console(*, stderr: bool = False) -> Console:
    """A console over the current ``sys.stdout``/``sys.stderr`` (tests swap them)."""
    return _Console(stderr=stderr, highlight=False, markup=False, emoji=False, soft_wrap=True)


class PipeClosed(Exception):
    """Stdout is a pipe whose reader went away (``halodb list | head``): end the program quietly.

    Not an ``OSError``, so that typer does not turn it into exit status 1 on its way to
    :func:`halodb.cli.program.main`.
    """


@contextlib.contextmanager
def pipe_closes_quietly() -> Iterator[None]:
    """Turn a ``BrokenPipeError`` inside into :class:`PipeClosed`."""
    try:
        yield
    except BrokenPipeError:
        raise PipeClosed from None


# ----------------------------------------------------------------------------- the pager


class StopPaging(Exception):
    """The reader pressed q at a ``-- more --`` prompt."""


class Pager:
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
            key = read_key("-- more -- (space: next page, a: all, q: stop)")
        except KeyboardInterrupt:
            raise  # the prompt stays, and the interrupt's error line follows on a line of its own
        except BaseException:
            out.write("\r\x1b[K")
            raise
        out.write("\r\x1b[K")  # the prompt goes: the next line takes its place
        out.flush()
        if key in ("q", "Q", "\x04", "\x1b"):
            raise StopPaging
        if key in ("a", "A"):
            self.enabled = False


def read_key(prompt: str) -> str:
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


def ask_on_stderr(prompt: str) -> str:
    """A question on the command line: shown on stderr (stdout is for data), read from stdin."""
    sys.stdout.flush()
    sys.stderr.write(prompt)
    sys.stderr.flush()
    answer = sys.stdin.readline()
    if not answer:
        raise EOFError
    return answer


# ----------------------------------------------------------------------------- long commands


@contextlib.contextmanager
def progress(
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
    with Progress(*columns, console=console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda completed: bar.update(task, completed=completed)


class NoInterrupt:
    """Holds Ctrl-C back while a store write runs, then raises it: an interrupt never lands in
    the middle of a write (the shell goes on afterwards with the same open store)."""

    def __init__(self) -> None:
        self._installed = False
        self._old: Any = None
        self._pending = False

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self._pending = True

    def check(self) -> None:
        """Raise the Ctrl-C held back so far, if any: between two steps of a long command,
        each one whole (then it is not raised again on exit)."""
        if self._pending:
            self._pending = False
            raise KeyboardInterrupt

    def __enter__(self) -> NoInterrupt:
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


# ----------------------------------------------------------------------------- readline


class LineEditor:
    """readline for the shell: arrows, Ctrl-R, a history file, and Tab completing with
    ``completions(text)`` (the words that may replace ``text``, the word before the cursor)."""

    def __init__(self, completions: Callable[[str], list[str]]) -> None:
        self._completions = completions
        self._matches: list[str] = []
        self._history: str | None = None

    def start(self) -> None:
        """Switch readline on and read the history (``$HALODB_HISTORY``, else
        ``~/.halodb_history``; empty: none). Nothing happens where there is no readline."""
        try:
            import readline
        except ImportError:
            return
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
        self._history = path or None

    def save(self) -> None:
        """Write the history file, if :meth:`start` read one."""
        if self._history is None:
            return
        import readline

        with contextlib.suppress(OSError):
            readline.write_history_file(self._history)

    def _complete(self, text: str, state: int) -> str | None:
        if state == 0:
            try:
                self._matches = self._completions(text)
            except Exception:  # completion must never break the prompt
                self._matches = []
        return self._matches[state] if state < len(self._matches) else None


def line_before_completion() -> str:
    """What the line being edited holds before the word Tab completes."""
    import readline

    return readline.get_line_buffer()[: readline.get_begidx()]


def key_completions(text: str, keys: Callable[[bool], Iterator[Key]]) -> list[str]:
    """The str keys that start with ``text``, if there are at most :data:`COMPLETIONS` and none
    needs quotes; else only what is certain: the prefix all of them share (readline inserts
    it), up to a character that would need quotes. ``keys(reverse)`` gives the keys with the
    prefix ``text`` in order, or in reverse order.

    The prefix all keys of the range share is that of its first and last keys (keys are in
    order), so it costs two short reads, however many keys match.
    """
    found = list(islice(keys(False), COMPLETIONS + 1))
    if not found:
        return []
    matches = [k for k in found if isinstance(k, str)]  # all of them: a str prefix
    if len(matches) <= COMPLETIONS and not any(_NEEDS_QUOTES.search(k) for k in matches):
        return matches
    if len(matches) <= COMPLETIONS:
        last = matches[-1]
    else:
        last_key = next(keys(True))
        last = last_key if isinstance(last_key, str) else matches[-1]
    first = matches[0]
    size = min(len(first), len(last))
    same = next((i for i in range(size) if first[i] != last[i]), size)
    common = first[:same]
    quote = _NEEDS_QUOTES.search(common)
    if quote is not None:
        common = common[: quote.start()]
    return [common] if len(common) > len(text) else []

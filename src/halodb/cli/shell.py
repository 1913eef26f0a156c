"""The interactive ``halodb`` shell: one store kept open, lines split like a POSIX shell, the
shell's own commands (batch, commit, abort, help, quit), aliases and what Tab completes; it must
not know what the subcommands do (it runs them as the command line does) or the entry point.
"""

from __future__ import annotations

import difflib
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator

import typer
from rich.table import Table
from typer.core import TyperCommand

import halodb
from halodb.cli import commands
from halodb.cli.render import plural
from halodb.cli.session import CODECS, Session, store_exists
from halodb.cli.status import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    error,
    report_interrupt,
    usage_message,
)
from halodb.cli.terminal import (
    LineEditor,
    NoInterrupt,
    console,
    key_completions,
    line_before_completion,
    pipe_closes_quietly,
)
from halodb.cli.typer_app import HELP_OPTIONS
from halodb.keys import Key

_SHELL_ONLY: dict[str, str] = {
    "batch": "Queue puts and deletes until commit.",
    "commit": "Apply the batch's changes atomically.",
    "abort": "Discard the batch's changes.",
    "help": "List commands; 'help COMMAND' shows its options.",
    "quit": "Leave the shell (also Ctrl-D).",
}
_ORDER = (
    "put", "get", "delete", "list", "count", "clear", "batch", "commit", "abort",
    "stats", "tree", "check", "flush", "compact", "dump", "load", "help", "quit",
)  # fmt: skip
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
        self.commands: dict[str, TyperCommand] = {
            name: cmd for name, cmd in commands.registered().items() if name != "shell"
        }

    @property
    def prompt(self) -> str:
        s = self.session
        if s.batch is not None:
            return f"halodb (batch: {plural(len(s.batch), 'change')})> "
        if s.db is not None and s.db.readonly:
            return "halodb (read-only)> "
        return "halodb> "

    # -- running -------------------------------------------------------------------------

    def start(self) -> int:
        """Open the store if there is one; print the banner. Returns an exit status."""
        s = self.session
        try:
            with s.guard():
                if store_exists(s.path):
                    s.open_existing()
        except typer.Exit as exc:
            return exc.exit_code
        if self.interactive:
            if s.db is not None:
                state = " (read-only)" if s.db.readonly else ""
                sys.stdout.write(
                    f"HaloDB {halodb.__version__} shell on {s.db.path}{state}: "
                    f"{plural(len(s.db), 'key')}.\n"
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
        editor = LineEditor(self.completions)
        if self.interactive:
            editor.start()
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
            editor.save()
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
        :class:`halodb.cli.terminal.PipeClosed`, which ends the shell."""
        with pipe_closes_quietly():
            try:
                return self._onecmd(line)
            except KeyboardInterrupt:
                report_interrupt()
                self.status = EXIT_INTERRUPTED
                return False
            finally:
                sys.stdout.flush()

    def _onecmd(self, line: str) -> bool:
        words = self._words(line)
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

    def _words(self, line: str) -> list[str]:
        """The words of ``line``; none for a blank line, a comment or (reported here) bad
        quoting."""
        line = line.strip()
        if not line or line.startswith("#"):
            return []
        first = line.split(None, 1)[0]
        if first in ("\\q", "\\?"):  # psql's words, which shlex would unescape
            line = ALIASES[first] + line[len(first) :]
        try:
            return shlex.split(line)
        except ValueError as exc:
            self._fail(EXIT_USAGE, f'bad quoting: {exc} (quote keys and values like "a b")')
            return []

    def _fail(self, code: int, message: str) -> bool:
        error(message)
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
            self._fail(exc.exit_code, usage_message(exc, see))
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
        with NoInterrupt():
            batch.commit()
        s.info(f"committed {plural(n, 'change')}")

    def _abort(self) -> None:
        s = self.session
        if s.batch is None:
            raise CliError(EXIT_USAGE, "no batch is open ('batch' starts one)")
        n = len(s.batch)
        s.batch.discard()
        s.batch = None
        s.info(f"discarded {plural(n, 'change')}")

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
        out = console()
        out.print("Commands:")
        out.print(table)
        for line in (
            'Keys and values with spaces go in quotes: put "my key" "a value".',
            "With -t keys are Python literals: get -t \"('user', 42)\"; -T for put's value.",
            "Ctrl-C cancels a line or a listing; quit or Ctrl-D leaves.",
        ):
            out.print(line)

    # -- Tab completion ------------------------------------------------------------------

    def completions(self, text: str, line: str | None = None) -> list[str]:
        """Completions of ``text`` after ``line`` (by default, what readline's line holds
        before ``text``): command names first, then options, then str keys."""
        if line is None:
            line = line_before_completion()
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
            return key_completions(text, self._keys(db, text))
        return []

    def _keys(self, db: halodb.Store, prefix: str) -> Callable[[bool], Iterator[Key]]:
        """``keys(reverse)``: the str-prefix range of ``db`` that Tab completes."""
        return lambda reverse: self.session.scan(
            db, prefix, None, None, typed=False, reverse=reverse, keys_only=True
        )

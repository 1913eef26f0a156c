"""The ``halodb`` command line's grammar: the typer app, the click classes under it (one-line
usage errors, quiet closed pipes, negative numbers as values), the option types the commands
share and :func:`command`, which registers a command; it must not know what any command does.

(Named ``typer_app``, not ``app``: :mod:`halodb.cli` re-exports the typer object as ``app``,
which would hide a submodule of that name: ``import halodb.cli.app`` would give the object.)
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable
from itertools import islice
from typing import Annotated, Any, Final

import typer
from typer.core import TyperCommand, TyperGroup

from halodb.cli.session import CODECS, Session
from halodb.cli.status import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, error, usage_message
from halodb.cli.terminal import pipe_closes_quietly

HELP_OPTIONS: Final = ["-h", "--help"]


class _QuietPipe:
    """Output to a closed pipe ends the program quietly (typer would exit with status 1, which
    means "not found" here): also for ``--help`` and in the shell. Mixed into click classes."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with pipe_closes_quietly():
            return super().make_context(*args, **kwargs)  # type: ignore[misc]

    def invoke(self, ctx: Any) -> Any:
        with pipe_closes_quietly():
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
            error(usage_message(exc, see))
            sys.exit(exc.exit_code)
        except typer.Abort:
            error("aborted")
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(result if isinstance(result, int) else EXIT_OK)


def store_path(value: str | None) -> str | None:
    """``--path`` and ``shell DIR``: an empty path is a mistake, not the current directory."""
    if value == "":
        raise typer.BadParameter("the store directory cannot be empty")
    return value


def codec_option(value: str | None) -> str | None:
    """``--codec``: one of :data:`halodb.cli.session.CODECS`."""
    if value is not None and value not in CODECS:
        raise typer.BadParameter(
            f"unknown codec {value!r}: the codecs are halo1 (the default) and pickle"
        )
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

# ----------------------------------------------------------------------------- shared options

PathOption = Annotated[
    str | None,
    typer.Option(
        "--path",
        "-p",
        metavar="DIR",
        callback=store_path,
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
        "--codec", metavar="NAME", callback=codec_option, rich_help_panel="Store", help=CODEC_HELP
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


def command(
    name: str | None = None, *, panel: str
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """``app.command`` with the docstring's paragraphs reflowed for typer's rich help; ``panel``
    is the group ``halodb --help`` lists it in (panels in the order their first command was
    registered)."""

    def register(func: Callable[..., None]) -> Callable[..., None]:
        paragraphs = inspect.cleandoc(func.__doc__ or "").split("\n\n")
        text = "\n\n".join(" ".join(p.split()) for p in paragraphs)
        return app.command(name, cls=_Command, help=text, rich_help_panel=panel)(func)

    return register

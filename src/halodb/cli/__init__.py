"""The ``halodb`` command: an interactive shell and subcommands for scripts; the only package
that talks to a terminal. It must not know how the engine stores anything: it works through the
public API, :mod:`halodb.jsonl` (dump, load) and :mod:`halodb.introspect` (tree).

One module per job, each importing only those below it (an import-linter contract)::

    program      the entry point main(), the options before a command, the ways into the shell
    shell        the interactive shell: its own commands, aliases, what Tab completes
    commands/    the subcommands: data (put, get...), inspect (stats, tree...), bulk (dump, load)
    typer_app    the typer app, its click classes, the shared option types, command()
    session      the store a command works on: path, codec, read-only reads, the shell's store
    render       how keys, values, records, counters and trees are shown
    literals     Python literals typed for keys and values: parsed, never evaluated
    status       exit statuses and the one-line error policy
    terminal     consoles, the pager, key presses, progress bars, Ctrl-C, readline

This package re-exports what programs and tests use.
"""

from halodb.cli.literals import literal_text, parse_key, parse_literal, parse_value
from halodb.cli.program import main
from halodb.cli.render import show_key, show_value
from halodb.cli.session import Session
from halodb.cli.shell import Shell
from halodb.cli.status import (
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_PIPE,
    EXIT_STORE,
    EXIT_USAGE,
    CliError,
)
from halodb.cli.typer_app import app
from halodb.jsonl import from_json, to_json

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

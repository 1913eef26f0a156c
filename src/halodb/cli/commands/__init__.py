"""The ``halodb`` subcommands, a module per panel of ``halodb --help``: :mod:`.data`,
:mod:`.inspect`, :mod:`.bulk`; it must not know the shell or the entry point.

Importing this package registers them on :data:`halodb.cli.typer_app.app`, in the order help
lists them (a panel's place is that of its first command, so the modules are imported in the
panels' order, not in alphabetical order).
"""

from typer.core import TyperCommand, TyperGroup
from typer.main import get_command

from halodb.cli.typer_app import app

# isort: off
from halodb.cli.commands import data
from halodb.cli.commands import inspect
from halodb.cli.commands import bulk

# isort: on

__all__ = ["bulk", "data", "inspect", "registered"]


def registered() -> dict[str, TyperCommand]:
    """Every subcommand registered on the app so far (these, and any other, such as
    ``shell``), by name, in the order help lists them."""
    group = get_command(app)
    assert isinstance(group, TyperGroup)
    return {name: cmd for name, cmd in group.commands.items() if isinstance(cmd, TyperCommand)}

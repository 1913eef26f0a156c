"""A Griffe extension that lets the API reference render HaloDB's docstrings as they are written.

The docstrings are plain text with doctests and a few reST habits, read by ``help()`` and run
by ``pytest --doctest-modules``. Before mkdocstrings renders them as Markdown, this extension:

- fences each doctest (a ``>>>`` line and the lines after it, up to a blank line) as ``pycon``,
  so it shows as code rather than as nested quotes;
- turns a reST literal-block marker (a paragraph ending in ``::``) into a plain colon: the
  indented block after it is already a Markdown code block;
- turns a role (``:class:`Store```, ``:func:`~halodb.open```, ``:meth:`close```) into code,
  linked to its entry in the reference when the name is one of ``halodb.__all__``;
- shows a public function's parameter defaults as their values (``16777216``), where the
  source names them (``DEFAULTS.memtable_size``).

Loaded by ``mkdocs.yml`` (``extensions: [docs/griffe_docstrings.py]``); it changes no source.
"""

from __future__ import annotations

import enum
import inspect
import re
from typing import Any

import griffe

import halodb

_ROLE = re.compile(r":(?:class|func|meth|exc|attr|data|obj|mod):`~?\.?([^`]+)`")
_PUBLIC = frozenset(halodb.__all__)


def _role(match: re.Match[str]) -> str:
    target = match.group(1)
    name = target.rsplit(".", 1)[-1]
    if target.removeprefix("halodb.") == name and name in _PUBLIC:
        return f"[`{name}`][halodb.{name}]"
    return f"`{name}`"


def markdown(text: str) -> str:
    """The Markdown form of one docstring (see the module docstring)."""
    out: list[str] = []
    in_doctest = False
    in_fence = False
    doctest_indent = ""
    for raw in text.splitlines():
        stripped = raw.lstrip()
        indent = raw[: len(raw) - len(stripped)]
        if in_doctest and not stripped:
            out.append(f"{doctest_indent}```")
            in_doctest = False
        if stripped.startswith("```"):
            in_fence = not in_fence
        elif not in_fence and not in_doctest and stripped.startswith(">>>"):
            doctest_indent = indent
            out.append(f"{indent}```pycon")
            in_doctest = True
        if in_fence or in_doctest:
            out.append(raw)
        elif stripped != "::":
            line = raw[:-1] if raw.endswith("::") else raw
            out.append(_ROLE.sub(_role, line))
    if in_doctest:
        out.append(f"{doctest_indent}```")
    return "\n".join(out)


def _show_default_values(pkg: griffe.Module) -> None:
    for name in halodb.__all__:
        function = getattr(halodb, name)
        obj = pkg.members.get(name)
        if not inspect.isfunction(function) or obj is None or not obj.is_function:
            continue
        defaults = inspect.signature(function).parameters
        for parameter in obj.final_target.parameters:
            default = defaults[parameter.name].default
            if parameter.default is None or default is inspect.Parameter.empty:
                continue
            if isinstance(default, enum.Enum):
                parameter.default = f"{type(default).__name__}.{default.name}"
            else:
                parameter.default = repr(default)


class DocstringsAsMarkdown(griffe.Extension):
    """Rewrite every docstring of the package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        _show_default_values(pkg)
        seen: set[int] = set()
        stack: list[griffe.Object | griffe.Alias] = [pkg]
        while stack:
            obj = stack.pop()
            if obj.is_alias or id(obj) in seen:
                continue
            seen.add(id(obj))
            if obj.docstring is not None:
                obj.docstring.value = markdown(obj.docstring.value)
            stack.extend(obj.members.values())

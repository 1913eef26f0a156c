"""Helpers of the store-level tests: small stores that flush, split and overflow early;
``plant``, which puts a known bug into the engine to show a suite catches it; and exact
comparison of values read back; a pager over a new tree file for the unit tests. (What a power
cut leaves: :mod:`faultfs`.)"""

from __future__ import annotations
import __future__

import hashlib
import inspect
import math
import os
import textwrap
from pathlib import Path
from typing import Any, Literal

import pytest

import halodb
import halodb.testing
from halodb.pager import Pager, new_tree_file
from halodb.vfs import FileSystem

DurabilityName = Literal["full", "normal", "fast"]
"""A durability mode by name, as ``halodb.open(durability=...)`` takes it."""


SMALL: dict[str, Any] = {"memtable_size": 64 * 1024, "page_size": 1024, "partitions": 4}
"""Options that make a few hundred kilobytes of data flush, split leaves and grow the tree, in
four partitions (the default of the stores these tests were written for: their batches and
scans span partitions)."""


def stable_id(value: object) -> str:
    """A test id for ``value``: its repr, or its type's name if the repr holds an address
    (``<object object at 0x...>``): ids must be the same in every process that collects the
    tests (``pytest -n``)."""
    text = repr(value)
    return type(value).__name__ if " at 0x" in text else text


def abandon(db: halodb.Store) -> None:
    """Drop ``db`` as a crash would: its log is not flushed into the trees.

    ``Engine.close`` skips the flush when the store has recorded an I/O failure, so
    marking one makes ``close()`` only release the files and the lock. The next open must
    replay every log. (A real crash, a SIGKILLed child, is too slow for state machines.)
    """
    halodb.testing.abandon(db)


def snapshot(path: str | os.PathLike[str]) -> dict[str, str]:
    """The name and a hash of the bytes of every file under ``path``."""
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as handle:
                out[os.path.relpath(full, path)] = hashlib.sha256(handle.read()).hexdigest()
    return out


def plant(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, *edits: tuple[str, str]) -> None:
    """Replace ``owner.name`` by its own source with each ``(old, new)`` edit applied (each
    ``old`` must occur exactly once, so a change of the engine shows here, not as a pass)."""
    function = getattr(owner, name)
    source = textwrap.dedent(inspect.getsource(function))
    for old, new in edits:
        assert source.count(old) == 1, f"{name}: {old!r} is not in its source exactly once"
        source = source.replace(old, new)
    namespace: dict[str, Any] = {}
    code = compile(
        source,
        f"<planted bug in {name}>",
        "exec",
        flags=__future__.annotations.compiler_flag,
        dont_inherit=True,
    )
    exec(code, function.__globals__, namespace)
    monkeypatch.setattr(owner, name, namespace[name])


def same_value(a: Any, b: Any) -> bool:
    """Whether ``b`` is ``a`` read back exactly: equal, of the same types all the way down, NaN
    where ``a`` has NaN (which equals nothing)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and type(a) is type(b):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def batch_apply(db: halodb.Store, changes: dict[Any, Any]) -> None:
    """Write ``changes`` in one batch: ``None`` deletes the key, anything else is stored."""
    with db.batch() as batch:
        for key, value in changes.items():
            if value is None:
                del batch[key]
            else:
                batch[key] = value


def new_pager(
    tmp_path: Path, *, partition: int = 0, cache_pages: int = 64, page_size: int = 1024
) -> Pager:
    """A pager over a new (or the existing) tree file of ``partition`` in ``tmp_path``, for
    the unit tests of the pager and the tree."""
    path = tmp_path / f"p{partition:03d}.tree"
    if not path.exists():
        FileSystem().write_new(str(path), new_tree_file(partition, page_size))
    return Pager(FileSystem(), str(path), partition, page_size, cache_pages, False)

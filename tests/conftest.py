"""Shared fixtures of the store-level tests: small stores that flush, split and overflow early."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import halodb

SMALL: dict[str, Any] = {"memtable_size": 64 * 1024, "page_size": 1024}
"""Options that make a few hundred kilobytes of data flush, split leaves and grow the tree."""


def abandon(db: halodb.Store) -> None:
    """Drop ``db`` as a crash would: its log is not flushed into the trees.

    ``PartitionManager.close`` skips the flush when the store has recorded an I/O failure, so
    marking one makes ``close()`` only release the files and the lock. The next open must
    replay every log. (A real crash, a SIGKILLed child, is too slow for state machines.)
    """
    db._m.failure = RuntimeError("abandon: simulated crash")
    db.close()


def snapshot(path: str | os.PathLike[str]) -> dict[str, str]:
    """The name and a hash of the bytes of every file under ``path``."""
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as handle:
                out[os.path.relpath(full, path)] = hashlib.sha256(handle.read()).hexdigest()
    return out


@pytest.fixture
def open_store(tmp_path: Path) -> Iterator[Callable[..., halodb.Store]]:
    """``open_store(name="db", **options)``: open a store under ``tmp_path`` (small pages and
    memtable unless overridden); every store opened this way is closed at teardown."""
    opened: list[halodb.Store] = []

    def _open(name: str = "db", **options: Any) -> halodb.Store:
        for key, value in SMALL.items():
            options.setdefault(key, value)
        db = halodb.open(tmp_path / name, **options)
        opened.append(db)
        return db

    yield _open
    for db in opened:
        with contextlib.suppress(halodb.Error):
            db.close()

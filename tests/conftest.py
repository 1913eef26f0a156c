"""Pytest's hooks and fixtures for every test: each test is marked by the folder of tests/ it
lives in (the markers are registered in pyproject.toml), so ``pytest tests/unit`` is the quick
loop and ``pytest -m reliability`` runs the suites of docs/reliability.md. Helpers that tests
import live in ``support/``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import halodb
from support.stores import SMALL

KINDS = ("unit", "api", "cli", "reliability", "format", "regressions", "lint")
"""The folders of tests/, each also the marker of the tests in it."""

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with the folder of tests/ it lives in (``unit``, ``reliability``...)."""
    for item in items:
        try:
            kind = item.path.resolve().relative_to(HERE).parts[0]
        except ValueError:  # outside tests/, e.g. doctests collected from src
            continue
        if kind in KINDS:
            item.add_marker(kind)


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

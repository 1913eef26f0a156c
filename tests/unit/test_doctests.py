"""The doctests of every module in ``src/halodb`` run in the default suite (``nox -s docs`` runs
them too, with the documentation's examples)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import tempfile
from pathlib import Path

import pytest

import halodb

MODULES = sorted(
    name
    for _, name, _ in pkgutil.walk_packages(halodb.__path__, "halodb.")
    if name != "halodb.__main__"
)


@pytest.mark.parametrize("name", ["halodb", *MODULES])
def test_doctests(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the examples' stores go here
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"


def test_the_doctests_are_found() -> None:
    """Every module is collected and their examples counted: a packaging or naming change that
    hid the modules from the walk would make the test above pass on nothing."""
    finder = doctest.DocTestFinder()
    examples = sum(
        len(test.examples)
        for name in ["halodb", *MODULES]
        for test in finder.find(importlib.import_module(name))
    )
    assert {"halodb.store", "halodb.keys", "halodb.values"} <= set(MODULES)
    assert examples >= 20, examples

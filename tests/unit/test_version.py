"""The version is defined once (``__version__``); the package metadata takes it from there."""

from __future__ import annotations

from importlib.metadata import version

import halodb


def test_the_installed_metadata_has_the_version_of_the_code() -> None:
    assert version("halodb") == halodb.__version__

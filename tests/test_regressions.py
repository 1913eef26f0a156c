"""Regression tests, each named for what it broke."""

from __future__ import annotations

from pathlib import Path

import pytest

import halodb
from halodb import format as fmt


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_clear_does_not_read_the_old_tree_so_it_can_empty_a_damaged_store(tmp_path: Path) -> None:
    """clear() used to walk the old tree to free its pages, so a damaged page made it fail at
    the flush (after the clear was already logged). The new empty tree needs none of them."""
    path = tmp_path / "s"
    with halodb.open(path, partitions=1, page_size=1024) as db:
        db.update({i: "v" * 50 for i in range(500)})
    tree = path / fmt.partition_file(0, "tree")
    _flip(tree, 3 * 1024 + 100)  # a node page, not a meta page
    with halodb.open(path) as db:
        with pytest.raises(halodb.CorruptionError):
            db.check()
        db.clear()
        db.flush()
        assert len(db) == 0
        db.check()  # the damaged page is free now, and free pages are not read
        db["after"] = 1
    with halodb.open(path) as db:
        assert dict(db.items()) == {"after": 1}
        db.check()


def test_failure_message_names_an_interrupt_that_has_no_text(tmp_path: Path) -> None:
    """A KeyboardInterrupt during close() poisoned the store with an empty reason."""
    db = halodb.open(tmp_path / "s")
    db._m._fail(KeyboardInterrupt())
    with pytest.raises(halodb.OperationalError, match="KeyboardInterrupt"):
        db["k"] = 1
    db.close()

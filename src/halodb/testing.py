"""Test hooks: what a test of HaloDB (or of an application on it) needs that the store's API does
not offer, named and documented here so that tests never reach into private attributes.

Not for production code: :func:`abandon` loses what a crash would lose.

>>> import halodb, tempfile
>>> from halodb import testing
>>> path = tempfile.mkdtemp()
>>> db = halodb.open(path, partitions=4, hash_seed=7)
>>> db["k"] = 1
>>> testing.partition_of(db, "k") in range(4)
True
>>> testing.abandon(db)  # as a crash would leave it: the next open replays the log
>>> with halodb.open(path) as again:
...     again["k"]
1
"""

from __future__ import annotations

from halodb.engine.engine import Engine
from halodb.keys import KeyLike, encode_key
from halodb.store import Store


def abandon(db: Store) -> None:
    """Close ``db`` as a crash of the process would leave it: memtables not merged, records still
    buffered in ``"fast"`` mode dropped, no close record written; the files and the lock are
    released, so this process may open the store again (and must replay its logs)."""
    db._m.abandon()


def engine(db: Store) -> Engine:
    """The engine under ``db``, for white-box tests of its parts (its partitions' logs,
    memtables, pagers and trees; :meth:`Engine.fail` to stop writes as a failure would). What
    it offers changes with the engine: a test that uses it tests the engine, not the API."""
    return db._m


def partition_of(db: Store, key: KeyLike) -> int:
    """The index of the partition that holds ``key`` (it depends on the store's hash seed)."""
    return db._m.part_of(encode_key(key))[0].index


def keys_in(db: Store, partition: int, count: int = 1, prefix: str = "k") -> list[str]:
    """The first ``count`` of the keys ``f"{prefix}0"``, ``f"{prefix}1"``, ... that fall in
    partition ``partition`` of ``db`` (``AssertionError`` if 100,000 of them hold fewer)."""
    found = []
    for i in range(100_000):
        key = f"{prefix}{i}"
        if partition_of(db, key) == partition:
            found.append(key)
            if len(found) == count:
                return found
    raise AssertionError(f"fewer than {count} keys {prefix}... in partition {partition}")

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

from halodb.keys import KeyLike, encode_key
from halodb.store import Store


def abandon(db: Store) -> None:
    """Close ``db`` as a crash of the process would leave it: memtables not merged, records still
    buffered in ``"fast"`` mode dropped, no close record written; the files and the lock are
    released, so this process may open the store again (and must replay its logs)."""
    db._m.abandon()


def partition_of(db: Store, key: KeyLike) -> int:
    """The index of the partition that holds ``key`` (it depends on the store's hash seed)."""
    return db._m.part_of(encode_key(key))[0].index

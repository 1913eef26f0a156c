"""``range(..., limit=N)`` and ``range_keys(..., limit=N)``: the first N of the unlimited scan,
whatever the bounds, direction, prefix or partitions, with the limit pushed down to every
partition; bad limits refused at the call."""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import halodb
import halodb.testing


@pytest.fixture(scope="module", params=[1, 4])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """3,000 keys, half flushed into the trees and half still in the memtables (with some
    deletes of each), in 1 or 4 partitions."""
    path: Path = tmp_path_factory.mktemp("limit") / "s"
    db = halodb.open(path, partitions=request.param, memtable_size=64 * 1024, page_size=1024)
    db.update({f"k{i:05d}": i for i in range(0, 3000, 2)})
    db.flush()
    db.update({f"k{i:05d}": i for i in range(1, 3000, 2)})
    for i in range(0, 3000, 7):
        del db[f"k{i:05d}"]
    yield db
    db.close()


bounds = st.one_of(st.none(), st.integers(0, 3100).map(lambda i: f"k{i:05d}"))


@settings(max_examples=150, deadline=None)
@given(
    start=bounds,
    stop=bounds,
    reverse=st.booleans(),
    prefix=st.sampled_from([None, "k", "k0", "k01", "k029", "x"]),
    limit=st.one_of(st.integers(0, 40), st.integers(0, 3500)),
)
def test_a_limit_gives_the_first_items_of_the_whole_scan(
    store: halodb.Store,
    start: str | None,
    stop: str | None,
    reverse: bool,
    prefix: str | None,
    limit: int,
) -> None:
    whole = store.range(start, stop, reverse=reverse, prefix=prefix)
    expected = list(islice(whole, limit))
    got = list(store.range(start, stop, reverse=reverse, prefix=prefix, limit=limit))
    assert got == expected
    keys = list(store.range_keys(start, stop, reverse=reverse, prefix=prefix, limit=limit))
    assert keys == [key for key, _ in expected]


def test_no_limit_and_a_large_limit_read_everything(store: halodb.Store) -> None:
    everything = list(store.items())
    assert list(store.range(limit=None)) == everything
    assert list(store.range(limit=10**9)) == everything
    assert list(store.range(limit=0)) == [] == list(store.range_keys(limit=0))


@pytest.mark.parametrize(
    ("limit", "error", "message"),
    [
        ("3", TypeError, "limit must be an int or None, not str"),
        (2.0, TypeError, "limit must be an int or None, not float"),
        (True, TypeError, "limit must be an int or None, not bool"),
        (-1, ValueError, "limit must be 0 or more, not -1"),
    ],
)
def test_a_bad_limit_is_refused_at_the_call(
    store: halodb.Store, limit: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        store.range(limit=limit)  # no iteration: the call itself refuses
    with pytest.raises(error, match=message.replace("range", "range_keys")):
        store.range_keys(limit=limit)


def test_a_closed_store_refuses_even_an_empty_limit(tmp_path: Path) -> None:
    db = halodb.open(tmp_path / "s")
    db.close()
    with pytest.raises(halodb.ProgrammingError, match="closed"):
        db.range(limit=0)


@pytest.mark.parametrize("limit", [1, 10, 100, 1000])
def test_no_partition_reads_more_than_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    """The limit is pushed down: every partition's chunks together ask for at most ``limit``
    pairs, however many it holds."""
    with halodb.open(tmp_path / "s", partitions=4) as db:
        db.update({f"k{i:05d}": i for i in range(6000)})
        asked: dict[int, int] = {}
        for part in halodb.testing.engine(db).parts:

            def counting(*args: Any, part: Any = part, scan: Any = part.scan) -> Any:
                asked[part.index] = asked.get(part.index, 0) + args[3]
                return scan(*args)

            monkeypatch.setattr(part, "scan", counting)
        assert len(list(db.range(limit=limit))) == limit
        assert asked and max(asked.values()) <= limit

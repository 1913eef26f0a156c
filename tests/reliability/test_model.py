"""Model-based test: a hypothesis state machine drives a Store and a dict side by side.

Small pages (1 KiB) and a small memtable (64 KiB) make flushes, leaf and internal splits and
overflow chains happen within a few dozen steps; keys come from small alphabets so that
overwrites and deletes hit existing keys. Every step compares lengths and a few lookups; every
reopen, and every crash ("abandon": the store is dropped without flushing, so the next open must
replay the logs), compares the whole contents and runs ``check()``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import halodb
from support.stores import abandon, batch_apply

keys = st.one_of(
    st.text(alphabet="ab\x00é", max_size=3),
    st.integers(min_value=-8, max_value=40),
    st.tuples(st.sampled_from(["u", "v"]), st.integers(min_value=0, max_value=60)),
    st.sampled_from([b"", b"k", b"k\x00", 10**30, -(10**30), 0.5, -0.5]),
)
values = st.one_of(
    st.binary(max_size=60),
    st.text(max_size=30),
    st.integers(),
    st.floats(allow_nan=False),
    st.none(),
    st.booleans(),
    st.lists(st.integers(min_value=-5, max_value=5), max_size=4),
    st.dictionaries(st.text(alphabet="xy", max_size=2), st.integers(), max_size=3),
    # Inline but large: a few fill a leaf, so leaves split and trees grow a level.
    st.binary(min_size=100, max_size=256),
    # Around and above the inline limit (a quarter page): overflow chains.
    st.binary(min_size=200, max_size=3000),
    st.integers(min_value=200, max_value=20_000).map(lambda n: "s" * n),
)
changes = st.lists(st.tuples(keys, st.one_of(st.none(), values)), min_size=1, max_size=20)


class StoreVersusDict(RuleBasedStateMachine):
    """The store must behave exactly like a dict through writes, flushes, reopens and crashes."""

    PARTITIONS: ClassVar[int] = 4

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="halodb-model-")
        self.path = f"{self.dir}/db"
        self.model: dict[Any, Any] = {}
        self.db = self._open()

    def _open(self) -> halodb.Store:
        return halodb.open(
            self.path, partitions=self.PARTITIONS, page_size=1024, memtable_size=64 * 1024
        )

    def _compare_all(self) -> None:
        assert len(self.db) == len(self.model)
        assert dict(self.db.items()) == self.model
        assert list(self.db) == [k for k, _ in self.db.range()]
        self.db.check()

    @initialize(
        n=st.integers(min_value=0, max_value=120),
        size=st.integers(min_value=0, max_value=300),
        data=st.dictionaries(keys, values, max_size=30),
    )
    def start(self, n: int, size: int, data: dict[Any, Any]) -> None:
        """Start from a bulk load over the same tuple keys the rules draw, so that trees have
        several leaves and the rules hit keys that are already in the trees."""
        bulk = {("uv"[i % 2], i // 2): bytes([i % 256]) * size for i in range(n)}
        self.db.update(bulk)
        self.model.update(bulk)
        self.db.flush()
        self.db.update(data)
        self.model.update(data)

    @rule(key=keys, value=values)
    def put(self, key: Any, value: Any) -> None:
        self.db[key] = value
        self.model[key] = value

    @rule(key=keys, data=st.data())
    def delete(self, key: Any, data: st.DataObject) -> None:
        if bool(self.model) and data.draw(st.booleans(), label="existing key"):
            key = data.draw(st.sampled_from(sorted(self.model, key=repr)), label="key")
        if key in self.model:
            del self.db[key]
            del self.model[key]
        else:
            with pytest.raises(KeyError):
                del self.db[key]

    @rule(key=keys, default=values)
    def pop(self, key: Any, default: Any) -> None:
        assert self.db.pop(key, default) == self.model.pop(key, default)

    @rule(key=keys, default=values)
    def setdefault(self, key: Any, default: Any) -> None:
        assert self.db.setdefault(key, default) == self.model.setdefault(key, default)

    @rule(changes=changes)
    def batch(self, changes: list[tuple[Any, Any]]) -> None:
        batch_apply(self.db, dict(changes))
        for key, value in changes:
            if value is None:
                self.model.pop(key, None)
            else:
                self.model[key] = value

    @rule(changes=changes)
    def failed_batch(self, changes: list[tuple[Any, Any]]) -> None:
        with pytest.raises(ZeroDivisionError), self.db.batch() as b:
            for key, value in changes:
                b[key] = value
            raise ZeroDivisionError

    @rule()
    def flush(self) -> None:
        self.db.flush()

    @precondition(lambda self: len(self.model) > 0)
    @rule()
    def popitem(self) -> None:
        first = self.db.first()
        key, value = self.db.popitem()
        assert first == (key, value)
        assert self.model.pop(key) == value

    @rule()
    def clear(self) -> None:
        self.db.clear()
        self.model.clear()

    @rule()
    def reopen(self) -> None:
        self.db.close()
        self.db = self._open()
        self._compare_all()

    @rule()
    def abandon(self) -> None:
        abandon(self.db)
        self.db = self._open()
        self._compare_all()

    @invariant()
    def same_length_and_lookups(self) -> None:
        assert len(self.db) == len(self.model)
        sample = list(self.model)[:3] + list(self.model)[-3:]
        for key in sample:
            assert self.db[key] == self.model[key]
            assert key in self.db
        first = self.db.first()
        assert (first is None) == (not self.model)
        if first is not None:
            assert self.model[first[0]] == first[1]

    def teardown(self) -> None:
        try:
            if not self.db.closed:
                self._compare_all()
                self.db.close()
                self.db = self._open()
                self._compare_all()
                self.db.close()
        finally:
            if not self.db.closed:
                self.db.close()
            shutil.rmtree(self.dir, ignore_errors=True)


class OnePartitionStoreVersusDict(StoreVersusDict):
    """The same, on a store of one partition (no cross-partition batches or merges)."""

    PARTITIONS: ClassVar[int] = 1


STRESS = bool(os.environ.get("HALODB_STRESS"))
"""Set by ``nox -s stress``: many more and longer runs."""

MODEL_SETTINGS = settings(
    max_examples=2000 if STRESS else 60,
    stateful_step_count=100 if STRESS else 40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

TestStoreVersusDict = StoreVersusDict.TestCase
TestStoreVersusDict.settings = MODEL_SETTINGS
TestOnePartitionStoreVersusDict = OnePartitionStoreVersusDict.TestCase
TestOnePartitionStoreVersusDict.settings = MODEL_SETTINGS

"""The memtable through its own API: order, ranges, columns, size accounting."""

from __future__ import annotations

import random

from halodb.memtable import ENTRY_OVERHEAD, Memtable, merge_sorted
from halodb.vfs import FileSystem

PAGE = 1024
FS = FileSystem()


def test_memtable_ordering() -> None:
    rng = random.Random(3)
    mem = Memtable()
    model: dict[bytes, bytes | None] = {}
    for _ in range(3000):
        key = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 6)))
        value = None if rng.random() < 0.2 else b"v" * rng.randrange(5)
        mem.put(key, value)
        model[key] = value
        if rng.random() < 0.01:  # ordered reads in between take pending keys in
            assert list(mem.ordered()) == sorted(model)
    keys = sorted(model)
    assert len(mem) == len(model)
    assert list(mem.ordered()) == keys
    assert mem.items() == [(k, model[k]) for k in keys]


def test_memtable_columns_with_and_without_ordered_reads_between() -> None:
    """``columns`` sorts the pending keys alone when no ordered read took any in, and merges
    them with the ordered ones otherwise; either way every key once, in order, with its value."""
    rng = random.Random(5)
    for reads in (False, True):
        mem = Memtable()
        model: dict[bytes, bytes | None] = {}
        for round_ in range(3):
            for _ in range(1500):
                key = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 4)))
                value = None if rng.random() < 0.2 else b"v" * rng.randrange(4)
                mem.put(key, value)
                model[key] = value
                if reads and rng.random() < 0.01:
                    mem.ordered()
            assert bool(mem.order) == reads
            keys = sorted(model)
            assert mem.columns() == (keys, [model[k] for k in keys]), (reads, round_)
        mem.clear()
        mem.put(b"b", b"2")
        mem.put(b"a", None)
        assert mem.columns() == ([b"a", b"b"], [None, b"2"])


def test_memtable_columns_in_steps_match_one_sort() -> None:
    """With a ``step`` the keys are sorted in runs and merged a bounded round at a time
    (``merge_sorted``): the same columns as one sort, for skewed runs and small steps too."""
    rng = random.Random(11)
    for count, step in ((0, 4), (1, 1), (5, 2), (1000, 7), (4000, 64), (3000, 5000)):
        mem = Memtable()
        model: dict[bytes, bytes | None] = {}
        for i in range(count):
            # (half the keys share a prefix: runs whose keys bunch together)
            key = (b"p" if i % 2 else b"") + rng.randbytes(rng.randrange(0, 4))
            value = None if rng.random() < 0.2 else b"v" * rng.randrange(4)
            mem.put(key, value)
            model[key] = value
        keys = sorted(model)
        assert mem.columns(step) == (keys, [model[k] for k in keys]), (count, step)
    pool = [x.to_bytes(4, "big") for x in rng.sample(range(10**6), 2000)]
    cuts = sorted(rng.sample(range(2001), 8))  # nine runs of distinct keys, some empty
    runs = [sorted(pool[a:b]) for a, b in zip([0, *cuts], [*cuts, 2000], strict=True)]
    assert merge_sorted(runs, 16) == sorted(pool)
    ordered = sorted(pool)  # keys written in order: runs that do not overlap, either way round
    blocks = [ordered[a : a + 300] for a in range(0, 2000, 300)]
    assert merge_sorted(blocks, 16) == ordered
    assert merge_sorted(blocks[::-1], 16) == ordered
    assert merge_sorted([ordered[::2], ordered[1::2]], 7) == ordered


def test_memtable_size_accounting_and_tombstones() -> None:
    mem = Memtable()

    def expected(model: dict[bytes, bytes | None]) -> int:
        return sum(len(k) + ENTRY_OVERHEAD + len(v or b"") for k, v in model.items())

    rng = random.Random(4)
    model: dict[bytes, bytes | None] = {}
    for _ in range(2000):
        key = b"k%d" % rng.randrange(300)
        value = None if rng.random() < 0.3 else b"x" * rng.randrange(100)
        mem.put(key, value)
        model[key] = value
        assert mem.size == expected(model)
    # tombstones are kept, in order, as None
    tomb = [k for k, v in sorted(model.items()) if v is None]
    assert tomb and [k for k, v in mem.items() if v is None] == tomb
    assert all(mem.data[k] is None for k in tomb)
    assert set(mem.ordered()) == set(model)
    mem.clear()
    assert (len(mem), mem.size, mem.items(), list(mem.ordered())) == (
        0,
        0,
        [],
        [],
    )
    mem.put(b"again", b"1")
    assert mem.items() == [(b"again", b"1")] and mem.size == 5 + ENTRY_OVERHEAD + 1

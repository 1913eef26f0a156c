"""Scans and the node cache: a scan over more leaves than the cache holds keeps what the cache
held, and a second scan reads less than the first (not all of it again)."""

from __future__ import annotations

from pathlib import Path

import halodb

CACHE = 1 << 20
KEYS = 60_000  # about 7 MB of leaves on disk, 12 MB decoded: 12 times the cache


def _misses(db: halodb.Store) -> int:
    return sum(p.cache_misses for p in db.stats().partitions)


def _store(path: Path) -> None:
    with halodb.open(path, cache_size=CACHE) as db:
        db.update({f"k{i:06d}": "v" * 100 for i in range(KEYS)})
        db.flush()


def test_a_scan_larger_than_the_cache_keeps_the_leaves_it_held(tmp_path: Path) -> None:
    """Short range reads cache the leaves of a few keys; a full scan follows. Each time the
    cache filled, it used to drop its older half: these leaves first, read again afterwards.
    (The scan's first chunks are cached as short reads are: they fit here.)"""
    _store(tmp_path / "s")
    with halodb.open(tmp_path / "s", cache_size=CACHE) as db:
        hot = [f"k{i:06d}" for i in range(0, KEYS, KEYS // 10)]
        for key in hot:
            assert list(db.range(start=key, limit=1)) == [(key, "v" * 100)]
        before = _misses(db)
        assert sum(1 for _ in db.items()) == KEYS
        assert _misses(db) > before  # (the scan read leaves the cache did not hold)
        after_scan = _misses(db)
        for key in hot:
            assert list(db.range(start=key, limit=1)) == [(key, "v" * 100)]
        assert _misses(db) == after_scan


def test_a_second_scan_reads_no_more_than_the_first(tmp_path: Path) -> None:
    _store(tmp_path / "s")
    with halodb.open(tmp_path / "s", cache_size=CACHE) as db:
        start = _misses(db)
        assert sum(1 for _ in db.items()) == KEYS
        first = _misses(db) - start
        assert sum(1 for _ in db.items()) == KEYS
        second = _misses(db) - start - first
        assert 0 < second < first  # (the cache kept what it held when the first one filled it)
        assert all(p.cache_bytes <= CACHE for p in db.stats().partitions)

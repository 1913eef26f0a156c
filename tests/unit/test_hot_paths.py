"""Hot-path copies kept for speed agree with the code they copy.

- ``Store.__getitem__``, ``get`` and ``__setitem__`` inline the key encoding's and the default
  codec's bytes cases; ``__contains__``, ``pop`` and ``Batch`` go through the general path
  (``encode_key`` with the length check, the codec's ``encode``/``decode``). For any key and
  value, both paths must give the same answers.
- ``Engine.get`` and ``Engine.put`` inline :func:`halodb.hashing.route`; batches and
  ``check()`` call it.
- ``BloomFilter.add``, ``add_all`` and ``might_contain`` inline :func:`halodb.hashing.probes`
  (the default five unrolled); ``Partition.peek`` inlines the first.
- ``Store`` decodes a scanned list whose keys are all bytes, or all str, with ``decode_key``'s
  and the default codec's cases inlined (``items()``, ``range()``, ``range_keys()``).
- ``Engine.put`` inlines ``Engine._write_locked`` (the write of ``setdefault`` and ``del``).
- The manifest, a log's header and a bloom filter's header are sealed by
  :func:`halodb.format.seal` and checked by :func:`halodb.format.sealed`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import halodb
from halodb import format as fmt
from halodb import testing
from halodb.bloom import BloomFilter
from halodb.engine.directory import Manifest, manifest_bytes, parse_manifest
from halodb.hashing import key_hash, probes, route
from halodb.keys import decode_key, encode_key
from halodb.wal import header_bytes
from support.stores import same_value

MISSING = object()


scalars = st.one_of(
    st.binary(max_size=600),
    st.text(max_size=600),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True),
)
keys = st.one_of(scalars, st.tuples(scalars, scalars), st.tuples(st.text(max_size=3)))
values = st.one_of(
    st.binary(max_size=100),
    st.text(max_size=100),
    st.lists(st.integers(), max_size=3),
    st.none(),
)


@settings(max_examples=300, deadline=None)
@given(pairs=st.lists(st.tuples(keys, values), max_size=20), probes=st.lists(keys, max_size=20))
def test_the_inlined_lookups_agree_with_the_general_path(
    tmp_path_factory: Any, pairs: list[tuple[Any, Any]], probes: list[Any]
) -> None:
    path: Path = tmp_path_factory.mktemp("s")
    with halodb.open(path / "s", partitions=2, page_size=1024) as db:
        for key, value in pairs:
            try:
                db[key] = value  # the inlined put
            except halodb.DataError:
                with db.batch() as batch:  # the general path refuses it the same way
                    try:
                        batch[key] = value
                    except halodb.DataError:
                        continue
                    raise AssertionError(f"the batch took {key!r}, the put did not")
        for key in [*probes, *(key for key, _ in pairs)]:
            present = key in db  # the general path
            got = db.get(key, MISSING)  # the inlined path
            assert (got is not MISSING) == present, key
            try:
                item = db[key]
            except KeyError:
                assert not present, key
            else:
                assert present and item == got, key
            if present and not (isinstance(key, float) and math.isnan(key)):
                assert got == db.pop(key)  # the general decode
                db[key] = got


@settings(max_examples=20, deadline=None)
@given(
    keys=st.lists(st.binary(max_size=40), min_size=1, max_size=40, unique=True),
    partitions=st.sampled_from([1, 2, 3, 4, 5, 7, 8, 16, 255, 256]),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_the_inlined_routing_agrees_with_route(
    tmp_path_factory: Any, keys: list[bytes], partitions: int, seed: int
) -> None:
    """A key put by the hot path lands in the partition ``route`` names (``check()`` verifies
    every key by ``route``), a get by the hot path finds it there, and a batch (which routes by
    ``route``) overwrites the same copy."""
    path: Path = tmp_path_factory.mktemp("s")
    with halodb.open(path / "s", partitions=partitions, hash_seed=seed) as db:
        engine = testing.engine(db)
        for key in keys:
            db[key] = b"put"
            expected = route(key_hash(encode_key(key), seed), partitions)
            assert testing.partition_of(db, key) == expected
            assert engine.parts[expected].contains(encode_key(key), key_hash(encode_key(key), seed))
        db.update({key: b"batch" for key in keys})
        assert all(db[key] == b"batch" for key in keys)
        assert len(db) == len(keys)
        db.check()


hashes = st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))


@settings(max_examples=300, deadline=None)
@given(
    h=hashes,
    words=st.integers(min_value=16, max_value=64),
    others=st.lists(hashes, max_size=5),
    k=st.one_of(st.just(5), st.integers(min_value=1, max_value=16)),
)
def test_the_inlined_probes_agree_with_probes(
    h: tuple[int, int], words: int, others: list[tuple[int, int]], k: int
) -> None:
    """A filter of ``k`` probes (five, the default, unrolled; any other count looped) sets,
    and tests, exactly the bits ``probes`` names."""
    nbits = words * 64
    expected = set(probes(h, nbits, k))
    one = BloomFilter(nbits, k, 100)
    assert one.add(h) is False or len(expected) < k  # a fresh filter held none of them
    assert set(one.bits.search(1)) == expected
    every = BloomFilter(nbits, k, 100)
    every.add_all([h])
    assert every.bits == one.bits
    assert one.might_contain(h)
    for bit in expected:  # missing any one of its bits, the key is absent
        holed = BloomFilter(nbits, k, 100, one.bits.copy())
        holed.bits[bit] = 0
        assert not holed.might_contain(h)
    many = BloomFilter(nbits, k, 100)
    many.add_all(others)
    for other in others:
        assert set(probes(other, nbits, k)) <= set(many.bits.search(1))
    assert many.might_contain(h) == all(many.bits[i] for i in expected)


@settings(max_examples=50, deadline=None)
@given(
    present=st.lists(st.binary(max_size=20), max_size=60),
    absent=st.lists(st.binary(max_size=20), max_size=60),
)
def test_the_first_probe_of_a_peek_agrees_with_the_filter(
    tmp_path_factory: Any, present: list[bytes], absent: list[bytes]
) -> None:
    """``Partition.peek`` answers absent, for a key in neither its memtable nor its row cache,
    exactly when its bloom filter does."""
    path: Path = tmp_path_factory.mktemp("s")
    with halodb.open(path / "s", partitions=1, hash_seed=5) as db:
        db.update({key: b"v" for key in present})
        db.flush()
        part = testing.engine(db).parts[0]
        for key in absent:
            encoded = encode_key(key)
            if key in present:
                continue
            h = key_hash(encoded, 5)
            answer = part.peek(encoded, h)
            assert (answer is None) == (not part.bloom.might_contain(h)), key


@settings(max_examples=200, deadline=None)
@given(
    partitions=st.integers(1, 256),
    page_size=st.sampled_from([1024, 2048, 4096, 8192, 16384, 32768, 65536]),
    seed=st.integers(0, 2**32 - 1),
    created=st.integers(0, 2**64 - 1),
    codec=st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=16),
    index=st.integers(0, 255),
    base=st.integers(0, 2**63 - 1),
)
def test_every_sealed_header_checks_out(
    partitions: int, page_size: int, seed: int, created: int, codec: str, index: int, base: int
) -> None:
    """What ``seal`` writes, ``sealed`` accepts, and any one flipped bit it refuses."""
    manifest = Manifest(partitions, page_size, seed, created, codec)
    data = manifest_bytes(manifest)
    assert parse_manifest(data, "m") == manifest
    bloom = BloomFilter.for_keys(100, 10).to_bytes(index, base)
    for head, size in (
        (data, fmt.MANIFEST.size),
        (header_bytes(index, base), fmt.WAL_HEADER.size),
        (bloom, fmt.BLOOM_HEADER.size),
    ):
        assert fmt.sealed(head, size)
        for bit in (0, size * 8 // 2, size * 8 - 1):
            flipped = bytearray(head)
            flipped[bit // 8] ^= 1 << (bit % 8)
            assert not fmt.sealed(flipped, size)


@settings(max_examples=50, deadline=None)
@given(
    pairs=st.dictionaries(st.binary(max_size=30), st.binary(max_size=300), max_size=30),
    doomed=st.lists(st.integers(min_value=0), max_size=10),
)
def test_the_inlined_put_writes_what_the_general_write_does(
    tmp_path_factory: Any, pairs: dict[bytes, bytes], doomed: list[int]
) -> None:
    """``Engine.put`` inlines ``_write_locked``, which ``setdefault`` (``put_if_absent``) and
    ``del`` go through: the same writes give the same log bytes, whichever path made them."""
    path: Path = tmp_path_factory.mktemp("s")
    keys = list(pairs)
    deletes = [keys[i % len(keys)] for i in doomed] if keys else []
    logs = []
    for name, write in (("inlined", "put"), ("general", "setdefault")):
        with halodb.open(path / name, partitions=1, hash_seed=1) as db:
            for key, value in pairs.items():
                if write == "put":
                    db[key] = value
                else:
                    db.setdefault(key, value)
            for key in dict.fromkeys(deletes):
                del db[key]
            logs.append((path / name / "p000.wal").read_bytes())
            assert dict(db.items()) == {k: v for k, v in pairs.items() if k not in deletes}
    assert logs[0] == logs[1]


@settings(max_examples=100, deadline=None)
@given(
    pairs=st.one_of(
        st.dictionaries(st.binary(max_size=30), values, max_size=40),
        st.dictionaries(
            st.text(st.characters(exclude_categories=()), max_size=30), values, max_size=40
        ),
        st.dictionaries(keys, values, max_size=40),
    ),
    reverse=st.booleans(),
)
def test_the_inlined_scan_decoding_agrees_with_decode_key(
    tmp_path_factory: Any, pairs: dict[Any, Any], reverse: bool
) -> None:
    """Whatever the keys (all bytes, all str, or mixed, so that lists take either path), a scan
    gives every pair as written, in key order."""
    path: Path = tmp_path_factory.mktemp("s")
    storable = {}
    with halodb.open(path / "s", partitions=2) as db:
        for key, value in pairs.items():
            try:
                db[key] = value
            except halodb.DataError:
                continue
            storable[encode_key(key)] = value
        order = sorted(storable, reverse=reverse)
        expected_keys = [decode_key(encoded) for encoded in order]
        got = list(db.range(reverse=reverse))
        assert [key for key, _ in got] == expected_keys
        assert all(same_value(storable[encode_key(k)], v) for k, v in got)
        assert list(db.range_keys(reverse=reverse)) == expected_keys

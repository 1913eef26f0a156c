"""The bloom filter through its own API: no false negatives, the false-positive rate, the
documented hash and bits, its file's round trip and damage."""

from __future__ import annotations

import random

import mmh3
import pytest
from bitarray import bitarray

from halodb import format as fmt
from halodb.bloom import MIN_BITS, BloomFilter
from halodb.errors import CorruptionError
from halodb.hashing import key_hash
from halodb.vfs import FileSystem

PAGE = 1024
FS = FileSystem()

SEED = 0xC0FFEE


def _keys(n: int, tag: bytes) -> list[bytes]:
    return [tag + b"%08d" % i for i in range(n)]


def test_bloom_has_no_false_negatives() -> None:
    keys = _keys(10_000, b"in")
    bloom = BloomFilter.for_keys(len(keys), 10)
    for key in keys:
        bloom.add(key_hash(key, SEED))
    assert all(bloom.might_contain(key_hash(key, SEED)) for key in keys)


@pytest.mark.parametrize("bits_per_key", [6, 10, 16])
def test_bloom_false_positive_rate_is_near_the_target(bits_per_key: int) -> None:
    n = 10_000
    bloom = BloomFilter.for_keys(n, bits_per_key)
    for key in _keys(n, b"in"):
        bloom.add(key_hash(key, SEED))
    probes = _keys(50_000, b"out")
    rate = sum(bloom.might_contain(key_hash(k, SEED)) for k in probes) / len(probes)
    # the textbook rate of this size and number of probes
    m, k = bloom.nbits, bloom.hashes
    expected = (1 - (1 - 1 / m) ** (k * n)) ** k
    optimum = 0.6185**bits_per_key  # what ln 2 probes per bit would give
    assert expected < 2.5 * optimum, (bits_per_key, k, expected, optimum)
    assert expected / 2 < rate < expected * 1.6 + 0.0005, (rate, expected)


def test_key_hash_is_the_documented_murmur3_halves() -> None:
    """Routing and the bloom bits on disk depend on it: ``mmh3.hash64(key, seed, signed=False)``."""
    rng = random.Random(5)
    for _ in range(2000):
        key, seed = rng.randbytes(rng.randrange(40)), rng.randrange(1 << 32)
        assert key_hash(key, seed) == mmh3.hash64(key, seed, signed=False)


@pytest.mark.parametrize("bits_per_key", [2, 6, 10, 16])
def test_bloom_sets_and_tests_exactly_the_documented_bits(bits_per_key: int) -> None:
    """Probe ``i`` is bit ``(h1 + i * h2) mod m`` whatever the number of probes (the default
    of 5 has its own unrolled code)."""
    bloom = BloomFilter.for_keys(500, bits_per_key)
    m, k = bloom.nbits, bloom.hashes
    expected = bitarray(m, endian="little")
    expected.setall(0)
    for key in _keys(500, b"in"):
        h1, h2 = key_hash(key, SEED)
        probes = [(h1 + i * h2) % m for i in range(k)]
        before = all(expected[p] for p in probes)
        for p in probes:
            expected[p] = 1
        assert bloom.add((h1, h2)) == before
    assert bloom.bits == expected
    for key in _keys(5000, b"out"):
        h1, h2 = key_hash(key, SEED)
        assert bloom.might_contain((h1, h2)) == all(expected[(h1 + i * h2) % m] for i in range(k))
    rebuilt = BloomFilter.for_keys(500, bits_per_key)  # add_all, a rebuild's bulk add
    rebuilt.add_all(key_hash(key, SEED) for key in _keys(500, b"in"))
    assert rebuilt.bits == expected


def test_bloom_serialisation_round_trip() -> None:
    keys = _keys(3000, b"k")
    bloom = BloomFilter.for_keys(len(keys), 10)
    for key in keys:
        bloom.add(key_hash(key, SEED))
    data = bloom.to_bytes(5, 77)
    back, txn = BloomFilter.from_bytes(data, 5, "p005.bloom")
    assert txn == 77
    assert (back.nbits, back.hashes, back.capacity) == (bloom.nbits, bloom.hashes, bloom.capacity)
    assert back.bits == bloom.bits
    assert all(back.might_contain(key_hash(key, SEED)) for key in keys)
    assert back.to_bytes(5, 77) == data
    assert len(data) == fmt.BLOOM_HEADER.size + bloom.nbits // 8


def test_bloom_any_damage_is_detected() -> None:
    bloom = BloomFilter.for_keys(200, 10)
    for key in _keys(200, b"k"):
        bloom.add(key_hash(key, SEED))
    data = bloom.to_bytes(1, 9)
    rng = random.Random(1)
    for pos in range(len(data)):
        damaged = bytearray(data)
        damaged[pos] ^= rng.randrange(1, 256)
        with pytest.raises(CorruptionError):
            BloomFilter.from_bytes(bytes(damaged), 1, "p001.bloom")
    for cut in range(len(data)):
        with pytest.raises(CorruptionError):
            BloomFilter.from_bytes(data[:cut], 1, "p001.bloom")
    for extra in (b"\x00", b"\x00" * 8, b"garbage!"):
        with pytest.raises(CorruptionError):
            BloomFilter.from_bytes(data + extra, 1, "p001.bloom")
    with pytest.raises(CorruptionError):
        BloomFilter.from_bytes(data, 2, "p002.bloom")  # another partition's filter
    with pytest.raises(CorruptionError):
        BloomFilter.from_bytes(bytes(len(data)), 1, "p001.bloom")


@pytest.mark.parametrize(
    ("nbits", "hashes", "body"),
    [
        (0, 5, 0),
        (MIN_BITS - 64, 5, (MIN_BITS - 64) // 8),
        (MIN_BITS + 1, 5, 128),
        (MIN_BITS, 0, 128),
        (MIN_BITS, 17, 128),
        (MIN_BITS, 5, 127),
    ],
)
def test_bloom_impossible_header_with_good_checksums(nbits: int, hashes: int, body: int) -> None:
    bits = bytes(body)
    head = fmt.BLOOM_HEADER.pack(
        fmt.BLOOM_MAGIC, fmt.FORMAT_VERSION, 0, hashes, 0, nbits, 100, 1, fmt.crc(bits), 0
    )
    head = head[:-4] + fmt.U32.pack(fmt.crc(head[:-4]))
    with pytest.raises(CorruptionError):
        BloomFilter.from_bytes(head + bits, 0, "p000.bloom")

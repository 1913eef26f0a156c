"""The key hash, the partition of a key and the bloom filter's probes: the contract, once.

One 128-bit MurmurHash3 (x64) of the encoded key, seeded with the store's hash seed, gives two
unsigned 64-bit halves ``h1, h2``. Both uses below are part of the on-disk format (a key found
in the wrong partition, or a saved filter probed differently, is damage): never change them.

- The partition of a key is ``(h2 >> 32) % partitions`` (:func:`route`): bits that the bloom
  filter's first probe does not use.
- Probe ``i`` of a filter of ``m`` bits tests bit ``(h1 + i * h2) % m`` (:func:`probes`,
  Kirsch-Mitzenmacher double hashing).

A key is hashed once per operation; the hot paths (``Engine.get`` and ``put``, the bloom
filter's unrolled five probes, ``Partition.peek``'s first probe) inline these formulas, and
``tests/unit/test_hot_paths.py`` proves each copy equal to the functions here.

>>> h = key_hash(b"user:1", 7)
>>> route(h, 4) in range(4)
True
>>> list(probes((10, 3), 16, 3))
[10, 13, 0]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import mmh3

key_hash: Callable[[bytes, int], tuple[int, int]] = mmh3.mmh3_x64_128_utupledigest
"""``key_hash(key, seed)``: the two unsigned 64-bit halves of MurmurHash3 x64 128 of ``key``
(what ``mmh3.hash64(key, seed, signed=False)`` gives, in a third of its time), which routing and
every bloom filter use. It runs on every operation."""


def route(h: tuple[int, int], partitions: int) -> int:
    """The partition of a key with :func:`key_hash` ``h``, among ``partitions``."""
    return (h[1] >> 32) % partitions


def probes(h: tuple[int, int], nbits: int, hashes: int) -> Iterator[int]:
    """The bits of a filter of ``nbits`` bits that a key with :func:`key_hash` ``h`` sets, in
    probe order (``hashes`` of them)."""
    h1, h2 = h
    for _ in range(hashes):
        yield h1 % nbits
        h1 += h2

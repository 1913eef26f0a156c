"""A partition's bloom filter over encoded keys, and its file; knows nothing of logs or trees.

A negative answer is certain (the key was never added), so the read path can skip the tree for
missing keys. The filter is serialised with a checksummed header and a checksum over the bits; a
damaged or out-of-date filter is rejected by :meth:`BloomFilter.from_bytes` and its owner rebuilds
it from the tree, because trusting it could hide keys (a false negative loses data).

Hashing: the probes are those of :func:`halodb.hashing.probes` over the key's
:func:`~halodb.hashing.key_hash`, the hash that also routes the key to its partition, so a key
is hashed once per operation. Every put and every lookup of a missing key probes, so the
sequence is inlined here (the default five probes unrolled); ``tests/unit/test_hot_paths.py``
proves each copy equal to ``probes``.
"""

from __future__ import annotations

from collections.abc import Iterable

from bitarray import bitarray

from halodb import format as fmt
from halodb.errors import CorruptionError
from halodb.vfs import FileSystem

MIN_BITS = 1024
MAX_BITS_PER_KEY = 128
"""The largest saved filter worth loading, in bits per key of its tree: twice the largest
``bloom_bits_per_key`` (a filter is sized for twice its keys). Anything larger is rebuilt."""
HASHES_PER_BIT = 0.5
"""Probes per bit of key: 5 at the default 10 bits per key, for about 0.9% false positives
(the optimum, ln 2 per bit, gives 0.8% with 7 probes: two more probes on every lookup of a
present key buy little)."""


class BloomFilter:
    """A fixed-size bloom filter. ``add`` and ``might_contain`` take
    :func:`~halodb.hashing.key_hash` output."""

    __slots__ = ("bits", "capacity", "hashes", "nbits")

    def __init__(
        self, nbits: int, hashes: int, capacity: int, bits: bitarray | None = None
    ) -> None:
        self.nbits = nbits
        self.hashes = hashes
        self.capacity = capacity
        """How many keys the filter was sized for; past it the false-positive rate climbs."""
        if bits is None:
            bits = bitarray(nbits, endian="little")
            bits.setall(0)
        self.bits = bits

    @classmethod
    def for_keys(cls, capacity: int, bits_per_key: int) -> BloomFilter:
        """An empty filter sized for ``capacity`` keys at ``bits_per_key`` bits each."""
        capacity = max(capacity, MIN_BITS // bits_per_key)
        nbits = max(MIN_BITS, -(-capacity * bits_per_key // 64) * 64)
        hashes = max(1, min(16, round(bits_per_key * HASHES_PER_BIT)))
        return cls(nbits, hashes, capacity)

    def add(self, h: tuple[int, int]) -> bool:
        """Add a key by its hash; returns :meth:`might_contain` as it was before.
        O(hashes)."""
        h1, h2 = h
        bits = self.bits
        m = self.nbits
        if self.hashes == 5:  # the default (10 bits per key), unrolled: every put runs it
            a = h1 % m
            h1 += h2
            b = h1 % m
            h1 += h2
            c = h1 % m
            h1 += h2
            d = h1 % m
            e = (h1 + h2) % m
            seen = bool(bits[a] and bits[b] and bits[c] and bits[d] and bits[e])
            bits[a] = bits[b] = bits[c] = bits[d] = bits[e] = 1
            return seen
        seen = True
        for _ in range(self.hashes):  # hashing.probes, inlined
            i = h1 % m
            if not bits[i]:
                bits[i] = 1
                seen = False
            h1 += h2
        return seen

    def add_all(self, hashes: Iterable[tuple[int, int]]) -> None:
        """:meth:`add` each of ``hashes`` (without telling what the filter held): a rebuild."""
        bits = self.bits
        m = self.nbits
        if self.hashes == 5:  # the default, unrolled (a rebuild adds every key of a partition)
            for h1, h2 in hashes:
                b = h1 + h2
                c = b + h2
                d = c + h2
                bits[h1 % m] = bits[b % m] = bits[c % m] = bits[d % m] = bits[(d + h2) % m] = 1
            return
        add = self.add
        for h in hashes:
            add(h)

    def might_contain(self, h: tuple[int, int]) -> bool:
        """False only if the key was never added. O(hashes)."""
        h1, h2 = h
        bits = self.bits
        m = self.nbits
        if self.hashes == 5:  # the default, unrolled: every lookup of a missing key runs it
            if not bits[h1 % m]:
                return False
            h1 += h2
            if not bits[h1 % m]:
                return False
            h1 += h2
            if not bits[h1 % m]:
                return False
            h1 += h2
            return bool(bits[h1 % m] and bits[(h1 + h2) % m])
        for _ in range(self.hashes):  # hashing.probes, inlined
            if not bits[h1 % m]:
                return False
            h1 += h2
        return True

    def to_bytes(self, partition: int, txn: int) -> bytes:
        """Serialise, tagged with the partition and the tree transaction it covers."""
        body = self.bits.tobytes()
        head = fmt.BLOOM_HEADER.pack(
            fmt.BLOOM_MAGIC,
            fmt.FORMAT_VERSION,
            partition,
            self.hashes,
            0,
            self.nbits,
            self.capacity,
            txn,
            fmt.crc(body),
            0,
        )
        return fmt.seal(head) + body

    @staticmethod
    def parse_header(head: bytes, partition: int, where: str) -> tuple[int, int, int, int, int]:
        """Check a serialised filter's header; returns its bits, hashes, capacity, tree
        transaction and the checksum of its bits. Raises :class:`CorruptionError`."""
        size = fmt.BLOOM_HEADER.size
        if len(head) < size:
            raise CorruptionError(f"{where}: bloom filter file is {len(head)} bytes, too short")
        (magic, version, part, hashes, _, nbits, capacity, txn, body_crc, _) = (
            fmt.BLOOM_HEADER.unpack_from(head)
        )
        if not fmt.sealed(head, size):
            raise CorruptionError(f"{where}: bloom filter header checksum mismatch")
        if magic != fmt.BLOOM_MAGIC or not 1 <= version <= fmt.FORMAT_VERSION or part != partition:
            raise CorruptionError(f"{where}: not this partition's bloom filter")
        if nbits < MIN_BITS or nbits % 64 or not 1 <= hashes <= 16:
            raise CorruptionError(f"{where}: bloom filter has impossible size {nbits}/{hashes}")
        return nbits, hashes, capacity, txn, body_crc

    @classmethod
    def from_parts(
        cls, header: tuple[int, int, int, int, int], body: bytes, where: str
    ) -> tuple[BloomFilter, int]:
        """The filter of a checked header (:meth:`parse_header`) and its bits, with its tree
        transaction. Raises :class:`CorruptionError`."""
        nbits, hashes, capacity, txn, body_crc = header
        if len(body) != nbits // 8:
            raise CorruptionError(
                f"{where}: bloom filter holds {len(body)} bytes of bits, header says {nbits // 8}"
            )
        if fmt.crc(body) != body_crc:
            raise CorruptionError(f"{where}: bloom filter bits checksum mismatch")
        bits = bitarray(endian="little")
        bits.frombytes(body)
        return cls(nbits, hashes, capacity, bits), txn

    @classmethod
    def from_bytes(cls, data: bytes, partition: int, where: str) -> tuple[BloomFilter, int]:
        """Parse a serialised filter and return it with its tree transaction.

        Raises :class:`CorruptionError` naming ``where`` when anything does not check out.
        """
        header = cls.parse_header(data, partition, where)
        return cls.from_parts(header, data[fmt.BLOOM_HEADER.size :], where)


def read_filter(
    fs: FileSystem, path: str, partition: int, most_keys: int
) -> tuple[BloomFilter, int]:
    """The filter saved in file ``path`` for partition ``partition``, and the tree transaction
    it covers. Its header is checked before its bits are read: a filter of more than
    ``MAX_BITS_PER_KEY`` bits per key of a tree of at most ``most_keys`` keys is refused,
    whatever its file claims, so a damaged header cannot make the open read or allocate
    without bound. Raises :class:`CorruptionError` (the owner then rebuilds the filter)."""
    handle = fs.open(path)
    try:
        header = BloomFilter.parse_header(handle.read_at(0, fmt.BLOOM_HEADER.size), partition, path)
        nbits = header[0]
        # Sized for twice the keys at its last rebuild, which the tree's pages held (its file
        # never shrinks): more than that many bits per key the pages can hold is damage.
        if nbits > MAX_BITS_PER_KEY * max(most_keys, MIN_BITS):
            raise CorruptionError(
                f"{path}: bloom filter of {nbits} bits is larger than a tree of "
                f"at most {most_keys} keys could need"
            )
        expected = fmt.BLOOM_HEADER.size + nbits // 8
        if handle.size() != expected:
            raise CorruptionError(
                f"{path}: bloom filter file is {handle.size()} bytes, its header says {expected}"
            )
        body = handle.read_at(fmt.BLOOM_HEADER.size, nbits // 8)
    finally:
        handle.close()
    return BloomFilter.from_parts(header, body, path)

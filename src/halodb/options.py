"""Validated store options with production defaults; knows nothing of files or data structures.

Every option is checked before anything touches the disk, so a bad option never leaves a
half-created store behind.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from halodb.errors import InterfaceError

KiB = 1024
MiB = 1024 * KiB
MIN_MEMTABLE_SIZE = 64 * KiB


class Durability(enum.Enum):
    """What an acknowledged write survives; chosen at open, like SQLite's ``synchronous``.

    - ``FULL``: the log is fsynced before a write returns (concurrent writers share one fsync):
      every acknowledged write survives power loss.
    - ``NORMAL`` (default): the log record is handed to the OS before a write returns: every
      acknowledged write survives a crash of the process; power loss may lose the last ones.
    - ``FAST``: log records are buffered in the process and handed to the OS in blocks (and on
      ``sync()``, ``flush()``, ``check()``, ``close()``, a batch over several partitions, and
      when a store is collected or the interpreter exits normally): a crash may lose the last
      writes. Never corrupts.

    Each partition has its own log, so "the last writes" are counted per partition: what a
    crash (FAST) or a power cut (NORMAL, FAST) leaves is every write of each partition up to
    some point. Batches are all or nothing in every mode.
    """

    FULL = "full"
    NORMAL = "normal"
    FAST = "fast"


@dataclass(frozen=True, slots=True)
class Options:
    """The validated options of a store: what :func:`halodb.open`'s keyword arguments become.

    ``partitions`` and ``page_size`` are fixed when a store is created and recorded on disk;
    ``None`` means "what the store has, or the default for a new store".
    """

    partitions: int | None = None
    """Hash partitions; ``None``: what the store has (1 for a new store)."""
    page_size: int | None = None
    """B+ tree page size; ``None``: what the store has (4096 for a new store)."""
    memtable_size: int | None = None
    """Bytes of writes a partition keeps in memory before it flushes them into its tree;
    ``None``: ``MEMTABLE_BUDGET`` shared by the store's partitions (see :func:`memtable_limit`)."""
    cache_size: int = 256 * MiB
    """Bytes of decoded tree nodes kept for the whole store (a row cache gets as much)."""
    durability: Durability = Durability.NORMAL
    """What an acknowledged write survives."""
    bloom_bits_per_key: int = 10
    """Bloom filter bits per key (10: about 1% false positives)."""
    fast_buffer_size: int = 256 * KiB
    """Log buffer per partition in ``"fast"`` mode."""
    readonly: bool = False
    """Never change a byte on disk."""
    background: bool = True
    """Merge full memtables into the trees in a background thread (one per store), so that a
    write never waits for a merge; ``False``: the write that fills a memtable merges it."""
    compact_threshold: float | None = 0.25
    """The background worker compacts a tree file on its own once a merge leaves this
    fraction of its pages free that it did not need (and at least a MiB's worth at the
    default page size); ``None``: only ``compact()`` compacts."""
    create: bool = True
    """Create the store if the directory has none."""
    hash_seed: int | None = None
    """The seed of a new store's partition hash; ``None``: what the store has (a random one for
    a new store). For tests and reproducible layouts."""


DEFAULTS = Options()
DEFAULT_PARTITIONS = 1
"""Partitions of a new store. One: a partition's ordered reads need no merge with the
others, and at the same memory for memtables four partitions write no faster (docs/design.md,
"Partitions")."""
MEMTABLE_BUDGET = 64 * MiB
"""Bytes of memtable the partitions of a store share when ``memtable_size`` is not given."""


def memtable_limit(memtable_size: int | None, partitions: int) -> int:
    """A partition's memtable size: ``memtable_size``, or its share of ``MEMTABLE_BUDGET``
    (at least the smallest ``memtable_size`` allowed)."""
    if memtable_size is not None:
        return memtable_size
    return max(MIN_MEMTABLE_SIZE, MEMTABLE_BUDGET // partitions)


DEFAULT_PAGE_SIZE = 4096
MAX_PARTITIONS = 256
MIN_PAGE_SIZE = 1024
MAX_PAGE_SIZE = 65536


def _int_option(name: str, value: object, low: int, high: int) -> int:
    if type(value) is not int:
        raise InterfaceError(f"option {name} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise InterfaceError(f"option {name}={value} is out of range [{low}, {high}]")
    return value


def validate_page_size(value: object) -> int:
    """Check a page size: a power of two from 1 KiB to 64 KiB."""
    size = _int_option("page_size", value, MIN_PAGE_SIZE, MAX_PAGE_SIZE)
    if size & (size - 1):
        raise InterfaceError(f"option page_size={size} must be a power of two")
    return size


def validate_options(
    *,
    partitions: object = None,
    page_size: object = None,
    memtable_size: object = DEFAULTS.memtable_size,
    cache_size: object = DEFAULTS.cache_size,
    durability: object = DEFAULTS.durability,
    bloom_bits_per_key: object = DEFAULTS.bloom_bits_per_key,
    fast_buffer_size: object = DEFAULTS.fast_buffer_size,
    readonly: object = False,
    create: object = True,
    background: object = True,
    compact_threshold: object = DEFAULTS.compact_threshold,
    hash_seed: object = None,
) -> Options:
    """Return :class:`Options` from user-supplied values, or raise :class:`InterfaceError`."""
    if isinstance(durability, str) and not isinstance(durability, Durability):
        try:
            durability = Durability(durability.lower())
        except ValueError:
            choices = ", ".join(repr(d.value) for d in Durability)
            raise InterfaceError(
                f"option durability={durability!r} is not one of {choices}"
            ) from None
    if not isinstance(durability, Durability):
        raise InterfaceError(f"option durability must be a str or Durability, not {durability!r}")
    for name, flag in (("readonly", readonly), ("create", create), ("background", background)):
        if not isinstance(flag, bool):
            raise InterfaceError(f"option {name} must be a bool, not {type(flag).__name__}")
    assert isinstance(readonly, bool) and isinstance(create, bool)
    assert isinstance(background, bool)
    if compact_threshold is not None:
        if type(compact_threshold) not in (int, float):
            raise InterfaceError(
                f"option compact_threshold must be a float or None, not "
                f"{type(compact_threshold).__name__}"
            )
        assert isinstance(compact_threshold, int | float)
        if not 0 < compact_threshold <= 1:
            raise InterfaceError(
                f"option compact_threshold={compact_threshold} is out of range (0, 1]"
            )
        compact_threshold = float(compact_threshold)
    return Options(
        partitions=None
        if partitions is None
        else _int_option("partitions", partitions, 1, MAX_PARTITIONS),
        page_size=None if page_size is None else validate_page_size(page_size),
        memtable_size=None
        if memtable_size is None
        else _int_option("memtable_size", memtable_size, MIN_MEMTABLE_SIZE, 4096 * MiB),
        cache_size=_int_option("cache_size", cache_size, 0, 1 << 40),
        durability=durability,
        bloom_bits_per_key=_int_option("bloom_bits_per_key", bloom_bits_per_key, 1, 64),
        fast_buffer_size=_int_option("fast_buffer_size", fast_buffer_size, 4 * KiB, 256 * MiB),
        readonly=readonly,
        create=create and not readonly,
        background=background,
        compact_threshold=compact_threshold,
        hash_seed=None if hash_seed is None else _int_option("hash_seed", hash_seed, 0, 2**32 - 1),
    )

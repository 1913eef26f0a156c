"""A run file, ``pNNN.run``: what one partition's memtables held at a clean close, so that
``close()`` need not merge them into the tree. Knows nothing of logs, trees or memtables.

A clean close writes each partition's newest value of every key its memtables hold (``None``:
a tombstone) as one immutable file (temp, fsync, rename, fsync dir), then replaces the
partition's logs by an empty one. The entries go in the memtable's own order, unsorted: the
close pays no sort (a tenth of a second at a million keys). The next open reads only the
header (:meth:`Run.open`); the partition puts the run where a frozen memtable goes, and the
background worker merges it into the tree and deletes it. The body (lengths, then keys, then
values) is read, checked (one checksum over it all, no key twice) and decoded on first use,
whole, and its keys sorted when an ordered read or the merge first needs them.

A run is live while it holds writes the tree does not: its ``seq`` is above the tree's
``flushed_seq``, which it lies on (``base_seq``). Once a merge has made the tree hold its
``seq``, the file is stale and deleted.
"""

from __future__ import annotations

import sys
import threading
from array import array
from itertools import accumulate, pairwise

from halodb import format as fmt
from halodb.errors import CorruptionError
from halodb.vfs import FileSystem

ENTRY_OVERHEAD = 64
"""Bytes charged per entry once decoded, for the Python objects that hold it (as memtables
charge)."""

_BIG_ENDIAN = sys.byteorder == "big"


def _lengths(code: str, data: bytes | memoryview) -> array[int]:
    """The little-endian numbers of ``data`` as an array of type ``code``."""
    out = array(code)
    out.frombytes(data)
    if _BIG_ENDIAN:
        out.byteswap()
    return out


def write_run(
    fs: FileSystem,
    path: str,
    partition: int,
    entries: dict[bytes, bytes | None],
    *,
    cleared: bool,
    base_seq: int,
    seq: int,
    count: int,
) -> None:
    """Write a run of ``entries`` (key to value, ``None``: tombstone) to ``path``, atomically
    and durably (temp, fsync, rename, fsync dir).

    ``cleared``: the tree below is logically empty; ``base_seq``: the tree's ``flushed_seq``;
    ``seq``: the newest write the run holds; ``count``: live keys of the tree and run together.
    """
    keys = list(entries)
    values = list(entries.values())
    key_lengths = array("H", map(len, keys))
    if None in values:
        value_lengths = array(
            "I", [fmt.RUN_TOMBSTONE if value is None else len(value) for value in values]
        )
    else:
        value_lengths = array("I", map(len, values))  # type: ignore[arg-type]
    if _BIG_ENDIAN:
        key_lengths.byteswap()
        value_lengths.byteswap()
    key_bytes = b"".join(keys)
    value_bytes = b"".join(filter(None, values))
    body = (
        memoryview(key_lengths).cast("B"),
        memoryview(value_lengths).cast("B"),
        key_bytes,
        value_bytes,
    )
    header = fmt.seal(
        fmt.RUN_HEADER.pack(
            fmt.RUN_MAGIC,
            fmt.FORMAT_VERSION,
            partition,
            fmt.RUN_CLEARED if cleared else 0,
            base_seq,
            seq,
            count,
            len(keys),
            len(key_bytes),
            len(value_bytes),
            fmt.crc_all(body),
            0,
        )
    )
    fs.write_new(path, (header, *body))


class Run:
    """An open run file: its header read and checked, its body decoded on first use.

    Offers what the partition reads of a frozen memtable: ``data`` (a dict of key to value or
    ``None``), ``ordered()`` (the sorted keys), ``columns()``, ``len()`` and ``size``. Decoding is
    done once, by whichever thread needs it first (the others wait for it); after that every
    read is a dict or list lookup. Never written.
    """

    __slots__ = (
        "_data",
        "_error",
        "_lock",
        "_sorted",
        "base_seq",
        "cleared",
        "count",
        "entries",
        "fs",
        "key_bytes",
        "max_key",
        "partition",
        "path",
        "seq",
        "value_bytes",
    )

    def __init__(
        self,
        fs: FileSystem,
        path: str,
        partition: int,
        *,
        cleared: bool,
        base_seq: int,
        seq: int,
        count: int,
        entries: int,
        key_bytes: int,
        value_bytes: int,
        max_key: int,
    ) -> None:
        self.fs = fs
        self.max_key = max_key
        self.path = path
        self.partition = partition
        self.cleared = cleared
        self.base_seq = base_seq
        self.seq = seq
        self.count = count
        self.entries = entries
        self.key_bytes = key_bytes
        self.value_bytes = value_bytes
        self._data: dict[bytes, bytes | None] | None = None
        self._error: CorruptionError | None = None
        """What the decode found wrong, raised again by every later use (the file is not
        read again)."""
        self._sorted: list[bytes] | None = None
        self._lock = threading.Lock()

    @classmethod
    def open(cls, fs: FileSystem, path: str, partition: int, *, max_key: int = 0xFFFF) -> Run:
        """Read and check the header of the run file ``path`` (partition ``partition``'s, of a
        store whose keys are at most ``max_key`` bytes). Raises :class:`CorruptionError`
        naming the file."""
        size = fmt.RUN_HEADER.size
        handle = fs.open(path)
        try:
            head = handle.read_at(0, size)
            file_size = handle.size()
        finally:
            handle.close()
        if len(head) < size or head[:8] != fmt.RUN_MAGIC:
            raise CorruptionError(f"{path}: not a HaloDB run file (bad magic or too short)")
        if not fmt.sealed(head, size):
            raise CorruptionError(f"{path}: run header checksum mismatch")
        (_, version, index, flags, base_seq, seq, count, entries, key_bytes, value_bytes, _, _) = (
            fmt.RUN_HEADER.unpack(head)
        )
        if not fmt.RUN_VERSION <= version <= fmt.FORMAT_VERSION:
            raise CorruptionError(f"{path}: run format version {version} is not supported")
        if index != partition:
            raise CorruptionError(f"{path}: run of partition {index}, expected {partition}")
        if flags & ~fmt.RUN_CLEARED or not base_seq < seq < fmt.SEQ_LIMIT:
            raise CorruptionError(
                f"{path}: run header holds impossible values (flags {flags:#x}, "
                f"sequence {seq} over {base_seq})"
            )
        if file_size != size + fmt.RUN_ENTRY_LENGTHS * entries + key_bytes + value_bytes:
            raise CorruptionError(
                f"{path}: run file is {file_size} bytes, its header says "
                f"{size + fmt.RUN_ENTRY_LENGTHS * entries + key_bytes + value_bytes}"
            )
        if count > fmt.SEQ_LIMIT:
            raise CorruptionError(f"{path}: run header counts {count} keys, an impossible number")
        return cls(
            fs,
            path,
            partition,
            cleared=bool(flags & fmt.RUN_CLEARED),
            base_seq=base_seq,
            seq=seq,
            count=count,
            entries=entries,
            key_bytes=key_bytes,
            value_bytes=value_bytes,
            max_key=max_key,
        )

    def __len__(self) -> int:
        return self.entries

    @property
    def size(self) -> int:
        """Approximate bytes it holds once decoded (as a memtable's ``size``)."""
        return self.key_bytes + self.value_bytes + ENTRY_OVERHEAD * self.entries

    @property
    def loaded(self) -> bool:
        """Whether the body has been decoded."""
        return self._data is not None

    @property
    def data(self) -> dict[bytes, bytes | None]:
        """Key to value (``None``: tombstone), decoded and checked on first use (once: under
        the run's own lock)."""
        data = self._data
        if data is None:
            with self._lock:
                if self._error is not None:
                    raise self._error
                if self._data is None:
                    try:
                        self._data = self._read_body()
                    except CorruptionError as exc:
                        self._error = exc
                        raise
                data = self._data
        return data

    def ordered(self) -> list[bytes]:
        """The keys, sorted (on first use); not to be changed."""
        order = self._sorted
        if order is None:
            data = self.data
            with self._lock:
                if self._sorted is None:
                    self._sorted = sorted(data)
                order = self._sorted
        return order

    def _read_body(self) -> dict[bytes, bytes | None]:
        handle = self.fs.open(self.path)
        try:
            raw = handle.read_all()
        finally:
            handle.close()
        path, n = self.path, self.entries
        view = memoryview(raw)[fmt.RUN_HEADER.size :]
        stored: int = fmt.RUN_HEADER.unpack_from(raw)[10]
        if len(view) != fmt.RUN_ENTRY_LENGTHS * n + self.key_bytes + self.value_bytes:
            raise CorruptionError(f"{path}: run file changed size since it was opened")
        if fmt.crc(view) != stored:
            raise CorruptionError(f"{path}: run body checksum mismatch")
        key_lengths = _lengths("H", view[: 2 * n])
        value_lengths = _lengths("I", view[2 * n : 6 * n])
        keys_at = 6 * n
        values_at = keys_at + self.key_bytes
        if sum(key_lengths) != self.key_bytes:
            raise CorruptionError(f"{path}: run key lengths disagree with its header")
        tombstone = fmt.RUN_TOMBSTONE
        puts = [length for length in value_lengths if length != tombstone]
        if sum(puts) != self.value_bytes:
            raise CorruptionError(f"{path}: run value lengths disagree with its header")
        if max(key_lengths, default=0) > self.max_key or max(puts, default=0) > fmt.MAX_VALUE_SIZE:
            raise CorruptionError(
                f"{path}: run holds a key or value over the limits of the store "
                f"({self.max_key}-byte keys, {fmt.MAX_VALUE_SIZE}-byte values)"
            )
        key_ends = list(accumulate(key_lengths, initial=keys_at))
        keys = [bytes(view[a:b]) for a, b in pairwise(key_ends)]
        values: list[bytes | None] = []
        at = values_at
        append = values.append
        for length in value_lengths:
            if length == tombstone:
                append(None)
            else:
                append(bytes(view[at : at + length]))
                at += length
        data = dict(zip(keys, values, strict=True))
        if len(data) != n:
            raise CorruptionError(f"{path}: run holds a key more than once")
        return data

    def columns(self, step: int | None = None) -> tuple[list[bytes], list[bytes | None]]:
        """Every key in order, and the values (or ``None``) in the same order (``step``: as
        for a memtable's, unused)."""
        keys = self.ordered()
        return list(keys), list(map(self.data.__getitem__, keys))

    def check(self) -> None:
        """Read, check and decode the whole body (raises :class:`CorruptionError`)."""
        self.ordered()

"""Opening a store: :func:`open` checks its path, options and codec before anything touches
the disk, then opens the engine under a :class:`~halodb.store.Store`; :func:`codec_name` reads
which codec a store needs without opening it."""

from __future__ import annotations

import os
from typing import Literal

from halodb.engine.directory import read_manifest
from halodb.engine.engine import Engine
from halodb.errors import InterfaceError
from halodb.options import DEFAULTS, Durability, Options, validate_options
from halodb.store import Store
from halodb.values import DefaultCodec, ValueCodec
from halodb.vfs import FileSystem

MAX_CODEC_NAME = 16
"""A codec's name is stored in the manifest's 16-byte field."""


def _check_codec(codec: object) -> ValueCodec:
    """``codec`` if it is a usable value codec instance, else ``InterfaceError``."""
    if isinstance(codec, type):
        raise InterfaceError(
            f"value_codec must be a codec instance, not the class {codec.__name__}: "
            f"pass {codec.__name__}()"
        )
    name = getattr(codec, "name", None)
    if not isinstance(name, str) or not name.isascii() or not 1 <= len(name) <= MAX_CODEC_NAME:
        raise InterfaceError(
            f"value_codec.name must be 1 to {MAX_CODEC_NAME} ASCII characters, not {name!r}"
        )
    for method in ("encode", "decode"):
        if not callable(getattr(codec, method, None)):
            raise InterfaceError(
                f"value_codec {type(codec).__name__} has no {method}() method; a codec needs "
                "name, encode(value) -> bytes and decode(bytes) -> value"
            )
    return codec  # type: ignore[return-value]


def _check_path(path: object) -> str:
    """``path`` as an absolute ``str``, or ``TypeError``/``InterfaceError`` for one that can
    name no directory."""
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be str, bytes or os.PathLike, not {type(path).__name__}")
    text = os.fspath(path)
    if not isinstance(text, str):
        text = os.fsdecode(text)
    if not text:
        raise InterfaceError("path is empty; name the store's directory")
    if "\x00" in text:
        raise InterfaceError(f"path {text!r} contains a NUL character, which no file name may hold")
    return os.path.abspath(text)


def open(
    path: str | os.PathLike[str] | bytes,
    *,
    durability: Durability | Literal["full", "normal", "fast"] = DEFAULTS.durability,
    readonly: bool = False,
    create: bool = True,
    partitions: int | None = None,
    page_size: int | None = None,
    memtable_size: int | None = DEFAULTS.memtable_size,
    cache_size: int = DEFAULTS.cache_size,
    bloom_bits_per_key: int = DEFAULTS.bloom_bits_per_key,
    fast_buffer_size: int = DEFAULTS.fast_buffer_size,
    hash_seed: int | None = None,
    background: bool = True,
    compact_threshold: float | None = DEFAULTS.compact_threshold,
    value_codec: ValueCodec | None = None,
    filesystem: FileSystem | None = None,
) -> Store:
    """Open (creating it if needed) the store in directory ``path``.

    Args:
        path: The store's directory. On creation only that directory is made (0700), like
            ``mkdir`` without ``-p``: a missing parent is an ``InterfaceError`` naming it.
        durability: What an acknowledged write survives: ``"full"``, ``"normal"`` or
            ``"fast"`` (see :class:`Durability`).
        readonly: Never change a byte on disk; writes raise ``ProgrammingError``. Several
            processes may open a store read-only together.
        create: Create the store if the directory has none (never when ``readonly``).
        partitions: Hash partitions (1 to 256); fixed when the store is created, ``None``
            means what the store has (1 for a new store).
        page_size: B+ tree page size, a power of two from 1 KiB to 64 KiB; fixed at creation,
            ``None`` means what the store has (4096 for a new store). Keys may encode to
            ``page_size // 8`` bytes.
        memtable_size: Bytes of writes a partition keeps in memory before it flushes them into
            its tree (64 KiB to 4 GiB); ``None`` shares 64 MiB among the partitions.
        cache_size: Bytes of decoded tree nodes kept in memory for the whole store; a row
            cache of recently read entries gets as much again.
        bloom_bits_per_key: Bloom filter bits per key (1 to 64; 10 gives about 1% false
            positives).
        fast_buffer_size: Log buffer per partition in ``"fast"`` mode (4 KiB to 256 MiB).
        hash_seed: The seed (0 to 2**32 - 1) of the hash that routes keys to partitions, fixed
            at creation; ``None`` means what the store has (a random seed for a new store).
            For tests and reproducible layouts: which keys share a partition depends on it.
        background: Merge full memtables into the trees in a background thread, one per
            store (the default), so that a write never waits for a merge (only, counted as a
            stall in :meth:`Store.stats`, the write after a second memtable of a partition
            filled while the first was still merging); ``False`` runs no thread: the write
            that fills a memtable merges it.
        compact_threshold: The background worker compacts a partition's tree file on its
            own (:meth:`Store.compact`, a step at a time) once a merge leaves this fraction of
            the file's pages free that it did not need (0 to 1; 0.25 by default; ``None``: only
            :meth:`Store.compact` compacts). Free pages that later merges reuse, as in a fill,
            do not count: deletes and overwrites of large values leave them.
        value_codec: A codec *instance* with ``name``, ``encode(value) -> bytes`` and
            ``decode(bytes)``; ``None`` is the safe default codec (bytes, str and JSON values).
            Its name is recorded at creation and must match at every later open.
        filesystem: The file-system seam, a :class:`halodb.vfs.FileSystem` (a test's subclass
            injects faults, or fixes the clock new stores are stamped with).

    Every option is validated before anything touches the disk, and a failed open leaves no
    new file or directory behind and no lock held.

    Raises:
        InterfaceError: a bad option or codec, no store where one must be, a missing parent
            directory, or a directory that holds something else.
        OperationalError: another process (or another handle in this one) has the store open
            for writing, or the operating system refused (permission denied, disk full).
        CorruptionError: the store's files are damaged.
    """
    directory = _check_path(path)
    opts: Options = validate_options(
        durability=durability,
        readonly=readonly,
        create=create,
        partitions=partitions,
        page_size=page_size,
        memtable_size=memtable_size,
        cache_size=cache_size,
        bloom_bits_per_key=bloom_bits_per_key,
        fast_buffer_size=fast_buffer_size,
        hash_seed=hash_seed,
        background=background,
        compact_threshold=compact_threshold,
    )
    codec = _check_codec(DefaultCodec() if value_codec is None else value_codec)
    manager = Engine(directory, opts, codec.name, filesystem)
    return Store(manager, codec)


def codec_name(path: str | os.PathLike[str]) -> str:
    """The name of the value codec the store in directory ``path`` was created with (``"halo1"``
    for the default codec, ``"pickle"`` for :class:`PickleCodec`), read from its manifest
    without opening the store: what :func:`open`'s ``value_codec`` must be called.

    Raises ``InterfaceError`` if there is no store there, ``CorruptionError`` if its manifest is
    damaged.
    """
    return read_manifest(os.path.abspath(os.fspath(path))).codec

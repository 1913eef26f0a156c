"""The public API's :class:`Store` (a ``MutableMapping``) and :class:`Batch` (``open()`` is in
:mod:`halodb.opener`).

This layer turns Python keys and values into bytes (order-preserving key encoding, a safe value
codec) and speaks the dict protocol; the engine below it knows only bytes.

Iteration semantics: every iterator (``iter(db)``, ``keys()``, ``values()``, ``items()``,
``range()``) is lazy and reads each partition in chunks, each under that partition's lock: 32
keys at first, twice as many each time after, up to 1024 (``first()`` and ``last()`` read one);
the partitions' chunks are merged in order and decoded a list at a time. Keys come in strictly
increasing (or, reversed, decreasing) order and never twice; each value is a value the key
really had, never half-written. Writes made by other threads while an iterator is running may or
may not be seen, depending on whether their key lies ahead of where its partition's chunks have
read. Once the store is closed, a running iterator returns what it had already read and raises
:class:`ProgrammingError` when it next reads a chunk.
"""

from __future__ import annotations

import logging
import warnings
import weakref
from collections.abc import (
    Callable,
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
    MutableMapping,
    ValuesView,
)
from itertools import chain
from operator import itemgetter
from types import TracebackType
from typing import Any, NoReturn

from halodb import format as fmt
from halodb.engine.engine import Engine
from halodb.engine.scan import Columns
from halodb.errors import DataError, ProgrammingError
from halodb.keys import TAG_BYTES as KEY_TAG_BYTES
from halodb.keys import TAG_STR as KEY_TAG_STR
from halodb.keys import Key, KeyLike, decode_key, encode_key, prefix_range
from halodb.reports import CompactReport, StoreStats, TreeReport
from halodb.values import TAG_BYTES as VALUE_TAG_BYTES
from halodb.values import DefaultCodec, ValueCodec

log = logging.getLogger(__name__)

MAX_VALUE_SIZE = fmt.MAX_VALUE_SIZE
_KEY_BYTES = bytes((KEY_TAG_BYTES,))
"""What ``encode_key`` puts before a bytes key."""
_VALUE_BYTES = bytes((VALUE_TAG_BYTES,))
"""What the ``halo1`` codec puts before a bytes value."""
_MISSING: Any = object()


class Store(MutableMapping[Key, Any]):
    """A persistent, ordered, thread-safe dict. Create one with :func:`halodb.open`.

    >>> import halodb, tempfile
    >>> with halodb.open(tempfile.mkdtemp()) as db:
    ...     db["user:2"] = "bob"
    ...     db["user:1"] = {"name": "alice"}
    ...     list(db.range(prefix="user:"))
    [('user:1', {'name': 'alice'}), ('user:2', 'bob')]
    """

    def __init__(self, manager: Engine, codec: ValueCodec) -> None:
        self._m = manager
        self._codec = codec
        self._encode_value = codec.encode
        self._decode_value = codec.decode
        self._halo1 = type(codec) is DefaultCodec
        """Whether bytes values may be encoded and decoded here, inline (the hot paths)."""
        self._max_key = manager.max_key
        self._finalizer = weakref.finalize(self, _close_dropped, manager)
        """Closes the store when it is collected without ``close()``, as a file object is."""
        self._finalizer.atexit = False  # an exit closes every open store (engine/process.py)

    # -- encoding ------------------------------------------------------------------------------

    def _key(self, key: KeyLike) -> bytes:
        encoded = encode_key(key)
        if len(encoded) > self._max_key:
            raise DataError(
                f"key encodes to {len(encoded)} bytes; the limit is {self._max_key} for page size "
                f"{self._m.page_size} (a larger page_size allows longer keys)"
            )
        return encoded

    def _value(self, value: object) -> bytes:
        return self._checked(self._encode_value(value))

    def _checked(self, encoded: object) -> bytes:
        """The codec's output, refused unless it is bytes-like and within the size limit."""
        if type(encoded) is not bytes:
            if not isinstance(encoded, bytes | bytearray | memoryview):
                raise TypeError(
                    f"value codec {self._codec.name!r} returned {type(encoded).__name__}, not bytes"
                )
            encoded = bytes(encoded)
        if len(encoded) > MAX_VALUE_SIZE:
            raise DataError(f"value encodes to {len(encoded)} bytes; the limit is {MAX_VALUE_SIZE}")
        return encoded

    # -- the dict protocol -------------------------------------------------------------------

    # The methods below inline ``_key`` and the bytes cases of ``encode_key`` and of the
    # ``halo1`` codec: they are the hot paths, and a Python call costs as much as the check.

    def _lookup_key(self, key: KeyLike) -> bytes | None:
        """The encoding of ``key`` to look up, or ``None`` for a key that can never be stored
        (too long, NaN, an int too large, tuples nested too deep): no store holds it, so a
        lookup answers as a dict does for an absent key. ``TypeError`` for a type that is no
        key at all."""
        try:
            return self._key(key)
        except DataError:
            return None

    def __getitem__(self, key: KeyLike) -> Any:
        """The value of ``key``; ``KeyError`` if absent (or if it can never be stored). O(log n)."""
        if type(key) is bytes:
            encoded: bytes | None = _KEY_BYTES + key
        else:
            try:
                encoded = encode_key(key)
            except DataError:  # a key that can never be stored is in no store
                encoded = None
        if encoded is None or len(encoded) > self._max_key:
            self._m.check_open()
            raise KeyError(key)
        value = self._m.get(encoded)
        if value is None:
            raise KeyError(key)
        if self._halo1 and value[:1] == _VALUE_BYTES:
            return value[1:]
        return self._decode_value(value)

    def get(self, key: KeyLike, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` (also for a key that can never be stored, such
        as one too long). O(log n)."""
        if type(key) is bytes:
            encoded: bytes | None = _KEY_BYTES + key
        else:
            try:
                encoded = encode_key(key)
            except DataError:  # a key that can never be stored is in no store
                encoded = None
        if encoded is None or len(encoded) > self._max_key:
            self._m.check_open()
            return default
        value = self._m.get(encoded)
        if value is None:
            return default
        if self._halo1 and value[:1] == _VALUE_BYTES:
            return value[1:]
        return self._decode_value(value)

    def __setitem__(self, key: KeyLike, value: Any) -> None:
        """Store ``value`` under ``key``; durable as the store's durability mode says."""
        if self._halo1 and type(value) is bytes:
            encoded_value = _VALUE_BYTES + value
        else:
            encoded_value = self._encode_value(value)
        if type(encoded_value) is not bytes or len(encoded_value) > MAX_VALUE_SIZE:
            encoded_value = self._checked(encoded_value)  # converts or raises
        encoded = _KEY_BYTES + key if type(key) is bytes else encode_key(key)
        if len(encoded) > self._max_key:
            self._key(key)  # raises
        self._m.put(encoded, encoded_value)

    def __delitem__(self, key: KeyLike) -> None:
        """Delete ``key``; ``KeyError`` (and nothing written) if absent."""
        encoded = self._lookup_key(key)
        if encoded is None:
            self._m.check_open()
            raise KeyError(key)
        deleted, _ = self._m.delete(encoded)
        if not deleted:
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is in the store; ``False`` for a key that can never be stored or is
        of no key type. O(log n)."""
        try:
            encoded = self._key(key)  # type: ignore[arg-type]
        except (TypeError, DataError):
            return False
        return self._m.contains(encoded)

    def __len__(self) -> int:
        """The exact number of keys; O(partitions), never a scan."""
        return len(self._m)

    def __iter__(self) -> Iterator[Key]:
        """Keys in order, lazily: each partition is read a chunk at a time (32 keys at first,
        doubling up to 1024) under its lock, and the chunks are merged. Keys come strictly in
        order and never twice. Writes made meanwhile (by other threads, or by this one between
        two steps) are seen only if their key lies ahead of where its partition's chunks have
        read; nothing is raised for them. Once the store is closed, the iterator returns what
        it had already read, then raises ``ProgrammingError``. O(1) per key."""
        for keys, _ in self._m.scan_batches(None, None):
            yield from _decode_keys(keys)

    def __reversed__(self) -> Iterator[Key]:
        """Keys in reverse order, lazily (as :meth:`__iter__`, from the largest key down)."""
        for keys, _ in self._m.scan_batches(None, None, reverse=True):
            yield from _decode_keys(keys)

    def keys(self) -> KeysView[Key]:
        """A view of the keys, in order; ``reversed()`` walks it from the end."""
        return _KeysView(self)

    def items(self) -> ItemsView[Key, Any]:
        """A view of ``(key, value)`` pairs, in key order, read in one pass."""
        return _ItemsView(self)

    def values(self) -> ValuesView[Any]:
        """A view of the values, in key order, read in one pass."""
        return _ValuesView(self)

    def pop(self, key: KeyLike, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its value; ``default`` (or ``KeyError``) if absent (or if
        it can never be stored). Atomic."""
        encoded = self._lookup_key(key)
        if encoded is None:
            self._m.check_open()
            deleted, old = False, None
        else:
            deleted, old = self._m.delete(encoded, want_value=True)
        if not deleted:
            if default is _MISSING:
                raise KeyError(key)
            return default
        assert old is not None
        return self._decode_value(old)

    def popitem(self) -> tuple[Key, Any]:
        """Remove and return the first ``(key, value)`` in key order; ``KeyError`` if empty."""
        while True:
            batch = next(self._m.scan_batches(None, None, chunk=1), None)
            if batch is None:
                raise KeyError("popitem(): store is empty")
            first = batch[0][0]
            deleted, old = self._m.delete(first, want_value=True)
            if deleted:
                assert old is not None
                return decode_key(first), self._decode_value(old)

    def setdefault(self, key: KeyLike, default: Any = None) -> Any:
        """``db[key]`` if present, else store ``default`` and return it. Atomic. ``default`` is
        encoded only if it is stored: for a present key it may be anything."""
        encoded = self._key(key)
        old = self._m.get(encoded)
        if old is None:
            old = self._m.put_if_absent(encoded, self._value(default))
        return default if old is None else self._decode_value(old)

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        """Store every pair of ``other`` and ``kwargs`` as one atomic batch."""
        with self.batch() as batch:
            if isinstance(other, Mapping):
                for key in other:
                    batch[key] = other[key]
            elif hasattr(other, "keys"):
                for key in other.keys():  # noqa: SIM118 - the dict.update protocol
                    batch[key] = other[key]
            else:
                for key, value in other:
                    batch[key] = value
            for key, value in kwargs.items():
                batch[key] = value

    def clear(self) -> None:
        """Delete every key, atomically. O(partitions) now; the space is reclaimed on flush."""
        self._m.commit({}, clear=True)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        if len(self) != len(other):
            return False
        for key, value in self.items():
            try:
                if other[key] != value:
                    return False
            except KeyError:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]

    # -- ordered access ----------------------------------------------------------------------

    def range(
        self,
        start: KeyLike | None = None,
        stop: KeyLike | None = None,
        *,
        reverse: bool = False,
        prefix: str | bytes | tuple[KeyLike, ...] | None = None,
        limit: int | None = None,
    ) -> Iterator[tuple[Key, Any]]:
        """``(key, value)`` pairs with ``start <= key < stop`` and the given prefix, lazily.

        ``reverse`` walks from the high end down; ``limit`` stops after that many pairs, and no
        partition reads more than that (faster than cutting the iterator). Costs O(log n) to
        start and O(1) per item. Every argument is checked here, before the first item is read:
        ``TypeError`` for a bound or prefix that is no key, a ``reverse`` that is not a bool or
        a ``limit`` that is not an int; ``ValueError`` for a negative ``limit``; ``DataError``
        for a NaN bound. A bound need not be storable: it may be longer than any key.

        >>> import halodb, tempfile
        >>> with halodb.open(tempfile.mkdtemp()) as db:
        ...     db.update({f"user:{i}": i for i in range(5)})
        ...     list(db.range(prefix="user:", reverse=True, limit=2))
        [('user:4', 4), ('user:3', 3)]
        """
        batches = self._scan("range", start, stop, reverse, prefix, limit)
        return iter(()) if batches is None else self._decoded(batches)

    def range_keys(
        self,
        start: KeyLike | None = None,
        stop: KeyLike | None = None,
        *,
        reverse: bool = False,
        prefix: str | bytes | tuple[KeyLike, ...] | None = None,
        limit: int | None = None,
    ) -> Iterator[Key]:
        """The keys of :meth:`range` with the same arguments, lazily; their values are not
        decoded (so it works whatever they hold, and is faster). Checks its arguments as
        :meth:`range` does.

        >>> import halodb, tempfile
        >>> with halodb.open(tempfile.mkdtemp()) as db:
        ...     db.update({"user:1": "a", "user:2": "b", "zed": 0})
        ...     list(db.range_keys(prefix="user:", reverse=True))
        ['user:2', 'user:1']
        """
        batches = self._scan("range_keys", start, stop, reverse, prefix, limit)
        if batches is None:
            return iter(())
        return chain.from_iterable(map(_decode_keys, map(_FIRST, batches)))

    def _scan(
        self,
        caller: str,
        start: KeyLike | None,
        stop: KeyLike | None,
        reverse: object,
        prefix: str | bytes | tuple[KeyLike, ...] | None,
        limit: object = None,
    ) -> Iterator[Columns] | None:
        """The checked arguments of a range scan as its chunks, or ``None`` if it is empty."""
        if type(reverse) is not bool:
            raise TypeError(f"{caller}(): reverse must be a bool, not {type(reverse).__name__}")
        if limit is not None and type(limit) is not int:
            raise TypeError(f"{caller}(): limit must be an int or None, not {type(limit).__name__}")
        if limit is not None and limit < 0:
            raise ValueError(f"{caller}(): limit must be 0 or more, not {limit}")
        self._m.check_open()
        lo = None if start is None else encode_key(start)
        hi = None if stop is None else encode_key(stop)
        if prefix is not None:
            plo, phi = prefix_range(prefix)
            lo = plo if lo is None else max(lo, plo)
            hi = phi if hi is None else min(hi, phi)
        if (lo is not None and hi is not None and lo >= hi) or limit == 0:
            return None
        return self._m.scan_batches(lo, hi, reverse=reverse, limit=limit)

    def _decoded(self, batches: Iterator[Columns]) -> Iterator[tuple[Key, Any]]:
        """The pairs of ``batches``, each chunk decoded whole (:meth:`_decode_chunk`) and the
        chunks chained in C: no Python step per pair."""
        return chain.from_iterable(map(self._decode_chunk, batches))

    def _decode_chunk(self, columns: Columns) -> Iterator[tuple[Key, Any]]:
        """A chunk's encoded keys and values as decoded pairs: the keys as :func:`_decode_keys`
        does, the values by slicing when the codec is ``halo1`` and every value is bytes (one
        C-level pass checks their tags), else by the codec, one call each. The pairs are made
        as they are taken (a zip of maps), not kept in a list."""
        keys, values = columns
        decoded: Iterable[Any]
        if self._halo1 and _all_bytes(values):
            decoded = map(_TAIL, values)
        else:
            decoded = list(map(self._decode_value, values))  # (raises here, not midway)
        return zip(_decode_keys(keys), decoded, strict=True)

    def first(self) -> tuple[Key, Any] | None:
        """The smallest ``(key, value)``, or ``None`` if the store is empty. O(log n)."""
        return next(self._decoded(self._m.scan_batches(None, None, chunk=1)), None)

    def last(self) -> tuple[Key, Any] | None:
        """The largest ``(key, value)``, or ``None`` if the store is empty. O(log n)."""
        return next(self._decoded(self._m.scan_batches(None, None, reverse=True, chunk=1)), None)

    # -- batches, durability, inspection, lifecycle -----------------------------------------

    def batch(self) -> Batch:
        """A batch of writes applied atomically when its ``with`` block ends without error."""
        self._m.check_open()
        return Batch(self)

    def sync(self) -> None:
        """Durability barrier: every write acknowledged before this call survives power loss."""
        self._m.sync()

    def flush(self) -> None:
        """Merge every memtable into its on-disk tree (durably) and empty the logs."""
        self._m.flush()

    def compact(self, progress: Callable[[int, int], None] | None = None) -> CompactReport:
        """Give the trees' free space back to the file system, to the end, and return what
        was done; reads and writes go on meanwhile.

        Each partition's tree file is swept in steps, each one a durable transaction of a few
        hundred leaves: nodes near the end of the file move to free pages near its start,
        runs of underfull neighbour leaves (as deletes leave them) are merged into full ones,
        and the free end of the file is cut off. A step holds no lock that reads or writes
        take but for a moment at its end (with ``background=False``, its partition's lock
        for the whole step). ``progress(done, total)`` is called after each step, in pages
        of the tree files. The background worker runs the same steps on its own when a
        merge leaves much free space (see ``compact_threshold`` at :func:`halodb.open`).
        """
        return self._m.compact(progress)

    def stats(self) -> StoreStats:
        """Counters and sizes, per partition and in total."""
        return self._m.stats()

    def check(self) -> list[TreeReport]:
        """Verify every on-disk and in-memory structure; raises ``CorruptionError`` if damaged.

        Returns each partition's tree report (shape and page accounting). O(store size).
        """
        return self._m.check()

    @property
    def path(self) -> str:
        """The store's directory."""
        return self._m.path

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._m.closed

    @property
    def readonly(self) -> bool:
        """Whether the store was opened read-only."""
        return self._m.readonly

    def close(self) -> None:
        """Flush and close the store; idempotent. Any later use raises ``ProgrammingError``.

        A store never closed is closed when it is collected (its logs written out, its lock
        released, with a ``ResourceWarning``) and at a normal interpreter exit.
        """
        self._m.close()

    def _refuse_copy(self, *args: object) -> NoReturn:
        raise TypeError(
            "a halodb.Store cannot be copied or pickled: it is an open directory, lock and "
            "files. Open the store again with halodb.open(path) (in another process too, "
            "after closing it here), or copy its contents with dict(db)"
        )

    __copy__ = __deepcopy__ = __reduce__ = __reduce_ex__ = __getstate__ = _refuse_copy

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("read-only" if self.readonly else "open")
        return f"<halodb.Store {self.path!r} {state}>"


class _KeysView(KeysView[Key]):
    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self._store = store

    def __reversed__(self) -> Iterator[Key]:
        return reversed(self._store)


class _ItemsView(ItemsView[Key, Any]):
    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self._store = store

    def __iter__(self) -> Iterator[tuple[Key, Any]]:
        return self._store.range()

    def __reversed__(self) -> Iterator[tuple[Key, Any]]:
        return self._store.range(reverse=True)


class _ValuesView(ValuesView[Any]):
    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self._store = store

    def __iter__(self) -> Iterator[Any]:
        return map(_SECOND, self._store.range())

    def __reversed__(self) -> Iterator[Any]:
        return map(_SECOND, self._store.range(reverse=True))


class Batch:
    """Writes collected in memory and committed atomically, across partitions.

    ``with db.batch() as b:`` commits when the block ends normally and discards everything if
    it raises. Keys and values are checked when set, so a bad one raises at once. Deleting an
    absent key in a batch is not an error. Reads inside the block see the store, not the batch.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._changes: dict[bytes, bytes | None] = {}
        self._done = False

    def __setitem__(self, key: KeyLike, value: Any) -> None:
        self._check()
        encoded_value = self._store._value(value)
        self._changes[self._store._key(key)] = encoded_value

    def __delitem__(self, key: KeyLike) -> None:
        self._check()
        self._changes[self._store._key(key)] = None

    def put(self, key: KeyLike, value: Any) -> None:
        """Same as ``batch[key] = value``."""
        self[key] = value

    def delete(self, key: KeyLike) -> None:
        """Same as ``del batch[key]``."""
        del self[key]

    def __len__(self) -> int:
        return len(self._changes)

    def _check(self) -> None:
        if self._done:
            raise ProgrammingError("batch was already committed or discarded")

    def commit(self) -> None:
        """Apply every change atomically (visible and durable together). Once only."""
        self._check()
        self._done = True
        self._store._m.commit(self._changes)
        self._changes = {}

    def discard(self) -> None:
        """Drop every change."""
        self._done = True
        self._changes = {}

    def __enter__(self) -> Batch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None and not self._done:
            self.commit()
        else:
            self.discard()


_FIRST = itemgetter(0)
_SECOND = itemgetter(1)
_TAIL = itemgetter(slice(1, None))
"""``x[1:]``: a key or value without its tag byte."""
_BYTES_KEY = bytes([KEY_TAG_BYTES])
_STR_KEY = bytes([KEY_TAG_STR])


def _all_bytes(values: list[bytes]) -> bool:
    """Whether every one of the encoded ``halo1`` ``values`` is bytes (its tag says so)."""
    try:
        return set(map(_FIRST, values)) == {VALUE_TAG_BYTES}
    except IndexError:  # an empty encoding: the codec names the damage
        return False


def _decode_keys(keys: list[bytes]) -> Iterable[Key]:
    """Encoded keys in key order, decoded. The keys are in order, so when the first and last
    are bytes, or both str, every key between is too (the type tag is a key's first byte):
    those decode in one pass, without a call per key (bytes keys lazily, as they are taken).
    (A key that is not UTF-8 falls back to ``decode_key``, which names the damage.)"""
    if not keys:
        return ()
    tag = keys[0][:1]  # (b"" for an empty encoding, which decode_key names as damage)
    if tag == keys[-1][:1] == _BYTES_KEY:
        return map(_TAIL, keys)
    if tag == keys[-1][:1] == _STR_KEY:
        try:
            return [k[1:].decode("utf-8", "surrogatepass") for k in keys]
        except UnicodeDecodeError:
            pass
    return list(map(decode_key, keys))


def _close_dropped(manager: Engine) -> None:
    """Close the store of a :class:`Store` collected without ``close()``, as a file object is
    closed: its logs are written out (FAST mode's buffer included) and its files and lock
    released. Its memtables are not merged into the trees (that is slow, and the collector may
    run this anywhere): the next open replays the logs."""
    if manager.closed:
        return
    warnings.warn(
        f"halodb store {manager.path!r} was not closed; closed when collected",
        ResourceWarning,
        stacklevel=2,
    )
    try:
        manager.close(merge=False)
    except Exception:
        log.exception("%s: closing a store collected without close() failed", manager.path)

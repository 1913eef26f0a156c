"""How a B+ tree's nodes are laid out in pages: each node's encoder beside its decoder, and what a
decoded node takes in memory; it must not know the pager, the caches or the tree's shape.

Pages (see ``docs/format.md``): leaves hold sorted keys with their values inline, or a reference
(an :class:`Overflow`) to a chain of overflow pages for values larger than a quarter page;
internal nodes hold sorted separator keys and one child reference (page number and that page's
checksum) more than keys. Child ``i`` holds keys ``>= keys[i-1]`` and ``< keys[i]``.

An encoder returns a page's body (the page without its checksum, which the pager adds); a
decoder checks everything it reads and raises :class:`CorruptionError` naming the file
(``where``) and the page.

A decoded node takes several times its page's size (every key and value is an object of its
own), so each node is charged, when it is decoded or written, an estimate of what it takes
(:func:`leaf_cost`, :func:`internal_cost`, from the object sizes ``sys.getsizeof`` gives).
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterable, Sequence
from itertools import accumulate, islice
from operator import le, lt, sub
from typing import NamedTuple

from halodb import format as fmt
from halodb.errors import CorruptionError

_HEADER = fmt.PAGE_HEADER
HEADER_SIZE = _HEADER.size
"""Bytes of a page's header: the usable part of a page is ``page_size - HEADER_SIZE``."""
_HSIZE = HEADER_SIZE
_REF = fmt.OVERFLOW_REF
_CHILD = fmt.CHILD_REF


class Overflow(NamedTuple):
    """A value kept in a chain of overflow pages."""

    page: int
    crc: int
    length: int


class Leaf:
    """A decoded leaf: sorted keys and their values (bytes, or an :class:`Overflow`).

    Tuples, not lists: a tuple of bytes leaves the garbage collector's books at its first
    collection, so the cached leaves cost the collections that a flush or a scan sets off
    nothing (as lists, every collection walked them: about a tenth of a fill's time)."""

    __slots__ = ("big", "cost", "keys", "values")

    level = 0
    """A leaf's level (a class attribute): compared like :attr:`Internal.level`."""

    def __init__(
        self, keys: tuple[bytes, ...], values: tuple[bytes | Overflow, ...], big: bool, cost: int
    ) -> None:
        self.keys = keys
        self.values = values
        self.big = big
        """Whether any value is an :class:`Overflow`."""
        self.cost = cost
        """Bytes of memory the leaf takes in the node cache (:func:`leaf_cost`)."""


class Internal:
    """A decoded internal node: ``len(keys) + 1`` children with their checksums.

    After deletes an internal node may be left with a single child and no key.
    """

    __slots__ = ("children", "cost", "crcs", "keys", "level")

    def __init__(
        self, keys: list[bytes], children: list[int], crcs: list[int], level: int, cost: int
    ) -> None:
        self.keys = keys
        self.children = children
        self.crcs = crcs
        self.level = level
        """The node's level (at least 1): a cached node reached where another level belongs
        (a page referred to from two levels, or a cycle) is damage, see ``BTree.node``."""
        self.cost = cost
        """Bytes of memory the node takes in the node cache (:func:`internal_cost`)."""


def limits(page_size: int) -> tuple[int, int]:
    """The largest encoded key, and the largest value kept inline, for a page size."""
    return page_size // 8, page_size // 4


# -- what decoded nodes and rows take in memory ------------------------------------------------
# CPython's object sizes, from sys.getsizeof (which counts the garbage collector's header of the
# objects that have one), plus _PAD per object: the allocator rounds every block up to a
# multiple of 16 bytes, half of that on average. Measured against tracemalloc by
# tests/unit/test_cache_memory.py.

_PAD = 8
_REF_SIZE = struct.calcsize("P")
"""A reference: a slot of a tuple or list."""
BYTES_OBJECT = sys.getsizeof(b"") + _PAD
"""What a bytes object takes on top of its length."""
_INT_OBJECT = sys.getsizeof(1 << 31) + _PAD
"""A page number or checksum (below 2**32) as an int object."""
_TUPLE_OBJECT = sys.getsizeof(()) + _PAD
_LIST_OBJECT = sys.getsizeof([]) + _PAD
DICT_ENTRY = 4 * 3 * _REF_SIZE + 6 * 4
"""A dict entry at worst: three references in a table that may be three quarters empty just
after it grew, and its index slots (4 bytes each, six per entry at worst)."""
OVERFLOW_OBJECT = sys.getsizeof(Overflow(0, 0, 0)) + _PAD + 3 * _INT_OBJECT
"""What an :class:`Overflow` reference takes: the named tuple and its three ints."""
_CACHE_ENTRY = DICT_ENTRY + _INT_OBJECT
"""A node cache entry: its dict entry and the page number."""
_LEAF_BASE = (
    sys.getsizeof(Leaf((), (), False, 0)) + _PAD + 2 * _TUPLE_OBJECT + _CACHE_ENTRY - _HSIZE
)
_LEAF_ENTRY = 2 * (BYTES_OBJECT + _REF_SIZE) - 5
"""(``_HSIZE`` and the 5 bytes a page spends per entry are taken off: :func:`leaf_cost` is given
where a leaf's contents end in its page, not their length.)"""
_OVERFLOW_EXTRA = OVERFLOW_OBJECT - BYTES_OBJECT - _REF.size
"""What an overflow value takes in a leaf beyond the bytes of its reference in the page."""
_INTERNAL_BASE = (
    sys.getsizeof(Internal([], [], [], 1, 0))
    + _PAD
    + 3 * _LIST_OBJECT
    + _CACHE_ENTRY
    + 2 * (_INT_OBJECT + _REF_SIZE)
)
_INTERNAL_ENTRY = BYTES_OBJECT + 2 * _REF_SIZE + 2 * (_INT_OBJECT + _REF_SIZE)
"""A separator (a bytes object in a list that may be over-allocated) and one more child with
its checksum."""


def leaf_cost(n: int, end: int, overflows: int = 0) -> int:
    """Bytes of memory a decoded leaf of ``n`` entries whose contents end at offset ``end`` of
    its page (``overflows`` of its values in overflow pages) takes in the node cache: the node,
    its two tuples, a bytes object per key and value, and its cache entry. O(1)."""
    return _LEAF_BASE + n * _LEAF_ENTRY + end + overflows * _OVERFLOW_EXTRA


def internal_cost(n: int, key_bytes: int) -> int:
    """Bytes of memory a decoded internal node of ``n`` separators (``key_bytes`` long in
    all) takes in the node cache: the node, its three lists, a bytes object per separator, an
    int per child and checksum, and its cache entry. O(1)."""
    return _INTERNAL_BASE + n * _INTERNAL_ENTRY + key_bytes


# -- checks shared by the decoders --------------------------------------------------------------


def _damage(where: str, page_no: int, what: str) -> CorruptionError:
    return CorruptionError(f"{where} page {page_no}: {what}")


def _slices(page: bytes, base: int, ends: tuple[int, ...]) -> list[bytes]:
    """The pieces of ``page`` from ``base`` that end at the cumulative offsets ``ends``.

    (A plain loop: measured three times faster than ``map`` over ``page.__getitem__`` and
    ``slice`` objects, whose method-wrapper calls cost more than the bytecode they save.)"""
    out: list[bytes] = []
    append = out.append
    start = base
    for offset in ends:
        end = base + offset
        append(page[start:end])
        start = end
    return out


def _ascending(ends: tuple[int, ...]) -> bool:
    """Whether cumulative offsets never go down."""
    return all(map(le, ends, islice(ends, 1, None)))


def _sorted(keys: Sequence[bytes]) -> bool:
    """Whether keys are strictly ascending."""
    return all(map(lt, keys, islice(keys, 1, None)))


def decode(where: str, page_no: int, page: bytes, level: int) -> Leaf | Internal:
    """The node in ``page`` (page number ``page_no`` of the file ``where``), where a node of
    level ``level`` belongs: :func:`decode_leaf` or :func:`decode_internal`."""
    if level:
        return decode_internal(where, page_no, page, level)
    return decode_leaf(where, page_no, page)


# -- leaves ----------------------------------------------------------------------------------

LAYOUTS_MAX = 512
"""How many leaf layouts ``LAYOUTS`` holds before it starts again."""
LAYOUTS_BYTES = 4 << 20
"""How many bytes of memory ``LAYOUTS`` may take before it starts again: a ``Struct`` for a
leaf of ``n`` entries takes about ``64 * n`` bytes, so 512 of them for leaves of small entries
(or large pages) could take tens of megabytes. For the whole process, outside ``cache_size``."""

LAYOUTS: dict[bytes, struct.Struct | None] = {}
"""Leaf layouts met lately: a leaf's raw offset arrays -> a ``Struct`` that cuts every key and
value of such a leaf in one call (``None``: met once; a layout met twice gets its ``Struct``, so
leaves of variable sizes, whose layouts rarely repeat, do not pay for building one). Shared by
every tree of the process: a layout is only sizes, checked before it is remembered."""


class _Tally:
    """A count that functions update in place (a module global would need ``global``)."""

    __slots__ = ("bytes",)

    def __init__(self) -> None:
        self.bytes = 0


_LAYOUTS_HELD = _Tally()
"""Bytes of memory ``LAYOUTS`` takes (its keys, entries and ``Struct`` objects). Updated
without a lock, as ``LAYOUTS`` is: threads decoding in different partitions at once may
miscount a layout, which only moves the next start-again."""


def encode_leaf(
    keys: Sequence[bytes],
    raw: Sequence[bytes],
    flags: bytes,
    klens: Iterable[int],
    rlens: Iterable[int],
) -> bytes:
    """A leaf's page body: sorted ``keys``, their values as stored (``raw``, from
    :func:`encode_values`), the values' flags, and the lengths of the keys and of the raw values
    (which a writer has at hand: it cuts leaves by them)."""
    n = len(keys)
    return b"".join(
        (
            _HEADER.pack(0, fmt.PAGE_LEAF, 0, n, 0, 0)[4:],
            flags,
            fmt.u16_array(2 * n).pack(*accumulate(klens), *accumulate(rlens)),
            *keys,
            *raw,
        )
    )


def decode_leaf(where: str, page_no: int, page: bytes) -> Leaf:
    """The leaf in ``page``, checked: level, type, count, offsets, value flags, key order."""
    _, ptype, plevel, n, _, _ = _HEADER.unpack_from(page)
    if plevel != 0:
        raise _damage(where, page_no, f"node of level {plevel} where level 0 belongs")
    if ptype != fmt.PAGE_LEAF:
        raise _damage(where, page_no, f"page type {ptype} is not a node of level 0")
    try:
        if n == 0 or _HSIZE + 5 * n > len(page):
            raise _damage(where, page_no, f"leaf with impossible count {n}")
        flags = page[_HSIZE : _HSIZE + n]
        offsets = page[_HSIZE + n : _HSIZE + 5 * n]
        layout = LAYOUTS.get(offsets)
        if layout is not None:  # offsets checked when the layout was made
            pieces = layout.unpack_from(page)
            keys: tuple[bytes, ...] = pieces[:n]
            values: tuple[bytes | Overflow, ...] = pieces[n:]
            end = layout.size
        else:
            keys, values, end = _cut_leaf(where, page_no, page, n, offsets)
        overflows = 0
        if flags.count(0) != n:
            values = decode_values(where, page_no, flags, values)
            overflows = flags.count(fmt.VALUE_OVERFLOW)
        if not _sorted(keys):
            raise _damage(where, page_no, "keys out of order")
        return Leaf(keys, values, overflows > 0, leaf_cost(n, end, overflows))
    except struct.error as exc:
        raise _damage(where, page_no, f"malformed node ({exc})") from exc


def _cut_leaf(
    where: str, page_no: int, page: bytes, n: int, offsets: bytes
) -> tuple[tuple[bytes, ...], tuple[bytes | Overflow, ...], int]:
    """A leaf's keys and raw values, and where they end in the page, its offsets
    (``offsets``, the raw arrays) checked. The second time a layout is met, it is remembered
    in ``LAYOUTS``: leaves of keys and values of fixed sizes are then cut in one call.
    ``LAYOUTS`` starts again when it holds ``LAYOUTS_MAX`` layouts or would take more than
    ``LAYOUTS_BYTES`` of memory."""
    ends = fmt.u16_array(2 * n).unpack(offsets)
    kends, vends = ends[:n], ends[n:]
    kbase = _HSIZE + 5 * n
    vbase = kbase + kends[-1]
    if vbase + vends[-1] > len(page):
        raise _damage(where, page_no, "leaf contents run past the page")
    if not (_ascending(kends) and _ascending(vends)):
        raise _damage(where, page_no, "leaf offsets out of order")
    keys = tuple(_slices(page, kbase, kends))
    values = tuple(_slices(page, vbase, vends))
    layout: struct.Struct | None = None
    known = offsets in LAYOUTS
    if known:  # seen once before: worth a Struct
        sizes = [*map(sub, kends, (0, *kends)), *map(sub, vends, (0, *vends))]
        layout = struct.Struct(f"<{kbase}x" + "".join(map("{}s".format, sizes)))
        size = sys.getsizeof(layout) + BYTES_OBJECT + len(layout.format)
    else:
        size = BYTES_OBJECT + len(offsets) + DICT_ENTRY
    held = _LAYOUTS_HELD
    if (not known and len(LAYOUTS) >= LAYOUTS_MAX) or held.bytes + size > LAYOUTS_BYTES:
        LAYOUTS.clear()
        held.bytes = 0
    LAYOUTS[offsets] = layout
    held.bytes += size
    return keys, values, vbase + vends[-1]


def encode_values(values: Sequence[bytes | Overflow]) -> tuple[list[bytes], bytearray]:
    """A leaf's values as its page stores them, and their flags: bytes inline, an
    :class:`Overflow` as its reference."""
    flags = bytearray(len(values))
    raw: list[bytes] = []
    for i, value in enumerate(values):
        if type(value) is Overflow:
            flags[i] = fmt.VALUE_OVERFLOW
            raw.append(_REF.pack(*value))
        else:
            raw.append(value)  # type: ignore[arg-type]
    return raw, flags


def decode_values(
    where: str, page_no: int, flags: bytes, raw: tuple[bytes | Overflow, ...]
) -> tuple[bytes | Overflow, ...]:
    """A leaf's values with its overflow references (by ``flags``) decoded."""
    values = list(raw)
    for i, flag in enumerate(flags):
        if flag == fmt.VALUE_OVERFLOW:
            ref = values[i]
            assert isinstance(ref, bytes)
            if len(ref) != _REF.size:
                raise _damage(where, page_no, "bad overflow reference")
            values[i] = Overflow(*_REF.unpack(ref))
        elif flag != fmt.VALUE_INLINE:
            raise _damage(where, page_no, f"unknown value flag {flag}")
    return tuple(values)


# -- internal nodes --------------------------------------------------------------------------


def encode_internal(
    keys: Sequence[bytes], children: Sequence[int], crcs: Sequence[int], level: int
) -> bytes:
    """An internal node's page body: its separators, and its children with their checksums."""
    return b"".join(
        (
            _HEADER.pack(0, fmt.PAGE_INTERNAL, level, len(keys), 0, 0)[4:],
            b"".join(_CHILD.pack(p, c) for p, c in zip(children, crcs, strict=True)),
            fmt.u16_array(len(keys)).pack(*accumulate(map(len, keys))),
            *keys,
        )
    )


def decode_internal(where: str, page_no: int, page: bytes, level: int) -> Internal:
    """The internal node of level ``level`` in ``page``, checked: level, type, count, key
    offsets, key order."""
    _, ptype, plevel, n, _, _ = _HEADER.unpack_from(page)
    if plevel != level:
        raise _damage(where, page_no, f"node of level {plevel} where level {level} belongs")
    if ptype != fmt.PAGE_INTERNAL:
        raise _damage(where, page_no, f"page type {ptype} is not a node of level {level}")
    size = len(page)
    try:
        children_end = _HSIZE + 8 * (n + 1)
        if children_end + 2 * n > size:
            raise _damage(where, page_no, f"internal node with impossible count {n}")
        refs = fmt.u32_array(2 * (n + 1)).unpack_from(page, _HSIZE)
        kends = fmt.u16_array(n).unpack_from(page, children_end)
        kbase = children_end + 2 * n
        if (n and kbase + kends[-1] > size) or not _ascending(kends):
            raise _damage(where, page_no, "internal node keys run past the page")
        separators = _slices(page, kbase, kends)
        if not _sorted(separators):
            raise _damage(where, page_no, "keys out of order")
        cost = internal_cost(n, kends[-1] if n else 0)
        return Internal(separators, list(refs[0::2]), list(refs[1::2]), level, cost)
    except struct.error as exc:
        raise _damage(where, page_no, f"malformed node ({exc})") from exc


# -- overflow pages --------------------------------------------------------------------------


def encode_overflow(piece: bytes, nxt: int, nxt_crc: int) -> bytes:
    """An overflow page's body: a piece of a value, and the page (with its checksum) holding
    the next piece (0 and 0 for the last)."""
    return _HEADER.pack(0, fmt.PAGE_OVERFLOW, 0, len(piece), nxt, nxt_crc)[4:] + piece


decode_overflow = _HEADER.unpack_from
"""An overflow page's header: ``(crc, type, level, length of its piece, next page, the next
page's checksum)``, unchecked (a chain's reader checks the type, the length and the links); the
piece starts at ``HEADER_SIZE``. The header's own unpacker, not a function around it: a value's
reader calls it for every page of its chain."""

"""Hostile store files: fields rewritten *with their checksums recomputed*, so that the hostile
value gets past every CRC and reaches the parser, which must then check semantic bounds itself.

Promised (``docs/format.md``, "Reading a log", "Page header", "Choosing the meta page", and the
bounds each layout lists): whatever a store file holds, opening it and reading everything (iteration
both ways, a point read of every key, ``len()``, ``check()``, ``stats()``, and for a writable open
one more write, a flush, a compaction and a close) either raises ``halodb.CorruptionError``
somewhere along the way, or returns exactly the right data. Never ``MemoryError``,
``RecursionError``, ``struct.error``, ``IndexError``, ``UnicodeDecodeError``, ``AssertionError`` or
any other exception type, never a hang, never a crash of the interpreter, and never more than
``BUDGET`` seconds. A damaged bloom filter is a cache: it is rebuilt, or (when it checks out but
lies) ``check()`` says so. Where a field is provably unused (reserved fields, the creation time) the
data must come back exactly. A log record whose length runs past the end of the file is a torn tail:
the records before it are the data (format.md, "Reading a log").

Each case runs in a forked child allowed 512 MiB of address space beyond what it starts with
(``RLIMIT_AS``) and a timeout, read-only first, then writable. Cases are built from one real
store (two partitions, 1 KiB pages, a small memtable) holding a two-level tree, an overflow chain,
a free list, and log records of every kind (put, delete, several entries, a batch part over both
partitions).

Covered: every length- or count-bearing field (log record length, entry key and value lengths,
batch partition count, leaf and internal key counts and offset arrays, overflow lengths and page
counts, free-list counts, meta page fields, manifest fields, bloom sizes) at 2^16, 2^31, 2^32-1,
2^63 and 2^64-1 where the field is that wide; sequence and transaction numbers at their limits;
a tree of height 64 (valid), 65 and 1000; a page pointing to itself, a two-page cycle and a page
reached at two levels; overflow and free-list chains that loop; page numbers beyond the file
end; a huge bloom filter size, and huge sparse files.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import resource
import select
import shutil
import signal
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zlib import crc32 as zlib_crc32

import mmh3
import pytest

import halodb
from halodb import format as fmt
from halodb.keys import encode_key
from halodb.vfs import FileSystem
from support.stores import batch_apply

PAGE = 1024
LIMIT_AS = 512 << 20
"""The address-space limit of every case's child process."""
BUDGET = float(os.environ.get("HALODB_HOSTILE_BUDGET", "2.0"))
"""Seconds allowed for one open and full read (each of the read-only and the writable pass)."""
HANG = 20.0
"""A child still running after this many seconds is killed and the case reported as a hang."""
PROBE = "hostile: written after the reads"

END = 1 << 40
"""Stands for the first page number past the end of the file (see ``TreeImage.set_u32``)."""


def _num(value: int) -> str:
    return "past the end of the file" if value == END else f"{value:#x}"


U16, U32, U64 = 0xFFFF, 0xFFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF
WIDE = {16: (U16,), 32: (1 << 16, 1 << 31, U32), 64: (1 << 16, 1 << 31, 1 << 32, 1 << 63, U64)}
"""The hostile values of a field of each width: 2^16, 2^31, 2^63 and the largest value."""


# ---------------------------------------------------------------------------------------------
# Running one case in a forked child under an address-space limit
# ---------------------------------------------------------------------------------------------


def _mapped_bytes() -> int:
    """This process's address space (``VmSize``) in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def run_isolated(
    fn: Callable[..., tuple[str, str]], *args: Any, timeout: float = HANG, limit: int = LIMIT_AS
) -> tuple[str, str, float]:
    """Run ``fn(*args)`` in a forked child that may map at most ``limit`` more bytes of address
    space (``RLIMIT_AS``) than it starts with; return its
    ``(verdict, detail)`` and how long it took, or ``("hang" | "crash", ...)``.

    The child never returns into the caller's interpreter: it leaves with ``os._exit``. An
    exception escaping ``fn`` is reported as verdict ``"error"``.
    """
    read_end, write_end = os.pipe()
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            os.close(read_end)
            # ``limit`` more than the address space the child starts with (a fork of the test
            # process, which may map a few hundred MiB already after a long run).
            ceiling = _mapped_bytes() + limit
            resource.setrlimit(resource.RLIMIT_AS, (ceiling, ceiling))
            try:
                verdict, detail = fn(*args)
            except BaseException as exc:
                verdict, detail = "error", f"{_name(exc)} escaped: {exc}"[:2000]
            payload = json.dumps([verdict, detail[:4000], time.perf_counter() - started])
            os.write(write_end, payload.encode())
        except BaseException:
            code = 70
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    deadline = started + timeout
    try:
        while True:
            left = deadline - time.perf_counter()
            if left <= 0 or not select.select([read_end], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return "hang", f"still running after {timeout:.0f} s (killed)", timeout
            chunk = os.read(read_end, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
    _, status = os.waitpid(pid, 0)
    elapsed = time.perf_counter() - started
    if not chunks:
        return "crash", f"child died without an answer (wait status {status:#x})", elapsed
    verdict, detail, seconds = json.loads(b"".join(chunks))
    return verdict, detail, seconds


# ---------------------------------------------------------------------------------------------
# The full read, in the child
# ---------------------------------------------------------------------------------------------

_MISSING = object()


def _name(exc: BaseException) -> str:
    kind = type(exc)
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


def _one_pass(
    path: str,
    readonly: bool,
    allowed: list[list[tuple[Any, Any]]],
    fair: tuple[type[Exception], ...] = (),
) -> tuple[str, str]:
    """Open ``path`` and read everything; ``("detected", where)`` on a ``CorruptionError`` (or
    an exception in ``fair``), ``("ok", ...)`` if the data is one of ``allowed``, else
    ``("wrong" | "error", what)``."""
    detect: tuple[type[Exception], ...] = (halodb.CorruptionError, *fair)
    step = "open"
    db: halodb.Store | None = None
    try:
        db = halodb.open(path, readonly=readonly)
        step = "iterate"
        items = list(db.items())
        step = "iterate in reverse"
        backwards = list(db.range(reverse=True))
        step = "point reads"
        keys = {k for state in allowed for k, _ in state} | {k for k, _ in items}
        keys |= {"never written", 12345, PROBE}
        reads = {repr(k): (db.get(k, _MISSING), k in db) for k in keys}
        step = "len"
        count = len(db)
        step = "check"
        db.check()
        step = "stats"
        db.stats()
        if not readonly:
            step = "write and flush"
            db[PROBE] = "x"
            db.flush()
            step = "compact"
            db.compact()
        step = "close"
        db.close()
    except detect as exc:
        if db is not None:
            try:
                db.close()
            except halodb.Error:
                pass  # the damage may be met again by the closing flush
            except Exception as late:
                return "error", f"{step}: detected ({exc}), then close raised {late!r}"
        return "detected", f"{step}: {exc}"[:1000]
    except Exception as exc:
        if db is not None:
            with contextlib.suppress(Exception):
                db.close()
        return "error", f"{step}: {_name(exc)}: {exc}"[:2000]
    if items not in allowed:
        want = dict(allowed[0])
        got = dict(items)
        diff = [k for k in {*want, *got} if want.get(k, _MISSING) != got.get(k, _MISSING)]
        return "wrong", f"wrong data at keys {diff[:5]!r}"
    if backwards != items[::-1]:
        return "wrong", "reverse iteration differs from forward"
    got = dict(items)
    for name, (value, present) in reads.items():
        k = next(k for k in keys if repr(k) == name)
        if value is not got.get(k, _MISSING) and value != got.get(k, _MISSING):
            return "wrong", f"get({name}) is {value!r:.60}"
        if present != (k in got):
            return "wrong", f"{name} in db is {present}"
    if count != len(items):
        return "wrong", f"len() is {count}, iteration gives {len(items)}"
    return "ok", "exact data"


def _full_read(
    path: str, allowed: list[list[tuple[Any, Any]]], fair: tuple[type[Exception], ...] = ()
) -> tuple[str, str]:
    """Both passes: read-only (which changes nothing), then writable.

    The verdict is ``"ok"`` when both read exact data, ``"detected"`` when at least one raised
    ``CorruptionError`` and the other did too or read exact data; otherwise the bad pass's."""
    results = []
    for readonly in (True, False):
        started = time.perf_counter()
        verdict, detail = _one_pass(path, readonly, allowed, fair)
        seconds = time.perf_counter() - started
        if seconds > BUDGET and verdict in ("ok", "detected"):
            verdict, detail = "slow", f"{detail} (after {seconds:.1f} s, budget {BUDGET} s)"
        results.append((verdict, f"{'read-only' if readonly else 'writable'}: {detail}"))
    summary = "; ".join(d for _, d in results)
    bad = [v for v, _ in results if v not in ("ok", "detected")]
    if bad:
        return bad[0], summary
    return ("ok" if all(v == "ok" for v, _ in results) else "detected"), summary


# ---------------------------------------------------------------------------------------------
# Byte-level tools: framing, checksums, forcing a checksum
# ---------------------------------------------------------------------------------------------


def frame(rtype: int, seq: int, payload: bytes, length: int | None = None) -> bytes:
    """A log record per format.md, both checksums valid for the bytes given; ``length`` may
    claim another payload length than ``len(payload)`` (its header checksum still valid)."""
    tail = fmt.WAL_RECORD_HEADER_TAIL.pack(len(payload) if length is None else length, rtype, seq)
    rest = fmt.U32.pack(fmt.crc(tail)) + tail + payload
    return fmt.U32.pack(fmt.crc(rest)) + rest


def entry(
    op: int, key: bytes, value: bytes = b"", klen: int | None = None, vlen: int | None = None
) -> bytes:
    """One write-payload entry; ``klen`` and ``vlen`` may lie about the lengths."""
    klen = len(key) if klen is None else klen
    vlen = len(value) if vlen is None else vlen
    return fmt.ENTRY.pack(op, klen, vlen) + key + value


@dataclass
class Rec:
    """A parsed log record."""

    rtype: int
    seq: int
    payload: bytes


def parse_log(data: bytes) -> tuple[bytes, list[Rec]]:
    """The header and the records of a well-formed log."""
    header = data[: fmt.WAL_HEADER.size]
    pos = len(header)
    records = []
    while pos < len(data):
        _, _, length, rtype, seq = fmt.WAL_RECORD.unpack_from(data, pos)
        start = pos + fmt.WAL_RECORD.size
        records.append(Rec(rtype, seq, data[start : start + length]))
        pos = start + length
    return header, records


def wal_header(partition: int, base_seq: int, reserved: int = 0) -> bytes:
    head = fmt.WAL_HEADER.pack(fmt.WAL_MAGIC, fmt.FORMAT_VERSION, partition, reserved, base_seq, 0)
    return head[:-4] + fmt.U32.pack(fmt.crc(head[:-4]))


def force_crc(data: bytearray, page_no: int, at: int, target: int) -> None:
    """Rewrite the 4 bytes at page offset ``at`` so that page ``page_no`` (held in ``data``)
    gets the checksum ``target``, and store it: how a page can carry its own checksum.

    CRC-32 is affine over GF(2), so the 32 bits at ``at`` map linearly onto the checksum;
    Gaussian elimination finds the bits that give ``target``."""
    base = page_no * PAGE

    def crc_with(word: int) -> int:
        data[base + at : base + at + 4] = fmt.U32.pack(word)
        return fmt.page_crc(page_no, data[base + 4 : base + PAGE])

    zero = crc_with(0)
    # (column image, combination of input bits), reduced to distinct pivots
    rows: list[tuple[int, int]] = []
    for bit in range(32):
        image, combo = crc_with(1 << bit) ^ zero, 1 << bit
        for pivot_image, pivot_combo in rows:
            if image ^ pivot_image < image:
                image, combo = image ^ pivot_image, combo ^ pivot_combo
        if image:
            rows.append((image, combo))
            rows.sort(reverse=True)
    want, word = target ^ zero, 0
    for pivot_image, pivot_combo in rows:
        if want ^ pivot_image < want:
            want, word = want ^ pivot_image, word ^ pivot_combo
    assert want == 0, "checksum not reachable"
    assert crc_with(word) == target
    data[base : base + 4] = fmt.U32.pack(target)


# ---------------------------------------------------------------------------------------------
# A tree file to edit: pages, meta page, and the references that carry checksums
# ---------------------------------------------------------------------------------------------

META_FIELDS = [
    "magic",
    "version",
    "partition",
    "page_size",
    "txn",
    "root",
    "root_crc",
    "height",
    "reserved",
    "page_count",
    "free_head",
    "free_head_crc",
    "free_count",
    "flushed_seq",
    "key_count",
    "crc",
]


class TreeImage:
    """One ``pNNN.tree`` file in memory, with the map of every reference of its committed tree
    (page-number field, checksum field), so an edited page can be resealed up to the meta page.
    """

    def __init__(self, data: bytes) -> None:
        self.data = bytearray(data)
        metas = [
            dict(zip(META_FIELDS, fmt.META.unpack_from(data, s * PAGE), strict=True))
            for s in (0, 1)
        ]
        self.slot = max((0, 1), key=lambda s: metas[s]["txn"])
        self.meta: dict[str, int] = metas[self.slot]
        self.edges: dict[int, list[tuple[int, int]]] = {}
        """page -> (offset of a page-number field, offset of its checksum field), in-page."""
        self.kind: dict[int, str] = {}
        self.level: dict[int, int] = {}
        if self.meta["root"]:
            self._walk(self.meta["root"], self.meta["height"] - 1)
        head = self.meta["free_head"]
        while head:
            self.kind[head] = "free-list"
            self.edges[head] = [(8, 12)]
            head = self.u32(head, 8)

    # raw access
    def pages(self) -> int:
        return len(self.data) // PAGE

    def u16(self, page: int, offset: int) -> int:
        return int(fmt.U16.unpack_from(self.data, page * PAGE + offset)[0])

    def u32(self, page: int, offset: int) -> int:
        return int(fmt.U32.unpack_from(self.data, page * PAGE + offset)[0])

    def set_u8(self, page: int, offset: int, value: int) -> None:
        self.data[page * PAGE + offset] = value

    def set_u16(self, page: int, offset: int, value: int) -> None:
        fmt.U16.pack_into(self.data, page * PAGE + offset, value)

    def set_u32(self, page: int, offset: int, value: int) -> None:
        """Set a u32; ``END`` stands for the first page number past the end of the file."""
        fmt.U32.pack_into(self.data, page * PAGE + offset, self.pages() if value == END else value)

    def crc_of(self, page: int) -> int:
        return self.u32(page, 0)

    def _walk(self, page: int, level: int) -> None:
        self.level[page] = level
        n = self.u16(page, 6)
        if level:
            self.kind[page] = "internal"
            self.edges[page] = [(16 + 8 * i, 20 + 8 * i) for i in range(n + 1)]
            for i in range(n + 1):
                self._walk(self.u32(page, 16 + 8 * i), level - 1)
            return
        self.kind[page] = "leaf"
        self.edges[page] = []
        flags = self.data[page * PAGE + 16 : page * PAGE + 16 + n]
        kends = struct.unpack_from(f"<{n}H", self.data, page * PAGE + 16 + n)
        vends = struct.unpack_from(f"<{n}H", self.data, page * PAGE + 16 + 3 * n)
        vbase = 16 + 5 * n + kends[-1]
        for i, flag in enumerate(flags):
            if flag == fmt.VALUE_OVERFLOW:
                at = vbase + (vends[i - 1] if i else 0)
                self.edges[page].append((at, at + 4))
                nxt = self.u32(page, at)
                while nxt:
                    self.kind[nxt] = "overflow"
                    self.edges[nxt] = [(8, 12)]
                    nxt = self.u32(nxt, 8)

    # finding things
    def first(self, kind: str) -> int:
        return min(p for p, k in self.kind.items() if k == kind)

    def overflow_ref(self) -> tuple[int, int]:
        """(leaf page, in-page offset) of the first overflow reference."""
        for page, edges in sorted(self.edges.items()):
            if self.kind[page] == "leaf" and edges:
                return page, edges[0][0]
        raise AssertionError("the template has no overflow value")

    # writing
    def seal(self, page: int) -> int:
        base = page * PAGE
        checksum = fmt.page_crc(page, self.data[base + 4 : base + PAGE])
        fmt.U32.pack_into(self.data, base, checksum)
        return checksum

    def reseal(self, frozen: frozenset[int] = frozenset()) -> None:
        """Recompute every checksum of the committed structure, children first, following the
        page numbers now in its reference fields; pages in ``frozen`` keep their bytes (their
        checksum was forced). Then the meta page: its root and free-list checksums and its own."""
        done: set[int] = set(frozen)
        pages = self.pages()

        def visit(page: int) -> None:
            if page in done or not 2 <= page < pages:
                return
            done.add(page)
            for ptr, crc_field in self.edges.get(page, []):
                target = self.u32(page, ptr)
                if 2 <= target < pages and target != page:
                    visit(target)
                    self.set_u32(page, crc_field, self.crc_of(target))
            self.seal(page)

        for page in sorted(self.edges):
            visit(page)
        meta = self.meta
        for ptr, crc_field in (("root", "root_crc"), ("free_head", "free_head_crc")):
            if 2 <= meta[ptr] < pages:
                meta[crc_field] = self.crc_of(meta[ptr])
        self.write_meta()

    def reload_meta(self) -> None:
        """Take the current meta page's fields from the bytes as they are now (after an edit
        of the raw bytes), so that :meth:`reseal` keeps them."""
        if len(self.data) >= self.slot * PAGE + fmt.META.size:
            fields = fmt.META.unpack_from(self.data, self.slot * PAGE)
            self.meta = dict(zip(META_FIELDS, fields, strict=True))

    def write_meta(self, **fields: int) -> None:
        if len(self.data) < self.slot * PAGE + fmt.META.size:
            return  # the file was cut: nothing to seal
        self.meta.update(fields)
        values = [self.meta[name] for name in META_FIELDS]
        body = fmt.META.pack(*values)[:-4]
        page = body + fmt.U32.pack(fmt.page_crc(self.slot, body))
        self.data[self.slot * PAGE : self.slot * PAGE + len(page)] = page

    def append(self, body: bytes = b"") -> int:
        """A new page at the end of the file (checksum not yet set); returns its number."""
        page = self.pages()
        self.data += body + bytes(PAGE - len(body))
        return page


def internal_page(level: int, children: list[tuple[int, int]], keys: list[bytes]) -> bytes:
    """The bytes of an internal page (checksum field zero)."""
    head = fmt.PAGE_HEADER.pack(0, fmt.PAGE_INTERNAL, level, len(keys), 0, 0)
    refs = b"".join(fmt.CHILD_REF.pack(p, c) for p, c in children)
    ends, total = [], 0
    for key in keys:
        total += len(key)
        ends.append(total)
    return head + refs + struct.pack(f"<{len(keys)}H", *ends) + b"".join(keys)


def leaf_layout(img: TreeImage, page: int) -> tuple[int, int, int, int]:
    """(count, offset of the key ends, offset of the value ends, offset of the value heap)."""
    n = img.u16(page, 6)
    kends_at, vends_at = 16 + n, 16 + 3 * n
    return n, kends_at, vends_at, 16 + 5 * n + img.u16(page, kends_at + 2 * (n - 1))


# ---------------------------------------------------------------------------------------------
# The template store
# ---------------------------------------------------------------------------------------------


@dataclass
class Template:
    """A real store (a crash image: its logs hold records the trees do not) and its content."""

    files: dict[str, bytes]
    seed: int
    base: dict[Any, Any]
    """What the trees hold."""
    log_ops: list[tuple[dict[Any, Any], set[int]]] = field(default_factory=list)
    """Changes that are only in the logs, in order, with the partitions each touches."""
    closed: dict[str, bytes] = field(default_factory=dict)
    """The same store after a clean close: the logs' changes in run files."""

    def route(self, key: Any) -> int:
        """The partition of ``key`` (format.md, "Hashing": ``(h2 >> 32) mod partitions``)."""
        return (mmh3.hash64(encode_key(key), seed=self.seed, signed=False)[1] >> 32) % 2

    def key_in_p0(self, stem: bytes | str) -> bytes | str:
        """The first key ``stem`` + 4 digits that belongs to partition 0."""
        for i in range(10000):
            suffix = f"{i:04d}"
            key = stem + suffix.encode() if isinstance(stem, bytes) else stem + suffix
            if self.route(key) == 0:
                return key
        raise AssertionError("no key of partition 0")

    def state(
        self, *, cuts: dict[int, int] | None = None, p0_skips_log: bool = False
    ) -> dict[Any, Any]:
        """The content after recovery when partition ``q``'s log keeps only its first
        ``cuts[q]`` records (a torn tail: a batch with a part cut is dropped everywhere, and
        cuts the logs of its partitions there, format.md "Reading a log"), or
        when partition 0's tree claims every record of its log (``p0_skips_log``: the other
        partition's batch parts then count as complete)."""
        state = dict(self.base)
        seen = dict.fromkeys((0, 1), 0)
        stopped: set[int] = set()
        """Partitions whose logs are cut: at a torn tail, or at a dropped batch's part."""
        for changes, parts in self.log_ops:
            for q in parts:
                seen[q] += 1
                if cuts is not None and q in cuts and seen[q] > cuts[q]:
                    stopped.add(q)
            if stopped & parts:
                stopped |= parts  # a batch dropped everywhere cuts its partitions' logs
                continue
            for key, value in changes.items():
                if p0_skips_log and self.route(key) == 0:
                    continue
                if value is None:
                    state.pop(key, None)
                else:
                    state[key] = value
        return state

    def records(self, partition: int) -> int:
        """How many records partition ``partition``'s log holds."""
        return sum(partition in parts for _, parts in self.log_ops)


def ordered(state: dict[Any, Any]) -> list[tuple[Any, Any]]:
    return sorted(state.items(), key=lambda kv: encode_key(kv[0]))


class _FixedClock(FileSystem):
    """Stamps a new store with the same creation time every run."""

    def time_ns(self) -> int:
        return 1_700_000_000 * 10**9


def build_template(path: Path, mine: int = 250, theirs: int = 60, big: int = 5000) -> Template:
    """A store with ``mine`` keys in partition 0 (one more holding a value of ``big`` bytes, in
    overflow pages) and ``theirs`` in partition 1, flushed twice (partition 0 gets a free
    list), then a few more writes left only in the logs; its files are taken while it is open,
    as a crash would leave them. The same bytes every run: the hash seed and the creation time
    are fixed (the clock, through the store's file system)."""
    db = halodb.open(
        path,
        partitions=2,
        page_size=PAGE,
        memtable_size=64 * 1024,
        hash_seed=0x9E3779B9,
        filesystem=_FixedClock(),
    )
    seed = fmt.MANIFEST.unpack_from((path / fmt.MANIFEST_NAME).read_bytes())[6]
    tpl = Template({}, seed, {})
    model: dict[Any, Any] = {}
    keys0 = [k for k in (f"k{i:04d}" for i in range(4 * mine)) if tpl.route(k) == 0][:mine]
    keys1 = [k for k in (f"q{i:04d}" for i in range(4 * theirs)) if tpl.route(k) == 1][:theirs]
    for i, key in enumerate(keys0 + keys1):
        model[key] = db[key] = f"v{i}" * (i % 13 + 1)
    big_key = next(k for k in (f"big{i}" for i in range(100)) if tpl.route(k) == 0)
    model[big_key] = db[big_key] = "B" * big  # overflow pages in partition 0
    db.flush()
    for key in keys0[::5]:  # a second flush: partition 0 gets a free list
        model[key] = db[key] = f"rewritten {key}"
    db.flush()
    tpl.base = dict(model)
    fresh0 = [k for k in (f"n{i:04d}" for i in range(1000)) if tpl.route(k) == 0]
    fresh1 = [k for k in (f"n{i:04d}" for i in range(1000)) if tpl.route(k) == 1]
    ops: list[dict[Any, Any]] = [
        {fresh0[0]: "a put in the log"},
        {keys0[3]: None},
        {fresh0[1]: [1, 2, 3], fresh0[2]: b"bytes", keys0[7]: None},
        {fresh0[3]: "batch part 0", fresh1[0]: "batch part 1", keys0[9]: None},
        {fresh1[1]: "only in partition 1"},
        {fresh0[4]: "the last record of partition 0"},
    ]
    for changes in ops:
        batch_apply(db, changes)
        tpl.log_ops.append((changes, {tpl.route(k) for k in changes}))
        for key, value in changes.items():
            if value is None:
                del model[key]
            else:
                model[key] = value
    # A crash image: the files as they are while the store is open (every record written).
    tpl.files = {p.name: p.read_bytes() for p in path.iterdir()}
    db.close()
    tpl.closed = {p.name: p.read_bytes() for p in path.iterdir()}
    assert "p000.run" in tpl.closed and "p001.run" in tpl.closed
    assert tpl.state() == model
    assert any(parts == {0, 1} for _, parts in tpl.log_ops)
    return tpl


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    return build_template(tmp_path_factory.mktemp("hostile") / "template")


# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------

Edit = Callable[[Path, Template], None]


@dataclass
class Case:
    name: str
    edit: Edit
    exact: bool = False
    """The field is unused (or only a cache's): the data must come back exactly."""
    keep: int | None = None
    """Partition 0's log reads as a torn tail after this many records."""
    skips_log: bool = False
    """Partition 0's tree may claim its log's records (a hostile ``flushed_seq``)."""
    extra: Callable[[Template], dict[Any, Any]] = lambda tpl: {}
    """Keys the edit adds (a record appended to a log)."""
    defect: str | None = None


def on_tree(fn: Callable[[TreeImage], Any], name: str = "p000.tree") -> Edit:
    """An edit of a tree file; ``fn`` changes the image, then every checksum is recomputed
    (``fn`` may return the set of pages whose checksum it forced, left as they are)."""

    def edit(path: Path, tpl: Template) -> None:
        img = TreeImage((path / name).read_bytes())
        frozen = fn(img)
        img.reseal(frozenset(frozen or ()))
        (path / name).write_bytes(bytes(img.data))

    return edit


def on_log(fn: Callable[[bytes, list[Rec]], bytes], name: str = "p000.wal") -> Edit:
    """An edit of a log: ``fn`` gets the header and records and returns the new file."""

    def edit(path: Path, tpl: Template) -> None:
        header, records = parse_log((path / name).read_bytes())
        (path / name).write_bytes(fn(header, records))

    return edit


def reframe(records: list[Rec]) -> bytes:
    return b"".join(frame(r.rtype, r.seq, r.payload) for r in records)


def on_struct(
    name: str,
    layout: struct.Struct,
    index: int,
    value: int,
    crc_at: int,
    crc_of: tuple[int, int] | None = None,
) -> Edit:
    """Set field ``index`` of the header ``layout`` at the start of file ``name`` and recompute
    the checksum field ``crc_at`` (an index into the fields) over bytes ``crc_of``."""

    def edit(path: Path, tpl: Template) -> None:
        data = bytearray((path / name).read_bytes())
        fields = list(layout.unpack_from(data))
        fields[index] = value
        layout.pack_into(data, 0, *fields)
        lo, hi = crc_of or (0, layout.size - 4)
        fields[crc_at] = fmt.crc(data[lo:hi])
        layout.pack_into(data, 0, *fields)
        (path / name).write_bytes(bytes(data))

    return edit


def _log_cases() -> list[Case]:
    """Log records (partition 0's log holds five: a put, a delete, three entries, a batch part,
    a put) with every length and count field hostile, both checksums recomputed."""
    cases = []
    for i in range(5):
        for length in WIDE[32]:

            def past_end(h: bytes, rs: list[Rec], i: int = i, length: int = length) -> bytes:
                r = rs[i]
                cut = frame(r.rtype, r.seq, r.payload, length)
                return h + reframe(rs[:i]) + cut + reframe(rs[i + 1 :])

            cases.append(
                Case(f"record {i} length {length:#x}, past the end", on_log(past_end), keep=i)
            )

            def padded(h: bytes, rs: list[Rec], i: int = i, length: int = length) -> bytes:
                r = rs[i]
                body = r.payload + bytes(min(length, 1 << 16) - len(r.payload))
                return h + reframe(rs[:i]) + frame(r.rtype, r.seq, body, length)

            if length == 1 << 16:
                cases.append(Case(f"record {i} length 2^16, zero-padded to fit", on_log(padded)))

    def entry_lengths(klen: int | None, vlen: int | None, record: int) -> Edit:
        def fn(h: bytes, rs: list[Rec]) -> bytes:
            r = rs[record]
            pos = 0
            if r.rtype == fmt.REC_BATCH:
                pos = 2 + 2 * fmt.BATCH_HEADER.unpack_from(r.payload)[0]
            pos += 1  # flags
            op, k, v = fmt.ENTRY.unpack_from(r.payload, pos)
            payload = bytearray(r.payload)
            fmt.ENTRY.pack_into(
                payload, pos, op, k if klen is None else klen, v if vlen is None else vlen
            )
            rs[record] = Rec(r.rtype, r.seq, bytes(payload))
            return h + reframe(rs)

        return on_log(fn)

    for record, what in ((0, "put"), (1, "delete"), (2, "first of three"), (3, "batch")):
        cases.append(Case(f"{what} entry key length 0xffff", entry_lengths(U16, None, record)))
        for vlen in WIDE[32]:
            cases.append(
                Case(f"{what} entry value length {vlen:#x}", entry_lengths(None, vlen, record))
            )

    def batch_count(count: int) -> Edit:
        def fn(h: bytes, rs: list[Rec]) -> bytes:
            r = rs[3]
            rs[3] = Rec(r.rtype, r.seq, fmt.BATCH_HEADER.pack(count) + r.payload[2:])
            return h + reframe(rs)

        return on_log(fn)

    for count in (0, 1, 3, 0x8000, U16):
        cases.append(Case(f"batch partition count {count:#x}", batch_count(count)))

    def batch_names(partition: int) -> Edit:
        def fn(h: bytes, rs: list[Rec]) -> bytes:
            r = rs[3]
            rs[3] = Rec(r.rtype, r.seq, r.payload[:4] + fmt.U16.pack(partition) + r.payload[6:])
            return h + reframe(rs)

        return on_log(fn)

    for partition in (2, 0x8000, U16):
        cases.append(Case(f"batch names partition {partition:#x}", batch_names(partition)))

    def last_seq(seq: int) -> Edit:
        def fn(h: bytes, rs: list[Rec]) -> bytes:
            rs[-1] = Rec(rs[-1].rtype, seq, rs[-1].payload)
            return h + reframe(rs)

        return on_log(fn)

    for seq in (1 << 63, U64 - 1, U64):
        cases.append(Case(f"last record's sequence {seq:#x}", last_seq(seq)))

    def first_seq(seq: int) -> Edit:
        def fn(h: bytes, rs: list[Rec]) -> bytes:
            rs[0] = Rec(rs[0].rtype, seq, rs[0].payload)
            return h + reframe(rs)

        return on_log(fn)

    cases.append(Case("first record's sequence 2^63, later ones smaller", first_seq(1 << 63)))

    def header(base_seq: int | None = None, reserved: int = 0) -> Edit:
        def fn(h: bytes, rs: list[Rec]) -> bytes:
            _, _, part, _, base, _ = fmt.WAL_HEADER.unpack_from(h)
            return wal_header(part, base if base_seq is None else base_seq, reserved) + reframe(rs)

        return on_log(fn)

    for base in WIDE[64]:
        cases.append(Case(f"log base_seq {base:#x}", header(base_seq=base)))
    cases.append(Case("log header reserved 0xffffffff", header(reserved=U32), exact=True))

    def appended(stem: bytes | str, value: bytes) -> Edit:
        """A put of the first key ``stem + digits`` of partition 0, appended to its log."""

        def edit(path: Path, tpl: Template) -> None:
            key = encode_key(tpl.key_in_p0(stem))
            payload = b"\x00" + entry(fmt.OP_PUT, key, value)
            on_log(lambda h, rs: h + reframe(rs) + frame(fmt.REC_WRITE, rs[-1].seq + 1, payload))(
                path, tpl
            )

        return edit

    long_stem = b"k" * (U16 - 5)  # with 4 digits and the tag: a 65535-byte bytes key
    cases.append(
        Case(
            "a put of a 65535-byte key (the store allows 128)",
            appended(long_stem, b"\x01v"),
        )
    )
    cases.append(
        Case(
            "a put of a 1 MiB value",
            appended("mib", bytes(1 << 20)),
            exact=True,
            extra=lambda tpl: {tpl.key_in_p0("mib"): bytes((1 << 20) - 1)},
        )
    )
    deep = b"\x02" + b"[" * 200_000 + b"]" * 200_000
    cases.append(Case("a JSON value nested 200000 deep", appended("deep", deep)))
    cases.append(
        Case(
            "a JSON int of 5000 digits (halo1 writes at most 4300)",
            appended("digits", b"\x02" + b"7" * 5000),
        )
    )
    return cases


def _meta_cases() -> list[Case]:
    """Every field of the current meta page of partition 0's tree."""
    cases = []
    widths = {
        "page_size": 32,
        "txn": 64,
        "root": 32,
        "height": 16,
        "page_count": 32,
        "free_head": 32,
        "free_count": 32,
        "flushed_seq": 64,
        "key_count": 64,
    }

    def set_meta(name: str, value: int) -> Edit:
        return on_tree(lambda img: img.meta.update({name: value}))

    for name, width in widths.items():
        values = list(WIDE[width])
        if name == "height":
            values += [65, 1000]
        for value in values:
            cases.append(
                Case(
                    f"meta {name} {value:#x}",
                    set_meta(name, value),
                    skips_log=name == "flushed_seq",
                )
            )
    cases.append(
        Case("meta reserved 0xffff", on_tree(lambda img: img.meta.update(reserved=U16)), exact=True)
    )
    return cases


def _grow(path: Path, name: str, size: int) -> None:
    """Extend a file to ``size`` bytes without writing them (a sparse file)."""
    os.truncate(path / name, size)


def _sparse_page_count(pages: int) -> Edit:
    def edit(path: Path, tpl: Template) -> None:
        on_tree(lambda img: img.meta.update(page_count=pages))(path, tpl)
        _grow(path, "p000.tree", pages * PAGE)

    return edit


def _page_cases() -> list[Case]:
    """Node, overflow and free-list pages of partition 0's tree."""
    cases = []

    def put(width: int, offset: int, value: int) -> Callable[[TreeImage, int], None]:
        """Set the ``width``-bit field at ``offset`` of the page to ``value``."""
        setter = {8: TreeImage.set_u8, 16: TreeImage.set_u16, 32: TreeImage.set_u32}[width]
        return lambda img, page: setter(img, page, offset, value)

    def leaf(fn: Callable[[TreeImage, int], None]) -> Edit:
        return on_tree(lambda img: fn(img, img.first("leaf")))

    for count in (0, 0x8000, U16):
        cases.append(Case(f"leaf count {count:#x}", leaf(put(16, 6, count))))
    cases.append(Case("leaf count one more", leaf(lambda i, p: i.set_u16(p, 6, i.u16(p, 6) + 1))))

    def leaf_end(which: str, last: bool, value: int) -> Callable[[TreeImage, int], None]:
        def fn(img: TreeImage, page: int) -> None:
            n, kends, vends, _ = leaf_layout(img, page)
            at = (kends if which == "key" else vends) + (2 * (n - 1) if last else 0)
            img.set_u16(page, at, value)

        return fn

    for which in ("key", "value"):
        for last in (False, True):
            for value in (0x8000, U16):
                cases.append(
                    Case(
                        f"leaf {'last' if last else 'first'} {which} end {value:#x}",
                        leaf(leaf_end(which, last, value)),
                    )
                )
    for flag in (2, 0xFF):
        cases.append(Case(f"leaf value flag {flag:#x}", leaf(put(8, 16, flag))))

    def overflow_ref(field_at: int, value: int) -> Edit:
        def fn(img: TreeImage) -> None:
            page, at = img.overflow_ref()
            img.set_u32(page, at + field_at, value)

        return on_tree(fn)

    for length in (0, 1, *WIDE[32]):
        cases.append(Case(f"overflow length {length:#x}", overflow_ref(8, length)))
    for target in (0, 1, 1 << 16, 1 << 31, U32, END):
        cases.append(Case(f"overflow reference to page {_num(target)}", overflow_ref(0, target)))

    def overflow_page(fn: Callable[[TreeImage, int], None]) -> Edit:
        return on_tree(lambda img: fn(img, img.first("overflow")))

    for count in (1009, 0x8000, U16):
        cases.append(
            Case(
                f"overflow page count {count:#x}",
                overflow_page(put(16, 6, count)),
            )
        )
    for nxt in (0, 1, 1 << 31, U32, END):
        cases.append(
            Case(
                f"overflow page next {_num(nxt)}",
                overflow_page(put(32, 8, nxt)),
            )
        )

    def overflow_loop(length: int, cycle: int) -> Edit:
        """The overflow chain leads back to its first page after ``cycle`` pages (the first
        page's checksum forced to match the reference to it); the value claims ``length``."""

        def fn(img: TreeImage) -> set[int]:
            page, at = img.overflow_ref()
            img.set_u32(page, at + 8, length)
            img.reseal()
            chain = [img.u32(page, at)]
            while len(chain) < cycle:
                chain.append(img.u32(chain[-1], 8))
            target = 0x5EEDC0DE
            img.set_u32(chain[-1], 8, chain[0])
            img.set_u32(chain[-1], 12, target)
            for before, after in reversed(list(itertools.pairwise(chain))):
                img.set_u32(before, 12, img.seal(after))
            force_crc(img.data, chain[0], PAGE - 4, target)
            return set(chain)

        return on_tree(fn)

    for length in (1 << 16, 1 << 31, U32):
        for cycle in (1, 2):
            cases.append(
                Case(
                    f"overflow chain loops over {cycle} page(s), length {length:#x}",
                    overflow_loop(length, cycle),
                )
            )

    def root(fn: Callable[[TreeImage, int], None]) -> Edit:
        return on_tree(lambda img: fn(img, img.meta["root"]))

    for count in (0, 0x8000, U16):
        cases.append(Case(f"internal count {count:#x}", root(put(16, 6, count))))
    cases.append(
        Case("internal count one more", root(lambda i, p: i.set_u16(p, 6, i.u16(p, 6) + 1)))
    )

    def internal_end(value: int) -> Callable[[TreeImage, int], None]:
        def fn(img: TreeImage, page: int) -> None:
            n = img.u16(page, 6)
            img.set_u16(page, 16 + 8 * (n + 1) + 2 * (n - 1), value)

        return fn

    for value in (0x8000, U16):
        cases.append(Case(f"internal last key end {value:#x}", root(internal_end(value))))
    for target in (0, 1, 1 << 16, 1 << 31, U32, END):
        cases.append(
            Case(
                f"internal child page {_num(target)}",
                root(put(32, 24, target)),
            )
        )
    for level in (0, 2, 0xFF):
        cases.append(Case(f"internal level {level:#x}", root(put(8, 5, level))))
    cases.append(
        Case(
            "internal node typed as an overflow page",
            root(lambda i, p: i.set_u8(p, 4, fmt.PAGE_OVERFLOW)),
        )
    )

    def freelist(fn: Callable[[TreeImage, int], None]) -> Edit:
        return on_tree(lambda img: fn(img, img.meta["free_head"]))

    for count in (253, 0x8000, U16):
        cases.append(Case(f"free-list count {count:#x}", freelist(put(16, 6, count))))
    for entry_value in (0, 1, END, 1 << 16, 1 << 31, U32):
        cases.append(
            Case(
                f"free-list entry {_num(entry_value)}",
                freelist(put(32, 16, entry_value)),
            )
        )
    for nxt in (1, END, 1 << 31, U32):
        cases.append(Case(f"free-list next {_num(nxt)}", freelist(put(32, 8, nxt))))

    def freelist_loop(pages: int | None) -> Edit:
        """The free-list page names itself as the next one (checksum forced)."""

        def fn(img: TreeImage) -> set[int]:
            head = img.meta["free_head"]
            if pages is not None:  # and the page lists as many pages as it can hold
                img.meta["page_count"] = pages
                per_page = (PAGE - 16) // 4 - 1  # the last 4 bytes are for forcing the crc
                img.set_u16(head, 6, per_page)
                for i in range(per_page):
                    img.set_u32(head, 16 + 4 * i, 1000 + i)
            img.set_u32(head, 8, head)
            img.set_u32(head, 12, 0xF4EE1157)
            force_crc(img.data, head, PAGE - 4, 0xF4EE1157)
            return {head}

        def edit(path: Path, tpl: Template) -> None:
            on_tree(fn)(path, tpl)
            if pages is not None:
                _grow(path, "p000.tree", pages * PAGE)

        return edit

    cases.append(Case("free list loops on itself", freelist_loop(None)))
    cases.append(
        Case(
            "free list of 251 pages loops on itself, 2^24 pages in use (sparse file)",
            freelist_loop(1 << 24),
        )
    )
    cases.append(
        Case("meta page_count 2^16 and a sparse file that long", _sparse_page_count(1 << 16))
    )
    cases.append(
        Case(
            "meta page_count 2^31 and a sparse file that long (2 TiB)",
            _sparse_page_count(1 << 31),
        )
    )
    return cases


def _shape_cases() -> list[Case]:
    """Tree shapes: cycles, a page reached at two levels, and tall trees."""
    cases = []

    def self_child(only: bool) -> Edit:
        """The root names itself as its first (or only) child, its checksum forced."""

        def fn(img: TreeImage) -> set[int]:
            root = img.meta["root"]
            if only:
                img.set_u16(root, 6, 0)
            img.set_u32(root, 16, root)
            img.set_u32(root, 20, 0xC1C1E)
            force_crc(img.data, root, PAGE - 4, 0xC1C1E)
            return {root}

        return on_tree(fn)

    cases.append(Case("root is its own first child", self_child(False)))
    cases.append(Case("root is its own only child", self_child(True)))

    def two_cycle(img: TreeImage) -> set[int]:
        """A new top page above the root, whose first child leads back to the top page."""
        root = img.meta["root"]
        top = img.append()
        img.set_u32(root, 16, top)
        img.set_u32(root, 20, 0x2C7C1E)
        crc = img.seal(root)
        body = internal_page(2, [(root, crc)], [])
        img.data[top * PAGE : top * PAGE + len(body)] = body
        force_crc(img.data, top, PAGE - 4, 0x2C7C1E)
        img.meta.update(root=top, height=3, page_count=img.pages())
        return {root, top}

    cases.append(Case("two internal pages in a cycle", on_tree(two_cycle)))

    def two_levels(img: TreeImage) -> None:
        """The root is reached as a level-1 node and again as a leaf: no forced checksum."""
        root, crc = img.meta["root"], img.meta["root_crc"]
        lower = img.append(internal_page(1, [(root, crc)], []))
        lower_crc = img.seal(lower)
        top = img.append(internal_page(2, [(root, crc), (lower, lower_crc)], [b"\x30zzz"]))
        img.seal(top)
        img.meta.update(root=top, height=3, page_count=img.pages())

    cases.append(Case("one page reached at two levels", on_tree(two_levels)))

    def twice(img: TreeImage) -> None:
        """The root is both children of a new top page: every leaf is reached twice."""
        root, crc = img.meta["root"], img.meta["root_crc"]
        top = img.append(internal_page(2, [(root, crc), (root, crc)], [b"\x30zzz"]))
        img.seal(top)
        img.meta.update(root=top, height=3, page_count=img.pages())

    cases.append(Case("one subtree reached twice at its level", on_tree(twice)))

    def chain(height: int, levels: Callable[[int], int] | None = None) -> Edit:
        """Single-child internal pages stacked on the root up to ``height`` levels; page ``k``
        of the stack (the root's parent is 0) has level ``levels(k)``, by default ``k + 2``."""

        def fn(img: TreeImage) -> None:
            below, crc = img.meta["root"], img.meta["root_crc"]
            for k in range(height - 2):
                level = k + 2 if levels is None else levels(k)
                page = img.append(internal_page(level & 0xFF, [(below, crc)], []))
                below, crc = page, img.seal(page)
            img.meta.update(root=below, height=height, page_count=img.pages())

        return on_tree(fn)

    cases.append(Case("a valid tree of height 64 (single-child nodes)", chain(64), exact=True))
    cases.append(Case("a tree of height 65", chain(65)))
    cases.append(Case("a tree of height 1000", chain(1000)))
    cases.append(
        Case(
            "height 64 over a chain of 1000 pages that all say level 63",
            on_tree(lambda img: _stack(img, 1000, 63, 64)),
        )
    )
    return cases


def _stack(img: TreeImage, pages: int, level: int, height: int) -> None:
    below, crc = img.meta["root"], img.meta["root_crc"]
    for _ in range(pages):
        page = img.append(internal_page(level, [(below, crc)], []))
        below, crc = page, img.seal(page)
    img.meta.update(root=below, height=height, page_count=img.pages())


def _zeros_crc(size: int) -> int:
    """``crc`` of ``size`` zero bytes, without holding them all."""
    block = bytes(1 << 24)
    value = 0
    for _ in range(size >> 24):
        value = zlib_crc32(block, value)
    return zlib_crc32(bytes(size & ((1 << 24) - 1)), value) ^ fmt.CRC_MASK


def _huge_bloom(bits: int, exact_bits_crc: bool) -> Edit:
    """A bloom header claiming ``bits`` bits, and a sparse file exactly that long."""

    def edit(path: Path, tpl: Template) -> None:
        name = "p000.bloom"
        header = list(fmt.BLOOM_HEADER.unpack_from((path / name).read_bytes()))
        header[5], header[6] = bits, bits // 10
        header[8] = _zeros_crc(bits // 8) if exact_bits_crc else 0
        head = fmt.BLOOM_HEADER.pack(*header)[:-4]
        (path / name).write_bytes(head + fmt.U32.pack(fmt.crc(head)))
        _grow(path, name, fmt.BLOOM_HEADER.size + bits // 8)

    return edit


def _file_cases() -> list[Case]:
    """Bloom filter and manifest headers."""
    cases = []
    bloom = fmt.BLOOM_HEADER

    def on_bloom(index: int, value: int) -> Edit:
        return on_struct("p000.bloom", bloom, index, value, crc_at=9)

    for bits in (1088, *WIDE[64], U64 - 63):
        cases.append(Case(f"bloom bits {bits:#x}", on_bloom(5, bits), exact=True))
    for hashes in (0, 17, U16):
        cases.append(Case(f"bloom hashes {hashes:#x}", on_bloom(3, hashes), exact=True))
    cases.append(
        Case("bloom hashes 16 (valid, but not what the bits were set with)", on_bloom(3, 16))
    )
    for keys in (0, *WIDE[64]):
        cases.append(Case(f"bloom capacity {keys:#x}", on_bloom(6, keys), exact=True))
    cases.append(Case("bloom txn 0xffffffffffffffff", on_bloom(7, U64), exact=True))
    cases.append(Case("bloom reserved 0xffff", on_bloom(4, U16), exact=True))
    cases.append(
        Case(
            "bloom of 2^31 bits, the file that long (256 MiB, sparse)",
            _huge_bloom(1 << 31, True),
            exact=True,
        )
    )
    cases.append(
        Case(
            "bloom of 2^40 bits, the file that long (128 GiB, sparse)",
            _huge_bloom(1 << 40, False),
            exact=True,
        )
    )

    def on_manifest(index: int, value: int) -> Edit:
        return on_struct(fmt.MANIFEST_NAME, fmt.MANIFEST, index, value, crc_at=9)

    for partitions in (0, 3, 257, U16):
        cases.append(Case(f"manifest partitions {partitions:#x}", on_manifest(3, partitions)))
    for page_size in (2048, *WIDE[32]):
        cases.append(Case(f"manifest page_size {page_size:#x}", on_manifest(5, page_size)))
    for created in WIDE[64]:
        cases.append(Case(f"manifest created_ns {created:#x}", on_manifest(7, created), exact=True))
    cases.append(Case("manifest reserved 0xffff", on_manifest(4, U16), exact=True))
    cases.append(Case("manifest flags 0xffff", on_manifest(2, U16)))
    cases.append(Case("manifest hash_seed 0xffffffff", on_manifest(6, U32)))

    def seed_and_dropped_batch(path: Path, tpl: Template) -> None:
        on_manifest(6, U32)(path, tpl)
        on_log(lambda header, records: header, "p001.wal")(path, tpl)

    cases.append(
        Case(
            "manifest hash_seed 0xffffffff, and a batch part dropped (a flush at open)",
            seed_and_dropped_batch,
        )
    )
    return cases


def closed(then: Edit | None = None) -> Edit:
    """The template as a clean close left it (its logs' changes in run files), then ``then``."""

    def edit(path: Path, tpl: Template) -> None:
        for name in os.listdir(path):
            os.unlink(path / name)
        for name, data in tpl.closed.items():
            (path / name).write_bytes(data)
        if then is not None:
            then(path, tpl)

    return edit


def _forged_run_body(path: Path, tpl: Template) -> None:
    """Partition 0's run with its first key twice (the body checksum recomputed)."""
    name = path / "p000.run"
    data = bytearray(name.read_bytes())
    head = list(fmt.RUN_HEADER.unpack_from(data))
    n, size = head[7], fmt.RUN_HEADER.size
    first = fmt.U16.unpack_from(data, size)[0]
    second = fmt.U16.unpack_from(data, size + 2)[0]
    keys_at = size + 6 * n
    if first == second:  # the second key becomes the first
        data[keys_at + first : keys_at + 2 * first] = data[keys_at : keys_at + first]
    head[10] = fmt.crc(bytes(data[size:]))
    fmt.RUN_HEADER.pack_into(data, 0, *head)
    head[11] = fmt.crc(bytes(data[: size - 4]))
    fmt.RUN_HEADER.pack_into(data, 0, *head)
    name.write_bytes(bytes(data))


def _run_cases() -> list[Case]:
    """Run file headers (partition 0's): every count, size and sequence field hostile, the
    header checksum recomputed."""

    def on_run(index: int, value: int) -> Edit:
        return closed(on_struct("p000.run", fmt.RUN_HEADER, index, value, crc_at=11))

    cases = [Case("a clean close's run files, untouched", closed(), exact=True)]
    for version in (3, 5, U16):
        cases.append(Case(f"run version {version:#x}", on_run(1, version)))
    cases.append(Case("run partition 1", on_run(2, 1)))
    for flags in (2, U32):
        cases.append(Case(f"run flags {flags:#x}", on_run(3, flags)))
    cases.append(Case("run flags: cleared (what the tree holds is gone)", on_run(3, 1)))
    for index, field_name in ((4, "base_seq"), (5, "seq"), (6, "count")):
        for value in (0, 1, fmt.SEQ_LIMIT - 1, fmt.SEQ_LIMIT, U64):
            cases.append(Case(f"run {field_name} {value:#x}", on_run(index, value)))
    for index, field_name in ((7, "entries"), (8, "key_bytes"), (9, "value_bytes")):
        for value in (0, *WIDE[64]):
            cases.append(Case(f"run {field_name} {value:#x}", on_run(index, value)))
    cases.append(Case("run body with a key twice", closed(_forged_run_body)))
    return cases


CASES = [
    Case("the untouched template", lambda path, tpl: None, exact=True),
    *_run_cases(),
    *_log_cases(),
    *_meta_cases(),
    *_page_cases(),
    *_shape_cases(),
    *_file_cases(),
]


def _param(case: Case) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=case.defect)] if case.defect else []
    return pytest.param(case, id=case.name, marks=marks)


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """A fresh directory, in memory (``/dev/shm``) when the machine has one: the writable pass
    flushes and fsyncs, which a disk makes slow. Sparse files cost nothing there either."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="halodb-hostile-", dir=shm))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_hostile_file(case: Case, template: Template, scratch: Path) -> None:
    """One hostile field: ``CorruptionError`` or exactly the right data (exactly the right data
    when the field is unused), within the budget, in a child under a 512 MiB address space."""
    store = scratch / "store"
    store.mkdir()
    for name, data in template.files.items():
        (store / name).write_bytes(data)
    case.edit(store, template)
    state = template.state(cuts=None if case.keep is None else {0: case.keep})
    state |= case.extra(template)
    allowed = [ordered(state)]
    if case.skips_log:
        allowed.append(ordered(template.state(p0_skips_log=True)))
    verdict, detail, seconds = run_isolated(_full_read, str(store), allowed)
    wanted = ("ok",) if case.exact else ("ok", "detected")
    assert verdict in wanted, f"{case.name}: {verdict} after {seconds:.2f} s: {detail}"


def test_reseal_of_an_untouched_tree_changes_no_byte(template: Template) -> None:
    """The harness itself: recomputing every checksum of an unedited tree file gives it back
    byte for byte, so an edit changes only what it means to change."""
    for name in ("p000.tree", "p001.tree"):
        img = TreeImage(template.files[name])
        img.reseal()
        assert bytes(img.data) == template.files[name]


def test_force_crc_gives_a_page_its_own_checksum() -> None:
    data = bytearray(3 * PAGE)
    data[2 * PAGE + 4 : 2 * PAGE + 40] = b"any content at all, then 4 free bytes"[:36]
    force_crc(data, 2, PAGE - 4, 0xDEADBEEF)
    assert (
        fmt.page_crc(2, data[2 * PAGE + 4 : 3 * PAGE])
        == 0xDEADBEEF
        == fmt.U32.unpack_from(data, 2 * PAGE)[0]
    )


def test_the_child_runs_under_the_address_space_limit() -> None:
    """The harness itself: a child that tries to allocate 1 GiB gets ``MemoryError`` (which
    the full read would report as a failure), and a child that never ends is reported as a
    hang."""

    def allocate() -> tuple[str, str]:
        try:
            bytearray(1 << 30)
        except MemoryError:
            return "ok", "MemoryError"
        return "error", "allocated 1 GiB"

    assert run_isolated(allocate)[:2] == ("ok", "MemoryError")

    def spin() -> tuple[str, str]:
        while True:
            time.sleep(0.01)

    assert run_isolated(spin, timeout=0.5)[0] == "hang"

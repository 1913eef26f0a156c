"""Damaged files: every case either raises ``CorruptionError`` or reads back exactly right.

A small store (two partitions, 1 KiB pages, a value spanning overflow pages) is built three
times: flushed and closed cleanly (everything in the trees), closed cleanly with its last writes
in run files, and abandoned with records left only in the logs. Each case copies it, damages
one file (flipped bytes, truncation, appended garbage, zeroed, swapped or stale pages), then opens
it, runs ``check()`` and reads everything, by iteration and by point lookups. The outcome must be
a ``CorruptionError`` (at open, from ``check()`` or from a read) or exactly the expected data:
never a wrong value and never another exception (``struct.error``, ``IndexError``, ...). A damaged
bloom filter is never an error: it is rebuilt from the tree and the data comes back exactly.
Every fourth case whose ``check()`` is clean is then compacted, and must read and check the same.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import halodb
import halodb.engine.commit
import halodb.engine.engine
import halodb.partition
import halodb.testing
import halodb.wal
from halodb import format as fmt
from halodb.btree import BTree
from halodb.keys import encode_key
from halodb.pager import Pager
from halodb.vfs import FileSystem
from support.stores import batch_apply, plant

STRESS = bool(os.environ.get("HALODB_STRESS"))
"""``nox -s stress``: every byte of tree pages and bloom filters, not a sample."""
CASE_SECONDS = 1.0
"""The longest one damage case may take, open, check and full read together."""
PAGE = 1024
META_BYTES = 80
"""The bytes of a meta page that mean something (the rest is padding)."""

Damage = Callable[[bytes], bytes]


@dataclass
class Template:
    """A built store: its files, what it holds, and how its logs may legitimately be cut."""

    name: str
    files: dict[str, bytes]
    expected: dict[Any, Any]
    old_trees: dict[str, bytes]
    """Tree files as they were before the last flush: a source of stale but valid pages."""
    log_ops: list[tuple[dict[Any, Any], set[int]]] = field(default_factory=list)
    """Ops that are only in the logs: (changes, partitions they touch), in order."""
    base: dict[Any, Any] = field(default_factory=dict)
    """The content the trees hold (before the ops only in the logs)."""
    partition_of: dict[Any, int] = field(default_factory=dict)


def _abandon(db: halodb.Store) -> None:
    """Close ``db`` without flushing its logs into the trees, as a crash would."""
    halodb.testing.abandon(db)


def _apply(state: dict[Any, Any], changes: dict[Any, Any]) -> None:
    for key, value in changes.items():
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value


def _build(root: Path, name: str, abandoned: bool) -> Template:
    path = root / name
    rng = random.Random(name)
    root.mkdir(parents=True, exist_ok=True)
    db = halodb.open(path, partitions=2, page_size=PAGE)
    expected: dict[Any, Any] = {}

    def put(key: Any, value: Any) -> None:
        db[key] = value
        expected[key] = value

    for i in range(300):
        key = (f"s{i:04d}", i, -(10**30) - i, ("t", i, b"\x00b"), i + 0.5, b"b\x00%d" % i)[i % 6]
        value = (f"v{i}" * rng.randrange(1, 20), b"\x00\xff" * (i % 7), {"i": i, "l": [i, None]})
        put(key, value[i % 3])
    put("big", "B" * 5000)  # overflow pages
    put(b"medium", b"m" * 700)
    for key in list(expected)[::17]:
        del db[key]
        del expected[key]
    db.flush()
    for i in range(3, 300, 11):  # a second flush: its copies free the first one's pages ...
        put(f"s{i:04d}", f"second {i}")
    db.flush()
    # ... which the next flush reuses: this copy holds pages that will be stale
    old_trees = {n: (path / n).read_bytes() for n in ("p000.tree", "p001.tree")}
    for i in range(0, 300, 7):
        put(f"s{i:04d}", f"rewritten {i}")
    for key in list(expected)[1::23]:
        del db[key]
        del expected[key]
    put("big2", {"text": "C" * 3000})
    template = Template(name, {}, expected, old_trees)
    if abandoned:
        db.flush()
        template.base = dict(expected)
        ops: list[dict[Any, Any]] = [
            {"wal-a": "only in the log"},
            {"wal-b": b"bytes in the log", "wal-c": None},
            {"s0007": None},
            {"wal-d": [1, 2, 3]},
            {("wal", 5): "tuple key", "big": "B" * 400},
            {"wal-a": "overwritten in the log"},
            {-5: "negative int key"},
            {"wal-e": "x" * 40, "wal-f": "y" * 40, "wal-g": "z" * 40, "wal-h": None},
            {"wal-i": "last"},
        ]
        # A batch over both partitions whatever the store's hash seed: a key from each.
        spans: dict[int, str] = {}
        for i in itertools.count():
            spans.setdefault(halodb.testing.partition_of(db, f"span{i}"), f"span{i}")
            if len(spans) == 2:
                break
        ops.insert(4, {key: f"spans {key}" for key in spans.values()})
        for changes in ops:
            if len(changes) == 1:
                ((key, value),) = changes.items()
                if value is None:
                    del db[key]
                else:
                    db[key] = value
            else:
                batch_apply(db, changes)
            parts = {halodb.testing.partition_of(db, k) for k in changes}
            template.log_ops.append((changes, parts))
            _apply(expected, changes)
        assert any(len(parts) == 2 for _, parts in template.log_ops), "no batch spans both"
        _abandon(db)
    else:
        db.flush()
        if name == "run":  # the close saves these in run files
            put("run-a", "in the run")
            put("big", "R" * 3000)  # over one in the tree: overflow pages freed by its merge
            put(("run", 2), b"\x00run bytes")
            db["s0014"] = "gone"
            del db["s0014"]
            expected.pop("s0014", None)
            for key in list(expected)[2::31]:
                del db[key]
                del expected[key]
        db.close()
        template.base = dict(expected)
    db = halodb.open(path, readonly=True)
    template.partition_of = {k: halodb.testing.partition_of(db, k) for k in expected}
    assert dict(db.items()) == expected
    db.close()
    template.files = {p.name: p.read_bytes() for p in path.iterdir()}
    if abandoned:
        assert all(len(template.files[f"p00{i}.wal"]) > 28 for i in (0, 1))
    assert (name == "run") == all(f"p00{i}.run" in template.files for i in (0, 1))
    return template


@pytest.fixture(scope="module", params=["closed", "run", "abandoned"])
def template(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Template:
    name = str(request.param)
    return _build(tmp_path_factory.mktemp("templates"), name, abandoned=name == "abandoned")


# ---------------------------------------------------------------------------------------------
# Running one case
# ---------------------------------------------------------------------------------------------


class WrongData(AssertionError):
    pass


def _ordered(state: dict[Any, Any]) -> list[tuple[Any, Any]]:
    return sorted(state.items(), key=lambda kv: encode_key(kv[0]))


@dataclass
class ReadBack:
    items: list[tuple[Any, Any]]
    stats: Any
    check_error: halodb.CorruptionError | None
    """What ``check()`` raised after the reads, if anything."""


def _read_everything(path: Path, probes: list[Any], compact: bool = False) -> ReadBack:
    """Open the store, read it every way, then ``check()`` it; if clean and ``compact``,
    compact it, and read and check it again.

    The reads come first, as a user's would: a read must detect the damage it runs into by
    itself, so data read before ``check()`` complains must still be right (or a prefix of the
    logs, for a cut log)."""
    db = halodb.open(path)
    try:
        items = list(db.items())
        keys = [k for k, _ in items]
        if list(reversed(db)) != keys[::-1]:
            raise WrongData("reverse iteration differs from forward")
        if len(db) != len(items):
            raise WrongData(f"len() is {len(db)}, iteration gives {len(items)}")
        got = dict(items)
        for key in probes:
            if db.get(key) != got.get(key) or (key in db) != (key in got):
                raise WrongData(f"point read of {key!r} disagrees with iteration")
        try:
            db.check()
        except halodb.CorruptionError as exc:
            return ReadBack(items, db.stats(), exc)
        if not compact:
            return ReadBack(items, db.stats(), None)
        # Compaction moves the pages of a store whose check is clean; it changes no data.
        db.compact()
        if list(db.items()) != items:
            raise WrongData("compaction changed what the store holds")
        try:
            db.check()
        except halodb.CorruptionError as exc:
            raise WrongData(f"check() after a compaction: {exc}") from None
        return ReadBack(items, db.stats(), None)
    finally:
        _abandon(db)


@dataclass
class Outcome:
    detected: int = 0
    intact: int = 0
    cut: int = 0
    """Log truncations that read back as a crash at that point would (a prefix of records)."""
    failures: list[str] = field(default_factory=list)
    slowest: float = 0.0


TOTALS = Outcome()
"""Every case of the module, printed at its end (``pytest -s``) for docs/reliability.md."""


@pytest.fixture(scope="module", autouse=True)
def _print_totals() -> Iterator[None]:
    yield
    cases = TOTALS.detected + TOTALS.intact + TOTALS.cut + len(TOTALS.failures)
    print(
        f"\ndamage suite: {cases} cases: {TOTALS.detected} CorruptionError, {TOTALS.intact} "
        f"exact data, {TOTALS.cut} a log prefix, {len(TOTALS.failures)} bad; slowest case "
        f"{TOTALS.slowest:.3f} s"
    )


def _run(
    tmp_path: Path,
    template: Template,
    cases: list[tuple[str, str, Damage]],
    *,
    allowed: list[dict[Any, Any]] | None = None,
    bloom: bool = False,
    interface_ok: Callable[[bytes], bool] | None = None,
) -> Outcome:
    """Run damage cases: (description, file name, damage). ``allowed`` adds states a case may
    legitimately read back (a log cut at a record boundary); ``bloom`` demands a rebuild and
    exact data; ``interface_ok`` says when an ``InterfaceError`` is a fair answer."""
    outcome = Outcome()
    expected = _ordered(template.expected)
    others = [_ordered(s) for s in allowed or []]
    probes = [*template.expected, *template.base, "never-written", 12345]
    for number, (what, name, damage) in enumerate(cases):
        case = tmp_path / f"case{number}"
        case.mkdir()
        damaged = damage(template.files[name])
        for file_name, data in template.files.items():
            (case / file_name).write_bytes(damaged if file_name == name else data)
        label = f"{template.name} {name}: {what}"
        started = time.perf_counter()
        try:
            back = _read_everything(case, probes, compact=number % 4 == 0)
        except halodb.CorruptionError:
            if bloom:
                outcome.failures.append(f"{label}: a damaged bloom filter raised CorruptionError")
            outcome.detected += 1
            continue
        except halodb.InterfaceError:
            if interface_ok is not None and interface_ok(damaged):
                outcome.detected += 1
            else:
                outcome.failures.append(f"{label}: InterfaceError instead of CorruptionError")
            continue
        except WrongData as exc:
            outcome.failures.append(f"{label}: {exc}")
            continue
        except Exception as exc:  # any other exception type is the finding
            outcome.failures.append(f"{label}: {type(exc).__name__}: {exc}")
            continue
        finally:
            outcome.slowest = max(outcome.slowest, time.perf_counter() - started)
        items = back.items
        if items not in (expected, *others):
            want = dict(expected)
            diff = [k for k in {*want, *dict(items)} if want.get(k) != dict(items).get(k)]
            outcome.failures.append(f"{label}: WRONG DATA read at keys {diff[:5]}")
            continue
        if back.check_error is not None:
            if bloom:
                outcome.failures.append(f"{label}: check() raised {back.check_error}")
            outcome.detected += 1
            continue
        if items == expected:
            outcome.intact += 1
        else:
            outcome.cut += 1
        if bloom and damaged != template.files[name]:
            index = int(name[1:4])
            if back.stats.partitions[index].bloom_rebuilds < 1:
                outcome.failures.append(f"{label}: damaged bloom filter was used, not rebuilt")
    return outcome


def _assert_ok(outcome: Outcome) -> None:
    for counter in ("detected", "intact", "cut"):
        setattr(TOTALS, counter, getattr(TOTALS, counter) + getattr(outcome, counter))
    TOTALS.failures += outcome.failures
    TOTALS.slowest = max(TOTALS.slowest, outcome.slowest)
    assert outcome.slowest < CASE_SECONDS, f"a case took {outcome.slowest:.2f} s"
    shown = "\n".join(outcome.failures[:15])
    assert not outcome.failures, f"{len(outcome.failures)} bad outcomes, first ones:\n{shown}"


# ---------------------------------------------------------------------------------------------
# Damage
# ---------------------------------------------------------------------------------------------


def flip(pos: int, mask: int) -> Damage:
    def damage(data: bytes) -> bytes:
        out = bytearray(data)
        out[pos] ^= mask
        return bytes(out)

    return damage


def truncate(size: int) -> Damage:
    return lambda data: data[:size]


def append(extra: bytes) -> Damage:
    return lambda data: data + extra


def put_page(page_no: int, page: bytes) -> Damage:
    def damage(data: bytes) -> bytes:
        return data[: page_no * PAGE] + page + data[(page_no + 1) * PAGE :]

    return damage


def swap_pages(a: int, b: int) -> Damage:
    def damage(data: bytes) -> bytes:
        pages = [data[i : i + PAGE] for i in range(0, len(data), PAGE)]
        pages[a], pages[b] = pages[b], pages[a]
        return b"".join(pages)

    return damage


def _flips(name: str, positions: list[int], rng: random.Random) -> list[tuple[str, str, Damage]]:
    return [(f"byte {p} flipped", name, flip(p, rng.randrange(1, 256))) for p in positions]


def _cuts_and_garbage(name: str, size: int, rng: random.Random) -> list[tuple[str, str, Damage]]:
    boundaries = range(PAGE, size, PAGE)
    points = {0, 1, 7, 8, 27, 28, 29, 71, 72, size // 3, size // 2, size - 1, size - 4}
    points |= {*boundaries, *(p + 1 for p in boundaries)}
    cuts = sorted(p for p in points if p < size)
    cases = [(f"cut at {p}", name, truncate(p)) for p in cuts]
    garbage = bytes(rng.randrange(256) for _ in range(100))
    for extra in (b"\x00", garbage, bytes(PAGE), garbage * 11):
        cases.append((f"{len(extra)} bytes appended", name, append(extra)))
    return cases


# ---------------------------------------------------------------------------------------------
# The cases, by file kind
# ---------------------------------------------------------------------------------------------

PARTS = ["p000", "p001"]


@pytest.mark.parametrize("part", PARTS)
def test_wal_damage(tmp_path: Path, template: Template, part: str) -> None:
    """Every byte of the log flipped: always detected (every byte is under a checksum)."""
    name = f"{part}.wal"
    data = template.files[name]
    outcome = _run(tmp_path, template, _flips(name, list(range(len(data))), random.Random(name)))
    _assert_ok(outcome)
    assert (outcome.detected, outcome.intact) == (len(data), 0), "a flipped log byte went unnoticed"


@pytest.mark.parametrize("part", PARTS)
def test_wal_cut_or_extended(tmp_path: Path, template: Template, part: str) -> None:
    """The log cut anywhere, or garbage appended. A cut reads back as a crash at that point
    would: this partition's records up to the cut (a batch whose part was cut is dropped
    everywhere), or a CorruptionError."""
    name = f"{part}.wal"
    rng = random.Random(name)
    data = template.files[name]
    cases = _cuts_and_garbage(name, len(data), rng)
    cases += [(f"cut at {p}", name, truncate(p)) for p in range(28, len(data), 3)]
    index = int(part[1:])
    mine = [i for i, (_, parts) in enumerate(template.log_ops) if index in parts]
    allowed = []
    for keep in range(len(mine)):
        # A batch whose part was cut is dropped everywhere, and the other partition's log is
        # cut at it too: that partition keeps its writes before the first dropped batch only.
        batches = [i for i in mine[keep:] if len(template.log_ops[i][1]) > 1]
        stop = batches[0] if batches else len(template.log_ops)
        state = dict(template.base)
        for i, (changes, parts) in enumerate(template.log_ops):
            if (mine.index(i) < keep) if index in parts else i < stop:
                _apply(state, changes)
        allowed.append(state)
    _assert_ok(_run(tmp_path, template, cases, allowed=allowed))


@pytest.mark.parametrize("part", PARTS)
def test_meta_page_damage(tmp_path: Path, template: Template, part: str) -> None:
    """Every meaningful byte of both meta pages flipped, each meta page zeroed."""
    name = f"{part}.tree"
    rng = random.Random(name + "meta")
    positions = [page * PAGE + i for page in (0, 1) for i in range(META_BYTES)]
    cases = _flips(name, positions, rng)
    cases += [(f"meta page {p} zeroed", name, put_page(p, bytes(PAGE))) for p in (0, 1)]
    cases += [("meta pages swapped", name, swap_pages(0, 1))]
    _assert_ok(_run(tmp_path, template, cases))


@pytest.mark.parametrize("part", PARTS)
def test_tree_page_damage(tmp_path: Path, template: Template, part: str) -> None:
    """Sampled bytes of tree pages flipped, the file cut, every page zeroed, pages swapped."""
    name = f"{part}.tree"
    rng = random.Random(name)
    data = template.files[name]
    pages = len(data) // PAGE
    positions = (
        list(range(2 * PAGE, len(data)))
        if STRESS
        else rng.sample(range(2 * PAGE, len(data)), min(200, len(data) - 2 * PAGE))
    )
    cases = _flips(name, positions, rng) + _cuts_and_garbage(name, len(data), rng)
    cases += [(f"page {p} zeroed", name, put_page(p, bytes(PAGE))) for p in range(2, pages)]
    pairs = {(p, p + 1) for p in range(2, pages - 1)} | {
        tuple(sorted(rng.sample(range(2, pages), 2))) for _ in range(10)
    }
    cases += [(f"pages {a} and {b} swapped", name, swap_pages(a, b)) for a, b in sorted(pairs)]
    outcome = _run(tmp_path, template, cases)
    _assert_ok(outcome)
    assert outcome.detected > len(cases) // 2


@pytest.mark.parametrize("part", PARTS)
def test_stale_pages(tmp_path: Path, template: Template, part: str) -> None:
    """A page put back as it was before the last flush: valid on its own, but stale."""
    name = f"{part}.tree"
    old = template.old_trees[name]
    new = template.files[name]
    cases = []
    for p in range(min(len(old), len(new)) // PAGE):
        page = old[p * PAGE : (p + 1) * PAGE]
        if page != new[p * PAGE : (p + 1) * PAGE]:
            cases.append((f"page {p} from before the last flush", name, put_page(p, page)))
    assert len(cases) >= 3
    cases.append(("the whole file from before the last flush", name, lambda _: old))
    outcome = _run(tmp_path, template, cases)
    _assert_ok(outcome)
    assert outcome.detected >= 1


@pytest.mark.parametrize("part", PARTS)
def test_bloom_damage_is_rebuilt(tmp_path: Path, template: Template, part: str) -> None:
    """A damaged, cut, extended, stale or missing bloom filter is rebuilt; data stays exact."""
    name = f"{part}.bloom"
    rng = random.Random(name)
    data = template.files[name]
    sampled = range(len(data)) if STRESS else rng.sample(range(len(data)), 150)
    positions = sorted({*range(fmt.BLOOM_HEADER.size), *sampled})
    cases = _flips(name, positions, rng) + _cuts_and_garbage(name, len(data), rng)
    cases.append(("all zero", name, lambda d: bytes(len(d))))
    other = "p001.bloom" if part == "p000" else "p000.bloom"
    cases.append(("the other partition's filter", name, lambda _: template.files[other]))
    _assert_ok(_run(tmp_path, template, cases, bloom=True))


@pytest.fixture(scope="module")
def run_template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    """The store closed cleanly with its last writes in run files."""
    return _build(tmp_path_factory.mktemp("run-template"), "run", abandoned=False)


@pytest.mark.parametrize("part", PARTS)
def test_run_damage(tmp_path: Path, run_template: Template, part: str) -> None:
    """Bytes of a run file flipped (every header byte, sampled body bytes), the file cut, or
    garbage appended: always detected (its header and body are under checksums, its size is
    in its header), by the open or by the first read that decodes it."""
    template = run_template
    name = f"{part}.run"
    rng = random.Random(name)
    data = template.files[name]
    body = range(fmt.RUN_HEADER.size, len(data))
    sampled = body if STRESS else rng.sample(body, min(150, len(body)))
    positions = sorted({*range(fmt.RUN_HEADER.size), *sampled})
    cases = _flips(name, positions, rng) + _cuts_and_garbage(name, len(data), rng)
    cases.append(("all zero", name, lambda d: bytes(len(d))))
    other = "p001.run" if part == "p000" else "p000.run"
    cases.append(("the other partition's run", name, lambda _: template.files[other]))
    outcome = _run(tmp_path, template, cases)
    _assert_ok(outcome)
    assert (outcome.detected, outcome.intact) == (len(cases), 0), "run damage went unnoticed"


def test_a_missing_run_file_is_detected(tmp_path: Path, run_template: Template) -> None:
    """A run file lost (deleted by hand): its writes are in no log any more, so the open must
    refuse the store rather than show it without them."""
    files = dict(run_template.files)
    del files["p000.run"]
    _write(tmp_path, files)
    with pytest.raises(halodb.CorruptionError, match=r"p000\.run"):
        halodb.open(tmp_path)


def test_missing_bloom_file_is_rebuilt(tmp_path: Path, template: Template) -> None:
    files = dict(template.files)
    del files["p000.bloom"]
    _write(tmp_path, files)
    back = _read_everything(tmp_path, list(template.expected))
    assert (back.items, back.check_error) == (_ordered(template.expected), None)
    assert back.stats.partitions[0].bloom_rebuilds == 1


def test_manifest_damage(tmp_path: Path, template: Template) -> None:
    """The manifest: flipped bytes, cuts, garbage. A manifest that no longer starts with the
    HaloDB magic may be refused as "not a store" (InterfaceError); anything else that is
    damaged must be a CorruptionError."""
    name = fmt.MANIFEST_NAME
    rng = random.Random(name)
    data = template.files[name]
    cases = _flips(name, list(range(len(data))), rng) + _cuts_and_garbage(name, len(data), rng)
    outcome = _run(
        tmp_path, template, cases, interface_ok=lambda d: not d.startswith(fmt.MANIFEST_MAGIC)
    )
    _assert_ok(outcome)


def test_files_swapped_between_partitions(tmp_path: Path, template: Template) -> None:
    def contents_of(name: str) -> Damage:
        return lambda _: template.files[name]

    cases = []
    for kind in ("wal", "tree"):
        a, b = f"p000.{kind}", f"p001.{kind}"
        cases.append((f"holds {b}", a, contents_of(b)))
    _assert_ok(_run(tmp_path, template, cases))


def _write(path: Path, files: dict[str, bytes]) -> None:
    path.mkdir(exist_ok=True)
    for name, data in files.items():
        (path / name).write_bytes(data)


def test_undamaged_copy_reads_back_exactly(tmp_path: Path, template: Template) -> None:
    """The baseline: the harness itself accepts an undamaged copy (so "intact" means intact)."""
    outcome = _run(tmp_path, template, [("nothing", "HALODB", lambda d: d)])
    assert (outcome.intact, outcome.failures) == (1, [])


def test_manifest_with_another_hash_seed(tmp_path: Path, template: Template) -> None:
    """A manifest whose hash seed no longer matches the data (checksum recomputed, so it looks
    valid) routes keys to partitions that do not hold them: ``check()`` must say so."""
    data = bytearray(template.files[fmt.MANIFEST_NAME])
    fields = list(fmt.MANIFEST.unpack_from(data))
    fields[6] ^= 0x5A5A5A5A  # hash_seed
    body = fmt.MANIFEST.pack(*fields)
    files = dict(template.files)
    files[fmt.MANIFEST_NAME] = body[:-4] + fmt.U32.pack(fmt.crc(body[:-4]))
    _write(tmp_path, files)
    with pytest.raises(halodb.CorruptionError):
        db = halodb.open(tmp_path)
        try:
            db.check()
        finally:
            _abandon(db)


def test_check_finds_a_key_in_the_wrong_partition(tmp_path: Path, template: Template) -> None:
    """A key stored in a partition it does not route to (what a change of the routing function
    does to every older store) is shown by iteration but missed by point reads. Nothing else
    is wrong with the files, so only ``check()`` can notice: it must."""
    _write(tmp_path, template.files)
    db = halodb.open(tmp_path)
    stray = next(
        k for k in (f"stray {i}" for i in range(1000)) if halodb.testing.partition_of(db, k)
    )
    _abandon(db)
    pager = Pager(FileSystem(), str(tmp_path / "p000.tree"), 0, PAGE, 64, False)
    BTree(pager).apply(
        [(encode_key(stray), b"\x01in partition 0")],
        clear=False,
        flushed_seq=pager.meta.flushed_seq,
    )
    pager.close()
    db = halodb.open(tmp_path)
    try:
        assert dict(db.items())[stray] == "in partition 0"
        assert db.get(stray) is None, "the stray key is found after all: the test is stale"
        with pytest.raises(halodb.CorruptionError):
            db.check()
    finally:
        _abandon(db)


def test_the_damage_suite_catches_a_log_checksum_that_leaves_the_header_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The suite bites: a record checksum over the header and a header checksum put every byte
    of a log under a checksum. Planted: no checksum covers the header (the record checksum
    covers the payload only, the header checksum is written as 0 and never read). The flips of
    ``test_wal_damage`` then find header bytes whose damage nobody notices."""

    def frame(rtype: int, seq: int, payload: bytes) -> bytes:
        tail = fmt.WAL_RECORD_HEADER_TAIL.pack(len(payload), rtype, seq)
        return fmt.U32.pack(fmt.crc(payload)) + fmt.U32.pack(0) + tail + payload

    def frame_put(seq: int, key: bytes, value: bytes) -> bytes:
        return frame(fmt.REC_WRITE, seq, halodb.wal.encode_put(key, value))

    for module in (halodb.wal, halodb.partition, halodb.engine.engine, halodb.engine.commit):
        monkeypatch.setattr(module, "frame", frame)
    for module in (halodb.wal, halodb.engine.engine):
        monkeypatch.setattr(module, "frame_put", frame_put)
    plant(
        monkeypatch,
        halodb.wal,
        "read_log",
        ("_crc(data[pos + 8 : pos + rsize]) != head_crc", "False  # planted"),
        ("_crc(data[pos + 4 : end]) != rec_crc", "_crc(data[pos + rsize : end]) != rec_crc"),
    )
    monkeypatch.setattr(halodb.partition, "read_log", halodb.wal.read_log)
    template = _build(tmp_path / "template", "abandoned", abandoned=True)
    name = "p000.wal"
    data = template.files[name]
    outcome = _run(tmp_path, template, _flips(name, list(range(len(data))), random.Random(name)))
    assert outcome.intact or outcome.failures, "the planted bug went unnoticed"

"""Fuzzing a store's files: arbitrary byte mutations, then an open and a full read.

A small valid store (two partitions, 1 KiB pages; a two-level tree, an overflow chain, a free
list, bloom filters, and records left only in the logs, as a crash leaves them) has its files
mutated: random bytes written, bits flipped, length-like values (2^16, 2^31, 2^32-1, 2^63, ...)
written at random offsets, ranges zeroed, cut, inserted, or spliced in from any of its files.
Then it is opened read-only and writable and read entirely (iteration both ways, a point read
of every key, ``len()``, ``check()``, ``stats()``, and, writable, one write, a flush and a
close), in a forked child under a 512 MiB address-space limit with a timeout (see
``test_hostile.run_isolated``).

Two targets:

- **Plain mutations** (checksums left as the mutation leaves them). What ``docs/format.md``
  and ``docs/design.md`` promise for damaged files (every byte that means something is under a
  checksum, a torn log tail is a crash at that point, the bloom filter is a cache): the outcome
  is ``CorruptionError``, or exactly the right data, where "right" means the store's content
  with each partition's log kept up to some record (a cut log reads as a crash there would:
  a batch with a part cut is dropped everywhere). Also fair: ``InterfaceError`` when the
  manifest no longer starts with the HaloDB magic, and ``NotSupportedError`` when a manifest
  of the wrong length carries a version above the current one.
- **Resealed mutations**: the same mutations, then every checksum recomputed where the
  original file had one (each log record at its original offset, every tree page of the
  committed tree, the meta page, the bloom and manifest headers), so the mutated bytes reach
  the parsers. No data can be promised then; what is promised is robustness: the outcome is
  ``CorruptionError`` (or the fair errors above) or some data, never another exception type,
  a hang, a crash, ``MemoryError`` or ``RecursionError``.

CI runs a few hundred examples of each, derandomized (the same examples every run, on a store
built with a fixed hash seed). ``HALODB_FUZZ_SECONDS=N`` runs both targets with fresh seeds
for N seconds and reports how many inputs were tried and the seeds to replay
(``HALODB_FUZZ_SEED``). ``PYTHONPATH=tests python tests/reliability/test_fuzz.py`` runs the
targets under atheris, a coverage-guided fuzzer, when it is installed (``pip install atheris``;
libFuzzer flags pass through, e.g. ``-max_total_time=60``).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from test_hostile import (
    Template,
    TreeImage,
    _full_read,
    build_template,
    ordered,
    parse_log,
    run_isolated,
)

import halodb
from halodb import format as fmt

EXAMPLES = int(os.environ.get("HALODB_FUZZ_EXAMPLES", "250"))
"""Examples per target in the CI-sized run."""
TIMEOUT = 20.0
"""A child still running after this long is a hang."""

FILES = (
    fmt.MANIFEST_NAME,
    fmt.LOCK_NAME,
    "p000.wal",
    "p001.wal",
    "p000.tree",
    "p001.tree",
    "p000.bloom",
    "p001.bloom",
)
LENGTHS = (
    0,
    1,
    2,
    0x7F,
    0x80,
    0xFF,
    0x100,
    0x3F0,
    0x400,
    0x7FFF,
    0x8000,
    0xFFFF,
    0x1_0000,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFF,
    0x1_0000_0000,
    1 << 63,
    (1 << 64) - 1,
)
"""Values that length and count fields find hard: boundaries of every width."""

Mutation = tuple[Any, ...]

_file = st.sampled_from(FILES)
_offset = st.integers(0, 1 << 16)
MUTATION = st.one_of(
    st.tuples(st.just("bytes"), _file, _offset, st.binary(min_size=1, max_size=16)),
    st.tuples(
        st.just("length"), _file, _offset, st.sampled_from((1, 2, 4, 8)), st.sampled_from(LENGTHS)
    ),
    st.tuples(st.just("flip"), _file, _offset, st.integers(0, 7)),
    st.tuples(st.just("zero"), _file, _offset, st.integers(1, 2048)),
    st.tuples(st.just("cut"), _file, _offset),
    st.tuples(st.just("insert"), _file, _offset, st.binary(min_size=1, max_size=64)),
    st.tuples(
        st.just("splice"),
        _file,
        _offset,
        _file,
        _offset,
        st.integers(1, 2048),
        st.booleans(),
    ),
)
"""One mutation: (kind, file, offset, ...); offsets wrap around the file's length."""
MUTATIONS = st.lists(MUTATION, min_size=1, max_size=4)


def mutate(files: dict[str, bytes], mutations: list[Mutation]) -> dict[str, bytes]:
    """The files with ``mutations`` applied in order."""
    out = {name: bytearray(data) for name, data in files.items()}
    for kind, name, offset, *rest in mutations:
        data = out[name]
        at = offset % (len(data) + 1)
        if kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = rest[0]
        elif kind == "splice":
            source, source_at, size, insert = rest
            src = out[source]
            piece = bytes(src[source_at % max(len(src), 1) :][:size])
            data[at : at if insert else at + len(piece)] = piece
        elif not data:
            continue
        else:
            at = offset % len(data)
            if kind == "bytes":
                data[at : at + len(rest[0])] = rest[0]
            elif kind == "length":
                width, value = rest
                data[at : at + width] = (value & ((1 << 8 * width) - 1)).to_bytes(width, "little")
            elif kind == "flip":
                data[at] ^= 1 << rest[0]
            elif kind == "zero":
                data[at : at + rest[0]] = bytes(len(data[at : at + rest[0]]))
    return {name: bytes(data) for name, data in out.items()}


def reseal(original: dict[str, bytes], files: dict[str, bytes]) -> dict[str, bytes]:
    """Recompute every checksum where the original files had one (see the module docstring),
    so mutated bytes get past the checksums and reach the parsers."""
    out = dict(files)
    manifest = bytearray(out[fmt.MANIFEST_NAME])
    if len(manifest) >= fmt.MANIFEST.size:
        fmt.U32.pack_into(manifest, 48, fmt.crc(manifest[:48]))
    out[fmt.MANIFEST_NAME] = bytes(manifest)
    for index in (0, 1):
        name = f"p00{index}.wal"
        log = bytearray(out[name])
        header_size = fmt.WAL_HEADER.size
        if len(log) >= header_size:
            fmt.U32.pack_into(log, header_size - 4, fmt.crc(log[: header_size - 4]))
        _, records = parse_log(original[name])
        pos = header_size
        starts = []
        for record in records:
            starts.append(pos)
            pos += fmt.WAL_RECORD.size + len(record.payload)
        for start in starts:
            if start + fmt.WAL_RECORD.size > len(log):
                break
            fmt.U32.pack_into(log, start + 4, fmt.crc(log[start + 8 : start + 21]))
            end = start + 21 + fmt.U32.unpack_from(log, start + 8)[0]
            if end <= len(log):
                fmt.U32.pack_into(log, start, fmt.crc(log[start + 4 : end]))
        out[name] = bytes(log)

        name = f"p00{index}.tree"
        img = TreeImage(original[name])
        img.data = bytearray(out[name])
        img.reload_meta()
        img.reseal()
        out[name] = bytes(img.data)

        name = f"p00{index}.bloom"
        bloom = bytearray(out[name])
        if len(bloom) >= fmt.BLOOM_HEADER.size:
            fmt.U32.pack_into(bloom, 40, fmt.crc(bloom[48:]))
            fmt.U32.pack_into(bloom, 44, fmt.crc(bloom[:44]))
        out[name] = bytes(bloom)
    return out


def fair_errors(files: dict[str, bytes]) -> tuple[type[Exception], ...]:
    """The errors other than ``CorruptionError`` that the manifest's bytes make fair."""
    manifest = files[fmt.MANIFEST_NAME]
    fair: list[type[Exception]] = []
    if not manifest.startswith(fmt.MANIFEST_MAGIC):
        fair.append(halodb.InterfaceError)  # "not a HaloDB store"
    if len(manifest) >= 10 and fmt.U16.unpack_from(manifest, 8)[0] > fmt.FORMAT_VERSION:
        fair.append(halodb.NotSupportedError)  # a newer format version
    if manifest[32:48].rstrip(b"\x00") != b"halo1":
        fair.append(halodb.InterfaceError)  # "open it with the codec it was created with"
    return tuple(fair)


def cut_states(tpl: Template) -> list[list[tuple[Any, Any]]]:
    """Every content a crash could leave: each log kept up to some record."""
    states = []
    for cut0, cut1 in itertools.product(range(tpl.records(0) + 1), range(tpl.records(1) + 1)):
        state = ordered(tpl.state(cuts={0: cut0, 1: cut1}))
        if state not in states:
            states.append(state)
    return states


# ---------------------------------------------------------------------------------------------
# The fuzz targets
# ---------------------------------------------------------------------------------------------


class Fuzz:
    """A template store, its allowed contents, and a scratch directory for the examples."""

    def __init__(self, root: Path) -> None:
        self.template = build_template(root / "template", mine=60, theirs=20, big=3000)
        self.states = cut_states(self.template)
        self.scratch = root
        self.tried = 0

    def run(self, mutations: list[Mutation], *, resealed: bool) -> tuple[str, str]:
        """Mutate a copy of the template, open it and read it all in a child; the verdict."""
        self.tried += 1
        files = mutate(self.template.files, mutations)
        if resealed:
            files = reseal(self.template.files, files)
        path = Path(tempfile.mkdtemp(dir=self.scratch))
        try:
            for name, data in files.items():
                (path / name).write_bytes(data)
            verdict, detail, _ = run_isolated(
                _full_read, str(path), self.states, fair_errors(files), timeout=TIMEOUT
            )
        finally:
            shutil.rmtree(path, ignore_errors=True)
        return verdict, detail

    def check_plain(self, mutations: list[Mutation]) -> None:
        """Plain mutations: ``CorruptionError`` (or a fair error) or exactly the right data."""
        verdict, detail = self.run(mutations, resealed=False)
        assert verdict in ("ok", "detected"), f"{verdict}: {detail}"

    def check_resealed(self, mutations: list[Mutation]) -> None:
        """Resealed mutations: ``CorruptionError`` (or a fair error) or some data; nothing
        else."""
        verdict, detail = self.run(mutations, resealed=True)
        assert verdict in ("ok", "detected", "wrong"), f"{verdict}: {detail}"


def _scratch_root() -> Path:
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="halodb-fuzz-", dir=base))


@pytest.fixture(scope="module")
def fuzz() -> Iterator[Fuzz]:
    root = _scratch_root()
    try:
        yield Fuzz(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


CI = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    phases=(Phase.explicit, Phase.generate, Phase.shrink),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@CI
@given(mutations=MUTATIONS)
def test_fuzz_plain_mutations(fuzz: Fuzz, mutations: list[Mutation]) -> None:
    """Damaged files without recomputed checksums: ``CorruptionError`` or exactly the right
    data (a log cut at a record boundary reads as a crash there)."""
    fuzz.check_plain(mutations)


@CI
@given(mutations=MUTATIONS)
def test_fuzz_resealed_mutations(fuzz: Fuzz, mutations: list[Mutation]) -> None:
    """Damaged files with their checksums recomputed: ``CorruptionError`` or some data, never
    another exception, a hang or a crash."""
    fuzz.check_resealed(mutations)


def test_the_template_reads_back_exactly(fuzz: Fuzz) -> None:
    """The harness itself: no mutation, plain or resealed, reads back exactly."""
    files = fuzz.template.files
    assert reseal(files, files) == files
    assert fuzz.run([("bytes", "LOCK", 0, b"\x00")], resealed=False)[0] == "ok"
    assert fuzz.run([("bytes", "LOCK", 0, b"\x00")], resealed=True)[0] == "ok"


def test_mutations_do_what_they_say() -> None:
    files = {name: bytes(range(10)) for name in FILES}
    out = mutate(
        files,
        [
            ("bytes", "LOCK", 12, b"\xff\xfe"),  # offset 12 wraps to 2
            ("length", "p000.wal", 3, 4, 0x1_0000),
            ("flip", "p001.wal", 0, 7),
            ("zero", "p000.tree", 8, 100),
            ("cut", "p001.tree", 4),
            ("insert", "p000.bloom", 0, b"ab"),
            ("splice", "p001.bloom", 2, "HALODB", 5, 3, False),
        ],
    )
    assert out["LOCK"] == b"\x00\x01\xff\xfe" + bytes(range(4, 10))
    assert out["p000.wal"] == bytes(range(3)) + b"\x00\x00\x01\x00" + bytes(range(7, 10))
    assert out["p001.wal"] == b"\x80" + bytes(range(1, 10))
    assert out["p000.tree"] == bytes(range(8)) + b"\x00\x00"
    assert out["p001.tree"] == bytes(range(4))
    assert out["p000.bloom"] == b"ab" + bytes(range(10))
    assert out["p001.bloom"] == b"\x00\x01\x05\x06\x07" + bytes(range(5, 10))
    assert out[fmt.MANIFEST_NAME] == files[fmt.MANIFEST_NAME]


# ---------------------------------------------------------------------------------------------
# On demand: HALODB_FUZZ_SECONDS=N
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(
    not os.environ.get("HALODB_FUZZ_SECONDS"), reason="on demand: set HALODB_FUZZ_SECONDS=N"
)
def test_fuzz_for_a_while(fuzz: Fuzz, capsys: pytest.CaptureFixture[str]) -> None:
    """Both targets, round after round (100 inputs each) of fresh seeds, for
    ``HALODB_FUZZ_SECONDS`` seconds. ``HALODB_FUZZ_SEED`` sets the first round's seed (each
    round adds one), to replay a run. A failing round is shrunk, reported with its seed, and
    the run goes on; the test fails at the end if any round did."""
    seconds = float(os.environ["HALODB_FUZZ_SECONDS"])
    first = int(os.environ.get("HALODB_FUZZ_SEED") or random.SystemRandom().randrange(1 << 32))
    deadline = time.monotonic() + seconds
    started = time.monotonic()
    tried = {"plain": 0, "resealed": 0}
    failures: list[str] = []

    def say(text: str) -> None:
        with capsys.disabled():
            print(text, flush=True)

    def make_round(target: str, round_seed: int) -> Any:
        check = fuzz.check_plain if target == "plain" else fuzz.check_resealed

        @seed(round_seed)
        @settings(CI, derandomize=False, max_examples=100)
        @given(mutations=MUTATIONS)
        def one_round(mutations: list[Mutation]) -> None:
            tried[target] += 1
            check(mutations)

        return one_round

    say(f"\nfuzzing for {seconds:.0f} s from HALODB_FUZZ_SEED={first}")
    for round_seed in itertools.count(first):
        for target in ("plain", "resealed"):
            try:
                make_round(target, round_seed)()
            except Exception as exc:
                notes = "\n".join(getattr(exc, "__notes__", []))
                failures.append(f"HALODB_FUZZ_SEED={round_seed} {target}: {exc}\n{notes}")
                say(f"FAILED: {failures[-1]}")
        say(
            f"seed {round_seed}: {tried['plain']} plain and {tried['resealed']} resealed inputs "
            f"tried in {time.monotonic() - started:.0f} s, {len(failures)} failing rounds"
        )
        if time.monotonic() > deadline:
            break
    assert not failures, f"{len(failures)} failing rounds:\n" + "\n".join(failures)


# ---------------------------------------------------------------------------------------------
# On demand, coverage-guided: PYTHONPATH=tests python tests/reliability/test_fuzz.py [flags]
# ---------------------------------------------------------------------------------------------


def _atheris_main() -> None:  # pragma: no cover - needs atheris
    """Run both targets under atheris, in-process (libFuzzer sees the coverage; its
    ``-timeout`` and ``-rss_limit_mb`` catch hangs and memory blow-ups)."""
    try:
        import atheris
    except ImportError:
        sys.exit("atheris is not installed: pip install atheris")
    # In-process, so the address-space limit is the whole fuzzer's: a target that allocates
    # past it gets MemoryError (a failure) instead of swapping the machine.
    limit = int(os.environ.get("HALODB_FUZZ_AS_MB", "1024")) << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    root = _scratch_root()
    atexit.register(shutil.rmtree, root, True)  # libFuzzer ends the process itself
    fuzz = Fuzz(root)
    kinds = ("bytes", "length", "flip", "zero", "cut", "insert", "splice")

    def one_input(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        resealed = fdp.ConsumeBool()
        mutations: list[Mutation] = []
        for _ in range(fdp.ConsumeIntInRange(1, 4)):
            kind = kinds[fdp.ConsumeIntInRange(0, len(kinds) - 1)]
            name = FILES[fdp.ConsumeIntInRange(0, len(FILES) - 1)]
            offset = fdp.ConsumeIntInRange(0, 1 << 16)
            if kind == "bytes":
                mutations.append((kind, name, offset, fdp.ConsumeBytes(16) or b"\x00"))
            elif kind == "length":
                width = (1, 2, 4, 8)[fdp.ConsumeIntInRange(0, 3)]
                value = LENGTHS[fdp.ConsumeIntInRange(0, len(LENGTHS) - 1)]
                mutations.append((kind, name, offset, width, value))
            elif kind == "flip":
                mutations.append((kind, name, offset, fdp.ConsumeIntInRange(0, 7)))
            elif kind == "zero":
                mutations.append((kind, name, offset, fdp.ConsumeIntInRange(1, 2048)))
            elif kind == "cut":
                mutations.append((kind, name, offset))
            elif kind == "insert":
                mutations.append((kind, name, offset, fdp.ConsumeBytes(64) or b"\x00"))
            else:
                source = FILES[fdp.ConsumeIntInRange(0, len(FILES) - 1)]
                mutations.append(
                    (
                        kind,
                        name,
                        offset,
                        source,
                        fdp.ConsumeIntInRange(0, 1 << 16),
                        fdp.ConsumeIntInRange(1, 2048),
                        fdp.ConsumeBool(),
                    )
                )
        files = mutate(fuzz.template.files, mutations)
        if resealed:
            files = reseal(fuzz.template.files, files)
        path = Path(tempfile.mkdtemp(dir=root))
        try:
            for name, content in files.items():
                (path / name).write_bytes(content)
            verdict, detail = _full_read(str(path), fuzz.states, fair_errors(files))
        finally:
            shutil.rmtree(path, ignore_errors=True)
        allowed = ("ok", "detected", "wrong") if resealed else ("ok", "detected")
        if verdict not in allowed:
            raise AssertionError(f"{verdict}: {detail}\nmutations: {mutations!r}")

    atheris.instrument_all()
    with contextlib.suppress(SystemExit):
        atheris.Setup(sys.argv, one_input)
        atheris.Fuzz()
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    _atheris_main()

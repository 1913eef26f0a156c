"""Simulated power cuts at every step of every short workload, in every durability mode.

A workload is a sequence of operations drawn from ``put``, ``big`` (a value larger than a page,
kept in overflow pages once flushed), ``delete``, ``overwrite``, ``batch`` (across both
partitions), ``flush``, ``compact`` (which has pages to move) and ``reopen`` (close, open
again), run on a store that already holds data in its trees and its logs. Every sequence of up to 2 operations runs in CI; ``HALODB_STRESS=1``
runs every sequence of up to 3. The store lives on :class:`powersim.SimFS`, which knows what the
disk holds: the power is cut before every write, truncate, fsync, create, rename, unlink and
directory sync, and each cut gives many crash images (pending data lost, kept, torn, reordered;
pending names reverted; see ``powersim``). Each distinct image is opened as a store, and also cut
again during its own recovery.

What is promised after any power cut (README, "Durability"; design.md):

- the store opens, ``check()`` is clean, and a second open finds what the first did;
- ``"full"``: every acknowledged write is there;
- ``"normal"`` and ``"fast"``: each partition holds every write up to some point (at least every
  write acknowledged before a ``flush()`` or ``close()`` that returned);
- in every mode a batch is all or nothing, and nothing that was never written appears.

The harness is shown to bite: each ``test_harness_catches_*`` plants a bug in the engine (a skipped
fsync, a skipped directory fsync, a rename before its fsync, a log reader that takes a lost sector
for damage, a recovery that keeps the writes after a dropped batch, a meta page written before its
pages, a page reused while the committed tree still refers to it, a frozen memtable's log dropped
before its merge is durable, a run file deleted before its merge is durable, a tree file cut before the meta page that stops counting its end is
durable, a compaction that moves a page over one still referenced) and requires the harness to
report it.

``HALODB_SEED`` (default 0) seeds the few sampled variants; it and the configuration are printed.
A failure names the mode, the workload, the crash point and the variant; rerun it with
``pytest "tests/reliability/test_powerloss.py::test_power_cut_at_every_step_keeps_the_promise[MODE-OPS]"``.
"""  # noqa: E501

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import halodb
import halodb.engine.recovery
import halodb.partition
import halodb.testing
import halodb.wal
from halodb import format as fmt
from halodb import testing
from halodb.btree.compact import Compaction
from halodb.pager import Pager
from halodb.vfs import FileSystem
from halodb.wal import LogWriter
from support.powersim import (
    BATCH_GAP,
    HASH_SEED,
    MODES,
    NESTED,
    OPS,
    OPTIONS,
    SECTOR,
    STORE,
    Report,
    Run,
    SimFS,
    Violation,
    base,
    workloads,
)
from support.stores import DurabilityName, plant

STRESS = os.environ.get("HALODB_STRESS") == "1"
SEED = int(os.environ.get("HALODB_SEED", "0"))
MAX_OPS = 3 if STRESS else 2
WORKLOADS = workloads(MAX_OPS)

_REPORTS: dict[tuple[str, tuple[str, ...]], Report] = {}


def report_of(mode: DurabilityName, workload: tuple[str, ...]) -> Report:
    """The run of ``workload`` in ``mode`` (each runs once per session)."""
    key = (mode, workload)
    if key not in _REPORTS:
        _REPORTS[key] = Run(mode, workload, seed=SEED).execute()
    return _REPORTS[key]


@pytest.fixture(scope="module", autouse=True)
def _announce(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print the seed and configuration first, the size of what ran last."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def say(line: str) -> None:
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            print(f"\n{line}")

    say(
        f"power cuts: HALODB_SEED={SEED} HALODB_STRESS={int(STRESS)}: {len(WORKLOADS)} "
        f"workloads of 1 to {MAX_OPS} of {OPS} x modes {MODES}; options {OPTIONS}"
    )
    yield
    reports = list(_REPORTS.values())
    if reports:
        say(
            f"power cuts: {len(reports)} runs, {sum(r.points for r in reports)} crash points, "
            f"{sum(r.variants for r in reports)} crash images judged (distinct per point), "
            f"{sum(r.images for r in reports)} distinct images recovered, each also cut during "
            f"its recovery ({len(NESTED)} more distinct images)"
        )


def _show(violations: list[Violation], limit: int = 8) -> str:
    lines = [str(v) for v in violations[:limit]]
    if len(violations) > limit:
        lines.append(f"... and {len(violations) - limit} more")
    return "\n".join(lines)


# -- the suite ---------------------------------------------------------------------------------


@pytest.mark.parametrize("workload", WORKLOADS, ids="+".join)
@pytest.mark.parametrize("mode", MODES)
def test_power_cut_at_every_step_keeps_the_promise(
    mode: DurabilityName, workload: tuple[str, ...]
) -> None:
    """Whatever the moment of the cut and whatever part of the unsynced data reached the disk,
    the store opens clean and holds a state its mode promises (module docstring)."""
    report = report_of(mode, workload)
    broken = [v for found in report.violations.values() for v in found]
    assert not broken, f"{len(broken)} broken promises (HALODB_SEED={SEED}):\n{_show(broken)}"


# -- the simulated disk itself -----------------------------------------------------------------


def test_the_simulated_disk_loses_exactly_what_was_not_synced() -> None:
    """The model the suite relies on: an fsync makes a file's bytes durable but not its name, a
    directory sync makes names durable, a torn write keeps a prefix, and a power cut may keep
    a later write of a file without an earlier one only when they share no sector."""
    fs = SimFS()
    fs.mkdir("/d")
    fs.sync_dir("/")
    images: dict[str, dict[str, bytes]] = {}

    def cut(_: str) -> None:
        images.clear()
        for variant, _family, image in fs.crash_images(random.Random(0)):
            images[variant] = dict(image.files)

    a = fs.open("/d/a", create=True)
    a.write_at(0, b"synced")
    a.sync()
    fs.hook = cut
    a.write_at(6, b"+more")  # pending
    fs.sync_dir("/d")  # the cut before it: the name of a is not durable yet
    assert images["lost"] == {}  # created, fsynced, but its name never reached the disk
    assert images["kept"] == {"/d/a": b"synced+more"}
    assert images["data-lost"] == {"/d/a": b"synced"}
    assert images["torn a: 2 of the 5 bytes at 6"] == {"/d/a": b"synced+m"}
    a.write_at(SECTOR * 2, b"far")
    fs.rename("/d/a", "/d/b")  # the cut before it: two pending writes in different sectors
    assert images["lost"] == {"/d/a": b"synced"}
    assert images[
        "reorder a: of 2 pending writes only [1] reached the disk (first byte lost: 6)"
    ] == {"/d/a": b"synced" + bytes(SECTOR * 2 - 6) + b"far"}
    assert images["zero tail a: size 1027 on disk, sectors from 0 lost (first byte lost: 6)"] == {
        "/d/a": b"synced" + bytes(SECTOR * 2 - 3)
    }
    fs.unlink("/d/b")  # the cut before it: the rename is pending
    assert set(images["lost"]) == {"/d/a"} and set(images["kept"]) == {"/d/b"}
    fs.sync_dir("/d")
    c = fs.open("/d/c", create=True)
    c.write_at(0, b"x")
    c.write_at(1, b"y")
    c.sync()  # the cut before it: two pending writes in one sector, never reordered
    assert images["lost"] == {}
    assert images["kept"] == {"/d/c": b"xy"}
    assert not [name for name in images if name.startswith("reorder")]
    fs.hook = None


# -- the harness bites: planted bugs it must report -------------------------------------------


def caught(
    monkeypatch: pytest.MonkeyPatch,
    mode: DurabilityName,
    workload: tuple[str, ...],
    plant_bug: Callable[[], None],
    *,
    fresh_base: bool = False,
) -> list[Violation]:
    """Run ``workload`` in ``mode`` without, then with, the bug: the run without it must be
    clean (so whatever is found is the bug's doing); returns what the run with it found."""
    clean = Run(mode, workload, seed=SEED, cache={}, fresh_base=fresh_base).execute()
    assert clean.violations == {}, _show([v for f in clean.violations.values() for v in f])
    plant_bug()
    bugged = Run(mode, workload, seed=SEED, cache={}, fresh_base=fresh_base).execute()
    monkeypatch.undo()
    return [v for found in bugged.violations.values() for v in found]


def test_harness_catches_a_skipped_log_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """In "full" mode a put returns once its log is fsynced; if group commit forgets the
    fsync, the put is acknowledged while only in the page cache and a power cut loses it."""

    def bug() -> None:
        plant(monkeypatch, LogWriter, "sync_to", ("self.file.sync()", "pass  # planted"))

    found = caught(monkeypatch, "full", ("put",), bug)
    assert any("lost a write promised durable (op 0)" in v.problem for v in found), _show(found)


def test_harness_catches_a_skipped_meta_page_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flush commits the tree with two fsyncs, then replaces the log by one that starts after
    the flushed writes. Without the second fsync the new meta page may be lost while the new
    log is not: the tree no longer holds what the log assumes it does."""

    def bug() -> None:
        plant(
            monkeypatch,
            Pager,
            "commit",
            ("self.file.sync()\n    self.meta = meta", "self.meta = meta"),
        )

    found = caught(monkeypatch, "normal", ("put", "flush"), bug)
    assert any("newest meta page is damaged" in v.problem for v in found), _show(found)


def test_harness_catches_a_skipped_directory_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """``write_new`` fsyncs the directory after its rename. Without it the new log's name may
    not survive a power cut: the old log comes back, and writes fsynced into the new one (so
    acknowledged in "full" mode) are gone."""

    def bug() -> None:
        plant(
            monkeypatch,
            FileSystem,
            "write_new",
            ("self.sync_dir(os.path.dirname(os.path.abspath(path)))", "pass  # planted"),
        )

    found = caught(monkeypatch, "full", ("flush", "put"), bug)
    assert any(
        "lost a write promised durable (op 1)" in v.problem and v.variant.startswith("names")
        for v in found
    ), _show(found)


def test_harness_catches_a_rename_before_its_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """``write_new`` must fsync the temporary file before renaming it over the old one. Renamed
    (and the directory synced) first, a power cut leaves the new name on a file whose bytes never
    reached the disk: an empty log, which no open accepts."""

    def bug() -> None:
        plant(
            monkeypatch,
            FileSystem,
            "write_new",
            (
                "handle.sync()\n"
                "        finally:\n"
                "            handle.close()\n"
                "        self.rename(tmp, path)\n",
                "self.rename(tmp, path)\n"
                "            self.sync_dir(os.path.dirname(os.path.abspath(path)))\n"
                "            handle.sync()\n"
                "        finally:\n"
                "            handle.close()\n",
            ),
        )

    found = caught(monkeypatch, "normal", ("flush",), bug)
    assert any(
        v.problem.startswith("open failed") and "shorter than its header" in v.problem
        for v in found
    ), _show(found)


def test_harness_catches_a_log_reader_that_takes_a_lost_sector_for_damage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A power cut may keep a log's new size but not all of its new sectors: a record that
    overlaps a zeroed sector is a torn tail (format.md, "Reading a log"). Planted: the reader
    calls such a record damage when its record checksum fails, so the store no longer opens.
    (A log checksum that leaves the record header out, the bug planted here before, no longer
    shows: a power cut only ever zeroes a header, and a zeroed header overlaps a zeroed sector,
    so it reads as a torn tail with or without the header checksum.)"""

    def bug() -> None:
        plant(
            monkeypatch,
            halodb.wal,
            "_torn_or_damaged",
            ("and not _overlaps_a_zeroed_sector(data, pos, end)", "and True"),  # planted
        )

    found = caught(monkeypatch, "normal", ("big",), bug)
    assert any(
        v.family == "zero-tail" and "record checksum mismatch" in v.problem for v in found
    ), _show(found)
    assert any(v.family == "reorder" and "record checksum mismatch" in v.problem for v in found), (
        _show(found)
    )


def test_harness_catches_writes_kept_after_a_dropped_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Recovery drops a batch whose part in another partition was lost, and cuts the logs of
    its partitions there. Planted: the later writes of those partitions are replayed all the
    same (what the engine did before), so a partition holds a write made after one it lost."""

    def bug() -> None:
        plant(
            monkeypatch,
            halodb.engine.recovery,
            "plan",
            (
                "[r for r in mine[:keep] if r.rtype != fmt.REC_CLOSE]",
                "[r for i, r in enumerate(mine) if r.rtype != fmt.REC_CLOSE"
                " and (i < keep or r.rtype != fmt.REC_BATCH)]",
            ),
        )

    found = caught(monkeypatch, "normal", ("batch", "put"), bug)
    assert any(v.problem.startswith(BATCH_GAP) for v in found), _show(found)


def test_harness_catches_a_meta_page_written_before_the_pages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pager writes and fsyncs a transaction's pages before its meta page. Planted: the
    meta page first, so a power cut between the two leaves a meta page whose tree is not on
    disk."""

    def bug() -> None:
        plant(
            monkeypatch,
            Pager,
            "commit",
            ("self._write_dirty()\n    self.file.sync()\n    meta = Meta(", "meta = Meta("),
            (
                "    self.file.sync()\n    self.meta = meta",
                "    self._write_dirty()\n    self.file.sync()\n    self.meta = meta",
            ),
        )

    found = caught(monkeypatch, "normal", ("overwrite", "flush"), bug)
    assert any(v.problem.startswith(("open failed", "check() failed")) for v in found), _show(found)


def test_harness_catches_a_page_reused_while_still_referenced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A page the transaction being built stops using is free only from the next transaction
    on, because the committed tree still refers to it until the new meta page is on disk.
    Planted: released pages are free at once, so the flush rewrites the committed tree's leaf in
    place, and a power cut before the meta page leaves the old tree pointing at the new page."""

    def bug() -> None:
        plant(
            monkeypatch,
            Pager,
            "release",
            ("self.pending.append(page_no)", "self.free.append(page_no)  # planted"),
        )

    found = caught(monkeypatch, "normal", ("overwrite", "flush"), bug)
    assert any(
        "not the version its parent refers to" in v.problem or "checksum mismatch" in v.problem
        for v in found
    ), _show(found)


def test_harness_catches_a_frozen_log_dropped_before_its_merge_is_durable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A merge deletes the frozen memtable's log (or renames the new log over it) only once
    the tree holding its records is durable. Planted: the log goes first, so a power cut
    before the tree's commit loses the writes it held."""

    def bug() -> None:
        plant(
            monkeypatch,
            halodb.partition.Partition,
            "merge",
            ("    if self.frozen_batch:", "    self._drop_frozen_log()\n    if self.frozen_batch:"),
        )

    found = caught(monkeypatch, "full", ("overwrite", "flush"), bug)
    # The new log follows writes the tree does not hold: recovery refuses it, or they are lost.
    assert any(
        "the tree only holds writes up to" in v.problem
        or "lost a write promised durable" in v.problem
        for v in found
    ), _show(found)


def test_harness_catches_a_run_deleted_before_its_merge_is_durable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A clean close leaves the memtables in run files, with empty logs after them; the next
    merge deletes a run only once the tree holding its writes is durable. Planted: the run goes
    first, so a power cut before the tree's commit leaves the writes in no file at all."""

    def bug() -> None:
        plant(
            monkeypatch,
            halodb.partition.Partition,
            "merge",
            (
                "        keys, values = frozen.columns(None if locked else SORT_STEP)\n",
                "        keys, values = frozen.columns(None if locked else SORT_STEP)\n"
                "        self._drop_frozen_log()  # planted\n",
            ),
        )

    found = caught(monkeypatch, "full", ("reopen", "flush"), bug)
    assert any("or the run file" in v.problem and "is missing" in v.problem for v in found), _show(
        found
    )


def test_harness_catches_a_tree_file_cut_before_its_meta_page_stops_counting_the_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A commit cuts the free end off the tree file only once the meta page that no longer
    counts it is durable. Planted: the cut first, so a power cut before that meta page leaves
    the newest meta page counting pages the file no longer has."""

    def bug() -> None:
        plant(
            monkeypatch,
            Pager,
            "commit",
            (
                "    self._cut_tail(per_page)\n",
                "    self._cut_tail(per_page)\n"
                "    self.file.truncate(self._next_page * self.page_size)  # planted\n",
            ),
        )

    found = caught(monkeypatch, "normal", ("put", "flush"), bug)
    assert any("pages in use but the file holds" in v.problem for v in found), _show(found)


def test_harness_catches_a_compaction_that_moves_a_page_over_one_still_referenced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A compaction step moves pages copy-on-write, like a merge: the pages it moves away from
    are free from the next step on. Planted: the pages of a moved overflow chain are free at
    once, so the step writes its next pages (the leaf's, say) over pages the committed tree
    still refers to, and a power cut before the meta page leaves that tree pointing at pages
    that changed."""

    def bug() -> None:
        plant(
            monkeypatch,
            Compaction,
            "_copy_chain",
            ("pager.release(old)", "pager.free.append(old)  # planted"),
        )

    found = caught(monkeypatch, "normal", ("compact",), bug)
    assert any(
        "not the version its parent refers to" in v.problem or "checksum mismatch" in v.problem
        for v in found
    ), _show(found)


# -- defects this suite found, on real files: minimal reproducers -------------------------------


def _abandon(db: halodb.Store) -> None:
    """Close without flushing or a close record: the logs stay as written."""
    halodb.testing.abandon(db)


def _key_in(db: halodb.Store, partition: int, prefix: str) -> str:
    return testing.keys_in(db, partition, prefix=prefix)[0]


def test_a_lost_batch_part_takes_the_later_writes_of_its_partitions(tmp_path: Path) -> None:
    """Normal mode: a batch over partitions 0 and 1, then a put into partition 0. Power is cut
    and partition 1's log loses the batch part (it was never fsynced) while partition 0's log
    kept everything. The batch must go (all or nothing); partition 0 must then hold a prefix of
    its writes, so the later put must go too."""
    path = tmp_path / "db"
    db = halodb.open(path, partitions=2)
    k0, k1, later = _key_in(db, 0, "b"), _key_in(db, 1, "b"), _key_in(db, 0, "later")
    size1 = os.path.getsize(path / fmt.partition_file(1, "wal"))
    with db.batch() as b:
        b[k0] = b[k1] = "batch"
    db[later] = "later"
    _abandon(db)
    os.truncate(path / fmt.partition_file(1, "wal"), size1)
    with halodb.open(path) as db:
        assert dict(db.items()) == {}


@pytest.mark.parametrize("first", [600, 442], ids=["boundary-in-an-earlier-record", "in-a-header"])
def test_a_log_zeroed_from_a_sector_boundary_is_a_torn_tail(tmp_path: Path, first: int) -> None:
    """Two puts; the power cut leaves the log's new size on disk but its sectors from 512 on
    zero. With a first value of 600 characters the boundary falls inside the first record;
    with 442 the first record ends at offset 502 and the boundary falls inside the second
    record's header. Either way only a torn tail is lost: what precedes the boundary's record
    stays."""
    path = tmp_path / "db"
    db = halodb.open(path, partitions=1)
    db["a"] = "x" * first
    db["b"] = "y" * 600
    _abandon(db)
    wal = path / fmt.partition_file(0, "wal")
    data = bytearray(wal.read_bytes())
    data[SECTOR:] = bytes(len(data) - SECTOR)
    wal.write_bytes(bytes(data))
    with halodb.open(path) as db:
        assert dict(db.items()) == ({} if first == 600 else {"a": "x" * first})
        db.check()


def test_a_hole_in_the_last_unsynced_record_is_a_torn_tail(tmp_path: Path) -> None:
    """One put of 3000 bytes, never fsynced; the power cut keeps the log's size and every
    sector of the record but its second one (the disk wrote them out of order). The record is
    torn: the store must open without it."""
    path = tmp_path / "db"
    db = halodb.open(path, partitions=1)
    db["big"] = "z" * 3000
    _abandon(db)
    wal = path / fmt.partition_file(0, "wal")
    data = bytearray(wal.read_bytes())
    data[SECTOR : 2 * SECTOR] = bytes(SECTOR)
    wal.write_bytes(bytes(data))
    with halodb.open(path) as db:
        assert dict(db.items()) == {}
        db.check()


def test_the_base_store_has_data_in_both_trees_and_both_logs() -> None:
    """Deletes and overwrites need targets in the trees and in the logs of both partitions."""
    image, items = base()
    files = dict(image.files)
    for p in range(2):
        assert len(files[f"/powersim/db/{fmt.partition_file(p, 'wal')}"]) > fmt.WAL_HEADER.size
        assert len(files[f"/powersim/db/{fmt.partition_file(p, 'tree')}"]) > 2 * 1024
    assert len(items) == 13


def test_the_base_store_has_pages_for_a_compaction_to_move() -> None:
    image, items = base()
    fs = SimFS(image)
    db = halodb.open(STORE, filesystem=fs, hash_seed=HASH_SEED, **OPTIONS)
    before = db.stats()
    report = db.compact()
    assert report.pages_rewritten >= 3  # the overflow pages of ("tree", "big"), at least
    assert all(
        p.pages < q.pages for p, q in zip(db.stats().partitions, before.partitions, strict=True)
    )
    assert dict(db.items()) == items
    db.check()
    testing.abandon(db)

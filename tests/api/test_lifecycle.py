"""Process lifecycle: a store handle inherited through fork(), and stores left open at exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import halodb
from halodb import testing
from halodb.engine.directory import read_manifest
from halodb.vfs import FileSystem


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_store_used_after_fork_is_refused_in_the_child(tmp_path: Path) -> None:
    db = halodb.open(tmp_path / "s", durability="fast")
    db["before"] = 1
    pid = os.fork()
    if pid == 0:  # the child: every use must raise, and nothing may reach the parent's files
        code = 0
        for attempt in (
            lambda: db.__setitem__("child", 2),
            lambda: db["before"],
            lambda: len(db),
            lambda: list(db),
            db.sync,
        ):
            try:
                attempt()
                code = 1
            except halodb.ProgrammingError as exc:
                if "forked child" not in str(exc):
                    code = 2
            except BaseException:
                code = 3
        db.close()  # must not flush, write or unlock anything of the parent's
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    db["after"] = 3  # the parent's handle is untouched
    db.close()
    with halodb.open(tmp_path / "s") as again:
        assert dict(again.items()) == {"after": 3, "before": 1}


@pytest.mark.parametrize("durability", ["fast", "normal", "full"])
def test_store_left_open_is_closed_at_interpreter_exit(tmp_path: Path, durability: str) -> None:
    """A program that forgets close() and exits normally loses nothing, even in FAST mode where
    the last writes are still buffered in the process."""
    path = tmp_path / "s"
    script = (
        "import halodb\n"
        f"db = halodb.open({str(path)!r}, durability={durability!r})\n"
        "for i in range(100):\n"
        "    db[i] = str(i)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    with halodb.open(path) as db:
        assert dict(db.items()) == {i: str(i) for i in range(100)}
        stats = db.stats()
        # A clean close flushed the memtables into the trees.
        assert all(p.memtable_entries == 0 for p in stats.partitions)
        db.check()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_does_not_keep_the_store_locked(tmp_path: Path) -> None:
    """The child's copy of the lock descriptor used to keep the store locked after the parent
    closed it, so neither the parent nor the child could open it again."""
    path = tmp_path / "s"
    db = halodb.open(path)
    db["k"] = "parent"
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(to_child_w)
        os.close(to_parent_r)
        os.read(to_child_r, 1)  # wait for the parent to close its handle
        code = 0
        try:
            with halodb.open(path) as mine:  # "a forked child must open the store itself"
                code = 0 if mine["k"] == "parent" else 4
                mine["k"] = "child"
        except BaseException:
            code = 5
        os.write(to_parent_w, b"x")
        os._exit(code)
    os.close(to_child_r)
    os.close(to_parent_w)
    db.close()
    with halodb.open(path) as again:  # the parent reopens while the child still lives
        assert again["k"] == "parent"
    os.write(to_child_w, b"x")
    os.read(to_parent_r, 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with halodb.open(path) as final:
        assert final["k"] == "child"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_never_waits_for_a_lock_the_parent_held(tmp_path: Path) -> None:
    """len(), `in`, del, batches, stats() and check() took a partition lock before checking the
    process: a lock held by another parent thread at the fork is never released in the child."""
    db = halodb.open(tmp_path / "s")
    db["k"] = 1
    for part in testing.engine(db).parts:
        part.lock.acquire()  # as if other threads were inside the store at the fork
    try:
        pid = os.fork()
        if pid == 0:
            import signal

            signal.alarm(10)  # a hang fails the test instead of blocking it
            code = 0
            for attempt in (
                lambda: len(db),
                lambda: "k" in db,
                lambda: db.__delitem__("k"),
                lambda: db.pop("k"),
                lambda: db.setdefault("z", 1),
                lambda: db.update({"a": 1}),
                db.stats,
                db.check,
                db.flush,
                db.sync,
                lambda: list(db.range()),
            ):
                try:
                    attempt()
                    code = 1
                except halodb.ProgrammingError:
                    pass
            os._exit(code)
        _, status = os.waitpid(pid, 0)
    finally:
        for part in testing.engine(db).parts:
            part.lock.release()
    assert os.waitstatus_to_exitcode(status) == 0
    db.close()


class _FixedClock(FileSystem):
    def time_ns(self) -> int:
        return 1_234_567_890_123_456_789


def test_a_new_store_is_stamped_by_its_file_systems_clock(tmp_path: Path) -> None:
    """The manifest's creation time comes from ``FileSystem.time_ns()``, the seam a test fixes
    to get the same bytes every run; later opens never rewrite it."""
    halodb.open(tmp_path / "s", filesystem=_FixedClock()).close()
    halodb.open(tmp_path / "s").close()
    assert read_manifest(str(tmp_path / "s")).created_ns == 1_234_567_890_123_456_789

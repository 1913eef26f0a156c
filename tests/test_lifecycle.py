"""Process lifecycle: a store handle inherited through fork(), and stores left open at exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import halodb


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

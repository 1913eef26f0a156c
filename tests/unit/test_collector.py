"""The pause of the garbage collector that flushes run under: restored as found, overlapping
pauses, interrupts at any line, forks."""

from __future__ import annotations

import gc
import linecache
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest

import halodb
from halodb import collector, testing
from halodb.memtable import Memtable
from halodb.vfs import FileSystem

PAGE = 1024
FS = FileSystem()

# -- the garbage-collector pause of flushes ----------------------------------------------------


class _Watched(Memtable):
    """A memtable that notes whether the garbage collector runs when a flush reads it."""

    __slots__ = ()
    seen: ClassVar[list[bool]] = []

    def columns(self, step: int | None = None) -> tuple[list[bytes], list[bytes | None]]:
        _Watched.seen.append(gc.isenabled())
        return super().columns(step)


@pytest.mark.parametrize("enabled", [True, False])
def test_a_flush_pauses_the_garbage_collector_and_restores_it_as_found(
    tmp_path: Path, enabled: bool
) -> None:
    db = halodb.open(tmp_path / "db", partitions=1)
    db.update({f"k{i}": i for i in range(100)})
    testing.engine(db).parts[0].memtable.__class__ = _Watched
    _Watched.seen = []
    if not enabled:
        gc.disable()
    try:
        db.flush()
        assert _Watched.seen == [False]
        assert gc.isenabled() == enabled
    finally:
        gc.enable()
        db.close()


def test_an_interrupted_flush_restores_the_garbage_collector(tmp_path: Path) -> None:
    db = halodb.open(tmp_path / "db", partitions=1)
    db["a"] = 1
    tree = testing.engine(db).parts[0].tree

    def interrupted(*args: object, **kwargs: object) -> int:
        assert not gc.isenabled()
        raise KeyboardInterrupt

    tree.apply_columns = interrupted  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        db.flush()
    assert gc.isenabled()
    del tree.apply_columns
    db.flush()
    assert db["a"] == 1
    db.close()


def test_overlapping_pauses_end_with_the_last() -> None:
    """Flushes of two partitions in two threads overlap but do not nest: the first to end must
    not enable the collector under the other."""
    first, second = collector.collector_paused(), collector.collector_paused()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert not gc.isenabled()
    second.__exit__(None, None, None)
    assert gc.isenabled()


def test_an_interrupt_at_any_line_of_a_pause_never_leaves_the_collector_off(
    tmp_path: Path,
) -> None:
    """Ctrl-C may arrive between any two lines of the pause's start or end. Whatever line it
    hits, once that flush is over, and at the latest after the next flush, the collector is on
    again and no pause is left running. (A second interrupt while the end handles the first
    cannot be injected this way: a trace function that raises is removed.)"""
    pause = collector.collector_paused
    pause_class = collector.CollectorPause
    start = pause_class.__call__.__wrapped__.__code__  # type: ignore[attr-defined]
    end = pause_class.end.__code__
    lines = {
        code: sorted({line for _, _, line in code.co_lines() if line}) for code in (start, end)
    }
    handler = next(n for n in lines[end] if "except" in linecache.getline(end.co_filename, n))
    plans = [[(code, n)] for code in (start, end) for n in lines[code]]
    db = halodb.open(tmp_path / "db", partitions=1)
    hit: set[tuple[Any, int]] = set()
    for number, plan in enumerate(plans):
        db[f"k{number}"] = number
        fired: list[tuple[Any, int]] = []

        def local(frame: Any, event: str, arg: Any) -> Any:
            at = (frame.f_code, frame.f_lineno)
            if event == "line" and len(fired) < len(plan) and at == plan[len(fired)]:
                fired.append(at)
                raise KeyboardInterrupt
            return local

        def tracer(frame: Any, event: str, arg: Any) -> Any:
            return local if frame.f_code in (start, end) else None

        sys.settrace(tracer)
        try:
            db.flush()
        except KeyboardInterrupt:
            pass
        finally:
            sys.settrace(None)
        hit.update(fired)
        db[f"after{number}"] = number
        db.flush()  # the next flush ends any pause the interrupt cut short
        assert gc.isenabled() and not pause.active, plan
    # Every line ran and was interrupted but the first ones (decorator, def) and the handler.
    missed = {(code, n) for code in (start, end) for n in lines[code]} - hit
    allowed = {start.co_firstlineno, end.co_firstlineno, *range(handler, max(lines[end]) + 1)}
    assert {n for _, n in missed} <= allowed, missed
    assert len(db) == 2 * len(plans)
    db.check()
    db.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork()")
def test_a_child_forked_during_a_pause_gets_the_collector_back() -> None:
    with collector.collector_paused():
        pid = os.fork()
        if pid == 0:  # the child: no flush of its own will ever end the pause
            os._exit(0 if gc.isenabled() else 1)
        _, status = os.waitpid(pid, 0)
        assert not gc.isenabled()
    assert os.waitstatus_to_exitcode(status) == 0
    assert gc.isenabled()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork()")
def test_a_fork_waits_for_a_pause_changing_hands_in_another_thread() -> None:
    """A fork while another thread is between two steps of starting or ending a pause (it holds
    the pause's lock) waits for it, so the child never sees a change half made."""
    pause = collector.collector_paused
    holding = threading.Event()

    def mid_change() -> None:
        with pause.lock:
            holding.set()
            time.sleep(0.3)

    other = threading.Thread(target=mid_change)
    other.start()
    holding.wait()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os._exit(0 if gc.isenabled() and not pause.active else 1)
    waited = time.monotonic() - started
    other.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert waited >= 0.2, f"fork() went ahead after {waited:.3f} s"

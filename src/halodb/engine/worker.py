"""The background worker: one thread per store that merges frozen memtables into the trees,
and compacts the tree files that merges left with many free pages.

A write that fills a partition's memtable freezes it (a new memtable takes the writes at once)
and wakes the worker, which merges each frozen memtable in turn (``Engine.merge_part``). Then,
while no frozen memtable waits, it compacts the partitions that are due (``Engine.compact_due``),
one step at a time (``Engine.compact_part``): a merge waits for one step at most. Knows nothing
of how a merge or a step is done. A failure stops the worker and, through the engine's write
latch, the store's writes (never silently: the error is logged and every later write raises
it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

log = logging.getLogger(__name__)


class Mergeable(Protocol):
    """What the worker asks of a partition."""

    def merge_due(self) -> bool: ...


class Worker:
    """The merge thread of one store. ``state`` is what ``stats()`` shows: ``"idle"``,
    ``"merging"``, ``"compacting"``, ``"stopped"`` or ``"failed"``. ``due`` ``None``: no
    compaction of its own."""

    def __init__(
        self,
        name: str,
        parts: Sequence[Mergeable],
        merge: Callable[[int], None],
        fail: Callable[[BaseException], None],
        due: Callable[[int], bool] | None,
        compact: Callable[[int], bool],
    ) -> None:
        self.parts = parts
        self.merge = merge
        self.fail = fail
        self.due = due
        self.compact = compact
        self.state = "idle"
        self.stopping = False
        self.event = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def wake(self) -> None:
        """Look for frozen memtables to merge (soon: the caller does not wait)."""
        self.event.set()

    def _run(self) -> None:
        try:
            while not self.stopping:
                self.event.wait()
                self.event.clear()
                for index, part in enumerate(self.parts):
                    if self.stopping:
                        break
                    if part.merge_due():
                        self.state = "merging"
                        self.merge(index)
                        self.state = "idle"
                self._compact()
        except BaseException as exc:  # the engine's write latch reports it
            self.state = "failed"
            log.error("background merge failed: %s", str(exc) or type(exc).__name__)
            self.fail(exc)
            return
        self.state = "stopped"

    def _compact(self) -> None:
        """Compact the partitions that are due, a step at a time, until a frozen memtable
        waits (then the wake-up is kept: merges first, and the compaction goes on after)."""
        due = self.due
        if due is None:
            return
        for index in range(len(self.parts)):
            while not self.stopping and due(index):
                if any(part.merge_due() for part in self.parts):
                    self.event.set()
                    return
                self.state = "compacting"
                done = self.compact(index)
                self.state = "idle"
                if done:
                    break

    def resume(self) -> None:
        """Undo a :meth:`stop` that was interrupted: go on merging (a new thread if the old
        one has ended)."""
        self.stopping = False
        if not self.thread.is_alive():
            self.thread = threading.Thread(target=self._run, name=self.thread.name, daemon=True)
            self.state = "idle"
            self.thread.start()
        self.event.set()

    def stop(self) -> None:
        """Stop after the merge under way, if any (waits for it); idempotent."""
        self.stopping = True
        self.event.set()
        if self.thread is not threading.current_thread():
            self.thread.join()

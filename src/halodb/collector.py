"""The pause of Python's cyclic garbage collector that flushes run under; knows nothing of what
a flush does.

>>> import gc
>>> with collector_paused():
...     gc.isenabled()
False
>>> gc.isenabled()
True
"""

from __future__ import annotations

import gc
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager


class CollectorPause:
    """Pauses Python's cyclic garbage collector while flushes run.

    A flush creates thousands of tracked objects (the nodes it leaves in the node cache) while
    it holds lists as long as the memtable: every collection they trigger walks those lists,
    and the collections took about 5% of the time of a fill of random keys. A flush makes no
    reference cycles, so pausing the collector only delays other threads' collections until it
    ends. Flushes of several partitions may overlap: the first to start turns the collector off
    if it is on, and the last to end turns it back on if a pause turned it off (so a
    ``gc.disable()`` by another thread in the meantime is undone; one made before is kept).

    Every change happens under ``lock``, which a fork waits for: a forked child sees none half
    made, and gets the collector back (none of its flushes runs). An interrupt (Ctrl-C) cannot
    leave the collector off for good: ``_off`` is set before the collector goes off and reset
    after it is back on; a pause's token leaves ``active`` (a weak set) when its pause ends,
    and also when its frame is gone, so the end of the next pause repairs one an interrupt cut
    short; and an interrupt while a pause ends makes it start over, then propagates.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active: weakref.WeakSet[_Token] = weakref.WeakSet()
        self._off = False
        """A pause turned the collector off and no pause has turned it back on since."""
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(
                before=self._before_fork,
                after_in_parent=self._after_fork_in_parent,
                after_in_child=self._after_fork_in_child,
            )

    @contextmanager
    def __call__(self) -> Iterator[None]:
        token = _Token()
        try:
            with self.lock:
                self.active.add(token)
                if gc.isenabled():
                    self._off = True
                    gc.disable()
            yield
        finally:
            self.end(token)

    def end(self, token: _Token) -> None:
        """End the pause ``token`` began (``__call__`` does, as its body exits)."""
        interrupted: BaseException | None = None
        while True:
            try:
                with self.lock:
                    self.active.discard(token)
                    if not self.active and self._off:
                        gc.enable()
                        self._off = False
                break
            except BaseException as exc:  # an interrupt: end the pause all the same
                interrupted = interrupted or exc
        if interrupted is not None:
            raise interrupted

    def _before_fork(self) -> None:
        self.lock.acquire()

    def _after_fork_in_parent(self) -> None:
        self.lock.release()

    def _after_fork_in_child(self) -> None:
        self.lock.release()  # (the forking thread took it, and goes on in the child)
        self.active.clear()
        if self._off:
            gc.enable()
            self._off = False


class _Token:
    """One running pause (an object a weak set can hold)."""

    __slots__ = ("__weakref__",)


collector_paused = CollectorPause()
"""``with collector_paused():`` runs its body with the collector paused (see above)."""

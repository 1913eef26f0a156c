"""The engines open in this process, and what a fork or a normal exit does to them; knows
nothing else of an engine than :class:`Registered` says.

A forked child must not touch its parent's stores (their locks, logs and buffers belong to the
parent): they are marked closed in it, so any use raises ``ProgrammingError`` at once. A normal
exit closes every store a program left open, so it loses nothing, even in FAST mode.
"""

from __future__ import annotations

import atexit
import logging
import os
import weakref
from typing import Protocol

log = logging.getLogger(__name__)


class Registered(Protocol):
    """What the hooks need of an open engine."""

    path: str

    def forget_after_fork(self) -> None: ...

    def close(self) -> None: ...


_OPEN: weakref.WeakSet[Registered] = weakref.WeakSet()
"""Engines open in this process."""


def register(engine: Registered) -> None:
    """Add an engine just opened."""
    _OPEN.add(engine)


def unregister(engine: Registered) -> None:
    """Remove an engine being closed (no-op if it is not there)."""
    _OPEN.discard(engine)


def _after_fork_in_child() -> None:
    for engine in list(_OPEN):
        engine.forget_after_fork()
    _OPEN.clear()


def _close_at_exit() -> None:
    for engine in list(_OPEN):
        try:
            engine.close()
        except Exception:
            log.exception("%s: closing at interpreter exit failed", engine.path)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_at_exit)

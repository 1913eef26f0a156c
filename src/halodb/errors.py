"""Every exception HaloDB raises, named after PEP 249; knows nothing of files, keys or stores.

The hierarchy::

    Error(Exception)
    ├── InterfaceError
    └── DatabaseError
        ├── DataError
        ├── OperationalError
        ├── IntegrityError
        ├── InternalError
        ├── ProgrammingError
        ├── NotSupportedError
        └── CorruptionError

All exceptions take only positional arguments (like ``Exception``), so they pickle and
cross process boundaries unchanged. Messages say what failed, where, and a hint.
"""

from __future__ import annotations

import re

__all__ = [
    "CorruptionError",
    "DataError",
    "DatabaseError",
    "Error",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "NotSupportedError",
    "OperationalError",
    "ProgrammingError",
]


class Error(Exception):
    """Base class of every HaloDB exception; catch this to catch them all."""


class InterfaceError(Error):
    """Bad options passed to HaloDB, or a directory that is not a HaloDB store."""


class DatabaseError(Error):
    """Base class of errors that concern the store itself."""


class DataError(DatabaseError):
    """A key or value of a supported type that cannot be stored.

    For example a NaN float key, an int too large to encode, a key or value too long,
    or nesting deeper than the limit.
    """


class OperationalError(DatabaseError):
    """An OS-level failure: an I/O error, the store locked by another process, or a
    store that refuses writes after a failed fsync. Usually raised ``from`` an ``OSError``.
    """


class IntegrityError(DatabaseError):
    """A constraint of the store's contents would be violated."""


class InternalError(DatabaseError):
    """HaloDB reached a state it believes impossible: a bug, please report it."""


class ProgrammingError(DatabaseError):
    """Misuse of the API: use after close, writing to a read-only store, and the like."""


class NotSupportedError(DatabaseError):
    """The store was written in a newer format version than this HaloDB can read."""


class CorruptionError(DatabaseError):
    """Damage detected in bytes read from disk (bad checksum, malformed record).

    The single message argument says what was damaged and where (file, offset).
    """


MESSAGE_LIMIT = 200
"""Characters of an exception's text a one-line message repeats (see :func:`brief`)."""
_SUBSCRIPTS = re.compile(r"(?:\[[^\]\n]*\]){6,}")
_SUBSCRIPT = re.compile(r"\[[^\]\n]*\]")


def brief(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """An exception's text cut for a one-line message (the command's errors, ``jsonl``'s): a
    long path into a nested value (``value[0][0][0]...``, one subscript a level) is shortened
    to its first two and last subscripts and its depth, and whatever is still longer than
    ``limit`` is cut.

    >>> brief("value" + "[0]" * 101 + ": nested deeper than 100")
    'value[0][0]…[0] (101 levels): nested deeper than 100'
    """

    def shorten(match: re.Match[str]) -> str:
        parts = _SUBSCRIPT.findall(match.group())
        return f"{''.join(parts[:2])}…{parts[-1]} ({len(parts)} levels)"

    text = _SUBSCRIPTS.sub(shorten, text)
    return text if len(text) <= limit else text[: limit - 1] + "…"

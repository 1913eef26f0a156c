"""HaloDB: an embeddable, crash-safe, ordered key-value store.

>>> import halodb, tempfile
>>> with halodb.open(tempfile.mkdtemp()) as db:
...     db[("user", 1)] = "alice"
...     db[("user", 1)]
'alice'
"""

from halodb.errors import (
    CorruptionError,
    DatabaseError,
    DataError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
)
from halodb.keys import Key
from halodb.opener import codec_name, open
from halodb.options import Durability, Options
from halodb.reports import CompactReport, PartitionStats, StoreStats, TreeReport
from halodb.store import Batch, Store
from halodb.values import DefaultCodec, PickleCodec, ValueCodec

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "CompactReport",
    "CorruptionError",
    "DataError",
    "DatabaseError",
    "DefaultCodec",
    "Durability",
    "Error",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "Key",
    "NotSupportedError",
    "OperationalError",
    "Options",
    "PartitionStats",
    "PickleCodec",
    "ProgrammingError",
    "Store",
    "StoreStats",
    "TreeReport",
    "ValueCodec",
    "codec_name",
    "open",
]

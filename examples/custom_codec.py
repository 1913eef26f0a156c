"""A custom value codec: store ``decimal.Decimal`` values exactly, as their decimal string.

A codec is any object with a ``name``, ``encode(value) -> bytes`` and ``decode(bytes)`` (the
``halodb.ValueCodec`` protocol). The name is recorded in the store when it is created, and the
store only opens again with a codec of the same name.

Run: ``python examples/custom_codec.py [NEW_DIRECTORY]`` (default: a temporary directory).
"""

from __future__ import annotations

import os
import sys
import tempfile
from decimal import Decimal, InvalidOperation

import halodb


class DecimalCodec:
    """Values are ``Decimal``; each is stored as the ASCII of ``str(value)``, which round-trips
    exactly (digits, exponent and sign included)."""

    name = "decimal-str"
    """Recorded on disk at creation: ASCII, at most 16 characters, never reused for another
    encoding."""

    def encode(self, value: object) -> bytes:
        if type(value) is not Decimal:
            raise TypeError(f"DecimalCodec stores Decimal values, not {type(value).__name__}")
        return str(value).encode("ascii")

    def decode(self, data: bytes) -> Decimal:
        try:
            return Decimal(data.decode("ascii"))
        except (UnicodeDecodeError, InvalidOperation) as exc:
            raise halodb.CorruptionError(f"value {data[:40]!r} is not a decimal") from exc


def main() -> None:
    if len(sys.argv) > 1:
        path = sys.argv[1]
        if os.path.isdir(path) and os.listdir(path):
            sys.exit(f"{path} is not empty; give a new directory")
        tmp = None
    else:
        tmp = tempfile.TemporaryDirectory(prefix="halodb-codec-")
        path = os.path.join(tmp.name, "store")

    codec = DecimalCodec()
    assert isinstance(codec, halodb.ValueCodec)  # the protocol is runtime-checkable
    with halodb.open(path, value_codec=codec) as db:
        db[("balance", "alice")] = Decimal("100.10")
        db[("balance", "bob")] = Decimal("0.20")
        with db.batch() as batch:  # move 0.10 three times, atomically
            batch[("balance", "alice")] = db[("balance", "alice")] - 3 * Decimal("0.10")
            batch[("balance", "bob")] = db[("balance", "bob")] + 3 * Decimal("0.10")
        try:
            db[("balance", "carol")] = 0.1  # a float would not be exact: the codec refuses it
        except TypeError as exc:
            print("refused:", exc)

    with halodb.open(path, value_codec=DecimalCodec()) as db:  # same codec name: opens
        for (_, who), amount in db.range(prefix=("balance",)):
            print(f"{who}: {amount!r}")
        total = sum(amount for _, amount in db.range(prefix=("balance",)))
        print("total:", total, "(exact)" if total == Decimal("100.30") else "(inexact!)")
        print("as floats: 0.1 * 3 =", 0.1 * 3)

    try:
        halodb.open(path)  # the default codec: refused, the store was created with another
    except halodb.InterfaceError as exc:
        print("reopen with the default codec:", type(exc).__name__)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()

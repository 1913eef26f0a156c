"""HaloDB in one page: the dict protocol, typed keys, ordered ranges and prefixes, batches.

Run: ``python examples/quickstart.py [NEW_DIRECTORY]`` (default: a temporary directory).
"""

from __future__ import annotations

import os
import sys
import tempfile

import halodb


def store_path() -> tuple[str, tempfile.TemporaryDirectory[str] | None]:
    """The store directory: the first argument (a new or empty one), else a temporary one."""
    if len(sys.argv) > 1:
        path = sys.argv[1]
        if os.path.isdir(path) and os.listdir(path):
            sys.exit(f"{path} is not empty; give a new directory")
        return path, None
    tmp = tempfile.TemporaryDirectory(prefix="halodb-quickstart-")
    return os.path.join(tmp.name, "store"), tmp


def main() -> None:
    path, tmp = store_path()
    with halodb.open(path) as db:
        # The dict protocol: values are bytes, str or JSON-compatible data.
        db["greeting"] = "hello"
        db["blob"] = b"\x00\x01raw"
        db["config"] = {"retries": 3, "hosts": ["a", "b"]}
        print("greeting:", db["greeting"])
        print("config:", db["config"])
        print("missing:", db.get("missing", "<default>"))
        print("'blob' in db:", "blob" in db)
        del db["blob"]
        print("len after del:", len(db))

        # Typed keys come back with their type and sort like Python values
        # (within a type; across types: int < float < str < bytes < tuple).
        for key in (10, -3, 2.5, "b", "a", b"raw", ("user", 1)):
            db[key] = repr(key)
        print("keys in order:", list(db))

        # Ranges are half-open [start, stop) and lazy; prefixes select a str, bytes or tuple prefix.
        for i in range(1, 6):
            db[f"user:{i:03d}"] = {"id": i}
        print("range user:002..user:004:", [k for k, _ in db.range("user:002", "user:004")])
        print("prefix user:, reversed:", [k for k, _ in db.range(prefix="user:", reverse=True)])
        print("first:", db.first()[0], "last:", db.last()[0])

        # A batch is applied atomically, across partitions, when the block ends without error.
        with db.batch() as batch:
            batch[("order", 1)] = {"total": 12.5}
            batch[("order", 2)] = {"total": 7.0}
            del batch["greeting"]
        print("orders:", list(db.range(prefix=("order",))))
        print("greeting after batch:", db.get("greeting"))

        try:
            with db.batch() as batch:
                batch[("order", 3)] = {"total": 1.0}
                raise RuntimeError("changed my mind")
        except RuntimeError:
            pass
        print("order 3 after a failed batch:", db.get(("order", 3)))
        print("total keys:", len(db))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()

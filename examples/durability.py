"""What survives a crash: ``durability="full"``, ``"fast"`` with and without ``sync()``, reopen.

A child process writes to a store and then dies abruptly (``os._exit``: no ``close()``, no
flush, buffers lost), as a killed process would. The parent reopens the store, which replays the
write-ahead logs, and counts what survived.

Run: ``python examples/durability.py [NEW_DIRECTORY]`` (default: a temporary directory).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import halodb

WRITES = 100


def child(path: str, durability: str, sync: bool) -> None:
    """Write WRITES keys, optionally sync(), then die without closing the store."""
    db = halodb.open(path, durability=durability)
    for i in range(WRITES):
        db[("event", i)] = {"seq": i, "mode": durability}
    if sync:
        db.sync()  # durability barrier: everything written so far is on disk
    os._exit(1)  # a crash: no close(), no flush, in-process buffers are lost


def crash_and_reopen(path: str, durability: str, sync: bool) -> int:
    """Run a writer that crashes, reopen the store and return how many writes survived."""
    args = [sys.executable, __file__, "--child", path, durability, str(int(sync))]
    done = subprocess.run(args, check=False)
    assert done.returncode == 1, "the child should have 'crashed' with status 1"
    with halodb.open(path) as db:  # recovery: replay the logs of the crashed writer
        survived = sum(1 for _ in db.range(prefix=("event",)))
        db.check()  # every checksum, page and count verifies after the crash
        db.clear()
    return survived


def main() -> None:
    if len(sys.argv) > 1:
        path = sys.argv[1]
        if os.path.isdir(path) and os.listdir(path):
            sys.exit(f"{path} is not empty; give a new directory")
        tmp = None
    else:
        tmp = tempfile.TemporaryDirectory(prefix="halodb-durability-")
        path = os.path.join(tmp.name, "store")

    halodb.open(path).close()  # create the store
    n = crash_and_reopen(path, "full", sync=False)
    print(f"full: {n} of {WRITES} writes survived the crash (each was fsynced before returning)")
    n = crash_and_reopen(path, "fast", sync=True)
    print(f"fast + sync(): {n} of {WRITES} writes survived the crash")
    n = crash_and_reopen(path, "fast", sync=False)
    print(f"fast, no sync(): {n} of {WRITES} writes survived (the last writes may be lost)")

    # A clean close flushes the memtables into the trees; reopening needs no log replay.
    with halodb.open(path, durability="full") as db:
        db["kept"] = "after a clean close"
    with halodb.open(path, readonly=True) as db:
        print("reopened read-only:", db["kept"])
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4] == "1")
    else:
        main()

"""Peak memory of a HaloDB fill against its budgets: an on-demand benchmark, not a test.

A child process fills a new store with ``--num`` random 16-byte keys and 100-byte values (made
as it goes: the workload itself takes no memory) and samples its resident set size (RSS, from
``/proc/self/statm``) every 10,000 puts; the peak also counts ``ru_maxrss``, which covers the
close. The budget is what the store's options allow: every
partition's memtable and a frozen one (``2 * partitions * memtable_size``), the node cache and
the row cache (``2 * cache_size``), plus 100 MiB for the interpreter, the bloom filters and the
rest. It must not know HaloDB's internals: it uses ``halodb.open``, puts, ``stats`` and
``close``.

Usage::

    python benchmarks/memory.py --num 10000000      # the issue's 10M-key run (Linux)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time

MiB = 1 << 20
SLACK = 100 * MiB
"""What the budget allows beyond the memtables and caches."""


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(path: str, num: int, seed: int, memtable_size: int, cache_size: int) -> None:
    """The fill, in this process; prints one JSON line of figures."""
    import halodb

    rng = random.Random(seed)
    started = time.perf_counter()
    before = _rss()
    db = halodb.open(path, memtable_size=memtable_size, cache_size=cache_size)
    partitions = len(db.stats().partitions)
    peak = _rss()
    randbytes = rng.randbytes
    for i in range(num):
        db[randbytes(16)] = randbytes(100)
        if not i % 10_000:
            peak = max(peak, _rss())
    peak = max(peak, _rss())
    fill_seconds = time.perf_counter() - started
    stats = db.stats()
    db.close()
    print(
        json.dumps(
            {
                "num": num,
                "partitions": partitions,
                "memtable_size": memtable_size,
                "cache_size": cache_size,
                "rss_before_open": before,
                "rss_peak": peak,
                "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "fill_seconds": fill_seconds,
                "stalls": stats.stalls,
                "file_bytes": stats.file_bytes,
            }
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num", type=int, default=10_000_000, help="keys to write")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--memtable-size", type=int, default=16 * MiB)
    parser.add_argument("--cache-size", type=int, default=256 * MiB)
    parser.add_argument("--workdir", default=None, help="where the store goes (system temp)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.path, args.num, args.seed, args.memtable_size, args.cache_size)
        return 0
    if not os.path.exists("/proc/self/statm"):
        print("memory.py reads /proc/self/statm: Linux only", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
        out = subprocess.run(
            [sys.executable, __file__, "--child", "--path", os.path.join(workdir, "store"),
             "--num", str(args.num), "--seed", str(args.seed),
             "--memtable-size", str(args.memtable_size), "--cache-size", str(args.cache_size)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    budget = 2 * figures["partitions"] * args.memtable_size + 2 * args.cache_size + SLACK
    peak = max(figures["rss_peak"], figures["ru_maxrss"])  # (ru_maxrss covers the close too)
    print(
        f"fill of {args.num:,} keys in {figures['fill_seconds']:.1f} s "
        f"({args.num / figures['fill_seconds']:,.0f} puts/s, {figures['stalls']:,} stalls)\n"
        f"peak RSS {peak / MiB:,.1f} MiB (ru_maxrss {figures['ru_maxrss'] / MiB:,.1f} MiB; "
        f"{figures['rss_before_open'] / MiB:,.1f} MiB before the open)\n"
        f"budget {budget / MiB:,.1f} MiB = 2 x {figures['partitions']} memtables of "
        f"{args.memtable_size / MiB:g} MiB + 2 x cache_size {args.cache_size / MiB:g} MiB "
        f"+ {SLACK // MiB} MiB\n"
        f"{'within' if peak <= budget else 'OVER'} the budget: {peak / budget:.2f} of it"
    )
    return 0 if peak <= budget else 1


if __name__ == "__main__":
    sys.exit(main())

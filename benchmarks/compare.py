"""Before and after: ``db_bench.py`` for two HaloDB source trees in one run, interleaved.

HaloDB imports itself absolutely (``from halodb.x import ...``), so two versions cannot share a
process.  This script runs the same ``db_bench.py`` (the one beside it) once per side per round,
each time in a fresh child process whose ``PYTHONPATH`` starts with that side's ``src/``, so only
the engine differs.  The sides alternate (before/after, then after/before, ...) so that a slow
spell of the shared machine does not always fall on the same side.  Each figure keeps its best
over the rounds (the most ops/s, the least time: db_bench's own rule) and one table shows, per
benchmark, HaloDB's ratio to each peer before and after, and HaloDB's own figures.

Usage::

    python benchmarks/compare.py --before main --after . --rounds 3 --num 200000
    python benchmarks/compare.py --before HEAD~1            # --after: this checkout's tree

A side is a directory (a checkout whose ``src/`` is used, as it is on disk) or else a git
revision of the repository this script lives in, exported with ``git archive`` into a temporary
directory that is removed afterwards, also on failure or Ctrl-C.  Every option that is not the
script's own goes to db_bench (``--num``, ``--durability``, ...).  Progress goes to stderr and
the table to stdout.  See benchmarks/README.md, "Before and after a change".
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import platform
import signal
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

HERE = Path(__file__).resolve().parent
DB_BENCH = HERE / "db_bench.py"
REPO = HERE.parent
SUBJECT = "halodb"
SIDES = ("before", "after")
TAIL_LINES = 40
MACHINE_NOTE = (
    "shared, noisy machine: compare ratios within one run, not absolute numbers across runs"
)

Result = dict[str, Any]
Results = dict[str, dict[str, Result]]  # engine -> benchmark -> figures

# A benchmark's headline figure in db_bench's JSON, and whether more of it is better.  The
# first key a result has is its figure: throughput results also carry "seconds".
# A put-latency histogram's headline is its p99.
FIGURES = (("ops_per_sec", True), ("seconds", False), ("p99_us", False), ("bytes", False))
# Best over rounds; a size is the same each round.
TIMED = frozenset({"ops_per_sec", "seconds", "p99_us"})
UNITS = {"ops_per_sec": "ops/s", "seconds": "ms", "p99_us": "µs p99", "bytes": "MiB"}

# Run in the child as ``python -c BOOTSTRAP REPORT DB_BENCH [db_bench options]``: runs
# db_bench as ``python DB_BENCH`` would, then writes the file ``halodb`` was imported from to
# REPORT, so the parent can check that the side's own tree was measured.
BOOTSTRAP = """\
import os, runpy, sys
report, script, *args = sys.argv[1:]
sys.argv = [script, *args]
sys.path[0] = os.path.dirname(script)
try:
    runpy.run_path(script, run_name="__main__")
finally:
    with open(report, "w") as out:
        out.write(getattr(sys.modules.get("halodb"), "__file__", None) or "")
"""


class CompareError(Exception):
    """A side cannot be set up or a db_bench run failed; the message says why."""


@dataclass
class Side:
    """One HaloDB source tree: where its ``src/`` is and what it was made from."""

    name: str  # "before" or "after"
    spec: str  # as given on the command line
    kind: str  # "dir" or "rev"
    root: Path  # the tree whose src/ goes first on PYTHONPATH
    origin: str  # the commit, or what git says of the directory
    halodb_file: str = ""
    runs: list[dict[str, Any]] = field(default_factory=list)  # each round's db_bench JSON

    @property
    def src(self) -> Path:
        return self.root / "src"

    def describe(self) -> str:
        return f"{self.spec} ({self.origin})"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# The two sides: a directory as it is, or a revision exported into a temporary directory.
# --------------------------------------------------------------------------------------------


def git(*args: str, cwd: Path = REPO) -> bytes:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=False)
    if done.returncode != 0:
        error = done.stderr.decode(errors="replace").strip()
        raise CompareError(f"git {' '.join(args)}: {error}")
    return done.stdout


def describe_checkout(root: Path) -> str:
    """The commit a directory is at and whether its ``src/`` has changes; best effort."""
    try:
        head = git("rev-parse", "--short", "HEAD", cwd=root).decode().strip()
        changed = git("status", "--porcelain", "--", "src", cwd=root).strip()
    except CompareError:
        return "a directory, not a git checkout"
    return f"{head} + uncommitted changes in src/" if changed else f"{head}, src/ as committed"


def materialize(name: str, spec: str, scratch: Path) -> Side:
    """The side ``spec`` names: a directory if there is one, else a revision of REPO."""
    path = Path(spec)
    if path.is_dir():
        root = path.resolve()
        if not (root / "src" / "halodb" / "__init__.py").is_file():
            raise CompareError(f"--{name} {spec}: no src/halodb/__init__.py under {root}")
        return Side(name, spec, "dir", root, describe_checkout(root))
    try:
        commit = git("rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}").decode().strip()
    except CompareError:
        raise CompareError(
            f"--{name} {spec}: neither a directory nor a revision of {REPO}"
        ) from None
    root = scratch / name
    root.mkdir()
    archive = git("archive", "--format=tar", commit, "--", "src")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(root, filter="data")
    if not (root / "src" / "halodb" / "__init__.py").is_file():
        raise CompareError(f"--{name} {spec}: commit {commit} has no src/halodb/__init__.py")
    return Side(name, spec, "rev", root, f"commit {commit[:12]}")


# --------------------------------------------------------------------------------------------
# One db_bench run of one side, in a child process.
# --------------------------------------------------------------------------------------------


def child_env(side: Side) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(side.src), env.get("PYTHONPATH", "")) if p)
    return env


def run_child(command: list[str], env: dict[str, str], prefix: str, quiet: bool) -> str:
    """Run ``command``, its stderr echoed with ``prefix``; on failure raise with the tails."""
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as stdout:
        with subprocess.Popen(
            command,
            env=env,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        ) as proc:
            try:
                assert proc.stderr is not None
                for line in proc.stderr:
                    tail.append(line.rstrip("\n"))
                    if not quiet:
                        log(f"{prefix}{tail[-1]}")
                returncode = proc.wait()
            except BaseException:
                proc.kill()  # Ctrl-C or SIGTERM: do not wait for the round to finish
                raise
        stdout.seek(0)
        output = stdout.read()
    if returncode != 0:
        shown = "\n".join(
            [
                f"{prefix}db_bench exited with status {returncode}",
                "--- its stdout (tail) ---",
                *output.splitlines()[-TAIL_LINES:],
                "--- its stderr (tail) ---",
                *tail,
            ]
        )
        raise CompareError(shown)
    return output


def run_side(side: Side, label: str, bench_args: list[str], scratch: Path, quiet: bool) -> None:
    """One db_bench run of ``side`` (``--rounds 1``); its JSON is appended to ``side.runs``."""
    stem = f"{side.name}-{len(side.runs) + 1}"
    report = scratch / f"{stem}.halodb"
    out = scratch / f"{stem}.json"
    command = [
        sys.executable,
        "-c",
        BOOTSTRAP,
        str(report),
        str(DB_BENCH),
        *bench_args,
        "--rounds",
        "1",
        "--json",
        str(out),
    ]
    prefix = f"  [{label}] "
    output = run_child(command, child_env(side), prefix, quiet)
    halodb_file = report.read_text() if report.exists() else ""
    if not halodb_file:
        raise CompareError(f"{prefix}halodb was not imported:\n{output}")
    if not Path(halodb_file).resolve().is_relative_to(side.src.resolve()):
        raise CompareError(f"{prefix}halodb came from {halodb_file}, not from {side.src}")
    log(f"{prefix}halodb imported from {halodb_file}")
    document = json.loads(out.read_text())
    entry = document["engines"].get(SUBJECT) or {}
    if not entry.get("results"):
        why = entry.get("error") or document["skipped"].get(SUBJECT)
        raise CompareError(f"{prefix}halodb did not run ({why}):\n{output}")
    side.halodb_file = halodb_file
    side.runs.append(document)


def run_rounds(
    sides: dict[str, Side], rounds: int, bench_args: list[str], scratch: Path, quiet: bool
) -> list[list[str]]:
    """Every round runs each side once, the order alternating; returns the orders run."""
    orders = []
    for round_no in range(rounds):
        order = list(SIDES) if round_no % 2 == 0 else list(reversed(SIDES))
        for name in order:
            log(f"compare: round {round_no + 1} of {rounds}: {sides[name].describe()} ...")
            label = f"{name} {round_no + 1}/{rounds}"
            run_side(sides[name], label, bench_args, scratch, quiet)
        orders.append(order)
    return orders


# --------------------------------------------------------------------------------------------
# Combining the rounds: db_bench's rule, read from the figures its JSON carries.
# --------------------------------------------------------------------------------------------


def figure_key(result: Result | None) -> str | None:
    if result:
        for key, _higher in FIGURES:
            if key in result:
                return key
    return None


def score(result: Result | None) -> float | None:
    """The headline figure oriented so that more is better (ops/s; 1/seconds; 1/p99; 1/bytes)."""
    key = figure_key(result)
    if result is None or key is None or float(result[key]) <= 0:
        return None
    value = float(result[key])
    return value if dict(FIGURES)[key] else 1.0 / value


def quotient(better: Result | None, worse: Result | None) -> float | None:
    """How many times better ``better`` is than ``worse``: > 1 means better.

    HaloDB's ratio to a peer is ``quotient(halodb, peer)``, which is db_bench's definition
    (halodb ops/s ÷ peer ops/s; peer seconds ÷ halodb seconds; peer put p99 ÷ halodb put p99;
    peer bytes ÷ halodb bytes).
    """
    top, bottom = score(better), score(worse)
    return None if top is None or bottom is None else top / bottom


def best_of(runs: list[Result]) -> Result:
    """One engine's best figures over several runs: the most ops/s, the least time.  Sizes,
    the same in every round, come from the first."""
    best: Result = {}
    for name, first in runs[0].items():
        candidates = [run[name] for run in runs if name in run]
        if figure_key(first) in TIMED:
            best[name] = max(candidates, key=lambda r: score(r) or float("-inf"))
        else:
            best[name] = first
    return best


def combine(side: Side) -> Results:
    """Each engine's best figures over the side's runs."""
    engines: dict[str, list[Result]] = {}
    for document in side.runs:
        for engine, entry in document["engines"].items():
            if entry.get("results"):
                engines.setdefault(engine, []).append(entry["results"])
    return {engine: best_of(runs) for engine, runs in engines.items()}


@dataclass(frozen=True)
class Row:
    """One benchmark against one peer, before and after."""

    bench: str
    peer: str
    ratio_before: float | None
    ratio_after: float | None
    halodb_before: Result | None
    halodb_after: Result | None
    peer_before: Result | None
    peer_after: Result | None

    @property
    def ratio_change(self) -> float | None:
        if self.ratio_before is None or self.ratio_after is None or not self.ratio_before:
            return None
        return self.ratio_after / self.ratio_before - 1

    @property
    def halodb_change(self) -> float | None:
        improvement = quotient(self.halodb_after, self.halodb_before)
        return None if improvement is None else improvement - 1

    @property
    def peer_change(self) -> float | None:
        improvement = quotient(self.peer_after, self.peer_before)
        return None if improvement is None else improvement - 1

    def as_json(self) -> dict[str, Any]:
        key = figure_key(self.halodb_before) or figure_key(self.halodb_after)
        return {
            "figure": key,
            "ratio_before": self.ratio_before,
            "ratio_after": self.ratio_after,
            "ratio_change": self.ratio_change,
            "halodb_before": (self.halodb_before or {}).get(key or ""),
            "halodb_after": (self.halodb_after or {}).get(key or ""),
            "halodb_change": self.halodb_change,
            "peer_change": self.peer_change,
        }


def make_rows(benches: Sequence[str], peer: str, before: Results, after: Results) -> list[Row]:
    rows = []
    for bench in benches:
        h_before, h_after = before[SUBJECT].get(bench), after[SUBJECT].get(bench)
        p_before, p_after = before[peer].get(bench), after[peer].get(bench)
        rows.append(
            Row(
                bench,
                peer,
                quotient(h_before, p_before),
                quotient(h_after, p_after),
                h_before,
                h_after,
                p_before,
                p_after,
            )
        )
    return rows


# --------------------------------------------------------------------------------------------
# The table.
# --------------------------------------------------------------------------------------------


def show_ratio(value: float | None, width: int) -> str:
    return f"{'n/a':>{width}}" if value is None else f"{value:>{width - 1}.2f}x"


def show_change(value: float | None, width: int) -> str:
    return f"{'n/a':>{width}}" if value is None else f"{value * 100:>+{width - 1}.1f}%"


def show_figure(result: Result | None, width: int) -> str:
    key = figure_key(result)
    if result is None or key is None:
        return f"{'n/a':>{width}}"
    value = float(result[key])
    if key == "seconds":
        return f"{value * 1e3:>{width},.1f}"
    if key == "bytes":
        return f"{value / 2**20:>{width},.2f}"
    if key == "p99_us":
        return f"{value:>{width},.1f}"
    return f"{value:>{width},.0f}"


def format_table(peer: str, rows: list[Row], rounds: int) -> str:
    peer_delta = f"{peer} Δ"
    width = max(len(peer_delta), 8)
    lines = [
        f"HaloDB vs {peer}, best of {rounds} round(s) per side",
        f"ratio = HaloDB ÷ {peer} (ops/s) or {peer} ÷ HaloDB (ms, µs p99, MiB): > 1 means HaloDB "
        "is better",
        "Δ = after ÷ before - 1 (of a ratio, or of an engine's figure): + means after is better",
        f"{'benchmark':<14}  {'before':>8} {'after':>8} {'ratio Δ':>8}  {'halodb before':>13} "
        f"{'halodb after':>13} {'halodb Δ':>9}  {peer_delta:>{width}}  unit",
    ]
    for row in rows:
        key = figure_key(row.halodb_before) or figure_key(row.halodb_after) or ""
        lines.append(
            f"{row.bench:<14}  {show_ratio(row.ratio_before, 8)} {show_ratio(row.ratio_after, 8)} "
            f"{show_change(row.ratio_change, 8)}  {show_figure(row.halodb_before, 13)} "
            f"{show_figure(row.halodb_after, 13)} {show_change(row.halodb_change, 9)}  "
            f"{show_change(row.peer_change, width)}  {UNITS.get(key, '')}"
        )
    noise = [row.peer_change for row in rows if row.peer_change is not None]
    if noise:
        lines.append(
            f"{peer} runs the same code on both sides, so its own Δ (here {min(noise):+.1%} to "
            f"{max(noise):+.1%}) shows this run's noise;\na ratio Δ carries both engines' noise."
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        description="Run db_bench for two HaloDB source trees in one run, interleaved, and "
        "print HaloDB's ratios to its peers before and after.",
        epilog="Every other option goes to db_bench.py (see its --help), e.g. --num 200000. "
        + MACHINE_NOTE,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--before", required=True, help="a git revision of this repository, or a checkout dir"
    )
    parser.add_argument(
        "--after",
        default=str(REPO),
        help="a git revision or a checkout dir (default: this checkout, as it is on disk)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="db_bench runs per side (3)")
    parser.add_argument(
        "--engines",
        default="halodb,sqlite3",
        help="passed to db_bench; must hold halodb and a peer (halodb,sqlite3)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="db_bench's stores go in a temporary directory here, removed afterwards (system temp)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="hide db_bench's progress")
    args, bench_args = parser.parse_known_args(argv)
    engines = [name.strip() for name in args.engines.split(",") if name.strip()]
    if SUBJECT not in engines or len(engines) < 2:
        parser.error(f"--engines needs {SUBJECT} and at least one peer")
    if args.rounds < 1:
        parser.error("need --rounds >= 1")
    return args, [*bench_args, "--engines", ",".join(engines)]


def build_document(
    args: argparse.Namespace,
    bench_args: list[str],
    sides: dict[str, Side],
    orders: list[list[str]],
    tables: dict[str, list[Row]],
    best: dict[str, Results],
) -> dict[str, Any]:
    first = sides["before"].runs[0]
    return {
        "machine_note": MACHINE_NOTE,
        "db_bench": str(DB_BENCH),
        "db_bench_args": bench_args,
        "config": {**first["config"], "rounds": args.rounds},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "orders": orders,
        "definition": {
            "ratio": "halodb ops/s / peer ops/s; peer seconds / halodb seconds; peer put p99 / "
            "halodb put p99; peer bytes / halodb bytes: > 1 means HaloDB is better",
            "change": "after / before - 1, oriented so that + means after is better",
            "best": "over the rounds, the most ops/s, the least seconds and the least put p99",
        },
        "sides": {
            name: {
                "spec": side.spec,
                "kind": side.kind,
                "origin": side.origin,
                "halodb_file": side.halodb_file,
                "results": best[name],
                "rounds": [document["engines"] for document in side.runs],
            }
            for name, side in sides.items()
        },
        "comparison": {
            peer: {row.bench: row.as_json() for row in rows} for peer, rows in tables.items()
        },
    }


def report(
    args: argparse.Namespace, bench_args: list[str], sides: dict[str, Side], orders: list[list[str]]
) -> None:
    """Print the tables, one per peer that ran on both sides, and write --json."""
    best = {name: combine(side) for name, side in sides.items()}
    benches = list(sides["before"].runs[0]["descriptions"])  # db_bench's report order
    peers = [e for e in best["before"] if e != SUBJECT and e in best["after"]]
    tables = {peer: make_rows(benches, peer, best["before"], best["after"]) for peer in peers}
    config = {**sides["before"].runs[0]["config"], "rounds": args.rounds}
    print("compare: " + " ".join(f"{k}={v}" for k, v in config.items()))
    for side in sides.values():
        print(f"  {side.name:<6} {side.describe()}: {side.halodb_file}")
    print(f"  order: {', '.join('/'.join(order) for order in orders)}")
    for engine, why in sides["before"].runs[0]["skipped"].items():
        print(f"note: db_bench skipped {engine}: {why}")
    print(MACHINE_NOTE)
    for peer, rows in tables.items():
        print()
        print(format_table(peer, rows, args.rounds))
    if not tables:
        print("\n(no peer ran on both sides: no ratios)")
    if args.json is not None:
        document = build_document(args, bench_args, sides, orders, tables, best)
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        print(f"\nwrote {args.json}")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up as Ctrl-C does


def main(argv: Sequence[str] | None = None) -> int:
    args, bench_args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        with (
            tempfile.TemporaryDirectory(prefix="halodb-compare-") as tmp,
            tempfile.TemporaryDirectory(
                prefix="halodb-compare-stores-", dir=args.workdir
            ) as stores,
        ):
            # A killed db_bench leaves its stores behind: they go with this directory.
            bench_args = [*bench_args, "--workdir", stores]
            scratch = Path(tmp)
            sides = {name: materialize(name, getattr(args, name), scratch) for name in SIDES}
            for side in sides.values():
                log(f"compare: {side.name}: {side.describe()}, src {side.src}")
            orders = run_rounds(sides, args.rounds, bench_args, scratch, args.quiet)
            report(args, bench_args, sides, orders)
    except CompareError as exc:
        log(f"compare: error: {exc}")
        return 1
    except KeyboardInterrupt:
        log("compare: interrupted; the temporary trees are removed")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

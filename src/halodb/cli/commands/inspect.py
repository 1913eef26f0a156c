"""The inspection and upkeep commands (stats, tree, check, flush, compact): thin wrappers over
``Store.stats()``, ``Store.check()``, ``Store.flush()``, ``Store.compact()`` and
:func:`halodb.introspect.tree_top`; they must not know the engine's internals (introspect reads
the nodes), how errors become exit statuses or the shell."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Annotated

import typer
from rich.text import Text

import halodb
from halodb import introspect
from halodb.cli.render import plural, size, stats_table, tree_drawing, tree_json
from halodb.cli.session import session_of
from halodb.cli.status import EXIT_USAGE, CliError
from halodb.cli.terminal import NoInterrupt, console
from halodb.cli.terminal import progress as progress_bar
from halodb.cli.typer_app import AsJson, CodecOption, PathOption, Progress, command


@command(panel="Inspect")
def stats(
    ctx: typer.Context, as_json: AsJson = False, path: PathOption = None, codec: CodecOption = None
) -> None:
    """Show counters and sizes per partition, and totals."""
    s = session_of(ctx, path, codec)
    with s.guard(), s.store(write=False, values=False) as db:
        if db is None:
            s.info(f"no store at {s.path} yet (it is created on first write)")
            return
        st = db.stats()
        if as_json:
            s.out(json.dumps(dataclasses.asdict(st), indent=2))
        else:
            out = console()
            out.print(stats_table(st, out.width))


@command(panel="Inspect")
def tree(
    ctx: typer.Context,
    depth: Annotated[
        int, typer.Option("--depth", "-d", min=1, max=8, help="Levels to draw, from the root.")
    ] = 2,
    partition: Annotated[
        int | None, typer.Option("--partition", "-P", min=0, help="Only this partition.")
    ] = None,
    as_json: AsJson = False,
    path: PathOption = None,
    codec: CodecOption = None,
) -> None:
    """Show each partition's B+ tree.

    Its height, nodes per level, fill factor, and a drawing of its top levels. Verifies the
    whole store on the way (like check).
    """
    s = session_of(ctx, path, codec)
    with s.guard(), s.store(write=False, values=False) as db:
        if db is None:
            s.info(f"no store at {s.path} yet (it is created on first write)")
            return
        reports = db.check()
        st = db.stats()
        indexes = range(len(reports)) if partition is None else [partition]
        if partition is not None and partition >= len(reports):
            raise CliError(EXIT_USAGE, f"no partition {partition}: the store has {len(reports)}")
        if as_json:
            data = [
                tree_json(i, reports[i], st.page_size, st.partitions[i].memtable_entries)
                for i in indexes
            ]
            s.out(json.dumps(data, indent=2))
            return
        out = console()
        for i in indexes:
            r = reports[i]
            fill = r.fill_factor(st.page_size)
            title = Text.assemble(
                (f"partition {i}", "bold"),
                f": height {r.height}, {plural(r.keys, 'key')} in the tree, fill factor "
                f"{fill:.0%}, {plural(r.page_count, 'page')} "
                f"({r.free_pages} free, {r.overflow_pages} overflow)",
            )
            out.print(title)
            levels = [
                f"{plural(n, 'node')} {level_fill:.0%} full"
                for n, level_fill in zip(
                    r.nodes_per_level,
                    introspect.level_fill_factors(r, st.page_size),
                    strict=True,
                )
            ]
            if levels:
                out.print("  nodes per level, root first: " + " → ".join(levels))
            pending = st.partitions[i].memtable_entries
            if pending:
                out.print(
                    f"  memtable: {plural(pending, 'entry', 'entries')} "
                    "not in the tree yet ('flush' moves them)"
                )
            top = introspect.tree_top(db, i, depth, fanout=introspect.FANOUT)
            if top is None:
                out.print("  (empty tree)")
            else:
                out.print(tree_drawing(top))


@command(panel="Inspect")
def check(
    ctx: typer.Context, as_json: AsJson = False, path: PathOption = None, codec: CodecOption = None
) -> None:
    """Verify every page, checksum and structure.

    Exit status 3 if anything is damaged.
    """
    s = session_of(ctx, path, codec)
    with s.guard(), s.store(write=False, values=False) as db:
        if db is None:
            s.info(f"no store at {s.path} yet: nothing to check")
            return
        try:
            reports = db.check()
        except halodb.CorruptionError as exc:
            if as_json:
                s.out(json.dumps({"ok": False, "error": str(exc)}))
            raise
        st = db.stats()
        pages = sum(r.page_count for r in reports)
        if as_json:
            s.out(json.dumps({"ok": True, "partitions": len(reports), "keys": st.keys,
                              "pages": pages}))  # fmt: skip
        else:
            s.out(
                f"ok: {plural(len(reports), 'partition')}, {plural(st.keys, 'key')}, "
                f"{plural(pages, 'page')} verified"
            )


@command(panel="Inspect")
def flush(ctx: typer.Context, path: PathOption = None, codec: CodecOption = None) -> None:
    """Move the memtables into the on-disk trees."""
    s = session_of(ctx, path, codec)
    with s.guard(), NoInterrupt(), s.store(write=True, create=False, values=False) as db:
        if db is None:
            s.info("no store yet: nothing to flush")
            return
        pending = sum(p.memtable_entries for p in db.stats().partitions)
        db.flush()
        s.info(f"flushed {plural(pending, 'memtable entry', 'memtable entries')}")


@command(panel="Inspect")
def compact(
    ctx: typer.Context,
    progress: Progress = None,
    as_json: AsJson = False,
    path: PathOption = None,
    codec: CodecOption = None,
) -> None:
    """Give the trees' free space back to the file system.

    Moves tree pages toward the start of their files, merges underfull neighbour leaves and
    cuts the files' free ends, a step at a time. Ctrl-C stops it between two steps: what was
    done stays done.
    """
    s = session_of(ctx, path, codec)
    with s.guard(), s.store(write=True, create=False, values=False) as db:
        if db is None:
            s.info("no store yet: nothing to compact")
            return
        total = sum(p.pages for p in db.stats().partitions)
        show = progress if progress is not None else sys.stderr.isatty()
        with NoInterrupt() as held, progress_bar(show, "compacting", total) as update:

            def step(done: int, _total: int) -> None:
                update(done)
                held.check()

            report = db.compact(step)
        if as_json:
            s.out(json.dumps(dataclasses.asdict(report)))
        else:
            s.info(
                f"compacted: {size(report.file_bytes_before)} → {size(report.file_bytes_after)} "
                f"on disk ({plural(report.steps, 'step')}, "
                f"{plural(report.pages_rewritten, 'page')} rewritten)"
            )

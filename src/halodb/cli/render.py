"""How the ``halodb`` command shows keys, values, records, counters and trees: text and rich
renderables, printed by the commands; it must not know the store session, the terminal's
streams or what a command does.

Values are shown safely: text as is (but as a literal if it holds characters that would
disturb a terminal), bytes as a ``b'...'`` literal, other values as JSON; with ``-t`` always as
Python literals.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, cast

from rich import box
from rich.table import Table
from rich.tree import Tree

import halodb
from halodb import jsonl
from halodb.cli.literals import literal_text
from halodb.cli.status import EXIT_USAGE, CliError
from halodb.introspect import NodeView, TreeReport
from halodb.keys import Key

MISSING: Any = object()
"""No value: a key-only record (``list -k --json``), an absent key (``get``)."""

# Characters that could move the cursor, ring the bell, start an escape sequence or not encode.
_UNSAFE_BLOCK = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_UNSAFE_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def plural(n: int, word: str, plural: str | None = None) -> str:
    """``n`` and ``word``, in the plural unless ``n`` is 1: ``1 key``, ``2,000 keys``."""
    return f"{n:,} " + (word if n == 1 else plural or word + "s")


def size(n: float) -> str:
    """A byte count in B, KiB, MiB..."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


# ----------------------------------------------------------------------------- keys and values


def show_key(key: Key, *, typed: bool = False) -> str:
    """A key on one line: a printable str as is, anything else (or everything, if ``typed``)
    as a Python literal."""
    if type(key) is str and not typed and not _UNSAFE_LINE.search(key):
        return key
    return literal_text(key)


def _printable(text: str) -> str:
    """``text`` with every character that could disturb a terminal written as an escape."""
    return _UNSAFE_LINE.sub(lambda m: repr(m.group())[1:-1], text)


def show_value(value: object, *, typed: bool = False, one_line: bool = False) -> str:
    """A value for a terminal: text as is (unless it holds control characters), bytes as a
    ``b'...'`` literal, other values as JSON; with ``typed``, always a Python literal.
    A value JSON cannot hold (a set or an object, from a store using the pickle codec) is
    shown as its ``repr()``, escaped."""
    if typed:
        return _printable(literal_text(value))
    if type(value) is str:
        unsafe = _UNSAFE_LINE if one_line else _UNSAFE_BLOCK
        return repr(value) if unsafe.search(value) else value
    if type(value) is bytes:
        return repr(value)
    try:
        exact = plain_json(value, 0)
        text = json.dumps(value, ensure_ascii=False) if exact else ""
    except (TypeError, ValueError, RecursionError):
        exact = False
    if not exact:
        return _printable(literal_text(value))
    return json.dumps(value) if _UNSAFE_BLOCK.search(text) else text


def plain_json(value: object, depth: int) -> bool:
    """Whether JSON shows ``value`` exactly: what the default codec stores (a store using
    the pickle codec may hold tuples, sets, dicts with other keys...)."""
    t = type(value)
    if t is str or t is int or t is float or t is bool or value is None:
        return True
    if depth > 200:
        return False
    if t is list:
        return all(plain_json(item, depth + 1) for item in cast(list[object], value))
    if t is dict:
        items = cast(dict[object, object], value).items()
        return all(type(k) is str and plain_json(v, depth + 1) for k, v in items)
    return False


def json_line(key: Key, value: object = MISSING) -> str:
    """One JSON Lines record (:func:`halodb.jsonl.record`; without ``value``: ``{"key": K}``).
    ``CliError`` (usage) for a value JSON Lines cannot hold."""
    try:
        return jsonl.record(key) if value is MISSING else jsonl.record(key, value)
    except halodb.DataError as exc:
        raise CliError(EXIT_USAGE, str(exc)) from None


# ----------------------------------------------------------------------------- stats


def _hit_rate(hits: int, misses: int) -> str:
    return f"{100 * hits / (hits + misses):.0f}%" if hits + misses else "-"


def _stats_rows(st: halodb.StoreStats) -> list[tuple[str, list[str], str]]:
    """(counter, value per partition, total) for every counter ``stats`` shows."""
    parts = st.partitions

    def counts(values: list[int]) -> tuple[list[str], str]:
        return [f"{v:,}" for v in values], f"{sum(values):,}"

    def sizes(values: list[int]) -> tuple[list[str], str]:
        return [size(v) for v in values], size(sum(values))

    rows: list[tuple[str, tuple[list[str], str]]] = [
        ("keys", counts([p.keys for p in parts])),
        ("memtable entries", counts([p.memtable_entries for p in parts])),
        ("memtable size", sizes([p.memtable_bytes for p in parts])),
        ("frozen entries", counts([p.frozen_entries for p in parts])),
        ("log size", sizes([p.wal_bytes for p in parts])),
        ("tree height", ([str(p.tree_height) for p in parts],
                         str(max((p.tree_height for p in parts), default=0)))),
        ("tree keys", counts([p.tree_keys for p in parts])),
        ("pages", counts([p.pages for p in parts])),
        ("free pages", counts([p.free_pages for p in parts])),
        ("cache hits", ([_hit_rate(p.cache_hits, p.cache_misses) for p in parts],
                        _hit_rate(sum(p.cache_hits for p in parts),
                                  sum(p.cache_misses for p in parts)))),
        ("bloom skips", counts([p.bloom_negatives for p in parts])),
        ("flushes", counts([p.flushes for p in parts])),
    ]  # fmt: skip
    return [(name, per, total) for name, (per, total) in rows]


def stats_table(st: halodb.StoreStats, width: int) -> Table:
    """The counters: a column per partition and the total when that fits in ``width``,
    else a row per partition and a total row."""
    title = (
        f"{st.path}: {plural(st.keys, 'key')} in {plural(len(st.partitions), 'partition')}, "
        f"page size {st.page_size}, durability {st.durability}, "
        f"opened in {st.last_recovery_seconds:.3f} s, background worker {st.worker}, "
        f"{plural(st.stalls, 'stall')}, {plural(st.compact_steps, 'compaction step')}; "
        f"{size(st.file_bytes)} on disk, "
        f"{size(st.live_bytes)} of tree pages in use"
    )
    rows = _stats_rows(st)
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    cell = max(len(v) for _, per, total in rows for v in (*per, total)) + 2
    if 18 + cell * (len(st.partitions) + 1) <= width:
        table.add_column("partition", style="bold")
        for p in st.partitions:
            table.add_column(str(p.index), justify="right")
        table.add_column("total", justify="right", style="bold")
        for name, per, total in rows:
            table.add_row(name, *per, total)
        return table
    table.add_column("partition", style="bold", no_wrap=True, min_width=5)
    for name, _, _ in rows:
        table.add_column(name, justify="right")
    for i in range(len(st.partitions)):
        table.add_row(str(i), *(per[i] for _, per, _ in rows))
    table.add_section()
    table.add_row("total", *(total for _, _, total in rows), style="bold")
    return table


# ----------------------------------------------------------------------------- trees


def _short_key(key: Key | None) -> str:
    if key is None:
        return "-"
    text = literal_text(key)
    return text if len(text) <= 32 else text[:31] + "…"


def node_label(view: NodeView) -> str:
    """A tree node on one line: page, kind, key count and key range."""
    kind, what = ("leaf", "key") if view.leaf else ("internal", "separator")
    if view.size == 1:
        span = _short_key(view.first)
    else:
        span = f"{_short_key(view.first)} … {_short_key(view.last)}" if view.size else ""
    return f"page {view.page} · {kind} · {plural(view.size, what)}" + (f" · {span}" if span else "")


def tree_drawing(top: NodeView) -> Tree:
    """The nodes :func:`halodb.introspect.tree_top` read, drawn as a tree."""
    drawing = Tree(node_label(top), guide_style="dim")
    _draw(drawing, top)
    return drawing


def _draw(branch: Tree, view: NodeView) -> None:
    for child in view.children:
        if isinstance(child, int):
            branch.add(f"… {plural(child, 'more node')}", style="dim")
        else:
            _draw(branch.add(node_label(child)), child)


def tree_json(index: int, report: TreeReport, page_size: int, memtable: int) -> dict[str, Any]:
    """What ``tree --json`` prints for a partition."""
    return {
        "partition": index,
        **dataclasses.asdict(report),
        "fill_factor": report.fill_factor(page_size),
        "memtable_entries": memtable,
    }

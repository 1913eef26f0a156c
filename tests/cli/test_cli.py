"""The ``halodb`` command: every subcommand through typer's CliRunner (including error paths and
exit codes), the shell through :meth:`Shell.onecmd`, and the shell in a real pseudo-terminal."""

from __future__ import annotations

import io
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner, Result

import halodb
import halodb.testing
from halodb import cli
from halodb.cli import Shell, app, from_json, literal_text, parse_literal, to_json
from halodb.cli.commands import data as data_commands
from support.stores import same_value

runner = CliRunner()

EXIT_NOT_FOUND, EXIT_USAGE, EXIT_STORE, EXIT_INTERRUPTED = 1, 2, 3, 130


def run(store: Path | str, *args: str, input: str | bytes | None = None, **kw: Any) -> Result:
    """``halodb --path STORE ARGS...``; asserts that no traceback and no exception escaped."""
    result = runner.invoke(app, ["--path", str(store), *args], input=input, **kw)
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    return result


def make_store(path: Path, items: dict[Any, Any] | None = None, **options: Any) -> Path:
    """A store at ``path`` holding ``items``; four partitions unless ``options`` say (the
    default of the stores these tests were written for: their listings span partitions)."""
    options.setdefault("partitions", 4)
    with halodb.open(path, **options) as db:
        db.update(items or {})
    return path


def one_line_error(result: Result, *fragments: str) -> None:
    """The failure is reported as exactly one line on stderr, holding every fragment."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# ----------------------------------------------------------------------------- basics


def test_help_says_where_the_store_is_and_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    out = result.stdout
    assert "HALODB_PATH" in out
    assert "./halodb-data" in out
    assert "created on first write" in out
    for name in ("put", "get", "delete", "list", "count", "clear", "stats", "tree", "check",
                 "flush", "compact", "dump", "load", "shell"):  # fmt: skip
        assert re.search(rf"\b{name}\b", out), name


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"halodb {halodb.__version__}"


def test_put_get_delete(tmp_path: Path) -> None:
    store = tmp_path / "db"
    assert run(store, "put", "key1", "value1").exit_code == 0
    result = run(store, "get", "key1")
    assert (result.exit_code, result.stdout) == (0, "value1\n")
    assert run(store, "delete", "key1").exit_code == 0
    result = run(store, "get", "key1")
    assert result.exit_code == EXIT_NOT_FOUND
    one_line_error(result, "not found", "'key1'")
    result = run(store, "delete", "key1")
    assert result.exit_code == EXIT_NOT_FOUND
    one_line_error(result, "not found")


def test_spaces_and_dashes_in_keys_and_values(tmp_path: Path) -> None:
    store = tmp_path / "db"
    assert run(store, "put", "my key", "a value").exit_code == 0
    assert run(store, "put", "--", "neg", "-5").exit_code == 0
    assert run(store, "get", "my key").stdout == "a value\n"
    assert run(store, "get", "neg").stdout == "-5\n"
    assert run(store, "get", "-t", "'neg'").stdout == "'-5'\n"  # -t shows the type


def test_path_comes_from_option_then_environment_then_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HALODB_PATH", raising=False)
    result = runner.invoke(app, ["get", "a"])
    assert result.exit_code == EXIT_STORE  # a read never creates the store
    assert not (tmp_path / "halodb-data").exists()
    assert runner.invoke(app, ["put", "a", "default"]).exit_code == 0
    assert (tmp_path / "halodb-data").is_dir()  # created on first write

    env_store = tmp_path / "from-env"
    result = runner.invoke(app, ["put", "a", "env"], env={"HALODB_PATH": str(env_store)})
    assert result.exit_code == 0
    assert runner.invoke(app, ["get", "a"], env={"HALODB_PATH": str(env_store)}).stdout == "env\n"
    result = runner.invoke(
        app, ["--path", "halodb-data", "get", "a"], env={"HALODB_PATH": str(env_store)}
    )
    assert result.stdout == "default\n"


@pytest.mark.parametrize(
    "args",
    [["get", "k"], ["list"], ["count"], ["stats"], ["tree"], ["check"], ["dump"]],
)
def test_reads_of_a_missing_store_fail_and_create_nothing(tmp_path: Path, args: list[str]) -> None:
    store = tmp_path / "absent"
    result = run(store, *args)
    assert result.exit_code == EXIT_STORE
    one_line_error(result, "no HaloDB store")
    assert not store.exists()


def test_writes_that_need_no_store_do_not_create_one(tmp_path: Path) -> None:
    store = tmp_path / "absent"
    assert run(store, "delete", "k").exit_code == EXIT_NOT_FOUND
    assert run(store, "clear", "--yes").exit_code == 0
    assert run(store, "flush").exit_code == 0
    assert not store.exists()


# ----------------------------------------------------------------------------- values


def test_values_from_stdin_text_and_binary(tmp_path: Path) -> None:
    store = tmp_path / "db"
    assert run(store, "put", "text", "-", input="line 1\nline 2\n").exit_code == 0
    assert run(store, "put", "bin", "-", input=b"\x00\x01\xff\xfe").exit_code == 0
    assert run(store, "put", "forced", "-", "--bytes", input="abc").exit_code == 0
    with halodb.open(store, readonly=True) as db:
        assert db["text"] == "line 1\nline 2\n"
        assert db["bin"] == b"\x00\x01\xff\xfe"
        assert db["forced"] == b"abc"
    assert run(store, "get", "text").stdout == "line 1\nline 2\n\n"
    shown = run(store, "get", "bin")
    assert shown.stdout == "b'\\x00\\x01\\xff\\xfe'\n"  # shown safely, as a literal
    raw = run(store, "get", "bin", "--raw")
    assert raw.stdout_bytes == b"\x00\x01\xff\xfe"


def test_control_characters_never_reach_the_terminal(tmp_path: Path) -> None:
    store = make_store(tmp_path / "db", {"bell": "\x07ring\x1b[31m", "tab\tkey": "a\tb"})
    assert run(store, "get", "bell").stdout == "'\\x07ring\\x1b[31m'\n"
    listing = run(store, "list").stdout.splitlines()
    assert listing == ["bell\t'\\x07ring\\x1b[31m'", "'tab\\tkey'\t'a\\tb'"]


def test_json_values_show_as_json(tmp_path: Path) -> None:
    store = make_store(tmp_path / "db", {"doc": {"a": [1, 2.5, None, True]}, "n": 42})
    assert run(store, "get", "doc").stdout == '{"a": [1, 2.5, null, true]}\n'
    assert run(store, "get", "n").stdout == "42\n"
    assert run(store, "get", "-t", "'doc'").stdout == "{'a': [1, 2.5, None, True]}\n"
    record = json.loads(run(store, "get", "--json", "doc").stdout)
    assert record == {"key": "doc", "value": {"a": [1, 2.5, None, True]}}


# ----------------------------------------------------------------------------- typed keys


def test_typed_keys(tmp_path: Path) -> None:
    store = tmp_path / "db"
    for key, value in [("42", "int"), ("'42'", "str"), ("2.5", "float"), ("-7", "negative"),
                       ("b'\\x00raw'", "bytes"), ("('user', 42)", "tuple"),
                       ("('user', (1, b'x'), -2.5)", "nested")]:  # fmt: skip
        assert run(store, "put", "-t", "--", key, value).exit_code == 0, key
    with halodb.open(store, readonly=True) as db:
        assert db[42] == "int"
        assert db["42"] == "str"
        assert db[2.5] == "float"
        assert db[-7] == "negative"
        assert db[b"\x00raw"] == "bytes"
        assert db[("user", 42)] == "tuple"
        assert db[("user", (1, b"x"), -2.5)] == "nested"
    assert run(store, "get", "-t", "('user', 42)").stdout == "'tuple'\n"  # shown typed
    assert run(store, "get", "42").stdout == "str\n"  # without -t a key is text
    listing = run(store, "list", "-t", "-k").stdout.splitlines()
    # the store's order: ints, then floats, then str, bytes and tuples
    assert listing == ["-7", "42", "2.5", "'42'", "b'\\x00raw'", "('user', 42)",
                       "('user', (1, b'x'), -2.5)"]  # fmt: skip
    assert run(store, "count", "-t", "--prefix", "('user',)").stdout == "2\n"


def test_typed_values(tmp_path: Path) -> None:
    store = tmp_path / "db"
    assert run(store, "put", "-T", "d", "{'a': [1, None, True], 'b': b'x'}").exit_code == 2
    assert run(store, "put", "-T", "d", "{'a': [1, None, True]}").exit_code == 0
    assert run(store, "put", "-T", "b", "b'\\xff'").exit_code == 0
    assert run(store, "put", "-T", "--", "n", "-3").exit_code == 0
    assert run(store, "put", "-t", "-T", "7", "2.5").exit_code == 0
    assert run(store, "put", "-t", "7", "text").exit_code == 0  # -t alone: the value is text
    with halodb.open(store, readonly=True) as db:
        assert db["d"] == {"a": [1, None, True]}
        assert db["b"] == b"\xff"
        assert db["n"] == -3
        assert db[7] == "text"
    result = run(store, "put", "-T", "x", "not a literal")
    assert result.exit_code == EXIT_USAGE
    one_line_error(result, "bad typed value")
    result = run(store, "put", "-T", "t", "(1, 2)")
    assert result.exit_code == EXIT_USAGE
    one_line_error(result, "bad typed value", "tuple")


@pytest.mark.parametrize(
    "literal",
    [
        "__import__('os').system('touch pwned')",
        "open('pwned', 'w')",
        "os",
        "1 + 2",
        "f'{1}'",
        "lambda: 0",
        "[1, 2]",  # a list is not a key
        "True",  # bool is not a key
        "None",
        "1j",
        "('a', [1])",
        "(",
        "nan",  # NaN is not a key
    ],
)
def test_bad_typed_keys_are_usage_errors_and_never_evaluated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, literal: str
) -> None:
    monkeypatch.chdir(tmp_path)
    result = run(tmp_path / "db", "put", "-t", literal, "v")
    assert result.exit_code == EXIT_USAGE
    one_line_error(result, "bad typed key")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["get", "-t", "1" * 5000], "bad typed key"),  # too many digits for an int
        (["get", "-t", "(" + "1, " * 2000 + "nope)"], "bad typed key"),  # a name, far in
        (["list", "-t", "--prefix", "1" * 5000], "bad typed key"),
        (["put", "-T", "k", "[" + "1, " * 2000 + "nope]"], "bad typed value"),
    ],
)
def test_bad_literals_are_echoed_cut_short(tmp_path: Path, args: list[str], message: str) -> None:
    store = make_store(tmp_path / "db")
    result = run(store, *args)
    assert result.exit_code == EXIT_USAGE
    one_line_error(result, message, "characters)")
    echo = re.search(r"bad typed \w+ ('[^']*')…", result.stderr)
    assert echo is not None, result.stderr
    assert len(echo.group(1)) == 62  # 60 characters and the quotes
    assert len(result.stderr) < 600


def test_shell_echoes_a_bad_literal_cut_short(
    shell: Shell, capsys: pytest.CaptureFixture[str]
) -> None:
    shell.onecmd("get -t " + "9" * 5000)
    err = capsys.readouterr().err
    assert err.startswith("error: bad typed key '999")
    assert "(5,000 characters)" in err
    assert len(err) < 600


# ----------------------------------------------------------------------------- listing


@pytest.fixture
def letters(tmp_path: Path) -> Path:
    return make_store(tmp_path / "db", {f"{c}{i}": f"v-{c}{i}" for c in "abc" for i in range(3)})


def test_list_is_ordered_and_filtered(letters: Path) -> None:
    def keys(*args: str) -> list[str]:
        return run(letters, "list", "-k", *args).stdout.split()

    assert keys() == ["a0", "a1", "a2", "b0", "b1", "b2", "c0", "c1", "c2"]
    assert keys("--prefix", "b") == ["b0", "b1", "b2"]
    assert keys("--start", "a2", "--stop", "b2") == ["a2", "b0", "b1"]
    assert keys("--reverse", "--limit", "2") == ["c2", "c1"]
    assert keys("-r", "--prefix", "a") == ["a2", "a1", "a0"]
    assert keys("-n", "0") == []
    assert run(letters, "list", "--prefix", "a", "-n", "1").stdout == "a0\tv-a0\n"


def test_list_json_lines(letters: Path) -> None:
    lines = run(letters, "list", "--json", "--prefix", "c").stdout.splitlines()
    assert [json.loads(line) for line in lines] == [
        {"key": f"c{i}", "value": f"v-c{i}"} for i in range(3)
    ]


def test_count(letters: Path) -> None:
    assert run(letters, "count").stdout == "9\n"
    assert run(letters, "count", "--prefix", "b").stdout == "3\n"
    assert run(letters, "count", "--start", "b1").stdout == "5\n"


def test_bad_options_are_usage_errors(letters: Path) -> None:
    assert run(letters, "list", "--limit", "-1").exit_code == EXIT_USAGE
    for huge in ("99999999999999999999", str(sys.maxsize + 1)):  # beyond what islice takes
        result = run(letters, "list", "-n", huge)
        assert result.exit_code == EXIT_USAGE, result.stderr
        assert "--limit" in result.stderr
        assert "internal error" not in result.stderr
    assert run(letters, "list", "-k", "-n", str(sys.maxsize)).stdout.split()[-1] == "c2"
    assert run(letters, "list", "--bogus").exit_code == EXIT_USAGE
    assert run(letters, "bogus").exit_code == EXIT_USAGE
    assert run(letters, "get").exit_code == EXIT_USAGE
    assert run(letters, "put", "only-key").exit_code == EXIT_USAGE
    assert run(letters, "get", "a", "b").exit_code == EXIT_USAGE
    result = run(letters, "list", "-t", "--prefix", "42")
    assert result.exit_code == EXIT_USAGE
    one_line_error(result, "a prefix is a str, bytes or tuple")


def test_an_empty_store_path_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    make_store(tmp_path / "here")
    monkeypatch.chdir(tmp_path / "here")  # '' would have meant this store
    for args in (["--path", "", "count"], ["--path", "", "put", "a", "b"], ["shell", ""]):
        result = runner.invoke(app, args, input="count\n")
        assert result.exit_code == EXIT_USAGE, args
        assert "cannot be empty" in result.stderr, args
        assert result.stdout == "", args
    with halodb.open(tmp_path / "here", readonly=True) as db:
        assert len(db) == 0
    monkeypatch.delenv("HALODB_PATH", raising=False)
    result = runner.invoke(app, ["count"], env={"HALODB_PATH": ""})  # unset: the default
    assert result.exit_code == EXIT_STORE
    assert "halodb-data" in result.stderr


def test_clear_needs_confirmation(letters: Path) -> None:
    result = run(letters, "clear")
    assert result.exit_code == EXIT_USAGE
    one_line_error(result, "--yes")
    assert run(letters, "count").stdout == "9\n"
    result = run(letters, "clear", "--yes")
    assert result.exit_code == 0
    assert "deleted 9 keys" in result.stderr
    assert run(letters, "count").stdout == "0\n"


# ----------------------------------------------------------------------------- inspection


@pytest.fixture
def tall(tmp_path: Path) -> Path:
    """A store whose trees have two levels and more leaves than ``tree`` draws."""
    items = {f"user:{i:05d}": "x" * 40 for i in range(3000)}
    path = make_store(tmp_path / "tall", items, partitions=2)
    with halodb.open(path) as db:
        db.flush()  # (a close leaves the memtables in run files: these tests read trees)
    return path


def test_stats(tall: Path) -> None:
    result = run(tall, "stats")
    assert result.exit_code == 0
    out = result.stdout
    assert "3,000 keys in 2 partitions" in out
    for label in ("partition", "total", "keys", "memtable entries", "tree height", "pages"):
        assert label in out, label
    assert "on disk" in out and "of tree pages in use" in out and "background worker off" in out
    data = json.loads(run(tall, "stats", "--json").stdout)
    assert data["keys"] == 3000
    assert data["file_bytes"] == sum(p.stat().st_size for p in tall.iterdir())
    assert 0 < data["live_bytes"] < data["file_bytes"]
    assert (data["worker"], data["stalls"]) == ("off", 0)
    assert [p["index"] for p in data["partitions"]] == [0, 1]
    assert sum(p["keys"] for p in data["partitions"]) == 3000


def test_stats_of_many_partitions_has_a_row_each(tmp_path: Path) -> None:
    store = make_store(tmp_path / "wide", {"a": "b"}, partitions=16)
    out = run(store, "stats").stdout
    assert re.search(r"^\s*15\s", out, re.MULTILINE)
    assert re.search(r"^\s*total\s", out, re.MULTILINE)


def test_tree(tall: Path) -> None:
    result = run(tall, "tree")
    assert result.exit_code == 0
    out = result.stdout
    assert "partition 0: height 2" in out
    assert "partition 1: height 2" in out
    assert "fill factor" in out
    assert "nodes per level, root first: 1 node" in out
    assert "internal" in out
    assert "leaf" in out
    assert "more nodes" in out  # the drawing shows the first and last children only
    assert "'user:00000'" in out  # the first leaf starts at the first key of its partition

    one = run(tall, "tree", "--partition", "1", "--depth", "1").stdout
    assert "partition 0" not in one
    assert "leaf" not in one
    reports = json.loads(run(tall, "tree", "--json").stdout)
    assert [r["height"] for r in reports] == [2, 2]
    assert sum(r["keys"] for r in reports) == 3000
    assert all(0 < r["fill_factor"] <= 1 for r in reports)
    result = run(tall, "tree", "--partition", "5")
    assert result.exit_code == EXIT_USAGE
    one_line_error(result, "no partition 5")


def test_tree_mentions_the_memtable(tmp_path: Path) -> None:
    store = make_store(tmp_path / "db")
    db = halodb.open(store)
    db["fresh"] = "not flushed"
    halodb.testing.abandon(db)
    out = run(store, "tree").stdout
    assert "memtable: 1 entry not in the tree yet" in out
    assert "(empty tree)" in out


def test_check(tall: Path) -> None:
    result = run(tall, "check")
    assert result.exit_code == 0
    assert result.stdout.startswith("ok: 2 partitions, 3,000 keys")
    assert json.loads(run(tall, "check", "--json").stdout)["ok"] is True


def _corrupt_trees(store: Path, page_size: int) -> None:
    for tree in store.glob("*.tree"):
        data = bytearray(tree.read_bytes())
        for i in range(2 * page_size + 40, 2 * page_size + 80):
            data[i] ^= 0xFF
        tree.write_bytes(bytes(data))


def test_corrupted_store_is_a_store_error(tall: Path) -> None:
    _corrupt_trees(tall, 4096)
    for args in (["check"], ["list"], ["get", "user:00001"], ["tree"], ["dump"]):
        result = run(tall, *args)
        assert result.exit_code == EXIT_STORE, args
        one_line_error(result, "damaged", "checksum")
    result = run(tall, "check", "--json")
    assert json.loads(result.stdout)["ok"] is False


def test_corrupted_manifest(tmp_path: Path) -> None:
    store = make_store(tmp_path / "db", {"a": "b"})
    manifest = next(p for p in store.iterdir() if p.name.isupper() and p.name != "LOCK")
    data = bytearray(manifest.read_bytes())
    data[20] ^= 1
    manifest.write_bytes(bytes(data))
    for args in (["get", "a"], ["put", "a", "c"]):
        result = run(store, *args)
        assert result.exit_code == EXIT_STORE
        one_line_error(result, "manifest")


def test_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("hello")
    result = run(tmp_path / "docs", "put", "a", "b")
    assert result.exit_code == EXIT_STORE
    one_line_error(result, "not a HaloDB store")
    result = run(tmp_path / "docs", "get", "a")
    assert result.exit_code == EXIT_STORE
    one_line_error(result, "no HaloDB store")
    result = run(tmp_path / "docs" / "notes.txt", "put", "a", "b")
    assert result.exit_code == EXIT_STORE
    one_line_error(result, "not a directory")


def test_locked_store(tmp_path: Path) -> None:
    store = make_store(tmp_path / "db", {"a": "b"})
    with halodb.open(store):  # a writer: readers and other writers are refused
        for args in (["get", "a"], ["put", "a", "c"], ["list"], ["stats"]):
            result = run(store, *args)
            assert result.exit_code == EXIT_STORE, args
            one_line_error(result, "already open")
    with halodb.open(store, readonly=True):  # a reader: other readers are welcome
        assert run(store, "get", "a").stdout == "b\n"
        result = run(store, "put", "a", "c")
        assert result.exit_code == EXIT_STORE
        one_line_error(result, "already open")


def test_flush(tmp_path: Path) -> None:
    store = make_store(tmp_path / "db")
    db = halodb.open(store)
    db.update({"a": "1", "b": "2"})
    halodb.testing.abandon(db)
    result = run(store, "flush")
    assert result.exit_code == 0
    assert "flushed 2 memtable entries" in result.stderr
    data = json.loads(run(store, "stats", "--json").stdout)
    assert sum(p["memtable_entries"] for p in data["partitions"]) == 0
    assert sum(p["tree_keys"] for p in data["partitions"]) == 2


def _store_with_free_space(path: Path) -> Path:
    store = make_store(path)
    with halodb.open(store, compact_threshold=None) as db:
        db.update({f"k{i:05d}": "v" * 100 for i in range(5000)})
        db.flush()
        for i in range(4500):
            del db[f"k{i:05d}"]
    return store


def test_compact(tmp_path: Path) -> None:
    store = _store_with_free_space(tmp_path / "db")
    result = run(store, "compact", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["file_bytes_after"] < report["file_bytes_before"] // 4
    assert report["steps"] > 0
    result = run(store, "compact")
    assert result.exit_code == 0
    assert re.fullmatch(r"compacted: \S+ \S+ → \S+ \S+ on disk \(\d+ steps?, 0 pages rewritten\)\n",
                        result.stderr), result.stderr  # fmt: skip
    assert run(store, "check").exit_code == 0
    assert run(store, "count").stdout == "500\n"
    result = run(tmp_path / "none", "compact")
    assert result.exit_code == 0
    assert "nothing to compact" in result.stderr
    assert not (tmp_path / "none").exists()


def test_compact_stops_between_two_steps_on_ctrl_c(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store_with_free_space(tmp_path / "db")
    compact = halodb.Store.compact

    def interrupted(self: halodb.Store, progress: Any = None) -> Any:
        def step(done: int, total: int) -> None:
            os.kill(os.getpid(), signal.SIGINT)  # held back until the step is over
            progress(done, total)

        return compact(self, step)

    monkeypatch.setattr(halodb.Store, "compact", interrupted)
    result = run(store, "compact")
    assert result.exit_code == EXIT_INTERRUPTED
    monkeypatch.undo()
    assert run(store, "check").exit_code == 0
    assert run(store, "count").stdout == "500\n"
    with halodb.open(store) as db:
        assert db.stats().compact_steps == 0  # (a new open)
        assert dict(db.items()) == {f"k{i:05d}": "v" * 100 for i in range(4500, 5000)}


# ----------------------------------------------------------------------------- dump and load

ODD_ITEMS: dict[Any, Any] = {
    "text": "plain",
    "unicode ✓": "naïve — ✓",
    "surrogate \ud800": "lone \udfff",
    b"\x00\xffbinary": b"\x00\x01\xff",
    42: 1.0,
    -(10**300): "a big int key",
    2.5: [1, 2.5, None, True, {"nested": "dict"}],
    float("inf"): {"$bytes": "not a tag", "other": 1},
    float("-inf"): {"$bytes": "a dict whose only key looks like a tag"},
    ("user", 1, (b"\x00", -0.5)): {"nan": float("nan"), "inf": float("-inf")},
    "empty": "",
    "empty bytes": b"",
    "json null": None,
}


def test_dump_and_load_round_trip_every_type(tmp_path: Path) -> None:
    source = make_store(tmp_path / "source", ODD_ITEMS)
    dump_file = tmp_path / "dump.jsonl"
    result = run(source, "dump", str(dump_file))
    assert result.exit_code == 0
    assert f"dumped {len(ODD_ITEMS)} records to {dump_file}" in result.stderr
    lines = dump_file.read_text("utf-8").splitlines()  # valid UTF-8, one JSON object a line
    assert len(lines) == len(ODD_ITEMS)
    assert all(set(json.loads(line)) == {"key", "value"} for line in lines)

    target = tmp_path / "target"
    result = run(target, "load", str(dump_file))
    assert result.exit_code == 0
    assert f"loaded {len(ODD_ITEMS)} records in 1 batch" in result.stderr
    with halodb.open(target, readonly=True) as db:
        loaded = dict(db.items())
    assert loaded.keys() == ODD_ITEMS.keys()
    for key, value in ODD_ITEMS.items():
        assert same_value(loaded[key], value), key


def test_dump_to_stdout_and_load_from_stdin(tmp_path: Path) -> None:
    source = make_store(tmp_path / "source", {f"k{i}": i for i in range(10)})
    result = run(source, "dump", "--prefix", "k1")
    assert [json.loads(line) for line in result.stdout.splitlines()] == [{"key": "k1", "value": 1}]
    everything = run(source, "dump").stdout
    result = run(tmp_path / "target", "load", "-", "--json", input=everything)
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"records": 10, "batches": 1, "source": "stdin"}
    assert run(tmp_path / "target", "count").stdout == "10\n"


def test_load_is_atomic_per_batch_and_reports_what_it_did(tmp_path: Path) -> None:
    good = [json.dumps({"key": f"k{i}", "value": i}) for i in range(5)]
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join([*good, "{not json", *good]) + "\n")
    store = tmp_path / "db"
    result = run(store, "load", str(data), "--batch-size", "2")
    assert result.exit_code == EXIT_USAGE
    one_line_error(result, "line 6", "bad JSON", "4 records in 2 batches were loaded before it")
    with halodb.open(store, readonly=True) as db:
        assert sorted(db) == ["k0", "k1", "k2", "k3"]  # k4 shared the failed line's batch

    result = run(tmp_path / "all-or-nothing", "load", str(data), "--batch-size", "0")
    assert result.exit_code == EXIT_USAGE
    one_line_error(result, "line 6", "nothing was loaded")
    assert run(tmp_path / "all-or-nothing", "count").stdout == "0\n"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"key": "a"}', 'expected {"key": ..., "value": ...}'),
        ('["a", "b"]', 'expected {"key": ..., "value": ...}'),
        ('{"key": {"$what": 1}, "value": 1}', "unknown tag '$what'"),
        ('{"key": {"$bytes": "!!"}, "value": 1}', "line 1"),
        ('{"key": ["list"], "value": 1}', "list is not supported"),
        ('{"key": true, "value": 1}', "bool is not supported"),
        ('{"key": "a", "value": {"$tuple": [1]}}', "tuple is not supported"),
    ],
)
def test_load_rejects_bad_records(tmp_path: Path, line: str, message: str) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text(line + "\n")
    result = run(tmp_path / "db", "load", str(data))
    assert result.exit_code == EXIT_USAGE
    one_line_error(result, f"{data} line 1", message)


def test_load_of_a_missing_file(tmp_path: Path) -> None:
    result = run(tmp_path / "db", "load", str(tmp_path / "nope.jsonl"))
    assert result.exit_code == EXIT_USAGE
    one_line_error(result, "cannot read")


def test_an_interrupted_load_reports_what_count_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"key": f"k{i}", "value": i}) + "\n" for i in range(7)))
    commit = halodb.Batch.commit
    commits = 0

    def commit_during_ctrl_c(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal commits
        commits += 1
        if commits == 2:  # Ctrl-C while the second batch is being written
            handler = signal.getsignal(signal.SIGINT)
            assert callable(handler)
            handler(signal.SIGINT, None)  # what the signal would run
        return commit(self, *args, **kwargs)

    monkeypatch.setattr(halodb.Batch, "commit", commit_during_ctrl_c)
    store = tmp_path / "db"
    result = run(store, "load", str(data), "--batch-size", "2")
    monkeypatch.undo()
    assert result.exit_code == 130
    assert commits == 2  # the write completed, then the interrupt stopped the load
    one_line_error(result, "interrupted while loading", "4 records in 2 batches were loaded")
    assert run(store, "count").stdout == "4\n"


def test_progress_bars_can_be_forced(tmp_path: Path) -> None:
    source = make_store(tmp_path / "source", {f"k{i:04d}": i for i in range(2500)})
    result = run(source, "dump", str(tmp_path / "d.jsonl"), "--progress")
    assert result.exit_code == 0
    result = run(tmp_path / "target", "load", str(tmp_path / "d.jsonl"), "--progress")
    assert result.exit_code == 0
    assert run(tmp_path / "target", "count").stdout == "2500\n"


def test_a_failed_dump_leaves_no_file(tmp_path: Path) -> None:
    store = make_store(tmp_path / "db", {f"k{i}": "v" for i in range(100)})
    with halodb.open(store) as db:
        db.flush()  # (into the trees, which are then damaged)
    _corrupt_trees(store, 4096)
    out = tmp_path / "out.jsonl"
    assert run(store, "dump", str(out)).exit_code == EXIT_STORE
    assert list(tmp_path.glob("out.jsonl*")) == []


def test_dump_errors_name_the_file_given_not_its_temporary(tmp_path: Path) -> None:
    store = make_store(tmp_path / "db", {"a": "1"})
    target = tmp_path / "a-directory"
    target.mkdir()
    result = run(store, "dump", str(target))
    assert result.exit_code == EXIT_STORE
    one_line_error(result, f"cannot write {target}: ")
    assert ".tmp" not in result.stderr
    assert list(tmp_path.glob("*.tmp")) == []

    # The temporary file gets a fresh name: whatever sits at FILE.tmp is neither used nor
    # removed.
    (tmp_path / "out.jsonl.tmp").mkdir()
    (tmp_path / "out.jsonl.tmp" / "keep").write_text("mine")
    result = run(store, "dump", str(tmp_path / "out.jsonl"))
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "out.jsonl.tmp" / "keep").read_text() == "mine"
    assert (tmp_path / "out.jsonl").read_text().count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a-directory",
        "db",
        "out.jsonl",
        "out.jsonl.tmp",
    ]


# ----------------------------------------------------------------------------- the literal and
# JSON forms

keys_strategy = st.recursive(
    st.text() | st.binary() | st.integers() | st.floats(allow_nan=False),
    lambda children: st.lists(children, max_size=3).map(tuple),
    max_leaves=8,
)
values_strategy = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(keys_strategy)
def test_keys_round_trip_through_literals_and_json(key: Any) -> None:
    assert same_value(parse_literal(literal_text(key)), key)
    assert same_value(from_json(json.loads(json.dumps(to_json(key), allow_nan=False))), key)


@settings(max_examples=200, deadline=None)
@given(values_strategy | st.binary())
def test_values_round_trip_through_literals_and_json(value: Any) -> None:
    assert same_value(parse_literal(literal_text(value), value=True), value)
    assert same_value(from_json(json.loads(json.dumps(to_json(value), allow_nan=False))), value)


def test_literal_forms() -> None:
    assert parse_literal("-inf") == float("-inf")
    assert parse_literal("(1,)") == (1,)
    assert parse_literal("0x10") == 16
    assert literal_text(10**5000).startswith("0x")
    assert parse_literal(literal_text(-(10**5000))) == -(10**5000)
    assert to_json(10**5000) == {"$int": hex(10**5000)}
    assert from_json(json.loads(json.dumps(to_json(-(10**5000))))) == -(10**5000)
    with pytest.raises(ValueError, match="not a literal"):
        parse_literal("print('hi')")
    with pytest.raises(ValueError, match="not allowed"):
        parse_literal("None")
    assert parse_literal("None", value=True) is None


# ----------------------------------------------------------------------------- the shell,
# line by line


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[Shell]:
    sh = Shell(str(tmp_path / "db"), interactive=False)
    assert sh.start() == 0
    yield sh
    sh.close()


def test_shell_original_design_sequence(shell: Shell, capsys: pytest.CaptureFixture[str]) -> None:
    answers = iter(["y"])
    shell.session.ask = lambda prompt: next(answers)
    for line in ("put key1 value1", "get key1", "delete key1", "list", "clear", "stats", "tree"):
        assert shell.onecmd(line) is False
    out, err = capsys.readouterr()
    assert "created a new store" in out
    assert "value1\n" in out
    assert "(no keys)" in out
    assert "the store is empty already" in out
    assert "partition" in out
    assert "height 0" in out
    assert err == ""
    assert shell.onecmd("quit") is True


def test_shell_quoting(shell: Shell, capsys: pytest.CaptureFixture[str]) -> None:
    shell.onecmd('put "my key" "a value with spaces"')
    shell.onecmd("put 'single quoted' it\\'s")
    shell.onecmd('get "my key"')
    shell.onecmd("get 'single quoted'")
    out = capsys.readouterr().out
    assert "a value with spaces\n" in out
    assert "it's\n" in out


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("bogus", "unknown command 'bogus'"),
        ("gte a", "did you mean 'get'?"),
        ("get", "Missing argument 'KEY'"),
        ("put onlykey", "Missing argument 'VALUE'"),
        ('put "unterminated value', "bad quoting"),
        ("get absent", "not found: 'absent'"),
        ("delete absent", "not found: 'absent'"),
        ("list --bogus", "No such option"),
        ("get -t nope", "bad typed key"),
        ("commit", "no batch is open"),
        ("abort", "no batch is open"),
        ("shell", "this is the shell already"),
        ("put k -", "command line only"),
        ("load -", "command line only"),
        ("help nope", "no command 'nope'"),
    ],
)
def test_shell_mistakes_print_one_line_and_go_on(
    shell: Shell, capsys: pytest.CaptureFixture[str], line: str, message: str
) -> None:
    assert shell.onecmd(line) is False
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert message in lines[0]
    assert shell.status != 0
    assert shell.onecmd("put still alive") is False
    assert shell.onecmd("get still") is False
    assert capsys.readouterr().out.endswith("alive\n")


def test_shell_help_example_works_as_typed(
    shell: Shell, capsys: pytest.CaptureFixture[str]
) -> None:
    shell.onecmd("help")
    found = re.search(r"Python literals: (get -t [^;]*);", capsys.readouterr().out)
    assert found is not None
    example = found.group(1)
    assert shell.onecmd(example.replace("get", "put", 1) + " alice") is False
    assert shell.onecmd(example) is False
    assert capsys.readouterr() == ("created a new store at " + shell.session.path + "\nOK\n"
                                   "'alice'\n", "")  # fmt: skip
    assert shell.status == 0
    shell.close()
    with halodb.open(shell.session.path, readonly=True) as db:
        assert db[("user", 42)] == "alice"  # the key is the tuple the example names


@pytest.mark.parametrize("option", ["-h", "--help"])
@pytest.mark.parametrize("command", ["get", "list", "put", "load"])
def test_shell_help_options_work_as_on_the_command_line(
    shell: Shell, capsys: pytest.CaptureFixture[str], command: str, option: str
) -> None:
    assert shell.onecmd(f"{command} {option}") is False
    out, err = capsys.readouterr()
    assert err == ""
    assert f"Usage: {command} " in out
    assert re.search(r"--help\s+-h\b", out)
    assert shell.status == 0
    shell.onecmd(f"help {command}")
    assert capsys.readouterr().out == out  # the same as 'help COMMAND'


def test_shell_comments_and_blank_lines(shell: Shell, capsys: pytest.CaptureFixture[str]) -> None:
    for line in ("", "   ", "# a comment", "\t"):
        assert shell.onecmd(line) is False
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("word", ["quit", "exit", "QUIT", "\\q", ".quit", ".exit"])
def test_shell_quit_words(shell: Shell, word: str) -> None:
    assert shell.onecmd(word) is True


def test_shell_aliases(shell: Shell, capsys: pytest.CaptureFixture[str]) -> None:
    shell.onecmd("SET a 1")
    shell.onecmd("GET a")
    shell.onecmd("ls")
    shell.onecmd("del a")
    shell.onecmd("count")
    out = capsys.readouterr().out
    assert out.splitlines()[-5:] == ["1", "a\t1", "(1 key)", "OK", "0"]


def test_shell_batch(shell: Shell, capsys: pytest.CaptureFixture[str]) -> None:
    shell.onecmd("put old 1")
    shell.onecmd("batch")
    assert shell.prompt == "halodb (batch: 0 changes)> "
    shell.onecmd("put a 1")
    shell.onecmd("put b 2")
    shell.onecmd("delete old")
    assert shell.prompt == "halodb (batch: 3 changes)> "
    shell.onecmd("get a")  # reads see the store, not the batch
    shell.onecmd("clear")
    shell.onecmd("batch")
    out, err = capsys.readouterr()
    assert "queued (3 changes in the batch)" in out
    assert "reads see the store, not the uncommitted batch" in out
    assert "not found: 'a'" in err
    assert "clear cannot be part of a batch" in err
    assert "a batch is open already" in err
    shell.onecmd("commit")
    shell.onecmd("list")
    out = capsys.readouterr().out
    assert "committed 3 changes" in out
    assert "a\t1\nb\t2\n(2 keys)" in out
    assert shell.prompt == "halodb> "

    shell.onecmd("begin")
    shell.onecmd("put c 3")
    shell.onecmd("rollback")
    shell.onecmd("get c")
    out, err = capsys.readouterr()
    assert "discarded 1 change" in out
    assert "not found: 'c'" in err

    shell.onecmd("batch")
    shell.onecmd("put d 4")
    assert shell.onecmd("quit") is True
    shell.close()
    assert "discarded the uncommitted batch of 1 change" in capsys.readouterr().err
    with halodb.open(shell.session.path, readonly=True) as db:
        assert dict(db.items()) == {"a": "1", "b": "2"}


def test_shell_clear_asks_first(shell: Shell, capsys: pytest.CaptureFixture[str]) -> None:
    shell.onecmd("put a 1")
    questions: list[str] = []
    answers = iter(["n", "", "yes"])

    def ask(prompt: str) -> str:
        questions.append(prompt)
        return next(answers)

    shell.session.ask = ask
    shell.session.can_ask = True  # as on a terminal (a shell reading a script never asks)
    shell.onecmd("clear")
    shell.onecmd("clear")
    shell.onecmd("count")
    assert capsys.readouterr().out.splitlines()[-3:] == ["nothing deleted", "nothing deleted", "1"]
    shell.onecmd("clear")
    shell.onecmd("count")
    assert capsys.readouterr().out.splitlines()[-2:] == ["deleted 1 key", "0"]
    assert questions[0].startswith("Delete every key in ")
    assert questions[0].endswith("(1 key)? [y/N] ")

    def hang_up(prompt: str) -> str:
        raise EOFError

    shell.onecmd("put a 1")
    shell.session.ask = hang_up
    shell.onecmd("clear")
    assert capsys.readouterr().out.endswith("nothing deleted\n")


def test_command_line_questions_go_to_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    session = cli.Session(str(tmp_path / "db"))  # as a subcommand has it: stdout is data
    for typed, expected in (("y\n", True), ("\n", False), ("no\n", False)):
        monkeypatch.setattr(sys, "stdin", io.StringIO(typed))
        assert session.confirm("Delete?") is expected
        assert capsys.readouterr() == ("", "Delete? [y/N] ")
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # Ctrl-D: no, and a fresh line
    assert session.confirm("Delete?") is False
    assert capsys.readouterr() == ("", "Delete? [y/N] \n")


def test_shell_help_lists_every_command(shell: Shell, capsys: pytest.CaptureFixture[str]) -> None:
    shell.onecmd("help")
    out = capsys.readouterr().out
    for name in ("put", "get", "delete", "list", "count", "clear", "stats", "tree", "check",
                 "flush", "compact", "batch", "commit", "abort", "dump", "load", "help",
                 "quit"):  # fmt: skip
        assert re.search(rf"^{name}\s+\S", out, re.MULTILINE), name
    assert "exit" in out
    shell.onecmd("help list")
    out = capsys.readouterr().out
    assert "Usage: list" in out
    assert "--prefix" in out
    shell.onecmd("help commit")
    assert capsys.readouterr().out.startswith("commit: ")


def test_shell_interrupt_cancels_the_command_not_the_shell(
    shell: Shell, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shell.onecmd("put a 1")
    shell.onecmd("put b 2")

    def interrupted(*args: Any, **kwargs: Any) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(data_commands, "show_value", interrupted)
    assert shell.onecmd("list") is False
    assert "interrupted" in capsys.readouterr().err
    assert shell.status == 130
    monkeypatch.undo()
    shell.onecmd("count")
    assert capsys.readouterr().out == "2\n"


def test_shell_creates_the_store_on_first_write(tmp_path: Path) -> None:
    path = tmp_path / "later"
    sh = Shell(str(path), interactive=False)
    assert sh.start() == 0
    for line in ("get a", "list", "count", "stats", "tree", "check", "delete a", "flush",
                 "compact"):  # fmt: skip
        sh.onecmd(line)
        assert not path.exists(), line
    sh.onecmd("put a 1")
    assert path.is_dir()
    sh.close()


def test_shell_falls_back_to_read_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = make_store(tmp_path / "db", {"a": "1"})
    with halodb.open(store, readonly=True):
        sh = Shell(str(store), interactive=False)
        assert sh.start() == 0
        assert "this shell is read-only" in capsys.readouterr().err
        assert sh.prompt == "halodb (read-only)> "
        sh.onecmd("get a")
        assert capsys.readouterr().out == "1\n"
        sh.onecmd("put a 2")
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert "read-only" in err
        assert sh.status == EXIT_STORE
        sh.close()


def test_shell_on_a_locked_store_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = make_store(tmp_path / "db", {"a": "1"})
    with halodb.open(store):
        assert Shell(str(store), interactive=False).run() == EXIT_STORE
    assert "already open" in capsys.readouterr().err


def test_shell_completions(shell: Shell) -> None:
    shell.onecmd("put apple 1")
    shell.onecmd("put apricot 2")
    shell.onecmd("put banana 3")
    assert shell.completions("pu", "") == ["put "]
    assert shell.completions("", "")[:3] == ["abort ", "batch ", "check "]
    assert shell.completions("ap", "get ") == ["apple", "apricot"]
    assert "--reverse " in shell.completions("--re", "list ")
    assert shell.completions("x", "bogus ") == []


def test_piped_shell(tmp_path: Path) -> None:
    store = tmp_path / "db"
    script = 'put key1 value1\nput "my key" "a value"\nget key1\nlist\nquit\nget never\n'
    result = run(store, input=script)
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        f"created a new store at {store}",
        "OK",
        "OK",
        "value1",
        "key1\tvalue1",
        "my key\ta value",
        "(2 keys)",
    ]
    result = run(store, "shell", input="get absent\n")  # the last failure is the exit status
    assert result.exit_code == EXIT_NOT_FOUND
    result = runner.invoke(app, ["shell", str(store)], input="count\n")
    assert (result.exit_code, result.stdout) == (0, "2\n")


# ----------------------------------------------------------------------------- the program


def test_python_dash_m_is_the_same_program(tmp_path: Path) -> None:
    env = {**os.environ, "HALODB_PATH": str(tmp_path / "absent")}
    done = subprocess.run(
        [sys.executable, "-m", "halodb", "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0
    assert "Usage: halodb" in done.stdout
    done = subprocess.run(
        [sys.executable, "-m", "halodb", "get", "k"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == EXIT_STORE
    assert done.stderr.startswith("error: ")
    assert "Traceback" not in done.stderr


def _program_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HALODB")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """More output than a pipe holds (and than fits in a screen)."""
    path = tmp_path_factory.mktemp("big") / "db"
    return make_store(path, {f"k{i:05d}": "v" * 60 for i in range(5000)})


def test_a_reader_that_stops_early_ends_the_listing_quietly(big_store: Path) -> None:
    """``halodb list | head -2``: status 141, as for a program killed by SIGPIPE, and silence."""
    with subprocess.Popen(
        [sys.executable, "-m", "halodb", "--path", str(big_store), "list"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_program_env(),
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline() == b"k00000\t" + b"v" * 60 + b"\n"
        assert proc.stdout.readline().startswith(b"k00001\t")
        proc.stdout.close()
        err = proc.stderr.read()
        assert proc.wait(timeout=20) == cli.EXIT_PIPE == 141
    assert err == b""


@pytest.mark.parametrize(
    ("args", "script"),
    [
        (["list", "-n", "2"], None),  # all of it fits in the buffer: the pipe fails at exit
        (["get", "k00001"], None),
        (["stats"], None),  # rich's console
        (["--help"], None),  # typer's help
        (["list", "--help"], None),
        (["dump"], None),
        ([], "count\nlist\n"),  # the shell
        ([], "help\n"),
    ],
)
def test_a_closed_stdout_is_status_141_and_no_message(
    big_store: Path, args: list[str], script: str | None
) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will read
    try:
        done = subprocess.run(
            [sys.executable, "-m", "halodb", "--path", str(big_store), *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            input=(script or "").encode(),
            env=_program_env(),
            check=False,
            timeout=20,
        )
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, b"")


_ENGINE_LOGS = """
import logging, sys
import halodb
from halodb import cli

log = logging.getLogger("halodb.engine.engine")
put = halodb.Store.__setitem__

def logging_put(self, key, value):
    mode = sys.argv[1]
    if mode == "fail":  # as an I/O failure: logged by the engine, then raised
        log.error("%s: I/O failure, refusing further writes: disk on fire", self.path)
        raise halodb.OperationalError(f"{self.path}: store refuses writes (disk on fire)")
    log.error("an error that does not stop the command")
    log.warning("a warning with %d argument", 1)
    log.info("an info line")
    try:
        raise ValueError("inner")
    except ValueError:
        log.exception("an error with an exception")
    put(self, key, value)

halodb.Store.__setitem__ = logging_put
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("debug", [False, True])
def test_engine_log_records_are_printed_like_the_commands_own_lines(
    tmp_path: Path, debug: bool
) -> None:
    env = _program_env(**({"HALODB_DEBUG": "1"} if debug else {}))
    store = tmp_path / "db"
    done = subprocess.run(
        [sys.executable, "-c", _ENGINE_LOGS, "log", "--path", str(store), "put", "a", "b"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    first = ["warning: a warning with 1 argument", *(["info: an info line"] * debug)]
    assert lines[: len(first)] == first
    rest = lines[len(first) :]
    errors = [
        "error: an error that does not stop the command",  # held back until the command ends
        "error: an error with an exception (ValueError: inner)",
    ]
    if debug:  # and the traceback
        assert rest[:3] == [*errors, "Traceback (most recent call last):"]
        assert rest[-1] == "ValueError: inner"
    else:
        assert rest == errors


def test_a_store_error_the_engine_logged_is_reported_once(tmp_path: Path) -> None:
    store = tmp_path / "db"
    done = subprocess.run(
        [sys.executable, "-c", _ENGINE_LOGS, "fail", "--path", str(store), "put", "a", "b"],
        capture_output=True,
        text=True,
        env=_program_env(),
        check=False,
    )
    assert done.returncode == EXIT_STORE
    assert done.stderr == f"error: {store}: store refuses writes (disk on fire)\n"


def test_engine_warnings_reach_the_terminal_as_warning_lines(tmp_path: Path) -> None:
    store = tmp_path / "db"
    db = halodb.open(store)
    db["a"] = "1"
    halodb.testing.abandon(db)
    for log in store.glob("*.wal"):  # a torn write at the end of each log
        with log.open("ab") as f:
            f.write(b"garbage!")
    done = subprocess.run(
        [sys.executable, "-m", "halodb", "--path", str(store), "put", "b", "2"],
        capture_output=True,
        text=True,
        env=_program_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines
    for line in lines:
        assert line.startswith(f"warning: {store}"), line


# ----------------------------------------------------------------------------- a real terminal

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]|\r|\x07")


class Terminal:
    """``python -m halodb`` on a pseudo-terminal, typed at like a person would."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        import fcntl
        import pty
        import struct
        import termios

        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: become the program
            try:
                # As a terminal's shell starts it: a test run started in the background has
                # SIGINT ignored, and Python installs no Ctrl-C handler where it starts ignored.
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                os.execve(sys.executable, [sys.executable, "-m", "halodb", *args], env)
            finally:
                os._exit(127)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
        self.raw = b""
        self.seen = 0

    @property
    def screen(self) -> str:
        return _ANSI.sub("", self.raw.decode("utf-8", "replace"))

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            return False
        self.raw += data
        return bool(data)

    def expect(self, pattern: str, timeout: float = 8.0) -> str:
        """Wait for ``pattern`` (a regex) after what was already matched; return the text."""
        deadline = time.monotonic() + timeout
        while True:
            match = re.compile(pattern).search(self.screen, self.seen)
            if match:
                text = self.screen[self.seen : match.end()]
                self.seen = match.end()
                return text
            if time.monotonic() > deadline or not self._read(0.1):
                raise AssertionError(f"no {pattern!r} in:\n{self.screen[self.seen :]}")

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def ctrl_c(self, until: str) -> str:
        """Ctrl-C at a prompt shown, until ``until`` (a regex) appears; returns the text up to
        it. Not at once, and again if nothing comes (as a user would press it again): Python
        loses a SIGINT that lands between showing a prompt and starting the read that waits for
        the answer (the read then blocks on), and readline's switch of terminal modes, and a
        loaded machine, widen that window."""
        for _ in range(4):
            time.sleep(0.2)
            self.type("\x03")
            try:
                return self.expect(until, timeout=2.0)
            except AssertionError:
                continue
        return self.expect(until)

    def command(self, line: str) -> str:
        """Type ``line`` and Enter; return what the program printed before its next prompt."""
        self.type(line + "\r")
        self.expect(re.escape(line) + r"\n")  # the terminal's echo of the line
        return self.expect(r"halodb[^\n]*> ")

    def wait(self, timeout: float = 8.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            self._read(0.05)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        raise AssertionError(f"the shell did not exit:\n{self.screen}")


@pytest.fixture
def terminal_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HALODB", "COLUMNS", "LINES"))}
    env.update(TERM="dumb", HOME=str(tmp_path), HALODB_HISTORY=str(tmp_path / "history"))
    return env


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_shell_in_a_real_terminal(tmp_path: Path, terminal_env: dict[str, str]) -> None:
    store = tmp_path / "db"
    term = Terminal(["--path", str(store)], terminal_env)
    banner = term.expect(r"halodb> ")
    assert "no store at" in banner
    assert "Type 'help'" in banner

    assert term.command("put key1 value1") == f"created a new store at {store}\nOK\nhalodb> "
    assert term.command("get key1") == "value1\nhalodb> "
    assert term.command('put "my key" "a value"') == "OK\nhalodb> "
    assert term.command("delete key1") == "OK\nhalodb> "
    assert term.command("get key1") == "error: not found: 'key1'\nhalodb> "
    assert term.command("list") == "my key\ta value\n(1 key)\nhalodb> "

    term.type("clear\r")
    term.expect(r"\(1 key\)\? \[y/N\] ")
    term.type("y\r")
    assert term.expect(r"halodb> ").endswith("deleted 1 key\nhalodb> ")

    stats = term.command("stats")
    assert re.search(r"partition\s+0\s+total", stats)  # (a new store has one partition)
    assert re.search(r"keys\s+0\s+0\s", stats)
    tree = term.command("tree")
    assert "partition 0: height" in tree
    assert "fill factor" in tree

    assert "unknown command" in term.command("bogus")
    term.type("half a line")
    term.expect(r"half a line")
    term.ctrl_c(until=r"halodb> ")  # Ctrl-C cancels the line, not the shell
    assert term.command("count") == "0\nhalodb> "

    term.type("quit\r")
    assert term.wait() == 0
    history = (tmp_path / "history").read_text()
    assert "put key1 value1" in history
    assert "half a line" not in history


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_real_terminal_pages_long_listings_and_leaves_on_ctrl_d(
    tmp_path: Path, terminal_env: dict[str, str]
) -> None:
    store = make_store(tmp_path / "db", {f"k{i:03d}": "v" for i in range(100)})
    term = Terminal(["shell", str(store)], terminal_env)
    assert "shell on" in term.expect(r"halodb> ")
    term.type("list\r")
    first = term.expect(r"-- more --")
    assert "k000\tv" in first
    assert "k038\tv" in first
    assert "k039" not in first  # a screen of 40 lines holds 39 and the prompt
    term.type(" ")
    assert "k077\tv" in term.expect(r"-- more --")
    term.type("q")
    assert term.expect(r"halodb> ").strip().endswith("(stopped after 78 keys)\nhalodb>")
    term.type("\x04")
    assert term.wait() == 0


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_real_terminal_ctrl_c_and_ctrl_d_at_clears_question(
    tmp_path: Path, terminal_env: dict[str, str]
) -> None:
    store = make_store(tmp_path / "db", {"a": "1"})
    term = Terminal(["--path", str(store), "clear"], terminal_env)
    term.expect(r"\(1 key\)\? \[y/N\] ")
    after = term.ctrl_c(until=r"interrupted\n")
    assert re.fullmatch(r"(\^C)*\nerror: interrupted\n", after), after  # on a line of its own
    assert term.wait() == 130

    term = Terminal(["--path", str(store), "clear"], terminal_env)
    term.expect(r"\[y/N\] ")
    term.type("\x04")  # end of input: no
    assert term.expect(r"deleted\n") == "\nnothing deleted\n"
    assert term.wait() == 0

    term = Terminal(["--path", str(store)], terminal_env)  # the same in the shell
    term.expect(r"halodb> ")
    term.type("clear\r")
    term.expect(r"\[y/N\] ")
    after = term.ctrl_c(until=r"halodb> ")
    assert re.fullmatch(r"(\^C)*\nerror: interrupted\nhalodb> ", after), after
    term.type("clear\r")
    term.expect(r"\[y/N\] ")
    term.type("\x04")
    assert term.expect(r"halodb> ") == "\nnothing deleted\nhalodb> "
    assert term.command("count") == "1\nhalodb> "
    term.type("quit\r")
    assert term.wait() == 0


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_real_terminal_ctrl_c_stops_a_long_listing(
    big_store: Path, terminal_env: dict[str, str]
) -> None:
    term = Terminal(["--path", str(big_store)], terminal_env)
    term.expect(r"halodb> ")
    term.type("list\r")
    term.expect(r"-- more -- [^\n]*\)")
    after = term.ctrl_c(until=r"halodb> ")  # at the pager's question
    assert re.fullmatch(r"(\^C)*\nerror: interrupted\nhalodb> ", after), after
    term.type("list\r")
    term.expect(r"-- more --")
    term.type("a")  # all the rest, without stopping
    term.expect(r"k01000\t")  # the listing is running (and blocked while nobody reads)
    term.type("\x03")
    rest = term.expect(r"halodb> ")
    assert "k04999" not in rest  # stopped before the end
    assert re.search(r"\nerror: interrupted\nhalodb> $", rest), rest[-300:]  # a line of its own
    assert "(5,000 keys)" not in rest
    assert term.command("count") == "5000\nhalodb> "  # the shell goes on
    term.type("\x04")
    assert term.wait() == 0


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_real_terminal_history_is_read_back_by_the_next_session(
    tmp_path: Path, terminal_env: dict[str, str]
) -> None:
    store = tmp_path / "db"
    term = Terminal(["--path", str(store)], terminal_env)
    term.expect(r"halodb> ")
    term.command("put key1 value1")
    term.command("get key1")
    term.type("\x04")
    assert term.wait() == 0

    term = Terminal(["--path", str(store)], terminal_env)
    term.expect(r"halodb> ")
    term.type("\x10")  # Ctrl-P: the line before, from the first session
    term.expect(r"get key1")
    term.type("\x10")
    term.expect(r"put key1 value1")
    term.type("\x0e")  # Ctrl-N: back to the later line
    term.expect(r"get key1")
    term.type("\r")
    assert term.expect(r"halodb> ").endswith("\nvalue1\nhalodb> ")
    term.command("count")
    term.type("\x04")
    assert term.wait() == 0
    # both sessions' lines (Python's readline skips a line equal to the one before it)
    lines = (tmp_path / "history").read_text().splitlines()
    assert lines == ["put key1 value1", "get key1", "count"]


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_real_terminal_shell_on_a_locked_store(
    tmp_path: Path, terminal_env: dict[str, str]
) -> None:
    store = make_store(tmp_path / "db", {"a": "1"})
    with halodb.open(store):  # another process's writer
        term = Terminal(["--path", str(store)], terminal_env)
        shown = term.expect(r"already open[^\n]*\n")
        assert re.fullmatch(r"error: [^\n]*already open[^\n]*\n", shown), shown
        assert term.wait() == EXIT_STORE
    assert "halodb>" not in term.screen  # no prompt: the shell did not start
    assert "Traceback" not in term.screen


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_real_terminal_shell_on_a_corrupted_store(tall: Path, terminal_env: dict[str, str]) -> None:
    _corrupt_trees(tall, 4096)
    term = Terminal(["--path", str(tall)], terminal_env)
    assert "3,000 keys" in term.expect(r"halodb> ")
    for line in ("check", "get user:00001", "list"):
        shown = term.command(line)
        assert re.fullmatch(r"error: the store is damaged: [^\n]*checksum[^\n]*\nhalodb> ", shown)
    assert term.command("count") == "3000\nhalodb> "  # what still works, works
    assert term.command("bogus").startswith("error: unknown command")  # the shell goes on
    term.type("quit\r")
    status = term.wait()
    assert status in (0, EXIT_STORE)
    tail = term.screen[term.seen :]
    assert "Traceback" not in term.screen
    # closing may find the damage too: then one line says so, not two
    assert len(re.findall(r"(?m)^error: ", tail)) == (status == EXIT_STORE)

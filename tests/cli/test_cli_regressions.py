"""Regressions of the ``halodb`` command (issue 10, items 11-14), each test named for what it
broke: a piped ``clear`` that read its answer from the script, Tab that inserted more than the
keys share, usage errors and help that did not match the rest of the command, and stores
written with another value codec that the command could not even count."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_cli import Terminal, make_store, one_line_error, run, runner

import halodb
from halodb.cli import Shell, app, parse_value

EXIT_NOT_FOUND, EXIT_USAGE, EXIT_STORE = 1, 2, 3


def _program_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("HALODB")}


def _lines(text: str) -> list[str]:
    return text.splitlines()


def _shared_prefix(words: list[str]) -> str:
    """The longest prefix of all ``words``: what readline inserts for these completions."""
    first, last = min(words), max(words)
    size = next((i for i, (a, b) in enumerate(zip(first, last, strict=False)) if a != b), None)
    return first[: len(last)] if size is None else first[:size]


# ------------------------------------------------- 11. a question never reads a script's line


def test_piped_clear_without_yes_never_reads_the_next_script_line(tmp_path: Path) -> None:
    """``printf 'put a 1\\nclear\\nput b 2\\nget b\\n' | halodb``: ``clear`` took ``put b 2``
    for its answer. Now it fails (no terminal to ask), and the script goes on."""
    store = tmp_path / "db"
    done = subprocess.run(
        [sys.executable, "-m", "halodb", "--path", str(store)],
        input="put a 1\nclear\nput b 2\nget b\n",
        capture_output=True,
        text=True,
        env=_program_env(),
        check=False,
        timeout=60,
    )
    assert done.returncode == EXIT_USAGE  # a command failed
    assert _lines(done.stdout) == [f"created a new store at {store}", "OK", "OK", "2"]
    assert (
        done.stderr == "error: clear deletes every key: confirm with --yes (no terminal to ask)\n"
    )
    with halodb.open(store, readonly=True) as db:
        assert dict(db.items()) == {"a": "1", "b": "2"}


def test_piped_clear_takes_no_answer_from_the_script_and_yes_still_works(tmp_path: Path) -> None:
    store = make_store(tmp_path / "db", {"a": "1"})
    result = run(store, input="clear\ny\ncount\n")  # 'y' is a line of the script, not an answer
    assert result.exit_code == EXIT_USAGE
    assert result.stdout == "1\n"
    assert "confirm with --yes" in result.stderr
    assert "unknown command 'y'" in result.stderr
    result = run(store, input="clear --yes\ncount\n")
    assert (result.exit_code, result.stdout) == (0, "deleted 1 key\n0\n")


# ------------------------------------------------------- 12. Tab inserts only what is certain


@pytest.fixture(scope="module")
def counted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """k0000000 ... k0000999: more keys start with 'k' than Tab offers."""
    path = tmp_path_factory.mktemp("counted") / "db"
    return make_store(path, {f"k{i:07d}": "v" for i in range(1000)})


@pytest.fixture
def counted_shell(counted: Path) -> Iterator[Shell]:
    sh = Shell(str(counted), interactive=False)
    assert sh.start() == 0
    yield sh
    sh.close()


def test_tab_inserts_the_prefix_all_matching_keys_share_not_that_of_the_first_fifty(
    counted_shell: Shell,
) -> None:
    """``get k`` + Tab inserted ``k00000``, the prefix of the 50 keys offered, though
    ``k0000999`` starts with ``k0000`` only."""
    assert counted_shell.completions("k", "get ") == ["k0000"]
    keys = [f"k{i:07d}" for i in range(1000)]
    for text in ("", "k", "k0", "k0000", "k00001", "k000012", "k0000999", "k1", "x"):
        offered = counted_shell.completions(text, "get ")
        inserted = _shared_prefix(offered) if offered else text  # what readline inserts
        assert inserted.startswith(text), (text, offered)
        matching = [k for k in keys if k.startswith(text)]
        assert all(k.startswith(inserted) for k in matching), (text, inserted)
    assert counted_shell.completions("k000012", "get ") == [f"k000012{i}" for i in range(10)]
    assert counted_shell.completions("k00001", "delete ") == []  # 100 keys, no longer prefix


def test_tab_never_inserts_a_character_that_needs_quotes(tmp_path: Path) -> None:
    store = make_store(tmp_path / "db", {"my key 1": "", "my key 2": "", "myself": "", "o'k": ""})
    sh = Shell(str(store), interactive=False)
    assert sh.start() == 0
    assert sh.completions("m", "get ") == ["my"]  # not "my key 1": it would split in two
    assert sh.completions("my", "get ") == []
    assert sh.completions("o", "get ") == []
    assert sh.completions("mys", "get ") == ["myself"]
    sh.close()


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_real_terminal_tab_inserts_only_the_shared_prefix(counted: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in _program_env().items() if not k.startswith(("COLUMNS", "LINES"))}
    env.update(TERM="dumb", HOME=str(tmp_path), HALODB_HISTORY="")
    term = Terminal(["--path", str(counted)], env)
    term.expect(r"halodb> ")
    term.type("get k\t")
    term.expect(r"get k0000")
    term.type("\r")
    shown = term.expect(r"halodb> ")
    assert "error: not found: 'k0000'\n" in shown, shown  # not 'k00000'
    term.type("\x04")
    assert term.wait() == 0


# --------------------------------------------------- 13. one style of errors, help, arguments


def test_count_has_json_like_the_other_commands(tmp_path: Path) -> None:
    store = make_store(tmp_path / "db", {"a1": "", "a2": "", "b": ""})
    assert json.loads(run(store, "count", "--json").stdout) == {"keys": 3}
    assert json.loads(run(store, "count", "--json", "--prefix", "a").stdout) == {"keys": 2}


def test_path_after_the_command_is_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(tmp_path / "db", {"a": "1"})
    other = make_store(tmp_path / "other", {"a": "2"})
    monkeypatch.delenv("HALODB_PATH", raising=False)
    assert runner.invoke(app, ["get", "a", "--path", str(store)]).stdout == "1\n"
    assert runner.invoke(app, ["count", "-p", str(store)]).stdout == "1\n"
    # after the command beats before it, which beats the environment
    result = runner.invoke(app, ["--path", str(other), "get", "a", "--path", str(store)])
    assert result.stdout == "1\n"
    result = runner.invoke(app, ["get", "a", "-p", str(store)], env={"HALODB_PATH": str(other)})
    assert result.stdout == "1\n"
    result = runner.invoke(app, ["put", "b", "3", "--path", ""])
    assert result.exit_code == EXIT_USAGE
    assert "cannot be empty" in result.stderr


def test_the_shell_refuses_path_after_a_command_and_says_why(tmp_path: Path) -> None:
    store = make_store(tmp_path / "db", {"a": "1"})
    result = run(store, input=f"get a --path {tmp_path / 'other'}\nget a\n")
    assert result.exit_code == EXIT_USAGE
    assert result.stdout == "1\n"
    one_line_error(result, "--path", "one store", "halodb --path DIR")


@pytest.mark.parametrize(
    "args",
    [
        ["list", "--bogus"],
        ["get"],
        ["put", "only-key"],
        ["bogus"],
        ["gte", "a"],
        ["--bogus"],
        ["list", "-n", "x"],
        ["list", "--limit", "-1"],
        ["--codec", "nope", "count"],
        ["count", "--codec", "nope"],
        ["get", "a", "b"],
    ],
)
def test_usage_errors_are_one_error_line_not_a_box(tmp_path: Path, args: list[str]) -> None:
    result = run(tmp_path / "db", *args)
    assert result.exit_code == EXIT_USAGE
    assert result.stdout == ""
    one_line_error(result, "--help')")
    assert "╭" not in result.stderr
    assert "Usage:" not in result.stderr


def test_usage_errors_of_the_real_program_are_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "halodb", "--path", str(tmp_path / "db"), "get", "--bogus"],
        capture_output=True,
        text=True,
        env=_program_env(),
        check=False,
        timeout=60,
    )
    assert done.returncode == EXIT_USAGE
    assert done.stderr == (
        "error: No such option: --bogus (a KEY that starts with '-' goes after '--': "
        "get -- KEY; see 'halodb get --help')\n"
    )


@pytest.mark.parametrize(
    "command",
    [
        "",
        "put",
        "get",
        "delete",
        "list",
        "count",
        "clear",
        "stats",
        "tree",
        "check",
        "flush",
        "dump",
        "load",
        "shell",
    ],
)
def test_help_shows_no_type_beside_a_flag(command: str) -> None:
    result = runner.invoke(app, [*command.split(), "--help"])
    assert result.exit_code == 0
    assert "<bool>" not in result.stdout
    assert re.search(r"--help\s+-h\s+Show this message", result.stdout)


def test_help_still_shows_the_type_of_an_option_that_takes_a_value() -> None:
    out = runner.invoke(app, ["list", "--help"]).stdout
    assert re.search(r"--limit\s+-n\s+<int", out)
    assert re.search(r"--codec\s+NAME", out)


def test_negative_numbers_are_values_not_options(tmp_path: Path) -> None:
    store = tmp_path / "db"
    for args in (["put", "temp", "-5"], ["put", "-t", "-0.0", "x"], ["put", "-T", "n", "-1e3"],
                 ["put", "-t", "-T", "-7", "-2.5"], ["put", "-tT", "-inf", "-.5"],
                 ["put", "t", "-5", "-T"]):  # fmt: skip
        result = run(store, *args)
        assert result.exit_code == 0, (args, result.stderr)
    with halodb.open(store, readonly=True) as db:
        assert db["temp"] == "-5"
        assert db[0.0] == "x"  # -0.0 is stored as 0.0
        assert db["n"] == -1000.0
        assert db[-7] == -2.5
        assert db[float("-inf")] == -0.5
        assert db["t"] == -5
    assert run(store, "get", "-t", "-7").stdout == "-2.5\n"
    assert run(store, "count", "-t", "--start", "-8", "--stop", "-6").stdout == "1\n"
    assert run(store, "list", "-k", "-n", "1").stdout == "-7\n"  # -n took 1, not a key
    result = run(store, "shell", input="put cold -40\nget cold\n")
    assert result.stdout == "OK\n-40\n"


def test_other_words_starting_with_a_dash_say_to_use_double_dash(tmp_path: Path) -> None:
    store = make_store(tmp_path / "db")
    result = run(store, "put", "k", "-x")
    assert result.exit_code == EXIT_USAGE
    one_line_error(result, "No such option: -x", "goes after '--': put -- KEY VALUE")
    assert run(store, "put", "--", "k", "-x").exit_code == 0
    assert run(store, "get", "k").stdout == "-x\n"
    result = run(store, input="get -q\n")
    one_line_error(result, "goes after '--': get -- KEY", "see 'help get'")


def test_raw_output_ends_its_line_in_the_shell(tmp_path: Path) -> None:
    store = make_store(tmp_path / "db", {"bare": "no newline", "ended": "line\n", "b": b"\x01"})
    result = run(store, input="get bare --raw\nget ended --raw\nget b --raw\ncount\n")
    assert result.stdout_bytes == b"no newline\nline\n\x01\n3\n"
    assert run(store, "get", "bare", "--raw").stdout_bytes == b"no newline"  # exact, for files


def test_shell_help_offers_nothing_the_shell_refuses(tmp_path: Path) -> None:
    store = make_store(tmp_path / "db")
    for command in ("load", "put", "get", "count"):
        out = run(store, input=f"help {command}\n").stdout
        assert f"Usage: {command}" in out
        assert "--path" not in out, command  # the shell's store is chosen when it starts
        assert "--codec" not in out, command
        if command in ("load", "put"):
            text = " ".join(re.sub("[│╭╮╰╯─]", " ", out).split())  # the help's words
            assert "- reads stdin (on the command line, not in the shell)" in text, command
    assert "--path" in runner.invoke(app, ["load", "--help"]).stdout  # it works there
    result = run(store, input="load -\n")
    one_line_error(result, "command line only")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["put", "-T", "s", "{1, 2}"], ["a set is not a storable value", "use a list", "[1, 2]"]),
        (["put", "-T", "s", "[{'a'}]"], ["a set is not a storable value"]),
        (["put", "-T", "s", "set()"], ["a set is not a storable value"]),
        (["put", "-t", "{1, 2}", "v"], ["a set is not a key", "use a tuple"]),
    ],
)
def test_a_set_is_called_a_set_not_a_non_literal(
    tmp_path: Path, args: list[str], fragments: list[str]
) -> None:
    result = run(tmp_path / "db", *args)
    assert result.exit_code == EXIT_USAGE
    one_line_error(result, *fragments)
    assert "not a literal" not in result.stderr


def test_errors_about_deeply_nested_values_are_short(tmp_path: Path) -> None:
    store = tmp_path / "db"
    deep_list = "[" * 101 + "]" * 101
    result = run(store, "put", "-T", "k", deep_list)
    assert result.exit_code == EXIT_USAGE
    one_line_error(result, "nested deeper than 100", "value[0][0]…[0] (100 levels)")
    assert len(result.stderr) < 250
    value: Any = 1
    for _ in range(101):
        value = {"a key of some length": value}
    data = tmp_path / "deep.jsonl"
    data.write_text(json.dumps({"key": "k", "value": value}) + "\n")
    result = run(store, "load", str(data))
    assert result.exit_code == EXIT_USAGE
    one_line_error(result, "line 1", "nested deeper than 100", "nothing was loaded")
    assert len(result.stderr) < 250
    with pytest.raises(Exception, match="100 levels") as caught:
        parse_value(deep_list, typed=True)
    assert len(str(caught.value)) < 250


# ------------------------------------------------------------ 14. stores of any value codec


class Tripwire:
    """Unpickling it creates the file ``path``: proof that a value was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


@pytest.fixture
def pickled(tmp_path: Path) -> tuple[Path, Path]:
    """A store written with ``PickleCodec`` holding values the default codec cannot hold,
    one of which leaves a file behind when it is unpickled; and that file's path."""
    marker = tmp_path / "unpickled"
    store = make_store(
        tmp_path / "pickled",
        {"a": {1, 2}, "b": (1, "x"), "c": "text", ("t", 1): b"\x00", "trap": Tripwire(marker)},
        value_codec=halodb.PickleCodec(),
    )
    return store, marker


@pytest.mark.parametrize(
    ("args", "out"),
    [
        (["stats"], "5 keys"),
        (["stats", "--json"], '"keys": 5'),
        (["check"], "ok: 4 partitions, 5 keys"),
        (["count"], "5\n"),
        (["count", "--prefix", "t"], "1\n"),
        (["count", "-t", "--start", "'b'", "--stop", "'trap'"], "2\n"),
        (["list", "-k"], "a\nb\nc\ntrap\n('t', 1)\n"),
        (["list", "-k", "-r", "-n", "2"], "('t', 1)\ntrap\n"),
        (["list", "-k", "--json", "--prefix", "a"], '{"key": "a"}\n'),
        (["tree", "--depth", "1"], "partition 3"),
        (["flush"], ""),
        (["delete", "c"], ""),
    ],
)
def test_commands_that_read_no_values_work_on_a_store_of_another_codec(
    pickled: tuple[Path, Path], args: list[str], out: str
) -> None:
    store, marker = pickled
    result = run(store, *args)
    assert result.exit_code == 0, result.stderr
    assert out in result.stdout
    assert not marker.exists()  # nothing was unpickled


@pytest.mark.parametrize(
    "args",
    [["get", "a"], ["list"], ["list", "--json"], ["dump"], ["put", "k", "v"], ["load", "-"]],
)
def test_commands_that_read_values_name_the_codec_and_how_to_choose_it(
    pickled: tuple[Path, Path], args: list[str]
) -> None:
    store, marker = pickled
    result = run(store, *args, input='{"key": "k", "value": 1}\n')
    assert result.exit_code == EXIT_USAGE
    assert result.stdout == ""
    one_line_error(result, "'pickle' codec", "add --codec pickle", "runs code")
    assert not marker.exists()
    with halodb.open(store, readonly=True, value_codec=halodb.PickleCodec()) as db:
        assert "k" not in db


def test_codec_pickle_reads_and_writes_a_pickle_store_only_when_named(
    pickled: tuple[Path, Path],
) -> None:
    store, marker = pickled
    result = run(store, "--codec", "pickle", "get", "a")
    assert (result.exit_code, result.stdout) == (0, "{1, 2}\n")
    assert run(store, "get", "b", "--codec", "pickle").stdout == "(1, 'x')\n"  # not as a list
    assert not marker.exists()
    assert run(store, "--codec", "pickle", "put", "-T", "tuple", "(1, 2)").exit_code == 0
    assert run(store, "--codec", "pickle", "get", "-t", "'tuple'").stdout == "(1, 2)\n"
    assert run(store, "--codec", "pickle", "get", "trap").exit_code == 0
    assert marker.exists()  # asked for, and done: unpickling runs code from the store
    result = run(store, "--codec", "pickle", "dump", "--prefix", "a")
    assert result.exit_code == EXIT_USAGE
    one_line_error(result, "cannot write the value of 'a' as JSON", "set")
    result = run(store, "--codec", "pickle", "get", "a", "--raw")
    assert result.exit_code == EXIT_USAGE
    one_line_error(result, "set, which has no raw form")


def test_codec_must_match_the_store_and_be_known(
    pickled: tuple[Path, Path], tmp_path: Path
) -> None:
    store, _ = pickled
    result = run(store, "--codec", "halo1", "count")
    assert result.exit_code == EXIT_USAGE
    one_line_error(result, "use the 'pickle' codec, not 'halo1'", "--codec pickle")
    result = run(store, "count", "--codec", "json")
    assert result.exit_code == EXIT_USAGE
    one_line_error(result, "unknown codec 'json'", "halo1", "pickle")
    plain = make_store(tmp_path / "plain", {"a": "1"})
    result = run(plain, "--codec", "pickle", "get", "a")
    assert result.exit_code == EXIT_USAGE
    one_line_error(result, "use the 'halo1' codec, not 'pickle'")
    assert run(plain, "--codec", "halo1", "get", "a").stdout == "1\n"


def test_a_store_created_with_codec_pickle_records_it(tmp_path: Path) -> None:
    store = tmp_path / "new"
    assert run(store, "--codec", "pickle", "put", "-T", "k", "(1, 2)").exit_code == 0
    assert halodb.codec_name(store) == "pickle"
    with halodb.open(store, readonly=True, value_codec=halodb.PickleCodec()) as db:
        assert db["k"] == (1, 2)


def test_the_shell_on_a_store_of_another_codec(pickled: tuple[Path, Path]) -> None:
    store, marker = pickled
    script = "count\nlist -k --prefix a\nget a\nbatch\nput x 1\ndelete c\ncommit\ncount\n"
    result = run(store, input=script)
    assert result.exit_code == EXIT_USAGE
    assert _lines(result.stdout) == [
        "5", "a", "(1 key)", "batch started: put and delete are queued until 'commit' (or "
        "'abort')", "queued (1 change in the batch)", "committed 1 change", "4",
    ]  # fmt: skip
    errors = _lines(result.stderr)
    assert len(errors) == 2
    for line in errors:
        assert "start the shell with --codec pickle" in line
    assert not marker.exists()
    result = run(store, "--codec", "pickle", input="get a\nlist -n 1\n")
    assert result.stdout == "{1, 2}\na\t{1, 2}\n(1 key; --limit reached)\n"


class Rot13:
    """A codec the command does not know."""

    name = "rot13"

    def encode(self, value: object) -> bytes:
        return str(value).encode()

    def decode(self, data: bytes) -> object:
        raise AssertionError("the command decoded a value")


def test_a_store_of_a_codec_the_command_does_not_know(tmp_path: Path) -> None:
    store = make_store(tmp_path / "db", {"a": 1, "b": 2}, value_codec=Rot13())
    assert run(store, "count").stdout == "2\n"
    assert run(store, "list", "-k", "--start", "b").stdout == "b\n"
    assert run(store, "check").exit_code == 0
    result = run(store, "get", "a")
    assert result.exit_code == EXIT_USAGE
    one_line_error(result, "'rot13' codec", "does not know", "from Python")

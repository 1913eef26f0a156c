"""``halodb.jsonl``, the JSON Lines interchange format as a library: ``dump`` and ``load`` round
trip every type, stream, report how far they got, name what failed, and a dump to a path is
atomic (nothing at the target, no temporary file left, after any failure)."""

from __future__ import annotations

import errno
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import halodb
from halodb import jsonl
from halodb.cli.literals import literal_text
from halodb.errors import brief
from halodb.vfs import File, FileSystem
from support.stores import same_value

ITEMS: dict[Any, Any] = {
    "text": "plain",
    "surrogate \ud800": "lone \udfff",
    b"\x00\xffbinary": b"\x00\x01\xff",
    42: 1.0,
    -(10**5000): "a key too long for decimal JSON",  # {"$int": "0x..."}
    2.5: [1, 2.5, None, True, {"nested": "dict"}],
    float("inf"): {"$bytes": "a dict whose only key looks like a tag"},
    ("user", 1, (b"\x00", -0.5)): {"nan": float("nan"), "inf": float("-inf")},
    "empty": "",
}


@pytest.fixture
def source(tmp_path: Path) -> Iterator[halodb.Store]:
    db = halodb.open(tmp_path / "source", page_size=32768)  # keys of up to 4 KiB
    db.update(ITEMS)
    yield db
    db.close()


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ----------------------------------------------------------------------------- dump and load


def test_dump_to_a_path_and_load_give_back_every_key_and_value(
    source: halodb.Store, tmp_path: Path
) -> None:
    out = tmp_path / "dump.jsonl"
    report = jsonl.dump(source, out)
    assert report == jsonl.DumpReport(records=len(ITEMS), failed=None)
    lines = out.read_text("utf-8").splitlines()
    assert len(lines) == len(ITEMS)
    assert all(set(json.loads(line)) == {"key", "value"} for line in lines)
    assert all(tag in out.read_text("utf-8") for tag in jsonl.TAGS)
    assert oct(out.stat().st_mode & 0o777) == oct(0o600)
    with halodb.open(tmp_path / "target", page_size=32768) as db, out.open("rb") as f:
        loaded = jsonl.load(db, f, batch_size=4)
        assert loaded == jsonl.LoadReport(records=len(ITEMS), batches=3, bad_line=None)
        got = dict(db.items())
    assert got.keys() == ITEMS.keys()
    assert all(same_value(got[k], v) for k, v in ITEMS.items())


def test_dump_to_a_stream_writes_the_same_lines(source: halodb.Store, tmp_path: Path) -> None:
    jsonl.dump(source, tmp_path / "a.jsonl")
    stream = io.StringIO()
    assert jsonl.dump(source, stream).records == len(ITEMS)
    assert stream.getvalue().encode("utf-8") == (tmp_path / "a.jsonl").read_bytes()


def test_dump_takes_a_range_and_a_prefix(tmp_path: Path) -> None:
    with halodb.open(tmp_path / "s") as db:
        db.update({f"k{i:02d}": i for i in range(20)})
        db[("t", 1)] = "tuple"
        stream = io.StringIO()
        jsonl.dump(db, stream, start="k05", stop="k08")
        assert [json.loads(x)["key"] for x in stream.getvalue().splitlines()] == [
            "k05",
            "k06",
            "k07",
        ]
        stream = io.StringIO()
        jsonl.dump(db, stream, prefix=("t",))
        assert stream.getvalue() == '{"key": {"$tuple": ["t", 1]}, "value": "tuple"}\n'


def test_dump_reports_progress_every_1024_records(tmp_path: Path) -> None:
    calls: list[int] = []
    with halodb.open(tmp_path / "s") as db:
        db.update({i: i for i in range(2500)})
        jsonl.dump(db, io.StringIO(), progress=calls.append)
    assert calls == [1024, 2048]


def test_write_takes_any_records(tmp_path: Path) -> None:
    report = jsonl.write([("a", 1), (("b", 2), b"\x00")], tmp_path / "w.jsonl")
    assert report.records == 2
    assert (tmp_path / "w.jsonl").read_text().splitlines() == [
        '{"key": "a", "value": 1}',
        '{"key": {"$tuple": ["b", 2]}, "value": {"$bytes": "AA=="}}',
    ]
    assert jsonl.write((), tmp_path / "empty.jsonl").records == 0
    assert (tmp_path / "empty.jsonl").read_bytes() == b""


# ----------------------------------------------------------------------------- failed dumps


def test_a_value_json_lines_cannot_hold_stops_the_dump_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out" / "dump.jsonl"
    out.parent.mkdir()
    with halodb.open(tmp_path / "s", value_codec=halodb.PickleCodec()) as db:
        db.update({"a": 1, "b": {1, 2}, "c": 3})
        report = jsonl.DumpReport()
        with pytest.raises(halodb.DataError, match="cannot write the value of 'b' as JSON"):
            jsonl.dump(db, out, report=report)
    assert report == jsonl.DumpReport(records=1, failed="value")
    assert _listing(out.parent) == []


def test_an_output_that_cannot_be_written_names_the_file_given(
    source: halodb.Store, tmp_path: Path
) -> None:
    target = tmp_path / "a-directory"
    target.mkdir()
    report = jsonl.DumpReport()
    with pytest.raises(halodb.OperationalError) as info:
        jsonl.dump(source, str(target), report=report)
    assert str(info.value) == f"cannot write {target}: Is a directory"
    assert report.failed == "output"
    assert _listing(tmp_path) == ["a-directory", "source"]

    with pytest.raises(halodb.OperationalError, match="No such file or directory"):
        jsonl.dump(source, tmp_path / "missing" / "x.jsonl")


class _FullDisk(FileSystem):
    """A disk that fills up at the second write of a temporary file."""

    def create_temporary(self, directory: str, prefix: str) -> File:
        handle = super().create_temporary(directory, prefix)
        return _FillingFile(self, handle.path, handle.fd)


class _FillingFile(File):
    __slots__ = ()
    writes: ClassVar[list[int]] = [0]

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self.writes[0] += 1
        if self.writes[0] == 2:
            cause = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            raise halodb.OperationalError(f"writing {self.path!r} failed") from cause
        super().write_at(offset, data)


def test_a_disk_filling_up_in_the_middle_leaves_the_old_dump_and_no_temporary(
    tmp_path: Path,
) -> None:
    out = tmp_path / "dump.jsonl"
    out.write_text("the previous dump\n")
    _FillingFile.writes[0] = 0
    with halodb.open(tmp_path / "s") as db:
        db.update({f"k{i:05d}": "v" * 100 for i in range(5000)})  # several buffers
        report = jsonl.DumpReport()
        with pytest.raises(halodb.OperationalError) as info:
            jsonl.dump(db, out, report=report, filesystem=_FullDisk())
    assert str(info.value) == f"cannot write {out}: No space left on device"
    assert report.failed == "output" and 0 < report.records < 5000
    assert out.read_text() == "the previous dump\n"
    assert _listing(tmp_path) == ["dump.jsonl", "s"]


def test_a_store_error_in_the_middle_is_not_taken_for_the_output(tmp_path: Path) -> None:
    def records() -> Any:
        yield "a", 1
        raise halodb.OperationalError("reading the store failed")

    report = jsonl.DumpReport()
    with pytest.raises(halodb.OperationalError, match="reading the store failed"):
        jsonl.write(records(), tmp_path / "d.jsonl", report=report)
    assert report == jsonl.DumpReport(records=1, failed=None)
    assert _listing(tmp_path) == []


# ----------------------------------------------------------------------------- load


def _lines(*records: Any) -> list[bytes]:
    return [(r if isinstance(r, str) else json.dumps(r)).encode() + b"\n" for r in records]


def test_load_commits_a_batch_at_a_time_and_a_bad_line_keeps_the_batches_before(
    tmp_path: Path,
) -> None:
    good = [{"key": f"k{i}", "value": i} for i in range(5)]
    data = _lines(*good, "{not json", *good)
    positions: list[int] = []
    shields: list[str] = []

    class Shield:
        def __enter__(self) -> None:
            shields.append("in")

        def __exit__(self, *exc: object) -> None:
            shields.append("out")

    with halodb.open(tmp_path / "s") as db:
        report = jsonl.LoadReport()
        with pytest.raises(halodb.DataError) as info:
            jsonl.load(db, data, name="data.jsonl", batch_size=2, progress=positions.append,
                       atomically=Shield, report=report)  # fmt: skip
        assert str(info.value).startswith("data.jsonl line 6: bad JSON")
        assert report == jsonl.LoadReport(records=4, batches=2, bad_line=6)
        assert sorted(db) == ["k0", "k1", "k2", "k3"]  # k4 shared the bad line's batch
    assert shields == ["in", "out", "in", "out"]
    assert positions == [sum(map(len, data[:2])), sum(map(len, data[:4]))]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"key": "a"}', 'expected {"key": ..., "value": ...}'),
        ('{"key": {"$what": 1}, "value": 1}', "unknown tag '$what'"),
        ('{"key": true, "value": 1}', "bool is not supported"),
        ('{"key": "a", "value": {"$tuple": [1]}}', "tuple is not supported"),
        (b'{"key": "\xff"}', "not UTF-8"),
    ],
)
def test_load_names_the_line_of_a_bad_record(
    tmp_path: Path, line: str | bytes, message: str
) -> None:
    raw = line if isinstance(line, bytes) else line.encode()
    with halodb.open(tmp_path / "s") as db:
        report = jsonl.LoadReport()
        with pytest.raises(halodb.DataError, match=r"^in line 2: ") as info:
            jsonl.load(db, [b"\n", raw + b"\n"], name="in", report=report)
        assert message in str(info.value)
        assert report == jsonl.LoadReport(records=0, batches=0, bad_line=2)
        assert len(db) == 0


def test_load_reads_a_file_object_and_names_it(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"key": "a", "value": 1}\n\n{"key": "b"}\n')
    with halodb.open(tmp_path / "s") as db, path.open("rb") as f:
        with pytest.raises(halodb.DataError, match=f"^{path} line 3: "):
            jsonl.load(db, f, batch_size=0)
        assert len(db) == 0  # batch_size 0: all or nothing


def test_an_interrupted_load_keeps_the_batches_committed(tmp_path: Path) -> None:
    def lines() -> Any:
        yield from _lines(*({"key": i, "value": i} for i in range(3)))
        raise KeyboardInterrupt

    with halodb.open(tmp_path / "s") as db:
        report = jsonl.LoadReport()
        with pytest.raises(KeyboardInterrupt):
            jsonl.load(db, lines(), batch_size=2, report=report)
        assert report == jsonl.LoadReport(records=2, batches=1, bad_line=None)
        assert sorted(db) == [0, 1]


# ----------------------------------------------------------------------------- the forms


def test_record_without_a_value_is_a_key_only_record() -> None:
    assert jsonl.record(b"\x00") == '{"key": {"$bytes": "AA=="}}'
    assert jsonl.record("k", None) == '{"key": "k", "value": null}'
    assert jsonl.record("\ud800", "\x85") == '{"key": "\\ud800", "value": "\\u0085"}'
    assert jsonl.parse_record(jsonl.record((1, 2.5), [b"x"]).encode(), "here") == (
        (1, 2.5),
        [b"x"],
    )


keys = st.recursive(
    st.text() | st.binary() | st.integers() | st.floats(allow_nan=False),
    lambda children: st.lists(children, max_size=3).map(tuple),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(keys)
def test_the_message_helpers_agree_with_the_commands_own(key: Any) -> None:
    """jsonl sits below halodb.cli, so it keeps its own copy of a key's literal; it must say
    what the command's says."""
    assert jsonl.key_literal(key) == literal_text(key)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab[]0\n…", max_size=300), st.integers(min_value=2, max_value=400))
def test_a_message_cut_keeps_within_its_limit_and_leaves_short_text_alone(
    text: str, limit: int
) -> None:
    """jsonl's messages and the command's cut exception texts with the one ``errors.brief``."""
    cut = brief(text, limit)
    assert len(cut) <= limit
    if len(text) <= limit and "[" not in text:
        assert cut == text
    deep = "value" + "[0]" * 101 + ": nested"
    assert brief(deep) == "value[0][0]…[0] (101 levels): nested"

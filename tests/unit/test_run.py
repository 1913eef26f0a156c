"""The run file a clean close leaves (``halodb.run``): what is written reads back, and every
damage to it is refused with a ``CorruptionError`` naming the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from halodb import format as fmt
from halodb.errors import CorruptionError
from halodb.run import Run, write_run
from halodb.vfs import FileSystem

ENTRIES: dict[bytes, bytes | None] = {
    b"m": b"middle",
    b"a": b"",  # an empty value is not a tombstone
    b"z" * 300: b"v" * 5000,
    b"gone": None,
    b"b": b"bee",
}


def _write(path: Path, entries: dict[bytes, bytes | None] = ENTRIES, **kw: object) -> None:
    args: dict[str, object] = {"cleared": False, "base_seq": 7, "seq": 12, "count": 40}
    args.update(kw)
    write_run(FileSystem(), str(path), 3, entries, **args)  # type: ignore[arg-type]


def test_a_run_reads_back_what_was_written(tmp_path: Path) -> None:
    path = tmp_path / "p003.run"
    _write(path)
    run = Run.open(FileSystem(), str(path), 3)
    assert (run.base_seq, run.seq, run.count, run.cleared, len(run)) == (7, 12, 40, False, 5)
    assert not run.loaded  # the header alone is read at open
    assert run.data == ENTRIES
    assert run.loaded
    keys, values = run.columns()
    assert keys == sorted(ENTRIES)
    assert values == [ENTRIES[k] for k in keys]
    assert run.ordered() == sorted(ENTRIES)
    assert run.size == sum(len(k) + len(v or b"") for k, v in ENTRIES.items()) + 64 * 5


def test_cleared_and_empty_runs(tmp_path: Path) -> None:
    path = tmp_path / "p003.run"
    _write(path, {}, cleared=True, count=0)
    run = Run.open(FileSystem(), str(path), 3)
    assert run.cleared and len(run) == 0 and run.data == {}
    assert run.columns() == ([], [])
    assert path.stat().st_size == fmt.RUN_HEADER.size


def _damaged(tmp_path: Path, offset: int) -> str:
    path = tmp_path / "p003.run"
    _write(path)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))
    return str(path)


@pytest.mark.parametrize("offset", range(fmt.RUN_HEADER.size))
def test_every_header_byte_is_checked_at_open(tmp_path: Path, offset: int) -> None:
    with pytest.raises(CorruptionError, match=r"p003\.run"):
        Run.open(FileSystem(), _damaged(tmp_path, offset), 3)


def test_every_body_byte_is_checked_on_first_use(tmp_path: Path) -> None:
    _write(tmp_path / "p003.run")
    total = (tmp_path / "p003.run").stat().st_size
    for offset in range(fmt.RUN_HEADER.size, total, 97):
        run = Run.open(FileSystem(), _damaged(tmp_path, offset), 3)
        with pytest.raises(CorruptionError, match=r"p003\.run: run body checksum mismatch"):
            run.check()


def test_damage_found_by_a_decode_is_raised_again_without_reading_the_file(
    tmp_path: Path,
) -> None:
    run = Run.open(FileSystem(), _damaged(tmp_path, fmt.RUN_HEADER.size + 3), 3)
    with pytest.raises(CorruptionError, match="body checksum mismatch"):
        run.check()
    (tmp_path / "p003.run").unlink()
    with pytest.raises(CorruptionError, match="body checksum mismatch"):
        assert run.data


def test_a_run_of_another_partition_or_cut_short_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p003.run"
    _write(path)
    with pytest.raises(CorruptionError, match="run of partition 3, expected 4"):
        Run.open(FileSystem(), str(path), 4)
    data = path.read_bytes()
    path.write_bytes(data[:-1])
    with pytest.raises(CorruptionError, match="its header says"):
        Run.open(FileSystem(), str(path), 3)
    path.write_bytes(data[:40])
    with pytest.raises(CorruptionError, match="not a HaloDB run file"):
        Run.open(FileSystem(), str(path), 3)


def _forge(path: Path, body: bytes, entries: int, keys: int, values: int, **kw: int) -> None:
    """A run whose checksums are right but whose contents are not what a close writes."""
    fields = {"flags": 0, "base_seq": 7, "seq": 12, "count": 1}
    fields.update(kw)
    head = fmt.RUN_HEADER.pack(
        fmt.RUN_MAGIC,
        fmt.FORMAT_VERSION,
        3,
        fields["flags"],
        fields["base_seq"],
        fields["seq"],
        fields["count"],
        entries,
        keys,
        values,
        fmt.crc(body),
        0,
    )
    path.write_bytes(fmt.seal(head) + body)


def test_forged_runs_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "p003.run"
    fs = FileSystem()
    twice = fmt.U16.pack(1) * 2 + fmt.U32.pack(1) * 2 + b"kk" + b"vw"
    _forge(path, twice, 2, 2, 2)
    with pytest.raises(CorruptionError, match="holds a key more than once"):
        Run.open(fs, str(path), 3).check()
    lying = fmt.U16.pack(2) + fmt.U32.pack(0) + b"k" + b"v"
    _forge(path, lying, 1, 1, 1)
    with pytest.raises(CorruptionError, match="key lengths disagree"):
        Run.open(fs, str(path), 3).check()
    lying = fmt.U16.pack(1) + fmt.U32.pack(2) + b"k" + b"v"
    _forge(path, lying, 1, 1, 1)
    with pytest.raises(CorruptionError, match="value lengths disagree"):
        Run.open(fs, str(path), 3).check()
    good = fmt.U16.pack(1) + fmt.U32.pack(1) + b"k" + b"v"
    for bad in ({"flags": 2}, {"seq": 7}, {"seq": fmt.SEQ_LIMIT}, {"base_seq": 13}):
        _forge(path, good, 1, 1, 1, **bad)
        with pytest.raises(CorruptionError, match="impossible values"):
            Run.open(fs, str(path), 3)
    _forge(path, good, 1, 1, 1)
    assert Run.open(fs, str(path), 3).data == {b"k": b"v"}
    long_key = fmt.U16.pack(600) + fmt.U32.pack(1) + b"k" * 600 + b"v"
    _forge(path, long_key, 1, 600, 1)
    with pytest.raises(CorruptionError, match="over the limits of the store"):
        Run.open(fs, str(path), 3, max_key=512).check()
    assert len(Run.open(fs, str(path), 3, max_key=600).data) == 1

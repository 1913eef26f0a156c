"""Regressions for what a new user met (issue 10): dropped stores, failed opens, dict answers,
copies, range arguments, odd keys and paths. Each test is named for what it broke."""

from __future__ import annotations

import copy
import enum
import math
import os
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Callable, Reversible
from pathlib import Path
from typing import Any

import pytest

import halodb
import halodb.testing
from halodb.vfs import File, FileSystem

# ============================================================ 1. stores dropped without close()

DROPPED = r"""
import gc, os, sys, warnings
import halodb
import halodb.testing

path, mode, collect, how = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]
warnings.simplefilter("always", ResourceWarning)

def write(key):
    db = halodb.open(path, durability=mode)
    db[key] = "v"
    if how == "cycle":
        holder = {"db": db}
        holder["self"] = holder  # only the cyclic collector can free it

if how == "oneliner":
    halodb.open(path, durability=mode)["k"] = "v"
else:
    write("k")
if collect:
    gc.collect()
if collect or how != "cycle":  # collected: by its reference count, or by gc.collect()
    # The lock was released and the log written out: the same process opens it again.
    with halodb.open(path, durability=mode) as again:
        assert again["k"] == "v", "the dropped store's write is not there"
        again["k2"] = "v2"
print("exiting")
"""


@pytest.mark.parametrize("how", ["function", "oneliner", "cycle"])
@pytest.mark.parametrize("collect", [False, True], ids=["exit", "gc.collect"])
@pytest.mark.parametrize("mode", ["fast", "normal"])
def test_a_store_dropped_without_close_keeps_its_writes_and_releases_its_lock(
    tmp_path: Path, mode: str, collect: bool, how: str
) -> None:
    """A dropped store is closed as a file object is; a normal exit closes every store,
    reachable or not (in a reference cycle), so FAST mode's buffered writes are kept."""
    path = tmp_path / "s"
    child = subprocess.run(
        [sys.executable, "-c", DROPPED, str(path), mode, "1" if collect else "0", how],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "exiting"
    if collect or how != "cycle":  # collected by refcount, or by gc.collect(): warned
        assert "ResourceWarning" in child.stderr and "was not closed" in child.stderr
    with halodb.open(path) as db:  # the lock was released at exit
        assert db["k"] == "v"
        if collect or how != "cycle":
            assert db["k2"] == "v2"
        db.check()


def test_a_closed_store_gives_no_resource_warning_when_collected(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import gc, sys, warnings
        import halodb
        warnings.simplefilter("error", ResourceWarning)
        with halodb.open(sys.argv[1]) as db:
            db["k"] = 1
        del db
        gc.collect()
        """
    )
    child = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 0 and not child.stderr, child.stderr


# ================================================================= 2. codecs and failed opens


class NoMethods:
    name = "mine"


class NotCallable:
    name = "mine"
    encode = "nope"

    def decode(self, data: bytes) -> object:
        return data


@pytest.mark.parametrize(
    ("codec", "message"),
    [
        (halodb.PickleCodec, r"codec instance, not the class PickleCodec: pass PickleCodec\(\)"),
        (halodb.DefaultCodec, r"not the class DefaultCodec"),
        (NoMethods(), r"NoMethods has no encode\(\) method"),
        (NotCallable(), r"NotCallable has no encode\(\) method"),
        (object(), r"value_codec.name must be"),
    ],
    ids=["pickle-class", "default-class", "no-methods", "not-callable", "no-name"],
)
def test_a_bad_value_codec_is_refused_before_the_store_is_created(
    tmp_path: Path, codec: Any, message: str
) -> None:
    with pytest.raises(halodb.InterfaceError, match=message):
        halodb.open(tmp_path / "s", value_codec=codec)
    assert list(tmp_path.iterdir()) == []


class Interrupt(BaseException):
    """Stands for a KeyboardInterrupt at one step of open()."""


class StepFault(FileSystem):
    """A file system whose ``fail_at``-th operation (of the file system or of a file it opened)
    fails, with an ``OperationalError`` as a failing disk gives, or with ``Interrupt``."""

    def __init__(self, fail_at: int, *, interrupt: bool = False) -> None:
        self.fail_at = fail_at
        self.interrupt = interrupt
        self.calls = 0

    def step(self, what: str) -> None:
        self.calls += 1
        if self.calls == self.fail_at:
            if self.interrupt:
                raise Interrupt(what)
            raise halodb.OperationalError(f"injected failure of step {self.calls}: {what}")

    def open(self, path: str, *, write: bool = False, create: bool = False) -> File:
        self.step(f"open {path}")
        handle = super().open(path, write=write, create=create)
        return StepFile(self, handle.path, handle.fd)

    def exists(self, path: str) -> bool:
        self.step(f"exists {path}")
        return super().exists(path)

    def is_dir(self, path: str) -> bool:
        self.step(f"is_dir {path}")
        return super().is_dir(path)

    def listdir(self, path: str) -> list[str]:
        self.step(f"listdir {path}")
        return super().listdir(path)

    def mkdir(self, path: str) -> bool:
        self.step(f"mkdir {path}")
        return super().mkdir(path)

    def rename(self, src: str, dst: str) -> None:
        self.step(f"rename {src}")
        super().rename(src, dst)

    def unlink(self, path: str) -> None:
        self.step(f"unlink {path}")
        super().unlink(path)

    def sync_dir(self, path: str) -> None:
        self.step(f"sync_dir {path}")
        super().sync_dir(path)

    def lock(self, path: str, *, exclusive: bool) -> Any:
        self.step(f"lock {path}")
        return super().lock(path, exclusive=exclusive)


class StepFile(File):
    fs: StepFault

    def read_at(self, offset: int, size: int) -> bytes:
        self.fs.step(f"read {self.path}")
        return super().read_at(offset, size)

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self.fs.step(f"write {self.path}")
        super().write_at(offset, data)

    def sync(self) -> None:
        self.fs.step(f"fsync {self.path}")
        super().sync()

    def truncate(self, size: int) -> None:
        self.fs.step(f"truncate {self.path}")
        super().truncate(size)

    def size(self) -> int:
        self.fs.step(f"size {self.path}")
        return super().size()


def _fds_under(path: Path) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(path)):
            found.append(target)
    return found


def _fail_each_step(tmp_path: Path, path: Path, *, interrupt: bool, before: set[str] | None) -> int:
    """Open ``path`` failing at step 1, 2, ... until an open succeeds; after each failure,
    nothing new is left and nothing stays open. Returns the number of steps."""
    for k in range(1, 1000):
        fs = StepFault(k, interrupt=interrupt)
        try:
            db = halodb.open(path, filesystem=fs, partitions=2)
        except (halodb.Error, Interrupt):
            assert _fds_under(tmp_path) == [], f"step {k}: files left open"
            if before is None:
                assert not path.exists(), f"step {k}: {sorted(os.listdir(path))} left behind"
            else:
                assert set(os.listdir(path)) == before, f"step {k}: files left behind"
            continue
        assert fs.calls < k  # this open met no fault: every step before it was tried
        fs.fail_at = 0
        db["k"] = 1
        db.close()
        with halodb.open(path) as again:  # nothing was half-made: the store is whole
            assert again["k"] == 1
            again.check()
        return k
    raise AssertionError("open never succeeded")


@pytest.mark.parametrize("interrupt", [False, True], ids=["io-error", "interrupt"])
def test_a_failed_open_that_creates_leaves_no_directory_and_no_lock(
    tmp_path: Path, interrupt: bool
) -> None:
    steps = _fail_each_step(tmp_path, tmp_path / "s", interrupt=interrupt, before=None)
    assert steps > 20  # every step of creation and of the first open was hit


def test_a_failed_open_in_an_empty_directory_leaves_it_empty(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    _fail_each_step(tmp_path, tmp_path / "s", interrupt=False, before=set())


def test_a_failed_open_of_an_existing_store_leaves_no_new_file_and_no_lock(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s"
    with halodb.open(path, partitions=2) as db:
        db.update({i: "x" * i for i in range(100)})
    names = set(os.listdir(path))
    for k in range(1, 1000):
        try:
            db = halodb.open(path, filesystem=(fs := StepFault(k)))
        except halodb.Error:
            assert _fds_under(tmp_path) == []
            assert set(os.listdir(path)) == names
            continue
        fs.fail_at = 0
        db.close()
        break
    with halodb.open(path) as db:
        assert dict(db) == {i: "x" * i for i in range(100)}


# ====================================================================== 4. answers as a dict's

NEVER_STORABLE = [
    "x" * 5000,  # longer than any key
    b"x" * 5000,
    math.nan,
    ("a", math.nan),
    10**200_000,  # an int key of more than 65535 bytes
]


@pytest.mark.parametrize("key", NEVER_STORABLE, ids=["str", "bytes", "nan", "tuple-nan", "int"])
def test_lookups_of_keys_that_can_never_be_stored_answer_as_a_dict_does(
    tmp_path: Path, key: Any
) -> None:
    with halodb.open(tmp_path / "s") as db:
        db["a"] = 1
        assert db.get(key) is None
        assert db.get(key, "default") == "default"
        assert db.pop(key, "default") == "default"
        assert key not in db
        assert (key, 1) not in db.items()
        with pytest.raises(KeyError):
            db[key]
        with pytest.raises(KeyError):
            del db[key]
        with pytest.raises(KeyError):
            db.pop(key)
        with pytest.raises(halodb.DataError):  # storing one still says why it cannot be
            db[key] = 1
        assert dict(db) == {"a": 1}


def test_setdefault_does_not_encode_the_default_of_a_present_key(tmp_path: Path) -> None:
    with halodb.open(tmp_path / "s") as db:
        db["tags"] = ["a"]
        assert db.setdefault("tags", {1, 2}) == ["a"]  # a set is no storable value
        assert db.setdefault("tags", object()) == ["a"]
        with pytest.raises(TypeError):
            db.setdefault("new", {1, 2})
        assert "new" not in db
        assert db.setdefault("new", [1]) == [1]
        assert db["new"] == [1]


def test_setdefault_of_a_present_key_works_read_only(tmp_path: Path) -> None:
    with halodb.open(tmp_path / "s") as db:
        db["k"] = 1
    with halodb.open(tmp_path / "s", readonly=True) as db:
        assert db.setdefault("k", 2) == 1
        with pytest.raises(halodb.ProgrammingError):
            db.setdefault("absent", 2)


def test_lookups_of_never_storable_keys_on_a_closed_store_still_raise(tmp_path: Path) -> None:
    db = halodb.open(tmp_path / "s")
    db.close()
    calls: list[Callable[[], object]] = [
        lambda: db.get("x" * 5000),
        lambda: db["x" * 5000],
        lambda: db.pop(math.nan, 1),
    ]
    for call in calls:
        with pytest.raises(halodb.ProgrammingError):
            call()


# =================================================================== 5. copies and pickles


@pytest.mark.parametrize(
    "copier",
    [copy.copy, copy.deepcopy, pickle.dumps, lambda db: pickle.dumps(db, protocol=0)],
    ids=["copy", "deepcopy", "pickle", "pickle-0"],
)
def test_a_store_cannot_be_copied_or_pickled(tmp_path: Path, copier: Any) -> None:
    with halodb.open(tmp_path / "s") as db:
        db["k"] = 1
        with pytest.raises(TypeError, match=r"cannot be copied or pickled.*halodb.open\(path\)"):
            copier(db)
        assert db["k"] == 1  # the original is untouched and open
        assert not db.closed
        assert copy.copy(dict(db)) == {"k": 1}  # what the message offers works


# ========================================================================= 6. range() arguments


@pytest.mark.parametrize("partitions", [1, 4])
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reverse": "yes"}, "reverse must be a bool"),
        ({"reverse": 1}, "reverse must be a bool"),
        ({"start": [1]}, "list is not supported"),
        ({"stop": None, "start": {"a": 1}}, "dict is not supported"),
        ({"prefix": 5}, "prefix: int is not supported"),
        ({"prefix": True}, "prefix: bool is not supported"),
    ],
    ids=repr,
)
def test_range_checks_every_argument_before_reading(
    tmp_path: Path, partitions: int, kwargs: dict[str, Any], message: str
) -> None:
    """A bad argument raised the same TypeError whatever the partitions (with four, reverse
    "yes" gave "'str' object cannot be interpreted as an integer"), at the call."""
    with halodb.open(tmp_path / "s", partitions=partitions) as db:
        db.update({"a": 1, "b": 2})
        with pytest.raises(TypeError, match=message):
            db.range(**kwargs)


def test_range_bounds_need_not_be_storable(tmp_path: Path) -> None:
    with halodb.open(tmp_path / "s", partitions=4) as db:
        db.update({"a": 1, "b": 2, "c": 3})
        assert list(db.range("a" + "z" * 5000, "c" + "z" * 5000)) == [("b", 2), ("c", 3)]
        with pytest.raises(halodb.DataError):
            db.range(math.nan)


def test_reversed_works_on_the_views(tmp_path: Path) -> None:
    with halodb.open(tmp_path / "s", partitions=4) as db:
        pairs = {f"k{i:03}": i for i in range(300)}
        db.update(pairs)
        keys, items, values = db.keys(), db.items(), db.values()
        # the views reverse, though their declared types (KeysView...) do not say so
        assert isinstance(keys, Reversible)
        assert isinstance(items, Reversible)
        assert isinstance(values, Reversible)
        assert list(reversed(keys)) == sorted(pairs, reverse=True)
        assert list(reversed(items)) == sorted(pairs.items(), reverse=True)
        assert list(reversed(values)) == [pairs[k] for k in sorted(pairs, reverse=True)]
        assert list(reversed(db)) == sorted(pairs, reverse=True)


# =================================================================== 7. keys, values and paths


class Color(enum.IntEnum):
    RED = 1


class Shape(enum.StrEnum):
    ROUND = "round"


@pytest.mark.parametrize("key", [True, Color.RED, Shape.ROUND, ("a", Color.RED), ("a", True)])
def test_enum_keys_are_refused_like_bool(tmp_path: Path, key: Any) -> None:
    """IntEnum keys were stored and came back as plain int: the reason bool is refused."""
    with halodb.open(tmp_path / "s") as db:
        with pytest.raises(TypeError, match=r"is not supported; .*bool and enum members") as info:
            db[key] = 1
        assert type(key if not isinstance(key, tuple) else key[1]).__name__ in str(info.value)
        assert len(db) == 0
        assert key not in db


def test_int_and_str_subclasses_are_still_stored_as_their_base_type(tmp_path: Path) -> None:
    class N(int):
        pass

    with halodb.open(tmp_path / "s") as db:
        db[N(5)] = 1
        assert list(db) == [5] and type(next(iter(db))) is int


def test_a_released_memoryview_gives_an_interface_error(tmp_path: Path) -> None:
    view = memoryview(b"abc")
    view.release()
    with halodb.open(tmp_path / "s") as db:
        with pytest.raises(halodb.InterfaceError, match="released"):
            db[view] = 1
        with pytest.raises(halodb.InterfaceError, match="released"):
            db["k"] = view
        with pytest.raises(halodb.InterfaceError, match="released"):
            db[("a", view)] = 1
        assert len(db) == 0


@pytest.mark.parametrize(
    ("path", "message"),
    [("", "path is empty"), ("a\x00b", "NUL"), (b"a\x00b", "NUL")],
    ids=["empty", "nul", "nul-bytes"],
)
def test_paths_that_can_name_no_directory_give_an_interface_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: Any, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(halodb.InterfaceError, match=message):
        halodb.open(path)
    assert list(tmp_path.iterdir()) == []


DENIED = r"""
import os, sys
import halodb
import halodb.testing
if os.geteuid() == 0:  # root may enter anything: ask as nobody
    os.setegid(65534)
    os.seteuid(65534)
try:
    halodb.open(sys.argv[1], readonly=True)
except halodb.OperationalError as exc:
    assert isinstance(exc.__cause__, PermissionError), repr(exc.__cause__)
    print(exc)
else:
    raise AssertionError("opened")
"""


def test_a_read_only_open_without_permission_says_permission_denied(tmp_path: Path) -> None:
    """It said "no HaloDB store here": the directory could not be looked into."""
    outer = tmp_path / "private"
    outer.mkdir(mode=0o700)
    with halodb.open(outer / "s") as db:
        db["k"] = 1
    if os.geteuid() != 0:
        outer.chmod(0o000)
    try:
        child = subprocess.run(
            [sys.executable, "-c", DENIED, str(outer / "s")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        outer.chmod(0o700)
    assert child.returncode == 0, child.stderr
    assert "Permission denied" in child.stdout, child.stdout


class Undecodable:
    """A codec whose values cannot be read back: what a store of an unknown codec looks like."""

    name = "opaque"

    def encode(self, value: object) -> bytes:
        return repr(value).encode()

    def decode(self, data: bytes) -> object:
        raise AssertionError("a value was decoded")


def test_range_keys_reads_keys_without_decoding_a_value(tmp_path: Path) -> None:
    """What the halodb command needs to inspect a store of any codec (issue 10, item 14)."""
    with halodb.open(tmp_path / "s", partitions=4, value_codec=Undecodable()) as db:
        keys: list[Any] = [f"user:{i:03}" for i in range(200)] + ["zed", 5, ("t", 1)]
        db.update({key: "v" for key in keys})
        assert list(db.range_keys()) == list(db) == [5, *sorted(keys[:-2]), ("t", 1)]
        assert list(db.range_keys(prefix="user:", reverse=True)) == sorted(keys[:200])[::-1]
        assert list(db.range_keys("user:100", "user:103")) == ["user:100", "user:101", "user:102"]
        assert list(db.range_keys("b", "a")) == []
        with pytest.raises(TypeError, match=r"range_keys\(\): reverse must be a bool"):
            db.range_keys(reverse="yes")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="list is not supported"):
            db.range_keys([1])  # type: ignore[arg-type]
    with pytest.raises(halodb.ProgrammingError):
        db.range_keys()


def test_errors_about_deeply_nested_values_are_short(tmp_path: Path) -> None:
    value: Any = [{1, 2}]
    for _ in range(90):
        value = [value]
    with halodb.open(tmp_path / "s") as db:
        with pytest.raises(TypeError) as info:
            db["k"] = value
        assert str(info.value).startswith("value[0][0]…[0] (91 levels): set is not supported")
        assert len(str(info.value)) < 200
        for _ in range(20):
            value = [value]
        with pytest.raises(
            halodb.DataError, match=r"^value\[0\]\[0\]…\[0\] \(100 levels\): nested"
        ):
            db["k"] = value


# ============================================================================== test hooks


def test_a_hash_seed_fixes_which_keys_share_a_partition(tmp_path: Path) -> None:
    keys = [f"k{i}" for i in range(64)]
    layouts = []
    for name in ("a", "b"):
        with halodb.open(tmp_path / name, partitions=4, hash_seed=12345) as db:
            layouts.append([halodb.testing.partition_of(db, key) for key in keys])
    assert layouts[0] == layouts[1] and len(set(layouts[0])) == 4
    with halodb.open(tmp_path / "c", partitions=4, hash_seed=54321) as db:
        assert [halodb.testing.partition_of(db, key) for key in keys] != layouts[0]
    with pytest.raises(halodb.InterfaceError, match="hash seed 12345, not 7"):
        halodb.open(tmp_path / "a", hash_seed=7)
    with halodb.open(tmp_path / "a", hash_seed=12345) as db:  # the same one is fine
        assert len(db) == 0
    bad: Any  # not all of type int: the check under test is at run time
    for bad in (-1, 2**32, "1", 1.0):
        with pytest.raises(halodb.InterfaceError, match="hash_seed"):
            halodb.open(tmp_path / "d", hash_seed=bad)
    assert not (tmp_path / "d").exists()


def test_abandon_leaves_the_store_as_a_crash_would(tmp_path: Path) -> None:
    db = halodb.open(tmp_path / "s", durability="fast", fast_buffer_size=1 << 20)
    db["synced"] = 1
    db.sync()
    db["buffered"] = 2  # still in the process's buffer: a crash loses it
    halodb.testing.abandon(db)
    assert db.closed
    with halodb.open(tmp_path / "s") as again:  # the lock was released; the log is replayed
        assert dict(again) == {"synced": 1}
        assert again.stats().partitions[0].recovery_seconds >= 0

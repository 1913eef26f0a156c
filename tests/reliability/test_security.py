"""Security promises: no code is ever run from data, files are private, and planted links are
never written through.

README: "Safe by default. Values are bytes, str or JSON-compatible data; pickle only when you
ask for it (``value_codec=halodb.PickleCodec()``)". ``vfs``: "Files are created 0600 and
directories 0700; files are opened with O_NOFOLLOW so a planted symlink is never followed".

(a) No pickle, marshal, shelve, ``yaml.load``, ``eval``, ``exec``, ``compile`` or
``__import__`` on any default path, checked twice: statically (an ``ast`` scan of
``src/halodb`` whose only allowed hits are the uses inside the opt-in ``PickleCodec``), and
dynamically (audit hooks and patched ``pickle`` loaders in a fresh interpreter that uses the
API and the ``halodb`` command with default options, after a warm-up run so that imports count as
set-up). The API fires none of those events. The command compiles and evaluates only its own
annotation strings (typer resolving ``from __future__ import annotations``) and, with ``-t``,
parses literals with ``ast.parse``, which compiles to a syntax tree and runs nothing.
(b) Every file kind the store creates (manifest, ``LOCK``, logs, trees, blooms and the ``.tmp``
files of ``write_new``) is ``0600`` and every directory it creates ``0700``, under umask 0,
through creation, flushes, reopening, recovery and the upgrade of a version-1 store.
(c) A symlink (or dangling symlink, or hard link) planted at any name the store will create or
open, pointing outside the store, is refused with a ``halodb.Error`` or replaced, never
written through. ``test_promises.py`` covers the modes after one flush (in-process umask) and a
symlink in place of one log; this file covers every kind.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import halodb
import halodb.testing
from halodb import format as fmt

SRC = Path(halodb.__file__).parent
GOLDEN_V1 = Path(__file__).resolve().parents[1] / "golden" / "v1-store"


def run_python(script: str, *args: object, timeout: float = 120) -> str:
    """Run ``script`` in a fresh interpreter; its stdout (it must exit 0)."""
    proc = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# =============================================================== (a) static: an ast scan

SERIALIZERS = {"pickle", "_pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle"}
SERIALIZERS |= {"jsonpickle"}
"""Modules that turn bytes into arbitrary objects (or code)."""
DYNAMIC_CODE = {"importlib", "runpy", "code", "codeop", "builtins"}
"""Modules that import or run code by name, or reach the builtins indirectly."""
CODE_BUILTINS = {"eval", "exec", "compile", "__import__", "execfile", "__builtins__"}
YAML_UNSAFE = {"load", "load_all", "full_load", "full_load_all", "unsafe_load"}
YAML_UNSAFE |= {"unsafe_load_all", "Loader", "FullLoader", "UnsafeLoader"}

Finding = tuple[str, str, str]
"""(file, enclosing scope such as ``PickleCodec.decode`` or ``<module>``, what)"""


class _Scanner(ast.NodeVisitor):
    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.scope: list[str] = []
        self.aliases: dict[str, str] = {}  # local name -> module it names
        self.found: list[Finding] = []

    def _add(self, what: str) -> None:
        self.found.append((self.filename, ".".join(self.scope) or "<module>", what))

    def _scoped(self, node: ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_ClassDef = visit_FunctionDef = visit_AsyncFunctionDef = _scoped

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            root = alias.name.split(".")[0]
            self.aliases[alias.asname or root] = root
            if root in SERIALIZERS or root in DYNAMIC_CODE:
                self._add(f"import {alias.name}")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        root = (node.module or "").split(".")[0]
        for alias in node.names:
            if root in SERIALIZERS or root in DYNAMIC_CODE:
                self._add(f"from {node.module} import {alias.name}")
            elif root == "yaml" and alias.name in YAML_UNSAFE:
                self._add(f"from yaml import {alias.name}")

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in CODE_BUILTINS:
            self._add(node.id)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.value, ast.Name):
            module = self.aliases.get(node.value.id)
            if module in SERIALIZERS or module in DYNAMIC_CODE:
                self._add(f"{module}.{node.attr}")
            elif module == "yaml" and node.attr in YAML_UNSAFE:
                self._add(f"yaml.{node.attr}")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        # getattr(anything, "eval") and the like
        if isinstance(node.func, ast.Name) and node.func.id == "getattr" and len(node.args) > 1:
            name = node.args[1]
            if isinstance(name, ast.Constant) and name.value in CODE_BUILTINS | YAML_UNSAFE:
                self._add(f"getattr(..., {name.value!r})")
        self.generic_visit(node)


def scan(source: str, filename: str) -> list[Finding]:
    scanner = _Scanner(filename)
    scanner.visit(ast.parse(source, filename))
    return scanner.found


def scan_package() -> list[Finding]:
    found: list[Finding] = []
    for file in sorted(SRC.rglob("*.py")):
        found += scan(file.read_text("utf-8"), file.relative_to(SRC).as_posix())
    return found


ALLOWED_USES: set[Finding] = {
    ("values.py", "PickleCodec.encode", "pickle.dumps"),
    ("values.py", "PickleCodec.encode", "pickle.HIGHEST_PROTOCOL"),
    ("values.py", "PickleCodec.encode", "pickle.PicklingError"),
    ("values.py", "PickleCodec.decode", "pickle.loads"),
}
"""The whole allowlist: the explicit opt-in codec's own calls, and nothing else."""


def _is_pickle_import(finding: Finding) -> bool:
    return finding[2] in ("import pickle", "import _pickle") or finding[2].startswith(
        ("from pickle ", "from _pickle ")
    )


def test_the_scanner_finds_every_form_it_looks_for() -> None:
    """The scan below proves something only if it sees these; each line is one finding."""
    source = """
import pickle as p
import marshal
from shelve import open as shelf
from yaml import load
import yaml as y
import builtins
def f(x):
    p.loads(x)
    y.unsafe_load(x)
    eval(x); exec(x); compile(x, "", "exec"); __import__(x)
    getattr(__builtins__, "eval")
class C:
    def g(self):
        import importlib
"""
    found = scan(source, "t.py")
    assert {what for _, _, what in found} >= {
        "import pickle",
        "import marshal",
        "from shelve import open",
        "from yaml import load",
        "import builtins",
        "pickle.loads",
        "yaml.unsafe_load",
        "eval",
        "exec",
        "compile",
        "__import__",
        "__builtins__",
        "getattr(..., 'eval')",
        "import importlib",
    }
    assert ("t.py", "C.g", "import importlib") in found
    assert ("t.py", "f", "pickle.loads") in found
    # safe look-alikes are not findings
    assert scan("import re, ast, json\nre.compile('x')\nast.literal_eval('1')\n", "t.py") == []


def test_no_code_from_data_anywhere_but_the_opt_in_pickle_codec() -> None:
    """Statically: no eval/exec/compile/__import__, no marshal/shelve/yaml.load, no dynamic
    imports, and pickle used only inside ``values.PickleCodec``: every finding of the scan
    (bar the ``import pickle`` statement, for the test below) is on the allowlist, and every
    allowlisted use is really there (the allowlist is exactly the codec's calls)."""
    found = {f for f in scan_package() if not (f[0] == "values.py" and _is_pickle_import(f))}
    assert found == ALLOWED_USES


def test_pickle_is_imported_only_inside_the_pickle_codec() -> None:
    """Statically: the ``import pickle`` statement lives in ``PickleCodec`` itself, so that
    pickle is loaded only when a program asks for it."""
    imports = [f for f in scan_package() if _is_pickle_import(f)]
    assert imports, "no import of pickle at all: PickleCodec cannot work"
    assert all(f[0] == "values.py" and f[1].startswith("PickleCodec.") for f in imports), imports


# ============================================================ (a) dynamic: audit hooks

AUDITED = r"""
import json, os, sys

WATCH = {"pickle.find_class", "exec", "compile", "marshal.loads", "marshal.load"}
events = []
phase = [None]


def hook(event, args):
    if phase[0] is None or event not in WATCH:
        return
    caller = sys._getframe(1).f_code
    if event == "compile":
        source = args[0]
        detail = source.decode("utf-8", "replace") if isinstance(source, bytes) else repr(source)
    elif event == "exec":
        code = args[0]
        detail = f"{code.co_filename}:{code.co_name}"
    else:
        detail = repr(args)[:200]
    events.append([phase[0], event, os.path.basename(caller.co_filename), caller.co_name, detail])


sys.addaudithook(hook)

import halodb
import halodb.testing
from halodb import cli

root, out = sys.argv[1], sys.argv[2]


def api(base):
    path = os.path.join(base, "api")
    db = halodb.open(path)  # default options, default codec
    db["a"] = b"\x00raw"
    db["s"] = "text"
    db[42] = [1, 2, {"three": 3.0, "none": None, "yes": True}]
    db[("user", 1)] = {"name": "alice"}
    db[2.5] = -1
    with db.batch() as b:
        b[("user", 2)] = "bob"
        b[b"\xff"] = "bytes key"
        del b[2.5]
    del db["a"]
    db.setdefault("d", 1)
    db.pop("d")
    assert db.get("missing") is None and "s" in db and len(db) == 5
    assert [k for k, _ in db.range(prefix=("user",))] == [("user", 1), ("user", 2)]
    list(db.items()), list(reversed(db)), db.first(), db.last()
    db.check(), db.stats(), db.sync(), db.flush()
    db.update({("bulk", i): {"i": i} for i in range(300)})
    db.close()
    db = halodb.open(path)  # recovery of a clean close, then of a crash (unflushed logs)
    db[("after", 1)] = [1]
    halodb.testing.abandon(db)
    with halodb.open(path) as db:
        assert db[("after", 1)] == [1]
        db.check()
    with halodb.open(path, readonly=True) as db:
        list(db.items())
        db.check()


def command(base):
    store, other = os.path.join(base, "cli"), os.path.join(base, "cli2")
    dump = os.path.join(base, "dump.jsonl")
    for argv in (
        ["put", "k", "v"], ["put", "j", '{"a": 1}'], ["get", "k"], ["list"], ["list", "--json"],
        ["count"], ["stats"], ["tree"], ["check"], ["flush"], ["dump", dump], ["delete", "j"],
        ["--path", other, "load", dump], ["--path", other, "clear", "--yes"],
    ):
        if argv[0] != "--path":
            argv = ["--path", store, *argv]
        code = cli.main(argv)
        assert code == 0, (argv, code)


def typed(base):
    store = os.path.join(base, "typed")
    for argv in (["put", "-t", "('user', 42)", "alice"], ["get", "-t", "('user', 42)"],
                 ["put", "-t", "-T", "b'k'", "[1, {'a': 2.5}]"], ["list", "-t"]):
        assert cli.main(["--path", store, *argv]) == 0, argv


def annotation_strings():
    # the modules of halodb.cli have `from __future__ import annotations`: typer evaluates
    # these strings (the program's own source text) each time it builds a command
    found = set()
    modules = [m for name, m in list(sys.modules.items())
               if name == "halodb.cli" or name.startswith("halodb.cli.")]
    for obj in [o for m in modules for o in list(vars(m).values())]:
        for o in [obj, getattr(obj, "__wrapped__", None), *(
                vars(obj).values() if isinstance(obj, type) else ())]:
            ann = getattr(o, "__annotations__", None)
            if isinstance(ann, dict):
                found.update(v for v in ann.values() if isinstance(v, str))
    return sorted(found)


# Setup: one whole run before any hook is armed, so every lazy import is done.
os.mkdir(os.path.join(root, "warm-up"))  # open() creates the store's directory, not parents
for step in (api, command, typed):
    step(os.path.join(root, "warm-up"))

import pickle
loads_calls = []
for name in ("loads", "load", "Unpickler"):
    original = getattr(pickle, name)
    def spy(*args, _name=name, _original=original, **kwargs):
        loads_calls.append([phase[0], _name])
        return _original(*args, **kwargs)
    setattr(pickle, name, spy)

os.mkdir(os.path.join(root, "armed"))
for step in (api, command, typed):
    phase[0] = step.__name__
    step(os.path.join(root, "armed"))
    phase[0] = None

# Control: the opt-in codec, reading an object pickle must look up by name, is seen.
import fractions
phase[0] = "control"
with halodb.open(os.path.join(root, "pickled"), value_codec=halodb.PickleCodec()) as db:
    db["f"] = fractions.Fraction(1, 3)
    assert db["f"] == fractions.Fraction(1, 3)
phase[0] = None

with open(out, "w") as f:
    json.dump({"events": events, "pickle_calls": loads_calls,
               "annotations": annotation_strings(),
               "code_roots": sorted({sys.prefix, sys.base_prefix, os.path.dirname(halodb.__file__)})
               }, f)
"""


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One fresh interpreter runs the default paths with the audit hook armed (after a warm-up
    run, so that imports are setup); its recorded events."""
    root = tmp_path_factory.mktemp("audited")
    out = root / "events.json"
    run_python(AUDITED, root, out)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def _phase(audited: dict[str, Any], phase: str) -> list[list[str]]:
    """The events of one phase, less those of the import system loading a module of the
    installed program from its own files (rich, for one, loads some tables lazily, at times
    only on a later call): module bytecode read by ``marshal.loads`` in ``_compile_bytecode``,
    a module's body run by ``exec``, source compiled by ``source_to_code``, all called from
    ``importlib``'s frozen bootstrap, for files under the interpreter's or halodb's
    directories. That is code the program ships, not data."""
    roots = tuple(os.path.join(root, "") for root in audited["code_roots"])
    kept = []
    for event in audited["events"]:
        _, kind, caller_file, caller, detail = event
        if event[0] != phase:
            continue
        if caller_file.startswith("<frozen importlib"):
            if kind == "marshal.loads" and caller == "_compile_bytecode":
                continue
            if kind == "compile" and caller == "source_to_code":
                continue
            if kind == "exec" and detail.endswith(".py:<module>") and detail.startswith(roots):
                continue
        kept.append(event)
    return kept


def test_the_default_api_runs_no_code_and_unpickles_nothing(audited: dict[str, Any]) -> None:
    """Opening with default options, writing every kind of value, batches, deletes, reads,
    scans, check/stats/sync/flush, reopening (clean and after a crash) and a read-only open
    fire none of the audit events ``pickle.find_class``, ``exec``, ``compile``,
    ``marshal.loads``/``marshal.load`` (bar a lazy import of a module, see ``_phase``), and call
    no ``pickle`` loader."""
    assert _phase(audited, "api") == []
    assert [c for c in audited["pickle_calls"] if c[0] == "api"] == []


def test_the_command_evaluates_only_its_own_annotations(audited: dict[str, Any]) -> None:
    """The ``halodb`` subcommands (put, get, list, list --json, count, stats, tree, check,
    flush, dump, delete, load, clear) unpickle nothing, unmarshal nothing but modules' bytecode
    (see ``_phase``), and compile and run no text but their own: the modules of ``halodb.cli``
    use ``from __future__ import annotations``, so typer (through ``inspect.get_annotations``
    and ``typing.get_type_hints``) compiles and evaluates the annotation strings of the command
    functions, written in those modules, every time it builds a command. Every other
    ``compile`` is of one of those strings, called from inspect/typing, and every ``exec`` runs
    such a compiled string."""
    annotations = set(audited["annotations"])
    events = _phase(audited, "command")
    assert [c for c in audited["pickle_calls"] if c[0] == "command"] == []
    assert {e[1] for e in events} <= {"compile", "exec"}, events
    for _, event, caller_file, _, detail in events:
        assert caller_file in ("inspect.py", "typing.py"), (event, caller_file, detail)
        if event == "compile":
            assert detail in annotations, detail
        else:
            assert detail == "<string>:<module>", detail


def test_typed_keys_are_parsed_never_evaluated(audited: dict[str, Any]) -> None:
    """With ``-t``/``-T`` the command reads Python literals with ``ast.parse`` (which compiles
    to a syntax tree only: the ``compile`` audit event, from ``ast.parse``) and a walker that
    accepts only literals: apart from the annotations above, no text is ever executed."""
    annotations = set(audited["annotations"])
    parsed = set()
    for _, event, caller_file, caller, detail in _phase(audited, "typed"):
        assert event in ("compile", "exec"), event
        if caller_file == "ast.py":
            assert (event, caller) == ("compile", "parse")
            parsed.add(detail)
        else:
            assert caller_file in ("inspect.py", "typing.py"), (event, caller_file, detail)
            assert detail in annotations or detail == "<string>:<module>", detail
    assert {"('user', 42)", "b'k'", "[1, {'a': 2.5}]"} <= parsed
    assert [c for c in audited["pickle_calls"] if c[0] == "typed"] == []


def test_the_audit_hook_does_see_pickle(audited: dict[str, Any]) -> None:
    """Control: the opt-in ``PickleCodec`` reading a ``Fraction`` fires ``pickle.find_class``
    and calls ``pickle.loads``, so the silence above means something."""
    assert any(e[0] == "control" and e[1] == "pickle.find_class" for e in audited["events"])
    assert ["control", "loads"] in audited["pickle_calls"]


IMPORTS = r"""
import importlib.abc, json, os, sys

WATCHED = {"pickle", "_pickle", "shelve", "dbm", "dill", "cloudpickle", "jsonpickle", "yaml",
           "code", "codeop", "runpy"}
importers = []


class Witness(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name in WATCHED:
            frame, chain = sys._getframe(1), []
            while frame is not None:
                module = frame.f_globals.get("__name__", "")
                if not module.startswith(("importlib", "_frozen_importlib")):
                    chain.append(module)
                frame = frame.f_back
            importers.append([name, chain[0] if chain else "?"])
        return None


sys.meta_path.insert(0, Witness())
import halodb

db = halodb.open(os.path.join(sys.argv[1], "s"))
db.update({i: {"v": [i, str(i)]} for i in range(500)})
db["b"] = b"bytes"
db.flush()
db.close()
with halodb.open(os.path.join(sys.argv[1], "s"), readonly=True) as db:
    assert len(db) == 501 and dict(db.items())[7] == {"v": [7, "7"]}
    db.check()
if sys.argv[2] == "cli":
    from halodb import cli
    for argv in (["put", "k", "v"], ["get", "k"], ["list"], ["stats"], ["check"], ["tree"]):
        assert cli.main(["--path", os.path.join(sys.argv[1], "c"), *argv]) == 0
print(json.dumps({"importers": importers, "loaded": sorted(WATCHED & set(sys.modules))}))
"""


@pytest.fixture(scope="module")
def imports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    out = {}
    for what in ("api", "cli"):
        root = tmp_path_factory.mktemp(f"imports-{what}")
        out[what] = json.loads(run_python(IMPORTS, root, what).strip().splitlines()[-1])
    return out


@pytest.mark.parametrize("what", ["api", "cli"])
def test_no_module_but_halodb_values_brings_in_a_deserialiser(
    imports: dict[str, dict[str, Any]], what: str
) -> None:
    """In a fresh interpreter, ``import halodb`` and default use (and, for ``cli``, the
    ``halodb`` command) load none of shelve, dbm, dill, cloudpickle, jsonpickle, yaml, code,
    codeop or runpy. pickle is loaded only by ``rich.style`` (the command's terminal output),
    which pickles its own style metadata, never store data; the audit test above shows no
    store data is ever unpickled."""
    result = imports[what]
    assert set(result["loaded"]) <= {"pickle", "_pickle"}, result
    allowed = {"rich.style"} if what == "cli" else set()
    assert {who for name, who in result["importers"] if name == "pickle"} <= allowed
    assert {who for name, who in result["importers"] if name == "_pickle"} <= {"pickle"}


def test_default_use_never_loads_pickle(imports: dict[str, dict[str, Any]]) -> None:
    """In a fresh interpreter, ``import halodb`` plus default use of the API leaves ``pickle``
    out of ``sys.modules``: halodb loads it only when a program asks for ``PickleCodec``."""
    assert "pickle" not in imports["api"]["loaded"]


# ======================================================== (b) private files and directories

PRIVATE = r"""
import json, os, shutil, stat, sys
os.umask(0)  # as permissive as it gets: every mode below is the engine's own choice
import halodb
import halodb.testing
from halodb import cli
from halodb.vfs import FileSystem

root, golden = sys.argv[1], sys.argv[2]
created = []  # [path, mode at creation, when]
when = ["create"]


class Watching(FileSystem):
    def open(self, path, *, write=False, create=False):
        existed = os.path.lexists(path)
        handle = super().open(path, write=write, create=create)
        if not existed:  # the mode it was born with, temporary files included
            created.append([path, stat.S_IMODE(os.fstat(handle.fd).st_mode), when[0]])
        return handle

    def mkdir(self, path):
        existed = os.path.lexists(path)
        super().mkdir(path)
        if not existed:
            created.append([path + "/", stat.S_IMODE(os.stat(path).st_mode), when[0]])


fs = Watching()
store = os.path.join(root, "s")
small = {"memtable_size": 64 * 1024, "page_size": 1024, "partitions": 2}
db = halodb.open(store, filesystem=fs, **small)
when[0] = "writes"
db.update({("k", i): "v" * 200 for i in range(1000)})  # flushes on the memtable limit
db["before flush"] = 1
when[0] = "flush"
db.flush()
db["before close"] = 1
when[0] = "close"
db.close()
when[0] = "reopen"
db = halodb.open(store, filesystem=fs)  # a clean close: fresh logs
db[("k", 1)] = "again"
halodb.testing.abandon(db)
when[0] = "recovery"
with halodb.open(store, filesystem=fs) as db:  # log replay, torn-tail handling
    db.check()

v1 = os.path.join(root, "v1")
shutil.copytree(golden, v1)
for name in os.listdir(v1):  # make any file the upgrade does not replace stand out
    os.chmod(os.path.join(v1, name), 0o644)
before = {name: os.stat(os.path.join(v1, name)).st_ino for name in os.listdir(v1)}
when[0] = "upgrade"
with halodb.open(v1, filesystem=fs) as db:
    db["new"] = 1
    db.flush()

when[0] = "cli"
assert cli.main(["--path", os.path.join(root, "c"), "put", "k", "v"]) == 0
assert cli.main(["--path", os.path.join(root, "c"), "flush"]) == 0

final = {}
for directory in (store, v1, os.path.join(root, "c")):
    if directory != v1:  # (v1 is the copy of a checked-in directory: its mode is git's)
        final[directory + "/"] = stat.S_IMODE(os.stat(directory).st_mode)
    for name in os.listdir(directory):
        st = os.stat(os.path.join(directory, name))
        replaced = directory != v1 or before.get(name) != st.st_ino
        final[os.path.join(directory, name)] = [stat.S_IMODE(st.st_mode), replaced]
print(json.dumps({"created": created, "final": final}))
"""


def test_every_file_and_directory_the_store_creates_is_private_under_umask_0(
    tmp_path: Path,
) -> None:
    """Under umask 0, in a fresh interpreter: every file the store creates is ``0600`` the
    moment it is created (watched through a ``FileSystem`` subclass: ``LOCK``, the manifest's,
    trees', logs' and blooms' ``.tmp`` files before their rename) and every directory ``0700``;
    and afterwards every file of the store (manifest, ``LOCK``, ``pNNN.tree``/``.wal``/
    ``.bloom``) is ``0600``, after creation, memtable-limit flushes, ``flush()``, close, reopen,
    crash recovery, the upgrade of a version-1 store (whose files were made ``0644``: every
    file the upgrade replaced is ``0600``), and a store the ``halodb`` command created."""
    result = json.loads(run_python(PRIVATE, tmp_path, GOLDEN_V1))
    created = result["created"]
    for path, mode, when in created:
        expected = 0o700 if path.endswith("/") else 0o600
        assert mode == expected, f"{path} created {oct(mode)} during {when}"
    kinds = {os.path.basename(path.rstrip("/")) for path, _, _ in created}
    for index in (0, 1):
        for suffix in ("tree.tmp", "wal.tmp", "bloom.tmp"):
            assert fmt.partition_file(index, suffix) in kinds
    assert {fmt.LOCK_NAME, fmt.MANIFEST_NAME + ".tmp", "s"} <= kinds
    assert {when for path, _, when in created if path.endswith(".tmp")} >= {
        "create", "writes", "flush", "close", "reopen", "upgrade"
    }  # fmt: skip
    replaced = 0
    for path, value in result["final"].items():
        if path.endswith("/"):
            assert value == 0o700, path
            continue
        mode, new = value
        if new:
            replaced += 1
            assert mode == 0o600, f"{path} is {oct(mode)}"
    assert os.path.join(tmp_path, "v1", fmt.MANIFEST_NAME) in {
        p for p, v in result["final"].items() if not p.endswith("/") and v[1]
    }, "the upgrade did not rewrite the manifest"
    assert replaced >= 15


NESTED = r"""
import json, os, stat, sys
os.umask(0)
import halodb

root = sys.argv[1]
try:
    halodb.open(os.path.join(root, "a", "b", "store"))
except halodb.InterfaceError:
    pass
else:
    raise AssertionError("a missing parent was created")
with halodb.open(os.path.join(root, "store")) as db:
    db["k"] = 1
print(json.dumps({name: stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode)
                  for name in os.listdir(root)}))
"""


def test_the_store_directory_is_private_and_no_parent_is_created(tmp_path: Path) -> None:
    """``halodb.open("a/b/store")`` creates no missing parent (a directory created with the
    process's umask could be world-writable, and anyone could then swap the store directory
    for their own); under umask 0 the store's own directory is still ``0700``."""
    modes = json.loads(run_python(NESTED, tmp_path))
    assert modes == {"store": 0o700}


# ======================================================================= (c) planted links

VICTIM_BYTES = b"not the store's: must never change\n"


class Outside:
    """A directory outside the store holding the victim file that planted links point to."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "outside"
        self.dir.mkdir()
        self.victim = self.dir / "victim"
        self.victim.write_bytes(VICTIM_BYTES)
        os.chmod(self.victim, 0o644)
        self.missing = self.dir / "created-through-a-dangling-link"
        self.before = self.fingerprint()

    def fingerprint(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in sorted(os.listdir(self.dir)):
            st = os.lstat(self.dir / name)
            content = (self.dir / name).read_bytes()
            out[name] = (st.st_mode, st.st_size, st.st_mtime_ns, content)
        return out

    def plant(self, at: Path, link: str) -> None:
        """Put a link of kind ``link`` at ``at`` (replacing whatever is there)."""
        if at.is_symlink() or at.exists():
            at.unlink()
        if link == "symlink":
            at.symlink_to(self.victim)
        elif link == "dangling symlink":
            at.symlink_to(self.missing)
        else:
            os.link(self.victim, at)

    def assert_untouched(self) -> None:
        assert self.fingerprint() == self.before, "a planted link was written through"
        assert not self.missing.exists()


def _tmp_names(partitions: int) -> list[str]:
    names = [fmt.MANIFEST_NAME + ".tmp"]
    for index in range(partitions):
        names += [fmt.partition_file(index, s) for s in ("tree.tmp", "wal.tmp", "bloom.tmp")]
    return names


def _no_link_left(path: Path, outside: Outside) -> None:
    for name in os.listdir(path):
        entry = path / name
        assert not entry.is_symlink(), f"{name} is still a planted link"
        if name.endswith(".tmp"):
            assert not os.path.samefile(entry, outside.victim), f"{name} still links the victim"


@pytest.mark.parametrize("link", ["symlink", "dangling symlink", "hard link"])
@pytest.mark.parametrize("stage", ["creation", "existing store", "upgrade"])
def test_links_planted_at_temporary_names_are_never_written_through(
    tmp_path: Path, link: str, stage: str
) -> None:
    """``write_new`` writes ``NAME.tmp`` then renames it over ``NAME``. A link planted at every
    temporary name the store uses (``HALODB.tmp``, ``pNNN.tree.tmp``, ``pNNN.wal.tmp``,
    ``pNNN.bloom.tmp``), and planted again before every step, while the store is created, opened
    (a fresh log after a clean close), written (flushes on the memtable limit), flushed, closed,
    reopened after a crash, or upgraded from format version 1: every step succeeds, the victim
    outside the store keeps its bytes, mode and mtime, nothing is created through a dangling
    link, and no planted link survives."""
    outside = Outside(tmp_path)
    path = tmp_path / "s"
    # Merges in the writing thread: links are planted between steps, and a merge in the
    # background could meet one planted while it runs (refused all the same, O_NOFOLLOW and
    # O_EXCL, but the store would then stop its writes).
    small: dict[str, Any] = {"memtable_size": 64 * 1024, "page_size": 1024, "background": False}
    partitions = 2
    if stage == "creation":
        path.mkdir()
    elif stage == "existing store":
        with halodb.open(path, partitions=partitions, **small) as db:
            db.update({i: i for i in range(100)})
    else:
        shutil.copytree(GOLDEN_V1, path)

    def plant() -> None:
        for name in _tmp_names(partitions):
            outside.plant(path / name, link)

    plant()
    db = halodb.open(path, partitions=partitions, **small)
    if stage == "upgrade":
        assert (path / fmt.MANIFEST_NAME).read_bytes()[8:10] == fmt.U16.pack(fmt.FORMAT_VERSION)
    for step in range(3):
        plant()
        db.update({("w", step, i): "x" * 200 for i in range(400)})
    plant()
    db.flush()
    plant()
    db.close()
    plant()
    db = halodb.open(path, **small)
    db["crash"] = 1
    halodb.testing.abandon(db)
    plant()
    with halodb.open(path) as db:
        assert db["crash"] == 1 and db[("w", 2, 399)] == "x" * 200
        db.check()
    outside.assert_untouched()
    for name in _tmp_names(partitions):  # the last plant() was consumed or is still a link
        entry = path / name
        if entry.is_symlink() or entry.exists():
            entry.unlink()
    _no_link_left(path, outside)


STORE_FILES = [
    fmt.MANIFEST_NAME,
    fmt.LOCK_NAME,
    fmt.partition_file(0, "tree"),
    fmt.partition_file(1, "wal"),
    fmt.partition_file(0, "bloom"),
]


@pytest.mark.parametrize("readonly", [False, True], ids=["writable", "readonly"])
@pytest.mark.parametrize("link", ["symlink", "dangling symlink"])
@pytest.mark.parametrize(
    ("store", "name"),
    [("v2", name) for name in STORE_FILES] + [("v1", fmt.MANIFEST_NAME), ("v1", fmt.LOCK_NAME)],
)
def test_a_symlink_in_place_of_a_store_file_is_refused(
    tmp_path: Path, store: str, name: str, link: str, readonly: bool
) -> None:
    """Each file of an existing store (manifest, ``LOCK``, a tree, a log, a bloom filter; and
    the manifest and the still-empty ``LOCK`` of a version-1 store, which a writable open
    would upgrade in place; the logs hold unflushed records, so a writable open appends to them
    in place) replaced by a symlink to a victim holding an exact copy of that
    file (so that following the link would work), or by a dangling symlink: opening the store,
    writable or read-only, raises a ``halodb.Error``, or succeeds without writing through the
    link. Either way the victim is unchanged and nothing is created through the link."""
    outside = Outside(tmp_path)
    path = tmp_path / "s"
    if store == "v1":
        shutil.copytree(GOLDEN_V1, path)
    else:
        db = halodb.open(path, partitions=2)
        db.update({i: str(i) for i in range(200)})
        db.flush()
        db.update({("unflushed", i): i for i in range(50)})  # both logs are appended to
        halodb.testing.abandon(db)
    target = path / name
    outside.victim.write_bytes(target.read_bytes())  # a perfect decoy
    outside.before = outside.fingerprint()
    outside.plant(target, link)
    try:
        db = halodb.open(path, readonly=readonly)
    except halodb.Error:
        pass
    else:
        try:
            list(db.items())
            if not readonly:
                for i in range(20):  # appends to every partition's log
                    db[("x", i)] = i
                db.flush()
        finally:
            db.close()
    outside.assert_untouched()


@pytest.mark.parametrize("link", ["symlink", "dangling symlink"])
@pytest.mark.parametrize("name", STORE_FILES)
def test_a_symlink_at_a_final_name_stops_the_creation_of_a_store(
    tmp_path: Path, link: str, name: str
) -> None:
    """Creating a store in a directory that holds nothing but a symlink at one of the names the
    store is about to create (``LOCK`` is opened for writing its header; a planted manifest,
    tree, log or bloom filter would be taken for an earlier creation's leftovers): the open
    raises a ``halodb.Error`` or replaces the link; the victim is unchanged."""
    outside = Outside(tmp_path)
    path = tmp_path / "s"
    path.mkdir()
    outside.plant(path / name, link)
    try:
        db = halodb.open(path, partitions=2)
    except halodb.Error:
        pass
    else:
        with db:
            db["x"] = 1
        _no_link_left(path, outside)
    outside.assert_untouched()


@pytest.mark.parametrize("link", ["symlink", "dangling symlink"])
def test_the_dump_command_does_not_write_through_a_planted_temporary(
    tmp_path: Path, link: str
) -> None:
    """``halodb dump FILE`` writes a temporary file beside ``FILE`` and renames it over
    ``FILE``: a symlink planted at ``FILE.tmp``, the obvious name, is never written through
    (the temporary file is made under a fresh name with ``O_EXCL``)."""
    from halodb import cli

    outside = Outside(tmp_path)
    store = tmp_path / "s"
    with halodb.open(store) as db:
        db["secret"] = "store contents"
    dump = tmp_path / "dump.jsonl"
    outside.plant(Path(f"{dump}.tmp"), link)
    cli.main(["--path", str(store), "dump", str(dump)])
    outside.assert_untouched()

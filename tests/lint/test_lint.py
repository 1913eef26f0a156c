"""Lint as a test: ruff, ``mypy --strict``, the import contracts and the AST rules that the
contracts cannot say run in the default suite, so CI enforces them (pebble's
``internal/lint/lint_test.go`` does the same). Each AST rule lists its pinned exceptions."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "halodb"
BIN = Path(sys.executable).parent
LINTED = ["src", "tests", "benchmarks", "examples", "docs"]


def _run(*command: str) -> None:
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}\n{done.stderr}"


def test_ruff_finds_nothing() -> None:
    _run(sys.executable, "-m", "ruff", "check", *LINTED)


def test_the_code_is_formatted() -> None:
    _run(sys.executable, "-m", "ruff", "format", "--check", *LINTED)


def test_mypy_strict_finds_nothing_in_the_library_the_tests_and_the_benchmarks() -> None:
    _run(sys.executable, "-m", "mypy", "--strict", "src/halodb", "tests", "benchmarks")


def test_the_import_contracts_hold() -> None:
    _run(str(BIN / "lint-imports"))


# ----------------------------------------------------------------------------- AST rules


TESTS = ROOT / "tests"


def _tests() -> list[tuple[str, ast.Module]]:
    """Every module of the tests, by its path relative to ``tests``."""
    return [
        (path.relative_to(TESTS).as_posix(), ast.parse(path.read_text(), str(path)))
        for path in sorted(TESTS.rglob("*.py"))
    ]


def _library() -> list[tuple[str, ast.Module]]:
    """Every module of the library, by its path relative to ``src/halodb``."""
    return [
        (path.relative_to(SRC).as_posix(), ast.parse(path.read_text(), str(path)))
        for path in sorted(SRC.rglob("*.py"))
    ]


OS_FILE_CALLS = frozenset(
    {
        *("open", "read", "write", "pread", "pwrite", "fsync", "fdatasync", "close"),
        *("rename", "replace", "unlink", "remove", "mkdir", "makedirs", "rmdir", "listdir"),
        *("scandir", "stat", "lstat", "fstat", "truncate", "ftruncate", "chmod", "link"),
        *("symlink", "lseek", "posix_fallocate"),
    }
)
"""``os`` functions that touch files: only ``vfs`` calls them for a store's files."""

FILE_ALLOWED = ("vfs.py", "cli/")
"""Only the I/O seam touches a store's files; the CLI reads and writes the user's own files
(``load``'s input, the terminal) besides, and those are not the store's."""

STRUCT_ALLOWED = {
    "format.py": None,  # every on-disk byte layout
    "keys.py": 3,  # the key encoding's fixed-width fields (documented in the module docstring)
    "btree/node.py": 1,  # a leaf layout met twice, cut by one Struct built from the page's offsets
}
"""Modules that may build a ``struct.Struct``, and how many (``None``: any number)."""

PRIVATE_ALLOWED = {
    ("store.py", "self._store._key"),  # Batch encodes with its own store's checks
    ("store.py", "self._store._value"),
    ("store.py", "self._store._m"),  # Batch commits through its own store's engine
    ("testing.py", "db._m"),  # the named test hooks
    ("introspect.py", "store._m"),  # read-only views of the trees, for tools: the only code
    # outside the engine that reads a node
}
"""Reaching into another object's private attributes: only these pinned places."""

Modules = list[tuple[str, ast.Module]]


def file_calls(modules: Modules) -> list[str]:
    """Calls of ``os`` file functions or ``open()`` outside the allowed modules."""
    found = []
    for name, tree in modules:
        if name.startswith(FILE_ALLOWED):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if (
                isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name)
                and func.value.id == "os"
                and func.attr in OS_FILE_CALLS
            ) or (isinstance(func, ast.Name) and func.id == "open"):
                found.append(f"{name}:{node.lineno}: {ast.unparse(func)}()")
    return found


def struct_layouts(modules: Modules) -> dict[str, int]:
    """Modules that build more ``struct.Struct`` objects than they are pinned to."""
    counts: dict[str, int] = {}
    for name, tree in modules:
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "Struct"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "struct"
            ):
                counts[name] = counts.get(name, 0) + 1
    return {
        name: n
        for name, n in counts.items()
        if name not in STRUCT_ALLOWED
        or (STRUCT_ALLOWED[name] is not None and n != STRUCT_ALLOWED[name])
    }


def private_reaches(modules: Modules) -> set[tuple[str, str]]:
    """Every ``x._name`` where ``x`` is not ``self`` or ``cls``."""
    found = set()
    for name, tree in modules:
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            ):
                found.add((name, ast.unparse(node)))
    return found


def _dotted(node: ast.expr) -> str | None:
    """``a.b.c`` for a chain of names, else ``None``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def hook_bypasses(modules: Modules) -> list[str]:
    """What tests must not do: touch a store's engine (``._m``; ``halodb.testing.engine`` is
    the named hook) or reach a standard-library module through a HaloDB module (patching
    ``halodb.x.time`` patches it for all of HaloDB behind the test's back; a test's
    ``FileSystem`` is the seam)."""
    found = []
    for name, tree in modules:
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            dotted = _dotted(node.value)
            if node.attr == "_m" or (
                dotted is not None
                and dotted.split(".")[0] == "halodb"
                and node.attr in sys.stdlib_module_names
            ):
                found.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_tests_use_the_api_and_the_named_hooks() -> None:
    found = hook_bypasses(_tests())
    assert found == [], "tests reaching past the API and the hooks:\n" + "\n".join(found)


def test_only_vfs_calls_os_file_functions() -> None:
    found = file_calls(_library())
    assert found == [], "file I/O outside vfs:\n" + "\n".join(found)


def test_byte_layouts_are_defined_in_the_layout_modules() -> None:
    wrong = struct_layouts(_library())
    assert wrong == {}, f"struct.Struct( outside the pinned places: {wrong}"


def test_no_reaching_into_private_attributes() -> None:
    found = private_reaches(_library())
    assert found - PRIVATE_ALLOWED == set(), "private attributes of another object"
    stale = PRIVATE_ALLOWED - found
    assert not stale, f"pinned exceptions no longer needed (remove them): {sorted(stale)}"


def test_each_ast_rule_sees_a_planted_violation() -> None:
    """The rules bite: a module that breaks each one is found."""
    planted = [
        ("wal.py", ast.parse("import os\nos.unlink('x')\nopen('y')\n")),
        ("memtable.py", ast.parse("import struct\nS = struct.Struct('<I')\n")),
        ("bloom.py", ast.parse("def f(other):\n    return other._secret\n")),
        ("t.py", ast.parse("db._m.parts\nmonkeypatch.setattr(halodb.engine.engine.time, 'x')\n")),
    ]
    assert file_calls(planted) == ["wal.py:2: os.unlink()", "wal.py:3: open()"]
    assert struct_layouts(planted) == {"memtable.py": 1}
    assert private_reaches(planted) == {("bloom.py", "other._secret"), ("t.py", "db._m")}
    assert hook_bypasses(planted) == ["t.py:1: db._m", "t.py:2: halodb.engine.engine.time"]

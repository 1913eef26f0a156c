"""On-demand sessions: lint and types, the default tests, the docs, long soaks and the benchmark."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.default_venv_backend = "venv"


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, mypy --strict and the import-layer contract."""
    session.install("-e", ".[dev]")
    session.run("ruff", "check", "src", "tests", "benchmarks", "examples", "docs")
    session.run("mypy", "--strict", "src/halodb", "tests", "benchmarks")
    session.run("lint-imports")


@nox.session
def tests(session: nox.Session) -> None:
    """The default suite, exactly as CI runs it."""
    session.install("-e", ".[test]")
    session.run("pytest", "-q", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site (mkdocs.yml) with every warning an error, and run every
    code example: the fenced blocks of README.md and docs/*.md (tests/api/test_docs_examples.py
    says how to mark one that cannot run alone) and the doctests of the docstrings. The site
    goes to build/site/ (``mkdocs serve`` previews it)."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", env={"NO_MKDOCS_2_WARNING": "1"})
    session.run("pytest", "-q", "tests/api/test_docs_examples.py")
    session.run("pytest", "-q", "--doctest-modules", "src/halodb")


RELIABILITY = "tests/reliability"
"""The suites of docs/reliability.md, those that grow with HALODB_STRESS among them."""


@nox.session
def stress(session: nox.Session) -> None:
    """Every reliability suite at full size (docs/reliability.md): 20,000 kill cycles per mode
    (HALODB_CRASH_CYCLES), power cuts over every workload of up to 3 operations, every byte
    damaged, the whole I/O-fault matrix, more process rounds and state-machine runs.
    HALODB_SEED reproduces a run; pass test paths or -k to run a part."""
    session.install("-e", ".[test]")
    env = {
        "HALODB_STRESS": "1",
        "HALODB_CRASH_CYCLES": session.env.get("HALODB_CRASH_CYCLES", "20000"),
    }
    session.run("pytest", "-q", "-s", *(session.posargs or [RELIABILITY]), env=env)


@nox.session
def fuzz(session: nox.Session) -> None:
    """Fuzz the store's files for HALODB_FUZZ_SECONDS (default 600); HALODB_FUZZ_SEED replays
    a run. (``PYTHONPATH=tests python tests/reliability/test_fuzz.py`` runs the same target under
    atheris, if installed.)"""
    session.install("-e", ".[test]")
    env = {"HALODB_FUZZ_SECONDS": session.env.get("HALODB_FUZZ_SECONDS", "600")}
    session.run(
        "pytest", "-q", "-s", "tests/reliability/test_fuzz.py", "-k", "for_a_while", env=env
    )


@nox.session
def bench(session: nox.Session) -> None:
    """The db_bench-style comparison with sqlite3 and whichever peers install."""
    session.install("-e", ".[peers]")
    session.run("python", "benchmarks/db_bench.py", *session.posargs)


@nox.session
def memory(session: nox.Session) -> None:
    """Peak RSS of a fill (10M keys by default) against the store's memory budgets (Linux)."""
    session.install("-e", ".")
    session.run("python", "benchmarks/memory.py", *session.posargs)

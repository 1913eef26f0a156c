"""On-demand sessions: lint and types, the default tests, long soaks and the benchmark."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.default_venv_backend = "venv"


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, mypy --strict and the import-layer contract."""
    session.install("-e", ".[dev]")
    session.run("ruff", "check", "src", "tests", "benchmarks", "examples")
    session.run("mypy", "--strict", "src/halodb")
    session.run("lint-imports")


@nox.session
def tests(session: nox.Session) -> None:
    """The default suite, exactly as CI runs it."""
    session.install("-e", ".[test]")
    session.run("pytest", "-q", *session.posargs)


@nox.session
def stress(session: nox.Session) -> None:
    """Long crash loops and state-machine runs: HALODB_CRASH_CYCLES, HALODB_SEED to reproduce."""
    session.install("-e", ".[test]")
    cycles = session.env.get("HALODB_CRASH_CYCLES", "20000")
    env = {"HALODB_CRASH_CYCLES": cycles, "HALODB_STRESS": "1"}
    session.run("pytest", "-q", "tests/test_crash.py", "tests/test_model.py", env=env)


@nox.session
def bench(session: nox.Session) -> None:
    """The db_bench-style comparison with sqlite3 and whichever peers install."""
    session.install("-e", ".[peers]")
    session.run("python", "benchmarks/db_bench.py", *session.posargs)

"""The scripts in examples/ run to completion and print what they promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

EXPECTED = {
    "quickstart.py": [
        "greeting: hello",
        "config: {'retries': 3, 'hosts': ['a', 'b']}",
        "missing: <default>",
        "keys in order: [-3, 10, 2.5, 'a', 'b', 'config', 'greeting', b'raw', ('user', 1)]",
        "range user:002..user:004: ['user:002', 'user:003']",
        "prefix user:, reversed: ['user:005', 'user:004', 'user:003', 'user:002', 'user:001']",
        "orders: [(('order', 1), {'total': 12.5}), (('order', 2), {'total': 7.0})]",
        "greeting after batch: None",
        "order 3 after a failed batch: None",
    ],
    "durability.py": [
        "full: 100 of 100 writes survived the crash (each was fsynced before returning)",
        "fast + sync(): 100 of 100 writes survived the crash",
        "reopened read-only: after a clean close",
    ],
    "inventory.py": [
        "garden: rake, hose",
        "tools: hammer, screwdriver, wrench",
        "tools T-100 <= sku < T-200: ['T-100', 'T-150']",
        "refused: berlin has 5 x G-010, cannot move 50",
        "stock in berlin: {'G-010': 5, 'K-001': 2, 'T-100': 25}",
        "stock in lisbon: {'K-001': 10, 'T-100': 18}",
        "total T-100 units: 43",
    ],
    "custom_codec.py": [
        "refused: DecimalCodec stores Decimal values, not float",
        "alice: Decimal('99.80')",
        "bob: Decimal('0.50')",
        "total: 100.30 (exact)",
        "reopen with the default codec: InterfaceError",
    ],
}


def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_every_example_is_tested() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs_in_a_given_directory(script: str, tmp_path: Path) -> None:
    store = tmp_path / "store"
    done = run(script, str(store))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for expected in EXPECTED[script]:
        assert expected in lines, f"{expected!r} not in the output of {script}:\n{done.stdout}"
    assert (store / "HALODB").exists()


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs_in_a_temporary_directory(script: str) -> None:
    done = run(script)
    assert done.returncode == 0, done.stderr
    assert EXPECTED[script][0] in done.stdout.splitlines()


def test_example_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    done = run("quickstart.py", str(tmp_path))
    assert done.returncode != 0
    assert "not empty" in done.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"

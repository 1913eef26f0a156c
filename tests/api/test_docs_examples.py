"""The code examples of README.md and docs/*.md run, and show what they say.

Each fenced block runs on its own, in a new empty directory that is its current directory, so
that a reader can copy any one of them:

- a ``python`` block is executed, and passes if it raises nothing (its ``assert`` statements
  are the checks);
- a ``pycon`` block (an interactive session, with ``>>>`` prompts) is run by ``doctest``: what
  each statement prints or raises must match what the block shows (``...`` matches any text,
  as with ``doctest.ELLIPSIS``).

A block that cannot run alone (a fragment, or a call that needs a terminal or another process)
is marked by the line ``<!-- docs-test: skip -->`` right before its fence: the comment does not
show on the rendered page, and this test skips the block. Blocks in other languages (``sh``,
``text``, ...) are never run. Stores an example leaves open are closed after it.
"""

from __future__ import annotations

import doctest
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

import halodb

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP = "<!-- docs-test: skip -->"
RUN = ("python", "pycon")
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*)$")


@dataclass(frozen=True)
class Example:
    page: Path
    line: int
    """The line number of the first line of code."""
    language: str
    code: str
    skipped: bool

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def examples(page: Path) -> list[Example]:
    """Every fenced code block of a Markdown page."""
    found: list[Example] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    previous = ""
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            if lines[i].strip():
                previous = lines[i].strip()
            i += 1
            continue
        fence, info = match["fence"], match["info"].split()
        end = i + 1
        while end < len(lines) and not (
            lines[end].strip().startswith(fence) and not lines[end].strip().strip(fence[0])
        ):
            end += 1
        code = textwrap.dedent("\n".join(lines[i + 1 : end]))
        language = info[0] if info else ""
        found.append(Example(page, i + 2, language, code + "\n", previous == SKIP))
        previous = ""
        i = end + 1
    return found


ALL = [example for page in PAGES for example in examples(page)]
RUNNABLE = [example for example in ALL if example.language in RUN]


def close_stores(namespace: dict[str, object]) -> None:
    for value in namespace.values():
        if isinstance(value, halodb.Store):
            value.close()


@pytest.mark.parametrize("example", RUNNABLE, ids=[example.name for example in RUNNABLE])
def test_example_runs(example: Example, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if example.skipped:
        pytest.skip(f"marked {SKIP}")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    try:
        if example.language == "python":
            # Blank lines before the code, so that a traceback names the page's line numbers.
            source = "\n" * (example.line - 1) + example.code
            exec(compile(source, str(example.page), "exec"), namespace)
        else:
            run_session(example, namespace)
    finally:
        close_stores(namespace)


def run_session(example: Example, namespace: dict[str, object]) -> None:
    parser = doctest.DocTestParser()
    test = parser.get_doctest(
        example.code, namespace, example.name, str(example.page), example.line - 1
    )
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS, verbose=False)
    report: list[str] = []
    result = runner.run(test, out=report.append, clear_globs=False)
    if result.failed:
        pytest.fail("".join(report), pytrace=False)


def test_the_pages_have_examples_to_run() -> None:
    """The parser finds the examples (a broken fence pattern would make every test vanish)."""
    readme = [example for example in RUNNABLE if example.page.name == "README.md"]
    assert len(readme) >= 4
    assert all(example.code.strip() for example in RUNNABLE)


def test_python_blocks_are_marked_as_python() -> None:
    """A block of Python tagged ``py`` or ``python3`` would never run: tag it ``python``."""
    odd = [example.name for example in ALL if example.language in ("py", "python3", "py3")]
    assert not odd, f"tag these blocks python or pycon: {odd}"


def test_the_parser_reads_languages_lines_and_the_skip_marker(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "Text.\n\n```python\nx = 1\n```\n\n"
        f"{SKIP}\n```pycon\n>>> y\n```\n\n"
        "- item\n\n  ```sh\n  halodb list\n  ```\n",
        encoding="utf-8",
    )
    found = [(e.line, e.language, e.code, e.skipped) for e in examples(page)]
    assert found == [
        (4, "python", "x = 1\n", False),
        (9, "pycon", ">>> y\n", True),
        (15, "sh", "halodb list\n", False),
    ]

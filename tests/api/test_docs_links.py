"""Every relative link of README.md and docs/*.md names a file that exists.

(``mkdocs build --strict`` checks the links of the site's pages too, anchors included, but the
README is no page of the site, and this check needs no docs tools.)
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def links(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)  # no links inside code blocks
    return [target for target in LINK.findall(text) if "://" not in target]


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_relative_links_name_files_that_exist(page: Path) -> None:
    missing = [
        target
        for target in links(page)
        if not target.startswith("#") and not (page.parent / target.split("#")[0]).exists()
    ]
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


def test_the_readme_links_every_example_and_guide() -> None:
    targets = set(links(ROOT / "README.md"))
    wanted = {f"examples/{p.name}" for p in (ROOT / "examples").glob("*.py")}
    wanted |= {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md") if p.name != "index.md"}
    assert not wanted - targets, f"README.md does not link {sorted(wanted - targets)}"

"""The README and docs/ link only to what exists: every relative link names a file or folder of
the project, and every #anchor a heading of the page it points to."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from config.settings import PROJECT_ROOT

PAGES = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]


def heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def relative_links(page: Path) -> list[str]:
    prose = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold no links
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", prose) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_resolves(page: Path):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists() or (anchor and anchor not in heading_anchors(dest)):
            broken.append(target)
    assert broken == []


def test_the_readme_links_every_page_of_docs():
    linked = {Path(t).name for t in relative_links(PROJECT_ROOT / "README.md") if t.startswith("docs/")}
    assert {p.name for p in PAGES[1:]} <= linked

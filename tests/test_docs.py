"""The README stays one screen and every local link in the docs points at a file that exists."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_is_one_screen_of_short_lines():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    assert [n for n, line in enumerate(lines, 1) if len(line) > 120] == []


def test_local_links_of_the_readme_and_docs_resolve():
    broken = []
    for doc in [REPO / "README.md", REPO / "kaggle_notebooks" / "README.md", *(REPO / "docs").rglob("*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if not target.startswith(("http://", "https://")) and not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(REPO)} -> {target}")
    assert broken == []

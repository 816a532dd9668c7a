"""The repository stands alone: no document, docstring or comment points outside it.

hep.gg's API documentation is referred to by name; the facts users need are stated here.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
OUTSIDE = re.compile(
    r"\.\./shared|shared/hepgg|hepgg-api/|DESIGN\.md|[a-z-]+-api\.txt|id-generator-[a-z*-]+\.txt|uploader-[a-z-]+\.txt"
)


def _files() -> list[Path]:
    found = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for folder in ("hepinfra", "tests"):
        found += sorted(p for p in (ROOT / folder).rglob("*.py") if p != Path(__file__).resolve())
    return found


def test_nothing_points_outside_the_repository() -> None:
    hits = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in _files()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert hits == []


def test_the_emulator_doc_states_the_contract_in_its_own_words() -> None:
    text = (ROOT / "docs" / "emulator.md").read_text(encoding="utf-8")
    for fact in ("https://hep.gg/api/v1/db", "https://id.hep.gg/", "https://hep.gg/upload", "Bearer", "NO_KEY"):
        assert fact in text

"""The docs name vmwu's source files as they are: every ``vmwu/….py`` path in docs/*.md and
the README exists (modules moved by issue 12 left stale paths behind in four pages)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PATH = re.compile(r"(?<![\w/.-])(vmwu/[\w/.-]+?\.py)\b")


def test_every_source_path_in_the_docs_exists() -> None:
    pages = sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]
    assert len(pages) > 10
    missing = [
        f"{page.relative_to(REPO)}:{n}: {m.group(1)}"
        for page in pages
        for n, line in enumerate(page.read_text().splitlines(), 1)
        for m in PATH.finditer(line)
        if not (REPO / m.group(1)).is_file()
    ]
    assert not missing, "\n".join(missing)


def test_the_pattern_finds_paths_in_prose() -> None:
    line = "see `vmwu/run/instance.py` and (vmwu/tools.py), not tests/vmwu/x.py"
    assert [m.group(1) for m in PATH.finditer(line)] == ["vmwu/run/instance.py", "vmwu/tools.py"]

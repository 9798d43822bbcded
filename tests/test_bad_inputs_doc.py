"""docs/bad-inputs.md: at least 15 kinds of bad input, each row citing tests that exist (so the table cannot drift
into naming tests that were renamed or removed)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CITE = re.compile(r"`(tests/[\w/]+\.py)?::(\w+)`")


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def test_every_row_cites_existing_tests():
    rows = [line for line in (REPO / "docs" / "bad-inputs.md").read_text().splitlines()
            if re.match(r"\| \d+ \|", line)]
    assert len(rows) >= 15
    kinds = {row.split("|")[2].strip() for row in rows}
    assert kinds >= {"image", "annotation", "scene list", "config", "checkpoint", "cache", "signal", "disk"}
    for row in rows:
        cited, current = [], None
        for file, name in CITE.findall(row.split("|")[-2]):
            current = file or current  # `::other_test` continues the file named before it
            cited.append((current, name))
        assert cited, row
        for file, name in cited:
            assert name in _test_names(REPO / file), f"{file}::{name} (cited in row {row.split('|')[1].strip()})"

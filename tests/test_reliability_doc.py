"""RELIABILITY.md names, for each guarantee, the test that proves it: those tests must exist, so
a renamed or deleted test cannot leave a guarantee claimed with nothing behind it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CITED = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def test_every_test_named_in_reliability_md_exists() -> None:
    cited = CITED.findall((REPO / "RELIABILITY.md").read_text())
    assert len(cited) > 50  # the pattern still matches how the document cites tests
    defined: dict[str, set[str]] = {}
    missing = []
    for path, name in cited:
        if path not in defined:
            file = REPO / path
            tree = ast.parse(file.read_text()) if file.is_file() else ast.Module(body=[], type_ignores=[])
            defined[path] = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        if name not in defined[path]:
            missing.append(f"{path}::{name}")
    assert not missing, "RELIABILITY.md cites tests that do not exist:\n" + "\n".join(sorted(set(missing)))

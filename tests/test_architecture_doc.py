"""docs/architecture.md and the import contracts (.importlinter) describe the same layers.

`make test` runs `lint-imports` on the contracts themselves; this keeps the page a reader trusts
from drifting away from what is enforced.
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _contracts() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    assert cfg.read(REPO / ".importlinter"), "no .importlinter at the repository root"
    return cfg


def _lines(value: str) -> list[str]:
    return [line.strip() for line in value.splitlines() if line.strip()]


def _contract_layers() -> list[set[str]]:
    layers = _contracts()["importlinter:contract:layers"]
    assert layers["type"] == "layers" and _lines(layers["containers"]) == ["itemsage"]
    return [{f"itemsage.{m.strip()}" for m in re.split(r"[|:]", line)} for line in _lines(layers["layers"])]


def _documented_layers() -> list[set[str]]:
    """First column of the layer table, one row per layer, `a` \\| `b` for siblings."""
    rows = []
    for line in (REPO / "docs" / "architecture.md").read_text().splitlines():
        first = line.split(" | ")[0]
        if line.startswith("| `itemsage."):
            rows.append(set(re.findall(r"`(itemsage\.[a-z_]+)`", first)))
    return rows


def test_the_documented_layers_are_the_enforced_ones_in_order() -> None:
    assert _documented_layers() == _contract_layers()


def test_every_package_must_have_a_layer_and_eval_never_imports_train() -> None:
    cfg = _contracts()
    assert cfg.getboolean("importlinter:contract:layers", "exhaustive")
    forbidden = cfg["importlinter:contract:eval-not-train"]
    assert forbidden["type"] == "forbidden"
    assert _lines(forbidden["source_modules"]) == ["itemsage.eval"]
    assert _lines(forbidden["forbidden_modules"]) == ["itemsage.train"]
    assert cfg["importlinter:contract:no-cycles"]["type"] == "acyclic_siblings"


def test_studies_sit_above_train_and_eval() -> None:
    order = _contract_layers()

    def level(name: str) -> int:
        return next(i for i, layer in enumerate(order) if f"itemsage.{name}" in layer)

    assert level("studies") < level("train") < level("eval")

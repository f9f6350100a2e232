"""Item -> item pairs from same-product groups (Shopee): what the evaluation measures `/similar` by
on a catalog whose engagement is search pairs only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from itemsage.eval.same_product import SAME_PRODUCT_TASK, same_product_pairs, with_same_product_pairs


def _features(root: Path, catalog: dict[str, list[str]]) -> str:
    root.mkdir()
    (root / "manifest.json").write_text(json.dumps({}))
    pq.write_table(pa.table({"item_idx": pa.array([], pa.int64())}), root / "items.parquet")
    pq.write_table(pa.table(catalog), root / "catalog.parquet")
    return str(root)


def _search_pairs(items: list[int]) -> dict[str, np.ndarray]:
    n = len(items)
    return {
        "surface": np.full(n, "search"),
        "task": np.full(n, "search/click"),
        "query_key": np.arange(n, dtype=np.int64),
        "item_idx": np.asarray(items, dtype=np.int64),
    }


def test_each_held_out_listing_queries_the_next_held_out_listing_of_its_product(tmp_path: Path) -> None:
    # Rows: 0 b2, 1 a3, 2 a1, 3 b1, 4 a2, 5 c1 (no group), 6 c2 (no group).
    feats = _features(
        tmp_path / "f",
        {"item_id": ["b2", "a3", "a1", "b1", "a2", "c1", "c2"], "group": ["B", "A", "A", "B", "A", "", ""]},
    )
    # b2 (row 0) is not held out: B keeps one listing and gives no pair; ungrouped items none.
    query, target = same_product_pairs(feats, np.array([1, 2, 3, 4, 4, 5, 6]))
    # Group A by item id: a1 (2) -> a2 (4) -> a3 (1) -> a1, cyclically.
    assert list(zip(query.tolist(), target.tolist())) == [(2, 4), (4, 1), (1, 2)]

    pairs = with_same_product_pairs(_search_pairs([1, 2, 3, 4]), feats)
    assert pairs["surface"].tolist() == ["search"] * 4 + ["closeup"] * 3
    assert pairs["task"].tolist()[4:] == [SAME_PRODUCT_TASK] * 3
    assert pairs["query_key"].tolist()[4:] == [2, 4, 1] and pairs["item_idx"].tolist()[4:] == [4, 1, 2]


def test_real_closeup_pairs_or_no_groups_leave_the_pairs_alone(tmp_path: Path) -> None:
    grouped = _features(tmp_path / "g", {"item_id": ["a1", "a2"], "group": ["A", "A"]})
    plain = _features(tmp_path / "p", {"item_id": ["a1", "a2"]})
    assert same_product_pairs(plain, np.array([0, 1])) is None
    search = _search_pairs([0, 1])
    assert with_same_product_pairs(search, plain) is search
    closeup = {**search, "surface": np.array(["closeup", "search"])}
    assert with_same_product_pairs(closeup, grouped) is closeup
    assert len(with_same_product_pairs(search, grouped)["item_idx"]) == 4

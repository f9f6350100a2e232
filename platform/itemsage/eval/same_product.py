"""Item -> item pairs of a catalog with same-product groups (Shopee), for the evaluation.

Shopee's engagement is search pairs only (one listing's title -> another listing of its product,
``itemsage.data.shopee_pairs``), so the item -> item probe has no closeup pairs to read. Its
listings come in groups of the same product, the real relevance a "similar items" list is judged
by: each held-out listing queries the next held-out listing of its group (groups sorted by item
id, cyclically, the rule of ``shopee_pairs``), itself left out. Both ends are held out, so under
the item-disjoint split every such pair is a new listing asking for another new listing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from itemsage.data.features_read import catalog_strings
from itemsage.data.shopee_pairs import next_in_group

# The pairs' task: the closeup surface (an item as the query), action "same_product".
SAME_PRODUCT_TASK = "closeup/same_product"


def same_product_pairs(features: str, held_out: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(query item rows, target item rows): each of the ``held_out`` item rows queries the next
    held-out listing of its group. None for a catalog without groups (no ``group`` column, or
    every value empty); a group with one held-out listing gives no pair."""
    columns = catalog_strings(features, ("item_id", "group"))
    if not any(columns["group"]):
        return None
    df = pd.DataFrame(columns).assign(item_idx=np.arange(len(columns["item_id"])))
    df = df[df["item_idx"].isin(np.unique(held_out)) & (df["group"] != "")]
    df = df.sort_values(["group", "item_id"], kind="stable")
    nxt, keep = next_in_group(df["group"])
    idx = df["item_idx"].to_numpy()
    return idx[keep], idx[nxt[keep]]


def with_same_product_pairs(pairs: dict[str, np.ndarray], features: str) -> dict[str, np.ndarray]:
    """``pairs`` (``read_pairs`` columns) plus the same-product item -> item pairs of their items
    when the split has no closeup pairs of its own and the catalog has groups; else ``pairs``."""
    if (pairs["surface"] == "closeup").any():
        return pairs
    found = same_product_pairs(features, pairs["item_idx"])
    if found is None or len(found[0]) == 0:
        return pairs
    query, target = found
    n = len(query)
    return {
        "surface": np.concatenate([pairs["surface"], np.full(n, "closeup")]),
        "task": np.concatenate([pairs["task"], np.full(n, SAME_PRODUCT_TASK)]),
        "query_key": np.concatenate([pairs["query_key"], query.astype(np.int64)]),
        "item_idx": np.concatenate([pairs["item_idx"], target.astype(np.int64)]),
    }

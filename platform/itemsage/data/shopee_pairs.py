"""Real Shopee pairs: the title of one listing -> another listing of the same product."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from itemsage.data.engagement import engagement_frame


def next_in_group(groups: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """For rows already sorted by group (then item id): the position of each row's next row in its
    group, cyclically, and whether its group has another row to point at (size >= 2)."""
    size = groups.groupby(groups, sort=False).transform("size").to_numpy()
    pos = groups.groupby(groups, sort=False).cumcount().to_numpy()
    return np.arange(len(groups)) - pos + (pos + 1) % np.maximum(size, 1), size >= 2


def shopee_pairs(catalog: pd.DataFrame) -> pd.DataFrame:
    """Real search-like pairs: the title of one listing -> another listing of its label group.

    Each listing with a title queries the next listing of its group (groups sorted by item id,
    cyclically), so every listing is once a query and once an engaged item, with no randomness.
    """
    if "group" not in catalog.columns:
        raise ValueError("shopee_pairs needs a catalog with a 'group' column (Shopee label_group)")
    df = (
        catalog[["item_id", "title", "group"]]
        .astype(str)
        .sort_values(["group", "item_id"], kind="stable")
        .reset_index(drop=True)
    )
    nxt, grouped = next_in_group(df["group"])
    keep = grouped & (df["title"].str.strip() != "").to_numpy()
    n = int(keep.sum())
    return engagement_frame(
        {
            "surface": ["search"] * n,
            "action": ["click"] * n,
            "query": df["title"].to_numpy()[keep].tolist(),
            "item_id": df["item_id"].to_numpy()[nxt[keep]].tolist(),
            "user_id": [""] * n,
            "timestamp": [math.nan] * n,
            "source": ["shopee"] * n,
        }
    )

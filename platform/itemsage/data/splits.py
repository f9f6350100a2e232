"""Train/val/test splits of engagement pairs, and user histories that only hold what training
may see.

Splits are item-disjoint by default (``split_by_item``: held-out items are cold, never seen in
training) or temporal (``split_by_time``: held-out pairs are the latest engagements). Either way
user histories only hold train items (``build_user_histories``), so held-out engagements never
leak into training inputs.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

SPLITS: tuple[str, ...] = ("train", "val", "test")


def stable_unit(key: str, seed: int) -> float:
    """A uniform number in [0, 1) from ``key``: the same on every process and machine (blake2b,
    never Python's salted built-in ``hash``)."""
    digest = hashlib.blake2b(f"{seed}\x1f{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def item_splits(catalog: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int) -> dict[str, str]:
    """``{item_id: "train" | "val" | "test"}``; items of one ``group`` always share a split, so
    near-duplicate listings of a product cannot sit on both sides."""
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError("val_fraction and test_fraction must be >= 0 and sum to less than 1")
    ids = catalog["item_id"].astype(str).tolist()
    groups = catalog["group"].astype(str).tolist() if "group" in catalog.columns else [""] * len(ids)
    splits = {}
    for item_id, group in zip(ids, groups):
        u = stable_unit(f"group:{group}" if group.strip() else f"item:{item_id}", seed)
        splits[item_id] = "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"
    return splits


def split_by_item(
    pairs: pd.DataFrame, catalog: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, pd.DataFrame]:
    """Item-disjoint train/val/test: a pair goes where its engaged item's split is.

    No engaged item of a val/test pair is an engaged item of a train pair, and train closeup
    pairs whose query item is held out are dropped too, so evaluation items are unseen.
    """
    splits = item_splits(catalog, val_fraction, test_fraction, seed)
    unknown = sorted(set(pairs["item_id"].astype(str)) - set(splits))
    if unknown:
        raise ValueError(f"{len(unknown)} engaged items are not in the catalog, e.g. {unknown[:3]}")
    item_split = pairs["item_id"].astype(str).map(splits)
    query_split = pairs["query"].astype(str).map(splits).fillna("train")
    leaks = (pairs["surface"] == "closeup") & (query_split != "train")
    out = {}
    for name in SPLITS:
        mask = item_split == name
        if name == "train":
            mask &= ~leaks
        out[name] = pairs[mask].reset_index(drop=True)
    return out


def split_by_time(pairs: pd.DataFrame, val_fraction: float, test_fraction: float) -> dict[str, pd.DataFrame]:
    """Temporal train/val/test: the latest ``test_fraction`` of pairs by timestamp are test, the
    ``val_fraction`` before them val, the rest train (the paper's protocol: future engagement).

    Unlike :func:`split_by_item`, an item can be engaged on both sides, so evaluation measures what a
    model learned about the items it has seen as well as its reach to new ones. Pairs without a
    timestamp count as oldest (train). A cut falls between distinct timestamps: pairs sharing one
    never straddle two splits.
    """
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError("val_fraction and test_fraction must be >= 0 and sum to less than 1")
    ts = pairs["timestamp"].astype("float64") if "timestamp" in pairs.columns else pd.Series(np.nan, index=pairs.index)
    if not ts.notna().any():
        raise ValueError(
            "a time split needs engagement timestamps and these pairs have none; use engagement.split: item"
        )
    t = ts.fillna(-np.inf)
    ordered = np.sort(t.to_numpy())
    n = len(ordered)

    def cut(fraction_after: float) -> float:
        """The timestamp from which about ``fraction_after`` of the pairs are at or after it."""
        k = min(n - 1, max(0, n - int(round(fraction_after * n))))
        return ordered[k] if fraction_after > 0 else np.inf

    t_test, t_val = cut(test_fraction), cut(test_fraction + val_fraction)
    masks = {"train": t < t_val, "val": (t >= t_val) & (t < t_test), "test": t >= t_test}
    return {name: pairs[masks[name]].reset_index(drop=True) for name in SPLITS}


def build_user_histories(engagements: pd.DataFrame, allowed_items: set[str], max_len: int) -> dict[str, list[str]]:
    """Each user's engaged items, most recent first, distinct, at most ``max_len``.

    Only ``allowed_items`` (the train split's items) enter a history, so a home query never
    carries a held-out item. Unknown timestamps count as oldest; ties go to the later log row.
    Every user in the log gets an entry, possibly empty, so callers can count users they drop.
    """
    df = engagements.reset_index(drop=True)
    users = df["user_id"].astype(str).to_numpy()
    items = df["item_id"].astype(str).to_numpy()
    ts = df["timestamp"].astype("float64").fillna(-np.inf).to_numpy()
    order = np.lexsort((-np.arange(len(df)), -ts))
    histories: dict[str, list[str]] = {}
    seen: dict[str, set[str]] = {}
    for r in order:
        user = users[r]
        if not user:
            continue
        history = histories.setdefault(user, [])
        seen_items = seen.setdefault(user, set())
        item = items[r]
        if item in allowed_items and item not in seen_items and len(history) < max_len:
            history.append(item)
            seen_items.add(item)
    return dict(sorted(histories.items()))

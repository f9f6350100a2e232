"""Engagement pairs derived from the catalog itself, as Ray Data operations.

Two derivations need every row of a key in one place, so both run on hash partitions
(``itemsage.data.partitions``) and call the pandas rule of their source module on each partition,
which keeps them the same rule, not a second copy:

- ``shopee_pair_dataset``: ``engagement.shopee_pairs`` per partition of label groups (a group is
  never split across partitions, and the rule only looks inside a group).
- ``link_pair_dataset``: Amazon ``also_buy`` / ``also_view`` links (``copurchase.link_pairs``)
  against the catalog's ids, partitioned by the linked id: a link survives when its target is
  an item of the same partition. The aggregated ``link_outside_catalog`` rejects and the counts
  of ``copurchase.link_pairs`` are rebuilt exactly from per-partition counts (each asin lives in
  one partition, so distinct counts add up).

Pairs keep the position of what they came from (``order``, ``seq``), so collecting them in that
order gives the frame of the in-memory functions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from itemsage.data.copurchase import EXAMPLES, LINK_ACTIONS, LINK_SOURCE, LINK_SURFACE
from itemsage.data.copurchase import STAGE as ENGAGEMENT_STAGE
from itemsage.data.engagement import ENGAGEMENT_COLUMNS
from itemsage.data.partitions import by_key
from itemsage.data.rejects import Reject
from itemsage.data.shopee_pairs import shopee_pairs

PAIR_SCHEMA = pa.schema(
    [(c, pa.float64() if c == "timestamp" else pa.string()) for c in ENGAGEMENT_COLUMNS]
    + [("order", pa.int64()), ("seq", pa.int32())]
)
# A partition's link resolution: its pairs (stat columns null), plus one row per action with the
# counts of its links (``surface`` null), so one pass yields both.
RESOLVED_SCHEMA = pa.schema(
    list(PAIR_SCHEMA)
    + [
        ("stat_links", pa.int64()),
        ("stat_outside", pa.int64()),
        ("stat_outside_asins", pa.int64()),
        ("stat_examples", pa.list_(pa.string())),
    ]
)
STAT_COLUMNS: list[str] = ["stat_links", "stat_outside", "stat_outside_asins", "stat_examples"]


def _pair_table(df: pd.DataFrame, order: np.ndarray, seq: np.ndarray) -> pa.Table:
    columns = {c: pa.array(df[c].to_numpy(), type=PAIR_SCHEMA.field(c).type) for c in ENGAGEMENT_COLUMNS}
    columns["order"] = pa.array(order, type=pa.int64())
    columns["seq"] = pa.array(seq, type=pa.int32())
    return pa.table(columns, schema=PAIR_SCHEMA)


# ---------------------------------------------------------------------------------- Shopee


def _shopee_partition(part: pa.Table) -> pa.Table:
    df = part.to_pandas()
    pairs = shopee_pairs(df)
    # shopee_pairs emits one pair per query listing with a title, groups sorted by item id: the
    # query listing's catalog position orders the pairs the same way on every run.
    ordered = df.sort_values(["group", "item_id"], kind="stable")
    keep = ordered.groupby("group", sort=False)["item_id"].transform("size").to_numpy() >= 2
    keep &= (ordered["title"].astype(str).str.strip() != "").to_numpy()
    return _pair_table(pairs, ordered["order"].to_numpy()[keep], np.zeros(len(pairs), np.int32))


def shopee_pair_dataset(items: Any, partitions: int) -> Any:
    """``engagement.shopee_pairs`` over an item Dataset (``order``, ``item_id``, ``title``, ``group``)."""
    slim = items.select_columns(["order", "item_id", "title", "group"])
    return by_key(slim, "group", partitions, _shopee_partition)


# ---------------------------------------------------------------------------------- Amazon


def _link_rows(batch: pa.Table) -> pa.Table:
    """Links (query item -> linked item) as rows keyed by the linked id."""
    return pa.table(
        {
            "key": batch.column("linked_id"),
            "query": batch.column("item_id"),
            "action": batch.column("action"),
            "order": batch.column("order"),
            "seq": batch.column("seq"),
        }
    )


def _id_rows(batch: pa.Table) -> pa.Table:
    """Catalog ids as rows of the same shape (action null marks an item)."""
    n = batch.num_rows
    return pa.table(
        {
            "key": batch.column("item_id"),
            "query": pa.nulls(n, pa.string()),
            "action": pa.nulls(n, pa.string()),
            "order": pa.array(np.full(n, -1, np.int64)),
            "seq": pa.array(np.zeros(n, np.int32)),
        }
    )


def _resolve_links(part: pa.Table) -> pa.Table:
    """One partition of linked ids: the links whose target is a catalog item (pair rows), and per
    action the counts of all its links (stat rows, ``surface`` null)."""
    is_item = pc.is_null(part.column("action"))
    known = pc.unique(part.filter(is_item).column("key"))
    links = part.filter(pc.invert(is_item))
    inside = pc.is_in(links.column("key"), value_set=known)
    kept = links.filter(inside)
    n = kept.num_rows
    pairs = {
        "surface": pa.array([LINK_SURFACE] * n, pa.string()),
        "action": kept.column("action"),
        "query": kept.column("query"),
        "item_id": kept.column("key"),
        "user_id": pa.array([""] * n, pa.string()),
        "timestamp": pa.array(np.full(n, math.nan), pa.float64()),
        "source": pa.array([LINK_SOURCE] * n, pa.string()),
        "order": kept.column("order"),
        "seq": kept.column("seq"),
    }
    pairs |= {c: pa.nulls(n, RESOLVED_SCHEMA.field(c).type) for c in STAT_COLUMNS}
    return pa.concat_tables([pa.table(pairs, schema=RESOLVED_SCHEMA), _stat_rows(links, inside)])


def _stat_rows(links: pa.Table, inside: pa.ChunkedArray | pa.Array) -> pa.Table:
    df = pd.DataFrame({"action": links.column("action").to_pylist(), "key": links.column("key").to_pylist()})
    df["inside"] = np.asarray(inside.to_numpy(zero_copy_only=False), dtype=bool) if len(df) else []
    rows: dict[str, list[Any]] = {name: [] for name in RESOLVED_SCHEMA.names}
    for action, group in df.groupby("action", sort=True):
        outside = group.loc[~group["inside"], "key"]
        for name in RESOLVED_SCHEMA.names:
            rows[name].append(None)
        rows["action"][-1] = action
        rows["stat_links"][-1] = len(group)
        rows["stat_outside"][-1] = len(outside)
        rows["stat_outside_asins"][-1] = int(outside.nunique())
        # The smallest asins of each partition hold the smallest of the catalog.
        rows["stat_examples"][-1] = sorted(set(outside))[:EXAMPLES]
    return pa.table(rows, schema=RESOLVED_SCHEMA)


def _pair_rows(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.is_valid(batch.column("surface"))).select(PAIR_SCHEMA.names)


def _stats_only(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.is_null(batch.column("surface"))).select(["action", *STAT_COLUMNS])


def link_pair_dataset(items: Any, links: Any, partitions: int) -> tuple[Any, list[Reject], dict[str, int]]:
    """``copurchase.link_pairs`` as Ray Data: (pairs Dataset of ``PAIR_SCHEMA``, rejects, counts).

    ``links``: the ingest's links (``item_id``, ``action``, ``linked_id``, ``order``, ``seq``) of
    kept items; they are already distinct and never point at their own item (the parser's rules),
    which ``link_pairs`` otherwise enforces itself.
    """
    rows = links.map_batches(_link_rows, batch_format="pyarrow").union(
        items.select_columns(["item_id"]).map_batches(_id_rows, batch_format="pyarrow")
    )
    resolved = by_key(rows, "key", partitions, _resolve_links).materialize()
    stats = resolved.map_batches(_stats_only, batch_format="pyarrow")
    rejects, counts = merge_link_stats(
        row for batch in stats.iter_batches(batch_format="pyarrow") for row in batch.to_pylist()
    )
    return resolved.map_batches(_pair_rows, batch_format="pyarrow"), rejects, counts


def merge_link_stats(stats: Iterable[dict[str, Any]]) -> tuple[list[Reject], dict[str, int]]:
    """Per-partition link stats (one row per partition and action) -> the rejects and counts of
    ``copurchase.link_pairs``."""
    total: dict[str, list[int]] = {a: [0, 0, 0] for a in LINK_ACTIONS}
    examples: dict[str, list[str]] = {a: [] for a in LINK_ACTIONS}
    for row in stats:
        action = row["action"]
        acc = total.setdefault(action, [0, 0, 0])
        for i, name in enumerate(("stat_links", "stat_outside", "stat_outside_asins")):
            acc[i] += int(row[name])
        examples.setdefault(action, []).extend(row["stat_examples"])
    rejects: list[Reject] = []
    counts: dict[str, int] = {}
    for action in sorted(total):
        links, outside, asins = total[action]
        counts[f"{action}_links"] = links
        counts[f"{action}_outside_catalog"] = outside
        counts[f"{action}_pairs"] = links - outside
        if outside:
            named = ", ".join(sorted(set(examples[action]))[:EXAMPLES])
            detail = (
                f"{action} links: {outside:,} of {links:,} point to {asins:,} asins not in the catalog; "
                f"dropped (e.g. {named})"
            )
            rejects.append(Reject(ENGAGEMENT_STAGE, None, "link_outside_catalog", detail))
    return rejects, counts


def collect_pairs(ds: Any) -> pd.DataFrame:
    """A pair Dataset as the engagement frame, in the order of what the pairs came from."""
    tables = [t for t in ds.iter_batches(batch_format="pyarrow", batch_size=None) if t.num_rows]
    if not tables:
        return pd.DataFrame({c: pd.Series(dtype="float64" if c == "timestamp" else str) for c in ENGAGEMENT_COLUMNS})
    df = pa.concat_tables(tables).to_pandas().sort_values(["order", "seq"], kind="stable")
    return df[ENGAGEMENT_COLUMNS].reset_index(drop=True)

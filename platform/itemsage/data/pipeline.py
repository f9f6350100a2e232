"""Preprocessing: catalog + engagements -> one feature directory (``docs/feature-format.md``).

``run_preprocess`` reads the catalog, derives or reads engagement pairs, splits them item-disjointly,
builds the token vocabulary from the training items (the first three as Ray Data operations, see
``itemsage.data.ingest_stages``), then featurizes with Ray Data (image backbone and MiniLM in actor
pools, see ``itemsage.data.featurize``) and writes the directory all at once: every file goes into
a staging directory that replaces the output only when the run succeeded.

Bad input never stops a run: unusable rows, images and pairs are skipped, each with a line in
``rejects.jsonl``; only a missing catalog, an unknown layout or a bad config raise, before any
expensive work starts.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import ray

from itemsage.config import TEXT_FIELDS, PreprocessConfig, to_dict
from itemsage.data.catalog import CatalogReadResult, read_catalog
from itemsage.data.copurchase import amazon_engagements
from itemsage.data.engagement import read_engagements
from itemsage.data.features_io import staged_output
from itemsage.data.featurize import (
    MINILM_DIM,
    StagePlan,
    cluster_resources,
    collect_numpy,
    collect_table,
    embedding_texts,
    fixed_list_array,
    image_feature_dataset,
    image_rows,
    list_array,
    plan_stages,
    text_feature_dataset,
    text_rows,
)
from itemsage.data.images import BACKBONES, weights_record
from itemsage.data.ingest import CatalogIngest, collect_catalog
from itemsage.data.ingest_stages import DerivedPairs, build_training_vocab, derive_pairs, ingest_for, training_vocab
from itemsage.data.layouts import LAYOUTS, CatalogError, detect_layout
from itemsage.data.rejects import Reject
from itemsage.data.shopee_pairs import shopee_pairs
from itemsage.data.splits import SPLITS, build_user_histories, item_splits, split_by_item, split_by_time
from itemsage.data.synthetic_engagement import synthesize_engagements
from itemsage.data.text import Vocab

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
# Column names and types of docs/feature-format.md; every table is built against these.
ITEMS_SCHEMA = pa.schema(
    [
        ("item_idx", pa.int64()),
        ("item_id", pa.string()),
        ("n_images", pa.int32()),
        ("image_feats", pa.list_(pa.float32())),
        ("title_emb", pa.list_(pa.float32())),
    ]
    + [(f"tok_{f}", pa.list_(pa.int32())) for f in TEXT_FIELDS]
)
QUERIES_SCHEMA = pa.schema([("query_idx", pa.int64()), ("text", pa.string()), ("text_emb", pa.list_(pa.float32()))])
USERS_SCHEMA = pa.schema(
    [
        ("user_idx", pa.int64()),
        ("user_id", pa.string()),
        ("history", pa.list_(pa.int64())),
        ("user_feat", pa.list_(pa.float32())),
    ]
)
PAIRS_SCHEMA = pa.schema(
    [
        ("surface", pa.string()),
        ("action", pa.string()),
        ("task", pa.string()),
        ("query_key", pa.int64()),
        ("item_idx", pa.int64()),
        ("source", pa.string()),
    ]
)


class PreprocessError(ValueError):
    """The run cannot start: bad config, or a catalog without a single usable item."""


# ------------------------------------------------------------------------------------- summary


@dataclass
class PreprocessSummary:
    """What a run produced; written to ``summary.json`` and printed as a table."""

    output: str
    layout: str
    engagement_source: str
    items: int
    items_with_images: int
    images: int
    images_featurized: int
    queries: int
    users: int
    skipped: dict[str, int]
    pairs: dict[str, dict[str, int]]
    vocab_sizes: dict[str, int]
    timings: dict[str, float]
    seconds: float
    resources: dict[str, Any] = field(default_factory=dict)
    # Exact counts behind aggregated rejects (amazon: links and reviews outside the catalog).
    engagement_counts: dict[str, int] = field(default_factory=dict)

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0

    @property
    def images_per_s(self) -> float:
        t = self.timings.get("images", 0.0)
        return self.images / t if t > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["items_per_s"] = round(self.items_per_s, 2)
        d["images_per_s"] = round(self.images_per_s, 2)
        return d

    def table(self) -> str:
        """Fixed-width report for the end of a run (and for logs of `ray job submit`)."""
        rows: list[tuple[str, str]] = [
            ("output", self.output),
            ("layout / engagements", f"{self.layout} / {self.engagement_source}"),
            ("items", f"{self.items:,}"),
            ("items with images", f"{self.items_with_images:,}"),
            ("images featurized", f"{self.images_featurized:,} of {self.images:,}"),
            ("search queries", f"{self.queries:,}"),
            ("home users", f"{self.users:,}"),
        ]
        rows += [(f"skipped {k}", f"{v:,}") for k, v in self.skipped.items()] or [("skipped", "0")]
        rows += [(f"engagement {k}", f"{v:,}") for k, v in self.engagement_counts.items()]
        for split, tasks in self.pairs.items():
            rows.append((f"pairs {split}", f"{sum(tasks.values()):,}"))
            rows += [(f"  {task}", f"{n:,}") for task, n in tasks.items()]
        rows += [(f"time {k}", f"{v:.1f}s") for k, v in self.timings.items()]
        rows += [
            ("time total", f"{self.seconds:.1f}s"),
            ("items/s", f"{self.items_per_s:.1f}"),
            ("images/s (image stage)", f"{self.images_per_s:.1f}"),
        ]
        width = max(len(k) for k, _ in rows)
        line = "-" * (width + 3 + max(len(v) for _, v in rows))
        body = "\n".join(f"{k:<{width}} | {v}" for k, v in rows)
        return f"{line}\nItemSage preprocessing summary\n{line}\n{body}\n{line}"


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)


# ----------------------------------------------------------------------------------- validation


def check_catalog(cfg: PreprocessConfig) -> str:
    """The catalog's layout, or one ``CatalogError`` naming the path and the supported layouts."""
    if cfg.layout == "auto":
        return detect_layout(cfg.catalog)
    if cfg.layout not in LAYOUTS:
        raise CatalogError(f"unknown catalog layout {cfg.layout!r}; use auto or one of {', '.join(LAYOUTS)}")
    if not Path(cfg.catalog).exists():
        raise CatalogError(f"cannot read catalog {cfg.catalog}: the path does not exist")
    return cfg.layout


def validate_config(cfg: PreprocessConfig) -> None:
    """Fail in a second on what would otherwise fail after minutes of featurization."""
    layout = check_catalog(cfg)
    image = cfg.image
    if image.backbone not in BACKBONES:
        raise PreprocessError(
            f"image.backbone: unknown backbone {image.backbone!r}; supported: {', '.join(sorted(BACKBONES))}"
        )
    if BACKBONES[image.backbone].needs_weights_path and not image.weights_path:
        raise PreprocessError(f"image.backbone {image.backbone!r} needs image.weights_path (a local weights file)")
    if image.weights_path and "://" not in image.weights_path and not Path(image.weights_path).is_file():
        raise PreprocessError(f"image.weights_path: file not found: {image.weights_path}")
    for name, value in (
        ("image.batch_size", image.batch_size),
        ("image.concurrency", image.concurrency),
        ("image.max_images_per_item", image.max_images_per_item),
        ("rows_per_block", cfg.rows_per_block),
        ("partitions", cfg.partitions),
        ("read_lines_per_block", cfg.read_lines_per_block),
    ):
        if value < 1:
            raise PreprocessError(f"{name} must be >= 1, got {value}")
    if image.num_threads < 0:
        raise PreprocessError(f"image.num_threads must be >= 0, got {image.num_threads}")
    if not cfg.output:
        raise PreprocessError("output must name a directory or URI")
    if cfg.engagement.split not in ("item", "time"):
        raise PreprocessError(f"engagement.split must be 'item' or 'time', got {cfg.engagement.split!r}")
    if cfg.images_dir is not None and not Path(cfg.images_dir).is_dir():
        raise PreprocessError(f"images_dir: not a directory: {cfg.images_dir}")
    if cfg.reviews and not Path(cfg.reviews).exists():
        raise PreprocessError(f"reviews: file not found: {cfg.reviews}")
    if (cfg.reviews or cfg.images_dir is not None) and layout != "amazon":
        raise PreprocessError(f"reviews and images_dir are read for the amazon layout only; this catalog is {layout}")


# ------------------------------------------------------------------------------- catalog + pairs


def load_catalog(cfg: PreprocessConfig) -> tuple[CatalogReadResult, pd.DataFrame]:
    """The catalog read, plus its items with ``item_idx`` = row number (the id of the format)."""
    result = read_catalog(
        cfg.catalog,
        layout=cfg.layout,
        max_images=cfg.image.max_images_per_item,
        max_field_chars=cfg.text.max_chars_per_field,
        images_dir=cfg.images_dir,
    )
    return result, with_item_idx(result, cfg)


def ingest_catalog_items(cfg: PreprocessConfig) -> tuple[CatalogIngest, CatalogReadResult, pd.DataFrame]:
    """``load_catalog`` through Ray Data (``itemsage.data.ingest``); the Datasets stay available
    for the catalog-scale stages (pairs, vocabulary). Needs a Ray session."""
    ingest = ingest_for(cfg)
    result = collect_catalog(ingest)
    return ingest, result, with_item_idx(result, cfg)


def with_item_idx(result: CatalogReadResult, cfg: PreprocessConfig) -> pd.DataFrame:
    """The read items with ``item_idx`` = row number (the id of the format); none is an error."""
    if result.items.empty:
        raise PreprocessError(
            f"catalog {cfg.catalog}: no usable items ({sum(result.reject_counts().values())} rows rejected)"
        )
    items = result.items.reset_index(drop=True)
    items.insert(0, "item_idx", np.arange(len(items), dtype=np.int64))
    return items


def load_engagements(cfg: PreprocessConfig, layout: str, items: pd.DataFrame) -> tuple[pd.DataFrame, str, list[Reject]]:
    """Engagement pairs and their origin: a real log if given, Shopee label groups, else synthetic."""
    if cfg.engagements:
        pairs, rejects = read_engagements(cfg.engagements, items["item_id"].tolist())
        return pairs, "log", rejects
    if layout == "shopee":
        return shopee_pairs(items), "shopee", []
    return synthesize_engagements(items, cfg.engagement), "synthetic", []


def build_vocab(items: pd.DataFrame, cfg: PreprocessConfig) -> Vocab:
    """Vocabulary over every text field (one id space for all 12 fields) of the training items
    only (``ingest_stages.vocab_items``); ``run_preprocess`` counts the same with Ray Data."""
    return build_training_vocab(items, cfg)


# ------------------------------------------------------------------------------------------ Ray


def ensure_ray() -> bool:
    """Connect to the cluster this process belongs to, else start a local one; True if started.

    Under ``ray job submit`` (or with RAY_ADDRESS / a running ``ray start``), ``ray.init()``
    attaches to that cluster; on a laptop it starts a local instance sized to the machine.
    """
    if ray.is_initialized():
        return False
    ray.init()
    return True


def enable_progress_bars() -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True
    ctx.enable_operator_progress_bars = True


# --------------------------------------------------------------------------------------- images


@dataclass
class ImageFeatures:
    """Per-item image features, flattened in item_idx order (ready for a ``list<float32>``)."""

    n_images: np.ndarray  # [N] int32
    values: np.ndarray  # [sum(n_images) * dim] float32, item-major, images in catalog order
    first: np.ndarray  # [N, dim] first featurized image per item (zeros when none)
    submitted: int
    rejects: list[Reject]


def featurize_images(items: pd.DataFrame, cfg: PreprocessConfig, plan: StagePlan, dim: int) -> ImageFeatures:
    """Run the image stage and regroup its per-image output by item."""
    n = len(items)
    rows = image_rows(items)
    empty = ImageFeatures(np.zeros(n, np.int32), np.zeros(0, np.float32), np.zeros((n, dim), np.float32), 0, [])
    if rows.empty:
        return empty
    ds = image_feature_dataset(
        rows,
        backbone=cfg.image.backbone,
        weights_path=cfg.image.weights_path,
        max_pixels=cfg.image.max_pixels,
        batch_size=cfg.image.batch_size,
        plan=plan,
        rows_per_block=cfg.rows_per_block,
    )
    out = collect_numpy(ds)
    if out is None or len(out["item_idx"]) != len(rows):
        got = 0 if out is None else len(out["item_idx"])
        raise RuntimeError(f"image stage returned {got} rows for {len(rows)} images")
    return group_image_features(out, n, dim)


def group_image_features(out: dict[str, np.ndarray], n_items: int, dim: int) -> ImageFeatures:
    """Per-image featurizer output (one row per submitted image) -> features grouped by item."""
    order = np.lexsort((out["img_pos"], out["item_idx"]))
    item_idx, ok, feats = out["item_idx"][order], out["ok"][order].astype(bool), out["feat"][order]
    rejects = [
        Reject("image", str(out["item_id"][i]), str(out["reason"][i]), f"{out['path'][i]}: {out['detail'][i]}")
        for i in order[~ok]
    ]
    kept_idx, kept = item_idx[ok], feats[ok].astype(np.float32, copy=False)
    n_images = np.bincount(kept_idx, minlength=n_items).astype(np.int32)
    first = np.zeros((n_items, dim), dtype=np.float32)
    # Rows are sorted by (item, position), so the first kept row of each item is its first image.
    starts = np.flatnonzero(np.r_[True, kept_idx[1:] != kept_idx[:-1]]) if len(kept_idx) else np.zeros(0, int)
    first[kept_idx[starts]] = kept[starts]
    return ImageFeatures(n_images, kept.reshape(-1), first, len(out["item_idx"]), rejects)


# ----------------------------------------------------------------------------------------- text


@dataclass
class TextFeatures:
    """Items' token ids + title embeddings (a table sorted by item_idx) and query embeddings."""

    items: pa.Table  # item_idx, tok_<field>..., title_emb
    title_emb: np.ndarray  # [N, 384]
    query_emb: np.ndarray  # [Q, 384]


def queries_needing_minilm(
    queries: pd.DataFrame, items: pd.DataFrame, title_fallback: Sequence[str] = ()
) -> tuple[pd.DataFrame, np.ndarray]:
    """Queries to embed, and for each query the item whose title embedding text (its title, or its
    ``title_fallback``) equals it (-1 if none).

    A query equal to a title reuses that title's embedding (same function of the same string, equal
    up to float rounding). Shopee queries are other listings' titles, so this halves MiniLM there.
    """
    title_row = pd.Series(np.arange(len(items)), index=embedding_texts(items, title_fallback))
    title_row = title_row[~title_row.index.duplicated()]
    same_title = queries["text"].map(title_row).fillna(-1).astype(np.int64).to_numpy()
    return queries[same_title < 0], same_title


def featurize_text(
    items: pd.DataFrame,
    queries: pd.DataFrame,
    vocab: Vocab,
    plan: StagePlan,
    rows_per_block: int,
    title_fallback: Sequence[str] = (),
) -> TextFeatures:
    """Run the text stage over the items and the search queries; split its output back. An item
    without a title is embedded from its ``title_fallback`` fields (``preprocess.title_fallback``)."""
    todo, same_title = queries_needing_minilm(queries, items, title_fallback)
    rows = text_rows(items, todo, title_fallback)
    table = collect_table(text_feature_dataset(rows, vocab, plan, rows_per_block))
    expected = len(items) + len(todo)
    if table is None or table.num_rows != expected:
        raise RuntimeError(f"text stage returned {0 if table is None else table.num_rows} rows for {expected}")
    is_item = pc.equal(table.column("kind"), "item")
    item_rows = table.filter(is_item).sort_by("key")
    if not np.array_equal(item_rows.column("key").to_numpy(), items["item_idx"].to_numpy()):
        raise RuntimeError("text stage lost or duplicated items")
    item_rows = item_rows.rename_columns(["item_idx" if c == "key" else c for c in item_rows.column_names])
    title_emb = list_column_matrix(item_rows.column("title_emb"), MINILM_DIM)
    query_emb = np.zeros((len(queries), MINILM_DIM), dtype=np.float32)
    reuse = same_title >= 0
    query_emb[reuse] = title_emb[same_title[reuse]]
    query_rows = table.filter(pc.invert(is_item))
    if query_rows.num_rows:
        query_emb[query_rows.column("key").to_numpy()] = list_column_matrix(query_rows.column("title_emb"), MINILM_DIM)
    return TextFeatures(item_rows.drop_columns(["kind"]), title_emb, query_emb)


def list_column_matrix(column: pa.ChunkedArray | pa.Array, dim: int) -> np.ndarray:
    """A ``list<float32>`` column of equal-length rows -> [N, dim] numpy."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)


def unique_search_queries(splits: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """``query_idx``, ``text`` of every distinct search query over all splits (sorted, stable)."""
    texts = sorted({q for df in splits.values() for q in df.loc[df["surface"] == "search", "query"].astype(str)})
    return pd.DataFrame({"query_idx": np.arange(len(texts), dtype=np.int64), "text": texts})


# ------------------------------------------------------------------------------ users and pairs


@dataclass
class Users:
    table: pa.Table
    index: dict[str, int]


def build_users(
    histories: dict[str, list[str]],
    item_index: dict[str, int],
    first_image: np.ndarray,
    n_images: np.ndarray,
    title_emb: np.ndarray,
) -> Users:
    """Home users with a non-empty (train-only) history and their frozen ``user_feat``.

    user_feat = concat(mean first-image features of the history items that have an image, zeros
    when none has; mean title embedding of all history items).
    """
    dim = first_image.shape[1]
    ids, hists, feats = [], [], []
    for user_id, history in histories.items():
        idx = np.array([item_index[i] for i in history], dtype=np.int64)
        if len(idx) == 0:
            continue
        with_image = idx[n_images[idx] > 0]
        image_part = first_image[with_image].mean(axis=0) if len(with_image) else np.zeros(dim, np.float32)
        feats.append(np.concatenate([image_part, title_emb[idx].mean(axis=0)]).astype(np.float32))
        ids.append(user_id)
        hists.append(idx)
    matrix = np.stack(feats) if feats else np.zeros((0, dim + MINILM_DIM), np.float32)
    table = pa.table(
        {
            "user_idx": pa.array(np.arange(len(ids), dtype=np.int64)),
            "user_id": pa.array(ids, type=pa.string()),
            "history": list_array(hists, pa.int64()),
            "user_feat": fixed_list_array(matrix, pa.float32()),
        },
        schema=USERS_SCHEMA,
    )
    return Users(table, {u: i for i, u in enumerate(ids)})


def map_pairs(
    pairs: pd.DataFrame, item_index: dict[str, int], query_index: dict[str, int], users: Users, n_images: np.ndarray
) -> tuple[pa.Table, list[Reject]]:
    """Engagement rows -> (surface, action, task, query_key, item_idx, source).

    Rows whose query has no features are dropped with a reject: a closeup query item that is not an
    item of the catalog, a home user whose history holds no train item. (A closeup query item
    without an image is kept: its item features are the query.)
    """
    surface = pairs["surface"].astype(str).to_numpy()
    query = pairs["query"].astype(str).to_numpy()
    item = pairs["item_id"].astype(str).map(item_index).to_numpy(dtype=np.int64)
    key = np.full(len(pairs), -1, dtype=np.int64)
    search, closeup, home = surface == "search", surface == "closeup", surface == "home"
    key[search] = [query_index[q] for q in query[search]]
    key[closeup] = [item_index.get(q, -1) for q in query[closeup]]
    key[home] = [users.index.get(q, -1) for q in query[home]]
    # A closeup query item without an image is kept: the item tower embeds it as the query
    # (features_read.ITEM_QUERY), so text-only catalogs keep their item-to-item engagement.
    bad_closeup = closeup & (key < 0)
    bad_home = home & (key < 0)
    item_ids = pairs["item_id"].tolist()
    rejects = [
        Reject(
            "pairs",
            item_ids[i],
            "unknown_query_item",
            f"closeup query item {query[i]!r} is not in the catalog",
        )
        for i in np.flatnonzero(bad_closeup)
    ]
    rejects += [
        Reject(
            "pairs",
            item_ids[i],
            "home_user_without_history",
            f"user {query[i]!r} has no train-split item in their history",
        )
        for i in np.flatnonzero(bad_home)
    ]
    keep = ~(bad_closeup | bad_home)
    action = pairs["action"].astype(str).to_numpy()[keep]
    table = pa.table(
        {
            "surface": pa.array(surface[keep], type=pa.string()),
            "action": pa.array(action, type=pa.string()),
            "task": pa.array([f"{s}/{a}" for s, a in zip(surface[keep], action)], type=pa.string()),
            "query_key": pa.array(key[keep], type=pa.int64()),
            "item_idx": pa.array(item[keep], type=pa.int64()),
            "source": pa.array(pairs["source"].astype(str).to_numpy()[keep], type=pa.string()),
        },
        schema=PAIRS_SCHEMA,
    )
    return table, rejects


def task_counts(table: pa.Table) -> dict[str, int]:
    return dict(sorted(Counter(table.column("task").to_pylist()).items()))


# --------------------------------------------------------------------------------------- tables


def items_table(items: pd.DataFrame, images: ImageFeatures, text: pa.Table, dim: int) -> pa.Table:
    """items.parquet: row i = item_idx i, exactly the columns and types of the feature format."""
    offsets = np.zeros(len(items) + 1, dtype=np.int64)
    np.cumsum(images.n_images.astype(np.int64) * dim, out=offsets[1:])
    if offsets[-1] > np.iinfo(np.int32).max:
        raise ValueError("image features exceed one Arrow list column; shard the catalog")
    image_feats = pa.ListArray.from_arrays(
        pa.array(offsets.astype(np.int32)), pa.array(images.values, type=pa.float32())
    )
    columns = {
        "item_idx": pa.array(items["item_idx"].to_numpy(np.int64)),
        "item_id": pa.array(items["item_id"].astype(str).tolist(), type=pa.string()),
        "n_images": pa.array(images.n_images, type=pa.int32()),
        "image_feats": image_feats,
        "title_emb": text.column("title_emb"),
    }
    columns.update({f"tok_{f}": text.column(f"tok_{f}") for f in TEXT_FIELDS})
    return pa.table(columns, schema=ITEMS_SCHEMA)


def catalog_table(items: pd.DataFrame) -> pa.Table:
    """catalog.parquet: the normalised generic catalog, row i = item_idx i."""
    cols = ["item_id", "image_paths", *TEXT_FIELDS] + (["group"] if "group" in items.columns else [])
    data: dict[str, pa.Array] = {
        "item_id": pa.array(items["item_id"].astype(str).tolist(), type=pa.string()),
        "image_paths": pa.array([list(p) for p in items["image_paths"]], type=pa.list_(pa.string())),
    }
    for c in cols[2:]:
        data[c] = pa.array(items[c].astype(str).tolist(), type=pa.string())
    if "price" in items.columns:  # amazon: a filterable number, NaN when unknown
        data["price"] = pa.array(items["price"].to_numpy(np.float64), type=pa.float64(), from_pandas=False)
    return pa.table(data)


def queries_table(queries: pd.DataFrame, emb: np.ndarray) -> pa.Table:
    return pa.table(
        {
            "query_idx": pa.array(queries["query_idx"].to_numpy(np.int64)),
            "text": pa.array(queries["text"].tolist(), type=pa.string()),
            "text_emb": fixed_list_array(emb, pa.float32()),
        },
        schema=QUERIES_SCHEMA,
    )


def manifest(cfg: PreprocessConfig, summary: PreprocessSummary, f: FeatureSet) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "layout": f.catalog.layout,
        "catalog_source": f.catalog.source,
        "engagement_source": summary.engagement_source,
        "backbone": cfg.image.backbone,
        "backbone_weights": weights_record(cfg.image.weights_path),
        "image_dim": f.image_dim,
        "text_query_dim": MINILM_DIM,
        "text_fields": list(TEXT_FIELDS),
        # What an empty title's MiniLM embedding was computed from (serving repeats it).
        "title_fallback": list(cfg.title_fallback),
        "max_images": cfg.image.max_images_per_item,
        "counts": {
            "items": summary.items,
            "items_with_images": summary.items_with_images,
            "images": summary.images_featurized,
            "queries": summary.queries,
            "users": summary.users,
            "pairs": {s: sum(t.values()) for s, t in summary.pairs.items()},
            "rejects": sum(summary.skipped.values()),
        },
        "vocab_sizes": f.vocab.sizes,
        "vocab_size": f.vocab.size,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": to_dict(cfg),
    }


# ------------------------------------------------------------------------------------------ run


@dataclass
class FeatureSet:
    """Everything that goes into the feature directory, before it is written."""

    catalog: CatalogReadResult
    items: pd.DataFrame
    images: ImageFeatures
    text: TextFeatures
    queries: pd.DataFrame
    users: Users
    pairs: dict[str, pa.Table]
    vocab: Vocab
    rejects: list[Reject]
    engagement_source: str
    image_dim: int


@dataclass
class Engagements:
    """Pairs split (``engagement.split``), plus the home users' train-only histories."""

    splits: dict[str, pd.DataFrame]
    histories: dict[str, list[str]]
    source: str
    rejects: list[Reject]
    counts: dict[str, int] = field(default_factory=dict)


def prepare_engagements(
    cfg: PreprocessConfig,
    layout: str,
    items: pd.DataFrame,
    links: pd.DataFrame | None = None,
    derived: DerivedPairs | None = None,
) -> Engagements:
    """``links``: the catalog's own item-to-item links (``CatalogReadResult.links``); for the amazon
    layout without an engagement log they (and ``cfg.reviews``) are the pairs. ``derived``: those
    pairs (or Shopee's) already derived by Ray Data (``ingest_stages.derive_pairs``)."""
    counts: dict[str, int] = {}
    if derived is not None:
        pairs, source, rejects, counts = derived.pairs, derived.source, list(derived.rejects), derived.counts
    elif layout == "amazon" and not cfg.engagements:
        pairs, rejects, counts = amazon_engagements(links, items, cfg.reviews)
        source = "amazon"
    else:
        pairs, source, rejects = load_engagements(cfg, layout, items)
    ec = cfg.engagement
    if ec.split == "time":
        try:
            splits = split_by_time(pairs, ec.val_fraction, ec.test_fraction)
        except ValueError as e:
            raise PreprocessError(f"engagement.split=time: {e}") from e
        # Histories from the train period only: a home query never carries a held-out engagement.
        histories = build_user_histories(splits["train"], set(items["item_id"].astype(str)), ec.history_length)
        for name in ("val", "test"):
            splits[name], seen = drop_home_repeats(splits[name], histories)
            rejects += seen
        return Engagements(splits, histories, source, rejects, counts)
    splits = split_by_item(pairs, items, ec.val_fraction, ec.test_fraction, ec.seed)
    item_split = item_splits(items, ec.val_fraction, ec.test_fraction, ec.seed)
    train_items = {item for item, split in item_split.items() if split == "train"}
    histories = build_user_histories(pairs, train_items, ec.history_length)
    return Engagements(splits, histories, source, rejects, counts)


def drop_home_repeats(pairs: pd.DataFrame, histories: dict[str, list[str]]) -> tuple[pd.DataFrame, list[Reject]]:
    """Held-out home pairs whose item is already in the user's history are not evaluated: the home
    feed (``/recommend``) never shows a user what their history holds."""
    seen = {user: set(items) for user, items in histories.items()}
    users, items = pairs["query"].astype(str).tolist(), pairs["item_id"].astype(str).tolist()
    repeat = (pairs["surface"] == "home").to_numpy() & np.array(
        [item in seen.get(user, ()) for user, item in zip(users, items)], dtype=bool
    )
    rejects = [
        Reject("pairs", items[i], "home_item_in_history", f"user {users[i]!r} engaged it in the train period")
        for i in np.flatnonzero(repeat)
    ]
    return pairs[~repeat].reset_index(drop=True), rejects


def run_preprocess(cfg: PreprocessConfig) -> PreprocessSummary:
    """Build the feature directory ``cfg.output`` (local path or URI) from ``cfg.catalog``.

    Uses the Ray cluster this process is connected to, or starts (and afterwards stops) a local one.
    """
    timer = _Timer()
    start = time.perf_counter()
    validate_config(cfg)
    image_dim = BACKBONES[cfg.image.backbone].dim
    started_ray = ensure_ray()
    try:
        enable_progress_bars()
        # Catalog, derived pairs and vocabulary run as Ray Data operations (itemsage.data.ingest*).
        with timer("catalog"):
            ingest, catalog, items = ingest_catalog_items(cfg)
        with timer("engagements"):
            derived = derive_pairs(cfg, ingest, items["item_id"].astype(str).tolist())
            eng = prepare_engagements(cfg, catalog.layout, items, catalog.links, derived)
        with timer("vocab"):
            vocab = training_vocab(cfg, ingest)
        queries = unique_search_queries(eng.splits)
        cluster = cluster_resources()
        plan = plan_stages(cluster, cfg.image.concurrency, cfg.image.num_threads)
        logger.info("stage plan: %s", plan)
        with timer("images"):
            images = featurize_images(items, cfg, plan, image_dim)
        with timer("text"):
            text = featurize_text(items, queries, vocab, plan, cfg.rows_per_block, cfg.title_fallback)
    finally:
        if started_ray:
            ray.shutdown()

    item_index = dict(zip(items["item_id"].astype(str), items["item_idx"].astype(int)))
    users = build_users(eng.histories, item_index, images.first, images.n_images, text.title_emb)
    query_index = dict(zip(queries["text"], queries["query_idx"].astype(int)))
    rejects = [*catalog.rejects, *eng.rejects, *images.rejects]
    pairs: dict[str, pa.Table] = {}
    for name in SPLITS:
        pairs[name], dropped = map_pairs(eng.splits[name], item_index, query_index, users, images.n_images)
        rejects += dropped
    features = FeatureSet(catalog, items, images, text, queries, users, pairs, vocab, rejects, eng.source, image_dim)
    summary = summarize(cfg, features, plan, cluster)
    summary.engagement_counts = eng.counts
    write_features(cfg, features, summary, timer, start)
    return summary


def summarize(cfg: PreprocessConfig, f: FeatureSet, plan: StagePlan, cluster: dict[str, float]) -> PreprocessSummary:
    """Counts of the run; timings are filled in by ``write_features``."""
    return PreprocessSummary(
        output=cfg.output,
        layout=f.catalog.layout,
        engagement_source=f.engagement_source,
        items=len(f.items),
        items_with_images=int((f.images.n_images > 0).sum()),
        images=f.images.submitted,
        images_featurized=int(f.images.n_images.sum()),
        queries=len(f.queries),
        users=f.users.table.num_rows,
        skipped=dict(sorted(Counter(f"{r.stage}/{r.reason}" for r in f.rejects).items())),
        pairs={s: task_counts(t) for s, t in f.pairs.items()},
        vocab_sizes=f.vocab.sizes,
        timings={},
        seconds=0.0,
        resources=asdict(plan) | {"cluster_cpus": cluster.get("CPU", 0.0), "cluster_gpus": cluster.get("GPU", 0.0)},
    )


def write_features(
    cfg: PreprocessConfig, f: FeatureSet, summary: PreprocessSummary, timer: _Timer, start: float
) -> None:
    """Write every file into a staging dir, then swap it in for ``cfg.output``."""
    with staged_output(cfg.output) as out:
        with timer("write"):
            out.write_parquet("items.parquet", items_table(f.items, f.images, f.text.items, f.image_dim))
            out.write_parquet("catalog.parquet", catalog_table(f.items))
            out.write_parquet("queries.parquet", queries_table(f.queries, f.text.query_emb))
            out.write_parquet("users.parquet", f.users.table)
            for name, table in f.pairs.items():
                out.write_parquet(f"pairs/{name}.parquet", table)
            # Byte-for-byte what Vocab.save writes, routed through the staging filesystem.
            out.write_text("vocab.json", json.dumps(f.vocab.to_dict(), ensure_ascii=False))
            out.write_jsonl("rejects.jsonl", (r.to_dict() for r in f.rejects))
        # manifest/summary are small and go last, so they can carry the final timings.
        summary.timings = dict(timer.seconds)
        summary.seconds = round(time.perf_counter() - start, 3)
        out.write_json("manifest.json", manifest(cfg, summary, f))
        out.write_json("summary.json", summary.to_dict())
    logger.info("wrote %s", cfg.output)

"""The catalog-scale stages of preprocessing, on Ray Data: read the catalog, derive the pairs the
catalog itself implies, count the training vocabulary.

``run_preprocess`` calls these in place of the in-memory ``read_catalog`` / ``shopee_pairs`` /
``link_pairs`` / ``Vocab.build`` (same results, see their modules); the in-memory functions stay
for callers without a Ray session (test fixtures, the Python API on small catalogs).

The vocabulary (and so every token id the model learns) comes from the **training items** only:
with the item-disjoint split (``engagement.split: item``) the items of the val/test splits never
contribute a token, so validation measures what happens to products the model has never seen
(issue 19 point 3). With the time split every item may appear in training, so all are counted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from itemsage.config import TEXT_FIELDS, PreprocessConfig
from itemsage.data.copurchase import read_reviews
from itemsage.data.engagement import ENGAGEMENT_COLUMNS
from itemsage.data.ingest import CatalogIngest, ingest_catalog
from itemsage.data.pair_derivation import collect_pairs, link_pair_dataset, shopee_pair_dataset
from itemsage.data.rejects import Reject
from itemsage.data.splits import item_splits
from itemsage.data.text import Vocab
from itemsage.data.vocab_count import count_vocab, train_items


def ingest_for(cfg: PreprocessConfig) -> CatalogIngest:
    """``cfg.catalog`` read by Ray Data with the run's limits (needs a Ray session)."""
    return ingest_catalog(
        cfg.catalog,
        layout=cfg.layout,
        max_images=cfg.image.max_images_per_item,
        max_field_chars=cfg.text.max_chars_per_field,
        images_dir=cfg.images_dir,
        partitions=cfg.partitions,
        lines_per_block=cfg.read_lines_per_block,
    )


@dataclass
class DerivedPairs:
    """Engagement rows the catalog implies, with their origin, rejects and exact counts."""

    pairs: pd.DataFrame
    source: str
    rejects: list[Reject]
    counts: dict[str, int] = field(default_factory=dict)


def derive_pairs(cfg: PreprocessConfig, ingest: CatalogIngest, item_ids: list[str]) -> DerivedPairs | None:
    """Shopee label-group pairs, or Amazon link pairs (+ reviews when given); None for layouts
    whose pairs come from elsewhere (a log, or the synthetic rules) or when a log is given."""
    if cfg.engagements:
        return None
    if ingest.layout == "shopee":
        return DerivedPairs(collect_pairs(shopee_pair_dataset(ingest.items, cfg.partitions)), "shopee", [])
    if ingest.layout != "amazon" or ingest.links is None:
        return None
    pairs, rejects, counts = link_pair_dataset(ingest.items, ingest.links, cfg.partitions)
    frames = [collect_pairs(pairs)]
    total = Counter(counts)
    if cfg.reviews:
        # Reviews are an optional side file, read as copurchase reads it (lines streamed).
        reviews, dropped, n = read_reviews(cfg.reviews, item_ids)
        frames.append(reviews)
        rejects += dropped
        total.update(n)
    merged = pd.concat(frames, ignore_index=True)[ENGAGEMENT_COLUMNS]
    return DerivedPairs(merged, "amazon", rejects, dict(sorted(total.items())))


def training_vocab(cfg: PreprocessConfig, ingest: CatalogIngest) -> Vocab:
    """The vocabulary counted by Ray Data over the training items (module docstring)."""
    ec = cfg.engagement
    items: Any = ingest.items
    if ec.split == "item":
        items = train_items(items, ec.val_fraction, ec.test_fraction, ec.seed)
    return count_vocab(items, cfg.text, cfg.partitions)


def vocab_items(items: pd.DataFrame, cfg: PreprocessConfig) -> pd.DataFrame:
    """The rows of an in-memory item table the vocabulary is built from (``training_vocab``'s rule)."""
    ec = cfg.engagement
    if ec.split != "item":
        return items
    split = item_splits(items, ec.val_fraction, ec.test_fraction, ec.seed)
    return items[items["item_id"].astype(str).map(split) == "train"]


def build_training_vocab(items: pd.DataFrame, cfg: PreprocessConfig) -> Vocab:
    """``training_vocab`` for an item table already in memory (no Ray)."""
    rows = vocab_items(items, cfg)
    return Vocab.build((t for f in TEXT_FIELDS for t in rows[f].tolist()), cfg.text)

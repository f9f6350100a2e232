"""Choose the hybrid fusion's lexical weight and RRF constant on the validation split.

The same measurement as the evaluation's hybrid row (:func:`itemsage.eval.modes.add_mode_rows`,
the served ``LexicalIndex`` and ``fuse``), once per (lexical weight, rrf_k), on a held-out split of
the model's features, for ``/search`` (the search probe) or ``/similar`` by item id (the closeup
probe for items with a photo, item2item for text-only ones): choose on ``val``, report on ``test``
(``experiments/hybrid_sweep.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from itemsage.config import HybridConfig
from itemsage.data.features_read import QueryFeatures, read_pairs
from itemsage.eval.baselines.corpus import TextCorpus
from itemsage.eval.evaluate import probe_queries
from itemsage.eval.modes import add_mode_rows, candidate_lexical, list_depth, mode_lists, mode_query_texts
from itemsage.eval.probes import PROBES, probe_pairs
from itemsage.eval.recall import RecallTable, ranks_of_targets
from itemsage.eval.validation import build_val_set, embed_items
from itemsage.model import ItemFeatureStore
from itemsage.trained.loaded import load_trained, pick_device

# The probes a served mode answers: /search (a text query) and /similar by item id (an item with a
# photo is queried as the closeup probe does, a text-only one as item2item does).
SWEEP_PROBES: tuple[str, ...] = ("search", "closeup", "item2item")


def fusion_sweep(
    model: str,
    features: str,
    split: str,
    lexical_weights: Sequence[float],
    rrf_ks: Sequence[float],
    depth: int = HybridConfig().depth,
    device: str = "auto",
    probe: str = "search",
) -> list[dict[str, Any]]:
    """One row per (lexical weight, rrf_k): ``probe``'s (search | closeup | item2item) Recall@10/@50 of
    hybrid, with dense and lexical alone for reference, every pair's item ranked against the whole
    catalog."""
    if probe not in SWEEP_PROBES:
        raise ValueError(f"unknown probe {probe!r}; the served modes answer {', '.join(SWEEP_PROBES)}")
    dev = torch.device(pick_device(device))
    tm = load_trained(model, device=str(dev))
    store = ItemFeatureStore.load(features, max_images=tm.max_images, text_fields=tm.text_fields)
    qf = QueryFeatures.load(
        features, store, with_text=tm.finetuned_text_encoder is not None, with_tokens=tm.model.text_residual is not None
    )
    val = build_val_set(read_pairs(features, split), store.num_items, catalog="all")
    probe_of = next(p for p in PROBES if p.name == probe)
    pairs = probe_pairs(val, probe_of, store.has_image.numpy())
    if pairs is None:
        raise ValueError(f"the {split} split of {features} has no {probe} pairs")
    corpus = TextCorpus.load(features, tm.text_fields)
    query_texts = mode_query_texts(corpus, probe_of.query)
    if query_texts is None:
        raise ValueError(f"{features} has no queries.parquet: the lexical side has no query text")
    item_emb = embed_items(tm.model, store, pairs.candidates, dev)
    # /similar by id is queried as the evaluation queries the closeup or item2item probe.
    queries = probe_queries(tm, store, qf, probe_of, pairs, dev)
    dense = RecallTable(ks=(10, 50))
    dense.add("itemsage", pairs.tasks.tolist(), ranks_of_targets(queries, item_emb, pairs.target, pairs.exclude))
    # The lists are searched once; each (weight, rrf_k) only fuses them again.
    lexical = candidate_lexical(pairs.candidates, corpus.item_texts, corpus.fields)
    lists = mode_lists(pairs, queries, item_emb, lexical, query_texts, list_depth(dense, HybridConfig(depth=depth)))
    rows = []
    for w in lexical_weights:
        for k in rrf_ks:
            table = RecallTable(ks=(10, 50))
            add_mode_rows(table, lists, HybridConfig(lexical_weight=float(w), rrf_k=float(k), depth=depth))
            rows.append(
                {
                    "probe": probe,
                    "split": split,
                    "lexical_weight": float(w),
                    "rrf_k": float(k),
                    "pairs": len(pairs),
                    **{f"hybrid_r@{n}": table.get("hybrid", f"{probe}/all", n) for n in (10, 50)},
                    **{f"lexical_r@{n}": table.get("lexical", f"{probe}/all", n) for n in (10, 50)},
                    **{f"dense_r@{n}": dense.get("itemsage", f"{probe}/all", n) for n in (10, 50)},
                }
            )
    return rows


def best(rows: Sequence[dict[str, Any]], metric: str = "hybrid_r@10") -> dict[str, Any]:
    """The row with the highest ``metric`` (the first of equals: the sweep's order)."""
    return max(rows, key=lambda r: (r[metric], -rows.index(r)))


__all__ = ["SWEEP_PROBES", "best", "fusion_sweep"]

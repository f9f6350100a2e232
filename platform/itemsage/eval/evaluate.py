"""Offline evaluation of a trained model: Recall@10/@50 per probe and task, next to the baselines.

Every held-out (query, engaged item) pair of the test split ranks its engaged item against the
*whole* evaluation catalog with exact search, once per probe (``itemsage.eval.probes``: search =
text query, closeup = the query item's image through the closeup tower, item2item = the query
item through the item tower, home = a user's history). Item and search-query embeddings come from
the same code that validates during training (``itemsage.eval.validation``), so training curves
and this report are comparable; photo and history queries are built as Serve builds them, from
catalog items' embeddings where the model says so (``itemsage.model.catalog_queries``). Each probe also ranks the same pairs against the same candidates with the
baselines a user tries first (``itemsage.eval.baselines``): char-3gram TF-IDF and BM25 over the
items' text fields, frozen MiniLM, frozen image features, frozen user features (home) and random.
The search, closeup and item -> item probes also get the served modes of ``/search`` and
``/similar`` by item id that are not the model alone (``itemsage.eval.modes``): the lexical index,
hybrid (reciprocal-rank fusion of both) and the same fusion with frozen MiniLM in the model's
place. (``/similar`` queries an item with a photo as the closeup probe does, a text-only item as
item -> item does; both probes' queries are catalog items, their own text the lexical query.)

On the model's own training features, held-out pairs whose item was a training positive ("seen")
and those whose item was not ("unseen": new items, the cold start) also get rows of their own,
"<surface>/seen" and "<surface>/unseen", when a split has both (a time split does; an
item-disjoint split holds out unseen items only).

Inputs, in order of preference:

* ``features``: a preprocessed features directory tokenized with the model's vocabulary (e.g. the
  one it was trained on); its ``pairs/test.parquet`` are the held-out pairs.
* ``catalog``: any catalog in a supported layout, also one the model never saw. It is
  preprocessed with the model's own preprocessing config (image backbone, text limits,
  engagement seed) and re-tokenized with the model's vocabulary; engagements come from
  ``engagements`` (a log file), Shopee label groups, or the synthetic generator.
* neither: the features directory named in the model's manifest (its training features).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from itemsage.data.features_read import FeaturesError, QueryFeatures, read_pairs
from itemsage.eval.attribute_eval import add_attribute_rows
from itemsage.eval.baselines.corpus import TextCorpus
from itemsage.eval.baselines.frozen import minilm_vectors
from itemsage.eval.baselines.suite import BaselineSuite
from itemsage.eval.model_features import features_for, trained_on
from itemsage.eval.modes import add_mode_rows, candidate_lexical, list_depth, mode_lists, mode_query_texts
from itemsage.eval.probes import PROBES, Probe, probe_pairs
from itemsage.eval.recall import RecallTable, ranks_of_targets
from itemsage.eval.result import SEEN, UNSEEN, EvalResult, write_result
from itemsage.eval.run_tags import run_identity
from itemsage.eval.same_product import with_same_product_pairs
from itemsage.eval.validation import ValSet, build_val_set, embed_items, embed_queries
from itemsage.index.compat import check_features_compatible
from itemsage.index.lexical import LexicalIndex
from itemsage.model import ItemFeatureStore
from itemsage.model.catalog_queries import history_queries, photo_queries
from itemsage.trained.loaded import TrainedModel, load_trained, pick_device

log = logging.getLogger(__name__)

DEFAULT_KS: tuple[int, ...] = (10, 50)


def evaluate_model(
    model: str | TrainedModel,
    *,
    catalog: str | None = None,
    layout: str = "auto",
    engagements: str | None = None,
    features: str | None = None,
    features_out: str | None = None,
    split: str = "test",
    ks: tuple[int, ...] = DEFAULT_KS,
    device: str = "auto",
    out: str | None = None,
    seed: int = 0,
    queries_out: str | None = None,
    baseline_fit: str = "catalog",
) -> EvalResult:
    """Recall@``ks`` of ``model`` and the baselines on one split (see the module docstring).

    ``features_out`` keeps the features made from ``catalog`` (default: a temporary directory,
    removed afterwards). ``out`` writes the result as JSON. ``seed`` seeds the random baseline.
    ``queries_out`` writes the evaluated search queries and their embeddings (:func:`write_search_queries`).
    ``baseline_fit``: "catalog" fits the TF-IDF baseline's IDF on every item's text, "train" on the
    items no held-out pair engages only.
    """
    start = time.perf_counter()
    dev = pick_device(device)
    tm = model if isinstance(model, TrainedModel) else load_trained(model, device=dev)
    # A fine-tuned search encoder encodes the query texts; the features' text_emb came from the
    # frozen MiniLM.
    encoder = tm.finetuned_text_encoder
    scratch: list[str] = []
    try:
        feats = features_for(tm, catalog, features, layout, engagements, features_out, scratch)
        fmanifest = check_features_compatible(feats, tm)
        store = ItemFeatureStore.load(feats, max_images=tm.max_images, text_fields=tm.text_fields)
        qf = QueryFeatures.load(
            feats,
            store,
            with_text=encoder is not None or queries_out is not None,
            with_tokens=tm.model.text_residual is not None,
        )
        # A catalog of same-product groups without closeup pairs (Shopee) gets its item -> item pairs.
        pairs = with_same_product_pairs(read_pairs(feats, split), feats)
        # "all": the engaged item competes with every item of the catalog, not only held-out ones.
        val = build_val_set(pairs, store.num_items, catalog="all")
        unseen: int | None = None  # unknown unless these are the model's own training features
        if trained_on(feats, tm):
            seen = np.isin(pairs["item_idx"], read_pairs(feats, "train")["item_idx"])
            unseen = int((~seen).sum())
            if 0 < unseen < len(val):
                val.cohorts = {SEEN: seen, UNSEEN: ~seen}
        table = RecallTable(ks=tuple(ks))
        corpus = TextCorpus.load(feats, tm.text_fields)
        suite = BaselineSuite.build(store, qf, corpus, baseline_fit, held_out_items(feats), seed)
        item_emb = embed_items(tm.model, store, val.candidates, torch.device(dev))
        has_image = store.has_image.numpy()
        lexical: LexicalIndex | None = None
        for probe in PROBES:
            probe_val = probe_pairs(val, probe, has_image)
            if probe_val is None:
                continue
            queries = probe_queries(tm, store, qf, probe, probe_val, torch.device(dev), corpus.histories)
            ranks = ranks_of_targets(queries, item_emb, probe_val.target, probe_val.exclude)
            table.add("itemsage", probe_val.tasks.tolist(), ranks, probe_val.cohorts)
            # The served modes of /search and of /similar by item id (itemsage.eval.modes).
            lexical_queries = mode_query_texts(corpus, probe.query)
            if lexical_queries is not None:
                if lexical is None:  # every probe ranks against the same candidates: one index
                    lexical = candidate_lexical(val.candidates, corpus.item_texts, corpus.fields)
                frozen = minilm_vectors(probe.query, store, qf, probe_val.query_key, probe_val.candidates)
                lists = mode_lists(probe_val, queries, item_emb, lexical, lexical_queries, list_depth(table), frozen)
                add_mode_rows(table, lists)
            suite.add_rows(table, probe, probe_val)
        # What a shopper sees in the top k (same kind, colour, gender) for queries from new items.
        attribute_items = add_attribute_rows(table, tm, store, suite, feats, split, item_emb, torch.device(dev), seed)
        if queries_out:
            write_search_queries(tm, qf, val, torch.device(dev), queries_out)
    finally:
        for d in scratch:
            shutil.rmtree(d, ignore_errors=True)
    engagement = (fmanifest.get("config") or {}).get("engagement", {})
    result = EvalResult(
        table=table,
        model_uri=tm.uri,
        model_version=tm.version,
        features=feats if not scratch else "(temporary)",
        catalog=str(catalog) if catalog else None,
        engagement_source=str(fmanifest.get("engagement_source", "unknown")),
        split=split,
        num_items=store.num_items,
        num_pairs=len(val),
        num_unseen_pairs=unseen,
        seconds=round(time.perf_counter() - start, 3),
        holdout=str(engagement.get("split", "unknown")),
        baseline_fit=baseline_fit,
        dataset=str(fmanifest.get("layout", "unknown")),
        split_seed=str(engagement.get("seed", 0)),
        identity=run_identity(tm),
        attribute_items=attribute_items,
    )
    if out:
        write_result(result, out)
    return result


def held_out_items(features: str) -> np.ndarray:
    """Items engaged by a val or test pair: what a statistic "from training items only" leaves out."""
    held = [np.zeros(0, np.int64)]
    for split in ("val", "test"):
        try:
            held.append(read_pairs(features, split)["item_idx"])
        except FeaturesError:  # an empty or missing split holds nothing out
            continue
    return np.unique(np.concatenate(held))


@torch.no_grad()
def probe_queries(
    tm: TrainedModel,
    store: ItemFeatureStore,
    qf: QueryFeatures,
    probe: Probe,
    pairs: ValSet,
    device: torch.device,
    histories: list[np.ndarray] | None = None,
) -> torch.Tensor:
    """The pairs' query embeddings: the probe's query tower, for item -> item the item tower on the
    query item as on every candidate, for a photo or a history the queries Serve builds from
    catalog items (``itemsage.model.catalog_queries``)."""
    keys = torch.from_numpy(pairs.query_key)
    if probe.query == "item":
        # As Serve's /similar embeds an item used as the query (debiasing and hubness coordinate).
        return tm.model.embed_item_queries(embed_items(tm.model, store, keys, device))
    if probe.query == "image":
        return photo_queries(tm.model, store, store.first_image_feat[keys], exclude=keys)
    if probe.query == "user" and histories is not None:
        return history_queries(tm.model, store, [histories[int(u)].tolist() for u in pairs.query_key])
    return embed_queries(tm.model, qf, pairs, device, text_encoder=tm.finetuned_text_encoder)


def write_search_queries(tm: TrainedModel, qf: QueryFeatures, val: Any, device: torch.device, path: str) -> None:
    """The evaluated pairs' distinct search queries and their embeddings, as the evaluation computed
    them, in an ``.npz`` (``texts`` [Q] str, ``embeddings`` [Q, dim] float32): lets a user check
    that what evaluation measured is what the API and Serve return for the same text."""
    search = np.flatnonzero(val.surfaces == "search")
    keys, first = np.unique(val.query_key[search], return_index=True)
    rows = search[first]
    emb = embed_queries(tm.model, qf, val, device, text_encoder=tm.finetuned_text_encoder)[torch.from_numpy(rows)]
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    np.savez(p, texts=np.asarray(qf.texts(keys), dtype=str), embeddings=emb.numpy().astype(np.float32))


__all__ = ["DEFAULT_KS", "evaluate_model", "held_out_items", "probe_queries", "write_search_queries"]

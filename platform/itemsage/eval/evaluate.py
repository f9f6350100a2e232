"""Offline evaluation of a trained model: Recall@10/@50 per surface and task, next to the baselines.

Every held-out (query, engaged item) pair of the test split ranks its engaged item against the
*whole* evaluation catalog with exact inner-product search; the numbers come from the same code
that validates during training (``itemsage.eval.validation``: ``model_recall`` for the model,
``baseline_recall`` for the frozen features and a random ranking), so training curves and this
report are directly comparable. Frozen baselines per surface: raw MiniLM text cosine (search),
raw image-feature cosine (closeup), raw user-feature cosine (home).

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

import json
import logging
import posixpath
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from itemsage.config import TEXT_FIELDS
from itemsage.data.features_io import resolve
from itemsage.data.features_read import QueryFeatures, read_manifest, read_pairs
from itemsage.eval.recall import RecallTable
from itemsage.eval.report import recall_markdown, recall_rows
from itemsage.eval.validation import baseline_recall, build_val_set, embed_queries, model_recall
from itemsage.files import StagingDir, staging_dir
from itemsage.index.compat import check_features_compatible
from itemsage.index.featurize import model_preprocess_config, token_table
from itemsage.model import ItemFeatureStore
from itemsage.trained.loaded import TrainedModel, load_trained, pick_device

log = logging.getLogger(__name__)

DEFAULT_KS: tuple[int, ...] = (10, 50)


class EvalError(ValueError):
    """The evaluation cannot run as asked (conflicting or missing inputs)."""


@dataclass
class EvalResult:
    """Recall per (method, task) plus what was evaluated; ``to_dict`` is the JSON written."""

    table: RecallTable
    model_uri: str
    model_version: str
    features: str
    catalog: str | None
    engagement_source: str
    split: str
    num_items: int
    num_pairs: int
    num_unseen_pairs: int | None
    seconds: float
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def recall(self, method: str, task: str, k: int = 10) -> float | None:
        return self.table.get(method, task, k)

    def markdown(self) -> str:
        head = (
            f"Model {self.model_uri} (version {self.model_version}) on {self.catalog or self.features}: "
            f"{self.num_pairs:,} {self.split} pairs ({self.engagement_source}), each item ranked "
            f"against all {self.num_items:,} items (exact search)."
        )
        if self.num_unseen_pairs is not None:
            head += f" {self.num_unseen_pairs:,} of the pairs engage an item with no training engagement"
            if 0 < self.num_unseen_pairs < self.num_pairs:
                head += f" (rows <surface>/{UNSEEN}; the others are rows <surface>/{SEEN})"
            head += "."
        return f"{head}\n\n{recall_markdown(self.table)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_uri": self.model_uri,
            "model_version": self.model_version,
            "features": self.features,
            "catalog": self.catalog,
            "engagement_source": self.engagement_source,
            "split": self.split,
            "num_items": self.num_items,
            "num_pairs": self.num_pairs,
            "num_unseen_pairs": self.num_unseen_pairs,
            "ks": list(self.table.ks),
            "seconds": self.seconds,
            "created_at": self.created_at,
            "rows": recall_rows(self.table),
        }


# ------------------------------------------------------------------------ featurization


def retokenize_features(features: str, tm: TrainedModel) -> None:
    """Rewrite a features directory's token ids (and vocab.json) with the model's vocabulary.

    Preprocessing builds a vocabulary from the catalog it reads; a model can only read ids of its
    own vocabulary. Token ids are a pure function of the catalog text and the vocab, so they are
    recomputed from ``catalog.parquet``; image features and MiniLM embeddings do not depend on
    the vocab and stay as they are.
    """
    fs, root = resolve(features)
    items = pq.read_table(posixpath.join(root, "items.parquet"), filesystem=fs)
    catalog = pq.read_table(
        posixpath.join(root, "catalog.parquet"), filesystem=fs, columns=list(TEXT_FIELDS)
    ).to_pandas()
    tokens = token_table(catalog, tm.vocab, None)
    for name in TEXT_FIELDS:
        col = f"tok_{name}"
        items = items.set_column(items.schema.get_field_index(col), col, tokens.column(col))
    pq.write_table(items, posixpath.join(root, "items.parquet"), filesystem=fs)
    with fs.open_output_stream(posixpath.join(root, "vocab.json")) as f:
        f.write((tm.model_dir / "vocab.json").read_bytes())
    manifest = read_manifest(features)
    manifest.update(vocab_sizes=tm.vocab.sizes, vocab_size=tm.vocab.size, vocab_from=tm.uri)
    with fs.open_output_stream(posixpath.join(root, "manifest.json")) as f:
        f.write((json.dumps(manifest, indent=2) + "\n").encode())


def featurize_for_model(
    catalog: str, tm: TrainedModel, output: str, layout: str = "auto", engagements: str | None = None
) -> str:
    """Preprocess ``catalog`` into the features directory ``output`` the way ``tm`` reads it.

    Runs the real preprocessing (``itemsage.data.pipeline.run_preprocess``, Ray Data) with the
    model's preprocessing config, then :func:`retokenize_features`; ``output`` is replaced only
    when both succeeded. Returns ``output``.
    """
    from itemsage.data.pipeline import run_preprocess

    stage: StagingDir
    with staging_dir(output) as stage:
        run_preprocess(model_preprocess_config(tm, catalog, layout, engagements=engagements or "", output=stage.uri))
        retokenize_features(stage.uri, tm)
    return output


# --------------------------------------------------------------------------------- evaluate

SEEN, UNSEEN = "seen", "unseen"


def trained_on(features: str, tm: TrainedModel) -> bool:
    """Is ``features`` the directory ``tm`` was trained on? Only then are its train pairs the
    model's, so that a held-out item can be called seen or unseen. The two are reported apart
    because a model learns the popularity of the items it was trained on and a new item cannot
    have it."""
    mine = str(tm.manifest.get("features") or "")
    if not mine:
        return False
    if "://" in features or "://" in mine:
        return features.rstrip("/") == mine.rstrip("/")
    return Path(features).resolve() == Path(mine).resolve()


def _features_for(
    tm: TrainedModel,
    catalog: str | None,
    features: str | None,
    layout: str,
    engagements: str | None,
    features_out: str | None,
    scratch: list[str],
) -> str:
    if catalog and features:
        raise EvalError("give either a catalog or a features directory, not both")
    if features:
        if engagements:
            raise EvalError("engagements are read when featurizing a catalog; a features directory has its pairs")
        return features
    if catalog:
        if not features_out:
            features_out = str(Path(tempfile.mkdtemp(prefix="itemsage-eval-")) / "features")
            scratch.append(str(Path(features_out).parent))
        return featurize_for_model(catalog, tm, features_out, layout, engagements)
    trained_on = tm.manifest.get("features")
    if not trained_on:
        raise EvalError(f"model {tm.uri} names no features directory; pass a catalog or features")
    return str(trained_on)


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
) -> EvalResult:
    """Recall@``ks`` of ``model`` and the baselines on one split (see the module docstring).

    ``features_out`` keeps the features made from ``catalog`` (default: a temporary directory,
    removed afterwards). ``out`` writes the result as JSON. ``seed`` seeds the random baseline.
    ``queries_out`` writes the evaluated search queries and their embeddings (:func:`write_search_queries`).
    """
    start = time.perf_counter()
    dev = pick_device(device)
    tm = model if isinstance(model, TrainedModel) else load_trained(model, device=dev)
    # A fine-tuned search encoder encodes the query texts; the features' text_emb came from the
    # frozen MiniLM.
    encoder = tm.finetuned_text_encoder
    scratch: list[str] = []
    try:
        feats = _features_for(tm, catalog, features, layout, engagements, features_out, scratch)
        fmanifest = check_features_compatible(feats, tm)
        store = ItemFeatureStore.load(feats, max_images=tm.max_images, text_fields=tm.text_fields)
        qf = QueryFeatures.load(
            feats,
            store,
            with_text=encoder is not None or queries_out is not None,
            with_tokens=tm.model.text_residual is not None,
        )
        pairs = read_pairs(feats, split)
        # "all": the engaged item competes with every item of the catalog, not only held-out ones.
        val = build_val_set(pairs, store.num_items, catalog="all")
        unseen: int | None = None  # unknown unless these are the model's own training features
        if trained_on(feats, tm):
            seen = np.isin(pairs["item_idx"], read_pairs(feats, "train")["item_idx"])
            unseen = int((~seen).sum())
            if 0 < unseen < len(val):
                val.cohorts = {SEEN: seen, UNSEEN: ~seen}
        table = RecallTable(ks=tuple(ks))
        model_recall(tm.model, store, qf, val, torch.device(dev), table, method="itemsage", text_encoder=encoder)
        if queries_out:
            write_search_queries(tm, qf, val, torch.device(dev), queries_out)
        baseline_recall(store, qf, val, table, seed=seed)
    finally:
        for d in scratch:
            shutil.rmtree(d, ignore_errors=True)
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
    )
    if out:
        write_result(result, out)
    return result


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


def write_result(result: EvalResult, path: str) -> None:
    """The result as JSON at ``path`` (parent directories created)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(result.to_dict(), indent=2) + "\n")


def surface_summary(result: EvalResult, k: int = 10) -> dict[str, dict[str, float | None]]:
    """``{surface: {method: Recall@k of "surface/all"}}``: the headline numbers."""
    out: dict[str, dict[str, float | None]] = {}
    for method, task in result.table.rows:
        if task.endswith("/all"):
            out.setdefault(task.split("/")[0], {})[method] = result.table.get(method, task, k)
    return out


__all__ = [
    "DEFAULT_KS",
    "EvalError",
    "EvalResult",
    "evaluate_model",
    "featurize_for_model",
    "retokenize_features",
    "surface_summary",
    "trained_on",
    "write_result",
    "write_search_queries",
]

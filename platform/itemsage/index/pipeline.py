"""Embeddings directory -> retrieval index, saved atomically and versioned with its model.

``build_and_log_index`` is the index stage of the pipeline: read what ``itemsage.index.embed``
wrote, check it belongs to the model being served, pick an index (the recall/QPS sweep when the
spec is "auto"), build it over every item with the id map, save it atomically with the model
version in its metadata, and, when the model came from the MLflow registry, log it to that model
version (``itemsage.index.log_index``) so serving can resolve "model V" to exactly one index.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from itemsage.config import IndexConfig
from itemsage.index.attributes import attributes_for_index
from itemsage.index.base import IndexMismatchError, ItemIndex, as_vectors
from itemsage.index.embeddings import read_embeddings
from itemsage.index.faiss_index import build_index
from itemsage.index.lexical import lexical_for_index
from itemsage.index.sweep import SweepResult, sweep
from itemsage.index.versioning import log_index

# Queries the sweep measures recall and QPS with (fewer when the catalog is smaller).
SWEEP_QUERIES = 1000
# Norm of the noise added to catalog embeddings to make sweep queries. Real queries come from the
# query towers: near items, never equal to one. An unperturbed item would find itself first and
# make every index look one tenth better at recall@10 than it is.
QUERY_NOISE = 0.5
# Seconds per batch-1 QPS measurement in the sweep (the batch-256 pass gets 5x this).
SWEEP_TIME_BUDGET_S = 1.0


@dataclass
class IndexBuildResult:
    """What :func:`build_and_log_index` built, where it is, and where it was logged."""

    out: str
    spec: str
    search_params: dict[str, float]
    ntotal: int
    dim: int
    device: str
    model_uri: str
    model_name: str | None
    model_version: str
    logged_uri: str | None
    sweep: SweepResult | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": self.out,
            "spec": self.spec,
            "search_params": self.search_params,
            "ntotal": self.ntotal,
            "dim": self.dim,
            "device": self.device,
            "model_uri": self.model_uri,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "logged_uri": self.logged_uri,
            "sweep": self.sweep.to_dict() if self.sweep else None,
            "seconds": self.seconds,
        }


def sweep_queries(vectors: np.ndarray, n: int = SWEEP_QUERIES, noise: float = QUERY_NOISE, seed: int = 0) -> np.ndarray:
    """``min(n, N)`` unit query vectors: sampled catalog embeddings plus noise of norm ``noise``."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(vectors.shape[0], size=min(n, vectors.shape[0]), replace=False)
    g = rng.standard_normal((rows.size, vectors.shape[1])).astype(np.float32)
    g *= noise / np.linalg.norm(g, axis=1, keepdims=True)
    q = vectors[rows] + g
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def _model_facts(model: str) -> tuple[Any, int]:
    """The pinned model reference and its embedding dimension (from the bundle's manifest)."""
    from itemsage.trained import load_manifest, resolve_model_ref

    ref = resolve_model_ref(model)
    return ref, int(load_manifest(ref.uri)["embedding_dim"])


def _text_fields(ref: Any, cfg: IndexConfig) -> list[str]:
    """The lexical index's fields: ``cfg.lexical.fields``, else the model's text fields (what the
    evaluation's BM25 baseline reads)."""
    from itemsage.config import TEXT_FIELDS
    from itemsage.trained import load_manifest

    return list(cfg.lexical.fields) or list(load_manifest(ref.uri).get("text_fields") or TEXT_FIELDS)


def _features_of(embeddings_manifest: dict[str, Any], ref: Any) -> str | None:
    """The features directory whose catalog the embedded items came from, if known."""
    from itemsage.data.features_io import resolve
    from itemsage.trained import load_manifest

    for candidate in (embeddings_manifest.get("source"), load_manifest(ref.uri).get("features")):
        if not candidate:
            continue
        try:
            fs, root = resolve(str(candidate))
            if fs.get_file_info(f"{root}/catalog.parquet").type.name == "File":
                return str(candidate)
        except (OSError, ValueError):
            continue
    return None


def build_and_log_index(
    embeddings: str,
    model: str,
    out: str | Path,
    *,
    cfg: IndexConfig | None = None,
    spec: str | None = None,
    log: bool = True,
    tracking_uri: str | None = None,
    time_budget_s: float = SWEEP_TIME_BUDGET_S,
    seed: int = 0,
    features: str | None = None,
) -> IndexBuildResult:
    """Build, save and (for registry models) log the index over an embeddings directory.

    ``cfg`` (``IndexConfig``) gives the spec, sweep candidates, recall target, k and GPU use;
    ``spec`` overrides ``cfg.spec``. Refuses embeddings made by another model version than
    ``model`` (``IndexMismatchError``) and, through the index package, NaN/inf rows
    (``NonFiniteError``), repeated ids (``DuplicateIdError``) and a dimension other than the
    model's (``ValueError``), each with a one-line message. The ``cfg.filterable`` attributes are
    read from ``features``' catalog.parquet (default: the features directory the embeddings were
    made from, else the model's) and saved with the index, for filtered search; so is the lexical
    (BM25) index over the items' text fields (``cfg.lexical``), for lexical and hybrid search.
    """
    start = time.perf_counter()
    cfg = cfg or IndexConfig()
    spec = spec or cfg.spec
    ref, dim = _model_facts(model)
    emb = read_embeddings(embeddings)
    if emb.model_version != ref.version:
        raise IndexMismatchError(
            f"embeddings at {embeddings} were made by model version {emb.model_version}, not "
            f"{ref.version} ({ref.uri}); re-run the embedding stage with this model"
        )
    x = as_vectors(emb.vectors, dim, "embeddings", emb.item_ids)
    result: SweepResult | None = None
    if spec.strip().lower() == "auto":
        result = sweep(
            x,
            emb.item_ids,
            sweep_queries(x, seed=seed),
            list(cfg.candidates),
            k=cfg.k,
            recall_target=cfg.recall_target,
            use_gpu=cfg.use_gpu,
            time_budget_s=time_budget_s,
        )
        index: ItemIndex | None = result.index
        if index is None:
            raise RuntimeError("the sweep returned no built index")
    else:
        index = build_index(x, emb.item_ids, spec, use_gpu=cfg.use_gpu)
    index.model_name = ref.name
    index.model_version = ref.version
    source = features or _features_of(emb.manifest, ref)
    if source:
        index.attach_attributes(attributes_for_index(index.idmap, source, cfg))
        if cfg.lexical.enabled:  # BM25 beside the vectors, same labels, saved in the same directory
            index.attach_lexical(lexical_for_index(index.idmap, source, _text_fields(ref, cfg)))
    saved = index.save(out)
    logged = None
    if log and ref.registered:
        from itemsage.trained import resolve_tracking_uri

        logged = log_index(saved, ref.name, ref.version, tracking_uri=resolve_tracking_uri(tracking_uri))
    return IndexBuildResult(
        out=str(saved),
        spec=index.spec,
        search_params=index.search_params,
        ntotal=index.ntotal,
        dim=index.dim,
        device=index.device,
        model_uri=ref.uri,
        model_name=ref.name,
        model_version=ref.version,
        logged_uri=logged,
        sweep=result,
        seconds=round(time.perf_counter() - start, 3),
    )

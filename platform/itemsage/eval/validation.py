"""Validation Recall@k during training, and the frozen-feature baselines it is judged against.

Each held-out (query, engaged item) pair ranks its item against the whole validation catalog by
exact inner-product search (``itemsage.eval.recall``). The baselines use the raw frozen features
without any training: MiniLM query vs. MiniLM title cosine for search, first-image feature cosine for
closeup, and the same two halves for home; "random" is the floor. A model that cannot beat the
frozen features on its own features has learned nothing useful.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from itemsage.config import SURFACES, VAL_CATALOGS
from itemsage.data.features_read import QueryFeatures
from itemsage.eval.recall import RecallTable, ranks_of_targets
from itemsage.model.batch import TEXT_QUERY_DIM, ItemFeatureStore
from itemsage.trained.queries import search_query_features

if TYPE_CHECKING:
    from itemsage.data.text_encoder import TextEncoder
    from itemsage.model import ItemSageModel

CATALOGS = VAL_CATALOGS  # the choices of train.val_catalog


@dataclass
class ValSet:
    """Validation pairs resolved against a candidate catalog.

    Attributes:
        surfaces, tasks, query_key: per pair, as in ``pairs/val.parquet``.
        candidates: ``[C]`` item indices searched over.
        target: ``[P]`` position of each pair's engaged item in ``candidates``.
        exclude: ``[P]`` position of a closeup pair's query item in ``candidates`` (-1 if none): an
            item is always its own nearest neighbour, which would make closeup recall meaningless.
        cohorts: named ``[P]`` boolean masks reported as extra "surface/<name>" rows.
    """

    surfaces: np.ndarray
    tasks: np.ndarray
    query_key: np.ndarray
    candidates: torch.Tensor
    target: torch.Tensor
    exclude: torch.Tensor
    cohorts: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tasks)


def build_val_set(pairs: Mapping[str, np.ndarray], num_items: int, catalog: str = "split") -> ValSet:
    """Resolve pairs against ``catalog``: "split" = the split's own engaged items (the held-out
    catalog of an item-disjoint split), "all" = every item in the features directory."""
    if catalog not in CATALOGS:
        raise ValueError(f"unknown validation catalog {catalog!r}; expected one of {CATALOGS}")
    items = np.asarray(pairs["item_idx"], dtype=np.int64)
    cand = np.unique(items) if catalog == "split" else np.arange(num_items, dtype=np.int64)
    target = np.searchsorted(cand, items)
    surfaces = np.asarray(pairs["surface"]).astype(str)
    keys = np.asarray(pairs["query_key"], dtype=np.int64)
    exclude = np.full(len(items), -1, dtype=np.int64)
    closeup = surfaces == "closeup"
    if closeup.any():
        pos = np.searchsorted(cand, keys[closeup]).clip(max=len(cand) - 1)
        hit = cand[pos] == keys[closeup]
        exclude[np.flatnonzero(closeup)[hit]] = pos[hit]
    return ValSet(
        surfaces=surfaces,
        tasks=np.asarray(pairs["task"]).astype(str),
        query_key=keys,
        candidates=torch.from_numpy(cand),
        target=torch.from_numpy(target),
        exclude=torch.from_numpy(exclude),
    )


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[None]:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def embed_items(
    model: ItemSageModel, store: ItemFeatureStore, idx: torch.Tensor, device: torch.device, batch_size: int = 1024
) -> torch.Tensor:
    """``[len(idx), d]`` float32 CPU item embeddings (``model`` must have ``embed_items``)."""
    out = []
    for start in range(0, idx.numel(), batch_size):
        batch = store.gather(idx[start : start + batch_size]).to(device)
        with _autocast(device):
            out.append(model.embed_items(batch).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


@torch.no_grad()
def embed_queries(
    model: ItemSageModel,
    qf: QueryFeatures,
    val: ValSet,
    device: torch.device,
    batch_size: int = 4096,
    text_encoder: TextEncoder | None = None,
) -> torch.Tensor:
    """``[P, d]`` float32 CPU query embeddings for the validation pairs, each by its surface's tower.

    With a fine-tuned ``text_encoder``, search queries are re-encoded from their text (the
    precomputed ``text_emb`` came from the encoder before fine-tuning).
    """
    out: torch.Tensor | None = None
    for s in SURFACES:
        rows = np.flatnonzero(val.surfaces == s)
        step = batch_size if not (s == "search" and text_encoder is not None) else 256
        for start in range(0, rows.size, step):
            r = rows[start : start + step]
            keys = val.query_key[r]
            with _autocast(device):
                if s == "search" and text_encoder is not None:
                    # The one search-query text path (the API, evaluation and Serve use it too).
                    feats = search_query_features(text_encoder, qf.texts(keys)).to(device)
                    tokens = qf.tokens(keys) if model.text_residual is not None else None
                    emb = model.embed_queries(s, feats, tokens).float().cpu()
                else:
                    # As training groups them: closeup items without an image query by the item tower.
                    tokens = qf.tokens(keys) if s == "search" and model.text_residual is not None else None
                    emb = (
                        model.embed_query_batch(qf.groups(val.surfaces[r], keys, device), len(r), tokens).float().cpu()
                    )
            if out is None:
                out = torch.zeros(len(val), emb.shape[1])
            out[torch.from_numpy(r)] = emb
    if out is None:
        raise ValueError("no validation pairs")
    return out


def model_recall(
    model: ItemSageModel,
    store: ItemFeatureStore,
    qf: QueryFeatures,
    val: ValSet,
    device: torch.device,
    table: RecallTable | None = None,
    method: str = "itemsage",
    text_encoder: TextEncoder | None = None,
) -> RecallTable:
    """Recall@k of ``model`` (an unwrapped ``ItemSageModel``) on ``val``; restores train modes."""
    table = table if table is not None else RecallTable()
    modules = [m for m in (model, text_encoder) if m is not None]
    was_training = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        items = embed_items(model, store, val.candidates, device)
        queries = embed_queries(model, qf, val, device, text_encoder=text_encoder)
    finally:
        for m, mode in zip(modules, was_training):
            m.train(mode)
    table.add(method, val.tasks.tolist(), ranks_of_targets(queries, items, val.target, val.exclude), val.cohorts)
    return table


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)


def baseline_recall(
    store: ItemFeatureStore, qf: QueryFeatures, val: ValSet, table: RecallTable | None = None, seed: int = 0
) -> RecallTable:
    """Recall of the untrained frozen features ("frozen") and of a random ranking ("random").

    frozen, per surface: search = MiniLM query vs. item title_emb; closeup = first-image feature
    cosine; home = [unit image half, unit text half] of user_feat vs. [unit first image, unit
    title_emb] of the item (the two halves weigh equally). Items without an image score 0 on image.
    """
    table = table if table is not None else RecallTable()
    cand = val.candidates
    title = _unit(store.title_emb[cand])
    image = _unit(store.first_image_feat[cand])
    item_sides = {"search": title, "closeup": image, "home": torch.cat([image, title], dim=1)}
    ranks = torch.zeros(len(val), dtype=torch.long)
    for s in SURFACES:
        rows = np.flatnonzero(val.surfaces == s)
        if not rows.size:
            continue
        q = qf.for_surface(s, val.query_key[rows])
        if s == "home":
            q = torch.cat([_unit(q[:, :-TEXT_QUERY_DIM]), _unit(q[:, -TEXT_QUERY_DIM:])], dim=1)
        else:
            q = _unit(q)
        r = torch.from_numpy(rows)
        ranks[r] = ranks_of_targets(q, item_sides[s], val.target[r], val.exclude[r])
    table.add("frozen", val.tasks.tolist(), ranks, val.cohorts)
    # A uniformly random ranking: the target's rank is uniform over the candidates left after the
    # excluded query item.
    gen = torch.Generator().manual_seed(seed)
    pool = cand.numel() - (val.exclude >= 0).long()
    table.add("random", val.tasks.tolist(), (torch.rand(len(val), generator=gen) * pool).long(), val.cohorts)
    return table


def recall_metrics(table: RecallTable, method: str, prefix: str = "val", k: int = 10) -> dict[str, float]:
    """``{prefix/<task>/recall_at_k: value}`` for every task of ``method``, plus ``prefix/recall_at_k``, the
    mean over surfaces of their ``surface/all`` rows (the checkpoint score: every surface counts
    the same, however many pairs it has). MLflow metric names cannot contain "@"."""
    out = {}
    per_surface = []
    for m, task in table.rows:
        if m != method:
            continue
        v = table.get(m, task, k)
        if v is None:
            continue
        out[f"{prefix}/{task}/recall_at_{k}"] = v
        if task.endswith("/all"):
            per_surface.append(v)
    if per_surface:
        out[f"{prefix}/recall_at_{k}"] = float(np.mean(per_surface))
    return out

"""The attribute-relevance probes (``itemsage.eval.attribute_probes``) for a model and the baselines.

Each method scores the probe's queries against every catalog item, the same candidates and the
same capped Recall@k for all: the model through the tower a user's query takes (search tower on
the query text, closeup tower on the photo (with its catalog neighbours), item tower on both sides
for item -> item, a user's history as ``model.home_query`` says, as ``/search``, ``/closeup``,
``/similar`` and ``/recommend`` do; ``itemsage.model.catalog_queries``),
char-3gram TF-IDF and BM25 (the text query, the query item's text, or the history's items as the
home probe does), frozen MiniLM (the query text through the packaged frozen encoder, the query
item's title, or the text half of the user feature, against the items' titles), frozen image
features (photo, item and user queries), the frozen user feature (both halves, home), for a model
whose photo queries read catalog neighbours the frozen titles of the same neighbours, and random.
Rows are ``<probe>/all`` in the evaluation's recall table.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from itemsage.data.features_read import read_pairs
from itemsage.eval.attribute_probes import ROW, AttributeQueries, Facets, attribute_queries, attribute_recall
from itemsage.eval.baselines.frozen import user_halves
from itemsage.eval.baselines.suite import BaselineSuite
from itemsage.eval.recall import RecallTable
from itemsage.eval.validation import embed_items
from itemsage.model import ItemFeatureStore
from itemsage.model.catalog_queries import history_queries, neighbour_count, photo_neighbours, photo_queries
from itemsage.trained.loaded import TrainedModel
from itemsage.trained.queries import frozen_text_encoder


def unseen_items(features: str, split_pairs: dict[str, np.ndarray]) -> np.ndarray:
    """Items engaged by a held-out split's pairs (``read_pairs``) and by no training pair: the model
    never trained on them (on an item-disjoint split, every held-out item)."""
    return np.setdiff1d(np.unique(split_pairs["item_idx"]), read_pairs(features, "train")["item_idx"])


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)


def _dense(q: torch.Tensor, items: torch.Tensor):  # noqa: ANN202 - a ScoreFn
    return lambda rows: q[torch.from_numpy(rows)] @ items.T


@torch.no_grad()
def _model_queries(
    tm: TrainedModel,
    store: ItemFeatureStore,
    histories: list[np.ndarray] | None,
    queries: AttributeQueries,
    device: torch.device,
) -> torch.Tensor:
    kind = queries.probe.query
    if kind == "text":
        assert queries.texts is not None
        return torch.from_numpy(tm.embed_search_queries(queries.texts))
    if kind == "user":
        assert queries.user is not None and histories is not None
        return history_queries(tm.model, store, [histories[int(u)].tolist() for u in queries.user])
    keys = torch.from_numpy(queries.item)
    if kind == "image":
        return photo_queries(tm.model, store, store.first_image_feat[keys], exclude=keys)
    return tm.model.embed_item_queries(embed_items(tm.model, store, keys, device)).float().cpu()


def _lexical_scores(suite: BaselineSuite, ranker, queries: AttributeQueries):  # noqa: ANN001, ANN202
    kind = queries.probe.query
    if kind == "text":  # the probe's own texts, not a queries.parquet row
        q = ranker.text_queries(queries.texts)
    else:
        keys = queries.item if queries.user is None else queries.user
        q = suite.lexical_queries(ranker, kind, keys)
    if isinstance(q, sp.csr_matrix):
        items_t = ranker.items.T.tocsc()
        return lambda rows: np.asarray((q[rows] @ items_t).todense())
    return lambda rows: np.stack([ranker.scores(q[int(r)]) for r in rows])


def add_attribute_rows(
    table: RecallTable,
    tm: TrainedModel,
    store: ItemFeatureStore,
    suite: BaselineSuite,
    features: str,
    split: str,
    item_emb: torch.Tensor,
    device: torch.device,
    seed: int = 0,
) -> int:
    """Rows ``attr_*/all`` of the model and every applicable baseline; returns the number of
    held-out items the queries came from (0 when the catalog has no facets: nothing is added).

    ``item_emb``: the model's embeddings of every catalog item, in item order.
    """
    facets = Facets.load(features)
    if facets is None:
        return 0
    if item_emb.shape[0] != len(facets.group):
        raise ValueError(f"{item_emb.shape[0]} item embeddings for {len(facets.group)} catalog items")
    split_pairs = read_pairs(features, split)
    held = unseen_items(features, split_pairs)
    home = split_pairs["surface"] == "home"
    home_pairs = (split_pairs["query_key"][home], split_pairs["item_idx"][home]) if home.any() else None
    probes = attribute_queries(facets, held, store.has_image.numpy(), seed, home_pairs)
    ks = table.ks
    title = _unit(store.title_emb)
    image = _unit(store.first_image_feat)
    rng = np.random.default_rng(seed)
    neighbours = neighbour_count(tm.model, store, exclude=True)  # how many the model's photo queries read
    for name, queries in probes.items():
        task = f"{name}/{ROW}"
        kind = queries.probe.query
        methods = {
            "itemsage": _dense(_model_queries(tm, store, suite.corpus.histories, queries, device), item_emb.float())
        }
        if kind != "image":
            methods["tfidf"] = _lexical_scores(suite, suite.tfidf, queries)
            methods["bm25"] = _lexical_scores(suite, suite.bm25, queries)
        if kind == "text":
            assert queries.texts is not None
            methods["minilm"] = _dense(
                _unit(torch.from_numpy(frozen_text_encoder(device).encode(queries.texts))), title
            )
        elif kind == "item":
            methods["minilm"] = _dense(_unit(store.title_emb[torch.from_numpy(queries.item)]), title)
        if kind in ("image", "item") and suite.with_images:
            methods["image"] = _dense(image[torch.from_numpy(queries.item)], image)
        if kind == "image" and suite.with_images and neighbours:
            # The frozen counterpart of the model's photo query: the mean MiniLM title of the same
            # k nearest catalog photos (the query's own item left out), against the items' titles.
            keys = torch.from_numpy(queries.item)
            nearest = photo_neighbours(store, store.first_image_feat[keys], neighbours, exclude=keys)
            methods["image_nbr"] = _dense(_unit(title[nearest].mean(1)), title)
        if kind == "user":
            # The frozen user feature's halves against the items' [first image, title], as the
            # engaged-item home probe's frozen baselines (itemsage.eval.baselines.frozen).
            assert queries.user is not None
            img_half, txt_half = user_halves(suite.qf, queries.user)
            methods["minilm"] = _dense(txt_half, title)
            if suite.with_images:
                methods["image"] = _dense(img_half, image)
                methods["user_feat"] = _dense(torch.cat([img_half, txt_half], 1), torch.cat([image, title], 1))
        methods["random"] = lambda rows: rng.random((len(rows), len(facets.group)))
        for method, score in methods.items():
            table.add_values(method, task, attribute_recall(queries, facets, score, ks))
    return int(len(held))


__all__ = ["add_attribute_rows", "unseen_items"]

"""Queries built from catalog items' own embeddings: a user's history, a photo's catalog neighbours.

The towers map frozen features (the mean frozen features of a history, a photo's image feature)
into the item space. Two queries do better by reading the item embeddings the catalog already
has (docs/quality.md, "Queries from catalog items"):

* home, ``model.home_query: items``: the mean of the history items' embeddings. The paper's home
  queries are PinnerSage user embeddings, themselves built from the embeddings of the items a user
  engaged with; this is that with one cluster.
* closeup, ``model.closeup_neighbors: k``: the closeup tower's output plus the mean embedding of
  the k catalog items whose first photo is nearest the query photo (cosine of frozen image
  features). Their embeddings carry the kind, colour and gender their text states, which the
  photo shows only weakly.

Evaluation, Serve and the Python API call these functions, so all three answer alike. Training and
its validation keep the towers: these queries move with the item tower, which training shapes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from itemsage.model.batch import ItemFeatureStore
from itemsage.model.factory import ItemSageModel


@torch.no_grad()
def history_queries(model: ItemSageModel, store: ItemFeatureStore, histories: Sequence[Sequence[int]]) -> torch.Tensor:
    """``[U, output_dim]`` home-feed queries of item-row histories, as ``model.home_query`` says."""
    if any(len(h) == 0 for h in histories):
        raise ValueError("an empty history: a home-feed query needs at least one item")
    dev = next(model.parameters()).device
    if model.model_cfg.home_query == "tower":
        return model.embed_queries("home", store.user_feats(histories).to(dev)).float().cpu()
    lengths = torch.tensor([len(h) for h in histories], dtype=torch.int64)
    flat = torch.tensor([int(i) for h in histories for i in h], dtype=torch.int64)
    owner = torch.repeat_interleave(torch.arange(len(histories)), lengths)
    emb = model.embed_store_rows(store, flat)
    mean = torch.zeros(len(histories), emb.shape[1]).index_add_(0, owner, emb)
    # The frozen title part (model.title_blend) of the mean item is the mean of the history's titles.
    titles = torch.zeros(len(histories), store.title_emb.shape[1]).index_add_(
        0, owner, F.normalize(store.title_emb[flat], dim=-1)
    )
    # Debiased and given the served parts like any item used as a query (/similar).
    return model.embed_item_queries(F.normalize(mean, dim=-1).to(dev), titles.to(dev)).float().cpu()


def photo_neighbours(
    store: ItemFeatureStore, image_feats: torch.Tensor, k: int, exclude: torch.Tensor | None = None
) -> torch.Tensor:
    """``[Q, k]`` rows of the catalog items whose first photo is nearest each of ``image_feats``
    (cosine of frozen image features), ``exclude[q]`` (an item row, -1: none) never among them.
    Needs at least ``k`` other photographed items."""
    rows, bank = store.photo_bank()
    sim = F.normalize(image_feats.float().cpu(), dim=-1) @ bank.T
    if exclude is not None:
        own = exclude.cpu()[:, None]
        sim = sim.masked_fill((rows[None, :] == own) & (own >= 0), float("-inf"))
    return rows[sim.topk(k, dim=1).indices]


def neighbour_count(model: ItemSageModel, store: ItemFeatureStore, exclude: bool) -> int:
    """How many catalog neighbours a photo query reads: ``model.closeup_neighbors``, fewer when
    the catalog has fewer other photos (0: the tower alone)."""
    return max(0, min(int(model.model_cfg.closeup_neighbors), len(store.photo_bank()[0]) - int(exclude)))


@torch.no_grad()
def photo_queries(
    model: ItemSageModel,
    store: ItemFeatureStore,
    image_feats: torch.Tensor,
    exclude: torch.Tensor | None = None,
    chunk: int = 1024,
) -> torch.Tensor:
    """``[Q, output_dim]`` closeup queries of frozen image features ``[Q, image_dim]``.

    ``exclude``: ``[Q]`` item row each photo belongs to (-1: none), never its own neighbour (a
    catalog item's photo would otherwise read that item's own text). ``chunk``: queries per
    similarity block (``[chunk, n_photos]`` floats)."""
    dev = next(model.parameters()).device
    k = neighbour_count(model, store, exclude is not None)
    if k == 0 or len(image_feats) == 0:
        return model.embed_queries("closeup", image_feats.to(dev)).float().cpu()
    parts = []
    for start in range(0, len(image_feats), chunk):
        feats = image_feats[start : start + chunk]
        own = None if exclude is None else exclude[start : start + chunk]
        nearest = photo_neighbours(store, feats, k, own)
        neighbours = model.embed_store_rows(store, nearest.flatten()).view(len(feats), k, -1).mean(1)
        expansion = F.normalize(neighbours, dim=-1)
        # A photo has no title: its frozen title part (model.title_blend) is its neighbours' mean title.
        titles = F.normalize(store.title_emb[nearest.flatten()], dim=-1).view(len(feats), k, -1).mean(1)
        parts.append(
            model.embed_queries("closeup", feats.to(dev), expansion=expansion, title_emb=titles.to(dev)).float().cpu()
        )
    return torch.cat(parts)


__all__ = ["history_queries", "neighbour_count", "photo_neighbours", "photo_queries"]

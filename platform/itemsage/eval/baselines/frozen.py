"""Frozen-feature baselines: cosine of the features the model starts from, with no training.

* ``minilm``: the frozen MiniLM text embedding. Text query: the query's ``text_emb`` against each
  item's ``title_emb``; item query: the query item's ``title_emb``; user: the text half of
  ``user_feat`` (the mean of the history's ``title_emb``).
* ``image``: the frozen image-backbone feature of an item's first image. Image and item queries:
  the query item's first image; user: the image half of ``user_feat``. Only where the catalog
  has images.
* ``user_feat``: home only, both halves of ``user_feat`` (each unit length) against [first image,
  title_emb]: the frozen baseline training validates against on home.

Items without an image score 0 on image (a zero vector), as in training's validation.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from itemsage.data.features_read import QueryFeatures
from itemsage.eval.recall import ranks_of_targets
from itemsage.model.batch import TEXT_QUERY_DIM, ItemFeatureStore

# The query each probe kind gives a frozen baseline (see the module docstring).
FROZEN_METHODS: dict[str, tuple[str, ...]] = {
    "text": ("minilm",),
    "image": ("image",),
    "item": ("minilm", "image"),
    "user": ("minilm", "image", "user_feat"),
}


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)


def user_halves(qf: QueryFeatures, users: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen user feature of ``users`` as its unit image half and unit text (MiniLM) half."""
    user = qf.for_surface("home", users)
    return _unit(user[:, :-TEXT_QUERY_DIM]), _unit(user[:, -TEXT_QUERY_DIM:])


def minilm_vectors(
    query_kind: str, store: ItemFeatureStore, qf: QueryFeatures, query_key: np.ndarray, candidates: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Unit frozen MiniLM vectors of text or catalog-item queries and of the candidates (None for
    users): the ``minilm`` baseline's query and item sides. An image query of a probe is a catalog
    item's photo, so it has the item's title too (``/similar`` by id reads it in a fused mode)."""
    keys = torch.as_tensor(np.asarray(query_key, dtype=np.int64))
    title = _unit(store.title_emb[candidates])
    if query_kind == "text":
        return _unit(qf.for_surface("search", keys)), title
    if query_kind in ("item", "image"):
        return _unit(store.title_emb[keys]), title
    return None


def frozen_ranks(
    query_kind: str,
    store: ItemFeatureStore,
    qf: QueryFeatures,
    query_key: np.ndarray,
    candidates: torch.Tensor,
    targets: torch.Tensor,
    exclude: torch.Tensor,
    with_images: bool = True,
) -> dict[str, np.ndarray]:
    """``{method: ranks}`` of the frozen baselines that apply to ``query_kind`` (text | image |
    item | user); ``with_images=False`` leaves out those that need image features."""
    if query_kind not in FROZEN_METHODS:
        raise ValueError(f"unknown query kind {query_kind!r}; expected one of {sorted(FROZEN_METHODS)}")
    keys = torch.as_tensor(np.asarray(query_key, dtype=np.int64))
    image = _unit(store.first_image_feat[candidates])
    # A photo query's baselines read the photo only; text and item queries get the MiniLM sides.
    minilm = minilm_vectors(query_kind, store, qf, query_key, candidates) if query_kind in ("text", "item") else None
    if query_kind == "text":
        assert minilm is not None
        queries = {"minilm": minilm}
    elif query_kind in ("image", "item"):
        queries = {"image": (_unit(store.first_image_feat[keys]), image)}
        if minilm is not None:
            queries["minilm"] = minilm
    else:
        title = _unit(store.title_emb[candidates])
        img_half, txt_half = user_halves(qf, keys)
        queries = {
            "minilm": (txt_half, title),
            "image": (img_half, image),
            "user_feat": (torch.cat([img_half, txt_half], dim=1), torch.cat([image, title], dim=1)),
        }
    out = {}
    for method in FROZEN_METHODS[query_kind]:
        if not with_images and method in ("image", "user_feat"):
            continue
        q, items = queries[method]
        out[method] = ranks_of_targets(q, items, targets, exclude).numpy()
    return out

"""Queries built from catalog items: a home history's item embeddings, a photo's catalog neighbours."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from itemsage.config import TEXT_FIELDS, LossConfig, ModelConfig
from itemsage.model.batch import ItemFeatureStore
from itemsage.model.catalog_queries import history_queries, photo_queries
from itemsage.model.factory import build_model

D, V = 6, 120
CFG = ModelConfig(hidden_dim=32, num_heads=4, ffn_dim=64, head_hidden_dim=32, embedding_dim=16,
                  hash_buckets=97, hash_dim=16, dropout=0.0)


def _store(photos: list[list[float] | None]) -> ItemFeatureStore:
    g = torch.Generator().manual_seed(0)
    rows = [
        {
            "image_feats": photo or [],
            "title_emb": torch.randn(384, generator=g).tolist(),
            **{f"tok_{f}": torch.randint(0, V, (3,), generator=g).tolist() for f in TEXT_FIELDS[:3]},
        }
        for photo in photos
    ]
    return ItemFeatureStore.from_rows(rows, image_dim=D)


def _model(**changes: object):  # noqa: ANN202
    torch.manual_seed(0)
    return build_model(CFG.replace(**changes), LossConfig(random_negatives=False), vocab_size=V, image_dim=D).eval()


def _items(model, store: ItemFeatureStore, rows: list[int]) -> torch.Tensor:  # noqa: ANN001
    with torch.no_grad():
        return model.embed_item_vectors(store.gather(torch.tensor(rows)))


def test_a_history_is_the_mean_of_its_items_or_the_home_tower() -> None:
    store = _store([[float(i == j) for j in range(D)] for i in range(5)])
    items = _model(home_query="items")
    got = history_queries(items, store, [[0, 2], [4]])
    torch.testing.assert_close(got[0], F.normalize(_items(items, store, [0, 2]).mean(0), dim=0))
    torch.testing.assert_close(got[1], _items(items, store, [4])[0])
    tower = _model(home_query="tower")
    with torch.no_grad():
        expected = tower.embed_queries("home", store.user_feats([[0, 2]]))
    torch.testing.assert_close(history_queries(tower, store, [[0, 2]]), expected)
    with pytest.raises(ValueError, match="empty history"):
        history_queries(items, store, [[1], []])


def test_a_photo_reads_its_nearest_catalog_photos_but_never_its_own_item() -> None:
    # Items 0-2 share a look (item 0 the query's own photo); 3 looks elsewhere; 4 has no photo.
    look, other = [1.0, 0.1, 0, 0, 0, 0], [0, 0, 0, 0, 1.0, 0]
    store = _store([look, [1.0, 0.2, 0, 0, 0, 0], [1.0, 0.3, 0, 0, 0, 0], other, None])
    model = _model(closeup_neighbors=2)
    photo = torch.tensor([look])
    with torch.no_grad():
        tower = model.query_towers("closeup", photo)
    neighbours = F.normalize(_items(model, store, [1, 2]).mean(0, keepdim=True), dim=-1)
    got = photo_queries(model, store, photo, exclude=torch.tensor([0]))
    torch.testing.assert_close(got, F.normalize(tower + neighbours, dim=-1))
    # An uploaded photo belongs to no item: its exact match in the catalog is its nearest.
    with_own = F.normalize(_items(model, store, [0, 1]).mean(0, keepdim=True), dim=-1)
    torch.testing.assert_close(photo_queries(model, store, photo), F.normalize(tower + with_own, dim=-1))
    # Off, or a catalog without photos: the tower alone.
    off = _model(closeup_neighbors=0)
    with torch.no_grad():
        alone = off.embed_queries("closeup", photo)
    torch.testing.assert_close(photo_queries(off, store, photo), alone)
    torch.testing.assert_close(photo_queries(model, _store([None, None]), photo), tower)

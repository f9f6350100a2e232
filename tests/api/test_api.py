"""itemsage.api.ItemSage on a small model trained on the fashion sample (sample_model.py).

No Ray here: catalogs are featurized in-process (engine="local"); the Ray paths are covered by
tests/index/test_embed.py and tests/eval/test_evaluate.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from itemsage.api import CatalogFeatures, ItemSage, ModelNotFoundError
from itemsage.index.tower_udf import EmbedError

DIM = 256


@pytest.fixture(scope="module")
def train_embeddings(sage: ItemSage, train_features: CatalogFeatures) -> tuple[list[str], np.ndarray]:
    return sage.embed_features(train_features)


def _own_ranks(queries: np.ndarray, items: np.ndarray) -> np.ndarray:
    """0-based rank of item i for query i among all items (ties count against it)."""
    scores = queries @ items.T
    own = scores[np.arange(len(queries)), np.arange(len(queries))]
    return (scores > own[:, None]).sum(axis=1)


def _assert_unit_rows(x: np.ndarray, n: int) -> None:
    assert x.shape == (n, DIM) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


def test_catalog_embeddings_are_unit_norm_256d(sage, train_features, train_embeddings) -> None:
    ids, emb = train_embeddings
    assert sage.dim == DIM and sage.version.startswith("sha-")
    assert ids == train_features.items["item_id"].tolist() and len(set(ids)) == len(ids) == 160
    _assert_unit_rows(emb, 160)
    # Distinct items get distinct vectors (a collapsed tower would pass the norm check).
    assert np.abs(emb @ emb.T - np.eye(len(ids))).max() < 0.9999


def test_raw_catalog_is_featurized_exactly_like_training(sage, sample_model, train_embeddings) -> None:
    """The model's vocab + backbone on the raw catalog reproduce the training features' embeddings."""
    ids, emb = train_embeddings
    dir_ids, dir_emb = sage.embed_catalog(sample_model.features)
    by_id = dict(zip(dir_ids, dir_emb))
    np.testing.assert_allclose(np.stack([by_id[i] for i in ids]), emb, atol=1e-5)


def test_title_queries_rank_their_own_item_high(sage, train_features, train_embeddings) -> None:
    ids, emb = train_embeddings
    queries = sage.embed_text_queries(train_features.items["title"].tolist())
    _assert_unit_rows(queries, len(ids))
    ranks = _own_ranks(queries, emb)
    # Random ranking: median 80 of 160, 6% in the top 10.
    assert np.median(ranks) <= 8 and (ranks < 10).mean() >= 0.5


def test_image_queries_land_near_their_item(sage, train_features, train_embeddings) -> None:
    ids, emb = train_embeddings
    paths = [p[0] for p in train_features.items["image_paths"][:40]]
    by_path = sage.embed_image_queries(paths)
    _assert_unit_rows(by_path, 40)
    by_bytes = sage.embed_image_queries([Path(p).read_bytes() for p in paths[:3]])
    np.testing.assert_allclose(by_bytes, by_path[:3], atol=1e-5)
    ranks = _own_ranks(by_path, emb)
    assert np.median(ranks) <= 16  # top 10% of 160 (random: 80)


def test_users_share_the_space_and_prefer_what_they_engaged_with(sage, train_features, train_embeddings, sample_model) -> None:
    ids, emb = train_embeddings
    kinds = train_features.items["product_types"].tolist()
    socks = [i for i, k in zip(ids, kinds) if k == "Socks"]
    users = sage.embed_users([socks[:3], ids[:1]], train_features)
    _assert_unit_rows(users, 2)
    top = np.argsort(-(emb @ users[0]))[:10]
    # Socks are 7% of the catalog: 0.7 of a random top 10.
    assert sum(kinds[j] == "Socks" for j in top) >= 3
    from_dir = sage.embed_users([socks[:3]], sample_model.features)
    np.testing.assert_allclose(from_dir[0], users[0], atol=1e-5)


def test_unseen_catalog_is_embedded_with_the_models_vocab_and_backbone(sage, sample_model, train_embeddings) -> None:
    ids, emb = sage.embed_catalog(sample_model.unseen_catalog, engine="local")
    assert len(ids) == 60 and not set(ids) & set(train_embeddings[0])
    _assert_unit_rows(emb, 60)
    feats = sage.featurize_catalog(sample_model.unseen_catalog, engine="local")
    ranks = _own_ranks(sage.embed_text_queries(feats.items["title"].tolist()), emb)
    assert np.median(ranks) <= 6  # top 10% of 60 items never seen in training (random: 30)


def test_missing_models_give_one_clear_error(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        ItemSage.load(tmp_path / "nope")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(ModelNotFoundError, match="models:/itemsage/99"):
        ItemSage.load("models:/itemsage/99")
    with pytest.raises(ModelNotFoundError, match="itemsage"):
        ItemSage.load("models:/itemsage/latest")


def test_bad_inputs_are_named(sage, train_features, train_embeddings, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty search query"):
        sage.embed_text_queries(["red shoes", "  "])
    with pytest.raises(KeyError, match="no-such-item"):
        sage.embed_users([[train_embeddings[0][0], "no-such-item"]], train_features)
    with pytest.raises(ValueError, match="history 0 is empty"):
        sage.embed_users([[]], train_features)
    with pytest.raises(ValueError, match="image query 1"):
        sage.embed_image_queries([train_features.items["image_paths"][0][0], b"not an image"])
    assert sage.embed_text_queries([]).shape == (0, DIM)


def test_features_made_with_another_vocab_are_refused(sage, sample_model, tmp_path: Path) -> None:
    import json
    import shutil

    other = tmp_path / "features"
    shutil.copytree(sample_model.features, other)
    vocab = json.loads((other / "vocab.json").read_text())
    # Same sizes, two ids swapped: every token id of those words now means the other word.
    vocab["unigrams"][0], vocab["unigrams"][1] = vocab["unigrams"][1], vocab["unigrams"][0]
    (other / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(EmbedError, match="another vocabulary"):
        sage.embed_catalog(other)

"""The run's cache of frozen-backbone outputs (tests/support/feature_cache.py) gives what the
functions it stands in for give, for inputs it has seen and inputs it has not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tests.support import feature_cache

from itemsage.config import PreprocessConfig
from itemsage.data.catalog import read_catalog
from itemsage.index.featurize import local_image_features

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample" / "fashion"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(feature_cache.ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_image_features_match_the_in_process_featurizer(cache: Path, tmp_path: Path) -> None:
    items = read_catalog(SAMPLE).items.iloc[:6].reset_index(drop=True)
    items["item_idx"] = np.arange(len(items), dtype=np.int64)
    # One unreadable image: its decode failure is cached and reported like a fresh one.
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    items.at[4, "image_paths"] = [str(broken)]
    cfg, dim = PreprocessConfig(), 1280
    first = feature_cache.image_features(items.iloc[:4].reset_index(drop=True), cfg, dim)  # computes 4
    assert first.n_images.tolist() == [1, 1, 1, 1]
    got = feature_cache.image_features(items, cfg, dim)  # 4 from the cache, 2 computed
    want = local_image_features(items, cfg, dim, "cpu")
    assert len(np.load(cache / next(p.name for p in cache.glob("images-*.npz")))["key"]) == 6
    assert got.n_images.tolist() == want.n_images.tolist() == [1, 1, 1, 1, 0, 1]
    np.testing.assert_allclose(got.first, want.first, atol=1e-5)
    np.testing.assert_allclose(got.values, want.values, atol=1e-5)
    assert got.submitted == want.submitted == 6
    assert [(r.item_id, r.reason, r.detail) for r in got.rejects] == [(r.item_id, r.reason, r.detail) for r in want.rejects]
    assert len(got.rejects) == 1


def test_text_embeddings_match_the_encoder(cache: Path) -> None:
    from itemsage.data.text_encoder import TextEncoder

    encoder = TextEncoder()
    texts = ["red cotton shirt", "", "blue denim jeans", "red cotton shirt"]
    feature_cache.text_embeddings(encoder, texts[:2])
    got = feature_cache.text_embeddings(encoder, texts)
    np.testing.assert_allclose(got, encoder.encode(texts), atol=1e-5)
    assert not got[1].any() and got.shape == (4, 384)
    assert sorted(np.load(cache / "text-minilm.npz")["text"].tolist()) == ["", "blue denim jeans", "red cotton shirt"]

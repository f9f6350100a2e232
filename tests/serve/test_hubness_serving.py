"""A hubness-corrected bundle (model.hubness_weight, experiments/hubness_bank.py) is served as it is
evaluated: the index, the query encoders and /similar all carry the correction coordinate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import write_index

from itemsage.config import ServeConfig
from itemsage.model import ItemFeatureStore
from itemsage.model.hubness import neighbour_similarity
from itemsage.serve.core import ServingSpec, load_state
from itemsage.serve.encoders import LocalEncoders
from itemsage.trained import load_trained
from itemsage.trained.hubness_bank import attach_hubness_bank
from itemsage.trained.variant import hubness_variant

WEIGHT, NEIGHBOURS = 0.5, 2


def test_a_corrected_bundle_scores_q_dot_x_minus_hubness_everywhere(
    tiny_serving: dict[str, Path], tmp_path: Path
) -> None:
    features = tiny_serving["features"]
    with pytest.raises(ValueError, match="hubness_weight"):  # plain model: nothing would read a bank
        attach_hubness_bank(tiny_serving["model_1"])
    with pytest.raises(ValueError, match="weight > 0"):
        hubness_variant(tiny_serving["model_1"], tmp_path / "zero", 0.0, NEIGHBOURS)
    record = hubness_variant(tiny_serving["model_1"], tmp_path / "hub", WEIGHT, NEIGHBOURS)
    assert record["items"] == record["catalog_items"] == 60
    with pytest.raises(FileExistsError):
        hubness_variant(tiny_serving["model_1"], tmp_path / "hub", WEIGHT, NEIGHBOURS)

    tm = load_trained(tmp_path / "hub")
    plain_tm = load_trained(tiny_serving["model_1"])
    assert (tm.config.train.model.hubness_weight, tm.config.train.model.hubness_neighbors) == (WEIGHT, NEIGHBOURS)
    dim = plain_tm.embedding_dim
    assert tm.embedding_dim == dim + 1 and tm.manifest["hubness_bank"]["items"] == 60
    store = ItemFeatureStore.load(str(features), max_images=int(tm.manifest["max_images"]))
    items = tm.embed_items(store)
    plain = plain_tm.embed_items(store)
    np.testing.assert_allclose(items[:, :dim], plain, atol=1e-5)
    h = neighbour_similarity(torch.from_numpy(plain), torch.from_numpy(plain), NEIGHBOURS).numpy()
    assert h.min() > 0
    np.testing.assert_allclose(items[:, dim], -WEIGHT * h, atol=1e-5)

    # Serve: an index of the corrected embeddings, the version's encoders and /similar.
    index_dir = write_index(features, tmp_path / "hub", tmp_path / "index")
    state = load_state(ServingSpec(str(tmp_path / "hub"), str(index_dir)))
    assert state.index.dim == dim + 1
    enc = LocalEncoders(ServeConfig())
    bundle = enc.bundle(state.model)
    query = enc.text_batch([bundle], ["black leather shoe"])[0]
    assert query.shape == (dim + 1,) and query[-1] == 1.0
    hits = state.search(query, 5)
    expected = np.argsort(-(plain @ query[:dim] - WEIGHT * h), kind="stable")[:5]
    ids = list(store.item_ids or [])
    assert [hit.item_id for hit in hits] == [ids[i] for i in expected]
    no_image = next(i for i in ids if bundle.first_image_feats(i) is None)
    surface, similar = enc.similar_query(bundle, no_image)
    assert surface == "item" and similar.shape == (dim + 1,) and similar[-1] == 1.0
    np.testing.assert_allclose(similar[:dim], plain[ids.index(no_image)], atol=1e-5)

"""A title-blended copy of a trained model (model.title_blend, experiments/scoring_variant.py) is
served as it is evaluated: the index, the text query encoder and /similar carry the frozen title part."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch.nn.functional as F
from tests.support.scripts import load_script
from tiny import write_index

from itemsage.config import TEXT_QUERY_DIM, ServeConfig
from itemsage.model import ItemFeatureStore
from itemsage.serve.core import ServingSpec, load_state
from itemsage.serve.encoders import LocalEncoders
from itemsage.trained import load_trained
from itemsage.trained.variant import scoring_variant, variant_name

BLEND = 0.5


def test_a_blended_variant_scores_the_trained_plus_the_frozen_title_similarity(
    tiny_serving: dict[str, Path], tmp_path: Path
) -> None:
    features = tiny_serving["features"]
    with pytest.raises(ValueError, match="embedding_dim is not a scoring-only setting"):
        scoring_variant(tiny_serving["model_1"], tmp_path / "bad", {"embedding_dim": 8})
    assert not (tmp_path / "bad").exists()
    assert scoring_variant(tiny_serving["model_1"], tmp_path / "blend", {"title_blend": BLEND}) == {
        "title_blend": BLEND
    }

    tm = load_trained(tmp_path / "blend")
    plain_tm = load_trained(tiny_serving["model_1"])
    dim = plain_tm.embedding_dim
    assert tm.config.train.model.title_blend == BLEND and tm.embedding_dim == dim + TEXT_QUERY_DIM
    assert tm.config.train.name == variant_name(plain_tm.config.train.name, {"title_blend": BLEND})
    store = ItemFeatureStore.load(str(features), max_images=int(tm.manifest["max_images"]))
    items, plain = tm.embed_items(store), plain_tm.embed_items(store)
    titles = F.normalize(store.title_emb, dim=-1).numpy()
    np.testing.assert_allclose(items[:, :dim], plain, atol=1e-5)
    np.testing.assert_allclose(items[:, dim:], BLEND**0.5 * titles, atol=1e-5)

    index_dir = write_index(features, tmp_path / "blend", tmp_path / "index")
    state = load_state(ServingSpec(str(tmp_path / "blend"), str(index_dir)))
    assert state.index.dim == dim + TEXT_QUERY_DIM
    enc = LocalEncoders(ServeConfig())
    bundle = enc.bundle(state.model)
    text = "black leather shoe"
    query = enc.text_batch([bundle], [text])[0]
    minilm = F.normalize(enc.backbones.text_feats([text]), dim=-1).numpy()[0]
    np.testing.assert_allclose(query[dim:], BLEND**0.5 * minilm, atol=1e-5)
    plain_query = plain_tm.embed_search_queries([text])[0]
    scores = plain @ plain_query + BLEND * titles @ minilm
    ids = list(store.item_ids or [])
    assert [hit.item_id for hit in state.search(query, 5)] == [ids[i] for i in np.argsort(-scores, kind="stable")[:5]]
    no_image = next(i for i in ids if bundle.first_image_feats(i) is None)
    surface, similar = enc.similar_query(bundle, no_image)
    assert surface == "item" and similar.shape == (dim + TEXT_QUERY_DIM,)
    np.testing.assert_allclose(similar[dim:], BLEND**0.5 * titles[ids.index(no_image)], atol=1e-5)

    # A new item (/embed/item, a live add): its title part is its own title's MiniLM vector.
    title = "red cotton summer dress"
    new = enc.item_batch([bundle], [enc.prepare_item(bundle, {"title": title})])[0]
    own = F.normalize(enc.backbones.text_feats([title]), dim=-1).numpy()[0]
    np.testing.assert_allclose(new[dim:], BLEND**0.5 * own, atol=1e-5)


def test_the_variant_script_refuses_settings_training_reads(
    tiny_serving: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = load_script("experiments/scoring_variant.py")
    out = tmp_path / "variant"
    with pytest.raises(SystemExit) as refused:
        script.main(["--model", str(tiny_serving["model_1"]), "--out", str(out), "--set", "model.hidden_dim=8"])
    assert refused.value.code == 2 and "hidden_dim is not scoring-only" in capsys.readouterr().err
    assert not out.exists()
    script.main(["--model", str(tiny_serving["model_1"]), "--out", str(out), "--set", "model.title_blend=0.25"])
    assert "model.title_blend=0.25" in capsys.readouterr().out
    assert load_trained(out).config.train.model.title_blend == 0.25


def test_a_variant_is_named_by_its_settings_before_its_seed() -> None:
    assert variant_name("amazon_refit_seed3", {"title_blend": 0.5}) == "amazon_refit_title_blend0.5_seed3"
    assert variant_name("shopee", {"hubness_weight": 0.8, "hubness_neighbors": 1}) == (
        "shopee_hubness_weight0.8_hubness_neighbors1"
    )

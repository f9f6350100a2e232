"""The frozen title part of served embeddings (model.title_blend): every inner product between a
query and an item scores the trained similarity plus title_blend times the frozen MiniLM cosine,
outside training only, for every kind of query."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.model.test_catalog_queries import CFG, D, V, _store

from itemsage.config import TEXT_QUERY_DIM, LossConfig, ModelConfig
from itemsage.model.catalog_queries import history_queries, photo_queries
from itemsage.model.factory import build_model

BLEND = 0.5


def _model(**changes: object):  # noqa: ANN202
    torch.manual_seed(0)
    return build_model(CFG.replace(**changes), LossConfig(random_negatives=False), vocab_size=V, image_dim=D).eval()


def _photos() -> list[list[float] | None]:
    return [[float(i == j % D) + 0.1 * i for j in range(D)] for i in range(5)] + [None]


@torch.no_grad()
def test_scores_add_the_blend_times_the_frozen_title_cosine() -> None:
    store = _store(_photos())
    model = _model(title_blend=BLEND, hubness_weight=0.3, hubness_neighbors=1)
    plain = _model()
    batch = store.gather(torch.arange(store.num_items))
    x = plain.embed_items(batch)
    t = F.normalize(store.title_emb, dim=-1)
    assert model.output_dim == CFG.embedding_dim + TEXT_QUERY_DIM + 1
    model.set_hubness_bank(model.embed_item_vectors(batch))
    items = model.embed_items(batch)
    assert items.shape == (6, model.output_dim)
    h = -items[:, -1]  # 0.3 * the hubness of each item
    assert float(h.min()) > 0

    # An item as the query ("more like this"): its own title part, the hubness 1.
    q = model.embed_item_queries(items)
    torch.testing.assert_close(q @ items.T, x @ x.T + BLEND * (t @ t.T) - h[None, :])

    # A search query: its own MiniLM feature is its title part.
    feats = torch.randn(3, TEXT_QUERY_DIM)
    search = model.embed_queries("search", feats)
    expected = plain.embed_queries("search", feats) @ x.T + BLEND * F.normalize(feats, dim=-1) @ t.T - h[None, :]
    torch.testing.assert_close(search @ items.T, expected)

    # A home history: the mean of its items' titles.
    home = history_queries(model, store, [[0, 2]])
    base = history_queries(plain, store, [[0, 2]])
    torch.testing.assert_close(home @ items.T, base @ x.T + BLEND * F.normalize(t[[0, 2]].mean(0), dim=0) @ t.T - h)

    # A photo: the mean title of its nearest catalog photos (its own item left out).
    photo = photo_queries(model, store, store.first_image_feat[:1], exclude=torch.tensor([0]))
    assert photo.shape == (1, model.output_dim)
    title_part = photo[0, CFG.embedding_dim : CFG.embedding_dim + TEXT_QUERY_DIM]
    assert float(title_part.norm()) == pytest.approx(BLEND**0.5, abs=1e-5)
    torch.testing.assert_close(
        photo[:, : CFG.embedding_dim],
        photo_queries(plain, store, store.first_image_feat[:1], exclude=torch.tensor([0])),
    )

    # Training never sees the part: the objective is the trained similarity alone.
    model.train()
    assert model.embed_items(batch).shape == (6, CFG.embedding_dim)
    assert model.embed_queries("search", feats).shape == (3, CFG.embedding_dim)


@torch.no_grad()
def test_an_item_without_a_title_adds_nothing() -> None:
    store = _store(_photos())
    store.title_emb[1] = 0.0
    model = _model(title_blend=BLEND)
    items = model.embed_items(store.gather(torch.arange(store.num_items)))
    assert items[1, CFG.embedding_dim :].abs().max() == 0
    torch.testing.assert_close(items[0, CFG.embedding_dim :].norm(), torch.tensor(BLEND**0.5))


@pytest.mark.parametrize(
    ("changes", "match"),
    [({"title_blend": -0.1}, "title_blend"), ({"title_blend": 0.5, "finetune_text_layers": 1}, "finetune_text_layers")],
)
def test_bad_title_blend_settings_fail(changes: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_model(ModelConfig(**{**dict(CFG), **changes}), LossConfig(), vocab_size=V, image_dim=D)


def test_a_blended_model_reads_title_embeddings_even_without_the_title_input() -> None:
    from itemsage.manifest import ManifestFields

    class Loaded(ManifestFields):
        def __init__(self, **changes: object) -> None:
            self.manifest, self.model = {}, _model(**changes)

    # Serve, the index job and the Python API compute title embeddings for new items only when
    # this says so: the served title part needs them as much as the tower's title input does.
    assert not Loaded(use_title_embedding=False, title_skip=False).uses_title_embedding
    assert Loaded(use_title_embedding=False, title_skip=False, title_blend=BLEND).uses_title_embedding
    assert Loaded().uses_title_embedding

"""Hubness-corrected scores (model.hubness_weight): the neighbour statistic, the extra coordinate
that carries it through any inner product, and what travels with the model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.model.test_text_prior import SMALL, VOCAB, catalog, store_of

from itemsage.config import LossConfig, ModelConfig
from itemsage.model import build_model
from itemsage.model.hubness import bank_rows, neighbour_similarity


def test_neighbour_similarity_leaves_out_the_item_itself_once() -> None:
    bank = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=1)
    cos_45 = 2**-0.5
    h1 = neighbour_similarity(bank, bank, 1)
    # Row 0 finds itself and its identical twin (row 1): only itself is left out.
    torch.testing.assert_close(h1, torch.tensor([1.0, 1.0, cos_45, cos_45]))
    h2 = neighbour_similarity(bank, bank, 2)
    torch.testing.assert_close(h2, torch.tensor([(1 + cos_45) / 2, (1 + cos_45) / 2, cos_45 / 2, cos_45]))
    # An item outside the bank has no self match: its top neighbours all count.
    new = F.normalize(torch.tensor([[1.0, 0.2]]), dim=1)
    top = torch.sort(new @ bank.T, descending=True).values[0]
    torch.testing.assert_close(neighbour_similarity(new, bank, 2), top[:2].mean()[None])
    # A bank smaller than neighbours + 1: every other row, the self match still out.
    torch.testing.assert_close(neighbour_similarity(bank[:2], bank[:2], 5), torch.tensor([1.0, 1.0]))
    assert neighbour_similarity(new, bank[:0], 1).tolist() == [0.0]
    with pytest.raises(ValueError, match="hubness_neighbors"):
        neighbour_similarity(new, bank, 0)
    with pytest.raises(ValueError, match="dimension"):
        neighbour_similarity(new, torch.ones(3, 5), 1)


def test_bank_rows_keeps_all_items_or_a_seeded_sample() -> None:
    assert bank_rows(5, 10).tolist() == [0, 1, 2, 3, 4]
    rows = bank_rows(100, 10, seed=3)
    assert rows.numel() == 10 and rows.unique().numel() == 10 and rows.equal(rows.sort().values)
    assert rows.equal(bank_rows(100, 10, seed=3))
    with pytest.raises(ValueError, match="hubness_bank_size"):
        bank_rows(5, 0)


@torch.no_grad()
def test_inner_products_score_q_dot_x_minus_weight_times_hubness() -> None:
    cfg = ModelConfig(**SMALL, hubness_weight=0.5, hubness_neighbors=2)
    torch.manual_seed(0)
    model = build_model(cfg, LossConfig(random_negatives=False), vocab_size=VOCAB, image_dim=8).eval()
    store = store_of(catalog(n_products=4, per_product=4))
    batch = store.gather(torch.arange(store.num_items))
    plain = model.embed_item_vectors(batch)
    assert model.output_dim == cfg.embedding_dim + 1
    # No bank yet (a checkpoint during training): the coordinate is there and zero, scores plain.
    assert model.embed_items(batch)[:, -1].abs().max() == 0
    model.set_hubness_bank(plain)
    items = model.embed_items(batch)
    assert items.shape == (16, cfg.embedding_dim + 1)
    torch.testing.assert_close(items[:, :-1], plain)
    h = neighbour_similarity(plain, plain, 2)
    assert float(h.min()) > 0
    feats = torch.randn(3, 8)  # closeup: image features (image_dim 8)
    queries = model.embed_queries("closeup", feats)
    assert queries[:, -1].tolist() == [1.0, 1.0, 1.0]
    torch.testing.assert_close(queries @ items.T, model.query_towers("closeup", feats) @ plain.T - 0.5 * h[None, :])
    # An item used as the query: its own coordinate is dropped, the query's 1 appended.
    torch.testing.assert_close(model.embed_item_queries(items), torch.cat([plain, torch.ones(16, 1)], dim=1))
    # Training never sees the coordinate.
    model.train()
    assert model.embed_items(batch).shape == (16, cfg.embedding_dim)
    assert model.embed_queries("closeup", feats).shape == (3, cfg.embedding_dim)
    model.eval()
    # Recorded: the bank travels in the state dict; a model saved without one loads with none.
    state = model.state_dict()
    again = build_model(cfg, LossConfig(random_negatives=False), vocab_size=VOCAB, image_dim=8).eval()
    again.load_state_dict(state)
    torch.testing.assert_close(again.embed_items(batch), items)
    old = {k: v for k, v in state.items() if k != "hubness_bank"}
    again.load_state_dict(old)
    assert again.hubness_bank.shape == (0, cfg.embedding_dim)
    assert again.embed_items(batch)[:, -1].abs().max() == 0
    # Off (the default): plain embedding_dim vectors.
    off = build_model(ModelConfig(**SMALL), LossConfig(random_negatives=False), vocab_size=VOCAB, image_dim=8).eval()
    off.load_state_dict(state)
    assert off.output_dim == cfg.embedding_dim
    assert off.embed_items(batch).shape == (16, cfg.embedding_dim)
    with pytest.raises(ValueError, match="hubness bank"):
        model.set_hubness_bank(torch.zeros(3, 7))


@pytest.mark.parametrize(
    ("key", "value"), [("hubness_weight", -0.1), ("hubness_neighbors", 0), ("hubness_bank_size", 0)]
)
def test_bad_hubness_settings_fail(key: str, value: float) -> None:
    with pytest.raises(ValueError, match=key):
        build_model(ModelConfig(**{**SMALL, key: value}), LossConfig(), vocab_size=VOCAB, image_dim=8)

"""build_model / ItemSageModel: the whole objective in one forward, sketch-driven logQ."""

from __future__ import annotations

import pytest
import torch

from itemsage.config import TEXT_FIELDS, LossConfig, ModelConfig
from itemsage.model.baselines import ConcatMLPTower
from itemsage.model.batch import ItemFeatureStore
from itemsage.model.factory import build_model
from itemsage.model.item_tower import ItemSageTower

D, V = 6, 120
CFG = ModelConfig(hidden_dim=32, num_heads=4, ffn_dim=64, head_hidden_dim=32, embedding_dim=16,
                  hash_buckets=97, hash_dim=16, dropout=0.0)
LOSS = LossConfig(num_random_negatives=3, cms_width=256, cms_depth=3)


def _store() -> ItemFeatureStore:
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(8):
        n = i % 3
        rows.append({
            "image_feats": torch.randn(n * D, generator=g).tolist(),
            "title_emb": torch.randn(384, generator=g).tolist(),
            **{f"tok_{f}": torch.randint(0, V, (i % 4,), generator=g).tolist() for f in TEXT_FIELDS[:3]},
        })
    return ItemFeatureStore.from_rows(rows, image_dim=D)


def _queries() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return {
        "search": (torch.tensor([0, 3]), torch.randn(2, 384, generator=g)),
        "closeup": (torch.tensor([1]), torch.randn(1, D, generator=g)),
        "home": (torch.tensor([2, 4]), torch.randn(2, D + 384, generator=g)),
    }


def test_forward_trains_every_part_and_updates_the_sketch() -> None:
    torch.manual_seed(0)
    model = build_model(CFG, LOSS, vocab_size=V, image_dim=D)
    assert isinstance(model.item_tower, ItemSageTower)
    store = _store()
    ids = torch.tensor([0, 5, 5, 2, 7])
    out = model(_queries(), store.gather(ids), ids, rand_items=store.gather(torch.tensor([1, 4, 6])),
                rand_ids=torch.tensor([1, 4, 6]))
    assert model.sketch.total == 5 and model.sketch.estimate(torch.tensor([5])).item() >= 2
    assert out["in_batch_loss"] > 0 and out["random_loss"] > 0
    out["loss"].backward()
    for name in ("search", "closeup", "home"):
        assert all(p.grad is not None for p in model.query_towers.projection(name).parameters()), name
    assert model.item_tower.text_embedding.table.grad.abs().sum() > 0
    assert model.loss.log_temperature.grad is not None
    assert "sketch.counts" in model.state_dict()
    model.eval()
    with torch.no_grad():
        model(_queries(), store.gather(ids), ids, rand_items=store.gather(torch.tensor([1])),
              rand_ids=torch.tensor([1]))
    assert model.sketch.total == 5  # evaluation does not count


def test_query_batch_rows_follow_their_surfaces() -> None:
    torch.manual_seed(0)
    model = build_model(CFG, LOSS, vocab_size=V, image_dim=D).eval()
    queries = _queries()
    mixed = model.embed_query_batch(queries, 5)
    for surface, (rows, feats) in queries.items():
        torch.testing.assert_close(mixed[rows], model.embed_queries(surface, feats))
    with pytest.raises(ValueError, match="cover"):
        model.embed_query_batch(queries, 6)


def test_mlp_arch_and_explicit_logq() -> None:
    model = build_model(CFG.replace(arch="mlp"), LOSS.replace(random_negatives=False),
                        vocab_size=V, image_dim=D)
    assert isinstance(model.item_tower, ConcatMLPTower)
    store = _store()
    ids = torch.tensor([0, 1, 2, 3, 4])
    out = model(_queries(), store.gather(ids), ids, item_logq=torch.log(torch.full((5,), 0.2)))
    assert model.sketch.total == 0  # given log q: the sketch is not consulted
    assert out["random_loss"].item() == 0.0
    assert model.embed_items(store.gather(ids)).shape == (5, 16)

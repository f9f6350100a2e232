"""train.hash_lr_scale: the hash embedding's own learning rate (keeps an IDF start near where it began)."""

from __future__ import annotations

import pytest

from itemsage.config import TEXT_FIELDS, ModelConfig, TrainConfig
from itemsage.train.loop import build_train_module, make_optimizer

SMALL = dict(
    embedding_dim=32, hidden_dim=32, num_heads=2, ffn_dim=64, head_hidden_dim=64, hash_buckets=256, hash_dim=32
)
VOCAB = 100


def test_hash_embedding_gets_its_own_learning_rate() -> None:
    tc = TrainConfig(model=ModelConfig(**SMALL), lr=1e-3, hash_lr_scale=0.1)
    module = build_train_module(tc, vocab_size=VOCAB, image_dim=8, num_text_fields=len(TEXT_FIELDS))
    opt = make_optimizer(module, tc)
    table = module.model.item_tower.text_embedding
    hashed = {id(table.table), id(table.importance)}
    groups = [g for g in opt.param_groups if any(id(p) in hashed for p in g["params"])]
    assert len(groups) == 1 and {id(p) for p in groups[0]["params"]} == hashed
    assert groups[0]["lr"] == pytest.approx(1e-4) and groups[0]["weight_decay"] == 0.0
    # At 1 (the default) the table trains with everything else.
    plain = make_optimizer(module, tc.replace(hash_lr_scale=1.0))
    assert all(g.get("lr", 1e-3) == pytest.approx(1e-3) for g in plain.param_groups)

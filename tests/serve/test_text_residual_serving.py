"""Serve and evaluation embed search queries with their tokens (model.text_residual) and apply the
model's popularity debiasing (model.popularity_debias), exactly as the model does itself."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from itemsage.config import LossConfig, ModelConfig, TextConfig
from itemsage.data.features_read import QueryFeatures
from itemsage.data.query_tokens import QueryTokenTable, query_token_ids
from itemsage.data.text import Vocab
from itemsage.eval.validation import ValSet, embed_queries
from itemsage.model import ItemFeatureStore, build_model
from itemsage.serve.encoders import project

TITLES = ["red leather boots", "blue cotton shirt", "green wool scarf", "black running shoes"]
CFG = dict(
    embedding_dim=32,
    hidden_dim=32,
    num_heads=2,
    ffn_dim=64,
    head_hidden_dim=64,
    hash_buckets=256,
    hash_dim=32,
    max_images=2,
    use_image=False,
    text_residual=True,
    popularity_debias=0.5,
)


def _model_and_vocab() -> tuple[Any, Vocab]:
    vocab = Vocab.build(TITLES, TextConfig())
    torch.manual_seed(0)
    model = build_model(ModelConfig(**CFG), LossConfig(random_negatives=False), vocab_size=vocab.size, image_dim=8)
    rows = [{"item_id": str(i), "tok_title": vocab.encode(t).tolist()} for i, t in enumerate(TITLES)]
    store = ItemFeatureStore.from_rows(rows, image_dim=8)
    feats = torch.randn(4, 384)
    tokens = query_token_ids(vocab, TITLES)
    model.train()
    model(
        {"search": (torch.arange(4), feats)}, store.gather(torch.arange(4)), torch.arange(4), None, None, None, tokens
    )
    return model.eval(), vocab


def test_serving_tokenizes_search_queries_with_the_versions_vocab() -> None:
    model, vocab = _model_and_vocab()
    assert float(model.mean_query("search").norm()) > 0  # the running mean the debias uses
    feats = torch.randn(4, 384)
    bundle = cast(Any, SimpleNamespace(model=model, vocab=vocab))
    served = project(bundle, "search", feats, TITLES)
    with torch.no_grad():
        direct = model.embed_queries("search", feats, query_token_ids(vocab, TITLES)).numpy()
        other_words = model.embed_queries("search", feats, query_token_ids(vocab, TITLES[::-1])).numpy()
        undebiased = F.normalize(
            model.query_towers("search", feats)
            + model.text_residual.embed_tokens(model.item_tower.text_embedding, query_token_ids(vocab, TITLES)),
            dim=-1,
        ).numpy()
    np.testing.assert_allclose(served, direct, atol=1e-6)
    assert not np.allclose(served, other_words, atol=1e-3)  # the words matter, not only MiniLM
    assert not np.allclose(served, undebiased, atol=1e-3)  # and the debiasing is applied


def test_evaluation_embeds_search_queries_with_their_tokens() -> None:
    model, vocab = _model_and_vocab()
    feats = torch.randn(4, 384)
    table = QueryTokenTable.encode(vocab, TITLES)
    qf = QueryFeatures(text_emb=feats, first_image=torch.zeros(4, 8), user_feat=None, search_tokens=table)
    val = ValSet(
        surfaces=np.array(["search"] * 4),
        tasks=np.array(["search/click"] * 4),
        query_key=np.arange(4),
        candidates=torch.arange(4),
        target=torch.arange(4),
        exclude=torch.full((4,), -1),
    )
    got = embed_queries(model, qf, val, torch.device("cpu"))
    with torch.no_grad():
        want = model.embed_queries("search", feats, query_token_ids(vocab, TITLES))
    torch.testing.assert_close(got, want)

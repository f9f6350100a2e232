"""The frozen MiniLM text query encoder (itemsage.data.text_encoder)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from itemsage.data.text_encoder import TextEncoder, minilm_path

TEXTS = [
    "red summer dress",
    "floral dress for the summer",
    "men's stainless steel watch",
    "Nike running shoes, size 10",
]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder()


def test_model_folder_is_packaged() -> None:
    path = minilm_path()
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def test_shape_norm_and_empty(encoder: TextEncoder) -> None:
    emb = encoder.encode(TEXTS + ["", "   "], batch_size=3)
    assert encoder.dim == 384
    assert emb.shape == (6, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb[:4], axis=1), 1.0, atol=1e-5)
    assert not emb[4:].any()  # no text -> zero vector
    assert encoder.encode([]).shape == (0, 384)
    # Length-sorted batching does not change results.
    np.testing.assert_allclose(encoder.encode(TEXTS, batch_size=1), emb[:4], atol=1e-5)


def test_similar_texts_closer(encoder: TextEncoder) -> None:
    emb = encoder.encode(TEXTS)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.2
    assert sim[0, 1] > sim[0, 3] + 0.2


def test_forward_matches_sentence_transformers(encoder: TextEncoder) -> None:
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(minilm_path()), device="cpu")
    model.max_seq_length = 64  # same truncation as ours
    long_text = " ".join(["very long product description"] * 40)  # > 64 word pieces
    texts = TEXTS + [long_text]
    expected = model.encode(texts, convert_to_numpy=True, normalize_embeddings=False)
    np.testing.assert_allclose(encoder.encode(texts), expected, atol=1e-5)
    batch = encoder.tokenize(texts, max_length=64)
    assert set(batch) == {"input_ids", "attention_mask"} and batch["input_ids"].shape[1] == 64
    with torch.inference_mode():
        np.testing.assert_allclose(encoder(**batch).numpy(), expected, atol=1e-5)


def test_frozen_by_default(encoder: TextEncoder) -> None:
    assert not any(p.requires_grad for p in encoder.parameters())
    assert not any(m.training for m in encoder.modules())
    assert not any("pooler" in k for k in encoder.state_dict())


def test_trainable_top_layers() -> None:
    enc = TextEncoder(trainable_layers=1)
    top = enc.model.encoder.layer[-1]
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable == {f"model.encoder.layer.5.{n}" for n, _ in top.named_parameters()}
    # No duplicate registration of the trainable layers in checkpoints.
    assert not any(k.startswith("_") for k in enc.state_dict())

    enc.train()
    assert enc.training and top.training
    assert not enc.model.embeddings.training and not enc.model.encoder.layer[0].training

    batch = enc.tokenize(TEXTS[:2])
    loss = enc(**batch)[0] @ enc(**batch)[1]
    loss.backward()
    grads = {n for n, p in enc.named_parameters() if p.grad is not None}
    assert grads == trainable

    # encode() gives eval-mode (dropout-free) embeddings and restores the training mode.
    a, b = enc.encode(TEXTS[:2]), enc.encode(TEXTS[:2])
    np.testing.assert_array_equal(a, b)
    assert enc.training and top.training

    with pytest.raises(ValueError, match="trainable_layers"):
        TextEncoder(trainable_layers=7)

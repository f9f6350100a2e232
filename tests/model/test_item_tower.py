"""Item towers (ItemSage transformer and concat-MLP): shapes, masking, ablation switches."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from itemsage.config import TEXT_FIELDS, ModelConfig
from itemsage.model.baselines import ConcatMLPTower, build_item_tower
from itemsage.model.batch import ItemBatch
from itemsage.model.item_tower import GroupedLinear, ItemSageTower

D, V, F = 12, 200, len(TEXT_FIELDS)
SMALL = ModelConfig(
    hidden_dim=32, num_heads=8, ffn_dim=64, head_hidden_dim=48, embedding_dim=16,
    hash_buckets=101, hash_dim=24, dropout=0.0,
    use_title_embedding=False, title_skip=False,  # the paper's tower; the title tests switch it on
)


def _batch(n_images: list[int], text_lens: list[list[int]], seed: int = 0) -> ItemBatch:
    g = torch.Generator().manual_seed(seed)
    b, m = len(n_images), max(n_images)
    mask = torch.arange(m).unsqueeze(0) < torch.tensor(n_images).unsqueeze(1)
    feats = torch.randn(b, m, D, generator=g) * mask.unsqueeze(-1)
    lens = torch.tensor([x for row in text_lens for x in row])
    ids = torch.randint(0, V, (int(lens.sum()),), generator=g)
    offsets = torch.cumsum(lens, 0) - lens
    return ItemBatch(feats, mask, ids, offsets, (lens > 0).reshape(b, F))


def _lens(rows: int, seed: int = 0, empty: bool = False) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [[0] * F if empty else torch.randint(0, 6, (F,), generator=g).tolist() for _ in range(rows)]


def _tower(cls: type = ItemSageTower, **overrides: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return cls(SMALL.replace(**overrides), V, D).eval()


@pytest.mark.parametrize("cls", [ItemSageTower, ConcatMLPTower])
def test_zero_to_twenty_images_and_empty_text(cls: type) -> None:
    tower = _tower(cls)
    n_images = [0, 1, 3, 20, 0, 7]
    lens = _lens(6)
    lens[4] = [0] * F  # no images and no text at all
    lens[1] = [0] * F
    out = tower(_batch(n_images, lens))
    assert out.shape == (6, 16)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.norm(dim=1), torch.ones(6))


@pytest.mark.parametrize("cls", [ItemSageTower, ConcatMLPTower])
def test_padding_is_ignored(cls: type) -> None:
    tower = _tower(cls)
    batch = _batch([2, 1], _lens(2))
    padded = _batch([2, 1], _lens(2))
    # Same items, wider padding full of garbage: the output must not move.
    garbage = torch.full((2, 5, D), 7.0)
    padded.image_feats = torch.cat([batch.image_feats, garbage], 1)
    padded.image_mask = torch.cat([batch.image_mask, torch.zeros(2, 5, dtype=torch.bool)], 1)
    padded.image_feats[1, 1] = -3.0  # item 1's second slot is padding too
    torch.testing.assert_close(tower(padded), tower(batch), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cls", [ItemSageTower, ConcatMLPTower])
def test_image_only_ignores_text_and_text_only_ignores_images(cls: type) -> None:
    a = _batch([2, 3, 1], _lens(3, seed=1), seed=1)
    b = _batch([2, 3, 1], _lens(3, seed=2), seed=2)  # same image counts, different everything
    text_of_b = ItemBatch(a.image_feats, a.image_mask, b.text_ids, b.text_offsets, b.text_mask)
    images_of_b = ItemBatch(b.image_feats, b.image_mask, a.text_ids, a.text_offsets, a.text_mask)

    image_only = _tower(cls, use_text=False)
    torch.testing.assert_close(image_only(a), image_only(text_of_b), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(image_only(a), image_only(images_of_b), atol=1e-3)

    text_only = _tower(cls, use_image=False)
    torch.testing.assert_close(text_only(a), text_only(images_of_b), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(text_only(a), text_only(text_of_b), atol=1e-3)

    both = _tower(cls)
    assert not torch.allclose(both(a), both(text_of_b), atol=1e-3)
    assert not torch.allclose(both(a), both(images_of_b), atol=1e-3)


def test_max_images_caps_the_sequence() -> None:
    tower = _tower(max_images=2)
    batch = _batch([4, 3], _lens(2))
    cut = ItemBatch(batch.image_feats[:, :2], batch.image_mask[:, :2], batch.text_ids, batch.text_offsets,
                    batch.text_mask)
    torch.testing.assert_close(tower(batch), tower(cut))


def test_gradients_reach_hash_table_and_weights() -> None:
    tower = _tower().train()
    tower(_batch([1, 2], _lens(2))).sum().backward()
    emb = tower.text_embedding
    assert emb.table.grad is not None and emb.table.grad.abs().sum() > 0
    assert emb.importance.grad is not None and emb.importance.grad.abs().sum() > 0
    assert tower.image_proj.weight.grad.abs().sum() > 0
    assert tower.text_proj.weight.grad.abs().sum() > 0


def test_default_config_structure() -> None:
    cfg = ModelConfig(hash_buckets=1000)  # paper sizes except a small table, to keep the test fast
    tower = ItemSageTower(cfg, vocab_size=V, image_dim=1280)
    assert tower.text_proj.weight.shape == (12, 256, 512)
    assert tower.image_proj.weight.shape == (512, 1280)
    assert len(tower.encoder.layers) == 1 and tower.encoder.layers[0].self_attn.num_heads == 8
    assert tower.head.fc1.weight.shape == (1024, 512) and tower.head.fc2.weight.shape == (256, 1024)
    assert tower.text_embedding.importance.shape == (V, 2)
    assert tower.title_proj.weight.shape == (512, 384) and tower.title_skip is not None
    batch = dataclasses.replace(_batch_dim([3, 0], 1280), title_emb=torch.randn(2, 384))
    out = tower.eval()(batch)
    assert out.shape == (2, 256)


def _batch_dim(n_images: list[int], dim: int) -> ItemBatch:
    b, m = len(n_images), max(n_images)
    mask = torch.arange(m).unsqueeze(0) < torch.tensor(n_images).unsqueeze(1)
    lens = torch.tensor([2] * (b * F))
    return ItemBatch(torch.randn(b, m, dim) * mask.unsqueeze(-1), mask, torch.arange(int(lens.sum())) % V,
                     torch.cumsum(lens, 0) - lens, torch.ones(b, F, dtype=torch.bool))


def test_concat_mlp_shapes_and_factory() -> None:
    mlp = build_item_tower(SMALL.replace(arch="mlp"), V, D)
    assert isinstance(mlp, ConcatMLPTower)
    assert mlp.mlp[1].in_features == D + F * SMALL.hash_dim
    assert mlp(_batch([0, 4], _lens(2))).shape == (2, 16)
    assert isinstance(build_item_tower(SMALL, V, D), ItemSageTower)
    with pytest.raises(ValueError, match="arch"):
        build_item_tower(SMALL.replace(arch="rnn"), V, D)
    with pytest.raises(ValueError):
        ItemSageTower(SMALL.replace(use_image=False, use_text=False), V, D)


def test_grouped_linear_is_one_linear_per_group() -> None:
    torch.manual_seed(0)
    layer = GroupedLinear(3, 4, 5)
    x = torch.randn(2, 3, 4)
    want = torch.stack([x[:, g] @ layer.weight[g] + layer.bias[g] for g in range(3)], dim=1)
    torch.testing.assert_close(layer(x), want)


def test_bf16_autocast_forward_stays_bf16_and_unit_norm() -> None:
    tower = _tower()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = tower(_batch([0, 2, 5], _lens(3)))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float().norm(dim=1), torch.ones(3), atol=1e-2, rtol=0)


def _with_titles(batch: ItemBatch, titles: torch.Tensor) -> ItemBatch:
    return dataclasses.replace(batch, title_emb=titles)


@pytest.mark.parametrize(("cls", "skip"), [(ItemSageTower, False), (ItemSageTower, True), (ConcatMLPTower, False)])
def test_title_embedding_is_an_input_and_a_zero_title_is_no_title(cls: type, skip: bool) -> None:
    tower = _tower(cls, use_title_embedding=True, title_skip=skip)
    base = _batch([1, 0, 2], _lens(3))
    g = torch.Generator().manual_seed(5)
    titles = torch.randn(3, 384, generator=g)
    out = tower(_with_titles(base, titles))
    other = titles.clone()
    other[1] = torch.randn(384, generator=g)
    moved = tower(_with_titles(base, other))
    assert not torch.allclose(out[1], moved[1], atol=1e-3), "the title must change its item's embedding"
    torch.testing.assert_close(out[[0, 2]], moved[[0, 2]], atol=1e-6, rtol=1e-5)
    # The image-only ablation drops the title like the rest of the text.
    image_only = _tower(cls, use_title_embedding=True, title_skip=skip, use_text=False)
    torch.testing.assert_close(image_only(_with_titles(base, titles)), image_only(_with_titles(base, other)))
    if cls is ItemSageTower:
        # An all-zero title is masked out of attention (and out of the skip path).
        zero = titles.clone()
        zero[1] = 0
        a = tower(_with_titles(base, zero))
        b = tower(_with_titles(base, zero * 0))
        torch.testing.assert_close(a[1], b[1], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cls", [ItemSageTower, ConcatMLPTower])
def test_a_title_tower_without_titles_is_a_clear_error(cls: type) -> None:
    tower = _tower(cls, use_title_embedding=True)
    with pytest.raises(ValueError, match="title embeddings"):
        tower(_batch([1], _lens(1)))


def test_title_skip_starts_as_the_search_query_projection() -> None:
    from itemsage.config import LossConfig
    from itemsage.model import build_model

    model = build_model(SMALL.replace(use_title_embedding=True, title_skip=True), LossConfig(), V, D)
    titles = torch.randn(4, 384)
    torch.testing.assert_close(model.item_tower.title_skip(titles), model.query_towers("search", titles))


def test_gather_carries_title_embeddings() -> None:
    from itemsage.model import ItemFeatureStore

    rows = [{"item_id": "a", "title_emb": [1.0] * 384}, {"item_id": "b"}]
    batch = ItemFeatureStore.from_rows(rows, image_dim=D).gather(torch.tensor([1, 0]))
    assert batch.title_emb is not None
    torch.testing.assert_close(batch.title_emb, torch.stack([torch.zeros(384), torch.ones(384)]))
    assert batch.to("cpu").title_emb is not None


def test_batch_embedding_refuses_rows_without_titles_for_a_title_tower() -> None:
    import pyarrow as pa

    from itemsage.index.tower_udf import EmbedError, embed_rows

    rows = pa.table({"item_id": ["a"], "image_feats": pa.array([[]], pa.list_(pa.float32())),
                     **{f"tok_{f}": pa.array([[1, 2]], pa.list_(pa.int32())) for f in TEXT_FIELDS}})
    with pytest.raises(EmbedError, match="title_emb"):
        embed_rows(_tower(use_title_embedding=True), rows, D, TEXT_FIELDS, 4, "v1")
    out = embed_rows(_tower(), rows, D, TEXT_FIELDS, 4, "v1")  # the paper's tower needs no title
    assert out.num_rows == 1 and len(out.column("embedding")[0]) == 16


@pytest.mark.parametrize("text_residual", [False, True])
def test_image_skip_ties_the_closeup_projection_and_starts_a_photo_query_near_its_item(text_residual: bool) -> None:
    from itemsage.config import LossConfig
    from itemsage.model import build_model

    cfg = SMALL.replace(image_skip=True, text_residual=text_residual, query_residual=True, hidden_dim=32)
    torch.manual_seed(0)
    model = build_model(cfg, LossConfig(random_negatives=False), vocab_size=V, image_dim=D).eval()
    assert model.item_tower.image_skip is model.query_towers.projection("closeup")
    batch = _batch([2, 2, 2, 2, 2, 2], _lens(6, empty=True))
    items = model.embed_item_vectors(batch)
    photos = model.embed_queries("closeup", batch.image_feats[:, 0])
    # Each photo query scores its own item above the others: the skip carries the photo's
    # features into the item side through the same projection.
    scores = photos @ items.T
    assert torch.equal(scores.argmax(1), torch.arange(6)), scores
    # Without the skip (same seed), the items' photos reach the output only through the random
    # transformer and head: no such alignment.
    torch.manual_seed(0)
    plain = build_model(cfg.replace(image_skip=False), LossConfig(random_negatives=False), vocab_size=V, image_dim=D)
    plain.eval()
    plain_scores = plain.embed_queries("closeup", batch.image_feats[:, 0]) @ plain.embed_item_vectors(batch).T
    assert scores.diagonal().mean() > plain_scores.diagonal().mean() + 0.1
    # An item without an image gets nothing from the skip, whatever its gate.
    no_image = dataclasses.replace(
        batch, image_feats=torch.zeros_like(batch.image_feats), image_mask=torch.zeros_like(batch.image_mask)
    )
    gated_off = model.embed_item_vectors(no_image)
    model.item_tower.image_gate.data.fill_(5.0)
    torch.testing.assert_close(model.embed_item_vectors(no_image), gated_off)


def test_image_skip_is_off_in_the_text_only_ablation() -> None:
    tower = _tower(image_skip=True, use_image=False)
    assert tower.image_skip is None
    assert _tower(image_skip=True).image_skip is not None

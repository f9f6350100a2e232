"""ItemFeatureStore: items.parquet (feature-format.md) -> vectorised ItemBatch gathers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from itemsage.config import TEXT_FIELDS
from itemsage.model.batch import ItemBatch, ItemFeatureStore

D = 4
F = len(TEXT_FIELDS)


def _rows() -> list[dict]:
    """Five items: 2 images / 0 images / 25 images (> max) / 1 image / 0 images, assorted text."""
    rng = np.random.default_rng(0)
    n_images = [2, 0, 25, 1, 0]
    rows = []
    for i, n in enumerate(n_images):
        row: dict = {
            "item_idx": i,
            "item_id": f"sku-{i}",
            "n_images": n,
            "image_feats": (rng.normal(size=n * D).astype(np.float32) + 100 * i).tolist(),
            "title_emb": rng.normal(size=384).astype(np.float32).tolist(),
        }
        for j, fld in enumerate(TEXT_FIELDS):
            k = (i + j) % 4 if i != 4 else 0  # item 4: every field empty
            row[f"tok_{fld}"] = [1000 * i + 10 * j + t for t in range(k)]
        rows.append(row)
    return rows


def _write_features(tmp: Path, rows: list[dict]) -> Path:
    schema = pa.schema(
        [("item_idx", pa.int64()), ("item_id", pa.string()), ("n_images", pa.int32()),
         ("image_feats", pa.list_(pa.float32())), ("title_emb", pa.list_(pa.float32()))]
        + [(f"tok_{f}", pa.list_(pa.int32())) for f in TEXT_FIELDS]
    )
    # Shuffled row order on disk: the loader must order by item_idx.
    pq.write_table(pa.Table.from_pylist([rows[i] for i in (3, 0, 4, 2, 1)], schema=schema), tmp / "items.parquet")
    manifest = {"version": 1, "image_dim": D, "text_query_dim": 384, "text_fields": list(TEXT_FIELDS)}
    (tmp / "manifest.json").write_text(json.dumps(manifest))
    return tmp


def _expected_images(row: dict, max_images: int) -> np.ndarray:
    return np.asarray(row["image_feats"], np.float32).reshape(-1, D)[:max_images]


def _check_batch(batch: ItemBatch, rows: list[dict], idx: list[int], max_images: int) -> None:
    b = len(idx)
    m = max(min(rows[i]["n_images"], max_images) for i in idx)
    assert batch.batch_size == b
    assert batch.image_feats.shape == (b, m, D) and batch.image_mask.shape == (b, m)
    assert batch.text_offsets.shape == (b * F,) and batch.text_mask.shape == (b, F)
    bounds = batch.text_offsets.tolist() + [batch.text_ids.numel()]
    for r, i in enumerate(idx):
        want = _expected_images(rows[i], max_images)
        k = want.shape[0]
        assert batch.image_mask[r].tolist() == [True] * k + [False] * (m - k)
        np.testing.assert_array_equal(batch.image_feats[r, :k].numpy(), want)
        assert torch.all(batch.image_feats[r, k:] == 0)
        for j, fld in enumerate(TEXT_FIELDS):
            bag = batch.text_ids[bounds[r * F + j] : bounds[r * F + j + 1]].tolist()
            assert bag == rows[i][f"tok_{fld}"]
            assert bool(batch.text_mask[r, j]) == bool(rows[i][f"tok_{fld}"])


def test_load_and_gather_match_the_rows(tmp_path: Path) -> None:
    rows = _rows()
    store = ItemFeatureStore.load(str(_write_features(tmp_path, rows)), max_images=20)
    assert store.num_items == 5 and store.image_dim == D
    assert store.item_ids == [f"sku-{i}" for i in range(5)]
    idx = [2, 0, 4, 4, 1, 3]  # repeats allowed
    _check_batch(store.gather(torch.tensor(idx)), rows, idx, 20)
    np.testing.assert_array_equal(store.title_emb.numpy(), np.array([r["title_emb"] for r in rows], np.float32))
    assert store.has_image.tolist() == [True, False, True, True, False]
    np.testing.assert_array_equal(store.first_image_feat[2].numpy(), _expected_images(rows[2], 1)[0])
    assert torch.all(store.first_image_feat[1] == 0)


def test_max_images_cap_and_no_image_batches(tmp_path: Path) -> None:
    rows = _rows()
    store = ItemFeatureStore.load(str(_write_features(tmp_path, rows)), max_images=3)
    _check_batch(store.gather(torch.tensor([2, 3])), rows, [2, 3], 3)
    empty = store.gather(torch.tensor([1, 4]))
    assert empty.image_feats.shape == (2, 0, D)
    assert not empty.text_mask[1].any() and empty.text_ids.numel() == sum(
        len(rows[1][f"tok_{f}"]) for f in TEXT_FIELDS
    )
    with pytest.raises(IndexError):
        store.gather(torch.tensor([5]))


def test_from_rows_equals_load(tmp_path: Path) -> None:
    rows = _rows()
    loaded = ItemFeatureStore.load(str(_write_features(tmp_path, rows)))
    built = ItemFeatureStore.from_rows(rows, image_dim=D)
    for name in ("image_values", "image_offsets", "token_ids", "token_offsets", "title_emb"):
        assert torch.equal(getattr(loaded, name), getattr(built, name)), name
    # Missing keys mean empty fields, no images and a zero title embedding.
    sparse = ItemFeatureStore.from_rows([{"tok_brand": [7, 8]}, {}], image_dim=D)
    batch = sparse.gather(torch.tensor([0, 1]))
    assert batch.image_feats.shape == (2, 0, D)
    assert batch.text_ids.tolist() == [7, 8]
    assert batch.text_mask[0].tolist() == [f == "brand" for f in TEXT_FIELDS]
    assert torch.all(sparse.title_emb == 0)
    with pytest.raises(ValueError):
        ItemFeatureStore.from_rows([{"image_feats": [1.0] * (D + 1)}], image_dim=D)


def test_user_feats_follow_the_home_rule() -> None:
    rows = _rows()
    store = ItemFeatureStore.from_rows(rows, image_dim=D)
    histories = [[0, 1, 2], [1, 4], [], [3]]
    got = store.user_feats(histories).numpy()
    assert got.shape == (4, D + 384)
    for u, hist in enumerate(histories):
        firsts = [_expected_images(rows[i], 1)[0] for i in hist if rows[i]["n_images"] > 0]
        img = np.mean(firsts, axis=0) if firsts else np.zeros(D)
        title = np.mean([rows[i]["title_emb"] for i in hist], axis=0) if hist else np.zeros(384)
        np.testing.assert_allclose(got[u], np.concatenate([img, title]), rtol=1e-5, atol=1e-5)


def test_batch_to_keeps_every_field() -> None:
    store = ItemFeatureStore.from_rows(_rows(), image_dim=D)
    batch = store.gather(torch.tensor([0, 2]))
    moved = batch.to("cpu")
    for name in ("image_feats", "image_mask", "text_ids", "text_offsets", "text_mask"):
        assert torch.equal(getattr(moved, name), getattr(batch, name))

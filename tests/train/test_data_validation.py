import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from itemsage.data.features_read import FeaturesError, QueryFeatures, read_pairs
from itemsage.eval.recall import RecallTable
from itemsage.eval.validation import baseline_recall, build_val_set, recall_metrics
from itemsage.model import ItemFeatureStore
from itemsage.train.data import TrainInputError, cached_cycle, heldout_items, sample_negatives
from itemsage.train.loop import negative_pool


def test_missing_features_and_empty_splits_fail_with_the_path(tmp_path: Path, synthetic_features: Path) -> None:
    with pytest.raises(FeaturesError, match="does not exist; run experiments/preprocess.py"):
        read_pairs(str(tmp_path / "nowhere"), "train")
    broken = tmp_path / "f"
    shutil.copytree(synthetic_features, broken)
    (broken / "pairs" / "val.parquet").unlink()
    with pytest.raises(FeaturesError, match="no pairs/val.parquet"):
        read_pairs(str(broken), "val")
    table = pq.read_table(broken / "pairs" / "test.parquet")
    pq.write_table(table.slice(0, 0), broken / "pairs" / "test.parquet")
    with pytest.raises(FeaturesError, match="split 'test' .* has no pairs"):
        read_pairs(str(broken), "test")
    with pytest.raises(FeaturesError, match="for surfaces \\['nothing'\\]"):
        read_pairs(str(synthetic_features), "train", ["nothing"])


def test_read_pairs_filters_surfaces(synthetic_features: Path) -> None:
    pairs = read_pairs(str(synthetic_features), "train", ["search"])
    assert set(pairs["surface"]) == {"search"} and pairs["item_idx"].dtype == np.int64


def test_cached_cycle_streams_once_then_reshuffles_forever() -> None:
    first = [{"x": np.arange(0, 5)}, {"x": np.arange(5, 8)}]
    consumed = []

    def source():
        for c in first:
            consumed.append(len(c["x"]))
            yield c

    it = cached_cycle(source(), seed=1, chunk_rows=4)
    head = [next(it)["x"].tolist() for _ in range(2)]
    assert head == [[0, 1, 2, 3, 4], [5, 6, 7]]
    epoch2 = np.concatenate([next(it)["x"], next(it)["x"]])
    epoch3 = np.concatenate([next(it)["x"], next(it)["x"]])
    assert sorted(epoch2.tolist()) == list(range(8)) == sorted(epoch3.tolist())
    assert epoch2.tolist() != epoch3.tolist()
    assert consumed == [5, 3]  # the source was read exactly once


def test_cached_cycle_refuses_a_shard_smaller_than_a_batch() -> None:
    it = cached_cycle([{"x": np.arange(3)}], seed=0, min_rows=8)
    assert next(it)["x"].tolist() == [0, 1, 2]  # the first pass streams as it arrives
    with pytest.raises(TrainInputError, match="3 usable pairs, fewer than 8"):
        next(it)


def test_query_features_follow_the_feature_format(synthetic_features: Path) -> None:
    store = ItemFeatureStore.load(str(synthetic_features))
    qf = QueryFeatures.load(str(synthetic_features), store)
    surfaces = np.array(["home", "search", "closeup", "search"])
    keys = np.array([2, 5, 7, 0])
    groups = qf.groups(surfaces, keys)
    assert groups["search"][0].tolist() == [1, 3]
    assert torch.equal(groups["search"][1], qf.text_emb[[5, 0]])
    assert torch.equal(groups["closeup"][1], store.first_image_feat[[7]])
    assert groups["home"][1].shape == (1, 16 + 384)


def test_random_negatives_never_come_from_held_out_items(synthetic_features: Path) -> None:
    held = heldout_items(str(synthetic_features))
    pool = negative_pool(240, held)
    assert len(held) > 0 and not np.isin(pool.numpy(), held).any()
    draws = sample_negatives(pool, 500, torch.Generator().manual_seed(0))
    assert not np.isin(draws.numpy(), held).any()


def test_val_set_excludes_the_closeup_query_item() -> None:
    pairs = {
        "surface": np.array(["closeup", "search", "closeup"]),
        "task": np.array(["closeup/click", "search/click", "closeup/save"]),
        "query_key": np.array([7, 0, 99]),
        "item_idx": np.array([3, 7, 5]),
    }
    val = build_val_set(pairs, num_items=100, catalog="split")
    assert val.candidates.tolist() == [3, 5, 7]
    assert val.target.tolist() == [0, 2, 1]
    assert val.exclude.tolist() == [2, -1, -1]  # item 7 is a candidate; 99 is not
    assert build_val_set(pairs, num_items=100, catalog="all").candidates.numel() == 100


def test_frozen_baseline_exact_ranks() -> None:
    # Two items; item 1's title matches the search query, item 0's image matches the closeup query.
    title = torch.zeros(3, 384)
    title[0, 0], title[1, 1], title[2, 2] = 1.0, 1.0, 1.0
    store = ItemFeatureStore(
        image_values=torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]]),
        image_offsets=torch.tensor([0, 1, 2, 3]),
        token_ids=torch.zeros(0, dtype=torch.long),
        token_offsets=torch.zeros(3 * 12 + 1, dtype=torch.long),
        title_emb=title,
    )
    q = torch.zeros(1, 384)
    q[0, 1] = 1.0
    qf = QueryFeatures(text_emb=q, first_image=store.first_image_feat, user_feat=None)
    pairs = {
        "surface": np.array(["search", "closeup"]),
        "task": np.array(["search/click", "closeup/click"]),
        "query_key": np.array([0, 2]),
        "item_idx": np.array([1, 0]),
    }
    val = build_val_set(pairs, 3, "all")
    table = baseline_recall(store, qf, val, RecallTable(ks=(1,)))
    assert table.get("frozen", "search/click", 1) == 1.0  # title 1 is the exact match
    assert table.get("frozen", "closeup/click", 1) == 1.0  # item 2 itself is excluded, item 0 wins
    metrics = recall_metrics(table, "frozen", "val", k=1)
    assert metrics["val/recall_at_1"] == 1.0 and "val/search/all/recall_at_1" in metrics

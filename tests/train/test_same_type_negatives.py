"""Mixed negative sampling (loss.same_type_negatives) and its logQ-consistent correction."""

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from itemsage.config import LossConfig
from itemsage.data.features_read import FeaturesError, item_kinds
from itemsage.model.loss import SampledSoftmaxLoss
from itemsage.train.data import MixedNegativeSampler
from itemsage.train.plain import run_steps, setup_plain

# 12 items: kinds 0 (items 0-5), 1 (items 6-8), 2 (item 9), none (items 10, 11).
KINDS = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 2, -1, -1])
POOL = torch.arange(12)


def test_zero_fraction_is_the_uniform_draw_with_no_correction() -> None:
    s = MixedNegativeSampler(POOL, KINDS, 0.0)
    ids, logw = s.sample(64, torch.tensor([6, 7]), torch.Generator().manual_seed(0))
    assert ids.shape == (64,) and torch.equal(logw, torch.zeros(64))


def test_typed_draws_come_from_the_positives_types_only() -> None:
    s = MixedNegativeSampler(POOL, KINDS, 1.0)
    ids, _ = s.sample(500, torch.tensor([6, 9]), torch.Generator().manual_seed(1))
    kinds = set(KINDS[ids.numpy()].tolist())
    assert kinds == {1, 2}  # every draw of kind 1 or 2, both drawn
    assert set(ids.numpy()[KINDS[ids.numpy()] == 1].tolist()) == {6, 7, 8}


def test_untyped_positives_fall_back_to_uniform_and_the_pool_is_respected() -> None:
    pool = torch.tensor([0, 1, 6, 7, 10])  # items 2-5, 8, 9, 11 held out
    s = MixedNegativeSampler(pool, KINDS, 1.0)
    ids, _ = s.sample(400, torch.tensor([10, 11]), torch.Generator().manual_seed(2))
    assert set(ids.tolist()) <= set(pool.tolist())
    assert len(set(ids.tolist())) == 5  # uniform over the pool: every pool item turns up
    ids, _ = s.sample(300, torch.tensor([9]), torch.Generator().manual_seed(3))  # kind 2 has no pool item
    assert set(ids.tolist()) <= set(pool.tolist())


def test_log_weight_is_the_draw_probability_against_uniform() -> None:
    """Empirical frequencies over many draws match exp(log_weight) / |pool|."""
    s = MixedNegativeSampler(POOL, KINDS, 0.5)
    positives = torch.tensor([0, 1, 6, 10])  # kinds 0, 0, 1, none
    g = torch.Generator().manual_seed(4)
    counts = torch.zeros(12)
    logw_of = torch.zeros(12)
    n, rounds = 200, 400
    for _ in range(rounds):
        ids, logw = s.sample(n, positives, g)
        counts += torch.bincount(ids, minlength=12).float()
        logw_of[ids] = logw
    freq = counts / (n * rounds)
    expected = torch.exp(logw_of) / 12
    # q_j = 0.5 / 12 + 0.5 * (1/4 / 12 + share_t / |t|): kind 0 share 1/2 over 6 items, kind 1 1/4 over 3.
    torch.testing.assert_close(expected[0], torch.tensor(0.5 / 12 + 0.5 * (0.25 / 12 + 0.5 / 6)))
    torch.testing.assert_close(expected[9], torch.tensor(0.5 / 12 + 0.5 * 0.25 / 12))
    torch.testing.assert_close(freq, expected, atol=4e-3, rtol=0.05)
    assert abs(float(expected.sum()) - 1.0) < 1e-5


def test_fraction_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="same_type_negatives"):
        MixedNegativeSampler(POOL, KINDS, 1.5)


def test_loss_subtracts_the_log_weight_from_random_negatives_only() -> None:
    torch.manual_seed(0)
    q, pos, neg = torch.randn(3, 8), torch.randn(3, 8), torch.randn(5, 8)
    ids, rand_ids = torch.tensor([0, 1, 2]), torch.tensor([10, 11, 12, 13, 14])
    logw = torch.tensor([0.0, 2.0, 0.0, -1.0, 0.5])
    cfg = LossConfig(in_batch_negatives=False, same_type_negatives=0.5)
    on = SampledSoftmaxLoss(cfg)(q, pos, ids, None, neg, rand_ids, logw)["random_loss"]
    off = SampledSoftmaxLoss(cfg.replace(same_type_logq=False))(q, pos, ids, None, neg, rand_ids, logw)["random_loss"]
    plain = SampledSoftmaxLoss(cfg)(q, pos, ids, None, neg, rand_ids)["random_loss"]
    torch.testing.assert_close(off, plain)
    # By hand: logits scale * cos, negatives shifted by -logw, label column 0 untouched.
    qn, pn, nn_ = (torch.nn.functional.normalize(x, dim=-1) for x in (q, pos, neg))
    scale = 1 / 0.07
    logits = torch.cat([scale * (qn * pn).sum(-1, keepdim=True), scale * qn @ nn_.T - logw], dim=1)
    torch.testing.assert_close(on, torch.nn.functional.cross_entropy(logits, torch.zeros(3, dtype=torch.long)))
    assert not torch.allclose(on, plain)


@pytest.fixture
def typed_features(synthetic_features: Path, tmp_path: Path) -> Path:
    """The synthetic features plus a catalog.parquet: product_types for most items, a category
    path's leaf for some, neither for the rest."""
    out = tmp_path / "typed"
    shutil.copytree(synthetic_features, out)
    n = pq.read_metadata(out / "items.parquet").num_rows
    types = [["Shirts", "Heels", ""][i % 3] for i in range(n)]
    paths = ["Apparel > Topwear > Tshirts" if i % 6 == 2 else "" for i in range(n)]
    pq.write_table(pa.table({"product_types": types, "category_path": paths}), out / "catalog.parquet")
    return out


def test_item_kinds_reads_product_types_then_the_category_leaf(typed_features: Path, synthetic_features: Path) -> None:
    kinds = item_kinds(str(typed_features))
    # Sorted names: heels 0, shirts 1, tshirts 2.
    assert kinds[:6].tolist() == [1, 0, 2, 1, 0, -1]
    with pytest.raises(FeaturesError, match="catalog.parquet"):
        item_kinds(str(synthetic_features))


def test_training_with_same_type_negatives_draws_them_and_learns(
    typed_features: Path, tmp_path: Path, make_config
) -> None:
    run = setup_plain(
        make_config(typed_features, tmp_path, "t", ["train.max_steps=20", "train.loss.same_type_negatives=0.5"])
    )
    assert run.stepper.sampler is not None and run.stepper.sampler.fraction == 0.5
    outs, _ = run_steps(run, 20)
    assert all(o.finite for o in outs) and outs[-1].loss < outs[0].loss

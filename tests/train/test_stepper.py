"""The training step itself, in one process (the Ray loop runs this same Stepper)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from itemsage.config import SURFACES
from itemsage.data.features_read import read_pairs
from itemsage.eval.validation import build_val_set, model_recall, recall_metrics
from itemsage.train.plain import run_steps, setup_plain


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _val_recall(run) -> float:
    val = build_val_set(read_pairs(run.cfg.train.features, "val"), run.store.num_items)
    table = model_recall(run.model, run.store, run.qf, val, torch.device("cpu"))
    return recall_metrics(table, "itemsage")["val/recall_at_10"]


def test_training_learns_the_synthetic_structure(synthetic_features: Path, tmp_path: Path, make_config) -> None:
    run = setup_plain(make_config(synthetic_features, tmp_path, "s", ["train.max_steps=60"]))
    before = _val_recall(run)
    outs, _ = run_steps(run, 60)
    after = _val_recall(run)
    assert all(o.finite for o in outs)
    assert np.mean([o.loss for o in outs[-10:]]) < np.mean([o.loss for o in outs[:5]])
    assert after > before + 0.1, (before, after)
    assert 0.01 <= outs[-1].temperature <= 0.2
    # The sketch counted every positive (32 per step).
    assert int(run.model.sketch.total_count) == 60 * 32


def test_batches_mix_tasks_by_quota(synthetic_features: Path, tmp_path: Path, make_config) -> None:
    run = setup_plain(
        make_config(synthetic_features, tmp_path, "q", ["train.task_quotas={search/click: 6.0}", "train.surfaces=[search]"])
    )
    batch = next(run.batches)
    assert set(batch["surface"]) == {"search"}
    # search/click has quota 6 against 1 for the other three search tasks: 6/9 of 32 rows.
    assert (batch["task"] == "search/click").sum() == round(32 * 6 / 9)


def test_lamb_optimizer_trains_too(synthetic_features: Path, tmp_path: Path, make_config) -> None:
    run = setup_plain(make_config(synthetic_features, tmp_path, "l", ["train.optimizer=lamb", "train.max_steps=20"]))
    outs, _ = run_steps(run, 20)
    assert all(o.finite for o in outs) and outs[-1].loss < outs[0].loss


def test_non_finite_loss_skips_the_update(synthetic_features: Path, tmp_path: Path, make_config) -> None:
    run = setup_plain(make_config(synthetic_features, tmp_path, "n", ["train.max_steps=5"]))
    run_steps(run, 2)
    # Running statistics of the forward pass (the sketch's counts, the mean query of the surfaces
    # whose queries were finite) may move; parameters and optimizer state may not.
    running = ("sketch.", "query_mean")
    before = {k: v.clone() for k, v in run.model.state_dict().items() if not k.startswith(running)}
    run.qf.text_emb[:] = float("nan")  # every search query now yields a NaN loss
    outs, _ = run_steps(run, 3)
    assert len(outs) == 1 and not outs[0].finite
    after = run.model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert run.scheduler.last_epoch == 2


def test_searchsage_finetuning_trains_only_the_top_text_layers(synthetic_features: Path, tmp_path: Path, make_config) -> None:
    from itemsage.trained import load_trained
    from itemsage.trained.bundle import write_bundle
    from itemsage.trained.checkpoint import TrainState, save_checkpoint

    run = setup_plain(make_config(synthetic_features, tmp_path, "ft", ["train.model.finetune_text_layers=1", "train.max_steps=3"]))
    enc = run.module.text_encoder
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    outs, _ = run_steps(run, 3)
    assert all(o.finite for o in outs)
    after = enc.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("model.encoder.layer.5.") for k in changed)
    # The encoder's layers have their own, smaller learning rate.
    assert run.optimizer.param_groups[-1]["lr"] == pytest.approx(run.optimizer.param_groups[0]["lr"] * 0.1)

    ckpt = tmp_path / "ckpt"
    save_checkpoint(ckpt, TrainState(step=3, model=run.model.state_dict(), text_encoder=run.module.text_encoder_state()))
    run.bundle.write(ckpt, 3)
    bundle = write_bundle(ckpt, tmp_path / "bundle")
    assert (bundle / "text_encoder.safetensors").is_file()
    loaded = load_trained(bundle).finetuned_text_encoder
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, after[k]), k
    manifest = load_trained(bundle).manifest
    assert manifest["finetune_text_layers"] == 1
    # Search validation goes through the fine-tuned encoder, not the precomputed text_emb.
    val = build_val_set(read_pairs(run.cfg.train.features, "val", ["search"]), run.store.num_items)
    with_enc = model_recall(run.model, run.store, run.qf, val, torch.device("cpu"), text_encoder=enc)
    assert with_enc.get("itemsage", "search/all") is not None


def test_frozen_models_have_no_text_encoder(trained_checkpoint: Path) -> None:
    from itemsage.trained import load_trained

    assert load_trained(trained_checkpoint).finetuned_text_encoder is None


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["train.model.use_text=false"],
        ["train.model.use_image=false"],
        ["train.model.arch=mlp"],
        ["train.model.title_skip=false"],
        ["train.surfaces=[closeup]"],
    ],
    ids=["default", "image_only", "text_only", "mlp", "no_title_skip", "closeup_only"],
)
def test_every_trainable_parameter_gets_a_gradient_even_without_a_surface(
    synthetic_features: Path, tmp_path: Path, make_config, extra: list[str]
) -> None:
    """The Ray loop wraps the model in DDP without ``find_unused_parameters`` (no per-step graph
    search, no DDP warning): that is only correct if every step gives every trainable parameter
    a gradient on every rank, also when a rank's batch has no query of some trained surface."""
    from itemsage.train.loop import may_leave_parameters_unused, unwrap

    run = setup_plain(make_config(synthetic_features, tmp_path, "g", ["train.max_steps=5", *extra]))
    surfaces = run.stepper.surfaces
    assert not may_leave_parameters_unused(unwrap(run.stepper.model), surfaces)
    batch = next(run.batches)
    for dropped in [None, *surfaces[1:]]:  # a batch without one of the trained surfaces
        rows = batch["surface"] != dropped
        part = {k: v[rows] for k, v in batch.items()}
        assert run.stepper.step(part).finite
        missing = [n for n, p in run.stepper.model.named_parameters() if p.requires_grad and p.grad is None]
        assert missing == [], (dropped, missing)
    # The towers of surfaces this run does not train are frozen, not left without gradients.
    towers = run.model.query_towers
    trainable = {s for s in SURFACES if all(p.requires_grad for p in towers.projection(s).parameters())}
    tied = getattr(run.model.item_tower, "title_skip", None) is towers.projection("search")
    assert trainable == set(surfaces) | ({"search"} if tied else set())

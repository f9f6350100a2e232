"""itemsage.trained.load_trained on tiny synthetic models: what it loads, and how it refuses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from itemsage.trained import ModelNotFoundError, load_trained, resolve_model_ref
from itemsage.trained.bundle import TEXT_ENCODER_FILE, write_bundle
from itemsage.trained.checkpoint import TrainState, save_checkpoint
from itemsage.trained.queries import frozen_text_encoder

QUERIES = ["red shirt", "blue shoe with laces", "watch"]


@pytest.fixture(scope="module")
def finetuned_bundle(synthetic_features: Path, tmp_path_factory: pytest.TempPathFactory, make_config) -> Path:
    """A bundle trained 2 steps with ``finetune_text_layers=1`` whose fine-tuned layer is then
    pushed far from the packaged MiniLM, so using the wrong encoder cannot go unnoticed."""
    from itemsage.train.plain import run_steps, setup_plain

    root = tmp_path_factory.mktemp("finetuned")
    run = setup_plain(make_config(synthetic_features, root, "ft", ["train.model.finetune_text_layers=1", "train.max_steps=2"]))
    run_steps(run, 2)
    gen = torch.Generator().manual_seed(0)
    text_state = {k: v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
                  for k, v in run.module.text_encoder_state().items()}
    ckpt = root / "checkpoint_000"
    save_checkpoint(ckpt, TrainState(step=2, model=run.model.state_dict(), text_encoder=text_state))
    run.bundle.write(ckpt, 2)
    return write_bundle(ckpt, root / "bundle")


def test_the_finetuned_text_encoder_encodes_search_queries(finetuned_bundle: Path) -> None:
    tm = load_trained(finetuned_bundle)
    assert tm.finetune_text_layers == 1 and tm.finetuned_text_encoder is not None
    assert tm.text_encoder is tm.finetuned_text_encoder
    assert not tm.model.training and not any(p.requires_grad for p in tm.model.parameters())
    got = tm.embed_search_queries(QUERIES)
    assert got.shape == (3, tm.embedding_dim) and np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    tuned = tm.embed_query_features("search", torch.from_numpy(tm.finetuned_text_encoder.encode(QUERIES)))
    frozen = tm.embed_query_features("search", torch.from_numpy(frozen_text_encoder().encode(QUERIES)))
    np.testing.assert_allclose(got, tuned, atol=1e-6)
    assert np.abs(got - frozen).max() > 1e-3
    # The checkpoint it came from loads to the same model.
    ckpt = load_trained(finetuned_bundle.parent / "checkpoint_000")
    np.testing.assert_allclose(ckpt.embed_search_queries(QUERIES), got, atol=1e-6)


def test_a_frozen_model_uses_the_shared_packaged_encoder(trained_checkpoint: Path) -> None:
    tm = load_trained(trained_checkpoint)
    assert tm.finetune_text_layers == 0 and tm.finetuned_text_encoder is None
    assert tm.text_encoder is frozen_text_encoder("cpu")
    with pytest.raises(ValueError, match="empty search query"):
        tm.embed_search_queries(["ok", "  "])
    assert tm.embed_search_queries([]).shape == (0, tm.embedding_dim)


def test_local_versions_are_content_hashes(trained_checkpoint: Path, tmp_path: Path) -> None:
    tm = load_trained(trained_checkpoint)
    assert tm.version.startswith("sha-") and not tm.registered and tm.name is None
    assert tm.uri == str(trained_checkpoint) and tm.model_dir == trained_checkpoint
    copy = shutil.copytree(trained_checkpoint, tmp_path / "copy")
    assert resolve_model_ref(str(copy)).version == tm.version  # equal files, equal version
    assert load_trained(trained_checkpoint, version="v7").version == "v7"
    run_dir = load_trained(trained_checkpoint.parent)
    assert run_dir.model_dir == trained_checkpoint


def test_missing_or_garbage_references_name_themselves(trained_checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError, match=str(missing)):
        load_trained(missing)
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "manifest.json").write_text("{not json")
    with pytest.raises(ModelNotFoundError, match="garbage/manifest.json"):
        load_trained(garbage)
    (garbage / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ModelNotFoundError, match="garbage/manifest.json is not an itemsage-model manifest"):
        load_trained(garbage)
    with pytest.raises(ModelNotFoundError, match="not an ItemSage model"):
        load_trained(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/m.db")
    with pytest.raises(ModelNotFoundError, match="models:/itemsage@champion"):
        load_trained("models:/itemsage@champion")
    with pytest.raises(ModelNotFoundError, match="models:/itemsage/latest"):
        load_trained("models:/itemsage/latest")


def test_a_finetuned_manifest_without_encoder_weights_is_refused(finetuned_bundle: Path, tmp_path: Path) -> None:
    broken = shutil.copytree(finetuned_bundle, tmp_path / "broken")
    (broken / TEXT_ENCODER_FILE).unlink()
    with pytest.raises(ModelNotFoundError, match=f"fine-tuned with 1 text layers but has no {TEXT_ENCODER_FILE}"):
        load_trained(broken)

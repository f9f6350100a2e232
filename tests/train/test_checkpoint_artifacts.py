import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from itemsage.model import ItemFeatureStore
from itemsage.train.loop import make_optimizer
from itemsage.train.schedule import build_scheduler
from itemsage.trained import ModelNotFoundError, load_trained, register_bundle
from itemsage.trained.bundle import write_bundle
from itemsage.trained.checkpoint import latest_checkpoint_dir, load_checkpoint, read_meta


def _embeddings(model, features: Path) -> torch.Tensor:
    store = ItemFeatureStore.load(str(features), max_images=model.model_cfg.max_images)
    with torch.no_grad():
        return model.embed_items(store.gather(torch.arange(10)))


def test_checkpoint_round_trips_every_piece_of_state(trained_checkpoint: Path) -> None:
    state = load_checkpoint(trained_checkpoint)
    assert state.step == 20 and state.mlflow_run_id == "abc123"
    assert any(k.startswith("sketch.") for k in state.model)  # the CMS travels with the model
    assert int(state.model["sketch.total_count"]) > 0
    assert state.scheduler["last_epoch"] == 20
    assert read_meta(trained_checkpoint)["metrics"] == {"val/recall_at_10": 0.5}
    # A loaded model is frozen for inference; an optimizer needs its parameters trainable again.
    model = load_trained(trained_checkpoint).model.requires_grad_(True)
    opt = make_optimizer(model, _cfg_of(trained_checkpoint).train)
    sched = build_scheduler(opt, 2, 20)
    opt.load_state_dict(state.optimizer)
    sched.load_state_dict(state.scheduler)
    assert len(opt.state) > 0


def _cfg_of(d: Path):
    from itemsage.config import PipelineConfig, load_config

    return load_config(PipelineConfig, d / "config.yaml")


def test_bundle_loads_to_the_same_model(trained_checkpoint: Path, synthetic_features: Path, tmp_path: Path) -> None:
    bundle = write_bundle(trained_checkpoint, tmp_path / "bundle")
    assert sorted(p.name for p in bundle.iterdir()) == ["config.yaml", "manifest.json", "model.safetensors", "vocab.json"]
    ckpt_tm, bundle_tm = load_trained(trained_checkpoint), load_trained(bundle)
    from_ckpt, vocab = ckpt_tm.model, ckpt_tm.vocab
    from_bundle, manifest2, vocab2 = bundle_tm.model, bundle_tm.manifest, bundle_tm.vocab
    assert not from_bundle.training
    assert torch.allclose(_embeddings(from_ckpt, synthetic_features), _embeddings(from_bundle, synthetic_features))
    assert manifest2["step"] == 20 and manifest2["image_dim"] == 16 and manifest2["embedding_dim"] == 32
    assert manifest2["image_backbone"] == "synthetic" and manifest2["text_backbone"] == "all-MiniLM-L6-v2"
    assert manifest2["vocab_size"] == vocab2.size == vocab.size
    assert manifest2["metrics"]["val/recall_at_10"] == 0.5


def test_run_directory_loads_its_latest_checkpoint(trained_checkpoint: Path) -> None:
    run_dir = trained_checkpoint.parent
    assert latest_checkpoint_dir(run_dir) == trained_checkpoint
    manifest = load_trained(run_dir).manifest
    assert manifest["step"] == 20


def test_missing_models_give_one_clear_error(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_trained(tmp_path / "nope")
    with pytest.raises(ModelNotFoundError, match="not an ItemSage model"):
        load_trained(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/m.db")
    with pytest.raises(ModelNotFoundError, match="models:/itemsage/99"):
        load_trained("models:/itemsage/99")
    with pytest.raises(ModelNotFoundError, match="runs:/0123abc/model"):
        load_trained("runs:/0123abc/model")


def test_registered_versions_load_from_mlflow_uris(trained_checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    uri = f"sqlite:///{tmp_path}/m.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    exp = client.create_experiment("e", artifact_location=(tmp_path / "mlruns").as_uri())
    bundle = write_bundle(trained_checkpoint, tmp_path / "bundle")
    versions = []
    for _ in range(2):
        run_id = client.create_run(exp).info.run_id
        versions.append(register_bundle(uri, run_id, bundle))
    assert versions == ["1", "2"]
    assert client.get_run(run_id).data.tags["itemsage.registered_version"] == "2"
    _tm = load_trained("models:/itemsage/2")
    manifest, vocab = _tm.manifest, _tm.vocab
    assert manifest["step"] == 20 and vocab.size == manifest["vocab_size"]
    manifest_run = load_trained(f"runs:/{run_id}/model").manifest
    assert json.dumps(manifest_run, sort_keys=True) == json.dumps(manifest, sort_keys=True)


def test_bundles_written_before_an_architecture_switch_rebuild_as_written(tmp_path: Path) -> None:
    """A bundle whose config.yaml predates title embeddings and residual query projections loads
    with them off (the weights it holds have no such layers); a newer one keeps what it says."""
    from itemsage.trained.bundle import load_bundle_config

    (tmp_path / "config.yaml").write_text("train:\n  model:\n    hidden_dim: 32\n")
    old = load_bundle_config(tmp_path).train.model
    assert (old.use_title_embedding, old.title_skip, old.query_residual) == (False, False, False)
    (tmp_path / "config.yaml").write_text("train:\n  model:\n    hidden_dim: 32\n    query_residual: true\n")
    assert load_bundle_config(tmp_path).train.model.query_residual is True


def test_bundles_with_a_retired_serving_setting_still_load(tmp_path: Path) -> None:
    """index.filters.exact_below was removed after models were registered with it in their config;
    it changes nothing the bundle holds, so such a model loads (legacy model keys still apply)."""
    from itemsage.trained.bundle import load_bundle_config

    (tmp_path / "config.yaml").write_text(
        "index:\n  filters:\n    exact_below: 5000\ntrain:\n  model:\n    hidden_dim: 32\n"
    )
    cfg = load_bundle_config(tmp_path)
    assert cfg.train.model.hidden_dim == 32 and cfg.train.model.query_residual is False
    (tmp_path / "config.yaml").write_text("index:\n  filters:\n    no_such_knob: 1\n")
    with pytest.raises(ValueError, match="no_such_knob"):
        load_bundle_config(tmp_path)

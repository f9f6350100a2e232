"""The shipped demo config on the bundled sample, preprocessed with the demo's settings: a short
real Ray Train run that reports validation recall and registers a loadable model.

The features are made by the preprocessing pipeline's own functions with their two model stages
(EfficientNet, MiniLM) run in this process (``tests.api.sample_model.preprocess_in_process``), not
by Ray Data actor pools, whose start-up cost most of this module's time (110 s of 177 s in the
2026-12-05 full run). ``run_preprocess`` on Ray Data is what tests/data/test_preprocess.py checks
in detail, and tests/cluster/test_multinode.py runs it on this same sample across two nodes."""

import os
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from itemsage.config import PipelineConfig, load_config
from itemsage.model import ItemFeatureStore
from itemsage.train.trainer import run_training
from itemsage.trained import load_trained

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "experiments" / "configs" / "demo.yaml"

# Validation Recall@10 after the 20 steps below, per surface, with a margin. Measured once on the
# bundled sample (2 workers, 2-core box, 2026-12-04): search 0.973, closeup 0.992, home 0.577,
# against random 0.297 / 0.397 / 0.346 (frozen features 1.000 / 0.977 / 0.538: 20 steps do not yet
# beat them, so the floor is the measured value less a margin, not the frozen baseline). The val
# split is small (home: 26 pairs), hence margins of 4-5 pairs.
VAL_RECALL_FLOOR = {"search": 0.85, "closeup": 0.85, "home": 0.42}


@pytest.fixture(scope="module")
def sample_features(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled fashion sample preprocessed with the demo's (small) settings (module doc)."""
    from tests.api.sample_model import preprocess_in_process

    out = tmp_path_factory.mktemp("sample") / "features"
    cfg = load_config(
        PipelineConfig, DEMO, [f"preprocess.catalog={sample_dir / 'fashion'}", f"preprocess.output={out}"]
    )
    # One torch thread under pytest-xdist, where the other worker holds a core (as
    # tests/serve/trained.py builds); the count is restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)
    try:
        preprocess_in_process(cfg.preprocess)
    finally:
        torch.set_num_threads(threads)
    return out


# sample_features before ray_cluster: the backbones run before Ray's processes are up beside them.
def test_demo_config_trains_and_registers_on_the_sample(sample_features, ray_cluster, tmp_path, mlflow_uri) -> None:
    cfg = load_config(
        PipelineConfig,
        DEMO,
        [
            f"train.features={sample_features}",
            f"train.storage_path={tmp_path / 'runs'}",
            "train.name=sample",
            "train.mlflow_experiment=sample",
            "train.max_steps=20",
            "train.checkpoint_every=10",
            "train.eval_every=10",
            "train.warmup_steps=5",
        ],
    )
    result = run_training(cfg)
    assert result.step == 20 and result.model_version is not None
    for surface, floor in VAL_RECALL_FLOOR.items():
        recall = result.metrics[f"val/{surface}/all/recall_at_10"]
        assert recall >= floor > result.metrics[f"val_random/{surface}/all/recall_at_10"], (surface, result.metrics)

    client = MlflowClient(mlflow_uri)
    loss = client.get_metric_history(result.mlflow_run_id, "train/loss")
    assert len(loss) == 20 and loss[-1].value < loss[0].value
    assert len(client.get_metric_history(result.mlflow_run_id, "val/search/click/recall_at_10")) == 2

    _tm = load_trained(result.model_uri)

    model, manifest, vocab = _tm.model, _tm.manifest, _tm.vocab
    assert manifest["image_backbone"] == "efficientnet-lite0" and manifest["image_dim"] == 1280
    assert manifest["embedding_dim"] == 256 and vocab.size == manifest["vocab_size"]
    store = ItemFeatureStore.load(str(sample_features), max_images=manifest["max_images"])
    with torch.no_grad():
        emb = model.embed_items(store.gather(torch.arange(8)))
    assert emb.shape == (8, 256)
    assert torch.allclose(emb.norm(dim=1), torch.ones(8), atol=1e-4)

"""The demo model, trained for real on the bundled sample, registered and indexed like production.

Preprocessing is the pipeline's own functions over ``data/sample/fashion`` (EfficientNet-Lite0 image
features, MiniLM, synthetic engagements) with the two model stages run in this process
(``tests.api.sample_model.preprocess_in_process``: the Ray Data stages are covered by
tests/data/test_preprocess.py, and starting their actor pools here cost minutes per run); training is the project's training step run in-process
(:mod:`itemsage.train.plain`, the same step code as the Ray Train loop); the bundle is registered
in a throwaway MLflow (SQLite) as ``itemsage`` twice, versions 1 and 2, each with its own index
(Flat for version 1, HNSW for version 2) logged with ``log_index``, so serving resolves
``models:/itemsage/<v>`` for model and index exactly as it does after ``make demo``.

The lead's pipeline can supply the same layout through ``ITEMSAGE_E2E_TRACKING_URI`` (an MLflow
with ``itemsage`` versions 1 and 2 and their indexes) and ``ITEMSAGE_E2E_FEATURES``; then nothing
is trained here.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from itemsage.config import PipelineConfig, load_config

# Small enough to train in about a minute on 2 CPUs, large enough to learn the sample's categories.
TRAIN_OVERRIDES = [
    "train.model.embedding_dim=64",
    "train.model.hidden_dim=64",
    "train.model.num_heads=4",
    "train.model.ffn_dim=128",
    "train.model.head_hidden_dim=128",
    "train.model.hash_buckets=20000",
    "train.model.hash_dim=64",
    "train.model.max_images=4",
    "train.loss.num_random_negatives=128",
    "train.batch_size=128",
    "train.max_steps=150",
    "train.warmup_steps=10",
    "train.lr=0.003",
]


@dataclass(frozen=True)
class TrainedServing:
    tracking_uri: str
    features: Path
    versions: tuple[str, ...]  # registered versions with an index


def preprocess(sample_dir: Path, out: Path) -> Path:
    from tests.api.sample_model import preprocess_in_process

    cfg = load_config(PipelineConfig, None, [f"preprocess.catalog={sample_dir / 'fashion'}", f"preprocess.output={out}"])
    preprocess_in_process(cfg.preprocess)
    return out


def train_bundle(features: Path, out: Path) -> Path:
    from itemsage.train.plain import run_steps, setup_plain
    from itemsage.trained.bundle import write_bundle
    from itemsage.trained.checkpoint import TrainState, save_checkpoint

    cfg = load_config(PipelineConfig, None, [f"train.features={features}", f"train.storage_path={out / 'runs'}", *TRAIN_OVERRIDES])
    run = setup_plain(cfg)
    run_steps(run, cfg.train.max_steps)
    ckpt = out / "checkpoint"
    save_checkpoint(ckpt, TrainState(step=run.step, model=run.model.state_dict()))
    run.bundle.write(ckpt, run.step)
    return write_bundle(ckpt, out / "bundle")


def register(bundle: Path, features: Path, tracking_uri: str, specs: tuple[str, ...], work: Path) -> tuple[str, ...]:
    """Register ``bundle`` once per index spec, each version with its own index logged."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from itemsage.index import build_index, log_index
    from itemsage.model import ItemFeatureStore
    from itemsage.trained import load_trained, register_bundle

    _tm = load_trained(bundle)

    model, manifest = _tm.model, _tm.manifest
    store = ItemFeatureStore.load(str(features), max_images=int(manifest["max_images"]))
    with torch.inference_mode():
        emb = model.embed_items(store.gather(torch.arange(store.num_items))).numpy()
    client = MlflowClient(tracking_uri=tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    exp = client.create_experiment("itemsage-serve-e2e", artifact_location=(work / "mlruns").as_uri())
    versions = []
    for spec in specs:
        run_id = client.create_run(exp).info.run_id
        version = register_bundle(tracking_uri, run_id, bundle)
        index = build_index(emb, list(store.item_ids or []), spec, use_gpu=False, model_name="itemsage", model_version=version)
        index.save(work / f"index_v{version}")
        log_index(work / f"index_v{version}", "itemsage", version, tracking_uri=tracking_uri)
        client.set_terminated(run_id)
        versions.append(version)
    return tuple(versions)


def build_trained_serving(sample_dir: Path, root: Path) -> TrainedServing:
    env_uri, env_features = os.environ.get("ITEMSAGE_E2E_TRACKING_URI"), os.environ.get("ITEMSAGE_E2E_FEATURES")
    if env_uri and env_features:
        return TrainedServing(env_uri, Path(env_features), ("1", "2"))
    # Two threads on an idle 2-core box; one under pytest-xdist, where the other worker holds a core
    # and a second OpenMP thread would spin at barriers instead of helping (the count is restored).
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)
    try:
        t0 = time.perf_counter()
        features = preprocess(sample_dir, root / "features")
        t1 = time.perf_counter()
        bundle = train_bundle(features, root / "train")
        t2 = time.perf_counter()
        tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
        versions = register(bundle, features, tracking_uri, ("Flat", "HNSW32"), root)
        t3 = time.perf_counter()
    finally:
        torch.set_num_threads(threads)
    print(f"[trained_serving] preprocess {t1 - t0:.0f}s, train {t2 - t1:.0f}s, register+index {t3 - t2:.0f}s")
    return TrainedServing(tracking_uri, features, versions)


def shared_trained_serving(sample_dir: Path, base: Path, worker: str | None) -> TrainedServing:
    """:func:`build_trained_serving` once per test run, also when pytest-xdist splits the serving
    suites over several workers (``make test``): ``base`` is the directory the run's workers share
    (``tmp_path_factory.getbasetemp().parent`` on a worker, ``worker`` its id). The first worker to
    get there builds under a file lock; the others wait for it and load what it recorded."""
    base.mkdir(parents=True, exist_ok=True)
    record = base / "trained_serving.json"
    with open(base / "trained_serving.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if the build fails
        if record.exists():
            r = json.loads(record.read_text())
            return TrainedServing(r["tracking_uri"], Path(r["features"]), tuple(r["versions"]))
        # A directory of this worker's own: a build that failed on another worker left its half.
        built = build_trained_serving(sample_dir, base / f"trained_serving-{worker}")
        fields = {"tracking_uri": built.tracking_uri, "features": str(built.features), "versions": built.versions}
        record.write_text(json.dumps(fields))
        return built

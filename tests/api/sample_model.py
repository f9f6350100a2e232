"""A small but real trained model on the bundled fashion sample, built in-process (no Ray).

The first 160 sample items (real titles, attributes and images) become a generic-layout training
catalog; the next 60 are an *unseen* catalog the model never sees. Features are made with the
preprocessing pipeline's own functions (catalog reader, synthetic engagements, item-disjoint split,
vocab, users, pairs, ``write_features``) with the image and text UDFs run in this process instead
of Ray actors (``itemsage.index.featurize.local_image_features``, through the run's cache of
backbone outputs, tests/support/feature_cache.py), so the features directory has exactly the
documented format. The model (256-d output, small hidden sizes) trains for a few
hundred steps with the plain loop of ``itemsage.train.plain``. Building it takes well under a
minute on a laptop core; it is built once per test session and shared by tests/api, tests/eval
and tests/index (import this module after putting tests/api on ``sys.path``).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample" / "fashion"
N_TRAIN, N_UNSEEN = 160, 60
STEPS = 300
MODEL_OVERRIDES = [
    "train.model.embedding_dim=256",
    "train.model.hidden_dim=64",
    "train.model.num_heads=2",
    "train.model.ffn_dim=128",
    "train.model.head_hidden_dim=256",
    "train.model.hash_buckets=4096",
    "train.model.hash_dim=64",
    "train.model.max_images=4",
    "train.model.dropout=0.0",
    "train.loss.num_random_negatives=64",
    "train.loss.cms_width=256",
    "train.batch_size=64",
    "train.warmup_steps=10",
    "train.lr=0.003",
    f"train.max_steps={STEPS}",
    # Fewer synthetic pairs than the defaults: 160 items do not need 16k of them.
    "preprocess.engagement.search_pairs=1500",
    "preprocess.engagement.closeup_pairs=1500",
    "preprocess.engagement.home_pairs=1000",
    "preprocess.engagement.num_users=100",
]


@dataclass(frozen=True)
class SampleModel:
    train_catalog: Path  # generic JSONL, N_TRAIN items
    unseen_catalog: Path  # generic JSONL, N_UNSEEN other items
    features: Path  # features directory of the training catalog
    checkpoint: Path  # training checkpoint directory (loadable like a bundle)
    bundle: Path  # inference bundle (model.safetensors + config/vocab/manifest)


def write_generic_catalog(items, path: Path) -> Path:
    """Rows of a read catalog as a generic-layout JSONL file (absolute image paths)."""
    from itemsage.config import TEXT_FIELDS

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for _, row in items.iterrows():
            rec = {"item_id": str(row["item_id"]), "image_paths": [str(p) for p in row["image_paths"]]}
            rec.update({name: str(row[name]) for name in TEXT_FIELDS})
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return path


def preprocess_in_process(cfg) -> None:
    """``run_preprocess`` with its two model stages run here instead of in Ray actors."""
    from tests.support.feature_cache import image_features, text_embeddings

    from itemsage.data import pipeline as P
    from itemsage.data.featurize import plan_stages
    from itemsage.data.images import BACKBONES
    from itemsage.data.text_encoder import TextEncoder
    from itemsage.index.featurize import token_table

    start = time.perf_counter()
    timer = P._Timer()  # the stage times land in the features' summary, as run_preprocess's do
    with timer("catalog"):
        catalog, items = P.load_catalog(cfg)
        eng = P.prepare_engagements(cfg, catalog.layout, items, catalog.links)
        vocab = P.build_vocab(items, cfg)
        queries = P.unique_search_queries(eng.splits)
    dim = BACKBONES[cfg.image.backbone].dim
    with timer("images"):
        # The backbones' outputs are the same in every build of a run: computed once (feature_cache).
        images = image_features(items, cfg, dim)
    with timer("text"):
        encoder = TextEncoder()
        title_emb = text_embeddings(encoder, items["title"].astype(str).tolist())
        query_emb = text_embeddings(encoder, queries["text"].astype(str).tolist())
        text_items = token_table(items, vocab, title_emb)
    text_items = text_items.append_column("item_idx", pa.array(items["item_idx"].to_numpy(np.int64)))
    text = P.TextFeatures(text_items, title_emb, query_emb)
    item_index = dict(zip(items["item_id"].astype(str), items["item_idx"].astype(int)))
    with timer("users_pairs"):
        users = P.build_users(eng.histories, item_index, images.first, images.n_images, title_emb)
        query_index = dict(zip(queries["text"], queries["query_idx"].astype(int)))
        rejects = [*catalog.rejects, *eng.rejects, *images.rejects]
        pairs = {}
        for name in P.SPLITS:
            pairs[name], dropped = P.map_pairs(eng.splits[name], item_index, query_index, users, images.n_images)
            rejects += dropped
    features = P.FeatureSet(catalog, items, images, text, queries, users, pairs, vocab, rejects, eng.source, dim)
    plan = plan_stages({"CPU": 1.0}, 1)
    summary = P.summarize(cfg, features, plan, {"CPU": 1.0})
    P.write_features(cfg, features, summary, timer, start)


def train_in_process(cfg, out: Path) -> tuple[Path, Path]:
    """Train ``cfg.train.max_steps`` plain-loop steps; returns (checkpoint dir, bundle dir)."""
    from itemsage.train.plain import run_steps, setup_plain
    from itemsage.trained.bundle import write_bundle
    from itemsage.trained.checkpoint import TrainState, save_checkpoint

    run = setup_plain(cfg)
    outs, _ = run_steps(run, cfg.train.max_steps)
    if not outs[-1].finite:
        raise RuntimeError("the sample model diverged")
    ckpt = out / "checkpoint_000"
    save_checkpoint(ckpt, TrainState(step=run.step, model=run.model.state_dict(), mlflow_run_id=""))
    run.bundle.write(ckpt, run.step, {})
    return ckpt, write_bundle(ckpt, out / "bundle")


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch with one intra-op thread, then restore the previous count.

    On a shared, oversubscribed box, OpenMP threads spinning at barriers while other processes
    hold the cores make small ops many times slower than one thread would be.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def start_ray(attempts: int = 3) -> None:
    """``ray.init`` for the slow tests (2 CPUs, no dashboard), retried when the node times out.

    Ray waits a fixed 30 s for its raylet to register; on a heavily shared box that start-up
    occasionally takes longer, which says nothing about the code under test.
    """
    import ray

    for attempt in range(attempts):
        try:
            ray.init(num_cpus=2, include_dashboard=False)
            break
        except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception for this
            ray.shutdown()
            if "timed out during startup" not in str(e) or attempt == attempts - 1:
                raise
    ray.data.DataContext.get_current().enable_progress_bars = False


_lock = threading.Lock()
_built: dict[Path, SampleModel] = {}


def build_sample_model(root: Path) -> SampleModel:
    """Build (once per process and ``root``) the catalogs, features and trained model."""
    import torch

    from itemsage.config import PipelineConfig, load_config
    from itemsage.data.catalog import read_catalog

    with _lock:
        if root in _built:
            return _built[root]
        torch.manual_seed(0)
        items = read_catalog(SAMPLE).items
        train_catalog = write_generic_catalog(items.iloc[:N_TRAIN], root / "catalogs" / "train" / "items.jsonl")
        unseen_catalog = write_generic_catalog(
            items.iloc[N_TRAIN : N_TRAIN + N_UNSEEN], root / "catalogs" / "unseen" / "items.jsonl")
        features = root / "features"
        cfg = load_config(PipelineConfig, None, [
            f"preprocess.catalog={train_catalog.parent}",
            f"preprocess.output={features}",
            f"train.features={features}",
            f"train.storage_path={root / 'runs'}",
            *MODEL_OVERRIDES,
        ])
        with one_torch_thread():
            preprocess_in_process(cfg.preprocess)
            ckpt, bundle = train_in_process(cfg, root / "model")
        _built[root] = SampleModel(train_catalog.parent, unseen_catalog.parent, features, ckpt, bundle)
        return _built[root]


"""Fixtures for training tests.

``synthetic_features`` writes a small features directory in the documented format
(docs/feature-format.md) with a learnable structure: items, queries and users belong to clusters and
every pair joins a query and an item of the same cluster. It needs no image or text backbone, so the
fast tests can run the real training code in seconds. ``sample_features`` preprocesses the bundled
sample with the real pipeline (slow tests).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from itemsage.config import TEXT_FIELDS, PipelineConfig, TextConfig, load_config
from itemsage.data.pipeline import PAIRS_SCHEMA
from itemsage.data.text import Vocab

IMAGE_DIM = 16
WORDS = ["red", "blue", "green", "shirt", "shoe", "bag", "watch", "dress", "hat", "belt", "sock", "coat"]


def write_synthetic_features(
    out: Path, num_items: int = 240, clusters: int = 12, pairs_per_surface: int = 400, seed: int = 0
) -> Path:
    """A features directory whose pairs are learnable (same-cluster query and item)."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pairs").mkdir(exist_ok=True)
    cluster = np.arange(num_items) % clusters
    img_centres = rng.normal(size=(clusters, IMAGE_DIM)).astype(np.float32)
    txt_centres = rng.normal(size=(clusters, 384)).astype(np.float32)
    titles = [f"{WORDS[c % len(WORDS)]} item{c} {WORDS[(c * 5 + 1) % len(WORDS)]} n{i}" for i, c in enumerate(cluster)]
    vocab = Vocab.build(titles, TextConfig())
    vocab.save(out / "vocab.json")

    n_images = np.where(np.arange(num_items) % 7 == 3, 0, 1 + np.arange(num_items) % 3).astype(np.int32)
    image_feats, title_emb = [], []
    for i in range(num_items):
        c = cluster[i]
        feats = img_centres[c] + 0.3 * rng.normal(size=(n_images[i], IMAGE_DIM)).astype(np.float32)
        image_feats.append(feats.reshape(-1).tolist())
        t = txt_centres[c] + 0.3 * rng.normal(size=384).astype(np.float32)
        title_emb.append((t / np.linalg.norm(t)).tolist())
    items = {
        "item_idx": pa.array(np.arange(num_items, dtype=np.int64)),
        "item_id": pa.array([f"it{i}" for i in range(num_items)]),
        "n_images": pa.array(n_images),
        "image_feats": pa.array(image_feats, pa.list_(pa.float32())),
        "title_emb": pa.array(title_emb, pa.list_(pa.float32())),
    }
    for f in TEXT_FIELDS:
        ids = [vocab.encode(t).tolist() if f == "title" else [] for t in titles]
        items[f"tok_{f}"] = pa.array(ids, pa.list_(pa.int32()))
    pq.write_table(pa.table(items), out / "items.parquet")

    n_queries = clusters * 4
    q_cluster = np.arange(n_queries) % clusters
    q_emb = txt_centres[q_cluster] + 0.3 * rng.normal(size=(n_queries, 384)).astype(np.float32)
    q_emb /= np.linalg.norm(q_emb, axis=1, keepdims=True)
    pq.write_table(
        pa.table(
            {
                "query_idx": pa.array(np.arange(n_queries, dtype=np.int64)),
                "text": pa.array([f"query {c}" for c in q_cluster]),
                "text_emb": pa.array(q_emb.tolist(), pa.list_(pa.float32())),
            }
        ),
        out / "queries.parquet",
    )
    n_users = clusters * 3
    u_cluster = np.arange(n_users) % clusters
    histories = [rng.choice(np.flatnonzero(cluster == c), size=4).tolist() for c in u_cluster]
    with_image = [[h for h in hist if n_images[h] > 0] for hist in histories]
    user_feat = []
    for hist, imgs in zip(histories, with_image):
        img = np.mean([image_feats[h][:IMAGE_DIM] for h in imgs], axis=0) if imgs else np.zeros(IMAGE_DIM)
        txt = np.mean([title_emb[h] for h in hist], axis=0)
        user_feat.append(np.concatenate([img, txt]).astype(np.float32).tolist())
    pq.write_table(
        pa.table(
            {
                "user_idx": pa.array(np.arange(n_users, dtype=np.int64)),
                "user_id": pa.array([f"u{i}" for i in range(n_users)]),
                "history": pa.array(histories, pa.list_(pa.int64())),
                "user_feat": pa.array(user_feat, pa.list_(pa.float32())),
            }
        ),
        out / "users.parquet",
    )

    # Item-disjoint split: every 10th item is validation, every 10th+1 test.
    split_of = np.where(np.arange(num_items) % 10 == 0, "val", np.where(np.arange(num_items) % 10 == 1, "test", "train"))
    rows: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    with_img_items = np.flatnonzero(n_images > 0)
    for surface, key_cluster in (("search", q_cluster), ("closeup", None), ("home", u_cluster)):
        for _ in range(pairs_per_surface):
            item = int(rng.integers(num_items))
            c = cluster[item]
            if surface == "closeup":
                cands = with_img_items[cluster[with_img_items] == c]
                key = int(rng.choice(cands))
            else:
                key = int(rng.choice(np.flatnonzero(key_cluster == c)))
            action = rng.choice(["click", "save", "add_to_cart", "checkout"], p=[0.6, 0.2, 0.15, 0.05])
            rows[str(split_of[item])].append(
                {
                    "surface": surface,
                    "action": str(action),
                    "task": f"{surface}/{action}",
                    "query_key": key,
                    "item_idx": item,
                    "source": "synthetic",
                }
            )
    for split, r in rows.items():
        pq.write_table(pa.Table.from_pylist(r, schema=PAIRS_SCHEMA), out / "pairs" / f"{split}.parquet")
    manifest = {
        "format": "itemsage-features",
        "version": 1,
        "backbone": "synthetic",
        "image_dim": IMAGE_DIM,
        "text_query_dim": 384,
        "text_fields": list(TEXT_FIELDS),
        "counts": {"items": num_items, "queries": n_queries, "users": n_users},
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="session")
def synthetic_features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_features(tmp_path_factory.mktemp("features") / "synthetic")


@pytest.fixture
def features_without_val(synthetic_features: Path, tmp_path: Path) -> Path:
    """A copy of ``synthetic_features`` whose val split has no pairs, as preprocessing with
    ``engagement.val_fraction 0`` (the final refit on train + val) leaves it."""
    features = tmp_path / "f"
    shutil.copytree(synthetic_features, features)
    val = features / "pairs" / "val.parquet"
    pq.write_table(pq.read_table(val).slice(0, 0), val)
    return features


# A model small enough that a CPU step takes milliseconds; every knob still on (transformer, hash
# embedding, both negative sources, logQ).
TINY_OVERRIDES = [
    "train.model.embedding_dim=32",
    "train.model.hidden_dim=32",
    "train.model.num_heads=2",
    "train.model.ffn_dim=64",
    "train.model.head_hidden_dim=64",
    "train.model.hash_buckets=512",
    "train.model.hash_dim=32",
    "train.model.max_images=4",
    "train.loss.num_random_negatives=64",
    "train.loss.cms_width=256",
    "train.batch_size=32",
    "train.warmup_steps=2",
    "train.lr=0.003",
]


def tiny_config(features: Path, storage: Path, name: str, extra: list[str] | None = None) -> PipelineConfig:
    overrides = [
        f"train.features={features}",
        f"train.storage_path={storage}",
        f"train.name={name}",
        *TINY_OVERRIDES,
        *(extra or []),
    ]
    return load_config(PipelineConfig, None, overrides)


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory):
    """One SQLite MLflow store per test module (creating its tables takes seconds), exported as
    MLFLOW_TRACKING_URI. Tests keep their runs apart with their own experiment names."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # create the schema now, once
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


@pytest.fixture(scope="module")
def ray_cluster():
    """A 2-CPU local Ray cluster for one test module (shut down afterwards)."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        ray.shutdown()
    from itemsage.train.trainer import start_local_ray

    start_local_ray(2, log_to_driver=True)  # as experiments/train.py starts it
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def trained_checkpoint(synthetic_features: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real checkpoint directory (state.pt + bundle files) after 20 in-process training steps."""
    import torch

    from itemsage.train.plain import run_steps, setup_plain
    from itemsage.trained.checkpoint import TrainState, save_checkpoint

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ckpt")
    cfg = tiny_config(synthetic_features, root / "storage", "plain", ["train.max_steps=20"])
    run = setup_plain(cfg)
    run_steps(run, 20)
    d = root / "checkpoint_000"
    save_checkpoint(
        d,
        TrainState(
            step=run.step,
            model=run.model.state_dict(),
            optimizer=run.optimizer.state_dict(),
            scheduler=run.scheduler.state_dict(),
            mlflow_run_id="abc123",
            metrics={"val/recall_at_10": 0.5},
        ),
    )
    run.bundle.write(d, run.step, {"val/recall_at_10": 0.5})
    return d


@pytest.fixture(scope="session")
def tiny_overrides() -> list[str]:
    return list(TINY_OVERRIDES)


@pytest.fixture(scope="session")
def make_config():
    """``make_config(features, storage, name, extra_overrides) -> PipelineConfig`` (tiny model)."""
    return tiny_config

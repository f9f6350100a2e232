"""A tiny but complete serving setup for fast tests: features dir, model bundle, Flat index.

Items are the first rows of the bundled fashion sample read through the real catalog adapter
(real titles, product types and image files), with random frozen image features; the model is
randomly initialised. Nothing here needs MiniLM or the image backbone, so it builds in about a
second; retrieval *quality* is tested on the real trained model in the slow e2e tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import save_file

from itemsage.config import TEXT_FIELDS, IndexConfig, PipelineConfig, load_config
from itemsage.data.catalog import read_catalog
from itemsage.data.text import Vocab
from itemsage.data.text_encoder import TextEncoder
from itemsage.index import build_index
from itemsage.index.attributes import attributes_for_index
from itemsage.model import ItemFeatureStore, build_model
from itemsage.trained.bundle import BundleFiles
from itemsage.trained.registry import WEIGHTS_FILE

IMAGE_DIM = 1280  # efficientnet-lite0, so image queries run the real backbone
TINY_MODEL = [
    "train.model.embedding_dim=32",
    "train.model.hidden_dim=32",
    "train.model.num_heads=2",
    "train.model.ffn_dim=64",
    "train.model.head_hidden_dim=64",
    "train.model.hash_buckets=512",
    "train.model.hash_dim=32",
    "train.model.max_images=4",
    "train.loss.num_random_negatives=8",
    "train.loss.cms_width=64",
]


def write_features(sample_dir: Path, out: Path, n_items: int = 60, seed: int = 0) -> Path:
    """features/ with manifest, vocab, items and catalog for the first ``n_items`` sample items."""
    rng = np.random.default_rng(seed)
    items = read_catalog(sample_dir / "fashion").items.head(n_items).reset_index(drop=True)
    # Every fifth item is text-only, as in real catalogs.
    items["image_paths"] = [[] if i % 5 == 4 else list(p) for i, p in enumerate(items["image_paths"])]
    out.mkdir(parents=True, exist_ok=True)
    texts = [str(t) for f in TEXT_FIELDS for t in items[f]]
    vocab = Vocab.build(texts, load_config(PipelineConfig).preprocess.text)
    vocab.save(out / "vocab.json")
    n_images = np.array([min(len(p), 1) for p in items["image_paths"]], np.int32)
    cols: dict[str, pa.Array] = {
        "item_idx": pa.array(np.arange(len(items), dtype=np.int64)),
        "item_id": pa.array(items["item_id"].astype(str).tolist()),
        "n_images": pa.array(n_images),
        "image_feats": pa.array(
            [rng.random(IMAGE_DIM * int(n), dtype=np.float32).tolist() for n in n_images], pa.list_(pa.float32())
        ),
        # The real frozen MiniLM of each title, as preprocessing writes it: the item tower reads it,
        # so /embed/item (which encodes the payload's title) must see the same vector.
        "title_emb": pa.array(TextEncoder().encode([str(t or "") for t in items["title"]]).tolist(),
                              pa.list_(pa.float32())),
    }
    for f in TEXT_FIELDS:
        cols[f"tok_{f}"] = pa.array([vocab.encode(str(t)).tolist() for t in items[f]], pa.list_(pa.int32()))
    pq.write_table(pa.table(cols), out / "items.parquet")
    catalog = {
        "item_id": pa.array(items["item_id"].astype(str).tolist()),
        "image_paths": pa.array([list(p) for p in items["image_paths"]], pa.list_(pa.string())),
    }
    for f in TEXT_FIELDS:
        catalog[f] = pa.array(items[f].astype(str).tolist())
    pq.write_table(pa.table(catalog), out / "catalog.parquet")
    manifest = {
        "format_version": 1,
        "backbone": "efficientnet-lite0",
        "image_dim": IMAGE_DIM,
        "text_query_dim": 384,
        "text_fields": list(TEXT_FIELDS),
        "max_images": 20,
        "counts": {"items": len(items)},
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def write_model(features: Path, out: Path, seed: int = 0) -> Path:
    """A model bundle (what ``itemsage.trained.load_trained`` reads) with random weights."""
    cfg = load_config(PipelineConfig, None, [f"train.features={features}", *TINY_MODEL])
    fm = json.loads((features / "manifest.json").read_text())
    files = BundleFiles(cfg, fm)
    torch.manual_seed(seed)
    model = build_model(cfg.train.model, cfg.train.loss, files.vocab.size, IMAGE_DIM)
    files.write(out, step=0)
    save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, str(out / WEIGHTS_FILE))
    return out


def write_index(features: Path, model_dir: Path, out: Path, model_version: str | None = None) -> Path:
    """A Flat index over every item's embedding under the model in ``model_dir``."""
    from itemsage.trained import load_trained

    _tm = load_trained(model_dir)

    model, manifest = _tm.model, _tm.manifest
    store = ItemFeatureStore.load(str(features), max_images=int(manifest["max_images"]))
    with torch.inference_mode():
        emb = model.embed_items(store.gather(torch.arange(store.num_items))).numpy()
    index = build_index(emb, list(store.item_ids or []), "Flat", use_gpu=False, model_name="itemsage", model_version=model_version)
    # The default filterable attributes (gender, product_type, color; the sample has no price).
    index.attach_attributes(attributes_for_index(index.idmap, str(features), IndexConfig()))
    index.save(out)
    return out


def build_tiny_serving(sample_dir: Path, root: Path, versions: int = 1) -> dict[str, Path]:
    """features + ``versions`` (model, index) pairs: ``model_1``/``index_1``, ``model_2``/..."""
    features = write_features(sample_dir, root / "features")
    out: dict[str, Path] = {"features": features}
    for v in range(1, versions + 1):
        out[f"model_{v}"] = write_model(features, root / f"model_{v}", seed=v)
        out[f"index_{v}"] = write_index(features, out[f"model_{v}"], root / f"index_{v}")
    return out


def write_finetuned_model(model_dir: Path, out: Path, seed: int = 0) -> Path:
    """``model_dir``'s bundle as if trained SearchSage-style: the same towers plus its own MiniLM
    whose top layer differs from the packaged one (``text_encoder.safetensors``)."""
    import shutil

    from itemsage.data.text_encoder import TextEncoder
    from itemsage.trained.bundle import TEXT_ENCODER_FILE

    shutil.copytree(model_dir, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["finetune_text_layers"] = 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    gen = torch.Generator().manual_seed(seed)
    top = {k: v for k, v in TextEncoder().state_dict().items() if k.startswith("model.encoder.layer.5.")}
    tuned = {k: (v + 0.05 * torch.randn(v.shape, generator=gen)).contiguous() for k, v in top.items()}
    save_file(tuned, str(out / TEXT_ENCODER_FILE))
    return out

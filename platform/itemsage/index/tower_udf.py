"""The Ray Data stages of batch embedding: row tagging tasks and the item-tower actor.

Kept apart from :mod:`itemsage.index.embed` so that a worker process running them imports only
torch, pyarrow and the model package: ``embed`` also pulls in catalog featurization (torchvision,
pandas), which cost every tower actor and read task seconds of start-up before its first batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from itemsage.data.features_io import fixed_list_array
from itemsage.model.baselines import ItemTower
from itemsage.model.batch import TEXT_QUERY_DIM, ItemFeatureStore

EMBEDDINGS_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("embedding", pa.list_(pa.float32())),
        ("model_version", pa.string()),
        ("content_hash", pa.string()),
    ]
)


class EmbedError(ValueError):
    """The inputs cannot be embedded as asked (missing files, incompatible vocab or model)."""


def _zeros_title(n: int) -> pa.Array:
    return fixed_list_array(np.zeros((n, TEXT_QUERY_DIM), np.float32), pa.float32())


class ItemTowerActor:
    """Ray Data class UDF: items.parquet rows (+ ``content_hash``) -> embedding rows.

    One instance per actor: the item tower is fetched from the object store and moved to the
    actor's device once, then every batch is one vectorised gather and one forward pass.
    """

    def __init__(
        self,
        tower_ref: list[Any],
        image_dim: int,
        text_fields: Sequence[str],
        max_images: int,
        model_version: str,
        use_gpu: bool,
        torch_threads: int,
    ) -> None:
        import ray

        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        # The ref travels inside a list so Ray hands it over unresolved; fetched once per actor.
        self.tower = ray.get(tower_ref[0]).to(self.device).eval()
        self.image_dim = image_dim
        self.text_fields = tuple(text_fields)
        self.max_images = max_images
        self.model_version = model_version

    def __call__(self, batch: pa.Table) -> pa.Table:
        return embed_rows(
            self.tower, batch, self.image_dim, self.text_fields, self.max_images, self.model_version, self.device
        )


@torch.inference_mode()
def embed_rows(
    tower: ItemTower,
    batch: pa.Table,
    image_dim: int,
    text_fields: Sequence[str],
    max_images: int,
    model_version: str,
    device: str | torch.device = "cpu",
) -> pa.Table:
    """Embed one Arrow batch of item rows (items.parquet columns + ``content_hash``)."""
    n = batch.num_rows
    feats = batch.drop_columns([c for c in ("item_idx", "content_hash") if c in batch.column_names])
    if "title_emb" not in feats.column_names:
        if tower.cfg.use_title_embedding:
            raise EmbedError("this model's item tower reads title_emb, which the item rows do not have")
        feats = feats.append_column("title_emb", _zeros_title(n))
    store = ItemFeatureStore.from_table(feats, image_dim, tuple(text_fields), max_images)
    emb = tower(store.gather(torch.arange(n)).to(device)).float().cpu().numpy()
    hashes = batch.column("content_hash") if "content_hash" in batch.column_names else pa.array([""] * n)
    return pa.table(
        {
            "item_id": batch.column("item_id"),
            "embedding": fixed_list_array(emb, pa.float32()),
            "model_version": pa.array([model_version] * n, pa.string()),
            "content_hash": hashes,
        },
        schema=EMBEDDINGS_SCHEMA,
    )


def tag_rows(batch: pa.Table, hashes: np.ndarray, keep: np.ndarray | None) -> pa.Table:
    """Ray Data task UDF: keep the rows to embed and attach their content hash, by ``item_idx``."""
    idx = batch.column("item_idx").to_numpy()
    if keep is not None:
        mask = keep[idx]
        batch = batch.filter(pa.array(mask))
        idx = idx[mask]
    return batch.append_column("content_hash", pa.array(hashes[idx].tolist(), pa.string()))

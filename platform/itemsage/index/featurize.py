"""A raw catalog featurized for one trained model: its vocabulary, image backbone and limits.

Items the model never saw are featurized exactly as training featurized its catalog (the
preprocessing UDFs, run in this process or as Ray Data stages), so the item tower reads them as
it read its training items.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from itemsage.config import TEXT_FIELDS, PreprocessConfig
from itemsage.data.featurize import (
    MINILM_DIM,
    ImageFeaturizer,
    decode_images,
    fixed_list_array,
    image_rows,
    list_array,
)
from itemsage.data.images import BACKBONES
from itemsage.data.rejects import Reject
from itemsage.data.text import Vocab
from itemsage.index.tower_udf import EmbedError
from itemsage.model import ItemFeatureStore
from itemsage.trained.loaded import TrainedModel

# Above this many images, "auto" featurization uses Ray Data (decode tasks + backbone actors)
# instead of one in-process loop: a few hundred images take seconds in-process, while starting
# actors costs more than that.
LOCAL_MAX_IMAGES = 2000


def model_preprocess_config(tm: TrainedModel, catalog: str, layout: str = "auto", **changes: Any) -> PreprocessConfig:
    """The model's own preprocessing config (backbone, text limits, engagement seed) for ``catalog``."""
    backbone = tm.image_backbone
    if backbone not in BACKBONES:
        raise EmbedError(
            f"model {tm.uri} was trained on {backbone!r} image features, which have no backbone to "
            f"compute them for a new catalog (supported: {', '.join(sorted(BACKBONES))})"
        )
    pcfg = tm.config.preprocess
    # The weights file resolved for this machine, not the training config's path (which may name
    # another backbone's file, or none when the features were preprocessed with another config).
    image = pcfg.image.replace(backbone=backbone, max_images_per_item=tm.max_images, weights_path=tm.image_weights_path)
    return pcfg.replace(catalog=str(catalog), layout=layout, image=image, **changes)


@dataclass
class CatalogFeatures:
    """A catalog featurized for one model: ``table`` has the items.parquet columns, row i = item i."""

    items: pd.DataFrame  # the normalised catalog (generic schema) with item_idx
    table: pa.Table
    rejects: list[Reject]
    layout: str
    image_dim: int
    has_title_emb: bool

    @property
    def item_ids(self) -> list[str]:
        return self.items["item_id"].astype(str).tolist()

    def store(self, max_images: int, text_fields: Sequence[str] = TEXT_FIELDS) -> ItemFeatureStore:
        return ItemFeatureStore.from_table(self.table, self.image_dim, tuple(text_fields), max_images)


def token_table(items: pd.DataFrame, vocab: Vocab, title_emb: np.ndarray | None) -> pa.Table:
    """``tok_<field>`` ids (and ``title_emb``, zeros when not computed) in the items.parquet types."""
    columns: dict[str, pa.Array] = {
        "title_emb": fixed_list_array(
            title_emb if title_emb is not None else np.zeros((len(items), MINILM_DIM), np.float32), pa.float32()
        )
    }
    for name in TEXT_FIELDS:
        columns[f"tok_{name}"] = list_array([vocab.encode(str(t or "")) for t in items[name]], pa.int32())
    return pa.table(columns)


def local_image_features(items: pd.DataFrame, pcfg: PreprocessConfig, dim: int, device: str) -> Any:
    """The preprocessing image UDFs (``decode_images`` -> ``ImageFeaturizer``) run in this process."""
    from itemsage.data.pipeline import ImageFeatures, group_image_features

    rows = image_rows(items)
    n = len(items)
    if rows.empty:
        return ImageFeatures(np.zeros(n, np.int32), np.zeros(0, np.float32), np.zeros((n, dim), np.float32), 0, [])
    featurizer = ImageFeaturizer(pcfg.image.backbone, pcfg.image.weights_path, device == "cuda", pcfg.image.num_threads)
    parts = []
    step = pcfg.image.batch_size
    for start in range(0, len(rows), step):
        chunk = rows.iloc[start : start + step]
        batch = {c: chunk[c].to_numpy() for c in chunk.columns}
        parts.append(featurizer(decode_images(batch, pcfg.image.backbone, pcfg.image.max_pixels)))
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return group_image_features(out, n, dim)


def featurize_items(
    items: pd.DataFrame,
    tm: TrainedModel,
    pcfg: PreprocessConfig,
    *,
    title_embeddings: bool = True,
    engine: str = "auto",
    device: str = "cpu",
) -> tuple[pa.Table, list[Reject]]:
    """Item features (items.parquet columns, row i = row i of ``items``) and image rejects.

    ``items`` are rows of a read catalog (generic schema). ``engine``: "local" runs the
    preprocessing UDFs in this process, "ray" the preprocessing Ray Data stages (decode tasks +
    backbone actor pool), "auto" Ray when connected to a cluster or above ``LOCAL_MAX_IMAGES``
    images. ``title_embeddings`` adds the MiniLM title embeddings that home-feed user features
    need (the item tower itself does not read them; zeros otherwise).
    """
    import ray

    if engine not in ("auto", "local", "ray"):
        raise ValueError(f"engine must be auto, local or ray; got {engine!r}")
    items = items.reset_index(drop=True)
    items["item_idx"] = np.arange(len(items), dtype=np.int64)
    n_images = int(sum(len(p) for p in items["image_paths"]))
    use_ray = engine == "ray" or (engine == "auto" and (ray.is_initialized() or n_images > LOCAL_MAX_IMAGES))
    if use_ray:
        images, title_emb = _ray_features(items, tm, pcfg, title_embeddings)
    else:
        images = local_image_features(items, pcfg, tm.image_dim, device)
        title_emb = _local_title_emb(items, device, tm.title_fallback) if title_embeddings else None
    from itemsage.data.pipeline import items_table

    return items_table(items, images, token_table(items, tm.vocab, title_emb), tm.image_dim), images.rejects


def featurize_catalog(
    catalog: str | Path,
    tm: TrainedModel,
    layout: str = "auto",
    *,
    title_embeddings: bool = True,
    engine: str = "auto",
    device: str = "cpu",
) -> CatalogFeatures:
    """Read ``catalog`` (any supported layout) and featurize it for ``tm``: its vocab, its image
    backbone, its limits (:func:`featurize_items`)."""
    from itemsage.data.pipeline import load_catalog

    pcfg = model_preprocess_config(tm, str(catalog), layout)
    result, items = load_catalog(pcfg)
    table, image_rejects = featurize_items(
        items, tm, pcfg, title_embeddings=title_embeddings, engine=engine, device=device
    )
    return CatalogFeatures(
        items, table, [*result.rejects, *image_rejects], result.layout, tm.image_dim, title_embeddings
    )


def _local_title_emb(items: pd.DataFrame, device: str, title_fallback: tuple[str, ...] = ()) -> np.ndarray:
    from itemsage.data.featurize import MINILM_BATCH, embedding_texts
    from itemsage.trained.queries import frozen_text_encoder

    # The frozen MiniLM, as in preprocessing (title_emb, with the model's title fallback), whatever
    # encodes this model's queries.
    encoder = frozen_text_encoder(device)
    return encoder.encode(embedding_texts(items, title_fallback), batch_size=MINILM_BATCH)


def _ray_features(
    items: pd.DataFrame, tm: TrainedModel, pcfg: PreprocessConfig, title_embeddings: bool
) -> tuple[Any, np.ndarray | None]:
    """Image features (and title embeddings) with the preprocessing Ray Data stages."""
    import ray

    from itemsage.data.featurize import cluster_resources, plan_stages
    from itemsage.data.pipeline import ensure_ray, featurize_images, featurize_text

    started = ensure_ray()
    try:
        plan = plan_stages(cluster_resources(), pcfg.image.concurrency, pcfg.image.num_threads)
        images = featurize_images(items, pcfg, plan, tm.image_dim)
        title_emb = None
        if title_embeddings:
            no_queries = pd.DataFrame({"query_idx": pd.Series([], dtype="int64"), "text": pd.Series([], dtype=str)})
            title_emb = featurize_text(
                items, no_queries, tm.vocab, plan, pcfg.rows_per_block, tm.title_fallback
            ).title_emb
        return images, title_emb
    finally:
        if started:
            ray.shutdown()

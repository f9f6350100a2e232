"""Batch item embedding: a trained item tower over a whole catalog, with Ray Data.

Two inputs, one output:

* a preprocessed features directory (``items.parquet``, docs/feature-format.md), read by Ray Data
  in streaming fashion, or
* a raw catalog in any supported layout (fashion / shopee / generic), read with the catalog
  adapters and featurized with *the model's* vocabulary and image backbone, so items the model
  never saw are embedded exactly as training would have featurized them.

Either way the rows go through ``ItemTowerActor`` (a Ray Data class UDF in an actor pool: one GPU
per actor when the cluster has GPUs) and land in an embeddings directory::

    <out>/
      *.parquet        item_id string, embedding list<float32> (embedding_dim values),
                       model_version string, content_hash string
      _manifest.json   model uri/name/version, dim, counts, timings (a leading "_" keeps Parquet
                       readers from taking it for data)

``content_hash`` is a hash of the item's normalised catalog row (id, image paths, the 12 text
fields). Incremental runs (``previous=``) embed only items whose hash is new or changed and carry
the other rows over unchanged; a previous directory made by another model version is never
carried over, because its vectors live in another space.

This module also holds what every inference entry point needs before it can embed anything:
:func:`load_model` (a trained model pinned to a version) and :func:`featurize_catalog` (catalog ->
item features with the model's vocab and backbone), used by ``itemsage.api`` and
``itemsage.eval.evaluate`` as well.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import posixpath
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from itemsage.config import TEXT_FIELDS, PipelineConfig, PreprocessConfig
from itemsage.manifest import ManifestFields
from itemsage.data.catalog import Reject
from itemsage.data.features_io import resolve, staged_output
from itemsage.data.featurize import (
    MINILM_DIM,
    ImageFeaturizer,
    decode_images,
    fixed_list_array,
    image_rows,
    list_array,
)
from itemsage.data.images import BACKBONES
from itemsage.data.text import Vocab
from itemsage.index.tower_udf import EMBEDDINGS_SCHEMA, EmbedError, ItemTowerActor, tag_rows
from itemsage.model import ItemFeatureStore, ItemSageModel

log = logging.getLogger(__name__)

EMBEDDINGS_FORMAT = "itemsage-embeddings"
EMBEDDINGS_VERSION = 1
MANIFEST_FILE = "_manifest.json"
# Columns of items.parquet the item tower reads. title_emb (MiniLM of the title, 1.5 KB a row) is
# read only by towers with model.use_title_embedding; otherwise it only feeds home-feed user features.
TOWER_COLUMNS = ("item_idx", "item_id", "image_feats", *(f"tok_{f}" for f in TEXT_FIELDS))

# Rows per tower call, measured on the default item tower (1 image + ~47 tokens per item, one
# torch thread, as in an actor). CPU (Xeon core): flat, 1.02k-1.11k items/s from 64 to 2048 rows,
# so 256 keeps a batch of 20-image items near 26 MB. GPU (H200): end to end (gather, copy,
# forward) 127k items/s at 256, 248k at 1024, ~130k at 2048 and above, while the forward alone
# gains only 6% past 1024: end to end, 1024 is the fastest.
CPU_BATCH_SIZE = 256
# Output block size of the stages before the tower actors (see embed_features).
TOWER_BLOCK_BYTES = 8 * 1024 * 1024
GPU_BATCH_SIZE = 1024
# Above this many images, "auto" featurization uses Ray Data (decode tasks + backbone actors)
# instead of one in-process loop: a few hundred images take seconds in-process, while starting
# actors costs more than that.
LOCAL_MAX_IMAGES = 2000


def tower_columns(tm: TrainedModel) -> list[str]:
    """The items.parquet columns ``tm``'s item tower reads."""
    return [*TOWER_COLUMNS, "title_emb"] if tm.uses_title_embedding else list(TOWER_COLUMNS)


# ------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class TrainedModel(ManifestFields):
    """A trained model pinned to one version, with what feeding it needs.

    ``version`` is the registry's number for ``models:/`` URIs and a hash of the bundle files
    otherwise (``itemsage.serve.bundle.resolve_model_ref``), the same label serving checks an
    index against.
    """

    model: ItemSageModel
    manifest: dict[str, Any]
    vocab: Vocab
    config: PipelineConfig
    uri: str
    name: str | None
    version: str
    registered: bool
    model_dir: Path


def load_model(uri_or_dir: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """Load ``models:/name/<version|latest>``, ``runs:/<id>/model`` or a bundle/checkpoint/run dir.

    Raises ``ModelNotFoundError`` (a ``FileNotFoundError``) naming the reference when nothing
    loadable is there.
    """
    from itemsage.serve.bundle import resolve_model_ref
    from itemsage.train.artifacts import (
        ModelNotFoundError,
        load_bundle_config,
        load_trained_model,
        resolve_model_dir,
    )

    ref_text = str(uri_or_dir)
    try:
        ref = resolve_model_ref(ref_text)
    except ModelNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - MLflow raises several types for "no such alias"
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelNotFoundError(f"model {ref_text!r} not found ({first})") from e
    model_dir = resolve_model_dir(ref.uri)
    model, manifest, vocab = load_trained_model(model_dir, device=device)
    model.requires_grad_(False)
    config = load_bundle_config(model_dir)
    return TrainedModel(model, manifest, vocab, config, ref.uri, ref.name, ref.version, ref.registered, model_dir)


def pick_device(device: str = "auto") -> str:
    """"auto" -> "cuda" when torch sees a GPU, else "cpu"; anything else unchanged."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


# -------------------------------------------------------------------------- featurization


def is_features_dir(path: str) -> bool:
    """True when ``path`` holds a preprocessed features directory (manifest + items.parquet)."""
    fs, root = resolve(str(path))
    return all(
        fs.get_file_info(posixpath.join(root, name)).type == pafs.FileType.File
        for name in ("manifest.json", "items.parquet")
    )


def check_features_compatible(features: str, tm: TrainedModel) -> dict[str, Any]:
    """The features' manifest, after checking that the model can read its token ids and images.

    Token ids are positions in one vocabulary; ids written with another vocab would silently
    select other tokens' embeddings, so a mismatch is an error, not a warning.
    """
    fs, root = resolve(str(features))
    with fs.open_input_stream(posixpath.join(root, "manifest.json")) as f:
        manifest = json.loads(f.read().decode())
    if int(manifest.get("image_dim", -1)) != tm.image_dim:
        raise EmbedError(
            f"features {features} have {manifest.get('image_dim')}-d image features "
            f"({manifest.get('backbone')}); model {tm.uri} reads {tm.image_dim}-d ({tm.image_backbone})"
        )
    with fs.open_input_stream(posixpath.join(root, "vocab.json")) as f:
        raw = f.read()
    if raw != (tm.model_dir / "vocab.json").read_bytes() and Vocab.from_dict(json.loads(raw)) != tm.vocab:
        raise EmbedError(
            f"features {features} were tokenized with another vocabulary than model {tm.uri}; "
            "pass the raw catalog instead (it is then tokenized with the model's vocab)"
        )
    return manifest


def model_preprocess_config(tm: TrainedModel, catalog: str, layout: str = "auto", **changes: Any) -> PreprocessConfig:
    """The model's own preprocessing config (backbone, text limits, engagement seed) for ``catalog``."""
    backbone = tm.image_backbone
    if backbone not in BACKBONES:
        raise EmbedError(
            f"model {tm.uri} was trained on {backbone!r} image features, which have no backbone to "
            f"compute them for a new catalog (supported: {', '.join(sorted(BACKBONES))})"
        )
    pcfg = tm.config.preprocess
    image = pcfg.image.replace(backbone=backbone, max_images_per_item=tm.max_images)
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
        title_emb = _local_title_emb(items, device) if title_embeddings else None
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
    table, image_rejects = featurize_items(items, tm, pcfg, title_embeddings=title_embeddings, engine=engine,
                                           device=device)
    return CatalogFeatures(items, table, [*result.rejects, *image_rejects], result.layout, tm.image_dim,
                           title_embeddings)


def _local_title_emb(items: pd.DataFrame, device: str) -> np.ndarray:
    from itemsage.data.featurize import MINILM_BATCH
    from itemsage.data.text_encoder import TextEncoder

    encoder = TextEncoder().to(device)
    return encoder.encode([str(t or "") for t in items["title"]], batch_size=MINILM_BATCH)


def _ray_features(items: pd.DataFrame, tm: TrainedModel, pcfg: PreprocessConfig, title_embeddings: bool) -> tuple[Any, np.ndarray | None]:
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
            title_emb = featurize_text(items, no_queries, tm.vocab, plan, pcfg.rows_per_block).title_emb
        return images, title_emb
    finally:
        if started:
            ray.shutdown()


# -------------------------------------------------------------------------- content hashes


def content_hashes(items: pd.DataFrame) -> np.ndarray:
    """A 16-hex-digit hash per item of its normalised catalog row (id, image paths, text fields).

    blake2b over canonical JSON: stable across processes and machines (never Python's ``hash``).
    The catalog readers resolve image paths to absolute paths, so a features directory's
    ``catalog.parquet`` and a fresh read of the same catalog hash alike. Image *bytes* are not
    hashed: replacing an image file under the same name is not seen as a change.
    """
    out = np.empty(len(items), dtype="<U16")
    paths = items["image_paths"].tolist() if "image_paths" in items.columns else [[]] * len(items)
    fields = [items[f].astype(str).tolist() if f in items.columns else [""] * len(items) for f in TEXT_FIELDS]
    for i, item_id in enumerate(items["item_id"].astype(str)):
        row = [item_id, [str(p) for p in (paths[i] if paths[i] is not None else [])], *(f[i] for f in fields)]
        blob = json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        out[i] = hashlib.blake2b(blob, digest_size=8).hexdigest()
    return out


# --------------------------------------------------------------------------- Ray Data stages


# ---------------------------------------------------------------------------- reading output


@dataclass
class Embeddings:
    """An embeddings directory read back: ids, vectors [N, dim] float32, and its provenance."""

    item_ids: list[str]
    vectors: np.ndarray
    content_hashes: list[str]
    model_version: str
    manifest: dict[str, Any]

    def __len__(self) -> int:
        return len(self.item_ids)


def _read_manifest(fs: pafs.FileSystem, root: str, where: str) -> dict[str, Any]:
    path = posixpath.join(root, MANIFEST_FILE)
    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        raise EmbedError(f"embeddings directory {where} does not exist")
    if fs.get_file_info(path).type != pafs.FileType.File:
        raise EmbedError(f"{where} is not an embeddings directory ({MANIFEST_FILE} is missing)")
    with fs.open_input_stream(path) as f:
        manifest = json.loads(f.read().decode())
    if manifest.get("format") != EMBEDDINGS_FORMAT:
        raise EmbedError(f"{where}/{MANIFEST_FILE} is not an {EMBEDDINGS_FORMAT} manifest")
    return manifest


def read_embeddings_table(path: str) -> tuple[pa.Table, dict[str, Any]]:
    """All rows of an embeddings directory as one Arrow table, and its manifest."""
    fs, root = resolve(str(path))
    manifest = _read_manifest(fs, root, str(path))
    dataset = pads.dataset(root, filesystem=fs, format="parquet", schema=EMBEDDINGS_SCHEMA)
    return dataset.to_table(), manifest


def read_embeddings(path: str) -> Embeddings:
    """Read an embeddings directory written by :func:`embed_features` (local path or URI).

    Every row must carry the manifest's model version and a vector of the manifest's dimension;
    anything else means the directory was mixed up, and is refused.
    """
    table, manifest = read_embeddings_table(path)
    version = str(manifest["model_version"])
    dim = int(manifest["dim"])
    versions = set(pc.unique(table.column("model_version")).to_pylist())
    if versions - {version}:
        raise EmbedError(f"{path} mixes model versions {sorted(versions)}; its manifest says {version}")
    col = table.column("embedding").combine_chunks()
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != dim).any():
        bad = int((lengths != dim).sum())
        raise EmbedError(f"{path}: {bad} embeddings do not have the manifest's {dim} values")
    vectors = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
    return Embeddings(
        item_ids=table.column("item_id").to_pylist(),
        vectors=vectors,
        content_hashes=table.column("content_hash").to_pylist(),
        model_version=version,
        manifest=manifest,
    )


# -------------------------------------------------------------------------------- incremental


@dataclass
class IncrementalPlan:
    """Which current items to embed and which previous rows to carry over."""

    embed: np.ndarray  # [N] bool over the current catalog
    carried: pa.Table  # previous rows kept as they are (EMBEDDINGS_SCHEMA)
    new: int
    changed: int
    unchanged: int
    removed: int
    reason: str


def plan_incremental(
    item_ids: Sequence[str], hashes: np.ndarray, previous: str | None, model_version: str
) -> IncrementalPlan:
    """Compare the current catalog with a previous embeddings directory (None: embed everything)."""
    n = len(item_ids)
    empty = EMBEDDINGS_SCHEMA.empty_table()
    if previous is None:
        return IncrementalPlan(np.ones(n, bool), empty, n, 0, 0, 0, "full run")
    table, manifest = read_embeddings_table(previous)
    prev_ids = table.column("item_id").to_pylist()
    if str(manifest.get("model_version")) != str(model_version):
        return IncrementalPlan(
            np.ones(n, bool), empty, n, 0, 0, len(prev_ids),
            f"previous embeddings are from model version {manifest.get('model_version')}, not "
            f"{model_version}: everything is re-embedded",
        )
    prev_hash = dict(zip(prev_ids, table.column("content_hash").to_pylist()))
    current = set(item_ids)
    status = np.array([0 if i not in prev_hash else (1 if prev_hash[i] != h else 2)
                       for i, h in zip(item_ids, hashes.tolist())], dtype=np.int8)
    unchanged_ids = {i for i, s in zip(item_ids, status) if s == 2}
    keep_prev = np.array([i in unchanged_ids for i in prev_ids], dtype=bool)
    return IncrementalPlan(
        embed=status != 2,
        carried=table.filter(pa.array(keep_prev)),
        new=int((status == 0).sum()),
        changed=int((status == 1).sum()),
        unchanged=int((status == 2).sum()),
        removed=sum(1 for i in prev_ids if i not in current),
        reason="incremental",
    )


# --------------------------------------------------------------------------------- the run


@dataclass
class EmbedSummary:
    """What an :func:`embed_features` run did; also written into the output's manifest."""

    out: str
    source: str
    model_uri: str
    model_name: str | None
    model_version: str
    dim: int
    total: int
    embedded: int
    carried: int
    new: int
    changed: int
    unchanged: int
    removed: int
    reason: str
    seconds: float
    embed_seconds: float
    batch_size: int
    concurrency: int
    num_gpus_per_actor: float
    rejects: dict[str, int] = field(default_factory=dict)

    @property
    def items_per_s(self) -> float:
        """Embedded items per second of the embedding stage (featurization excluded)."""
        return self.embedded / self.embed_seconds if self.embed_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["items_per_s"] = round(self.items_per_s, 2)
        return d

    def table(self) -> str:
        rows = [
            ("output", self.out),
            ("source", self.source),
            ("model", f"{self.model_uri} (version {self.model_version})"),
            ("items in catalog", f"{self.total:,}"),
            ("embedded", f"{self.embedded:,} (new {self.new:,}, changed {self.changed:,})"),
            ("carried over", f"{self.carried:,}"),
            ("removed", f"{self.removed:,}"),
            ("mode", self.reason),
            ("actors x GPUs", f"{self.concurrency} x {self.num_gpus_per_actor:g}, batch {self.batch_size}"),
            ("embedding items/s", f"{self.items_per_s:,.1f}"),
            ("time total", f"{self.seconds:.1f}s"),
        ]
        rows += [(f"skipped {k}", f"{v:,}") for k, v in self.rejects.items()]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}} | {v}" for k, v in rows)


def _resource_plan(concurrency: int, num_threads: int, use_gpu: str) -> Any:
    from itemsage.data.featurize import cluster_resources, plan_stages

    cluster = cluster_resources()
    if str(use_gpu).lower() in ("false", "no", "0", "cpu"):
        cluster = {**cluster, "GPU": 0.0}
    elif str(use_gpu).lower() in ("true", "yes", "1", "gpu") and cluster.get("GPU", 0.0) < 1:
        raise EmbedError("use_gpu=true but the Ray cluster has no GPU")
    return plan_stages(cluster, concurrency, num_threads)


def _features_source(features: str, tm: TrainedModel) -> tuple[list[str], np.ndarray, str]:
    """Item ids and content hashes of a features directory (from its catalog.parquet)."""
    check_features_compatible(features, tm)
    fs, root = resolve(features)
    catalog_path = posixpath.join(root, "catalog.parquet")
    if fs.get_file_info(catalog_path).type != pafs.FileType.File:
        raise EmbedError(f"features {features} have no catalog.parquet to hash items by")
    catalog = pq.read_table(catalog_path, filesystem=fs).to_pandas()
    ids = pq.read_table(posixpath.join(root, "items.parquet"), filesystem=fs, columns=["item_id"]).column("item_id").to_pylist()
    if ids != catalog["item_id"].astype(str).tolist():
        raise EmbedError(f"features {features}: items.parquet and catalog.parquet disagree on item order")
    return ids, content_hashes(catalog), posixpath.join(root, "items.parquet")


def embed_features(
    model: str | TrainedModel,
    source: str,
    out: str,
    *,
    layout: str = "auto",
    previous: str | None = None,
    batch_size: int | None = None,
    concurrency: int = 1,
    num_threads: int = 0,
    use_gpu: str = "auto",
) -> EmbedSummary:
    """Embed every item of ``source`` (features dir or raw catalog) into the directory ``out``.

    ``previous`` (an earlier output) makes the run incremental: only new and changed items go
    through the tower, unchanged rows are copied. ``concurrency`` is the tower actor-pool size
    (capped at the GPU count on GPU clusters), ``num_threads`` the torch threads per actor (0: one
    per reserved CPU), ``batch_size`` rows per tower call (default ``GPU_BATCH_SIZE`` /
    ``CPU_BATCH_SIZE``). ``out`` is replaced all at once when the run succeeds. Uses the connected
    Ray cluster, or starts (and stops) a local one.
    """
    import ray

    from itemsage.data.pipeline import ensure_ray

    start = time.perf_counter()
    tm = model if isinstance(model, TrainedModel) else load_model(model)
    started = ensure_ray()
    ctx = ray.data.DataContext.get_current()
    block_bytes = ctx.target_max_block_size
    # Small blocks: Ray Data reads a Parquet file as one block, and a block goes to one actor, so
    # with the default 128 MiB an actor pool over one items.parquet would run on a single actor.
    ctx.target_max_block_size = min(block_bytes or TOWER_BLOCK_BYTES, TOWER_BLOCK_BYTES)
    try:
        plan = _resource_plan(concurrency, num_threads, use_gpu)
        batch = batch_size or (GPU_BATCH_SIZE if plan.use_gpu else CPU_BATCH_SIZE)
        if batch < 1:
            raise EmbedError(f"batch_size must be >= 1, got {batch}")
        rejects: list[Reject] = []
        if is_features_dir(source):
            ids, hashes, items_path = _features_source(source, tm)
            inc = plan_incremental(ids, hashes, previous, tm.version)
            fs, _ = resolve(source)
            ds = None
            if inc.embed.any():
                ds = ray.data.read_parquet(items_path, filesystem=fs, columns=tower_columns(tm))
                keep = None if inc.embed.all() else inc.embed
                ds = ds.map_batches(tag_rows, fn_kwargs={"hashes": hashes, "keep": keep},
                                    batch_format="pyarrow", batch_size=batch)
        else:
            from itemsage.data.pipeline import load_catalog

            pcfg = model_preprocess_config(tm, source, layout)
            read, items = load_catalog(pcfg)
            rejects = list(read.rejects)
            ids = items["item_id"].astype(str).tolist()
            hashes = content_hashes(items)
            inc = plan_incremental(ids, hashes, previous, tm.version)
            ds = None
            if inc.embed.any():
                # Only new and changed items pay for image decoding and the backbone.
                table, image_rejects = featurize_items(items[inc.embed], tm, pcfg,
                                                       title_embeddings=tm.uses_title_embedding, engine="ray")
                rejects += image_rejects
                table = table.select(tower_columns(tm)).append_column(
                    "content_hash", pa.array(hashes[inc.embed].tolist(), pa.string()))
                ds = ray.data.from_arrow([table.slice(i, batch) for i in range(0, table.num_rows, batch)])
        summary = _write(ds, inc, tm, out, source, plan, batch, start)
        summary.rejects = dict(sorted(Counter(f"{r.stage}/{r.reason}" for r in rejects).items()))
        return summary
    finally:
        ctx.target_max_block_size = block_bytes
        if started:
            ray.shutdown()


def _write(ds: Any, inc: IncrementalPlan, tm: TrainedModel, out: str, source: str, plan: Any,
           batch: int, start: float) -> EmbedSummary:
    """Run the tower stage into a staging dir, add the carried rows and the manifest, swap in."""
    import ray

    embedded, embed_s = 0, 0.0
    with staged_output(out) as st:
        if ds is not None:
            # A CPU copy: the caller's model stays where it is, and CPU-only actors can load it.
            tower_ref = ray.put(copy.deepcopy(tm.model.item_tower).cpu())
            ds = ds.map_batches(
                ItemTowerActor,
                fn_constructor_kwargs={
                    "tower_ref": [tower_ref],
                    "image_dim": tm.image_dim,
                    "text_fields": tm.text_fields,
                    "max_images": tm.max_images,
                    "model_version": tm.version,
                    "use_gpu": plan.use_gpu,
                    "torch_threads": plan.torch_threads,
                },
                batch_size=batch,
                batch_format="pyarrow",
                concurrency=plan.concurrency,
                num_cpus=plan.actor_cpus,
                num_gpus=plan.actor_gpus or None,
            )
            t0 = time.perf_counter()
            ds.write_parquet(st.staging, filesystem=st.fs)
            embed_s = time.perf_counter() - t0
            embedded = _count_rows(st.fs, st.staging)
            if embedded != int(inc.embed.sum()):
                raise RuntimeError(f"the tower stage wrote {embedded} rows for {int(inc.embed.sum())} items")
        if inc.carried.num_rows:
            st.write_parquet("carried.parquet", inc.carried)
        summary = EmbedSummary(
            out=out, source=str(source), model_uri=tm.uri, model_name=tm.name, model_version=tm.version,
            dim=tm.embedding_dim, total=len(inc.embed), embedded=embedded, carried=inc.carried.num_rows,
            new=inc.new, changed=inc.changed, unchanged=inc.unchanged, removed=inc.removed, reason=inc.reason,
            seconds=0.0, embed_seconds=round(embed_s, 3), batch_size=batch, concurrency=plan.concurrency,
            num_gpus_per_actor=plan.actor_gpus,
        )
        summary.seconds = round(time.perf_counter() - start, 3)
        st.write_json(MANIFEST_FILE, {
            "format": EMBEDDINGS_FORMAT,
            "version": EMBEDDINGS_VERSION,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **summary.to_dict(),
        })
    return summary


def _count_rows(fs: pafs.FileSystem, root: str) -> int:
    return pads.dataset(root, filesystem=fs, format="parquet").count_rows()

"""Batch item embedding: a trained item tower over a whole catalog, as a Ray Data job.

Two inputs, one output:

* a preprocessed features directory (``items.parquet``, docs/feature-format.md), read by Ray Data
  in streaming fashion, or
* a raw catalog in any supported layout (fashion / shopee / generic), featurized with *the
  model's* vocabulary and image backbone (:mod:`itemsage.index.featurize`).

Either way the rows go through ``ItemTowerActor`` (a Ray Data class UDF in an actor pool: one GPU
per actor when the cluster has GPUs) and land in an embeddings directory
(:mod:`itemsage.index.embeddings`: format, reading back, incremental plans). Models come from
:func:`itemsage.trained.load_trained`.
"""

from __future__ import annotations

import copy
import dataclasses
import posixpath
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from itemsage.config import TEXT_FIELDS
from itemsage.data.features_io import resolve, staged_output
from itemsage.data.rejects import Reject
from itemsage.index.compat import check_features_compatible, is_features_dir
from itemsage.index.embeddings import (
    EMBEDDINGS_FORMAT,
    EMBEDDINGS_VERSION,
    MANIFEST_FILE,
    IncrementalPlan,
    content_hashes,
    plan_incremental,
)
from itemsage.index.featurize import featurize_items, model_preprocess_config
from itemsage.index.tower_udf import EmbedError, ItemTowerActor, tag_rows
from itemsage.trained.loaded import TrainedModel, load_trained

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


def tower_columns(tm: TrainedModel) -> list[str]:
    """The items.parquet columns ``tm``'s item tower reads."""
    return [*TOWER_COLUMNS, "title_emb"] if tm.uses_title_embedding else list(TOWER_COLUMNS)


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
    ids = (
        pq.read_table(posixpath.join(root, "items.parquet"), filesystem=fs, columns=["item_id"])
        .column("item_id")
        .to_pylist()
    )
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
    tm = model if isinstance(model, TrainedModel) else load_trained(model)
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
                ds = ds.map_batches(
                    # Ray's annotation takes a one-argument function; the rest arrive through fn_kwargs.
                    tag_rows,  # type: ignore[arg-type]
                    fn_kwargs={"hashes": hashes, "keep": keep},
                    batch_format="pyarrow",
                    batch_size=batch,
                )
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
                table, image_rejects = featurize_items(
                    items[inc.embed], tm, pcfg, title_embeddings=tm.uses_title_embedding, engine="ray"
                )
                rejects += image_rejects
                table = table.select(tower_columns(tm)).append_column(
                    "content_hash", pa.array(hashes[inc.embed].tolist(), pa.string())
                )
                ds = ray.data.from_arrow([table.slice(i, batch) for i in range(0, table.num_rows, batch)])
        summary = _write(ds, inc, tm, out, source, plan, batch, start)
        summary.rejects = dict(sorted(Counter(f"{r.stage}/{r.reason}" for r in rejects).items()))
        return summary
    finally:
        ctx.target_max_block_size = block_bytes
        if started:
            ray.shutdown()


def _write(
    ds: Any, inc: IncrementalPlan, tm: TrainedModel, out: str, source: str, plan: Any, batch: int, start: float
) -> EmbedSummary:
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
            out=out,
            source=str(source),
            model_uri=tm.uri,
            model_name=tm.name,
            model_version=tm.version,
            dim=tm.embedding_dim,
            total=len(inc.embed),
            embedded=embedded,
            carried=inc.carried.num_rows,
            new=inc.new,
            changed=inc.changed,
            unchanged=inc.unchanged,
            removed=inc.removed,
            reason=inc.reason,
            seconds=0.0,
            embed_seconds=round(embed_s, 3),
            batch_size=batch,
            concurrency=plan.concurrency,
            num_gpus_per_actor=plan.actor_gpus,
        )
        summary.seconds = round(time.perf_counter() - start, 3)
        st.write_json(
            MANIFEST_FILE,
            {
                "format": EMBEDDINGS_FORMAT,
                "version": EMBEDDINGS_VERSION,
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                **summary.to_dict(),
            },
        )
    return summary


def _count_rows(fs: pafs.FileSystem, root: str) -> int:
    return pads.dataset(root, filesystem=fs, format="parquet").count_rows()

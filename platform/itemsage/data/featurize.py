"""Ray Data stages that turn catalog rows into model inputs: image features, token ids, MiniLM.

Image work is split in two stages, the standard Ray Data batch-inference shape:

1. ``decode_images`` (stateless tasks, CPU): read + decode + resize/crop each image with the
   backbone's own ``preprocess``. A bad image becomes ``ok=False`` with the decoder's reason; it
   never fails the batch.
2. ``ImageFeaturizer`` (actor pool, GPU when the cluster has one): run the frozen backbone on the
   decoded pixels. The model is loaded once per actor, and decoding never stalls the accelerator
   because it happens in other processes, streamed ahead by Ray Data.

The image dataset has one row per *image*, not per item, so a batch is always ``batch_size``
images whatever the catalog's images-per-item mix (0..20); features are regrouped per item by
``item_idx``/``img_pos`` afterwards.

Text is one more actor stage, ``TextFeaturizer``: vocab token ids for the 12 fields and the frozen
MiniLM embedding of the title, with the search queries riding along as title-only rows.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import pandas as pd
import pyarrow as pa
import ray
import torch
from torch import nn

from itemsage.config import TEXT_FIELDS
from itemsage.data.features_io import fixed_list_array
from itemsage.data.images import BACKBONES, ImageBackbone, ImageDecodeError, get_backbone, load_image
from itemsage.data.text import Vocab, title_embedding_text

MINILM_DIM = 384
# MiniLM batch inside one Ray batch: titles and queries are short, so 64 keeps padding small.
MINILM_BATCH = 64


@dataclass(frozen=True)
class StagePlan:
    """Resources of the model stages, decided once from the cluster (see ``plan_stages``)."""

    concurrency: int
    actor_cpus: float
    actor_gpus: float
    decode_cpus: float
    decode_concurrency: int | None
    torch_threads: int

    @property
    def use_gpu(self) -> bool:
        return self.actor_gpus > 0


def plan_stages(
    cluster: dict[str, float],
    concurrency: int,
    num_threads: int = 0,
    decode_workers: int | None = None,
) -> StagePlan:
    """Size the actor pools so Ray Data cannot starve.

    Actors hold their CPUs for the whole stage. If the pool took every CPU, no decode/read task
    could ever be scheduled and the actors would wait forever for input; so the pool together
    leaves at least one CPU (half the cluster on a 1-CPU box) for the tasks. Each actor reserves
    ``num_threads`` CPUs (1 when 0) or its share of what is left, whichever is less, and runs
    torch with ``num_threads`` threads (0: one per whole reserved CPU, at least one). On a GPU
    cluster each actor also takes one GPU.
    """
    if concurrency < 1:
        raise ValueError(f"image.concurrency must be >= 1, got {concurrency}")
    cpus = float(cluster.get("CPU", 1.0))
    gpus = float(cluster.get("GPU", 0.0))
    if gpus >= 1:
        # A fixed-size pool waits for all its actors; more one-GPU actors than GPUs would hang.
        concurrency = min(concurrency, int(gpus))
    task_reserve = 1.0 if cpus >= 2 else cpus / 2
    want = float(num_threads) if num_threads > 0 else 1.0
    # Rounded down to Ray's resource precision, so the pool never adds up to more than is free.
    actor_cpus = max(1e-3, math.floor(min(want, (cpus - task_reserve) / concurrency) * 1000) / 1000)
    # Never more torch threads than CPUs actually reserved: oversubscription slows everyone down.
    threads = num_threads if num_threads > 0 else max(1, math.floor(actor_cpus))
    return StagePlan(
        concurrency=concurrency,
        actor_cpus=actor_cpus,
        actor_gpus=1.0 if gpus >= 1 else 0.0,
        decode_cpus=min(1.0, task_reserve),
        decode_concurrency=decode_workers,
        torch_threads=int(threads),
    )


def cluster_resources() -> dict[str, float]:
    return {k: float(v) for k, v in ray.cluster_resources().items()}


def _device(use_gpu: bool) -> str:
    return "cuda" if use_gpu and torch.cuda.is_available() else "cpu"


def _set_threads(n: int) -> None:
    if n > 0:
        torch.set_num_threads(n)


# ------------------------------------------------------------------------------------- images


def image_rows(items: pd.DataFrame) -> pd.DataFrame:
    """One row per image of ``items`` (needs ``item_idx``, ``item_id``, ``image_paths``)."""
    rows = [
        (idx, item_id, pos, path)
        for idx, item_id, paths in zip(items["item_idx"], items["item_id"], items["image_paths"])
        for pos, path in enumerate(list(paths) if paths is not None else [])
    ]
    return pd.DataFrame(rows, columns=["item_idx", "item_id", "img_pos", "path"]).astype(
        {"item_idx": "int64", "item_id": str, "img_pos": "int32", "path": str}
    )


@functools.lru_cache(maxsize=4)
def _preprocessor(backbone: str) -> ImageBackbone:
    """The backbone's preprocessing without its weights: decode tasks need no model."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown image backbone {backbone!r}; supported: {', '.join(sorted(BACKBONES))}")
    return ImageBackbone(backbone, BACKBONES[backbone], nn.Identity())


def decode_one(path: str, backbone: str, max_pixels: int) -> tuple[np.ndarray | None, str, str]:
    """``(pixels [3,S,S] float32, "", "")`` or ``(None, reason, detail)`` for a bad image."""
    try:
        img = load_image(path, max_pixels)
    except ImageDecodeError as e:
        return None, e.reason, e.detail or str(e)
    try:
        return _preprocessor(backbone).preprocess(img).numpy(), "", ""
    except (OSError, ValueError, RuntimeError) as e:
        # Decoded but unusable pixels (e.g. a degenerate size): one image, not the whole run.
        return None, "corrupt_image", f"preprocess failed: {e}"


def decode_images(batch: dict[str, np.ndarray], backbone: str, max_pixels: int) -> dict[str, np.ndarray]:
    """Ray Data task UDF: paths -> preprocessed pixels, with a reason for every failed image."""
    size = _preprocessor(backbone).image_size
    n = len(batch["path"])
    pixels = np.zeros((n, 3, size, size), dtype=np.float32)
    ok = np.zeros(n, dtype=bool)
    reason = np.full(n, "", dtype=object)
    detail = np.full(n, "", dtype=object)
    for i, path in enumerate(batch["path"]):
        px, reason[i], detail[i] = decode_one(str(path), backbone, max_pixels)
        if px is not None:
            pixels[i], ok[i] = px, True
    return {
        "item_idx": batch["item_idx"],
        "item_id": batch["item_id"],
        "img_pos": batch["img_pos"],
        "path": batch["path"],
        "pixels": pixels,
        "ok": ok,
        "reason": reason.astype(str),
        "detail": detail.astype(str),
    }


class ImageFeaturizer:
    """Ray Data actor UDF: decoded pixels -> frozen backbone features (``feat``, [n, dim])."""

    def __init__(self, backbone: str, weights_path: str | None, use_gpu: bool, torch_threads: int) -> None:
        _set_threads(torch_threads)
        self.device = _device(use_gpu)
        self.model = get_backbone(backbone, weights_path, self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.asarray(batch["ok"], dtype=bool)
        feats = np.zeros((len(ok), self.model.dim), dtype=np.float32)
        if ok.any():
            # Boolean indexing copies, so the tensor does not alias Ray's read-only buffer.
            x = torch.from_numpy(np.asarray(batch["pixels"])[ok]).to(self.device, non_blocking=True)
            with torch.inference_mode():
                feats[ok] = self.model(x).float().cpu().numpy()
        out = {k: batch[k] for k in ("item_idx", "item_id", "img_pos", "path", "ok", "reason", "detail")}
        out["feat"] = feats
        return out


# A Ray worker with torch/torchvision imported and a few batches through it (measured: up to
# ~640 MiB on the full fashion catalog; Ray Data warns when a task outgrows its reservation).
DECODE_WORKER_BYTES = 768 * 1024**2


def decode_memory_bytes(backbone: str, batch_size: int) -> int:
    """Memory a decode task reserves: the worker itself plus its batch of float32 pixels, in and
    out of the UDF.

    Besides capping decode tasks by RAM on small nodes, this keeps the decode tasks' resource
    request different from the model actors', which is what stops Ray Data from fusing decoding
    into the actors (fusion needs identical remote args): decoding then runs in its own task pool,
    beside the model, instead of serially inside it.
    """
    size = _preprocessor(backbone).image_size
    return DECODE_WORKER_BYTES + 2 * batch_size * 3 * size * size * 4


def image_feature_dataset(
    images: pd.DataFrame,
    *,
    backbone: str,
    weights_path: str | None,
    max_pixels: int,
    batch_size: int,
    plan: StagePlan,
    rows_per_block: int,
    featurizer: type[ImageFeaturizer] = ImageFeaturizer,
) -> ray.data.Dataset:
    """Lazy dataset: ``image_rows`` -> decode tasks -> backbone actor pool.

    ``featurizer`` lets the benchmark time batches inside the actors with a subclass.
    """
    ds: ray.data.Dataset = ray.data.from_pandas(_blocks(images, rows_per_block))
    ds = ds.map_batches(
        # Ray's annotation takes a one-argument function; the rest arrive through fn_kwargs.
        decode_images,  # type: ignore[arg-type]
        fn_kwargs={"backbone": backbone, "max_pixels": max_pixels},
        batch_size=batch_size,
        num_cpus=plan.decode_cpus,
        memory=decode_memory_bytes(backbone, batch_size),
        compute=ray.data.TaskPoolStrategy(size=plan.decode_concurrency) if plan.decode_concurrency else None,
    )
    return ds.map_batches(
        featurizer,
        fn_constructor_kwargs={
            "backbone": backbone,
            "weights_path": weights_path,
            "use_gpu": plan.use_gpu,
            "torch_threads": plan.torch_threads,
        },
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=plan.concurrency),
        num_cpus=plan.actor_cpus,
        num_gpus=plan.actor_gpus or None,
    )


def _blocks(df: pd.DataFrame, rows_per_block: int) -> list[pd.DataFrame]:
    """Split into blocks of ``rows_per_block`` rows so the stages stream instead of one big block."""
    if len(df) == 0:
        return [df]
    step = max(1, rows_per_block)
    return [df.iloc[i : i + step].reset_index(drop=True) for i in range(0, len(df), step)]


# --------------------------------------------------------------------------------------- text


def list_array(arrays: list[np.ndarray], dtype: pa.DataType) -> pa.ListArray:
    """Ragged numpy arrays -> one Arrow ``list<dtype>`` column, built from offsets (no per-value
    Python objects)."""
    lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] > np.iinfo(np.int32).max:
        raise ValueError(f"{offsets[-1]} values exceed one list<...> column; shard the output")
    np_type = dtype.to_pandas_dtype()
    values = np.concatenate(arrays).astype(np_type, copy=False) if arrays else np.zeros(0, np_type)
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, type=dtype))


def embedding_texts(items: pd.DataFrame, title_fallback: Sequence[str] = ()) -> list[str]:
    """Each item's title embedding text (``itemsage.data.text.title_embedding_text``), in row order."""
    columns = ["title", *(f for f in title_fallback if f in items.columns)]
    return [title_embedding_text(dict(zip(columns, row)), title_fallback) for row in items[columns].itertuples(False)]


def text_rows(
    items: pd.DataFrame, queries: pd.DataFrame | None = None, title_fallback: Sequence[str] = ()
) -> pd.DataFrame:
    """One row per text job: every item (``kind`` "item", ``key`` = item_idx, its 12 fields, and
    ``embed_text``: the title, or its ``title_fallback`` when it is empty) and every search query to
    embed (``kind`` "query", ``key`` = query_idx, the text as ``title`` and ``embed_text``).

    Queries ride along with the items so one actor pool (one MiniLM load per actor) serves both.
    """
    rows = items[["item_idx", *TEXT_FIELDS]].rename(columns={"item_idx": "key"})
    rows.insert(0, "kind", "item")
    rows["embed_text"] = embedding_texts(items, title_fallback)
    if queries is not None and len(queries):
        text = queries["text"].astype(str).to_numpy()
        q = pd.DataFrame(
            {"kind": "query", "key": queries["query_idx"].to_numpy(np.int64), "title": text, "embed_text": text}
        )
        for name in TEXT_FIELDS[1:]:
            q[name] = ""
        rows = pd.concat([rows, q[rows.columns]], ignore_index=True)
    return rows.astype({"key": "int64"})


class TextFeaturizer:
    """Ray Data actor UDF: text rows -> ``tok_<field>`` vocab ids + frozen MiniLM ``title_emb`` (of
    each row's ``embed_text``).

    Query rows only need the embedding; their token lists stay empty.
    """

    def __init__(self, vocab: Vocab, use_gpu: bool, torch_threads: int) -> None:
        from itemsage.data.text_encoder import TextEncoder

        _set_threads(torch_threads)
        self.encoder = TextEncoder().to(_device(use_gpu))
        self.vocab = vocab

    def __call__(self, batch: pa.Table) -> pa.Table:
        is_item = [k == "item" for k in batch.column("kind").to_pylist()]
        columns: dict[str, pa.Array] = {
            "kind": batch.column("kind").combine_chunks(),
            "key": batch.column("key").combine_chunks(),
        }
        empty = np.zeros(0, dtype=np.int32)
        for name in TEXT_FIELDS:
            texts = batch.column(name).to_pylist()
            ids = [self.vocab.encode(t or "") if item else empty for t, item in zip(texts, is_item)]
            columns[f"tok_{name}"] = list_array(ids, pa.int32())
        # TextEncoder gives empty/blank texts a zero vector: the format's "no title".
        titles = [t or "" for t in batch.column("embed_text").to_pylist()]
        columns["title_emb"] = fixed_list_array(self.encoder.encode(titles, batch_size=MINILM_BATCH), pa.float32())
        return pa.table(columns)


def text_feature_dataset(rows: pd.DataFrame, vocab: Vocab, plan: StagePlan, rows_per_block: int) -> ray.data.Dataset:
    """Lazy dataset: ``text_rows`` -> token ids + title/query embedding, keyed by (kind, key)."""
    ds = ray.data.from_pandas(_blocks(rows, rows_per_block))
    return ds.map_batches(
        TextFeaturizer,
        fn_constructor_kwargs={"vocab": vocab, "use_gpu": plan.use_gpu, "torch_threads": plan.torch_threads},
        batch_format="pyarrow",
        batch_size=rows_per_block,
        compute=ray.data.ActorPoolStrategy(size=plan.concurrency),
        num_cpus=plan.actor_cpus,
        num_gpus=plan.actor_gpus or None,
    )


def collect_table(ds: ray.data.Dataset) -> pa.Table | None:
    """Run ``ds`` and gather its rows on the driver as one Arrow table (None when empty)."""
    # Ray types a batch as the union of every batch format; batch_format picks one.
    batches = cast(Iterable[pa.Table], ds.iter_batches(batch_format="pyarrow", batch_size=None))
    tables = [b for b in batches if b.num_rows]
    return pa.concat_tables(tables).combine_chunks() if tables else None


def collect_numpy(ds: ray.data.Dataset) -> dict[str, np.ndarray] | None:
    """Run ``ds`` and gather its columns on the driver as numpy arrays (None when empty).

    Numpy rather than Arrow for tensor columns (image features): they come back as [n, dim]
    arrays without a per-row conversion.
    """
    batches = cast(Iterable[dict[str, np.ndarray]], ds.iter_batches(batch_format="numpy", batch_size=None))
    parts = [b for b in batches if len(next(iter(b.values())))]
    if not parts:
        return None
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

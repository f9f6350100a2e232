"""The embeddings directory batch embedding writes: its format, reading it back, and what an
incremental run re-embeds.

::

    <out>/
      *.parquet        item_id string, embedding list<float32> (embedding_dim values),
                       model_version string, content_hash string
      _manifest.json   model uri/name/version, dim, counts, timings (a leading "_" keeps Parquet
                       readers from taking it for data)

``content_hash`` is a hash of the item's normalised catalog row (id, image paths, the 12 text
fields). Incremental runs embed only items whose hash is new or changed and carry the other rows
over unchanged; a previous directory made by another model version is never carried over,
because its vectors live in another space.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from itemsage.config import TEXT_FIELDS
from itemsage.data.features_io import resolve
from itemsage.index.tower_udf import EMBEDDINGS_SCHEMA, EmbedError

EMBEDDINGS_FORMAT = "itemsage-embeddings"
EMBEDDINGS_VERSION = 1
MANIFEST_FILE = "_manifest.json"


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
            np.ones(n, bool),
            empty,
            n,
            0,
            0,
            len(prev_ids),
            f"previous embeddings are from model version {manifest.get('model_version')}, not "
            f"{model_version}: everything is re-embedded",
        )
    prev_hash = dict(zip(prev_ids, table.column("content_hash").to_pylist()))
    current = set(item_ids)
    status = np.array(
        [0 if i not in prev_hash else (1 if prev_hash[i] != h else 2) for i, h in zip(item_ids, hashes.tolist())],
        dtype=np.int8,
    )
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

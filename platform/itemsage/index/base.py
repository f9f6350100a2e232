"""The ``ItemIndex`` interface, its errors, and input validation shared by every index type.

Subclasses (``FaissIndex``, ``TorchExactIndex``) only move vectors and labels; ids, validation,
result shaping and atomic saving live here once, so every index type behaves the same at the
edges: the same errors for the same bad input, the same on-disk layout.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from itemsage.config import FilterSearchConfig
from itemsage.files import StagingDir, fsync_dir, fsync_file, publish_dir

try:
    import faiss
except ImportError as e:  # FAISS is an extra: exactly one of two builds (pyproject.toml says why)
    raise ImportError(
        "FAISS is not installed: install the project with `make install` (CPU) or `make install "
        "FAISS=gpu` (CUDA), or pip install -e '.[cpu]' (docs/gpu.md for the GPU build)"
    ) from e

from itemsage.index.attributes import AttributeTable, Selection
from itemsage.index.filtered import filtered_search
from itemsage.index.filters import Filter, FilterError, parse_filter
from itemsage.index.idmap import IdMap, check_id_batch
from itemsage.index.lexical import LexicalIndex
from itemsage.index.storage import (
    FORMAT_VERSION,
    IDS_FILE,
    METADATA_FILE,
    check_replaceable,
    file_digest,
    write_error,
)


class NonFiniteError(ValueError):
    """Some embedding rows contain NaN or inf; ``count`` says how many, ``rows`` which."""

    def __init__(self, message: str, count: int, rows: list[int]) -> None:
        super().__init__(message)
        self.count = count
        self.rows = rows


class UnsupportedOperationError(NotImplementedError):
    """The index type cannot do this (e.g. removing vectors from an HNSW graph)."""


class IndexMismatchError(ValueError):
    """A saved index does not match what the caller expects (model version, dimension)."""


def as_vectors(
    x: Any, dim: int | None, what: str, ids: Sequence[str] | None = None, allow_empty: bool = False
) -> np.ndarray:
    """``x`` as a C-contiguous float32 [n, dim] array, or a clear error.

    Non-finite values are checked after the float32 cast, so float64 values too large for
    float32 (which become inf) are caught as well.
    """
    arr = np.asarray(x)
    if arr.ndim == 1 and what == "queries":
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array [n, dim]; got shape {arr.shape}")
    if arr.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{what} is empty (0 rows)")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{what} have dimension {arr.shape[1]} but the index dimension is {dim}")
    if arr.shape[1] == 0:
        raise ValueError(f"{what} have dimension 0")
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{what} must be real numbers; got dtype {arr.dtype}")
    with np.errstate(over="ignore"):
        arr = np.ascontiguousarray(arr, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
    if bad.size:
        rows = bad.tolist()
        where = (
            "item ids " + ", ".join(repr(ids[r]) for r in rows[:5])
            if ids is not None
            else "rows " + ", ".join(map(str, rows[:5]))
        )
        raise NonFiniteError(
            f"{len(rows)} of {arr.shape[0]} {what} rows contain NaN or inf ({where}"
            f"{', ...' if len(rows) > 5 else ''}); {'nothing was added. ' if what == 'embeddings' else ''}"
            "Fix or drop these rows.",
            count=len(rows),
            rows=rows,
        )
    return arr


def _one_query(x: Any, dim: int) -> np.ndarray | None:
    """``x`` itself when it is already one finite float32 C-contiguous [1, dim] query (a request's
    embedding): what :func:`as_vectors` would return, for a dot product instead of its checks.
    None: anything else (``as_vectors`` checks it)."""
    if type(x) is not np.ndarray or x.dtype != np.float32 or x.shape != (1, dim) or not x.flags.c_contiguous:
        return None
    row = x[0]
    # NaN or inf anywhere makes the squared norm non-finite; a finite vector whose squared norm
    # overflows is left to as_vectors' element-wise check.
    return x if math.isfinite(float(row @ row)) else None


def parse_use_gpu(use_gpu: str | bool) -> bool | None:
    """``True`` (GPU required), ``False`` (CPU) or ``None`` ("auto": GPU when available)."""
    if isinstance(use_gpu, bool):
        return use_gpu
    value = str(use_gpu).strip().lower()
    if value == "auto":
        return None
    if value in ("true", "yes", "1", "gpu"):
        return True
    if value in ("false", "no", "0", "cpu"):
        return False
    raise ValueError(f"use_gpu must be 'auto', true or false; got {use_gpu!r}")


def faiss_gpu_available() -> bool:
    """faiss-gpu is installed and sees a GPU (faiss-cpu has no ``StandardGpuResources``)."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def torch_cuda_available() -> bool:
    """torch sees a CUDA device. Importing torch costs seconds, so a machine without NVIDIA
    device nodes (every CPU-only box) is answered without importing it."""
    if "torch" not in sys.modules and not any(Path("/dev").glob("nvidia[0-9]*")):
        return False
    try:
        import torch
    except ImportError:  # torch is a project dependency, but the index must not need it
        return False
    return bool(torch.cuda.is_available())


def _utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


class ItemIndex(ABC):
    """Nearest-neighbour index over inner product, keyed by string item ids.

    The design choices (labels, removal, NaN policy, GPU, atomic saves) are explained in
    ``itemsage.index.faiss_index``. Concurrency: ``search`` may run from several threads at once
    (FAISS CPU search is thread-safe); ``add`` / ``remove`` / ``set_search_params`` must not overlap
    with searches, so a server should update a copy and swap it in (or hold a lock).
    """

    def __init__(self, spec: str, dim: int, idmap: IdMap) -> None:
        self.spec = spec
        self._dim = dim
        self.idmap = idmap
        # Provenance, written to metadata.json: which model produced these embeddings, when, and
        # which sweep chose this index. Set by the caller (build_index kwargs, pipeline, sweep).
        self.model_name: str | None = None
        self.model_version: str | None = None
        self.created_at: str = _utc_now()
        self.sweep: dict[str, Any] | None = None
        # Filterable catalog attributes (bitmaps over labels), saved with the index; None: no filters.
        self.attributes: AttributeTable | None = None
        # BM25 over the items' text under the same labels (itemsage.index.lexical), saved with the
        # index; None: dense search only.
        self.lexical: LexicalIndex | None = None

    # ---- what subclasses provide -------------------------------------------------------------
    @abstractmethod
    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores [Q, k] float32 and labels [Q, k] int64 (-1 where there is no result)."""

    @abstractmethod
    def _add(self, vectors: np.ndarray, labels: np.ndarray) -> None: ...

    @abstractmethod
    def _remove(self, labels: np.ndarray) -> int: ...

    @abstractmethod
    def _write_payload(self, directory: Path) -> list[str]:
        """Write the vector data into ``directory``; return the file names written."""

    @property
    @abstractmethod
    def removable(self) -> bool: ...

    @property
    @abstractmethod
    def device(self) -> str: ...

    @property
    @abstractmethod
    def search_params(self) -> dict[str, float]: ...

    @abstractmethod
    def set_search_params(self, **params: float) -> None:
        """Set query-time knobs: ``efSearch`` (HNSW), ``nprobe`` (IVF), ``k_factor`` (Refine)."""

    @abstractmethod
    def memory_bytes(self) -> int:
        """Bytes of vector data, codes, graph links and int64 labels (not the Python id map)."""

    @property
    @abstractmethod
    def kind(self) -> str:
        """Payload format on disk: "faiss" or "torch_exact"."""

    # ---- filtered search (itemsage.index.filtered); overridden where the index type can -------
    def _search_selected(
        self, queries: np.ndarray, k: int, selection: Selection, widen: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k among the selected labels, the selection applied inside the search."""
        raise UnsupportedOperationError(f"index {self.spec!r} on {self.device} cannot search with a filter")

    def _selected_vectors(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(vectors, labels) of those ``labels`` the index holds, for exact search over a subset;
        None when this index type cannot hand vectors back (then the selector path is used)."""
        return None

    def _search_view(self, queries: np.ndarray, k: int, selection: Selection) -> tuple[np.ndarray, np.ndarray] | None:
        """Top-k from the filter's view (``itemsage.index.views``); None where this index keeps none."""
        return None

    def _prepare_filtering(self) -> None:
        """Build what ``_selected_vectors`` needs (e.g. an IVF direct map); called when attributes attach."""
        return None

    # ---- shared behaviour --------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return len(self.idmap)

    @property
    def dim(self) -> int:
        return self._dim

    def attach_attributes(self, table: AttributeTable | None) -> None:
        """Make ``table`` the filterable attributes of this index (saved with it)."""
        self.attributes = table
        if table is not None:
            self._prepare_filtering()

    def attach_lexical(self, lexical: LexicalIndex | None) -> None:
        """Make ``lexical`` the lexical index of this index (saved with it); its labels are this
        index's labels."""
        self.lexical = lexical

    def select(self, filters: Filter | Any) -> Selection | None:
        """The labels a filter keeps (``filters``: a parsed :class:`Filter` or the request's JSON
        object), or None for no filter. Raises ``FilterError`` for an attribute this index cannot
        filter on or a value of the wrong type."""
        if filters is None or (not isinstance(filters, Filter) and not filters):
            return None
        if self.attributes is None:
            raise FilterError("this index was built without filterable attributes; rebuild it to filter")
        if isinstance(filters, Filter):
            return self.attributes.select(filters)
        if not isinstance(filters, Mapping):
            parse_filter(filters, self.attributes.specs)  # raises FilterError naming the problem
        return self.attributes.select_json(filters)

    def search(self, queries: Any, k: int, where: Selection | None = None) -> tuple[list[list[str]], np.ndarray]:
        """Top-k item ids and inner-product scores per query, best first.

        ``ids[i]`` can be shorter than k (fewer items than k, or an ANN index that found fewer,
        e.g. IVF with a small nprobe); the matching tail of ``scores[i]`` is ``-inf``. The scores
        array has ``min(k, ntotal)`` columns. ``where`` (from :meth:`select`) restricts the
        search to the items a filter keeps, inside the index search (``itemsage.index.filtered``).
        """
        if type(k) is not int and (isinstance(k, bool) or not isinstance(k, (int, np.integer))) or k < 1:
            raise ValueError(f"k must be a positive integer; got {k!r}")
        q = _one_query(queries, self.dim)
        if q is None:
            q = as_vectors(queries, self.dim, "queries", allow_empty=True)
        kk = min(int(k), self.ntotal)
        if q.shape[0] == 0 or kk == 0:
            return [[] for _ in range(q.shape[0])], np.empty((q.shape[0], kk), dtype=np.float32)
        if where is not None:
            policy = self.attributes.policy if self.attributes is not None else FilterSearchConfig()
            scores, labels = filtered_search(self, q, kk, where, policy)
        else:
            scores, labels = self._search(q, kk)
        # Padding (-1) sits at the end of a row (results are sorted): -inf there, whatever score
        # the index put.
        if labels.size and (labels[0, -1] < 0 if labels.shape[0] == 1 else labels[:, -1].min() < 0):
            scores = np.where(labels >= 0, scores, -np.inf)
        if scores.dtype != np.float32:
            scores = scores.astype(np.float32)
        return self.idmap.labels_to_ids(labels), scores

    def add(self, ids: Sequence[str], vectors: Any) -> None:
        """Add new items. Every check runs first, so a rejected batch changes nothing.

        An empty batch is a no-op (an incremental update with nothing new is normal).
        """
        ids = self.idmap.check_new(ids)
        x = as_vectors(vectors, self.dim, "embeddings", ids, allow_empty=True)
        if len(ids) != x.shape[0]:
            raise ValueError(f"{len(ids)} ids but {x.shape[0]} embedding rows")
        if not ids:
            return
        labels = self.idmap.assign(ids)
        try:
            self._add(x, labels)
        except BaseException:
            self.idmap.unassign_last(len(ids))
            raise

    def remove(self, ids: Sequence[str]) -> None:
        """Remove items by id; unknown ids are all reported and nothing is removed."""
        if not self.removable:
            raise UnsupportedOperationError(
                f"index {self.spec!r} cannot remove vectors: FAISS HNSW graphs (and Refine "
                "wrappers) do not support deletion. Rebuild the index without these items, or use "
                "a Flat or IVF spec for a catalog that changes."
            )
        ids = check_id_batch(ids)
        if not ids:
            return
        labels = self.idmap.lookup(ids)
        removed = self._remove(labels)
        if removed != len(labels):
            raise RuntimeError(f"index removed {removed} vectors for {len(labels)} ids; the index is inconsistent")
        self.idmap.release(ids)
        if self.attributes is not None:
            for label in labels.tolist():
                self.attributes.remove_item(label)
        if self.lexical is not None:
            self.lexical.stage(remove=labels.tolist())

    def metadata(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "spec": self.spec,
            "metric": "inner_product",
            "dim": self.dim,
            "ntotal": self.ntotal,
            "search_params": self.search_params,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "created_at": self.created_at,
            "saved_at": _utc_now(),
            "sweep": self.sweep,
            "faiss_version": faiss.__version__,
        }

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the index to ``directory`` atomically; returns the directory.

        An existing index there is replaced. A directory that holds something else is refused,
        so a mistyped path cannot wipe unrelated files. A failed write raises ``IndexWriteError``
        (an OSError naming ``directory``) and leaves an index already there untouched.
        """
        target = Path(directory).absolute()
        check_replaceable(target)
        stage: StagingDir | None = None
        try:
            stage = StagingDir.beside(target)
            tmp = Path(stage.staging)
            files = self._write_payload(tmp)
            if self.attributes is not None:
                files += self.attributes.write(tmp)
            if self.lexical is not None:
                files += self.lexical.write(tmp)
            (tmp / IDS_FILE).write_text(json.dumps(self.idmap.to_dict()))
            files.append(IDS_FILE)
            meta = self.metadata()
            meta["files"] = {name: file_digest(tmp / name) for name in files}
            (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
            for name in [*files, METADATA_FILE]:
                fsync_file(tmp / name)
            fsync_dir(tmp)
            publish_dir(tmp, target)
        except BaseException as e:
            if stage is not None:
                stage.discard()
            if isinstance(e, OSError):
                raise write_error(target, e) from e
            raise
        return target

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(spec={self.spec!r}, dim={self.dim}, ntotal={self.ntotal}, device={self.device!r})"
        )

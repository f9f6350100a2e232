"""The item retrieval index: FAISS (CPU or GPU) or exact torch search, behind one interface.

Every item has one L2-normalised 256-d ItemSage embedding, so retrieval is maximum inner product.
``build_index`` takes any FAISS index-factory spec ("Flat", "HNSW32", "IVF{nlist},Flat",
"IVF{nlist},PQ32", ...) and returns an ``ItemIndex`` whose API does not depend on the spec:
string item ids in, string item ids out, the same ``add`` / ``remove`` / ``save`` everywhere.

Design choices, and why:

* **Labels.** FAISS stores int64 labels; ``IdMap`` maps them to item ids and never reuses one.
  IVF indexes store labels natively in their inverted lists, so they take ``add_with_ids`` /
  ``remove_ids`` directly. Every other type is wrapped in ``IndexIDMap2``. Wrapping IVF in
  ``IndexIDMap2`` would be wrong: after ``remove_ids`` the wrapper compacts its label table while
  the IVF lists keep their old positions, so results silently point at the wrong items
  (faiss issues #1379, #4535, #4656, and ``test_ivf_remove_keeps_ids_right`` here).
* **Removal.** Flat-code and IVF indexes can delete vectors. HNSW graphs (and Refine wrappers)
  cannot in FAISS, so ``remove`` on them raises ``UnsupportedOperationError`` before touching
  anything: rebuild the index, or pick a Flat/IVF spec if the catalog churns.
* **Bad rows are refused, not dropped.** A NaN/inf embedding raises ``NonFiniteError`` with the
  count and the first offending item ids, and nothing is added. Silently dropping rows would make
  those items unretrievable without anyone noticing; the caller decides whether to filter them.
* **GPU.** ``use_gpu="auto"`` puts Flat/IVF indexes on GPU 0 with faiss-gpu when it is installed.
  Without faiss-gpu but with CUDA torch, exact search runs as ``TorchExactIndex`` on the GPU.
  HNSW has no FAISS GPU implementation and stays on the CPU; "CAGRA<degree>" (cuVS) is GPU only
  (``itemsage.index.cagra``; ``itemsage.index.devices`` decides what runs where). Saving always
  writes a CPU index.
* **Saving is atomic.** Files go to a temp directory next to the target, are fsynced, and the
  directory is renamed into place; a failed save leaves the old index (or nothing) behind.
  ``metadata.json`` records sizes and SHA-256 of every file, so a truncated or corrupt file is
  reported as such on load instead of crashing inside FAISS.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from itemsage.config import FilterSearchConfig
from itemsage.index.attributes import ATTRIBUTES_JSON, AttributeTable, Selection
from itemsage.index.base import (
    IndexMismatchError,
    ItemIndex,
    UnsupportedOperationError,
    as_vectors,
    faiss_gpu_available,
    parse_use_gpu,
    torch_cuda_available,
)
from itemsage.index.cagra import CagraIndex, cagra_degree, cuvs_available
from itemsage.index.filtered import FULL_SCAN, ListProbe, bitmap_selector, selector_params
from itemsage.index.idmap import IdMap, check_id_batch
from itemsage.index.label_vectors import LabelVectors
from itemsage.index.lexical import LEXICAL_FILE, LexicalIndex
from itemsage.index.storage import IDS_FILE, CorruptIndexError, read_metadata, verify_files
from itemsage.index.torch_exact import LABELS_FILE, TORCH_EXACT, VECTORS_FILE, TorchExactIndex
from itemsage.index.views import FilterViews

log = logging.getLogger(__name__)

FAISS_FILE = "index.faiss"

# Training a coarse quantizer on all of a 1M catalog costs minutes and buys nothing: k-means
# centroids are stable from a few dozen points per list. FAISS itself warns below 39 per list.
TRAIN_POINTS_PER_LIST = 50
# Non-IVF trained indexes (PQ, SQ) learn small codebooks; 100k points is plenty.
DEFAULT_TRAIN_CAP = 100_000
# Re-rank this many times k candidates exactly when the spec has a Refine stage: 4-bit fast-scan
# PQ orders candidates coarsely, and exact re-scoring of 4k of them restores the top k cheaply.
DEFAULT_K_FACTOR = 4.0


def default_nlist(n: int) -> int:
    """IVF list count for ``n`` vectors: about 4*sqrt(n), a power of two, >= 39 points per list.

    4*sqrt(n) balances the coarse-quantizer cost (nlist dot products) against the scan cost
    (n/nlist * nprobe); the cap keeps k-means from running with fewer points than centroids.
    """
    if n < 1:
        raise ValueError("cannot size an IVF index for 0 vectors")
    nlist = 2 ** max(0, round(math.log2(4 * math.sqrt(n))))
    while nlist > 1 and nlist > n // 39:
        nlist //= 2
    return nlist


def resolve_spec(spec: str, n: int) -> str:
    """Fill the ``{nlist}`` placeholder and reject specs that would break the id mapping."""
    spec = spec.strip()
    if not spec:
        raise ValueError("index spec is empty")
    if spec.lower() == "auto":
        raise ValueError("spec 'auto' must be resolved with itemsage.index.sweep() before building")
    if "{nlist}" in spec:
        spec = spec.replace("{nlist}", str(default_nlist(n)))
    leftover = re.findall(r"\{[^}]*\}", spec)
    if leftover:
        raise ValueError(f"unknown placeholder(s) {leftover} in index spec {spec!r}; only {{nlist}} exists")
    if "IDMap" in spec:
        raise ValueError(f"index spec {spec!r} must not contain IDMap: item ids are mapped by ItemIndex")
    # A plain "PQ<m>" / "PQ<m>x<bits>" makes FAISS run polysemous training (simulated annealing
    # over the codes of every sub-quantizer): 20x the training time (minutes at catalog scale)
    # that only pays off for polysemous Hamming filtering, which ItemIndex never uses. "np"
    # switches it off; the codes are the same. Fast-scan ("fs") PQ never trains it.
    return re.sub(r"(?<![A-Za-z])(PQ\d+(?:x\d+)?)(?=,|$)", r"\1np", spec)


def _unwrap(index: faiss.Index) -> list[faiss.Index]:
    """The chain of nested FAISS indexes (IDMap -> PreTransform -> Refine -> base ...)."""
    chain = [faiss.downcast_index(index)]
    while True:
        cur = chain[-1]
        if isinstance(cur, (faiss.IndexIDMap, faiss.IndexPreTransform)):
            nxt = cur.index
        elif isinstance(cur, faiss.IndexRefine):
            nxt = cur.base_index
        else:
            return chain
        chain.append(faiss.downcast_index(nxt))


def _params_for(chain: list[faiss.Index]) -> dict[str, float]:
    """The search knobs this index structure has, with their current values."""
    params: dict[str, float] = {}
    for idx in chain:
        if isinstance(idx, faiss.IndexRefine):
            params["k_factor"] = float(idx.k_factor)
        if isinstance(idx, faiss.IndexIVF):
            params["nprobe"] = int(idx.nprobe)
        if isinstance(idx, faiss.IndexHNSW):
            params["efSearch"] = int(idx.hnsw.efSearch)
    return params


def _set_params(index: faiss.Index, params: dict[str, float]) -> None:
    """Set knobs on the nested CPU indexes directly.

    ``faiss.ParameterSpace`` would do this too, but it calls the Refine knob "k_factor_rf" and
    routes plain "k_factor" to IVFPQR only; setting the attributes is explicit and checkable.
    """
    for idx in _unwrap(index):
        if isinstance(idx, faiss.IndexRefine) and "k_factor" in params:
            idx.k_factor = float(params["k_factor"])
        if isinstance(idx, faiss.IndexIVF) and "nprobe" in params:
            idx.nprobe = int(params["nprobe"])
        if isinstance(idx, faiss.IndexHNSW) and "efSearch" in params:
            idx.hnsw.efSearch = int(params["efSearch"])


def _native_ids(index: faiss.Index) -> bool:
    """IVF (optionally behind a PreTransform) stores labels itself and removes correctly."""
    chain = _unwrap(index)
    return all(isinstance(i, faiss.IndexPreTransform) for i in chain[:-1]) and isinstance(chain[-1], faiss.IndexIVF)


def _serialized_size(index: faiss.Index) -> int:
    """Exact serialized byte count, without materialising the bytes (1 GB at 1M x 256 Flat)."""
    total = 0

    def count(buf: bytes) -> int:
        nonlocal total
        total += len(buf)
        return len(buf)

    writer = faiss.PyCallbackIOWriter(count)
    faiss.write_index(index, writer)
    del writer  # flushes the last buffered chunk
    return total


class FaissIndex(ItemIndex):
    """A FAISS index whose labels are ``IdMap`` labels."""

    def __init__(self, index: faiss.Index, spec: str, dim: int, idmap: IdMap) -> None:
        super().__init__(spec, dim, idmap)
        chain = _unwrap(index)
        self._index = index
        self._gpu_res: Any = None
        # Only plain facts are kept from the chain: its SWIG proxies do not own their memory.
        self._hnsw = any(isinstance(i, faiss.IndexHNSW) for i in chain)
        self._removable = _native_ids(index) or (
            len(chain) == 2 and isinstance(chain[0], faiss.IndexIDMap) and isinstance(chain[1], faiss.IndexFlatCodes)
        )
        self._params = _params_for(chain)
        ivf = next((i for i in chain if isinstance(i, faiss.IndexIVF)), None)
        self.nlist: int | None = int(ivf.nlist) if ivf is not None else None
        self._probe: ListProbe | None = None  # per-list filter counts (IVF with attributes)
        self._label_vectors: LabelVectors | None = None  # the exact filtered path's vectors
        self._views: FilterViews | None = None  # per-filter copies of matching vectors

    @property
    def kind(self) -> str:
        return "faiss"

    # ---- device ------------------------------------------------------------------------------
    @property
    def device(self) -> str:
        return "cuda:0" if self._gpu_res is not None else "cpu"

    def to_gpu(self) -> bool:
        """Move to GPU 0 with faiss-gpu; False (and stays on CPU) where FAISS has no GPU version."""
        if self._gpu_res is not None:
            return True
        if not faiss_gpu_available() or self._hnsw:
            return False
        res = faiss.StandardGpuResources()
        try:
            gpu = faiss.index_cpu_to_gpu(res, 0, self._index)
        except RuntimeError as e:  # e.g. fast-scan PQ or Refine: no GPU implementation
            log.warning("index %s stays on CPU: %s", self.spec, str(e).splitlines()[-1])
            return False
        if not any(type(i).__name__.startswith("Gpu") for i in _unwrap(gpu)):
            return False  # older FAISS clones unsupported types silently as CPU copies
        self._index, self._gpu_res = gpu, res
        self._apply_params(self._params)
        return True

    def cpu_index(self) -> faiss.Index:
        """A CPU FAISS index (the index itself, or a copy back from the GPU)."""
        return faiss.index_gpu_to_cpu(self._index) if self._gpu_res is not None else self._index

    # ---- search params -----------------------------------------------------------------------
    @property
    def search_params(self) -> dict[str, float]:
        return dict(self._params)

    def set_search_params(self, **params: float) -> None:
        unknown = sorted(set(params) - set(self._params))
        if unknown:
            have = ", ".join(sorted(self._params)) or "none"
            raise ValueError(f"index {self.spec!r} has no search parameter {', '.join(unknown)} (it has: {have})")
        for name, value in params.items():
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or value < 1:
                raise ValueError(f"{name} must be a number >= 1; got {value!r}")
            if name != "k_factor" and int(value) != value:
                raise ValueError(f"{name} must be an integer; got {value!r}")
        self._apply_params(params)
        self._params.update({k: (float(v) if k == "k_factor" else int(v)) for k, v in params.items()})

    def _apply_params(self, params: dict[str, float]) -> None:
        if self._gpu_res is None:
            _set_params(self._index, params)
            return
        space = faiss.GpuParameterSpace()  # only IVF goes to the GPU, and nprobe is all it has
        for name, value in params.items():
            space.set_index_parameter(self._index, name, float(value))

    # ---- vectors -----------------------------------------------------------------------------
    @property
    def removable(self) -> bool:
        return self._removable

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._index.search(queries, k)

    def _add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        self._index.add_with_ids(vectors, labels)
        if self._probe is not None:
            self._probe.added(faiss.downcast_index(self._index), vectors, labels)
        if self._label_vectors is not None:
            self._label_vectors.add(vectors, labels)
        if self._views is not None:
            self._views.added(vectors, labels)

    # ---- filtered search (itemsage.index.filtered) -------------------------------------------
    def _search_selected(
        self, queries: np.ndarray, k: int, selection: Selection, widen: float
    ) -> tuple[np.ndarray, np.ndarray]:
        if self._gpu_res is not None:
            raise UnsupportedOperationError(
                f"index {self.spec!r} on the GPU cannot search with a filter (faiss-gpu has no ID "
                "selectors); serve filtered search from a CPU index (use_gpu=false)"
            )
        keep: list[Any] = [selection.bitmap]
        sel = bitmap_selector(selection.bitmap)
        keep.append(sel)
        if self._probe is not None and widen < FULL_SCAN:
            policy = self.attributes.policy if self.attributes is not None else FilterSearchConfig()
            return self._probe.search(
                self._index, queries, k, selection, sel, widen, policy.max_density_boost, policy.min_probe_per_k
            )
        params = selector_params(self._index, sel, widen, keep)
        return self._index.search(queries, k, params=params)

    def _prepare_filtering(self) -> None:
        # Exact search over a filter's few items gathers their vectors by label: IVF needs a
        # direct map for that. A hash table (not an array) keeps remove_ids working.
        if self._gpu_res is not None:
            return
        for idx in _unwrap(self._index):
            if isinstance(idx, faiss.IndexIVF) and idx.direct_map.type == faiss.DirectMap.NoMap:
                idx.set_direct_map_type(faiss.DirectMap.Hashtable)
        if isinstance(faiss.downcast_index(self._index), faiss.IndexIVF):
            self._probe = ListProbe(faiss.downcast_index(self._index))
        keep_copy = self.attributes is None or self.attributes.policy.label_vectors
        if keep_copy and self._label_vectors is None and _reconstructs_exactly(self._index):
            self._label_vectors = _label_vectors_of(self._index, self.idmap.labels(), self.dim)
        if self._views is not None:
            self._views.close()
            self._views = None
        if self.attributes is not None and self.attributes.policy.views and _reconstructs_exactly(self._index):
            rescore = self._label_vectors.scores if self._label_vectors is not None else None
            self._views = FilterViews(
                self.attributes, self._selected_vectors, self.attributes.policy, self.dim, rescore
            )
            if self.attributes.policy.view_prebuild:
                self._views.prebuild()

    def _search_view(self, queries: np.ndarray, k: int, selection: Selection) -> tuple[np.ndarray, np.ndarray] | None:
        if self._views is None or self._gpu_res is not None:
            return None
        # The view probes at least the share of its lists the index itself probes: the index's
        # recall knob (nprobe) keeps its meaning for filtered requests. A flat index is exact,
        # so are its views; HNSW has no list share (the view's own rule alone).
        if self.nlist:
            share = float(self._params.get("nprobe", 1)) / self.nlist
        else:
            share = 0.0 if self._hnsw else 1.0
        return self._views.search(queries, k, selection, share)

    def _selected_vectors(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        if self._gpu_res is not None or not _reconstructs_exactly(self._index):
            return None
        if self._label_vectors is not None:
            return self._label_vectors.gather(labels)
        labels = np.ascontiguousarray(labels, np.int64)
        if labels.size == 0:
            return np.empty((0, self.dim), np.float32), labels
        try:
            return self._index.reconstruct_batch(labels), labels
        except RuntimeError:
            # A label with attributes but no vector (set before its add, or after a remove):
            # drop those, found one by one only on this rare path.
            item = self.idmap._item
            live = np.fromiter(
                (0 <= lab < len(item) and item[lab] is not None for lab in labels.tolist()), bool, count=labels.size
            )
            labels = labels[live]
            return self._index.reconstruct_batch(labels), labels

    def _remove(self, labels: np.ndarray) -> int:
        if self._gpu_res is None:
            removed = int(self._index.remove_ids(labels))
        else:
            # GPU indexes cannot delete in place: round-trip through the CPU (costly, but correct).
            cpu = faiss.index_gpu_to_cpu(self._index)
            removed = int(cpu.remove_ids(labels))
            self._index = faiss.index_cpu_to_gpu(self._gpu_res, 0, cpu)
            self._apply_params(self._params)
        if self._label_vectors is not None:
            self._label_vectors.remove(labels)
        if self._probe is not None:
            self._probe.removed(labels)
        if self._views is not None:
            self._views.removed(labels)
        return removed

    def memory_bytes(self) -> int:
        return _serialized_size(self.cpu_index())

    def _write_payload(self, directory: Path) -> list[str]:
        # Through a Python file, not a path: faiss drops the error of its final fclose (it only
        # prints it), so a full disk would leave a truncated index.faiss that looks saved.
        with open(directory / FAISS_FILE, "wb") as f:
            faiss.write_index(self.cpu_index(), faiss.PyCallbackIOWriter(f.write))
        return [FAISS_FILE]

    def flat_vectors(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(vectors [n, d], labels [n]) when this is an ``IDMap2,Flat`` index, else None."""
        cpu = self.cpu_index()
        chain = _unwrap(cpu)
        if len(chain) != 2 or not isinstance(chain[1], faiss.IndexFlat):
            return None
        vectors = faiss.vector_to_array(chain[1].codes).view(np.float32).reshape(-1, self.dim)
        return vectors, faiss.vector_to_array(chain[0].id_map).astype(np.int64)


def _label_vectors_of(index: faiss.Index, labels: np.ndarray, dim: int, chunk: int = 65_536) -> LabelVectors:
    """A :class:`LabelVectors` holding every vector of ``index`` (``labels``: the labels it holds)."""
    out = LabelVectors(dim, capacity=int(labels.max()) + 1 if labels.size else 0)
    for start in range(0, labels.size, chunk):
        part = labels[start : start + chunk]
        out.add(index.reconstruct_batch(part), part)
    return out


def _reconstructs_exactly(index: faiss.Index) -> bool:
    """Vectors come back as stored (flat codes, IVF-Flat, HNSW-Flat), not as PQ/SQ approximations
    that would make the "exact" path rank by code distance: those indexes use the selector path."""
    base = _unwrap(index)[-1]
    if isinstance(base, faiss.IndexIVF):
        return isinstance(base, faiss.IndexIVFFlat) and base.direct_map.type != faiss.DirectMap.NoMap
    if isinstance(base, faiss.IndexHNSW):
        return isinstance(faiss.downcast_index(base.storage), faiss.IndexFlat)
    return isinstance(base, faiss.IndexFlat)


def _train(index: faiss.Index, x: np.ndarray, spec: str, train_size: int | None, seed: int) -> None:
    """Train on a seeded subsample: a few dozen points per IVF list, or ``train_size``."""
    if index.is_trained:
        return
    n = x.shape[0]
    if train_size is None:
        ivf = next((i for i in _unwrap(index) if isinstance(i, faiss.IndexIVF)), None)
        train_size = TRAIN_POINTS_PER_LIST * ivf.nlist if ivf is not None else DEFAULT_TRAIN_CAP
        train_size = max(train_size, min(n, DEFAULT_TRAIN_CAP // 4))
    elif isinstance(train_size, bool) or train_size < 1:
        raise ValueError(f"train_size must be a positive integer; got {train_size!r}")
    m = min(n, int(train_size))
    rows = np.sort(np.random.default_rng(seed).choice(n, size=m, replace=False)) if m < n else slice(None)
    try:
        index.train(x[rows])
    except RuntimeError as e:
        detail = str(e).strip().splitlines()[-1]
        raise ValueError(
            f"training index {spec!r} on {m} vectors failed: {detail}. Use fewer IVF lists (the "
            "'{nlist}' placeholder sizes them from N), fewer PQ bits, or more vectors."
        ) from e


def build_index(
    embeddings: np.ndarray,
    ids: Sequence[str],
    spec: str = "Flat",
    use_gpu: str | bool = "auto",
    train_size: int | None = None,
    *,
    model_name: str | None = None,
    model_version: str | int | None = None,
    seed: int = 0,
) -> ItemIndex:
    """Build an ``ItemIndex`` over ``embeddings`` [N, d] with item ``ids`` (N unique strings).

    ``spec`` is a FAISS index-factory string over inner product ("Flat", "HNSW32",
    "IVF{nlist},Flat", "IVF{nlist},PQ32", ...; ``{nlist}`` becomes ``default_nlist(N)``), or
    "TorchExact". ``use_gpu``: "auto" = GPU where available and the type has a GPU version,
    True = the same but fail when there is no GPU at all, False = CPU. ``train_size`` caps the
    vectors used to train IVF/PQ (default: 50 per IVF list, at least 25k, or 100k without IVF).
    """
    ids = check_id_batch(ids)
    x = as_vectors(embeddings, None, "embeddings", ids)
    if len(ids) != x.shape[0]:
        raise ValueError(f"{len(ids)} ids but {x.shape[0]} embedding rows")
    want_gpu = parse_use_gpu(use_gpu)
    if want_gpu and not (faiss_gpu_available() or torch_cuda_available()):
        raise RuntimeError("use_gpu=True but no GPU is visible to faiss-gpu or torch; use 'auto' or false")
    idmap = IdMap()
    labels = idmap.assign(ids)
    dim = x.shape[1]

    if spec.strip() == TORCH_EXACT:
        out: ItemIndex = TorchExactIndex(x, labels, idmap, device=None if want_gpu is not False else "cpu")
    elif cagra_degree(spec) is not None:
        if want_gpu is False:
            raise ValueError(f"{spec.strip()} is a GPU-only index (cuVS CAGRA); it cannot be built with use_gpu=False")
        out = CagraIndex.build(x, labels, spec.strip(), idmap)
    else:
        resolved = resolve_spec(spec, len(ids))
        try:
            cpu = faiss.index_factory(dim, resolved, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            raise ValueError(f"FAISS cannot parse index spec {resolved!r}: {str(e).splitlines()[-1]}") from e
        _train(cpu, x, resolved, train_size, seed)
        if not _native_ids(cpu):
            cpu = faiss.IndexIDMap2(cpu)
        if _params_for(_unwrap(cpu)).get("k_factor", DEFAULT_K_FACTOR) < DEFAULT_K_FACTOR:
            _set_params(cpu, {"k_factor": DEFAULT_K_FACTOR})
        cpu.add_with_ids(x, labels)
        out = FaissIndex(cpu, resolved, dim, idmap)
        out = _place(out, want_gpu)
    out.model_name = model_name
    out.model_version = None if model_version is None else str(model_version)
    return out


def _saved_cagra(index: FaissIndex) -> CagraIndex | None:
    """A saved CAGRA graph (``IDMap2`` over ``IndexHNSWCagra``) back on the GPU, where cuVS is."""
    if cagra_degree(index.spec) is None or not cuvs_available():
        return None
    chain = _unwrap(index.cpu_index())
    if len(chain) != 2 or not isinstance(chain[1], faiss.IndexHNSWCagra):
        return None
    labels = faiss.vector_to_array(chain[0].id_map).astype(np.int64)
    gpu = CagraIndex.from_hnsw_cagra(chain[1], index.spec, index.dim, index.idmap, labels)
    gpu.created_at = index.created_at
    return gpu


def _place(index: FaissIndex, want_gpu: bool | None) -> ItemIndex:
    """Move to the GPU where asked and possible (faiss-gpu, else torch for exact Flat)."""
    if want_gpu is False:
        return index
    cagra = _saved_cagra(index)
    if cagra is not None:
        return cagra
    if index.to_gpu():
        return index
    flat = index.flat_vectors() if not faiss_gpu_available() and torch_cuda_available() else None
    if flat is not None:
        log.info("faiss-gpu not installed: exact search runs as TorchExactIndex on CUDA")
        torch_index = TorchExactIndex(flat[0], flat[1], index.idmap, device="cuda")
        torch_index.created_at = index.created_at
        return torch_index
    if want_gpu:
        log.warning("index %s has no GPU version here; it runs on the CPU", index.spec)
    return index


def load_index(
    directory: str | os.PathLike[str],
    expected_dim: int | None = None,
    expected_model_version: str | int | None = None,
    use_gpu: str | bool = "auto",
) -> ItemIndex:
    """Load an index saved by ``ItemIndex.save``, refusing one built for another model or size.

    Checks, in order: metadata present and readable; model version and dimension as expected
    (cheap, before reading gigabytes); every file present with the recorded size and SHA-256;
    the FAISS file readable and consistent with the id map.
    """
    directory = Path(directory)
    meta = read_metadata(directory)
    if expected_model_version is not None and str(meta.get("model_version")) != str(expected_model_version):
        raise IndexMismatchError(
            f"index at {directory} was built from model {meta.get('model_name')!r} version "
            f"{meta.get('model_version')!r}, but version {str(expected_model_version)!r} was expected: "
            "its item embeddings are not comparable with this model's queries. Rebuild the index."
        )
    if expected_dim is not None and int(meta["dim"]) != int(expected_dim):
        raise IndexMismatchError(f"index at {directory} has dimension {meta['dim']}, but {expected_dim} was expected")
    verify_files(directory, meta)
    try:
        idmap = IdMap.from_dict(json.loads((directory / IDS_FILE).read_text()))
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptIndexError(f"{directory / IDS_FILE} is unreadable: {e}") from e
    if len(idmap) != meta["ntotal"]:
        raise CorruptIndexError(f"{directory}: id map has {len(idmap)} items, metadata says {meta['ntotal']}")

    index: ItemIndex
    if meta["kind"] == "torch_exact":
        try:
            vectors = np.load(directory / VECTORS_FILE, allow_pickle=False)
            labels = np.load(directory / LABELS_FILE, allow_pickle=False)
        except ValueError as e:
            raise CorruptIndexError(f"{directory}: vector files are unreadable: {e}") from e
        if vectors.shape != (meta["ntotal"], meta["dim"]) or labels.shape != (meta["ntotal"],):
            raise CorruptIndexError(f"{directory}: vector file shape {vectors.shape} does not match metadata")
        want = parse_use_gpu(use_gpu)
        index = TorchExactIndex(vectors, labels, idmap, device="cpu" if want is False else None)
    elif meta["kind"] == "faiss":
        try:
            cpu = faiss.read_index(str(directory / FAISS_FILE))
        except RuntimeError as e:
            raise CorruptIndexError(
                f"{directory / FAISS_FILE} cannot be read by FAISS {faiss.__version__}: {str(e).splitlines()[-1]}"
            ) from e
        if cpu.d != meta["dim"] or cpu.ntotal != meta["ntotal"]:
            raise CorruptIndexError(
                f"{directory}: FAISS index has d={cpu.d}, ntotal={cpu.ntotal}; metadata says "
                f"dim={meta['dim']}, ntotal={meta['ntotal']}"
            )
        faiss_index = FaissIndex(cpu, meta["spec"], int(meta["dim"]), idmap)
        params = meta.get("search_params") or {}
        # A saved CAGRA graph keeps CAGRA's knob (itopk_size), which applies once it is back on a GPU.
        is_cagra = cagra_degree(meta["spec"]) is not None
        if params and not is_cagra:
            faiss_index.set_search_params(**params)
        index = _place(faiss_index, parse_use_gpu(use_gpu))
        if is_cagra and isinstance(index, CagraIndex) and params:
            index.set_search_params(**params)
    else:
        raise CorruptIndexError(f"{directory}: unknown index kind {meta['kind']!r}")
    if ATTRIBUTES_JSON in meta["files"]:
        try:
            index.attach_attributes(AttributeTable.read(directory))
        except (ValueError, KeyError, OSError) as e:
            raise CorruptIndexError(f"{directory}: filterable attributes are unreadable: {e}") from e
    if LEXICAL_FILE in meta["files"]:
        try:
            index.attach_lexical(LexicalIndex.read(directory))
        except (ValueError, KeyError, OSError) as e:
            raise CorruptIndexError(f"{directory}: the lexical index is unreadable: {e}") from e
    index.model_name = meta.get("model_name")
    index.model_version = meta.get("model_version")

    index.created_at = meta.get("created_at") or index.created_at
    index.sweep = meta.get("sweep")
    return index

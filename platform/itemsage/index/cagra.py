"""CAGRA, cuVS's GPU graph index, behind the ``ItemIndex`` interface (faiss-gpu-cuvs only).

CAGRA builds a fixed-degree k-NN graph on the GPU and searches it with many GPU threads per
query: on one GPU it is the fastest ANN index at high recall. Its limits set the design:

* **GPU only.** Saved, it becomes ``IndexHNSWCagra`` (the same graph as an HNSW base level), the
  form FAISS writes; loaded on a GPU it is turned back into CAGRA (``to_gpu`` in
  ``faiss_index``), on a CPU it searches as that HNSW graph (``itemsage.index.devices`` says why
  the sweep never proposes CAGRA for a CPU server).
* **No add or remove.** The graph is built once over the whole catalog (``UnsupportedOperationError``
  otherwise): rebuild it, which takes seconds on a GPU.
* **Labels.** CAGRA answers row positions; ``labels[row]`` maps them to ``IdMap`` labels.
* **Knob.** ``itopk_size`` (the internal top-k list kept during the graph walk, >= k) trades
  speed for recall like ``efSearch`` does for HNSW.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from itemsage.index.attributes import Selection
from itemsage.index.base import ItemIndex, UnsupportedOperationError
from itemsage.index.idmap import IdMap

CAGRA_SPEC = re.compile(r"^CAGRA(\d+)$")
DEFAULT_ITOPK = 64
FAISS_FILE = "index.faiss"


def cagra_degree(spec: str) -> int | None:
    """The graph degree of a "CAGRA<degree>" spec (e.g. "CAGRA32"), or None for other specs."""
    m = CAGRA_SPEC.match(spec.strip())
    return int(m.group(1)) if m else None


def cuvs_available() -> bool:
    """FAISS was built with cuVS (it has ``GpuIndexCagra``) and sees a GPU."""
    return hasattr(faiss, "GpuIndexCagra") and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class CagraIndex(ItemIndex):
    """A cuVS CAGRA graph on GPU 0 over inner product; labels by row position."""

    def __init__(self, gpu_index: Any, res: Any, spec: str, dim: int, idmap: IdMap, labels: np.ndarray) -> None:
        super().__init__(spec, dim, idmap)
        self._index = gpu_index
        self._res = res  # keeps the GPU resources alive as long as the index
        self._labels = np.ascontiguousarray(labels, dtype=np.int64)
        self._params: dict[str, float] = {"itopk_size": DEFAULT_ITOPK}

    @classmethod
    def build(cls, x: np.ndarray, labels: np.ndarray, spec: str, idmap: IdMap) -> CagraIndex:
        degree = cagra_degree(spec)
        if degree is None:
            raise ValueError(f"not a CAGRA spec: {spec!r} (expected e.g. 'CAGRA32')")
        if not cuvs_available():
            raise RuntimeError(
                f"{spec} needs FAISS built with cuVS and a GPU (requirements/faiss-gpu.txt); "
                f"this FAISS {faiss.__version__} has {'no cuVS' if not hasattr(faiss, 'GpuIndexCagra') else 'no GPU'}"
            )
        res = faiss.StandardGpuResources()
        cfg = faiss.GpuIndexCagraConfig()
        cfg.graph_degree = degree
        cfg.intermediate_graph_degree = 2 * degree
        cfg.device = 0
        index = faiss.GpuIndexCagra(res, x.shape[1], faiss.METRIC_INNER_PRODUCT, cfg)
        index.train(x)  # CAGRA's build: the graph over every vector
        return cls(index, res, spec, x.shape[1], idmap, labels)

    @classmethod
    def from_hnsw_cagra(cls, cpu: Any, spec: str, dim: int, idmap: IdMap, labels: np.ndarray) -> CagraIndex:
        """A saved graph (``IndexHNSWCagra``) back on the GPU as CAGRA."""
        res = faiss.StandardGpuResources()
        return cls(faiss.index_cpu_to_gpu(res, 0, cpu), res, spec, dim, idmap, labels)

    @property
    def kind(self) -> str:
        return "faiss"

    @property
    def device(self) -> str:
        return "cuda:0"

    @property
    def removable(self) -> bool:
        return False

    @property
    def search_params(self) -> dict[str, float]:
        return dict(self._params)

    def set_search_params(self, **params: float) -> None:
        unknown = sorted(set(params) - {"itopk_size"})
        if unknown:
            raise ValueError(f"index {self.spec!r} has no search parameter {', '.join(unknown)} (it has: itopk_size)")
        for name, value in params.items():
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float, np.number))
                or value < 1
                or int(value) != value
            ):
                raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
        self._params.update({k: int(v) for k, v in params.items()})

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        sp = faiss.SearchParametersCagra()
        sp.itopk_size = max(int(self._params["itopk_size"]), k)
        scores, rows = self._index.search(queries, k, params=sp)
        labels = np.where(rows >= 0, self._labels[np.clip(rows, 0, None)], -1)
        return scores, labels

    def _search_selected(
        self, queries: np.ndarray, k: int, selection: Selection, widen: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """The filter as a bitmap over CAGRA's row positions, applied in the graph walk."""
        rows = np.packbits(selection.contains(self._labels), bitorder="little")
        sp = faiss.SearchParametersCagra()
        sp.itopk_size = int(max(self._params["itopk_size"] * widen, k))
        sel = faiss.IDSelectorBitmap(rows.size, faiss.swig_ptr(rows))
        sp.sel = sel
        try:
            scores, found = self._index.search(queries, k, params=sp)
        except RuntimeError as e:
            raise UnsupportedOperationError(
                f"{self.spec}: this FAISS build cannot filter a CAGRA search ({str(e).splitlines()[-1]}); "
                "serve filtered search from an IVF index"
            ) from e
        labels = np.where(found >= 0, self._labels[np.clip(found, 0, None)], -1)
        return scores, labels

    def _add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        raise UnsupportedOperationError(f"{self.spec}: a CAGRA graph cannot take new items; rebuild the index")

    def _remove(self, labels: np.ndarray) -> int:
        raise UnsupportedOperationError(f"{self.spec}: a CAGRA graph cannot remove items; rebuild the index")

    def cpu_index(self) -> Any:
        """The graph as a CPU ``IndexHNSWCagra`` inside ``IndexIDMap2`` (the saved form)."""
        hnsw = faiss.IndexHNSWCagra()
        hnsw.base_level_only = True  # the CAGRA graph as is: no upper HNSW levels to build
        self._index.copyTo(hnsw)
        wrapped = faiss.IndexIDMap2(hnsw)
        faiss.copy_array_to_vector(self._labels, wrapped.id_map)
        wrapped.ntotal = hnsw.ntotal
        wrapped.construct_rev_map()
        return wrapped

    def memory_bytes(self) -> int:
        # Vectors (float32) and the fixed-degree graph (uint32 neighbours), plus the labels.
        n = len(self._labels)
        return int(n * self.dim * 4 + n * (cagra_degree(self.spec) or 0) * 4 + self._labels.nbytes)

    def _write_payload(self, directory: Path) -> list[str]:
        with open(directory / FAISS_FILE, "wb") as f:
            faiss.write_index(self.cpu_index(), faiss.PyCallbackIOWriter(f.write))
        return [FAISS_FILE]

"""Exact inner-product search in torch: the GPU fallback when faiss-gpu is not installed."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from itemsage.index.attributes import Selection
from itemsage.index.base import ItemIndex
from itemsage.index.idmap import IdMap

if TYPE_CHECKING:
    import torch

TORCH_EXACT = "TorchExact"
VECTORS_FILE = "vectors.npy"
LABELS_FILE = "labels.npy"


class TorchExactIndex(ItemIndex):
    """Exact inner-product search as a torch matmul + top-k, on the GPU when torch has CUDA.

    The fallback for GPU exact search where faiss-gpu is not installed, and for catalogs small
    enough that an ANN index is not worth building. Queries are scored in chunks so the
    [chunk, N] score matrix stays under ``max_score_bytes``.
    """

    def __init__(
        self,
        vectors: np.ndarray,
        labels: np.ndarray,
        idmap: IdMap,
        device: str | None = None,
        max_score_bytes: int = 256 << 20,
    ) -> None:
        import torch

        super().__init__(TORCH_EXACT, int(vectors.shape[1]), idmap)
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # A copy: on the CPU, from_numpy would share memory with the caller's array.
        self._vectors: torch.Tensor = torch.from_numpy(np.array(vectors, dtype=np.float32, copy=True)).to(self._device)
        self._labels = np.ascontiguousarray(labels, dtype=np.int64)
        self._max_score_bytes = max_score_bytes

    @property
    def kind(self) -> str:
        return "torch_exact"

    @property
    def device(self) -> str:
        return str(self._device)

    @property
    def removable(self) -> bool:
        return True

    @property
    def search_params(self) -> dict[str, float]:
        return {}

    def set_search_params(self, **params: float) -> None:
        if params:
            raise ValueError(f"exact search has no search parameters; got {', '.join(sorted(params))}")

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import torch

        n = self._vectors.shape[0]
        chunk = max(1, self._max_score_bytes // (4 * n))
        scores_out, rows_out = [], []
        with torch.inference_mode():
            q_all = torch.from_numpy(queries).to(self._device)
            for start in range(0, q_all.shape[0], chunk):
                s, r = torch.topk(q_all[start : start + chunk] @ self._vectors.T, k, dim=1)
                scores_out.append(s.cpu().numpy())
                rows_out.append(r.cpu().numpy())
        return np.concatenate(scores_out), self._labels[np.concatenate(rows_out)]

    def _search_selected(
        self, queries: np.ndarray, k: int, selection: Selection, widen: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact search with the non-selected rows scored -inf before the top-k."""
        import torch

        allowed = torch.from_numpy(selection.contains(self._labels)).to(self._device)
        k = min(k, max(selection.count, 1), self._labels.size)
        with torch.inference_mode():
            s = torch.from_numpy(queries).to(self._device) @ self._vectors.T
            s = s.masked_fill(~allowed, float("-inf"))
            scores, rows = torch.topk(s, k, dim=1)
        labels = np.where(np.isfinite(scores.cpu().numpy()), self._labels[rows.cpu().numpy()], -1)
        return scores.cpu().numpy(), labels

    def _selected_vectors(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        # Labels are kept ascending (added in label order, removal keeps the order).
        rows = np.searchsorted(self._labels, labels)
        ok = rows < self._labels.size
        ok[ok] = self._labels[rows[ok]] == labels[ok]
        return self._vectors[_torch_index(rows[ok], self._vectors)].cpu().numpy(), labels[ok]

    def _add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        import torch

        self._vectors = torch.cat([self._vectors, torch.from_numpy(vectors).to(self._device)])
        self._labels = np.concatenate([self._labels, labels])

    def _remove(self, labels: np.ndarray) -> int:
        import torch

        keep = ~np.isin(self._labels, labels)
        self._vectors = self._vectors[torch.from_numpy(keep).to(self._device)]
        self._labels = self._labels[keep]
        return int((~keep).sum())

    def memory_bytes(self) -> int:
        return int(self._vectors.numel() * self._vectors.element_size() + self._labels.nbytes)

    def _write_payload(self, directory: Path) -> list[str]:
        # Python files, not paths: np.save(path) loses a full disk's write error (see faiss_index).
        for name, array in ((VECTORS_FILE, self._vectors.cpu().numpy()), (LABELS_FILE, self._labels)):
            with open(directory / name, "wb") as f:
                np.save(f, array, allow_pickle=False)
        return [VECTORS_FILE, LABELS_FILE]


def _torch_index(rows: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.from_numpy(rows.astype(np.int64)).to(like.device)

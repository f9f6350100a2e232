"""Small clustered catalogs for the index tests (kept tiny: the suite shares 2 CPU cores)."""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import pytest

from itemsage.index.synthetic import ClusteredSphere, item_ids

DIM = 32


@pytest.fixture(autouse=True)
def _one_faiss_thread():
    """One FAISS thread for these tiny indexes: on a shared 2-core box, OpenMP threads spinning at
    barriers while other processes hold the cores make small FAISS calls slower, not faster."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@dataclass
class Catalog:
    x: np.ndarray
    ids: list[str]
    queries: np.ndarray

    def exact_top(self, k: int) -> list[list[str]]:
        """Brute-force numpy top-k (the reference every index is checked against)."""
        scores = self.queries @ self.x.T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return [[self.ids[j] for j in row] for row in order]


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    mix = ClusteredSphere(dim=DIM, n_clusters=40, latent_dim=8, seed=7)
    return Catalog(x=mix.sample(3000, seed=1), ids=item_ids(3000), queries=mix.sample(200, seed=2))

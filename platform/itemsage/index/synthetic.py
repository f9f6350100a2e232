"""Synthetic clustered unit vectors that behave like catalog embeddings, for tests and benchmarks.

Uniform random vectors on a 256-d sphere are the worst case for every ANN index (no structure,
all distances alike) and say little about a real catalog. Product embeddings are clustered
(categories, styles) and, within a cluster, vary along few directions. So each point here is
``normalize(center_c + spread * U_c z / sqrt(latent_dim) + noise * g / sqrt(dim))``: a random
center on the sphere, a cluster-specific low-rank (``latent_dim``) variation, and a little
isotropic noise. Queries are drawn from the same mixture, so they are new points, not copies of
indexed items.

The defaults make broad clusters (think product categories) with a wide spread inside each:
nearest-neighbour similarity is ~0.6, k-means splits every cluster over many IVF lists, and IVF
needs several probes for recall 0.95. Well-separated tight clusters would instead line up with
the IVF lists and flatter IVF (one probe finds everything).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClusteredSphere:
    """A seeded Gaussian mixture on the unit sphere; ``sample`` draws points from it."""

    dim: int = 256
    n_clusters: int = 100
    latent_dim: int = 64
    spread: float = 2.0
    noise: float = 0.5
    seed: int = 0

    def _params(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        centers = rng.standard_normal((self.n_clusters, self.dim), dtype=np.float32)
        centers /= np.linalg.norm(centers, axis=1, keepdims=True)
        bases = rng.standard_normal((self.n_clusters, self.latent_dim, self.dim), dtype=np.float32)
        bases /= np.sqrt(np.float32(self.dim))  # each basis row has norm ~1
        return centers, bases

    def sample(self, n: int, seed: int) -> np.ndarray:
        """``n`` unit vectors [n, dim] float32; ``seed`` picks the draw (use a new one for queries)."""
        if n < 0:
            raise ValueError("n must be >= 0")
        centers, bases = self._params()
        rng = np.random.default_rng([self.seed, seed])
        labels = rng.integers(0, self.n_clusters, size=n)
        out = np.empty((n, self.dim), dtype=np.float32)
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], np.arange(self.n_clusters + 1))
        scale = np.float32(self.spread / np.sqrt(self.latent_dim))
        for c in range(self.n_clusters):
            rows = order[bounds[c] : bounds[c + 1]]
            if rows.size == 0:
                continue
            z = rng.standard_normal((rows.size, self.latent_dim), dtype=np.float32)
            g = rng.standard_normal((rows.size, self.dim), dtype=np.float32)
            out[rows] = centers[c] + scale * (z @ bases[c]) + np.float32(self.noise / np.sqrt(self.dim)) * g
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out


def item_ids(n: int, prefix: str = "item-") -> list[str]:
    """Deterministic string ids ``item-0000000``... for synthetic catalogs."""
    return [f"{prefix}{i:07d}" for i in range(n)]

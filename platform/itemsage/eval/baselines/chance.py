"""A uniformly random ranking: the floor every method must clear (Recall@k ~ k / candidates)."""

from __future__ import annotations

import numpy as np


def random_ranks(num_candidates: int, exclude: np.ndarray, seed: int = 0) -> np.ndarray:
    """Each pair's target rank drawn uniformly over the candidates left after its excluded query
    item: the distribution of a random ordering, drawn directly instead of sorting N scores."""
    ex = np.asarray(exclude, dtype=np.int64)
    pool = num_candidates - (ex >= 0).astype(np.int64)
    if (pool < 1).any():
        raise ValueError("a pair has no candidate left to rank")
    return np.random.default_rng(seed).integers(0, pool)

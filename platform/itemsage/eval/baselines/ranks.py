"""The rank of each pair's engaged item in a block of scores (one row per query)."""

from __future__ import annotations

import numpy as np


def ranks_from_scores(scores: np.ndarray, targets: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    """0-based rank of ``targets[i]`` in row i of ``scores`` ``[Q, C]`` (ties count against it).

    ``exclude[i]`` (a candidate position or -1) is taken out of row i: a closeup query item would
    otherwise be its own best neighbour. The rule is :func:`itemsage.eval.recall.ranks_of_targets`'s,
    so a baseline's Recall@k and the model's are the same measurement.
    """
    scores = np.array(scores, dtype=np.float64, copy=True)
    if scores.ndim != 2 or scores.shape[0] != len(targets):
        raise ValueError(f"scores of shape {scores.shape} for {len(targets)} targets")
    rows = np.arange(scores.shape[0])
    if exclude is not None:
        ex = np.asarray(exclude, dtype=np.int64)
        has = ex >= 0
        scores[rows[has], ex[has]] = -np.inf
    target_scores = scores[rows, np.asarray(targets, dtype=np.int64)]
    return (scores >= target_scores[:, None]).sum(axis=1) - 1

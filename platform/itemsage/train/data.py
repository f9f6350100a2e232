"""Training inputs read from a features directory (docs/feature-format.md).

Three things feed a training step: the pairs (a Ray Data dataset, sharded across workers), the item
features (an in-memory :class:`ItemFeatureStore` per worker) and the frozen query features per
surface (:class:`itemsage.data.features_read.QueryFeatures`, shared with evaluation). Bad inputs
fail before any worker starts, with one message that names the path or split at fault.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import torch

from itemsage.data.features_read import FeaturesError, read_pairs


class TrainInputError(FeaturesError):
    """The training inputs cannot be used: fewer usable train pairs than one batch needs."""


def task_counts(pairs: Mapping[str, np.ndarray]) -> dict[str, int]:
    tasks, counts = np.unique(pairs["task"], return_counts=True)
    return {str(t): int(c) for t, c in zip(tasks, counts)}


def heldout_items(features: str) -> np.ndarray:
    """Items engaged in the val/test splits and never in train: kept out of random negatives, so a
    held-out item is never trained on, not even as a negative. (With the default item-disjoint split
    that is every held-out item; with a time split, items engaged in training stay in the pool.)"""
    out = []
    for split in ("val", "test"):
        try:
            out.append(read_pairs(features, split)["item_idx"])
        except FeaturesError:
            continue
    if not out:
        return np.zeros(0, np.int64)
    held = np.unique(np.concatenate(out))
    try:
        return np.setdiff1d(held, read_pairs(features, "train")["item_idx"])
    except FeaturesError:
        return held


def cached_cycle(
    first_pass: Iterable[Mapping[str, np.ndarray]], seed: int, chunk_rows: int = 1024, min_rows: int = 1
) -> Iterator[dict[str, np.ndarray]]:
    """Stream ``first_pass`` once while caching it, then cycle the cache reshuffled, forever.

    Fewer than ``min_rows`` rows in the first pass raise :class:`TrainInputError` (a batcher that
    needs a full batch would otherwise wait forever on an endless stream).

    Why cache: a Ray Data streaming split starts each new epoch behind a barrier that every worker
    must reach, while DDP keeps the workers in lock-step per *step*. Quota batching makes the number
    of steps per epoch differ between workers, so a worker that reaches the epoch barrier first would
    wait for the others while they wait for it in all-reduce. Pairs are a few int columns, so each
    worker keeps its shard in memory after the first pass and starts later epochs on its own.
    """
    cache: list[dict[str, np.ndarray]] = []
    for chunk in first_pass:
        chunk = {k: np.asarray(v) for k, v in chunk.items()}
        if len(next(iter(chunk.values()))):
            cache.append(chunk)
            yield chunk
    n = sum(len(next(iter(c.values()))) for c in cache)
    if n < min_rows:
        raise TrainInputError(
            f"this worker's shard of the train split has {n} usable pairs, fewer than {min_rows} "
            f"(one batch); use fewer workers, a smaller train.batch_size or more data"
        )
    data = {k: np.concatenate([c[k] for c in cache]) for k in cache[0]}
    epoch = 1
    while True:
        order = np.random.default_rng([seed, epoch]).permutation(n)
        for start in range(0, n, chunk_rows):
            sel = order[start : start + chunk_rows]
            yield {k: v[sel] for k, v in data.items()}
        epoch += 1


def sample_negatives(pool: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` item indices drawn uniformly (with replacement) from ``pool``."""
    if n <= 0:
        return pool[:0]
    pick = torch.randint(0, pool.numel(), (n,), generator=generator)
    return pool[pick]

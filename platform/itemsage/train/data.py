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


class MixedNegativeSampler:
    """Random negatives, a share of them from the product types of the batch's positives
    (``loss.same_type_negatives``): mixed negative sampling with hard negatives from the catalog's
    own structure.

    Each of the ``round(fraction * n)`` typed draws picks a batch row uniformly and then an item
    of its positive's type uniformly from ``pool``; the rest are uniform over ``pool``. A row whose
    positive has no type (or a type with no pool item) gets a uniform draw instead. So item ``j``
    of type ``t`` is drawn with probability ``q_j = (1 - f') / |pool| + f_t / |pool_t|``, where
    ``f_t`` is the share of typed draws that went to type ``t`` in expectation
    (``fraction * rows of type t / rows``) and ``f'`` the share that fell back to uniform;
    :meth:`sample` returns ``log(q_j * |pool|)``, the logit correction that makes the random
    term a sampled softmax over the pool again (0 for every draw when ``fraction`` is 0).

    Args:
        pool: item indices negatives come from (the training catalog).
        kinds: ``kind[item_idx]`` type codes, -1 for none (``itemsage.data.features_read.item_kinds``).
        fraction: share of the draws that are typed, in [0, 1].
    """

    def __init__(self, pool: torch.Tensor, kinds: np.ndarray, fraction: float) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"loss.same_type_negatives must be in [0, 1], got {fraction}")
        self.pool = pool
        self.fraction = float(fraction)
        self.kinds = torch.from_numpy(np.asarray(kinds, dtype=np.int64))
        pool_kinds = self.kinds[pool]
        order = torch.argsort(pool_kinds, stable=True)
        self.by_kind = pool[order]
        num_kinds = int(self.kinds.max()) + 1 if self.kinds.numel() else 0
        typed = pool_kinds[pool_kinds >= 0]
        self.count = torch.bincount(typed, minlength=num_kinds)
        # by_kind holds the untyped (-1) pool items first, then each type's block in code order.
        self.start = (pool_kinds < 0).sum() + torch.cumsum(self.count, 0) - self.count

    def sample(self, n: int, positives: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids [n], log_weight [n])``: ``n`` negatives for a batch whose positives are
        ``positives``, and each one's ``log(q_j * |pool|)``."""
        n_typed = int(round(self.fraction * n)) if positives.numel() else 0
        uniform = sample_negatives(self.pool, n - n_typed, generator)
        if n_typed == 0:
            return uniform, torch.zeros(n)
        row_kinds = self.kinds[positives]
        row_kinds = torch.where(row_kinds < self.count.numel(), row_kinds, -1)
        ok = row_kinds >= 0
        ok[ok.clone()] = self.count[row_kinds[ok]] > 0
        picked = row_kinds[torch.randint(0, positives.numel(), (n_typed,), generator=generator)]
        picked_ok = (picked >= 0) & (self.count[picked.clamp(min=0)] > 0)
        offset = (torch.rand(n_typed, generator=generator) * self.count[picked.clamp(min=0)]).long()
        typed = torch.where(
            picked_ok,
            self.by_kind[(self.start[picked.clamp(min=0)] + offset).clamp(max=self.by_kind.numel() - 1)],
            self.pool[torch.randint(0, self.pool.numel(), (n_typed,), generator=generator)],
        )
        ids = torch.cat([uniform, typed])
        # Expected shares over the row draw: type t gets fraction * (rows of type t) / rows of the
        # typed draws, rows without a usable type send theirs to the uniform part.
        f = n_typed / n  # the realised typed share (n_typed is rounded)
        share = torch.bincount(row_kinds[ok], minlength=self.count.numel()).double() / positives.numel()
        uniform_share = (1.0 - f) + f * float((~ok).sum()) / positives.numel()
        k = self.kinds[ids].clamp(min=0)
        typed_part = torch.where(
            (self.kinds[ids] >= 0) & (self.count[k] > 0), f * share[k] / self.count[k].clamp(min=1).double(), 0.0
        )
        q_times_pool = uniform_share + typed_part * self.pool.numel()
        return ids, torch.log(q_times_pool).float()

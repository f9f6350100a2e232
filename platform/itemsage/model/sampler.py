"""Multi-task batch composition: every batch mixes all tasks by quota.

ItemSage trains one model on every (surface, action) task at once, with pairs of all tasks in the
same batch, so sparse tasks (checkouts) borrow strength from dense ones (clicks) at every step. Plain
shuffling gives each task its *data* share, noisily; :class:`MultiTaskBatcher` gives each task its
*quota* share of each batch, rounded by largest remainder, whenever enough of its pairs are buffered.

A task that is short of pairs gives its unused slots to the tasks that have spare pairs (in
proportion to their quotas), so a sparse task never stalls training. Sampling is without replacement:
each pair is used once per pass over the stream, so over a whole epoch every task still contributes
exactly its data; quotas decide how the pairs are *spread over batches* (and, in step-limited runs,
which tasks' pairs get used first).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

Batch = dict[str, np.ndarray]


def largest_remainder(weights: Sequence[float], total: int) -> list[int]:
    """Split ``total`` integer slots in proportion to ``weights`` (Hamilton's method).

    Floors of the exact shares first, then one extra slot each to the largest fractional parts; ties
    go to the earlier entry, so the result is deterministic.
    """
    w = np.asarray(weights, dtype=np.float64)
    if total < 0 or np.any(w < 0):
        raise ValueError("total and weights must be non-negative")
    if total == 0 or w.sum() == 0:
        return [0] * len(w)
    exact = w / w.sum() * total
    base = np.floor(exact).astype(np.int64)
    rest = total - int(base.sum())
    order = np.argsort(-(exact - base), kind="stable")
    base[order[:rest]] += 1
    return [int(x) for x in base]


class MultiTaskBatcher:
    """Turn a stream of pair chunks into quota-mixed training batches.

    Args:
        tasks: the ``"surface/action"`` tasks to train on; pairs of other tasks are dropped (counted
            in ``dropped``), which is how single-task ablations filter the same data.
        quotas: relative share of each task in a batch; tasks missing here get weight 1
            (``TrainConfig.task_quotas``). A weight of 0 drops the task's pairs.
        batch_size: rows per emitted batch.
        seed: seeds the row order inside each batch; output is deterministic for a seed and stream.
        buffer_batches: pairs held before a batch is emitted, in batches. Larger buffers let quotas
            bind despite the arrival order of chunks, at the cost of memory and start-up latency.
        drop_last: drop the final partial batch (default) so that data-parallel ranks step in
            lockstep and no step sees a tiny in-batch softmax.

    ``__call__(stream)`` takes an iterable of dicts of equal-length numpy arrays with at least
    ``item_idx``, ``query_key``, ``surface`` and ``task`` (or ``action``, to derive the task), e.g. a
    Ray Data shard's ``iter_batches(batch_format="numpy")``, and yields dicts with the same keys.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        quotas: Mapping[str, float],
        batch_size: int,
        seed: int = 0,
        buffer_batches: int = 4,
        drop_last: bool = True,
    ) -> None:
        if not tasks:
            raise ValueError("need at least one task")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"duplicate tasks in {list(tasks)}")
        unknown = sorted(set(quotas) - set(tasks))
        if unknown:
            raise ValueError(f"quotas for unknown tasks {unknown}; tasks are {list(tasks)}")
        if batch_size <= 0 or buffer_batches <= 0:
            raise ValueError("batch_size and buffer_batches must be positive")
        self.tasks = list(tasks)
        self.weights = [float(quotas.get(t, 1.0)) for t in self.tasks]
        if any(w < 0 for w in self.weights) or sum(self.weights) == 0:
            raise ValueError("quotas must be non-negative with at least one positive")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.buffer_batches = int(buffer_batches)
        self.drop_last = drop_last
        self.slots = largest_remainder(self.weights, self.batch_size)
        self.dropped = 0

    def allocate(self, available: Sequence[int], size: int | None = None) -> list[int]:
        """Rows to take from each task given ``available`` buffered pairs per task.

        Each task gets ``min(quota slots, available)``; freed slots go to tasks with spare pairs, split
        by their quotas (largest remainder), until the batch is full or nothing is spare.
        """
        size = self.batch_size if size is None else size
        slots = self.slots if size == self.batch_size else largest_remainder(self.weights, size)
        avail = [a if w > 0 else 0 for a, w in zip(available, self.weights)]
        take = [min(s, a) for s, a in zip(slots, avail)]
        left = size - sum(take)
        while left > 0:
            spare = [i for i, (t, a) in enumerate(zip(take, avail)) if a > t]
            if not spare:
                break
            extra = largest_remainder([self.weights[i] for i in spare], left)
            for i, e in zip(spare, extra):
                e = min(e, avail[i] - take[i])
                take[i] += e
                left -= e
        return take

    def __call__(self, stream: Iterable[Mapping[str, np.ndarray]]) -> Iterator[Batch]:
        rng = np.random.default_rng(self.seed)
        buffers: dict[str, Batch] = {}
        self.dropped = 0
        threshold = self.batch_size * self.buffer_batches
        for chunk in stream:
            self._add(buffers, chunk)
            while self._buffered(buffers) >= threshold:
                yield self._emit(buffers, self.batch_size, rng)
        while self._buffered(buffers) >= self.batch_size:
            yield self._emit(buffers, self.batch_size, rng)
        rest = self._buffered(buffers)
        if rest and not self.drop_last:
            yield self._emit(buffers, rest, rng)

    # ------------------------------------------------------------------ internals

    def _add(self, buffers: dict[str, Batch], chunk: Mapping[str, np.ndarray]) -> None:
        cols = {k: np.asarray(v) for k, v in chunk.items()}
        if "task" not in cols:
            if not {"surface", "action"} <= cols.keys():
                raise KeyError("pair chunks need a 'task' column or 'surface' and 'action'")
            surface_slash = np.char.add(cols["surface"].astype(str), "/")
            cols["task"] = np.char.add(surface_slash, cols["action"].astype(str))
        task = cols["task"].astype(str)
        kept = 0
        for t, w in zip(self.tasks, self.weights):
            sel = task == t
            n = int(sel.sum())
            if not n or w == 0:
                continue
            kept += n
            part = {k: v[sel] for k, v in cols.items()}
            old = buffers.get(t)
            buffers[t] = part if old is None else {k: np.concatenate([old[k], part[k]]) for k in old}
        self.dropped += len(task) - kept

    @staticmethod
    def _buffered(buffers: dict[str, Batch]) -> int:
        return sum(len(b["task"]) for b in buffers.values())

    def _emit(self, buffers: dict[str, Batch], size: int, rng: np.random.Generator) -> Batch:
        available = [len(buffers[t]["task"]) if t in buffers else 0 for t in self.tasks]
        take = self.allocate(available, size)
        parts = []
        for t, n in zip(self.tasks, take):
            if not n:
                continue
            buf = buffers[t]
            parts.append({k: v[:n] for k, v in buf.items()})  # FIFO: oldest pairs first
            buffers[t] = {k: v[n:] for k, v in buf.items()}
        batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        order = rng.permutation(len(batch["task"]))
        return {k: v[order] for k, v in batch.items()}

"""Count-min sketch of item frequencies, for the loss's logQ correction.

In-batch negatives are the other rows' positives, so item ``j`` shows up as a negative in proportion
to its engagement frequency ``q_j``. Without correction the softmax learns ``log p(j|query) - log q_j``
and pushes popular items down; subtracting ``log q_j`` from each candidate's logit removes that bias.
``q_j`` is estimated online, in fixed memory, from the stream of positives the trainer has seen.

The sketch is ``depth`` rows of ``width`` counters; row ``r`` hashes an id with MurmurHash3 seeded by
``seed + r``. ``estimate`` takes the minimum over rows, so it never under-counts, and over-counts by
more than ``e * total / width`` with probability at most ``exp(-depth)`` (Cormode & Muthukrishnan).

**DDP.** Every rank must hold the *same* sketch, or the ranks' logQ corrections (and so their
gradients) disagree. Each step, call ``update(allgather_ids(batch_ids))``: every rank adds every
rank's ids, in the same order, so the sketches stay identical without ever broadcasting the counters.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from itemsage.model.hashing import murmur3_32_int64


def allgather_ids(ids: torch.Tensor) -> torch.Tensor:
    """Concatenate ``ids`` from every rank (rank order); returns ``ids`` unchanged without DDP.

    Ranks may hold different numbers of ids: lengths are exchanged first and tensors padded.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return ids
    world = dist.get_world_size()
    ids = ids.reshape(-1).to(torch.int64)
    n = torch.tensor([ids.numel()], device=ids.device, dtype=torch.int64)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    lengths = [int(s.item()) for s in sizes]
    padded = torch.zeros(max(lengths), dtype=torch.int64, device=ids.device)
    padded[: ids.numel()] = ids
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:k] for p, k in zip(parts, lengths)])


class CountMinSketch(nn.Module):
    """Fixed-memory frequency counts of int64 ids.

    Args:
        width: counters per row; the error bound is ``e * total / width`` (``LossConfig.cms_width``).
        depth: independent hash rows; the bound fails with probability ``exp(-depth)``
            (``LossConfig.cms_depth``).
        seed: row ``r`` hashes with seed ``seed + r``; sketches only merge if width/depth/seed match.

    Counters are ``int64`` buffers, so the sketch moves with ``.to(device)`` and is saved in the
    model's ``state_dict`` (a resumed run keeps its frequency estimates).
    """

    counts: torch.Tensor
    total_count: torch.Tensor

    def __init__(self, width: int, depth: int, seed: int = 0) -> None:
        super().__init__()
        if width <= 0 or depth <= 0:
            raise ValueError(f"width and depth must be positive, got {width}, {depth}")
        self.width, self.depth, self.seed = int(width), int(depth), int(seed)
        self.register_buffer("counts", torch.zeros(depth, width, dtype=torch.int64))
        self.register_buffer("total_count", torch.zeros((), dtype=torch.int64))

    def _cells(self, ids: torch.Tensor) -> torch.Tensor:
        """``[depth, n]`` flat counter indices (``row * width + column``) for ``ids``."""
        ids = ids.reshape(-1).to(device=self.counts.device, dtype=torch.int64)
        cols = torch.stack([murmur3_32_int64(ids, self.seed + r) % self.width for r in range(self.depth)])
        rows = torch.arange(self.depth, device=ids.device).unsqueeze(1) * self.width
        return rows + cols

    @torch.no_grad()
    def update(self, ids: torch.Tensor) -> None:
        """Count each id once per occurrence. Under DDP pass ``allgather_ids(ids)`` on every rank."""
        cells = self._cells(ids)
        self.counts.view(-1).index_add_(0, cells.reshape(-1), torch.ones_like(cells.reshape(-1)))
        self.total_count += cells.shape[1]

    @torch.no_grad()
    def estimate(self, ids: torch.Tensor) -> torch.Tensor:
        """Upper-biased count per id (``>=`` the true count), int64, shape of ``ids``."""
        cells = self._cells(ids)
        return self.counts.view(-1)[cells].min(dim=0).values.reshape(ids.shape)

    @property
    def total(self) -> int:
        return int(self.total_count)

    @torch.no_grad()
    def probability(self, ids: torch.Tensor) -> torch.Tensor:
        """Estimated frequency ``estimate / total`` (float32).

        Each estimate is floored at 1 so an id not yet counted gets a small finite probability
        (and a finite ``log``) rather than 0; call ``update`` with a batch before scoring it.
        """
        est = self.estimate(ids).clamp(min=1).to(torch.float32)
        return est / float(max(self.total, 1))

    def log_probability(self, ids: torch.Tensor) -> torch.Tensor:
        """``log q`` for the loss's logQ correction."""
        return torch.log(self.probability(ids))

    @torch.no_grad()
    def merge(self, counts: torch.Tensor) -> None:
        """Add another sketch's ``counts`` (same width, depth and seed), e.g. a rank's or a shard's."""
        if counts.shape != self.counts.shape:
            raise ValueError(f"counts shape {tuple(counts.shape)} != sketch shape {tuple(self.counts.shape)}")
        counts = counts.to(device=self.counts.device, dtype=torch.int64)
        self.counts += counts
        self.total_count += counts[0].sum()  # every row sums to the number of updates

    @torch.no_grad()
    def reset(self) -> None:
        self.counts.zero_()
        self.total_count.zero_()

    def extra_repr(self) -> str:
        return f"width={self.width}, depth={self.depth}, seed={self.seed}"

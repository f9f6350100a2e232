"""ItemSage's hash embedding: a vocab of millions of n-grams in a 100k-row table.

The text vocabularies (paper: 200k unigrams + 1M bigrams + 64k char-trigrams) are too large for one
row per token. Each token id ``v`` is hashed by two seeded hash functions into a shared table ``E``
(``num_buckets x dim``), and a learned per-token weight pair ``W[v]`` mixes the two rows:
``emb(v) = W[v, 0] * E[h0(v)] + W[v, 1] * E[h1(v)]``. Two tokens that collide in one row almost never
collide in the other, and ``W`` lets the model tell them apart, at a cost of 2 floats per token.
A text feature's embedding is the sum of its tokens' embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from itemsage.model.hashing import bucket_table


class HashEmbeddingBag(nn.Module):
    """Sum-pooled two-seed hash embedding over bags of token ids.

    Args:
        vocab_size: number of token ids; ids outside ``[0, vocab_size)`` are treated as
            out-of-vocabulary and contribute nothing (serving stays safe if it sees a newer vocab).
        num_buckets: rows of the shared table ``E``; the memory knob (paper: 100,000).
        dim: embedding width (paper: 256).
        seeds: one MurmurHash3 seed per hash function; must match ``model.hash_seeds`` in the
            feature format so that training, batch embedding and serving agree.
    """

    # Registered with register_buffer below; declared so the type checker knows it is a tensor.
    buckets: torch.Tensor

    def __init__(
        self,
        vocab_size: int,
        num_buckets: int = 100_000,
        dim: int = 256,
        seeds: Sequence[int] = (17, 31),
        token_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if vocab_size <= 0:
            raise ValueError(f"vocab_size must be positive, got {vocab_size}")
        self.vocab_size = int(vocab_size)
        self.num_buckets = int(num_buckets)
        self.dim = int(dim)
        self.seeds = tuple(int(s) for s in seeds)
        if not 0.0 <= token_dropout < 1.0:
            raise ValueError(f"token_dropout must be in [0, 1), got {token_dropout}")
        self.token_dropout = float(token_dropout)
        # N(0, 1/dim) rows: a bag of n tokens then has norm ~sqrt(n), which the per-group projection
        # and the pre-norm transformer absorb.
        self.table = nn.Parameter(torch.randn(self.num_buckets, self.dim) * self.dim**-0.5)
        # 1/k per seed: every token starts as the mean of its k rows; W then learns to favour the row
        # it does not share with a colliding token.
        k = len(self.seeds)
        self.importance = nn.Parameter(torch.full((self.vocab_size, k), 1.0 / k))
        # Persistent, so a checkpoint carries the exact token -> row mapping it was trained with.
        buckets = torch.from_numpy(bucket_table(self.vocab_size, self.num_buckets, self.seeds))
        self.register_buffer("buckets", buckets, persistent=True)

    @property
    def num_hashes(self) -> int:
        return len(self.seeds)

    @torch.no_grad()
    def init_from_idf(self, idf: torch.Tensor) -> None:
        """Start every token's weights at its IDF, so a bag is a random projection of its TF-IDF.

        A token's embedding is then ``idf(v) * g(v)`` with ``g(v) = (E[h0(v)] + E[h1(v)]) / sqrt(k)``,
        a Gaussian vector of unit expected norm (rows are N(0, 1/dim)); a bag's sum is ``G @ tfidf``
        for a random Gaussian ``G``, which keeps TF-IDF inner products up to 1/sqrt(dim) noise
        (Johnson-Lindenstrauss). Tokens sharing one of their rows (hash collisions) add a little
        spurious similarity, as in any hashing trick.
        """
        if idf.shape != (self.vocab_size,):
            raise ValueError(f"idf must have shape ({self.vocab_size},), got {tuple(idf.shape)}")
        if not bool(torch.isfinite(idf).all()) or bool((idf < 0).any()):
            raise ValueError("idf weights must be finite and non-negative")
        weights = idf.to(self.importance.dtype) / self.num_hashes**0.5
        self.importance.copy_(weights.unsqueeze(1).expand(-1, self.num_hashes))

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Bags of token ids -> ``[num_bags, dim]`` sums; empty bags give zeros.

        ``ids`` is the flat ``[T]`` token list and ``offsets[b]`` the start of bag ``b`` in it
        (``torch.nn.EmbeddingBag`` convention, no trailing offset). One ``F.embedding_bag`` call
        does every bag: each token contributes ``k`` (row, weight) samples, so the offsets scale by k.
        """
        ids = ids.to(torch.int64)
        offsets = offsets.to(torch.int64)
        k = self.num_hashes
        valid = (ids >= 0) & (ids < self.vocab_size)
        safe = torch.where(valid, ids, torch.zeros_like(ids))
        rows = self.buckets[safe].reshape(-1)  # [T*k], token-major
        keep = valid.to(self.importance.dtype)
        if self.training and self.token_dropout > 0:
            # Inverted dropout over whole tokens (both of a token's rows go together), training only.
            drop = torch.rand(ids.shape, device=ids.device) < self.token_dropout
            keep = keep * (~drop).to(keep.dtype) / (1.0 - self.token_dropout)
        weights = self.importance[safe] * keep.unsqueeze(1)
        return F.embedding_bag(
            rows,
            self.table,
            offsets * k,
            mode="sum",
            per_sample_weights=weights.reshape(-1).to(self.table.dtype),
        )

    def naive_forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Reference implementation with a Python loop per token (tests and benchmark only)."""
        num_bags = offsets.numel()
        bounds = offsets.tolist() + [ids.numel()]
        out = []
        for b in range(num_bags):
            acc = self.table.new_zeros(self.dim)
            for t in ids[bounds[b] : bounds[b + 1]].tolist():
                if not 0 <= t < self.vocab_size:
                    continue
                for j in range(self.num_hashes):
                    acc = acc + self.importance[t, j] * self.table[self.buckets[t, j]]
            out.append(acc)
        return torch.stack(out) if out else self.table.new_zeros(0, self.dim)

    def extra_repr(self) -> str:
        return (
            f"vocab_size={self.vocab_size}, num_buckets={self.num_buckets}, dim={self.dim}, seeds={self.seeds}, "
            f"token_dropout={self.token_dropout}"
        )

"""The pooled text path (``model.text_residual``): an item's or a search query's token bag, straight
into the shared embedding space through a linear map that starts similarity-preserving.

The item tower sees each text field through its own projection and a transformer, which starts as
a random function of the tokens: training has to rediscover from engagement what a TF-IDF over the
same tokens knows with none. This path adds ``gate * W normalize(sum of the token embeddings)`` to
the output instead. With ``model.text_init = "idf"`` the sum starts as a Gaussian random projection
of the text's TF-IDF vector, and ``W`` starts as a scaled orthogonal map (like the residual query
projections), so the inner product of two texts' contributions starts at their TF-IDF cosine. The
same module (same hash table, same ``W``, same gate) embeds the tokens of a search query's text, so
a query and a listing that share rare tokens start close, as under TF-IDF.
"""

from __future__ import annotations

import torch
from torch import nn

from itemsage.model.hash_embedding import HashEmbeddingBag

# Smooths the normalisation of a near-empty bag (only weight-0 tokens left, e.g. after token dropout):
# a plain x / ||x|| has an unbounded gradient there. Bag norms are O(IDF) = O(1..10), so this does
# not change a real bag's direction.
_NORM_EPS = 1e-2


def smooth_normalize(x: torch.Tensor) -> torch.Tensor:
    """``x / sqrt(||x||^2 + eps^2)`` along the last dim: a unit vector for any real bag, 0 for 0."""
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + _NORM_EPS**2)


def orthogonal_linear(in_dim: int, out_dim: int) -> nn.Linear:
    """A bias-free ``Linear(in_dim, out_dim)`` that starts as a norm-preserving random map: orthogonal,
    rescaled by ``sqrt(in/out)`` when it projects down (orthonormal rows keep only out/in of a vector's
    squared norm)."""
    lin = nn.Linear(in_dim, out_dim, bias=False)
    nn.init.orthogonal_(lin.weight)
    if out_dim < in_dim:
        with torch.no_grad():
            lin.weight.mul_((in_dim / out_dim) ** 0.5)
    return lin


def padded_bags(token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[n, L]`` token ids padded with -1 -> the ``(ids, offsets)`` bag form of one bag per row.

    The padding ids are out of vocabulary, which the hash embedding skips.
    """
    if token_ids.ndim != 2:
        raise ValueError(f"expected [n, L] padded token ids, got shape {tuple(token_ids.shape)}")
    n, length = token_ids.shape
    offsets = torch.arange(n, device=token_ids.device, dtype=torch.int64) * length
    return token_ids.reshape(-1).to(torch.int64), offsets


class TextResidual(nn.Module):
    """``gate * W smooth_normalize(pooled token embeddings)``, ``[n, hash_dim] -> [n, out_dim]``."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = orthogonal_linear(in_dim, out_dim)
        self.gate = nn.Parameter(torch.ones(()))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        x = smooth_normalize(pooled.to(self.proj.weight.dtype))
        return self.gate.to(x.dtype) * self.proj(x)

    def embed_tokens(self, embedding: HashEmbeddingBag, token_ids: torch.Tensor) -> torch.Tensor:
        """This path for texts given as ``[n, L]`` padded token ids (search queries)."""
        ids, offsets = padded_bags(token_ids)
        return self(embedding(ids, offsets))

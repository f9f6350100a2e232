"""Hubness of an item embedding against a bank of catalog items (``model.hubness_weight``).

CSLS (Conneau et al. 2018, "Word translation without parallel data") scores a query q against an
item x as ``q . x - h(x)`` up to a per-query constant, with h(x) the mean cosine of x to its r
nearest neighbours: an item in a dense neighbourhood (a hub) is near many queries only because it
is near many items. Training makes exactly the items it saw into hubs (their positives were pulled
together), so against a catalog of seen items a new product loses the top 10 to seen ones even
when the model tells it apart from them (docs/quality.md). h(x) reads catalog embeddings only, no
engagement, and treats seen and new items alike.

The bank is the catalog's own item embeddings, so an item in the bank finds itself at cosine 1;
that one match is left out (at most one: a second identical listing still counts, as it would for
a new item that duplicates a catalog item).
"""

from __future__ import annotations

import torch

# A bank row at least this close to the item is the item itself (the bank holds the catalog's
# embeddings computed by the same tower, equal up to float noise). At most one such row is skipped.
SELF_MATCH_COSINE = 0.999


def neighbour_similarity(x: torch.Tensor, bank: torch.Tensor, neighbours: int, chunk: int = 4096) -> torch.Tensor:
    """``[n]`` mean cosine of each unit row of ``x`` ``[n, d]`` to its ``neighbours`` nearest rows of
    the unit ``bank`` ``[m, d]``, its own row (cosine >= :data:`SELF_MATCH_COSINE`, the top one
    only) left out. Zeros when the bank is empty."""
    if neighbours < 1:
        raise ValueError(f"model.hubness_neighbors must be >= 1, got {neighbours}")
    n = x.shape[0]
    if bank.shape[0] == 0 or n == 0:
        return x.new_zeros(n, dtype=torch.float32)
    if x.shape[1] != bank.shape[1]:
        raise ValueError(f"embeddings of dimension {x.shape[1]} against a hubness bank of dimension {bank.shape[1]}")
    bank = bank.to(device=x.device, dtype=torch.float32)
    k = min(neighbours + 1, bank.shape[0])
    out = []
    for start in range(0, n, chunk):
        top = (x[start : start + chunk].float() @ bank.T).topk(k, dim=1).values  # descending
        is_self = top[:, 0] >= SELF_MATCH_COSINE
        if k == neighbours + 1:
            # rows that found themselves: the next `neighbours`; the others: the first `neighbours`
            nearest = torch.where(is_self[:, None], top[:, 1:], top[:, :neighbours])
        else:  # a bank smaller than neighbours + 1: everything but the self match
            keep = torch.ones_like(top, dtype=torch.bool)
            keep[:, 0] = ~is_self
            nearest = torch.where(keep, top, torch.zeros_like(top))
            out.append(nearest.sum(1) / keep.sum(1).clamp(min=1))
            continue
        out.append(nearest.mean(1))
    return torch.cat(out)


def bank_rows(num_items: int, size: int, seed: int = 0) -> torch.Tensor:
    """Item indices that make up a bank of at most ``size`` items: all of them, else a seeded random
    sample (sorted)."""
    if size < 1:
        raise ValueError(f"model.hubness_bank_size must be >= 1, got {size}")
    if num_items <= size:
        return torch.arange(num_items)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(num_items, generator=g)[:size].sort().values

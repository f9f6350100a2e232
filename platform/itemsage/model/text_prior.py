"""Inverse document frequencies of the vocabulary's tokens, counted over training items only.

``model.text_init = "idf"`` starts the hash embedding's per-token weights at these IDFs
(:meth:`HashEmbeddingBag.init_from_idf`), so that an item's token bag starts as a random projection
of its TF-IDF vector. The counts come from the items training may see (the catalog minus the items
engaged only in the val/test splits, the same pool random negatives are drawn from): a statistic the
model uses must not know the held-out items, or validation recall stops predicting recall on new
products. A token no training item contains gets the largest IDF, as any new token would.
"""

from __future__ import annotations

import numpy as np
import torch

from itemsage.model.batch import ItemFeatureStore


def document_frequency(store: ItemFeatureStore, items: torch.Tensor, vocab_size: int) -> np.ndarray:
    """``[vocab_size]`` int64: how many of ``items`` contain each token id, in any text field.

    A token repeated within an item (or across its fields) counts once for that item, as in
    TF-IDF's document frequency. Ids outside ``[0, vocab_size)`` are ignored (out of vocabulary).
    """
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    idx = torch.as_tensor(items, dtype=torch.int64).reshape(-1)
    if idx.numel() == 0:
        return np.zeros(vocab_size, np.int64)
    if int(idx.min()) < 0 or int(idx.max()) >= store.num_items:
        raise IndexError(f"item indices out of range [0, {store.num_items})")
    idx = torch.unique(idx)
    f = store.num_text_fields
    # Items are contiguous in the store (item-major bags): item i spans bags i*F .. i*F+F-1.
    starts = store.token_offsets[idx * f]
    ends = store.token_offsets[idx * f + f]
    lengths = ends - starts
    owner = torch.repeat_interleave(torch.arange(idx.numel()), lengths)
    first = torch.repeat_interleave(starts - torch.cumsum(lengths, 0) + lengths, lengths)
    tokens = store.token_ids[first + torch.arange(int(lengths.sum()))]
    valid = (tokens >= 0) & (tokens < vocab_size)
    pairs = torch.unique(owner[valid] * vocab_size + tokens[valid])
    return np.bincount((pairs % vocab_size).numpy(), minlength=vocab_size).astype(np.int64)


def inverse_document_frequency(df: np.ndarray, num_docs: int) -> torch.Tensor:
    """``log((1 + N) / (1 + df))`` per token (float32): 0 for a token in every document (a constant
    field such as Shopee's merchant domain says nothing), largest for one in none."""
    if num_docs < 0 or (df < 0).any() or (df > num_docs).any():
        raise ValueError(f"document frequencies must lie in [0, {num_docs}]")
    return torch.from_numpy(np.log((1.0 + num_docs) / (1.0 + df.astype(np.float64))).astype(np.float32))


def training_idf(store: ItemFeatureStore, train_items: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """IDF of every token over ``train_items`` (:func:`document_frequency`, then the formula)."""
    n = int(torch.unique(torch.as_tensor(train_items, dtype=torch.int64)).numel())
    return inverse_document_frequency(document_frequency(store, train_items, vocab_size), n)

"""Stable, vectorised MurmurHash3 (x86_32) for token ids and item ids.

The hash embedding maps every token id to two rows of a shared table, and the count-min sketch maps
item ids to counters. Both mappings must be identical in every process, on every machine and in every
later release (a model trained with one mapping is garbage under another), so we never use Python's
salted ``hash``: we use MurmurHash3 x86_32, the function ``mmh3.hash`` implements, on the key's
little-endian bytes. The tests check bit-exact agreement with ``mmh3``.

One implementation serves two array types: numpy (``uint64`` work arrays, used to build the bucket
table once at model construction) and torch (``int64`` work arrays, so the count-min sketch hashes on
whatever device its ids live on). Every intermediate is kept below 2**32 by masking; products of two
32-bit values wrap modulo 2**64 in both libraries, which leaves the low 32 bits exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch

_MASK = 0xFFFFFFFF
_C1 = 0xCC9E2D51
_C2 = 0x1B873593

A = TypeVar("A", np.ndarray, torch.Tensor)


def _rotl(x: A, r: int) -> A:
    return ((x << r) & _MASK) | (x >> (32 - r))


def _mix_block(h: A, k: A) -> A:
    """One 4-byte block of the MurmurHash3 x86_32 body."""
    k = (k * _C1) & _MASK
    k = _rotl(k, 15)
    k = (k * _C2) & _MASK
    h = h ^ k
    h = _rotl(h, 13)
    return (h * 5 + 0xE6546B64) & _MASK


def _fmix(h: A, length: int) -> A:
    """Length mixing and the final avalanche."""
    h = h ^ length
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _MASK
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _MASK
    return h ^ (h >> 16)


def _check_seed(seed: int) -> int:
    if not 0 <= int(seed) <= _MASK:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    return int(seed)


def murmur3_32(keys: np.ndarray, seed: int) -> np.ndarray:
    """MurmurHash3 x86_32 of each key's 4-byte little-endian encoding, as ``uint32``.

    Equals ``mmh3.hash(int(k).to_bytes(4, "little"), seed, signed=False)`` element-wise. Keys must be
    integers in ``[0, 2**32)`` (vocab ids are); anything else raises instead of silently wrapping.
    """
    seed = _check_seed(seed)
    k = np.asarray(keys)
    if k.dtype.kind not in "iu":
        raise TypeError(f"keys must be integers, got dtype {k.dtype}")
    if k.size and (int(k.min()) < 0 or int(k.max()) > _MASK):
        raise ValueError("keys must be in [0, 2**32) for the 4-byte hash")
    k = k.astype(np.uint64)
    h = np.full(k.shape, seed, dtype=np.uint64)
    return _fmix(_mix_block(h, k), 4).astype(np.uint32)


def murmur3_32_int64(ids: torch.Tensor, seed: int) -> torch.Tensor:
    """MurmurHash3 x86_32 of each id's 8-byte little-endian two's-complement encoding.

    Equals ``mmh3.hash(int(i).to_bytes(8, "little", signed=True), seed, signed=False)``. Returned as
    ``int64`` in ``[0, 2**32)`` on the ids' device (torch has no general-purpose uint32 arithmetic).
    Used by the count-min sketch, whose ids are arbitrary int64.
    """
    seed = _check_seed(seed)
    ids = ids.to(torch.int64)
    lo = ids & _MASK
    hi = (ids >> 32) & _MASK  # arithmetic shift, then mask: the two's-complement high word
    h = torch.full_like(ids, seed)
    h = _mix_block(h, lo)
    h = _mix_block(h, hi)
    return _fmix(h, 8)


def bucket_table(vocab_size: int, num_buckets: int, seeds: Sequence[int]) -> np.ndarray:
    """``[vocab_size, len(seeds)]`` int64 table: row ``v`` holds ``murmur3_32(v, seed_j) % num_buckets``.

    Computed once per model; the hash embedding stores it so lookups are a gather, not a hash.
    """
    if vocab_size < 0 or num_buckets <= 0:
        raise ValueError(f"need vocab_size >= 0 and num_buckets > 0, got {vocab_size}, {num_buckets}")
    if len(seeds) == 0:
        raise ValueError("need at least one seed")
    ids = np.arange(vocab_size, dtype=np.uint64)
    cols = [murmur3_32(ids, s).astype(np.int64) % num_buckets for s in seeds]
    return np.stack(cols, axis=1) if vocab_size else np.zeros((0, len(seeds)), dtype=np.int64)

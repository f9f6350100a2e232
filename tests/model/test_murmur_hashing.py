"""MurmurHash3 x86_32: bit-exact against the reference ``mmh3`` and pinned for stability."""

from __future__ import annotations

import mmh3
import numpy as np
import pytest
import torch

from itemsage.model.hashing import bucket_table, murmur3_32, murmur3_32_int64

EDGE_U32 = [0, 1, 2, 255, 256, 65535, 2**31 - 1, 2**31, 2**32 - 2, 2**32 - 1]


@pytest.mark.parametrize("seed", [0, 17, 31, 2**32 - 1])
def test_murmur3_32_matches_mmh3(seed: int) -> None:
    rng = np.random.default_rng(seed % 1000)
    keys = np.concatenate([np.array(EDGE_U32, dtype=np.int64), rng.integers(0, 2**32, 500)])
    got = murmur3_32(keys, seed)
    want = np.array([mmh3.hash(int(k).to_bytes(4, "little"), seed, signed=False) for k in keys], dtype=np.uint32)
    assert got.dtype == np.uint32
    np.testing.assert_array_equal(got, want)


def test_murmur3_32_keeps_shape_and_accepts_uint32() -> None:
    keys = np.arange(12, dtype=np.uint32).reshape(3, 4)
    out = murmur3_32(keys, 17)
    assert out.shape == (3, 4)
    assert out[2, 3] == mmh3.hash((11).to_bytes(4, "little"), 17, signed=False)


def test_murmur3_32_rejects_out_of_range_keys_and_seeds() -> None:
    with pytest.raises(ValueError):
        murmur3_32(np.array([-1]), 17)
    with pytest.raises(ValueError):
        murmur3_32(np.array([2**32]), 17)
    with pytest.raises(ValueError):
        murmur3_32(np.array([1]), -3)
    with pytest.raises(TypeError):
        murmur3_32(np.array([1.5]), 17)


@pytest.mark.parametrize("seed", [0, 5, 123456])
def test_murmur3_32_int64_matches_mmh3_on_8_byte_keys(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ids = [0, 1, -1, 2**31, 2**32, 2**40 + 3, -(2**63), 2**63 - 1] + rng.integers(-(2**62), 2**62, 300).tolist()
    got = murmur3_32_int64(torch.tensor(ids, dtype=torch.int64), seed)
    want = [mmh3.hash(int(i).to_bytes(8, "little", signed=True), seed, signed=False) for i in ids]
    assert got.dtype == torch.int64
    assert got.tolist() == want


def test_bucket_table_is_pinned() -> None:
    # Pinned values: a change here silently invalidates every trained model and index.
    table = bucket_table(5, 100, (17, 31))
    assert table.dtype == np.int64 and table.shape == (5, 2)
    assert table.tolist() == [[46, 19], [46, 4], [37, 54], [76, 4], [58, 63]]


def test_bucket_table_matches_definition() -> None:
    v, buckets, seeds = 300, 997, (17, 31, 7)
    table = bucket_table(v, buckets, seeds)
    for t in (0, 1, 150, 299):
        for j, s in enumerate(seeds):
            assert table[t, j] == mmh3.hash(t.to_bytes(4, "little"), s, signed=False) % buckets
    assert table.min() >= 0 and table.max() < buckets
    assert bucket_table(0, 10, (1, 2)).shape == (0, 2)

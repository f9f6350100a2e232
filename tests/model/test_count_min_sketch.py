"""Count-min sketch: never under-counts, respects e*N/width w.h.p., merges, saves, DDP no-op."""

from __future__ import annotations

import math

import numpy as np
import torch

from itemsage.model.cms import CountMinSketch, allgather_ids


def _zipf_stream(n: int = 20_000, universe: int = 2_000, a: float = 1.1, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, universe + 1) ** a
    ids = rng.choice(universe, size=n, p=p / p.sum())
    # Spread the ids over the int64 range so the hash, not the id layout, does the work.
    return torch.from_numpy(ids.astype(np.int64) * 7_919_000_003 - 2**40)


def test_never_underestimates_and_meets_the_error_bound_on_zipf() -> None:
    width, depth = 272, 5  # eps = e/width ~ 0.01, delta = e^-5 ~ 0.0067
    stream = _zipf_stream()
    cms = CountMinSketch(width, depth, seed=3)
    for chunk in stream.split(1000):
        cms.update(chunk)
    assert cms.total == stream.numel()
    uniq, true = torch.unique(stream, return_counts=True)
    est = cms.estimate(uniq)
    assert torch.all(est >= true)
    bound = math.e * stream.numel() / width
    violations = ((est - true).float() > bound).float().mean().item()
    assert violations <= 2 * math.exp(-depth)
    # The popular head is what logQ needs most: its relative error is small.
    head = true.argsort(descending=True)[:10]
    assert ((est[head] - true[head]).float() / true[head]).max() < 0.1


def test_depth_one_sketch_is_worse_than_depth_five() -> None:
    # Guards the min over rows: with several independent rows the error must shrink.
    stream = _zipf_stream(seed=1)
    uniq, true = torch.unique(stream, return_counts=True)
    errs = []
    for depth in (1, 5):
        cms = CountMinSketch(128, depth, seed=0)
        cms.update(stream)
        errs.append((cms.estimate(uniq) - true).float().mean().item())
    assert errs[1] < 0.5 * errs[0]


def test_exact_counts_without_collisions_and_probability() -> None:
    cms = CountMinSketch(width=4096, depth=4, seed=0)
    ids = torch.tensor([5, 5, 5, 9, 11, 5])
    cms.update(ids)
    assert cms.estimate(torch.tensor([5, 9, 11])).tolist() == [4, 1, 1]
    torch.testing.assert_close(cms.probability(torch.tensor([5, 9])), torch.tensor([4 / 6, 1 / 6]))
    torch.testing.assert_close(cms.log_probability(torch.tensor([5])), torch.tensor([math.log(4 / 6)]))
    # Unseen ids are floored at one count: finite log q.
    assert cms.estimate(torch.tensor([123])).item() == 0
    torch.testing.assert_close(cms.probability(torch.tensor([123])), torch.tensor([1 / 6]))
    assert cms.estimate(torch.tensor([[5, 9], [11, 5]])).shape == (2, 2)


def test_merge_equals_one_sketch_over_both_streams_and_state_dict_roundtrip() -> None:
    stream = _zipf_stream(n=4000)
    full, a, b = CountMinSketch(64, 3, 1), CountMinSketch(64, 3, 1), CountMinSketch(64, 3, 1)
    full.update(stream)
    a.update(stream[:1500])
    b.update(stream[1500:])
    a.merge(b.counts)
    assert torch.equal(a.counts, full.counts) and a.total == full.total
    restored = CountMinSketch(64, 3, 1)
    restored.load_state_dict(full.state_dict())
    assert torch.equal(restored.estimate(stream[:50]), full.estimate(stream[:50]))
    assert restored.total == full.total


def test_rows_use_different_hashes_and_seed_changes_them() -> None:
    ids = torch.arange(200)
    cells = CountMinSketch(1024, 3, seed=0)._cells(ids) % 1024
    assert (cells[0] != cells[1]).float().mean() > 0.9
    other = CountMinSketch(1024, 3, seed=7)._cells(ids) % 1024
    assert not torch.equal(cells, other)


def test_allgather_is_identity_without_distributed() -> None:
    ids = torch.tensor([3, 1, 4])
    assert allgather_ids(ids) is ids

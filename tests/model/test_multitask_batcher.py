"""MultiTaskBatcher: quota shares by largest remainder, sparse tasks never stall, deterministic."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest

from itemsage.model.sampler import MultiTaskBatcher, largest_remainder

TASKS = ["search/click", "closeup/save", "home/checkout"]


def _chunk(tasks: list[str], start: int) -> dict[str, np.ndarray]:
    n = len(tasks)
    return {
        "task": np.array(tasks),
        "surface": np.array([t.split("/")[0] for t in tasks]),
        "query_key": np.arange(start, start + n, dtype=np.int64),
        "item_idx": np.arange(start, start + n, dtype=np.int64) * 10,
    }


def _stream(shares: dict[str, float], chunks: int, chunk_size: int = 64, seed: int = 0) -> Iterator[dict]:
    rng = np.random.default_rng(seed)
    names, p = list(shares), np.array(list(shares.values()))
    for c in range(chunks):
        yield _chunk(list(rng.choice(names, size=chunk_size, p=p / p.sum())), c * chunk_size)


def test_largest_remainder_exact() -> None:
    assert largest_remainder([1, 1, 1], 10) == [4, 3, 3]
    assert largest_remainder([0.7, 0.15, 0.1, 0.05], 256) == [179, 38, 26, 13]
    assert largest_remainder([2, 0, 1], 7) == [5, 0, 2]
    assert largest_remainder([1, 1], 0) == [0, 0]
    assert sum(largest_remainder([0.3, 0.3, 0.4], 1001)) == 1001


def test_every_batch_has_its_quota_while_pairs_are_buffered() -> None:
    # A buffer as large as the stream: every task has spare pairs until the 2x-quota task runs out.
    batcher = MultiTaskBatcher(
        TASKS, {"search/click": 2.0, "closeup/save": 1.0}, batch_size=8, seed=0, buffer_batches=1000
    )
    assert batcher.slots == [4, 2, 2]  # home/checkout defaults to weight 1
    batches = list(batcher(_stream({t: 1.0 for t in TASKS}, chunks=10)))  # ~213 pairs per task
    sent = Counter(t for c in _stream({t: 1.0 for t in TASKS}, chunks=10) for t in c["task"].tolist())
    full = sent["search/click"] // 4
    for b in batches[:full]:
        assert Counter(b["task"].tolist()) == {"search/click": 4, "closeup/save": 2, "home/checkout": 2}
    # Then search/click is short: its slots go to the others and batches stay full.
    after = Counter(batches[full + 1]["task"].tolist())
    assert after["search/click"] == 0 and sum(after.values()) == 8
    assert after == {"closeup/save": 4, "home/checkout": 4}


def test_sparse_task_gives_its_slots_away_and_never_stalls() -> None:
    batcher = MultiTaskBatcher(TASKS, {"home/checkout": 2.0}, batch_size=32, seed=1)
    shares = {"search/click": 0.89, "closeup/save": 0.1, "home/checkout": 0.01}
    consumed = []

    def counted() -> Iterator[dict]:
        for i, chunk in enumerate(_stream(shares, chunks=1_000_000, seed=3)):  # effectively endless
            consumed.append(i)
            yield chunk

    first = list(itertools.islice(batcher(counted()), 50))
    assert all(len(b["task"]) == 32 for b in first)
    assert len(consumed) < 50 * 32 / 64 + batcher.buffer_batches * 32 / 64 + 2  # bounded read-ahead
    got = Counter(t for b in first for t in b["task"].tolist())
    sent = Counter(t for c in _stream(shares, chunks=len(consumed), seed=3) for t in c["task"].tolist())
    # The sparse task is drained at every step: every checkout pair read so far was emitted except
    # those of the last chunk or two, while the dense task still has a buffer of unused pairs.
    assert sent["home/checkout"] > 0 and got["home/checkout"] >= sent["home/checkout"] - 2
    assert got["search/click"] < sent["search/click"]
    # A task with no pairs at all does not block anything either.
    none = MultiTaskBatcher(TASKS, {}, batch_size=16, seed=0)
    out = list(itertools.islice(none(_stream({"search/click": 1.0}, chunks=10**6)), 20))
    assert len(out) == 20 and all(set(b["task"].tolist()) == {"search/click"} for b in out)


def test_each_pair_used_once_and_deterministic() -> None:
    stream = list(_stream({t: 1.0 for t in TASKS}, chunks=10))
    run = lambda seed: list(MultiTaskBatcher(TASKS, {}, 24, seed=seed)(iter(stream)))  # noqa: E731
    a, b, c = run(5), run(5), run(6)
    keys = np.concatenate([x["query_key"] for x in a])
    assert len(keys) == len(set(keys.tolist())) == 640 // 24 * 24  # drop_last: a partial batch is dropped
    assert all(np.array_equal(x["query_key"], y["query_key"]) for x, y in zip(a, b))
    assert any(not np.array_equal(x["query_key"], y["query_key"]) for x, y in zip(a, c))
    # Rows stay aligned across columns after the shuffle.
    for x in a:
        assert np.array_equal(x["item_idx"], x["query_key"] * 10)
    tail = list(MultiTaskBatcher(TASKS, {}, 24, seed=5, drop_last=False)(iter(stream)))
    assert sum(len(x["task"]) for x in tail) == 640 and len(tail[-1]["task"]) == 640 % 24


def test_unknown_tasks_dropped_and_task_derived_from_surface_action() -> None:
    chunk = {
        "surface": np.array(["search", "search", "home", "closeup"]),
        "action": np.array(["click", "save", "checkout", "save"]),
        "query_key": np.arange(4),
        "item_idx": np.arange(4),
    }
    batcher = MultiTaskBatcher(TASKS, {}, batch_size=3, seed=0, buffer_batches=1)
    out = list(batcher([chunk]))
    assert batcher.dropped == 1  # search/save is not a training task
    assert sorted(out[0]["task"].tolist()) == sorted(TASKS)


def test_validation() -> None:
    with pytest.raises(ValueError):
        MultiTaskBatcher(TASKS, {"search/typo": 1.0}, 8, 0)
    with pytest.raises(ValueError):
        MultiTaskBatcher([], {}, 8, 0)
    with pytest.raises(ValueError):
        MultiTaskBatcher(TASKS, {t: 0.0 for t in TASKS}, 8, 0)

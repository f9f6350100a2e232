"""experiments/bench/live.py's arithmetic, without a server: time-to-visible from replica samples.

The benchmark itself needs Ray Serve and minutes (docs/serving.md has its figures); what can be
wrong without either is how a write's visibility is read off the answers' headers.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

LIVE = Path(__file__).resolve().parents[2] / "experiments" / "bench" / "live.py"


@pytest.fixture(scope="module")
def live() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_live", LIVE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look classes up by module name
    spec.loader.exec_module(module)
    return module


def bench(live: ModuleType) -> object:
    args = argparse.Namespace(seed=0, retrievers=2, image_writes_per_s=2.0)
    return live.Bench("http://x", "t", args, ["q"], ["i"], [b""])


def test_visible_means_every_replica_has_answered_past_the_write(live: ModuleType) -> None:
    b = bench(live)
    for t, replica, seq in [(1.0, "a", 4), (1.1, "b", 3), (1.2, "a", 5), (1.6, "b", 5), (1.7, "b", 4), (2.0, "b", 9)]:
        b.samples.add({live.REPLICA: replica, live.APPLIED: str(seq)}, t)
    w5 = live.Write("x", "text", sent=0.9, acked=1.05, seq=5)
    w9 = live.Write("y", "image", sent=1.0, acked=1.5, seq=9)
    w3 = live.Write("z", "delete", sent=0.5, acked=0.9, seq=3)
    b.writes = [w5, w9, w3]
    b.time_to_visible()
    assert w5.visible_s == pytest.approx(1.6 - 1.05)  # the slower replica decides
    assert w9.visible_s is None  # replica a never answered past 9
    assert w3.visible_s == pytest.approx(0.2)  # b's first answer at or past 3 came at 1.1
    # An older seq arriving late (1.7 s, seq 4) does not make a replica "forget" seq 5.
    assert b.samples.visible_at("b", 5) == 1.6 and b.samples.claims("b", 5)


def test_answers_without_replica_headers_are_ignored(live: ModuleType) -> None:
    b = bench(live)
    b.samples.add({}, 1.0)
    b.samples.add({live.REPLICA: "a"}, 1.0)
    assert b.samples.by_replica == {}

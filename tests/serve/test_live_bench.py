"""experiments/bench/live.py's arithmetic, without a server: time-to-visible from the replicas'
apply stamps, what the router showed, and the checks of exhaustive answers against the writes.

The benchmark itself needs Ray Serve and minutes (docs/serving.md has its figures); what can be
wrong without either is how visibility is read off the stamps, the headers and the answers.
"""

from __future__ import annotations

import argparse
from types import ModuleType

import pytest
from tests.support.scripts import load_script


@pytest.fixture(scope="module")
def live() -> ModuleType:
    return load_script("experiments/bench/live.py")


def bench(live: ModuleType, url: str | None = None) -> object:
    args = argparse.Namespace(seed=0, retrievers=2, image_writes_per_s=2.0, url=url, check_k=1000)
    return live.Bench("http://x", "t", args, ["q"], ["i"], [b""])


def steps(*pairs: tuple[int, float], now: float) -> dict[str, object]:
    """A ``GET /live/applied`` answer."""
    return {
        "applied_seq": max(s for s, _ in pairs),
        "now": now,
        "steps": [{"seq": s, "applied_at": t} for s, t in pairs],
    }


def test_visible_means_every_replica_stamped_a_step_past_the_write(live: ModuleType) -> None:
    b = bench(live)
    b.timelines.add("a", steps((3, 1.0), (5, 1.2), now=1.5), sent=1.5, received=1.5)
    b.timelines.add("b", steps((4, 1.1), (9, 1.9), now=2.0), sent=2.0, received=2.0)
    w5 = live.Write("x", "text", sent=0.9, acked=1.05, seq=5)
    w9 = live.Write("y", "image", sent=1.0, acked=1.5, seq=9)
    w3 = live.Write("z", "delete", sent=0.5, acked=1.3, seq=3)
    b.writes = [w5, w9, w3]
    b.time_to_visible()
    assert w5.visible_s == pytest.approx(1.9 - 1.05)  # b's first step at or past 5 is seq 9, at 1.9
    assert w9.visible_s is None  # replica a never got to 9
    assert w3.visible_s == 0.0  # both had it before the client got its 200


def test_a_remote_replicas_clock_offset_comes_from_its_fastest_answer(live: ModuleType) -> None:
    b = bench(live, url="http://elsewhere:8000")
    # The replica's clock runs 5 s ahead; the slow answer (2 s round trip) would misjudge it by 1 s.
    b.timelines.add(
        "a", {"applied_seq": 7, "now": 17.0, "steps": [{"seq": 7, "applied_at": 16.5}]}, sent=10.0, received=12.0
    )
    b.timelines.add("a", {"applied_seq": 7, "now": 25.1, "steps": []}, sent=20.0, received=20.2)
    b.timelines.add("b", steps((7, 11.6), now=12.0), sent=12.0, received=12.0)
    w = live.Write("x", "text", sent=11.0, acked=11.2, seq=7)
    b.writes = [w]
    b.time_to_visible()
    assert b.timelines.offset["a"][1] == pytest.approx(5.0)
    assert w.visible_s == pytest.approx(11.6 - 11.2)  # a's 16.5 is 11.5 on our clock


def test_the_router_view_is_kept_as_an_upper_bound(live: ModuleType) -> None:
    b = bench(live)
    for t, replica, seq in [(1.0, "a", 4), (1.1, "b", 3), (1.2, "a", 5), (1.6, "b", 5), (1.7, "b", 4), (2.0, "b", 9)]:
        b.samples.add({live.REPLICA: replica, live.APPLIED: str(seq)}, t)
    b.timelines.add("a", steps((5, 1.06), now=2), sent=2, received=2)
    b.timelines.add("b", steps((5, 1.07), now=2), sent=2, received=2)
    w5 = live.Write("x", "text", sent=0.9, acked=1.05, seq=5)
    b.writes = [w5]
    b.time_to_visible()
    assert w5.observed_s == pytest.approx(1.6 - 1.05)  # the router showed b past 5 only at 1.6
    assert w5.visible_s == pytest.approx(0.02)
    # An older seq arriving late (1.7 s, seq 4) does not make a replica "forget" seq 5.
    assert b.samples.visible_at("b", 5) == 1.6 and b.samples.claims("b", 5)


def test_answers_without_replica_headers_are_ignored(live: ModuleType) -> None:
    b = bench(live)
    b.samples.add({}, 1.0)
    b.samples.add({live.REPLICA: "a"}, 1.0)
    assert b.samples.by_replica == {}


def test_exhaustive_answers_are_checked_against_the_writes_and_the_stamps(live: ModuleType) -> None:
    b = bench(live)
    b.writes = [
        live.Write("new", "text", sent=0, acked=1, seq=2),
        live.Write("new", "delete", sent=0, acked=1, seq=6),
        live.Write("kept", "image", sent=0, acked=1, seq=3),
        live.Write("unsure", "text", sent=0),  # never acknowledged: may or may not be in the log
    ]
    b.timelines.add("a", steps((2, 10.0), (6, 12.0), now=20), sent=20, received=20)
    ok = [
        live.Answer("/search", "a", 1, 9.0, 9.1, frozenset({"base"}), True),
        live.Answer("/similar", "a", 4, 11.0, 11.1, frozenset({"new", "kept", "unsure"}), True),
        live.Answer("/recommend", "a", 6, 12.5, 12.6, frozenset({"kept"}), True),
        live.Answer("/search", "a", 6, 13.0, 13.1, frozenset({"new"}), False),  # k results: not judged
        # Started at seq 4; seq 6 (delete "new") was applied before the answer came: either is right.
        live.Answer("/search", "a", 4, 11.9, 12.1, frozenset({"kept"}), True),
    ]
    b.answers = list(ok)
    out = b.check_answers()
    assert out["wrong_items"] == 0 and out["stamps_ahead"] == 0, out["examples"]
    assert out["item_checks"] == 7 and out["item_skipped"] == 1
    assert out["answers"]["/search"] == {"exhaustive": 2, "not_exhaustive": 1}

    b.answers = [
        live.Answer("/recommend", "a", 6, 12.5, 12.6, frozenset({"kept", "new"}), True),  # a deleted item returned
        live.Answer("/similar", "a", 4, 12.5, 12.6, frozenset({"new", "kept"}), True),  # sent after seq 6's stamp
    ]
    out = b.check_answers()
    assert out["wrong_items"] == 1 and out["stamps_ahead"] == 1, out["examples"]

"""A 60 s soak of the Serve app (experiments/bench/soak.py, in-process): mixed /search, /similar
and /embed/item traffic at concurrency 16 on the trained demo model. No request may fail, every
10 s window must have answers, and no replica's resident memory may grow by 10% or more.

Concurrency 16 rather than the script's 32: on a 2-core CI box 32 clients only lengthen the
queues (latency), not the work done, and the test must stay within a few minutes. The replica
processes are found below this process (the local Ray it starts), never another Ray's.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import start_serve_app, stop_serve_app

pytestmark = pytest.mark.slow

SOAK = Path(__file__).resolve().parents[2] / "experiments" / "bench" / "soak.py"


@pytest.fixture(scope="module")
def soak() -> Any:
    spec = importlib.util.spec_from_file_location("bench_soak", SOAK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look classes up by module name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def served_app(trained_serving: Any) -> Iterator[dict]:
    app = start_serve_app(trained_serving, "1")
    try:
        yield app
    finally:
        stop_serve_app()


# The soak itself takes ~80 s plus the app's start; run alone, this test also pays for training the
# demo model (the session fixture), which took over 15 minutes on a loaded 2-core box.
@pytest.mark.timeout(1800)
def test_sixty_second_soak_fails_nothing_and_does_not_grow(served_app: dict, soak: Any, tmp_path: Path) -> None:
    report = soak.run_soak(served_app["url"], concurrency=16, duration_s=60, window_s=10, warmup_s=10, root=os.getpid())
    print()
    print(soak.table(report))
    soak.plot(report, tmp_path / "soak.png")
    assert (tmp_path / "soak.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert report.requests > 100, report.requests
    assert report.errors == 0, report.error_samples
    assert len(report.windows) == 6
    for w in report.windows:
        assert w.requests - w.errors > 0, f"window {w.index} ({w.start_s}s) had no answers"
    # Every request kind was answered at some point of the run (a p99 exists for it).
    for endpoint in soak.ENDPOINTS:
        assert any(w.p99_ms_by_endpoint[endpoint] is not None for w in report.windows), endpoint
    # All four deployments' replicas were measured at both ends of the run.
    measured = {r.deployment for r in report.replicas if r.growth_pct is not None}
    assert measured == {"Ingress", "Retriever", "QueryEncoder", "ItemEncoder"}, report.replicas
    growth = {f"{r.deployment} (pid {r.pid})": r.growth_pct for r in report.replicas if r.growth_pct is not None}
    assert max(growth.values()) < 10.0, growth
    assert report.ok, report.checks

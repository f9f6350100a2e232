"""The small local Ray of the Ray Data suites here (test_ingest, test_preprocess,
test_amazon_preprocess): started once per module that asks for it, stopped after its last test.

A package-scoped fixture (one Ray for the three) was tried on 2026-12-05: tests/data is not a
Python package, and under pytest 9 the fixture then outlived the directory and left its Ray
running into the next group on that worker (tests/eval/test_evaluate.py failed to start its own).

One Ray kept across the three modules without that leak (a module fixture whose teardown leaves
the Ray running when pytest's ``nextitem`` asks for ``ray_local`` too) was measured on 2026-12-05
and gained nothing: the three modules alone, one process, under the heavy lock, 225.2 s with a Ray
per module, 225.6 s with one for the three. ``ray.init`` and ``ray.shutdown`` take a few seconds
here; the modules' time is in their Ray Data pipelines (actor pools loading the backbones), which
start afresh for each run either way.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.support.ray_local import start_small_ray


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    import ray

    start_small_ray()
    yield
    ray.shutdown()

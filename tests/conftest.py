"""Shared test fixtures. Tests never read the full downloads (data/fashion, data/shopee): they use the
bundled sample in data/sample."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.feature_cache import ENV as FEATURE_CACHE_ENV
from tests.support.xdist_groups import schedule_rank, xdist_group

# Weights come from pip packages; make any accidental hub download fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Every Ray the tests start (in process, `ray start`, `serve run`, the scripts' own) inherits this:
# a raylet kills a task worker after 1 s idle once more workers than CPUs are alive, and Ray Data
# then starts the next task's worker afresh (ray, torch, the backbones imported again). The tests'
# Rays live minutes, so their workers are kept and reused instead: alone, under the heavy lock,
# tests/data/test_preprocess.py 126 -> 58 s of CPU (37 -> 11 workers started, 75 -> 40 s) and
# test_amazon_preprocess.py 72 -> 45 s (21 -> 10 workers, 49 -> 32 s); a Serve module is unchanged.
os.environ.setdefault("RAY_idle_worker_killing_time_threshold_ms", "600000")
# A Ray Train controller polls its worker group every 2 s, and each step of a run (group started,
# training done, group stopped) waits for a poll; the tests run a dozen short trainings. 0.5 s:
# tests/train/test_ray_train.py's refit and unreachable-MLflow runs 28.5 / 29.3 -> 24.2 / 24.5 s;
# the whole module alone 198 -> 170-180 s, 300 -> 274-285 s of CPU.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
# Each Ray Train run also starts a PreemptionWatcher actor (its own process, polling the GCS every
# 5 s) that reacts to a node being drained; no test drains a node (the fault tests kill processes).
# Off: test_ray_train.py alone 285 / 274 -> 250 s of CPU (2026-12-05). Both settings together:
# test_fault_tolerance.py alone 214 -> 187 s, 374 -> 326 s of CPU.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE


@pytest.fixture(scope="session", autouse=True)
def _feature_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Where the model builds of this run keep the frozen backbones' outputs
    (tests/support/feature_cache.py): the run's directory, which every pytest-xdist worker of the
    run shares (each worker's own temporary directory is inside it), or this session's own."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    before = os.environ.get(FEATURE_CACHE_ENV)
    os.environ[FEATURE_CACHE_ENV] = str(root / "feature_cache")
    yield
    if before is None:
        os.environ.pop(FEATURE_CACHE_ENV, None)
    else:
        os.environ[FEATURE_CACHE_ENV] = before


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``--dist loadgroup`` (an xdist worker sees it as ``option.loadgroup``): the tests in
    the order the groups are handed out, heaviest first (``schedule_rank``); a stable sort, so each
    module's tests stay together and in their own order."""
    if getattr(config.option, "loadgroup", False) or config.getoption("dist", "no") == "loadgroup":
        items.sort(key=lambda item: schedule_rank(item.nodeid))


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """With ``--dist loadgroup`` (``make test``): xdist's own scheduler, grouping the tests as
    :func:`tests.support.xdist_groups.xdist_group` says and handing the groups out in collection
    order (sorted above, heaviest first) rather than by their number of tests. The groups are named
    by path, not by ``xdist_group`` marks: pytest-xdist 3.8 does not apply those with pytest 9 here
    (its worker renames the items' ``_nodeid``, which no longer takes effect)."""
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False  # as --no-loadscope-reorder: keep the order above

    class PathGroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_group(nodeid) or nodeid

    return PathGroupScheduling(config, log)

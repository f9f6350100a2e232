"""Shared test fixtures. Tests never read the full downloads (data/fashion, data/shopee): they use the
bundled sample in data/sample."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Weights come from pip packages; make any accidental hub download fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE


# `make test` runs the suites on two pytest-xdist workers (`-n 2 --dist loadgroup`). Tests that start
# their own Ray in subprocesses only (the 2-node `ray start` cluster, the fault-injection trainings)
# form one group; every module that starts Ray / Serve inside the pytest process, or needs a model
# trained there (`serve run` serves the session's trained_serving), forms the other, so each worker
# has at most one in-process Ray at a time and the two groups (~8-12 min each on 2 cores) run beside
# each other. The other tests go to whichever worker is free. The subprocess clusters take fresh
# ports and private state (tests/support/ray_nodes.py), so they do not collide with the in-process one.
_OWN_RAY_MODULES = (
    "tests/cluster/test_multinode.py",
    "tests/train/test_fault_tolerance.py",
)
_IN_PROCESS_RAY = (
    "tests/api/",
    "tests/data/test_preprocess.py",
    "tests/eval/test_evaluate.py",
    "tests/index/test_embed.py",
    "tests/serve/",
    "tests/train/",
    "tests/test_one_model_door.py",
)


def _xdist_group(nodeid: str) -> str | None:
    path = nodeid.split("::", 1)[0]
    if path in _OWN_RAY_MODULES:
        return "subprocess_ray"
    if path.startswith(_IN_PROCESS_RAY):
        return "in_process_ray"
    return None


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """With ``--dist loadgroup``: xdist's own scheduler, grouping by :func:`_xdist_group`. Here the
    groups are named by path instead of ``xdist_group`` marks, which pytest-xdist 3.8 cannot apply
    with pytest 9 here (the worker renames the items' ``_nodeid``, which no longer takes effect)."""
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class PathGroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _xdist_group(nodeid) or nodeid

    return PathGroupScheduling(config, log)

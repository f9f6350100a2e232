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


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(item.path).resolve().relative_to(REPO).as_posix()
        if path in _OWN_RAY_MODULES:
            item.add_marker(pytest.mark.xdist_group("subprocess_ray"))
        elif path.startswith(_IN_PROCESS_RAY):
            item.add_marker(pytest.mark.xdist_group("in_process_ray"))

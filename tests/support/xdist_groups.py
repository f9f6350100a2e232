"""Which tests share a pytest-xdist worker under `make test` (see tests/conftest.py)."""

from __future__ import annotations

# `make test` runs the suites on two pytest-xdist workers (`-n 2 --dist loadgroup`). Tests that start
# their own Ray in subprocesses only (the 2-node `ray start` cluster, the fault-injection trainings)
# form one group; every module that starts Ray / Serve inside the pytest process, or needs a model
# trained there (`serve run` serves the session's trained_serving), forms the other, so each worker
# has at most one in-process Ray at a time and the two groups (~8-12 min each on 2 cores) run beside
# each other. The other tests go to whichever worker is free. The subprocess clusters take fresh
# ports and private state (tests/support/ray_nodes.py), so they do not collide with the in-process one.
SUBPROCESS_RAY = (
    "tests/cluster/test_multinode.py",
    "tests/train/test_fault_tolerance.py",
)
IN_PROCESS_RAY = (
    "tests/api/",
    "tests/data/test_amazon_preprocess.py",
    "tests/data/test_ingest.py",
    "tests/data/test_preprocess.py",
    "tests/eval/test_evaluate.py",
    "tests/index/test_embed.py",
    "tests/serve/",
    "tests/train/",
    "tests/test_one_model_door.py",
)


def xdist_group(nodeid: str) -> str | None:
    """The group of a test id (``tests/...py::name``), or None for a test any worker may run."""
    path = nodeid.split("::", 1)[0]
    if path in SUBPROCESS_RAY:
        return "subprocess_ray"
    if path.startswith(IN_PROCESS_RAY):
        return "in_process_ray"
    return None

"""`make test`'s xdist groups still name real files, and every module that starts Ray or Serve in
the pytest process is in a group (one test module split over both workers would start a second
local cluster, and build its module fixtures, beside the first)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.xdist_groups import GROUPS, schedule_rank, xdist_group

REPO = Path(__file__).resolve().parents[1]
# Calls that start (or need) a Ray cluster inside the calling process.
IN_PROCESS_START = re.compile(
    r"\bray\.init\(|\bserve\.run\(|\brun_local\(|\bstart_ray\(|\bstart_small_ray\(|\bstart_serve_app\("
)
# A module that asks for a conftest fixture starting a local Ray (tests/data, tests/train) starts one.
RAY_FIXTURE = re.compile(r"\bdef \w+\([^)]*\b(?:ray_local|ray_cluster)\b")
# A module that replaces ray.init with a fake starts no Ray (tests/serve/test_fast_ingress.py).
FAKE_INIT = 'setattr(ray, "init"'


def test_every_grouped_path_exists_and_names_one_group() -> None:
    names = [name for name, _ in GROUPS]
    assert len(names) == len(set(names))
    for name, paths in GROUPS:
        for path in paths:
            assert (REPO / path).exists(), path
            if path.endswith(".py"):
                assert xdist_group(f"{path}::t") == name, path  # not taken by an earlier group


def test_modules_that_start_ray_in_process_are_grouped() -> None:
    starting = [
        p.relative_to(REPO).as_posix()
        for p in sorted((REPO / "tests").rglob("test_*.py"))
        if (IN_PROCESS_START.search(p.read_text()) or RAY_FIXTURE.search(p.read_text()))
        and FAKE_INIT not in p.read_text()
    ]
    # The scan still finds them, through a fixture too.
    assert {"tests/data/test_preprocess.py", "tests/train/test_ray_train.py", "tests/eval/test_evaluate.py"} <= set(starting)
    ungrouped = [p for p in starting if xdist_group(f"{p}::t") is None]
    assert ungrouped == []


def test_a_test_id_maps_to_its_group_and_rank() -> None:
    assert xdist_group("tests/cluster/test_multinode.py::test_pipeline_on_two_node_cluster") == "multinode"
    assert xdist_group("tests/serve/test_serve_e2e.py::test_x[1]") == "trained_serving"
    assert xdist_group("tests/serve/test_live_faults.py::t") == "live_faults"
    assert xdist_group("tests/api/test_api.py::t") == "sample_model"
    assert xdist_group("tests/train/test_ray_train.py::t") == "ray_train"
    assert xdist_group("tests/train/test_lamb.py::t") == "train"
    assert xdist_group("tests/test_config.py::test_x") is None
    # Heaviest first; ungrouped tests after every group.
    assert schedule_rank("tests/cluster/test_multinode.py::t") == 0
    assert schedule_rank("tests/serve/test_serve_e2e.py::t") == 1
    assert schedule_rank("tests/test_config.py::t") == len(GROUPS)

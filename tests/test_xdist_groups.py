"""`make test`'s two xdist groups still name real files, and every module that starts Ray or Serve
in the pytest process is in the in-process group (two in-process Rays on one worker, or one test
module split over both workers, would start a second local cluster beside the first)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.xdist_groups import IN_PROCESS_RAY, SUBPROCESS_RAY, xdist_group

REPO = Path(__file__).resolve().parents[1]
# Calls that start (or need) a Ray cluster inside the calling process.
IN_PROCESS_START = re.compile(r"\bray\.init\(|\bserve\.run\(|\brun_local\(|\bstart_ray\(|\bstart_small_ray\(|\bstart_serve_app\(")


def test_every_grouped_path_exists() -> None:
    for path in (*SUBPROCESS_RAY, *IN_PROCESS_RAY):
        assert (REPO / path).exists(), path


def test_modules_that_start_ray_in_process_are_in_one_group() -> None:
    starting = [
        p.relative_to(REPO).as_posix()
        for p in sorted((REPO / "tests").rglob("test_*.py"))
        if IN_PROCESS_START.search(p.read_text()) and "_capture_ray_init" not in p.read_text()
    ]
    assert "tests/data/test_preprocess.py" in starting  # the scan still finds them
    ungrouped = [p for p in starting if xdist_group(f"{p}::t") != "in_process_ray"]
    assert ungrouped == []


def test_a_test_id_maps_to_its_group() -> None:
    assert xdist_group("tests/cluster/test_multinode.py::test_pipeline_on_two_node_cluster") == "subprocess_ray"
    assert xdist_group("tests/serve/test_soak.py::test_x[1]") == "in_process_ray"
    assert xdist_group("tests/test_config.py::test_x") is None

"""The local-cluster harness's small parts (fast): ports, deadlines, targeted stops, log parsing."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.support.e2e import ClusterE2EReport, first_error_line, worker_nodes_from_log, worker_nodes_from_run_dir
from tests.support.jobs import WORKING_DIR_EXCLUDES, git_ignored, runtime_env
from tests.support.procs import MARKER_ENV, marked_pids, terminate, wait_for

from itemsage.cluster import ports as ports_module
from itemsage.cluster.ports import RAY_WORKER_PORTS_END, free_ports, reserved_gap

HEAD = "012581c551c91854e0a4481e331ee3176559dbb8b59a352159389fe4"
WORKER = "eb46ea695bcbf8b2098915fb210b97c9aada43077639d83dd1584a2f"


def test_free_ports_are_distinct() -> None:
    ports = free_ports(12)
    assert len(set(ports)) == 12 and all(p > 0 for p in ports)


def test_free_ports_avoid_the_ports_other_processes_are_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Between Ray's worker ports and the kernel's ephemeral range: no bind(0) of a Ray gRPC server
    # or worker can take a chosen port before our listener binds it; nor a port Serve gives its
    # Ingress replicas (30000-31000 by default, moved here by its environment variable).
    monkeypatch.setattr(ports_module, "_EPHEMERAL_RANGE", tmp_path / "range")
    (tmp_path / "range").write_text("32768\t60999\n")
    gap = reserved_gap()
    assert gap == [*range(RAY_WORKER_PORTS_END + 1, 30000), *range(31001, 32768)]
    assert all(RAY_WORKER_PORTS_END < p < 32768 and not 30000 <= p <= 31000 for p in free_ports(50))
    monkeypatch.setenv("RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT", "25000")
    monkeypatch.setenv("RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT", "25999")
    gap = reserved_gap()
    assert gap is not None and 25000 not in gap and 25999 not in gap and 26000 in gap and 30500 in gap
    # No gap worth the name (or no Linux range to read): any free port the kernel gives.
    (tmp_path / "range").write_text("20100 60999")
    assert reserved_gap() is None and len(set(free_ports(3))) == 3
    (tmp_path / "range").unlink()
    assert reserved_gap() is None


def test_wait_for_returns_the_value_or_names_what_timed_out() -> None:
    calls = iter([None, False, "ready"])
    assert wait_for(lambda: next(calls), 5, "thing", interval_s=0.01) == "ready"

    def refused() -> None:
        raise ConnectionRefusedError("nobody home")

    with pytest.raises(TimeoutError, match=r"thing: not ready after 0.2s \(last error: ConnectionRefusedError: nobody home\)"):
        wait_for(refused, 0.2, "thing", interval_s=0.05)


def test_stop_finds_only_marked_processes_even_reparented(tmp_path: Path) -> None:
    # A shell that starts a grandchild and exits: the grandchild is re-parented, as Ray's daemons
    # are after `ray start` returns. The marker in its environment still finds it.
    marker = f"test-{time.monotonic_ns()}"
    env = {"PATH": "/usr/bin:/bin", MARKER_ENV: marker}
    subprocess.run(["sh", "-c", "sleep 300 >/dev/null 2>&1 &"], env=env, check=True)
    bystander = subprocess.Popen(["sleep", "300"], env={"PATH": "/usr/bin:/bin", MARKER_ENV: "someone-else"})
    try:
        pids = wait_for(lambda: marked_pids(marker) or None, 10, "marked sleep")
        assert bystander.pid not in pids and len(pids) == 1
        assert terminate(pids, grace_s=5) == []  # sleep exits on SIGTERM
        wait_for(lambda: not marked_pids(marker), 10, "marked sleep gone")
        assert bystander.poll() is None  # not ours to stop
    finally:
        bystander.kill()
        bystander.wait()


def test_runtime_env_keeps_local_state_out_of_the_upload() -> None:
    env = runtime_env({"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"})
    assert env["env_vars"] == {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}
    for path in (".venv", ".git", "artifacts", "mlruns", "mlflow.db"):
        assert path in WORKING_DIR_EXCLUDES
    json.dumps(env)  # what --runtime-env-json receives


def test_runtime_env_adds_what_git_ignores_locally(tmp_path: Path) -> None:
    # .git/info/exclude is not read by Ray; git's own listing carries it into the excludes.
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".git" / "info" / "exclude").write_text("/wheelhouse/\n")
    (tmp_path / ".gitignore").write_text("outputs/\n")
    for d in ("wheelhouse", "outputs", "src"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "f.txt").write_text("x")
    assert sorted(git_ignored(tmp_path)) == ["/outputs", "/wheelhouse"]
    assert "/wheelhouse" in runtime_env(None, tmp_path)["excludes"]
    assert git_ignored(tmp_path / "src" / "nope") == []  # not a checkout: nothing extra


def test_worker_nodes_from_log_and_side_files(tmp_path: Path) -> None:
    log = "\n".join(
        [
            "(RayTrainWorker pid=2) \x1b[36m[itemsage] train worker rank 1/2 on node " + HEAD + " (pid 2, cpu)",
            "noise",
            "(RayTrainWorker pid=1) [itemsage] train worker rank 0/2 on node " + WORKER + " (pid 1, cpu)",
            "(RayTrainWorker pid=1) [itemsage] train worker rank 0/2 on node " + WORKER + " (pid 1, cpu)",
        ]
    )
    nodes, lines = worker_nodes_from_log(log)
    assert nodes == {0: WORKER, 1: HEAD}
    assert len(lines) == 2 and lines[0].startswith("(RayTrainWorker pid=1)") and "\x1b" not in lines[1]

    workers = tmp_path / "itemsage" / "workers"
    workers.mkdir(parents=True)
    for rank, node in nodes.items():
        (workers / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "pid": 1, "node_id": node}))
    assert worker_nodes_from_run_dir(tmp_path) == nodes


def test_first_error_line() -> None:
    text = "Running entrypoint for job x\nconfig error: config file not found: a.yaml\nerror: later"
    assert first_error_line(text) == "config error: config file not found: a.yaml"
    assert first_error_line("all fine") == ""


def test_excerpt_names_what_the_issue_asks_to_quote() -> None:
    report = ClusterE2EReport(
        run_dir="/tmp/x",
        nodes={HEAD: "head", WORKER: "worker"},
        unauthenticated_status=401,
        jobs={"preprocess": "SUCCEEDED", "train": "SUCCEEDED"},
        train_worker_lines=["(RayTrainWorker pid=1) [itemsage] train worker rank 0/2 on node " + WORKER],
        model_uri="models:/itemsage/1",
        model_versions=["1"],
        mlflow_runs=1,
        serve_url="http://127.0.0.1:1",
        search_status=200,
        search={"model_version": "1", "results": [{"item_id": "42", "title": "Blue Shirt", "score": 0.5}]},
    )
    text = report.excerpt()
    for needle in (HEAD, WORKER, "job train      SUCCEEDED", "HTTP 401", "-> 200", "42 'Blue Shirt' 0.500"):
        assert needle in text


def test_cli_refuses_a_missing_config(capsys) -> None:
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-m", "tests.support.cluster_e2e", "--config", "experiments/configs/nope.yaml"],
        cwd=repo, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: config file not found: experiments/configs/nope.yaml"

"""kill -9 of a training worker mid-run: Ray Train restarts the worker group from the latest
checkpoint, the run finishes, and MLflow still shows one run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _registered_step(run_dir: Path) -> int | None:
    """Step of the latest checkpoint the Ray Train controller has *registered* (a checkpoint
    directory exists a little before the controller records it; only recorded ones are restored)."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    if not snapshot.exists():
        return None
    try:
        latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result")
    except json.JSONDecodeError:  # being rewritten right now
        return None
    return int(latest["metrics"]["step"]) if latest else None


def _wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"training exited early with {proc.returncode}")
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_killed_worker_resumes_from_the_latest_checkpoint(synthetic_features, tmp_path, tiny_overrides) -> None:
    import ray

    assert not ray.is_initialized()  # the CLI below starts its own 2-CPU cluster
    max_steps = 150
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"train": {"max_steps": max_steps}}))
    overrides = [
        f"train.features={synthetic_features}",
        f"train.storage_path={tmp_path / 'runs'}",
        "train.name=fault",
        "train.checkpoint_every=10",
        "train.eval_every=0",
        "train.max_failures=2",
        *tiny_overrides,
    ]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "RAY_USAGE_STATS_ENABLED": "0"}
    log = open(tmp_path / "train.log", "w")
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "experiments" / "train.py"), "--config", str(cfg), "--num-cpus", "2", *overrides],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    run_dir = tmp_path / "runs" / "fault"
    pid_file = run_dir / "itemsage" / "workers" / "rank1.json"
    try:
        _wait_for(lambda: pid_file.exists() and _registered_step(run_dir), 300, proc)
        killed_at = _registered_step(run_dir)
        victim = json.loads(pid_file.read_text())["pid"]
        assert killed_at < max_steps, "training finished before the kill; raise max_steps"
        os.kill(victim, signal.SIGKILL)
        assert proc.wait(timeout=400) == 0, (tmp_path / "train.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()

    assert json.loads(pid_file.read_text())["pid"] != victim  # a new worker group took over
    assert _registered_step(run_dir) == max_steps
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("itemsage").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    resumed = [m.value for m in client.get_metric_history(run_id, "train/resumed_from_step")]
    assert resumed and resumed[0] >= killed_at and resumed[0] % 10 == 0
    steps = {m.step for m in client.get_metric_history(run_id, "train/loss")}
    assert steps == set(range(1, max_steps + 1))
    assert runs[0].data.tags.get("itemsage.registered_version") == "1"

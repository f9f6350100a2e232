"""experiments/gpu_check.py --cpu: every section runs on CPU at small size and reports what it measured.

The GPU figures come from a GPU machine; this proves the script itself works (Ray Train, the
index sweep, the Serve app and the report) wherever CI runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # starts Ray (Train, then Serve): a few minutes on 2 cores

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_mode_runs_every_section(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "platform"), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run([sys.executable, str(REPO / "experiments/gpu_check.py"), "--cpu", "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1200, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    sections = report["sections"]
    assert {k: v["status"] for k, v in sections.items()} == {"train": "ok", "index": "ok", "serve": "ok"}, sections
    assert report["mode"] == "cpu" and report["targets"] == {}

    train = sections["train"]
    assert train["backend"].startswith("ray train, 1 worker") and train["world_size"] == 1
    assert train["steps"] == 5 and train["steps_per_s"] > 0 and train["gflop_per_step"] > 0
    assert train["mfu"] is None  # no bf16 peak for a CPU
    assert train["model"]["hidden_dim"] == 128  # the fashion config's tower

    index = sections["index"]
    assert index["n"] == 20_000 and index["sweep"]["device"] == "cpu"
    assert index["ivf"]["recall_at_10"] >= 0.95 and index["ivf"]["device"] == "cpu"
    assert index["qps_cpu_exact_b256"] > 0 and index["ivf"]["x_cpu_exact"] > 1
    assert {r["spec"] for r in index["sweep"]["rows"]} >= {"Flat", "IVF512,Flat", "IVF512,PQ32np"}

    serve = sections["serve"]
    assert serve["requests"] == 50 and serve["failed"] == 0
    assert 0 < serve["p50_ms"] <= serve["p99_ms"]
    assert serve["index_device"] == "cpu" and serve["health"]

    md = (tmp_path / "report.md").read_text()
    for heading in ("# GPU check (cpu)", "## Train", "## Index", "### Sweep", "## Serve"):
        assert heading in md


def test_gpu_check_without_a_gpu_says_so(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "platform"), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(REPO / "experiments/gpu_check.py"), "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0 and "no GPU visible" in proc.stdout
    assert not (tmp_path / "report.json").exists()

"""Every entry point refuses a bad config before Ray starts, naming the key and its allowed siblings.

Each script runs as its own process, exactly as a user types it, so nothing this test process has
imported or started (a Ray instance of another test) can hide what the script itself does.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What ray.init logs when it starts (or joins) a cluster; a script that got as far as Ray says it.
RAY_STARTED = ("Started a local Ray instance", "Connecting to existing Ray cluster")


def _run(script: str, *args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "platform"), env.get("PYTHONPATH", "")])
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path}/mlflow.db"
    return subprocess.run(
        [sys.executable, str(REPO / "experiments" / script), *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )


@pytest.mark.parametrize(
    ("script", "yaml_text", "override", "messages"),
    [
        (
            "train.py",
            "train:\n  model:\n    finetune_text_layer: 1\n",
            "train.max_steps=abc",
            [
                "unknown config key train.model.finetune_text_layer (known keys under train.model: arch,",
                "did you mean train.model.finetune_text_layers?",
                "train.max_steps: expected an integer, got 'abc'",
            ],
        ),
        (
            "preprocess.py",
            "preprocess:\n  image:\n    batchsize: 8\n",
            "text.min_count=often",  # preprocess.py takes keys without the section prefix
            [
                "unknown config key preprocess.image.batchsize (known keys under preprocess.image: backbone,",
                "preprocess.text.min_count: expected an integer, got 'often'",
            ],
        ),
        (
            "pipeline.py",
            "serve:\n  prot: 8001\n",
            "train.lr_decay=step",
            [
                "unknown config key serve.prot (known keys under serve: allowed_image_roots,",
                "train.lr_decay: must be one of 'cosine', 'linear' or 'constant', got 'step'",
            ],
        ),
    ],
)
def test_entry_point_stops_before_ray(tmp_path: Path, script: str, yaml_text: str, override: str, messages: list[str]) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    proc = _run(script, "--config", str(config), override, tmp_path=tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    for message in messages:
        assert message in proc.stderr, output
    assert not any(line in output for line in RAY_STARTED), output
    assert not (tmp_path / "mlflow.db").exists()  # no MLflow run for a run that never started

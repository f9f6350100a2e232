"""``train.use_gpu`` and ``train.placement_strategy`` decided against the cluster (fast, no Ray).

A GPU config on a cluster without GPUs must train on CPU with a warning instead of waiting forever
for a GPU; a strategy that can never be placed must fail with the key's name.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from itemsage.config import ConfigError, PipelineConfig, load_config
from itemsage.train import trainer
from itemsage.train.trainer import check_config, check_placement, cluster_gpus, use_gpu_for

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cluster(monkeypatch):
    """A fake connected cluster: GPUs now, the autoscaler's limits (None: no autoscaler), nodes."""
    import ray
    from ray._private import state as ray_state

    fake = SimpleNamespace(resources={"CPU": 4.0}, limits=None, nodes=[])
    monkeypatch.setattr(ray, "cluster_resources", lambda: fake.resources)
    monkeypatch.setattr(ray, "nodes", lambda: fake.nodes)
    monkeypatch.setattr(ray_state.state, "get_max_resources_from_cluster_config", lambda: fake.limits)
    return fake


def test_cluster_gpus_now_and_reachable(cluster) -> None:
    assert cluster_gpus() == (0.0, None)
    cluster.resources = {"CPU": 4.0, "GPU": 2.0}
    cluster.limits = {"CPU": 64, "GPU": 8}
    assert cluster_gpus() == (2.0, 8.0)


def test_gpu_config_on_a_cpu_cluster_runs_on_cpu_with_a_warning(cluster, capsys) -> None:
    assert use_gpu_for("true", num_workers=2) is False
    err = capsys.readouterr().err
    assert 'WARNING: train.use_gpu is "true" but the Ray cluster has no GPU' in err and "training on CPU" in err


def test_gpu_config_keeps_gpus_an_autoscaler_can_add(cluster, capsys) -> None:
    cluster.limits = {"CPU": 32, "GPU": 4}  # a GPU worker group at zero replicas
    assert use_gpu_for("true", num_workers=2) is True
    assert use_gpu_for("auto", num_workers=2) is True
    assert capsys.readouterr().err == ""


def test_too_few_gpus_for_the_workers(cluster, capsys) -> None:
    cluster.resources = {"CPU": 4.0, "GPU": 1.0}
    with pytest.raises(ConfigError, match="train.use_gpu: 2 workers need 2 GPUs but the Ray cluster has at most 1"):
        use_gpu_for("true", num_workers=2)
    assert use_gpu_for("auto", num_workers=2) is False
    assert "train.use_gpu=auto: 2 workers need 2 GPUs" in capsys.readouterr().err
    assert use_gpu_for("auto", num_workers=1) is True


def test_auto_and_false(cluster) -> None:
    assert use_gpu_for("auto", num_workers=2) is False
    cluster.resources = {"GPU": 2.0}
    assert use_gpu_for("auto", num_workers=2) is True
    assert use_gpu_for("false", num_workers=2) is False


def _train(**kw: Any) -> Any:
    return SimpleNamespace(**{"placement_strategy": "STRICT_SPREAD", "num_workers": 2, "cpus_per_worker": 0.5, **kw})


def _node(cpus: float, alive: bool = True) -> dict[str, Any]:
    return {"Alive": alive, "Resources": {"CPU": cpus}}


def test_strict_spread_needs_a_node_per_worker(cluster) -> None:
    cluster.nodes = [_node(2), _node(2, alive=False), _node(0)]  # one usable node
    with pytest.raises(ConfigError, match="train.placement_strategy: STRICT_SPREAD puts each of the 2 workers"):
        check_placement(_train())
    cluster.nodes = [_node(2), _node(2)]
    check_placement(_train())
    check_placement(_train(placement_strategy="PACK", num_workers=8))  # PACK may share a node
    cluster.nodes = [_node(2)]
    cluster.limits = {"CPU": 100}  # an autoscaler can add nodes
    check_placement(_train())


def test_placement_strategy_reaches_the_scaling_config(cluster, monkeypatch, synthetic_features: Path) -> None:
    import ray.data
    import ray.train.torch

    seen: dict[str, Any] = {}

    class Recorder:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            seen.update(kwargs)

    monkeypatch.setattr(ray.train.torch, "TorchTrainer", Recorder)
    monkeypatch.setattr(ray.data, "read_parquet", lambda *a, **k: "dataset")
    cluster.nodes = [_node(2), _node(2)]
    cfg = load_config(PipelineConfig, REPO / "experiments" / "configs" / "cluster.yaml", [f"train.features={synthetic_features}"])
    trainer.build_trainer(cfg, SimpleNamespace(to_dict=lambda: {}))
    scaling = seen["scaling_config"]
    assert scaling.placement_strategy == "STRICT_SPREAD"
    assert scaling.num_workers == 2 and scaling.use_gpu is False


def test_placement_strategy_default_and_check() -> None:
    assert load_config(PipelineConfig).train.placement_strategy == "PACK"
    with pytest.raises(ConfigError, match="train.placement_strategy: must be one of 'PACK', 'SPREAD'"):
        load_config(PipelineConfig, None, ["train.placement_strategy=EVERYWHERE"])


def test_cluster_config_is_valid() -> None:
    cfg = load_config(PipelineConfig, REPO / "experiments" / "configs" / "cluster.yaml")
    check_config(cfg)
    assert cfg.train.features == cfg.preprocess.output
    assert cfg.train.placement_strategy == "STRICT_SPREAD" and cfg.train.num_workers == 2

"""Bad configs and inputs fail before Ray or MLflow start, with the key or path in the message."""

from pathlib import Path

import pytest
import yaml
from tests.support.scripts import load_script

REPO = Path(__file__).resolve().parents[2]


def _cli():
    return load_script("experiments/train.py")


@pytest.fixture
def config_file(tmp_path: Path, synthetic_features: Path) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(
        yaml.safe_dump(
            {"train": {"features": str(synthetic_features), "storage_path": str(tmp_path / "runs"), "batch_size": 32}}
        )
    )
    return p


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=0.1", "unknown config key train.lrr"),
        ("train.model.num_headz=2", "unknown config key train.model.num_headz"),
        ("train.max_steps=abc", "train.max_steps: expected an integer"),
        ("train.surfaces=search", "train.surfaces: expected a list"),
        ("train.optimizer=sgd", "train.optimizer: must be one of 'adamw' or 'lamb', got 'sgd'"),
        ("train.lr_decay=step", "train.lr_decay: must be one of 'cosine', 'linear' or 'constant', got 'step'"),
        ("train.val_catalog=test", "train.val_catalog: must be one of 'split' or 'all', got 'test'"),
        ("train.model.finetune_text_layer=1", "known keys under train.model: arch, closeup_neighbors, dropout,"),
        ("train.surfaces=[video]", "train.surfaces: unknown surface 'video'"),
        ("train.checkpoint_every=0", "train.checkpoint_every: must be >= 1"),
        ("train.task_quotas={search/bogus: 2.0}", "train.task_quotas.search/bogus: no such task"),
        ("train.batch_size=100000", "fewer than train.batch_size x train.num_workers = 200000"),
        ("train.features=/nonexistent/features", "'/nonexistent/features' does not exist"),
    ],
)
def test_cli_fails_fast_naming_the_key(config_file: Path, override: str, message: str, capsys, monkeypatch, tmp_path) -> None:
    import ray

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/m.db")
    rc = _cli().main(["--config", str(config_file), override])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not ray.is_initialized()
    assert not (tmp_path / "m.db").exists()  # no MLflow run for a run that never started


def test_empty_validation_split_is_reported(config_file: Path, features_without_val: Path, capsys) -> None:
    rc = _cli().main(["--config", str(config_file), f"train.features={features_without_val}"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "split 'val'" in err and "train.validation: false trains without validation" in err


def test_missing_config_file(capsys) -> None:
    assert _cli().main(["--config", "/no/such.yaml"]) == 2
    assert "config file not found: /no/such.yaml" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["demo", "fashion", "shopee"])
def test_shipped_configs_are_valid(name: str) -> None:
    from itemsage.config import PipelineConfig, load_config
    from itemsage.train.trainer import check_config

    cfg = load_config(PipelineConfig, REPO / "experiments" / "configs" / f"{name}.yaml")
    check_config(cfg)
    assert cfg.train.name == name and cfg.train.features == cfg.preprocess.output


def test_relative_paths_are_resolved_before_shipping_to_workers(tmp_path: Path, monkeypatch) -> None:
    # Ray Train workers run in their own working directory.
    from itemsage.config import PipelineConfig, load_config
    from itemsage.train.trainer import run_dir_of, with_absolute_paths

    monkeypatch.chdir(tmp_path)
    cfg = load_config(PipelineConfig, None, ["train.features=f", "train.storage_path=s3://bucket/runs", "train.name=x"])
    out = with_absolute_paths(cfg)
    assert out.train.features == str(tmp_path / "f")
    assert out.train.storage_path == "s3://bucket/runs"
    assert run_dir_of(out) == "s3://bucket/runs/x"
    assert cfg.train.features == "f"  # the caller's config is not modified

"""Every knob of a training run reaches MLflow: the flattened config as params, the file as an artifact."""

from pathlib import Path

from mlflow.tracking import MlflowClient

from itemsage.config import PipelineConfig, flatten, load_config
from itemsage.train.tracking import flat_params
from itemsage.train.trainer import _start_tracking


def test_new_run_logs_every_config_key_and_the_config_file(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/m.db"
    cfg = load_config(PipelineConfig, None, [
        f"train.storage_path={tmp_path / 'runs'}", "train.name=logged",
        "train.lr_decay=linear", "train.val_catalog=all", "train.model.finetune_text_layers=1",
    ])
    run_dir = str(tmp_path / "runs" / "logged")
    tracker, resumed = _start_tracking(cfg, run_dir, uri)
    tracker.end()
    assert not resumed
    params = MlflowClient(uri).get_run(tracker.run_id).data.params
    assert params == flat_params(flatten(cfg))  # every knob, nothing else
    assert params["train.lr_decay"] == "linear" and params["train.val_catalog"] == "all"
    logged = Path(MlflowClient(uri).download_artifacts(tracker.run_id, "config.yaml", str(tmp_path / "dl")))
    assert load_config(PipelineConfig, logged) == cfg

import json
import socket
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from itemsage.train.tracking import Tracker, default_artifact_location, flat_params, resolve_tracking_uri


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_resolve_tracking_uri_pins_relative_sqlite_to_cwd(monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert resolve_tracking_uri() == "http://mlflow:5000"
    assert default_artifact_location(f"sqlite:///{tmp_path}/x.db") == (tmp_path / "mlruns").as_uri()


def test_flat_params_are_bounded_strings() -> None:
    out = flat_params({"a": [1, 2], "b": "x" * 7000, "c": 0.5})
    assert out["a"] == "[1, 2]" and len(out["b"]) == 6000 and out["c"] == "0.5"


def test_logs_and_resumes_the_same_run(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/m.db"
    t = Tracker(uri, "exp", tmp_path / "fb.jsonl", flush_every=2)
    run_id = t.start(run_name="r")
    t.log_params({"train.lr": 0.1})
    for step in range(3):
        t.log_metrics({"train/loss": 1.0 / (step + 1)}, step)
    t.end()
    t2 = Tracker(uri, "exp", tmp_path / "fb.jsonl")
    assert t2.start(run_id=run_id) == run_id
    t2.log_metrics({"train/loss": 0.1}, 3)
    t2.end()
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]
    hist = client.get_metric_history(run_id, "train/loss")
    assert [m.step for m in hist] == [0, 1, 2, 3]
    assert runs[0].data.params["train.lr"] == "0.1"
    assert not (tmp_path / "fb.jsonl").exists()


def test_unreachable_server_warns_once_and_buffers_to_jsonl(tmp_path: Path, capsys) -> None:
    uri = f"http://127.0.0.1:{_closed_port()}"
    fb = tmp_path / "fb.jsonl"
    t = Tracker(uri, "exp", fb, flush_every=1)
    assert t.start(run_name="r") is None
    t.log_params({"a": 1})
    for step in range(3):
        t.log_metrics({"train/loss": float(step)}, step)
    t.end()
    err = capsys.readouterr().err
    assert err.count("WARNING") == 1 and "unreachable" in err
    recs = [json.loads(line) for line in fb.read_text().splitlines()]
    assert [r["kind"] for r in recs] == ["start", "params", "metrics", "metrics", "metrics"]
    assert [r["step"] for r in recs if r["kind"] == "metrics"] == [0, 1, 2]


def test_buffered_calls_are_replayed_once_the_server_answers(tmp_path: Path) -> None:
    fb = tmp_path / "fb.jsonl"
    t = Tracker(f"http://127.0.0.1:{_closed_port()}", "exp", fb, flush_every=1, retry_after_s=0.0)
    t.start(run_name="r")
    t.log_metrics({"train/loss": 2.0}, 1)
    assert not t.online
    # The server "comes back": point the tracker at a working store.
    good = f"sqlite:///{tmp_path}/m.db"
    t.tracking_uri, t._client = good, MlflowClient(good)
    t.log_metrics({"train/loss": 1.0}, 2)
    assert t.online and t.run_id is not None
    hist = MlflowClient(good).get_metric_history(t.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in hist) == [(1, 2.0), (2, 1.0)]
    t._replay()  # already replayed: nothing is sent twice
    assert len(MlflowClient(good).get_metric_history(t.run_id, "train/loss")) == 2


def test_rejected_calls_warn_but_stay_online(tmp_path: Path, capsys) -> None:
    t = Tracker(f"sqlite:///{tmp_path}/m.db", "exp", tmp_path / "fb.jsonl", flush_every=1)
    t.start()
    t.log_metrics({"bad@name": 1.0}, 0)
    t.log_metrics({"good": 1.0}, 1)
    assert t.online
    assert "rejected" in capsys.readouterr().err
    assert not (tmp_path / "fb.jsonl").exists()


def test_disabled_tracker_does_nothing(tmp_path: Path) -> None:
    t = Tracker("http://127.0.0.1:1", "exp", tmp_path / "fb.jsonl", enabled=False)
    assert t.start() is None
    t.log_metrics({"x": 1.0}, 0)
    t.end()
    assert not (tmp_path / "fb.jsonl").exists()


@pytest.mark.parametrize("status", ["FINISHED", "FAILED"])
def test_end_sets_status(tmp_path: Path, status: str) -> None:
    uri = f"sqlite:///{tmp_path}/m.db"
    t = Tracker(uri, "exp", tmp_path / "fb.jsonl")
    run_id = t.start()
    t.end(status)
    assert MlflowClient(uri).get_run(run_id).info.status == status

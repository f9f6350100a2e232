"""An evaluation as an MLflow run: one metric per (split, probe task, method, k), tags to group by.

The quality report (``itemsage.eval.quality``) reads these runs back; the tags say which dataset,
split, configuration and seed a run measured, so runs of one configuration trained with several
seeds can be averaged. Metric names: ``<split>/<probe>/<row>/<method>/recall_at_<k>`` (MLflow
names cannot hold "@"), and ``<split>/<probe>/<row>/n`` for the number of pairs.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path

from itemsage.eval.result import EvalResult
from itemsage.trained.registry import resolve_tracking_uri

DEFAULT_EXPERIMENT = "itemsage-eval"
TAG_PREFIX = "itemsage."
KIND = "evaluation"


def metric_name(split: str, task: str, method: str, k: int) -> str:
    return f"{split}/{task}/{method}/recall_at_{k}"


def evaluation_metrics(result: EvalResult) -> dict[str, float]:
    out: dict[str, float] = {}
    for (method, task), row in result.table.rows.items():
        for k in result.table.ks:
            out[metric_name(result.split, task, method, k)] = float(row[f"recall@{k}"])
        out[f"{result.split}/{task}/n"] = float(row["n"])
    return out


def evaluation_tags(result: EvalResult, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Tags of the run: ``itemsage.<key>`` for what was evaluated and how, plus ``extra`` as given."""
    tags = {
        "kind": KIND,
        "dataset": result.dataset,
        "split": result.split,
        "holdout": result.holdout,
        "split_seed": result.split_seed,
        "baseline_fit": result.baseline_fit,
        **result.identity,
    }
    out = {TAG_PREFIX + k: str(v) for k, v in tags.items()}
    out.update({k: str(v) for k, v in (extra or {}).items()})
    return out


def _artifact_location(tracking_uri: str) -> str | None:
    # As training does (itemsage.train.tracking, a layer above): artifacts of a SQLite store go
    # beside the database, not under ./mlruns of whichever directory the command ran in.
    if tracking_uri.startswith("sqlite:///"):
        db = Path("/" + tracking_uri[len("sqlite:///") :].lstrip("/"))
        return (db.parent / "mlruns").resolve().as_uri()
    return None


def log_evaluation(
    result: EvalResult,
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    tags: Mapping[str, str] | None = None,
) -> str:
    """Log ``result`` as a new finished run of ``experiment`` (created if missing); returns its id.

    The run holds the metrics, the tags, the JSON result (``evaluation.json``) and the markdown
    table (``evaluation.md``) as artifacts.
    """
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment, _artifact_location(uri))
    ident = result.identity
    name = f"eval-{ident.get('config', 'model')}-seed{ident.get('seed', '?')}-{result.split}"
    run = client.create_run(exp_id, run_name=name, tags=evaluation_tags(result, tags))
    run_id = run.info.run_id
    try:
        ts = int(run.info.start_time)
        metrics = [Metric(k, v, ts, 0) for k, v in sorted(evaluation_metrics(result).items())]
        params = [
            Param(k, str(v))
            for k, v in {
                "model_uri": result.model_uri,
                "model_version": result.model_version,
                "features": result.features,
                "catalog": result.catalog,
                "num_items": result.num_items,
                "num_pairs": result.num_pairs,
                "ks": ",".join(map(str, result.table.ks)),
            }.items()
        ]
        for start in range(0, len(metrics), 1000):  # MLflow's limit per log_batch
            client.log_batch(run_id, metrics=metrics[start : start + 1000], params=params if start == 0 else [])
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "evaluation.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
            (Path(d) / "evaluation.md").write_text(result.markdown() + "\n")
            client.log_artifacts(run_id, d)
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


def parse_tags(pairs: list[str] | None) -> dict[str, str]:
    """``["k=v", ...]`` -> ``{k: v}``; a pair without "=" is a ValueError naming it."""
    out = {}
    for p in pairs or []:
        key, sep, value = p.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"tag {p!r} is not KEY=VALUE")
        out[key.strip()] = value
    return out

"""Copies of a trained model with scoring-only settings changed (no training).

Some model settings are read only when scoring, by evaluation, the Python API and Serve, never by
training: a trained model can switch them. A variant is a copy of the bundle with them recorded in
its config, so its evaluations group under that configuration and Serve scores as evaluation did
(``experiments/scoring_variant.py``, ``experiments/hubness_bank.py``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from itemsage.config import TrainConfig, config_label, dump_config
from itemsage.model.factory import build_checks
from itemsage.trained.bundle import load_bundle_config
from itemsage.trained.hubness_bank import attach_hubness_bank
from itemsage.trained.registry import MANIFEST_FILE, register_bundle


def hubness_variant(
    src: str | Path, out_dir: str | Path, weight: float, neighbors: int, features: str | None = None
) -> dict[str, Any]:
    """Copy the bundle ``src`` to ``out_dir`` with ``model.hubness_weight`` / ``hubness_neighbors``
    set in its config (recorded with the model) and the catalog bank attached."""
    if weight <= 0:
        raise ValueError(f"model.hubness_weight {weight}: a hubness-corrected copy needs a weight > 0")
    scoring_variant(src, out_dir, {"hubness_weight": float(weight), "hubness_neighbors": int(neighbors)}, features)
    return dict(json.loads((Path(out_dir) / MANIFEST_FILE).read_text())["hubness_bank"])


# Model settings read only when scoring (evaluation, the Python API, Serve), never by training:
# a trained model can switch them without retraining.
SCORING_FIELDS: tuple[str, ...] = (
    "popularity_debias",
    "hubness_weight",
    "hubness_neighbors",
    "title_blend",
    "closeup_neighbors",
    "home_query",
)


def variant_name(name: str, changes: Mapping[str, Any]) -> str:
    """``amazon_refit_seed3`` + ``{"title_blend": 0.5}`` -> ``amazon_refit_title_blend0.5_seed3``:
    the run name of a variant, its settings before a seed suffix (evaluations of a configuration's
    seeds are grouped under the name without it, :func:`itemsage.config.config_label`)."""
    label = config_label(name)
    return label + "".join(f"_{k}{v}" for k, v in changes.items()) + name[len(label) :]


def scoring_variant(
    src: str | Path, out_dir: str | Path, changes: Mapping[str, Any], features: str | None = None
) -> dict[str, Any]:
    """Copy the bundle ``src`` to ``out_dir`` with the scoring-only model settings ``changes``
    (:data:`SCORING_FIELDS`, e.g. ``{"title_blend": 0.5}``) recorded in its config; with a hubness
    weight the catalog bank is embedded again when the hubness settings change (from ``features``,
    default the model's training features). Returns the new model config's changed fields."""
    unknown = sorted(set(changes) - set(SCORING_FIELDS))
    if unknown:
        raise ValueError(
            f"model.{unknown[0]} is not a scoring-only setting (retrain to change it); "
            f"a variant can set {', '.join(SCORING_FIELDS)}"
        )
    s, d = Path(src), Path(out_dir)
    if d.exists():
        raise FileExistsError(f"{d} exists; choose a new directory for the variant bundle")
    cfg = load_bundle_config(s)
    before = cfg.train.model
    model = before.replace(**dict(changes))
    build_checks(model)
    shutil.copytree(s, d)
    dump_config(
        cfg.replace(train=cfg.train.replace(model=model, name=variant_name(cfg.train.name, changes))), d / "config.yaml"
    )
    hubness = (model.hubness_weight, model.hubness_neighbors)
    if model.hubness_weight > 0 and (
        features is not None or hubness != (before.hubness_weight, before.hubness_neighbors)
    ):
        attach_hubness_bank(d, features)
    manifest = json.loads((d / MANIFEST_FILE).read_text())
    manifest["embedding_dim"] = model.served_dim()
    (d / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return {k: getattr(model, k) for k in changes}


def register_variant(
    tracking_uri: str, source_model: str, bundle_dir: str | Path, settings: Mapping[str, Any], run_name: str
) -> str:
    """Log the variant ``bundle_dir`` in a new run ``run_name`` of the training experiment
    (``itemsage``), tagged with its source model and its ``settings``, and register it as a new
    version; returns the version."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(TrainConfig().mlflow_experiment)
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.set_tags({"itemsage.source_model": source_model, **{f"itemsage.{k}": v for k, v in settings.items()}})
        return register_bundle(tracking_uri, run.info.run_id, bundle_dir)

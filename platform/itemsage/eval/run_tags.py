"""Which training configuration and seed a model came from, so evaluations can be grouped.

Runs of one configuration trained with different ``train.seed`` values share a
:func:`config_hash` (the configuration without its seed, run name and paths) and a
:func:`config_label` (``train.name`` without a ``_seed<N>`` suffix, the convention of
``experiments/train.py ... train.seed=N train.name=<name>_seed<N>``); the quality report
averages over seeds within a group.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from itemsage.config import config_label, to_dict
from itemsage.trained.loaded import TrainedModel

__all__ = ["config_hash", "config_label", "run_identity"]

# Keys that name a run or where its files are, not what is trained: two seeds of one configuration
# differ in these and still belong together.
_RUN_KEYS = {
    "train": ("seed", "name", "storage_path", "features", "mlflow_experiment", "register_model"),
    "preprocess": ("catalog", "output", "engagements"),
}


def config_hash(config: dict[str, Any]) -> str:
    """12 hex digits of the configuration without its run keys (:data:`_RUN_KEYS`)."""
    c = json.loads(json.dumps(config, default=str))
    for section, keys in _RUN_KEYS.items():
        for k in keys:
            (c.get(section) or {}).pop(k, None)
    c.pop("serve", None)
    c.pop("index", None)
    return hashlib.sha256(json.dumps(c, sort_keys=True).encode()).hexdigest()[:12]


def run_identity(tm: TrainedModel) -> dict[str, str]:
    """``{config, config_hash, seed, train_name, model_uri, model_version}`` of a loaded model."""
    cfg = tm.config
    return {
        "config": config_label(cfg.train.name),
        "config_hash": config_hash(to_dict(cfg)),
        "seed": str(cfg.train.seed),
        "train_name": cfg.train.name,
        "model_uri": tm.uri,
        "model_version": tm.version,
    }

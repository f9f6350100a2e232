"""A trained model, loaded: the one door between training's output and everything that reads it.

* :func:`load_trained` -> :class:`TrainedModel` (item tower, every query tower incl. the
  fine-tuned search-query encoder, preprocessing settings, manifest, config, version), used by
  the Python API, offline evaluation, batch embedding and Serve;
* :mod:`~itemsage.trained.registry`: references (MLflow URIs, directories) pinned to a version
  (:class:`ModelRef`), the MLflow tracking URI, registering a bundle;
* :mod:`~itemsage.trained.bundle` and :mod:`~itemsage.trained.checkpoint`: the file formats
  training writes and loading reads;
* :mod:`~itemsage.trained.queries`: the one search-query text path.

Importing this package does not import torch (Serve's Ingress resolves references without it);
the torch-backed names load on first access.
"""

from __future__ import annotations

from typing import Any

from itemsage.trained.registry import (
    REGISTERED_MODEL,
    ModelNotFoundError,
    ModelRef,
    register_bundle,
    resolve_model_dir,
    resolve_model_ref,
    resolve_tracking_uri,
)

_LAZY = {
    "TrainedModel": "itemsage.trained.loaded",
    "load_trained": "itemsage.trained.loaded",
    "pick_device": "itemsage.trained.loaded",
    "embed_search_queries": "itemsage.trained.queries",
    "search_query_features": "itemsage.trained.queries",
    "frozen_text_encoder": "itemsage.trained.queries",
    "read_manifest": "itemsage.trained.bundle",
    "load_manifest": "itemsage.trained.bundle",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'itemsage.trained' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "REGISTERED_MODEL",
    "ModelNotFoundError",
    "ModelRef",
    "TrainedModel",
    "embed_search_queries",
    "frozen_text_encoder",
    "load_manifest",
    "load_trained",
    "pick_device",
    "read_manifest",
    "register_bundle",
    "resolve_model_dir",
    "resolve_model_ref",
    "resolve_tracking_uri",
    "search_query_features",
]

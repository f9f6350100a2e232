"""Version an index with the model that produced its embeddings, in MLflow.

An index is only valid for the model version whose item tower embedded the catalog: a query from
version 3 against items embedded by version 2 retrieves garbage without any error. So the index
is stored as artifacts of the very run that registered the model version (``index/v<version>``),
and the model version gets a tag pointing at it. Serving resolves "model X version V" to exactly
one index and ``load_index(..., expected_model_version=V)`` double-checks the pairing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from itemsage.index.base import IndexMismatchError
from itemsage.index.storage import read_metadata, verify_files

# Model-version tag whose value is the index's artifact URI (runs:/<run_id>/index/v<version>).
INDEX_TAG = "itemsage.index_uri"


def index_artifact_path(model_version: str | int) -> str:
    return f"index/v{model_version}"


def _client(tracking_uri: str | None) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _model_version(client: Any, model_name: str, model_version: str | int) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(model_name, str(model_version))
    except MlflowException as e:
        raise LookupError(f"model {model_name!r} version {model_version} is not registered: {e.message}") from e


def _source_run_id(client: Any, mv: Any) -> str:
    """The run that produced a model version (MLflow 3 may link it via a LoggedModel instead)."""
    if mv.run_id:
        return str(mv.run_id)
    model_id = getattr(mv, "model_id", None)
    if model_id:
        source = client.get_logged_model(model_id).source_run_id
        if source:
            return str(source)
    raise LookupError(
        f"model {mv.name!r} version {mv.version} has no source run to attach an index to; "
        "register it from a run (mlflow.<flavor>.log_model inside a run)"
    )


def log_index(
    index_dir: str | os.PathLike[str],
    model_name: str,
    model_version: str | int,
    tracking_uri: str | None = None,
) -> str:
    """Upload a saved index to the registered model version's run; returns its artifact URI.

    Refuses an index whose metadata names another model or version, or whose files fail their
    checksums, so a wrong or damaged index is never published.
    """
    index_dir = Path(index_dir)
    meta = read_metadata(index_dir)
    if meta.get("model_version") is not None and str(meta["model_version"]) != str(model_version):
        raise IndexMismatchError(
            f"index at {index_dir} was built from model version {meta['model_version']}, "
            f"not {model_version}; it cannot be logged for version {model_version}"
        )
    if meta.get("model_name") is not None and meta["model_name"] != model_name:
        raise IndexMismatchError(
            f"index at {index_dir} was built from model {meta['model_name']!r}, not {model_name!r}"
        )
    verify_files(index_dir, meta)
    client = _client(tracking_uri)
    mv = _model_version(client, model_name, model_version)
    run_id = _source_run_id(client, mv)
    path = index_artifact_path(mv.version)
    client.log_artifacts(run_id, str(index_dir), artifact_path=path)
    uri = f"runs:/{run_id}/{path}"
    client.set_model_version_tag(model_name, str(mv.version), INDEX_TAG, uri)
    return uri


def download_index(
    model_name: str,
    model_version: str | int,
    dst: str | os.PathLike[str],
    tracking_uri: str | None = None,
) -> Path:
    """Download the index logged for a model version into ``dst``; returns the index directory.

    Pass the result to ``load_index(path, expected_model_version=model_version)``.
    """
    import mlflow.artifacts

    client = _client(tracking_uri)
    mv = _model_version(client, model_name, model_version)
    uri = (mv.tags or {}).get(INDEX_TAG)
    if not uri:
        raise LookupError(
            f"model {model_name!r} version {mv.version} has no index (tag {INDEX_TAG} is not set); "
            "build one and call log_index first"
        )
    Path(dst).mkdir(parents=True, exist_ok=True)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst), tracking_uri=tracking_uri))
    meta = read_metadata(local)
    if meta.get("model_version") is not None and str(meta["model_version"]) != str(mv.version):
        raise IndexMismatchError(
            f"index logged for {model_name!r} version {mv.version} says it was built from version "
            f"{meta['model_version']}"
        )
    return local

"""Where trained models are found: MLflow's tracking URI, registry references, local directories.

A reference is resolved in two steps. :func:`resolve_model_ref` pins it to one version (so a later
``latest`` cannot silently change what a replica serves), :func:`resolve_model_dir` turns it into a
local bundle or checkpoint directory (downloading MLflow artifacts). :func:`register_bundle` is the
write side: a bundle logged and registered as a new version of the registered model.

No torch here: Serve's Ingress and Retriever resolve references without loading a model.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from itemsage.trained.checkpoint import STATE_FILE, latest_checkpoint_dir

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
REGISTERED_MODEL = "itemsage"
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"

_REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>[^/]+)|@(?P<alias>[^/]+))$")


class ModelNotFoundError(FileNotFoundError):
    """A model URI or directory does not exist or is not an ItemSage model."""


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``; local paths made absolute.

    Ray workers do not share the driver's working directory, so a relative ``sqlite:///mlflow.db``
    must be pinned to the driver's cwd before it is shipped to them.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    if "://" not in uri:  # a bare directory: MLflow's file store
        return str(Path(uri).resolve())
    return uri


@dataclass(frozen=True)
class ModelRef:
    """A model reference resolved to a concrete version (``models:/itemsage/latest`` -> ``"7"``)."""

    uri: str
    name: str | None
    version: str
    # True when ``version`` is the registry's own number, so an index's recorded model version
    # can be checked against it; False for a content hash of a local bundle.
    registered: bool


def resolve_model_ref(uri: str, version_override: str | None = None) -> ModelRef:
    """Pin ``uri`` to a concrete version.

    Registry URIs (``models:/name/3``, ``models:/name/latest``, ``models:/name@alias``) get the
    registry's version number. Other URIs (a bundle or checkpoint directory, ``runs:/``) get
    ``version_override`` or, failing that, a hash of the bundle's manifest and weights: equal
    files, equal version. Raises :class:`ModelNotFoundError` naming ``uri`` when there is no such
    model.
    """
    try:
        return _resolve_ref(str(uri), version_override)
    except ModelNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - MLflow raises several types for "no such alias"
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelNotFoundError(f"model {uri!r} not found ({first})") from e


def _resolve_ref(uri: str, version_override: str | None) -> ModelRef:
    m = _REGISTRY_URI.match(uri)
    if m is None:
        if version_override:
            return ModelRef(uri, None, str(version_override), registered=False)
        return ModelRef(uri, None, _content_version(uri), registered=False)
    name, version, alias = m.group("name"), m.group("version"), m.group("alias")
    if version is not None and version.isdigit():
        return ModelRef(uri, name, version, registered=True)
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=resolve_tracking_uri())
    mlflow.set_tracking_uri(resolve_tracking_uri())
    if alias is not None:
        resolved = str(client.get_model_version_by_alias(name, alias).version)
    elif version == "latest":
        versions = client.search_model_versions(f"name='{name}'")
        if not versions:
            raise ModelNotFoundError(f"model {uri!r} not found: no versions of registered model {name!r}")
        resolved = str(max(int(v.version) for v in versions))
    else:  # models:/name/<stage-or-alias>
        resolved = str(client.get_model_version_by_alias(name, version).version)
    return ModelRef(f"models:/{name}/{resolved}", name, resolved, registered=True)


def _content_version(uri: str) -> str:
    d = resolve_model_dir(uri)
    h = hashlib.sha256((d / MANIFEST_FILE).read_bytes())
    for name in (WEIGHTS_FILE, STATE_FILE):
        if (d / name).is_file():
            h.update(_file_sha256(d / name).encode())
            break
    return "sha-" + h.hexdigest()[:12]


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve_model_dir(uri_or_dir: str | Path) -> Path:
    """A local bundle/checkpoint directory for a path, a Ray run dir or an MLflow model URI.

    MLflow URIs are downloaded (or, for local artifact stores, used in place) with the tracking URI
    of :func:`resolve_tracking_uri`. A Ray Train run directory gives its highest-step checkpoint.
    """
    ref = str(uri_or_dir)
    if ref.startswith(("models:/", "runs:/")) or ("://" in ref and not ref.startswith("file://")):
        import mlflow

        mlflow.set_tracking_uri(resolve_tracking_uri())
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref))
        except Exception as e:  # noqa: BLE001 - MLflow raises several types for "not there"
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ModelNotFoundError(f"model {ref!r} not found in MLflow ({first})") from e
    else:
        local = Path(ref.removeprefix("file://"))
        if not local.exists():
            raise ModelNotFoundError(f"model directory {ref!r} does not exist")
    if not (local / MANIFEST_FILE).is_file():
        latest = latest_checkpoint_dir(local) if local.is_dir() else None
        if latest is None:
            raise ModelNotFoundError(
                f"{ref!r} is not an ItemSage model: no {MANIFEST_FILE} (expected a bundle, a training "
                f"checkpoint, a Ray Train run directory, or an MLflow models:/ or runs:/ URI)"
            )
        local = latest
    return local


def register_bundle(tracking_uri: str, run_id: str, bundle_dir: str | Path, name: str = REGISTERED_MODEL) -> str:
    """Log ``bundle_dir`` as the run's ``model`` artifact and register it as a new version of ``name``.

    MLflow 3's ``register_model`` only accepts flavour-logged models; a bundle of plain files is
    registered with the client API instead, its source pointing at the run's artifact. Returns the
    new version number.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    client.log_artifacts(run_id, str(bundle_dir), "model")
    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if "already exists" not in str(e).lower() and "RESOURCE_ALREADY_EXISTS" not in str(e):
            raise
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/model"
    mv = client.create_model_version(name, source=source, run_id=run_id)
    client.set_tag(run_id, "itemsage.registered_version", mv.version)
    return str(mv.version)

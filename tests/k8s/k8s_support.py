"""Helpers for the manifest tests: the rendered overlays, Ray pod walkers, schema validators.

Nothing here needs a cluster, Docker, kubectl or kustomize: the overlays are rendered by
itemsage.k8s_manifests (the kustomize subset they use) and built-in kinds are validated against the
Kubernetes JSON schemas that kubernetes-validate ships.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from itemsage.k8s_manifests import render_kustomization

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAYS = ("cpu", "gpu")
RAY_KINDS = ("RayCluster", "RayJob", "RayService")
# The oldest Kubernetes minor these manifests claim (k8s/README.md) and the newest schema shipped.
K8S_VERSIONS = ("1.30.0", "latest")


@functools.cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(render_kustomization(K8S / "overlays" / overlay))


def find(docs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind}/{name}, found {len(hits)}"
    return hits[0]


def cluster_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The RayClusterSpec inside a RayCluster, RayJob or RayService."""
    spec = doc["spec"]
    return {"RayCluster": spec, "RayJob": spec.get("rayClusterSpec"), "RayService": spec.get("rayClusterConfig")}.get(doc["kind"])


def ray_groups(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(group name, group spec) of the head ("head") and of every worker group."""
    cs = cluster_spec(doc)
    if cs is None:
        return
    yield "head", cs["headGroupSpec"]
    for g in cs.get("workerGroupSpecs") or []:
        yield g["groupName"], g


def pod_templates(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod template) of every pod an object creates (Ray pods, submitters, workloads)."""
    kind, name = doc["kind"], doc["metadata"]["name"]
    if kind in RAY_KINDS:
        for group, spec in ray_groups(doc):
            yield f"{kind}/{name}:{group}", spec["template"]
        if kind == "RayJob" and doc["spec"].get("submitterPodTemplate"):
            yield f"{kind}/{name}:submitter", doc["spec"]["submitterPodTemplate"]
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        yield f"{kind}/{name}", doc["spec"]["template"]


def gpus(container: dict[str, Any], section: str) -> int:
    return int((container.get("resources") or {}).get(section, {}).get("nvidia.com/gpu", 0))


def cpus(container: dict[str, Any]) -> float:
    value = str((container.get("resources") or {}).get("limits", {}).get("cpu", "0"))
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


# ------------------------------------------------------------------------------ schemas


def _schema_dir(version: str) -> Any:
    import kubernetes_validate.utils as kv

    if version == "latest":
        version = kv.latest_version()
    return importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{version}-local-strict"


@functools.cache
def schema_validator(version: str, schema_file: str) -> Any:
    """A strict (no unknown fields) validator for one schema file, e.g. ``podtemplatespec-v1``."""
    import jsonschema
    from referencing import Registry, Resource

    base = _schema_dir(version)
    defs = json.loads((base / "_definitions.json").read_text())
    schema = json.loads((base / f"{schema_file}.json").read_text())
    registry = Registry().with_resources(
        [(defs["$id"], Resource.from_contents(defs)), (schema["$id"], Resource.from_contents(schema))]
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


def schema_errors(obj: Any, schema_file: str) -> list[str]:
    out = []
    for version in K8S_VERSIONS:
        for e in schema_validator(version, schema_file).iter_errors(obj):
            out.append(f"k8s {version} {schema_file} at /{'/'.join(map(str, e.absolute_path))}: {e.message}")
    return out

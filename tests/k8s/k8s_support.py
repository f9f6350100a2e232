"""Helpers for the manifest tests: the rendered overlays, Ray pod walkers, schema validators.

The overlays are rendered by the real ``kubectl kustomize`` (tests/support/k8s.py); without
kubectl the tests that need them skip and say why. Built-in kinds are validated with
kubernetes-validate (strict: unknown fields fail) against the Kubernetes versions below; the KubeRay
objects against k8s/schemas/kuberay-v1.6.2.schema.yaml, whose embedded Kubernetes types (pod
templates, Services, security contexts) resolve to those same strict Kubernetes schemas.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

# tests/support (the harness shared with the end-to-end tests) is importable as `support`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support.k8s import kubectl_missing, kustomize  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAYS = ("cpu", "gpu")
RAY_KINDS = ("RayCluster", "RayJob", "RayService")

def _newest_kubernetes() -> str:
    from kubernetes_validate.utils import latest_version

    return str(latest_version())


# The oldest Kubernetes minor k8s/README.md claims, and the newest the installed kubernetes-validate
# ships schemas for (1.37.0 with kubernetes-validate 1.37).
K8S_VERSIONS = ("1.30.0", _newest_kubernetes())
KUBERAY_SCHEMA = K8S / "schemas" / "kuberay-v1.6.2.schema.yaml"


@functools.cache
def _render(directory: Path) -> tuple[dict[str, Any], ...]:
    return tuple(kustomize(directory))


def render(overlay: str) -> tuple[dict[str, Any], ...]:
    """``kubectl kustomize k8s/overlays/<overlay>`` (or ``base``), as objects; skips without kubectl."""
    why = kubectl_missing()
    if why:
        pytest.skip(why)
    directory = K8S / "base" if overlay == "base" else K8S / "overlays" / overlay
    return _render(directory)


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


def kubernetes_errors(doc: dict[str, Any]) -> list[str]:
    """kubernetes-validate (strict) errors of a built-in object, for every version in K8S_VERSIONS."""
    import kubernetes_validate

    out = []
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = "/".join(map(str, e.absolute_path))
            out.append(f"k8s {version} {doc['kind']}/{doc['metadata'].get('name')} at /{path}: {e.message}")
    return out


def _k8s_definitions(version: str) -> dict[str, Any]:
    base = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{version}-local-strict"
    return json.loads((base / "_definitions.json").read_text())


@functools.cache
def kuberay_validator(version: str) -> Any:
    """The KubeRay schema, its Kubernetes types resolved against Kubernetes ``version`` (strict)."""
    import jsonschema
    from referencing import Registry, Resource

    schema = yaml.safe_load(KUBERAY_SCHEMA.read_text())
    defs = _k8s_definitions(version)
    registry = Registry().with_resources([(defs["$id"], Resource.from_contents(defs)),
                                          (schema["$id"], Resource.from_contents(schema))])
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=registry)


def kuberay_errors(doc: dict[str, Any]) -> list[str]:
    """Schema errors of a RayCluster/RayJob/RayService, for every version in K8S_VERSIONS."""
    out = []
    for version in K8S_VERSIONS:
        for e in kuberay_validator(version).iter_errors(doc):
            # A failing `allOf`/`if` reports its innermost causes, which name the field.
            for leaf in _leaves(e):
                out.append(f"k8s {version} {doc['kind']}/{doc['metadata'].get('name')} "
                           f"at /{'/'.join(map(str, leaf.absolute_path))}: {leaf.message}")
    return out


def _leaves(error: Any) -> Iterator[Any]:
    if not error.context:
        yield error
    for sub in error.context or ():
        yield from _leaves(sub)

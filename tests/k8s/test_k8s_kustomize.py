"""The kustomize subset of itemsage.k8s_manifests: exactly what the overlays use, and refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from itemsage.k8s_manifests import ManifestError, apply_json_patch, render_kustomization, set_image, split_image

RAYCLUSTER = {
    "apiVersion": "ray.io/v1",
    "kind": "RayCluster",
    "metadata": {"name": "rc"},
    "spec": {
        "headGroupSpec": {"template": {"spec": {"containers": [{"name": "h", "image": "app:1"}]}}},
        "workerGroupSpecs": [
            {"groupName": "cpu", "template": {"spec": {"containers": [{"name": "w", "image": "app:1"}]}}},
            {"groupName": "gpu", "template": {"spec": {"initContainers": [{"name": "i", "image": "app-gpu:1"}],
                                                       "containers": [{"name": "w", "image": "app-gpu:1"}]}}},
        ],
    },
}


def write(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))


def test_json_patch_operations() -> None:
    doc = yaml.safe_load(yaml.safe_dump(RAYCLUSTER))
    apply_json_patch(
        doc,
        [
            {"op": "test", "path": "/spec/workerGroupSpecs/1/groupName", "value": "gpu"},
            {"op": "remove", "path": "/spec/workerGroupSpecs/1"},
            {"op": "replace", "path": "/spec/workerGroupSpecs/0/groupName", "value": "cpu2"},
            {"op": "add", "path": "/spec/rayVersion", "value": "2.60.0"},
            {"op": "add", "path": "/spec/workerGroupSpecs/-", "value": {"groupName": "last"}},
            {"op": "add", "path": "/spec/workerGroupSpecs/0", "value": {"groupName": "first"}},
            {"op": "add", "path": "/metadata/labels", "value": {"a/b": "x"}},
            {"op": "replace", "path": "/metadata/labels/a~1b", "value": "y"},
        ],
    )
    assert [g["groupName"] for g in doc["spec"]["workerGroupSpecs"]] == ["first", "cpu2", "last"]
    assert doc["spec"]["rayVersion"] == "2.60.0"
    assert doc["metadata"]["labels"] == {"a/b": "y"}


@pytest.mark.parametrize(
    "op",
    [
        {"op": "test", "path": "/spec/workerGroupSpecs/1/groupName", "value": "cpu"},  # test fails
        {"op": "remove", "path": "/spec/workerGroupSpecs/5"},  # index out of range
        {"op": "replace", "path": "/spec/missing", "value": 1},  # replace needs an existing key
        {"op": "remove", "path": "/nope/x"},  # parent missing
        {"op": "move", "from": "/a", "path": "/b"},  # unsupported op
        {"op": "add", "path": "spec/x", "value": 1},  # not a JSON pointer
    ],
)
def test_json_patch_errors(op: dict) -> None:
    doc = yaml.safe_load(yaml.safe_dump(RAYCLUSTER))
    with pytest.raises(ManifestError):
        apply_json_patch(doc, [op])


def test_split_image() -> None:
    assert split_image("app:1") == ("app", "1", None)
    assert split_image("registry:5000/team/app") == ("registry:5000/team/app", None, None)
    assert split_image("registry:5000/app:2@sha256:ab") == ("registry:5000/app", "2", "sha256:ab")


def test_images_reach_nested_ray_pod_templates() -> None:
    docs = [yaml.safe_load(yaml.safe_dump(RAYCLUSTER))]
    set_image(docs, {"name": "app-gpu", "newName": "reg.example.com/app-gpu", "newTag": "2"})
    set_image(docs, {"name": "app", "newTag": "9"})
    spec = docs[0]["spec"]
    assert spec["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] == "app:9"
    gpu = spec["workerGroupSpecs"][1]["template"]["spec"]
    assert gpu["containers"][0]["image"] == "reg.example.com/app-gpu:2"
    assert gpu["initContainers"][0]["image"] == "reg.example.com/app-gpu:2"
    set_image(docs, {"name": "app", "digest": "sha256:ff"})
    assert spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["image"] == "app@sha256:ff"


def test_render_resources_namespace_patches_images(tmp_path: Path) -> None:
    write(tmp_path / "base" / "rc.yaml", RAYCLUSTER)
    write(tmp_path / "base" / "ns.yaml", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "old"}})
    write(tmp_path / "base" / "kustomization.yaml", {"namespace": "team", "resources": ["ns.yaml", "rc.yaml"]})
    write(tmp_path / "ov" / "drop-gpu.yaml", [{"op": "remove", "path": "/spec/workerGroupSpecs/1"}])
    write(
        tmp_path / "ov" / "kustomization.yaml",
        {
            "resources": ["../base"],
            "patches": [
                {"path": "drop-gpu.yaml", "target": {"group": "ray.io", "version": "v1", "kind": "RayCluster", "name": "rc"}},
                {"patch": "- {op: add, path: /spec/rayVersion, value: '2.60.0'}", "target": {"kind": "RayCluster"}},
            ],
            "images": [{"name": "app", "newName": "reg/app"}],
        },
    )
    ns, rc = render_kustomization(tmp_path / "ov")
    assert ns["metadata"] == {"name": "team"}  # kustomize renames the Namespace object too
    assert rc["metadata"]["namespace"] == "team"
    assert [g["groupName"] for g in rc["spec"]["workerGroupSpecs"]] == ["cpu"]
    assert rc["spec"]["rayVersion"] == "2.60.0"
    assert rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] == "reg/app:1"


@pytest.mark.parametrize(
    "kustomization, why",
    [
        ({"resources": ["rc.yaml"], "commonLabels": {"a": "b"}}, "unsupported field"),
        ({"resources": ["missing.yaml"]}, "not found"),
        ({"resources": ["rc.yaml", "rc.yaml"]}, "duplicate"),
        ({"resources": ["rc.yaml"], "patches": [{"patch": "spec: {rayVersion: x}", "target": {"kind": "RayCluster"}}]},
         "JSON 6902"),
        ({"resources": ["rc.yaml"], "patches": [{"patch": "[]", "target": {"kind": "RayJob"}}]}, "matches no resource"),
        ({"resources": ["rc.yaml"], "patches": [{"patch": "[]", "target": {"labelSelector": "a=b"}}]}, "not supported"),
        ({"resources": ["rc.yaml"], "patches": [{"path": "nope.yaml", "target": {"kind": "RayCluster"}}]}, "not found"),
    ],
)
def test_render_refuses_what_it_does_not_implement(tmp_path: Path, kustomization: dict, why: str) -> None:
    write(tmp_path / "rc.yaml", RAYCLUSTER)
    write(tmp_path / "kustomization.yaml", kustomization)
    with pytest.raises(ManifestError, match=why):
        render_kustomization(tmp_path)


def test_render_refuses_role_bindings(tmp_path: Path) -> None:
    # kustomize rewrites the subjects' namespaces of these; the subset does not, so it refuses them.
    write(tmp_path / "rb.yaml", {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "x"}})
    write(tmp_path / "kustomization.yaml", {"resources": ["rb.yaml"], "namespace": "n"})
    with pytest.raises(ManifestError, match="RoleBinding"):
        render_kustomization(tmp_path)

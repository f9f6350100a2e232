"""serveConfigV2: generated from deployments/serve_config.yaml + k8s/serve-values.yaml, never drifting.

tests/support/k8s.py writes the two flavours (k8s/base/serve-config.yaml, GPU;
k8s/overlays/cpu/serve-config.yaml, CPU); kustomize copies each into the RayService.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_support import REPO, cluster_spec, find, gpus, render
from support.k8s import (
    SERVE_CONFIG,
    SERVE_CONFIG_FILES,
    SERVE_VALUES,
    VERSION_KEYS,
    ServeConfigError,
    cluster_serve_config,
    drifted,
    main,
    serve_config_text,
)

SOURCE = {
    "proxy_location": "EveryNode",
    "http_options": {"host": "127.0.0.1", "port": 8000},
    "applications": [
        {
            "name": "itemsage",
            "route_prefix": "/",
            "import_path": "deployments.app:build_app",
            "runtime_env": {"working_dir": ".", "env_vars": {"A": "1"}},
            "args": {"serve": {"max_k": 100}},
            "deployments": [
                {"name": "Ingress", "num_replicas": 1, "user_config": {"unrelated": 1}},
                {"name": "Retriever", "num_replicas": 2,
                 "user_config": {"model_uri": "artifacts/model", "index_uri": "artifacts/index", "features": "artifacts/f"}},
                {"name": "QueryEncoder", "ray_actor_options": {"num_cpus": 1, "num_gpus": 0.5},
                 "user_config": {"model_uri": "artifacts/model", "max_batch_size": 16}},
            ],
        }
    ],
}
VALUES = {
    "http_options": {"host": "0.0.0.0"},
    "version": {"model_uri": "models:/itemsage/3", "index_uri": "models:/itemsage/3", "features": "/mnt/f"},
    "gpus": {"Retriever": 1},
}


def deployments(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in cfg["applications"][0]["deployments"]}


def test_cluster_serve_config_gpu_flavour() -> None:
    cfg = cluster_serve_config(SOURCE, VALUES, "gpu")
    assert cfg["http_options"] == {"host": "0.0.0.0", "port": 8000}
    app = cfg["applications"][0]
    assert app["runtime_env"] == {"env_vars": {"A": "1"}}  # local working_dir dropped
    assert app["args"] == {"serve": {"max_k": 100}}  # no version keys there: untouched
    dep = deployments(cfg)
    assert dep["Retriever"]["user_config"] == {"model_uri": "models:/itemsage/3", "index_uri": "models:/itemsage/3",
                                               "features": "/mnt/f"}
    assert dep["QueryEncoder"]["user_config"]["max_batch_size"] == 16  # other knobs kept
    assert dep["QueryEncoder"]["user_config"]["model_uri"] == "models:/itemsage/3"
    assert dep["Ingress"]["user_config"] == {"unrelated": 1}
    assert dep["Retriever"]["ray_actor_options"] == {"num_gpus": 1}
    assert dep["QueryEncoder"]["ray_actor_options"] == {"num_cpus": 1}  # GPUs only where the values say
    assert SOURCE["http_options"]["host"] == "127.0.0.1"  # the source is not mutated


def test_proxy_location_from_the_values() -> None:
    assert "proxy_location" not in {**VALUES}
    assert cluster_serve_config(SOURCE, VALUES, "cpu")["proxy_location"] == "EveryNode"  # the source's
    cfg = cluster_serve_config({**SOURCE, "proxy_location": "HeadOnly"}, {**VALUES, "proxy_location": "EveryNode"}, "cpu")
    assert cfg["proxy_location"] == "EveryNode"


def test_no_yaml_aliases_in_the_output(tmp_path: Path) -> None:
    """A source that shares one user_config through a YAML anchor still yields plain YAML."""
    (tmp_path / "deployments").mkdir()
    (tmp_path / "k8s").mkdir()
    (tmp_path / SERVE_CONFIG).write_text(
        "applications:\n- name: a\n  import_path: deployments.app:build_app\n  deployments:\n"
        "  - name: Retriever\n    user_config: &v {model_uri: x, index_uri: y}\n"
        "  - name: QueryEncoder\n    user_config: *v\n"
    )
    (tmp_path / SERVE_VALUES).write_text("version: {model_uri: models:/m/1}\n")
    out = serve_config_text(tmp_path, "cpu")
    assert "&" not in out and "*" not in out
    deps = deployments(yaml.safe_load(out))
    assert deps["QueryEncoder"]["user_config"] == {"model_uri": "models:/m/1", "index_uri": "y"}


def test_cluster_serve_config_cpu_flavour_has_no_gpus() -> None:
    cfg = cluster_serve_config(SOURCE, VALUES, "cpu")
    assert "num_gpus" not in yaml.safe_dump(cfg)
    assert "ray_actor_options" not in deployments(cfg)["Retriever"]


def test_version_goes_into_app_args_too() -> None:
    src = yaml.safe_load(yaml.safe_dump(SOURCE))
    src["applications"][0]["args"] = {"model_uri": "artifacts/model", "index_uri": "artifacts/index"}
    cfg = cluster_serve_config(src, VALUES, "cpu")
    assert cfg["applications"][0]["args"]["model_uri"] == "models:/itemsage/3"


@pytest.mark.parametrize(
    "values, why",
    [
        ({**VALUES, "replicas": 3}, "unknown key"),
        ({**VALUES, "version": {"model": "x"}}, "unknown key"),
        ({**VALUES, "gpus": {"Nope": 1}}, "does not list"),
    ],
)
def test_cluster_serve_config_rejects_bad_values(values: dict, why: str) -> None:
    with pytest.raises(ServeConfigError, match=why):
        cluster_serve_config(SOURCE, values, "gpu")


def test_cluster_serve_config_needs_a_place_for_the_version() -> None:
    src = yaml.safe_load(yaml.safe_dump(SOURCE))
    for d in src["applications"][0]["deployments"]:
        d.pop("user_config")
    with pytest.raises(ServeConfigError, match="names the served version nowhere"):
        cluster_serve_config(src, VALUES, "gpu")


def test_version_keys_match_the_serving_spec() -> None:
    """VERSION_KEYS must stay the keys ServingSpec accepts (read from the source: no torch import)."""
    tree = ast.parse((REPO / "platform/itemsage/serve/core.py").read_text())
    spec = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ServingSpec")
    keys = next(n for n in spec.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "KEYS")
    assert tuple(ast.literal_eval(keys.value)) == VERSION_KEYS


# ------------------------------------------------------------------------------ the real files

def test_generated_files_are_up_to_date() -> None:
    assert (REPO / SERVE_CONFIG).is_file() and (REPO / SERVE_VALUES).is_file()
    assert drifted(REPO) == [], "run: python tests/support/k8s.py generate"


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_rendered_serve_config_is_the_generators_output(overlay: str) -> None:
    """kustomize puts exactly the generated file of the overlay's flavour into serveConfigV2."""
    svc = find(render(overlay), "RayService", "itemsage")
    assert svc["spec"]["serveConfigV2"] == serve_config_text(REPO, overlay)
    assert svc["spec"]["serveConfigV2"] == (REPO / SERVE_CONFIG_FILES[overlay]).read_text()


def test_generated_serve_configs_are_valid_ray_serve_configs() -> None:
    from ray.serve.schema import ServeDeploySchema

    for overlay in ("cpu", "gpu"):
        cfg = yaml.safe_load(find(render(overlay), "RayService", "itemsage")["spec"]["serveConfigV2"])
        ServeDeploySchema.model_validate(cfg)  # raises on any invalid field
        assert cfg["http_options"]["host"] == "0.0.0.0"
        assert cfg["proxy_location"] == "EveryNode"  # worker proxies keep serving while the head restarts
        head = cluster_spec(find(render(overlay), "RayService", "itemsage"))["headGroupSpec"]
        ports = {p["name"]: p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
        assert cfg["http_options"].get("port", 8000) == ports["serve"]
        for app in cfg["applications"]:
            assert "working_dir" not in (app.get("runtime_env") or {})


def test_gpu_retriever_replicas_fit_the_gpu_worker_group() -> None:
    values = yaml.safe_load((REPO / SERVE_VALUES).read_text())
    for overlay in ("cpu", "gpu"):
        svc = find(render(overlay), "RayService", "itemsage")
        cfg = yaml.safe_load(svc["spec"]["serveConfigV2"])
        wanted = 0.0
        for app in cfg["applications"]:
            for dep in app.get("deployments", []):
                n = (dep.get("ray_actor_options") or {}).get("num_gpus", 0)
                if overlay == "gpu" and dep["name"] in values["gpus"]:
                    assert n == values["gpus"][dep["name"]] > 0, dep["name"]
                auto = dep.get("autoscaling_config") or {}
                replicas = auto.get("max_replicas", dep.get("num_replicas", 1))
                wanted += n * (replicas if isinstance(replicas, int) else 1)
        capacity = sum(g["maxReplicas"] * gpus(g["template"]["spec"]["containers"][0], "limits")
                       for g in cluster_spec(svc)["workerGroupSpecs"])
        if overlay == "gpu":
            assert 0 < wanted <= capacity, (wanted, capacity)
        else:
            assert wanted == 0 and capacity == 0


def test_check_and_generate_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for rel in (SERVE_CONFIG, SERVE_VALUES, *SERVE_CONFIG_FILES.values()):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, tmp_path / rel)
    assert main(["--root", str(tmp_path), "check"]) == 0
    values = tmp_path / SERVE_VALUES
    values.write_text(values.read_text().replace("models:/itemsage/1", "models:/itemsage/2"))
    assert main(["--root", str(tmp_path), "check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert main(["--root", str(tmp_path), "generate"]) == 0
    assert main(["--root", str(tmp_path), "check"]) == 0
    for rel in SERVE_CONFIG_FILES.values():
        text = (tmp_path / rel).read_text()
        assert text.startswith("# GENERATED")
        assert deployments(yaml.safe_load(text))["Retriever"]["user_config"]["model_uri"] == "models:/itemsage/2"
    values.write_text(values.read_text() + "replicas: 3\n")
    assert main(["--root", str(tmp_path), "check"]) == 2
    assert "unknown key(s) ['replicas']" in capsys.readouterr().err

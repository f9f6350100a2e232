"""The KubeRay / Kubernetes manifests in k8s/, rendered by `kubectl kustomize` (no cluster or Docker).

Every YAML parses; both overlays and the base render; built-in kinds validate against the
Kubernetes schemas (kubernetes-validate, strict: unknown fields fail); KubeRay resources validate
against k8s/schemas/kuberay-v1.6.2.schema.yaml (the ray.io/v1 fields of the KubeRay v1.6.2 CRDs, with
their pod templates as strict Kubernetes PodTemplateSpecs); Ray, image and pin versions agree;
RayJob entrypoints and configs exist and load; GPU requests match the training config; security
defaults hold everywhere; no secret is inline.
"""

from __future__ import annotations

import ast
import re
import shlex
import tomllib
from typing import Any

import pytest
import yaml
from k8s_support import (
    K8S,
    K8S_VERSIONS,
    KUBERAY_SCHEMA,
    OVERLAYS,
    RAY_KINDS,
    REPO,
    cluster_spec,
    cpus,
    find,
    gpus,
    kuberay_errors,
    kubernetes_errors,
    pod_templates,
    ray_groups,
    render,
)

from itemsage.config import PipelineConfig, load_config

Docs = tuple[dict[str, Any], ...]

SECRET_NAME = re.compile(r"password|passwd|secret|token|credential|api[_-]?key|access[_-]?key", re.I)


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def pinned_ray_version() -> str:
    """``ray[...]==2.60.*`` in pyproject.toml -> "2.60"."""
    for dep in pyproject()["project"]["dependencies"]:
        m = re.fullmatch(r"ray(\[[^\]]*\])?==(\d+\.\d+)(\.\*|\.\d+)", dep.replace(" ", ""))
        if m:
            return m.group(2)
    raise AssertionError("pyproject.toml pins no ray==X.Y.*")


def ray_containers(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for group, spec in ray_groups(doc):
        for c in spec["template"]["spec"]["containers"]:
            out.append((f"{doc['kind']}/{doc['metadata']['name']}:{group}:{c['name']}", c))
    return out


def entrypoint_config(entrypoint: str) -> tuple[str, str, list[str]]:
    """``python SCRIPT --config CONFIG [overrides]`` -> (SCRIPT, CONFIG, overrides)."""
    argv = shlex.split(entrypoint)
    assert argv[0] == "python" and argv[1].startswith("experiments/"), entrypoint
    assert "--config" in argv, entrypoint
    i = argv.index("--config")
    overrides = [a for j, a in enumerate(argv[2:], start=2) if j not in (i, i + 1)]
    assert all("=" in o and not o.startswith("-") for o in overrides), overrides
    return argv[1], argv[i + 1], overrides


# ------------------------------------------------------------------------------ parsing, rendering


def test_every_yaml_in_k8s_parses() -> None:
    files = sorted(K8S.rglob("*.yaml"))
    assert len(files) >= 12
    for f in files:
        docs = [d for d in yaml.safe_load_all(f.read_text()) if d is not None]
        assert docs, f"{f}: empty"
        if "kustomization" in f.name:
            assert isinstance(docs[0], dict) and "resources" in docs[0], f
        else:
            assert all(isinstance(d, (dict, list)) for d in docs), f


def test_overlays_render_the_same_objects(docs: Docs) -> None:
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert names == {(d["kind"], d["metadata"]["name"]) for d in render("gpu")}
    for kind, name in [("RayCluster", "itemsage-cluster"), ("RayJob", "itemsage-preprocess"), ("RayJob", "itemsage-train"),
                       ("RayService", "itemsage"), ("Deployment", "itemsage-mlflow"), ("StatefulSet", "itemsage-postgres"),
                       ("Deployment", "itemsage-redis"), ("Namespace", "itemsage")]:
        assert (kind, name) in names
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "itemsage", d["metadata"]


def test_gpu_overlay_is_the_base_as_is() -> None:
    assert render("gpu") == render("base")


def test_the_serve_config_carrier_is_not_applied(docs: Docs) -> None:
    """The ConfigMap that carries serveConfigV2 into the RayService is local to kustomize."""
    assert not [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "itemsage-serve-config"]
    assert "config.kubernetes.io/local-config" not in yaml.safe_dump_all(list(docs))


def test_cpu_overlay_has_no_gpu_anywhere() -> None:
    text = yaml.safe_dump_all(list(render("cpu")))
    assert "nvidia.com/gpu" not in text
    assert "itemsage-ray-gpu" not in text
    assert "num_gpus" not in text


def test_every_object_has_a_stage_label_the_readme_applies(docs: Docs) -> None:
    readme = (K8S / "README.md").read_text()
    stages = {d["metadata"]["labels"]["itemsage.io/stage"] for d in docs}
    assert stages == {"platform", "cluster", "preprocess", "train", "serve"}
    for stage in stages:
        assert f"-l itemsage.io/stage={stage}" in readme, stage


# ------------------------------------------------------------------------------ schemas


def test_builtin_kinds_validate_against_kubernetes_schemas(docs: Docs) -> None:
    builtin = [d for d in docs if d["kind"] not in RAY_KINDS]
    assert len(builtin) >= 14
    assert {"Deployment", "Service", "NetworkPolicy", "PersistentVolumeClaim", "StatefulSet"} <= {d["kind"] for d in builtin}
    problems = [p for d in builtin for p in kubernetes_errors(d)]
    assert not problems, "\n".join(problems)


def test_kuberay_resources_validate_against_the_crd_schema(docs: Docs) -> None:
    ray = [d for d in docs if d["kind"] in RAY_KINDS]
    assert sorted(d["kind"] for d in ray) == ["RayCluster", "RayJob", "RayJob", "RayService"]
    problems = [p for d in ray for p in kuberay_errors(d)]
    assert not problems, "\n".join(problems)


def test_kuberay_worker_groups_and_start_params(docs: Docs) -> None:
    """What the schema cannot say: replica bounds in order, rayStartParams present on every group."""
    for d in docs:
        if d["kind"] not in RAY_KINDS:
            continue
        where = f"{d['kind']}/{d['metadata']['name']}"
        if d["kind"] == "RayService":
            assert isinstance(d["spec"]["serveConfigV2"], str), "serveConfigV2 must be a YAML string"
        for g in cluster_spec(d).get("workerGroupSpecs") or []:
            for key in ("minReplicas", "maxReplicas", "replicas"):
                assert isinstance(g.get(key), int), f"{where} {g['groupName']}.{key}"
            assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], f"{where} {g['groupName']}"
        for group, gs in ray_groups(d):
            assert isinstance(gs.get("rayStartParams"), dict), f"{where}:{group} rayStartParams is required"


def test_crd_schema_catches_a_misspelt_field() -> None:
    """The schema really bites: misspelt KubeRay and pod fields, a wrong type and a wrong enum fail."""
    good = find(render("gpu"), "RayService", "itemsage")
    assert kuberay_errors(good) == []
    d = yaml.safe_load(yaml.safe_dump(good))
    cs = d["spec"]["rayClusterConfig"]
    cs["enableInTreeAutoscalling"] = True  # KubeRay field
    cs["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"  # pod field
    cs["workerGroupSpecs"][0]["replicas"] = "2"
    d["spec"]["upgradeStrategy"]["type"] = "BlueGreen"
    d["spec"]["serviceUnhealthySecondThreshold"] = 900  # deprecated: KubeRay ignores it
    errors = kuberay_errors(d)
    for needle in ("'enableInTreeAutoscalling' was unexpected", "'imagePullPolice' was unexpected",
                   "'2' is not of type 'integer'", "'BlueGreen' is not one of", "'serviceUnhealthySecondThreshold' was unexpected"):
        assert sum(needle in e for e in errors) == len(K8S_VERSIONS), (needle, errors)
    job = yaml.safe_load(yaml.safe_dump(find(render("gpu"), "RayJob", "itemsage-train")))
    job["spec"]["shutdownAfterJobFinish"] = True
    assert any("'shutdownAfterJobFinish' was unexpected" in e for e in kuberay_errors(job))


def test_crd_schema_names_its_kuberay_version() -> None:
    text = KUBERAY_SCHEMA.read_text()
    assert "KubeRay v1.6.2" in text and "v1.6.2" in KUBERAY_SCHEMA.name
    for crd in ("ray.io_rayclusters.yaml", "ray.io_rayjobs.yaml", "ray.io_rayservices.yaml"):
        assert crd in text
    assert "KubeRay v1.6.2" in (K8S / "README.md").read_text()


def test_builtin_schema_check_catches_a_typo(docs: Docs) -> None:
    d = yaml.safe_load(yaml.safe_dump(find(docs, "Deployment", "itemsage-mlflow")))
    d["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    assert len([e for e in kubernetes_errors(d) if "readinesProbe" in e]) == len(K8S_VERSIONS)


# ------------------------------------------------------------------------------ versions


def test_ray_version_equals_image_tags_equals_pyproject_pin(docs: Docs) -> None:
    pin = pinned_ray_version()
    for d in docs:
        if d["kind"] not in RAY_KINDS:
            continue
        cs = cluster_spec(d)
        assert cs["rayVersion"].rsplit(".", 1)[0] == pin, (d["metadata"]["name"], cs["rayVersion"], pin)
        images = [c["image"] for _, c in ray_containers(d)]
        if d["kind"] == "RayJob":
            images += [c["image"] for c in d["spec"]["submitterPodTemplate"]["spec"]["containers"]]
        for image in images:
            tag = image.rsplit(":", 1)[1]
            assert tag.split("-")[0] == cs["rayVersion"], (image, cs["rayVersion"])
            assert tag.split("-")[1] == "py311", image
            assert tag.endswith("-gpu") == image.split(":")[0].endswith("-gpu"), image


def dockerfile_args() -> tuple[dict[str, str], list[str]]:
    lines = [ln.strip() for ln in (REPO / "Dockerfile").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    args: dict[str, str] = {}
    for ln in lines:
        m = re.fullmatch(r"ARG (\w+)(?:=(.*))?", ln)
        if m and m.group(1) not in args:
            args[m.group(1)] = m.group(2) or ""
    return args, lines


def test_dockerfile_base_image_and_pins() -> None:
    args, lines = dockerfile_args()
    froms = [ln for ln in lines if ln.startswith("FROM ")]
    assert froms == ["FROM rayproject/ray:${RAY_VERSION}-${RAY_PYTHON}${RAY_IMAGE_VARIANT}"]
    resolved = froms[0][5:]
    for k, v in args.items():
        resolved = resolved.replace("${" + k + "}", v)
    assert resolved == "rayproject/ray:2.60.0-py311"
    assert args["RAY_VERSION"].rsplit(".", 1)[0] == pinned_ray_version()
    assert pyproject()["project"]["requires-python"].startswith(">=3.11") and args["RAY_PYTHON"] == "py311"
    text = (REPO / "Dockerfile").read_text()
    assert '"${RAY_IMAGE_VARIANT}" = "-gpu"' in text and '".[gpu]"' in text, "GPU build arg installs the gpu extra"
    assert "gpu" in pyproject()["project"]["optional-dependencies"]
    # Every rayVersion in k8s/ is the image's Ray version.
    for overlay in OVERLAYS:
        for d in render(overlay):
            if d["kind"] in RAY_KINDS:
                assert cluster_spec(d)["rayVersion"] == args["RAY_VERSION"]


def test_dockerfile_runs_as_ray_in_a_fixed_workdir() -> None:
    _, lines = dockerfile_args()
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1] == "ray"
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(ln for ln in lines if ln.startswith("ENV ") or ln.endswith("\\"))))
    app_dir = env["APP_DIR"]
    assert app_dir == "/home/ray/itemsage"
    assert "WORKDIR ${APP_DIR}" in lines and env["PYTHONPATH"] == "${APP_DIR}"
    for src in ("experiments/", "deployments/", "data/sample/", "platform/"):
        assert any(ln.startswith("COPY") and f" {src} " in f"{ln} " for ln in lines), src
    assert any("pip install" in ln for ln in lines)
    ignored = (REPO / ".dockerignore").read_text().split()
    for path in (".git", ".venv", "artifacts", "mlruns"):
        assert path in ignored
    for path in ("platform", "experiments", "deployments", "data", "pyproject.toml", "README.md"):
        assert path not in ignored


def test_pythonpath_makes_deployments_importable_without_shadowing_stdlib_platform() -> None:
    """The image puts the repo root on PYTHONPATH for Serve's import_path; `platform/` (a plain
    directory there) must not shadow the standard library's `platform` module."""
    import os
    import subprocess
    import sys

    code = (
        "import importlib.util, platform, sysconfig;"
        "assert platform.__file__.startswith(sysconfig.get_paths()['stdlib']), platform.__file__;"
        "assert importlib.util.find_spec('deployments.app') is not None"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], cwd="/", env=env, check=True, timeout=60)


def test_mlflow_server_matches_client_major_version(docs: Docs) -> None:
    image = find(docs, "Deployment", "itemsage-mlflow")["spec"]["template"]["spec"]["containers"][0]["image"]
    m = re.fullmatch(r"ghcr\.io/mlflow/mlflow:v(\d+)\.\d+\.\d+-full", image)
    assert m, image
    dep = next(d for d in pyproject()["project"]["dependencies"] if d.startswith("mlflow"))
    assert f">={m.group(1)}." in dep and f"<{int(m.group(1)) + 1}" in dep, (image, dep)


# ------------------------------------------------------------------------------ Ray cluster shape


def test_head_and_autoscaling(docs: Docs) -> None:
    for d in docs:
        if d["kind"] not in RAY_KINDS:
            continue
        cs = cluster_spec(d)
        params = cs["headGroupSpec"]["rayStartParams"]
        assert params["num-cpus"] == "0", d["metadata"]["name"]
        assert params["dashboard-host"] == "0.0.0.0"
        head = cs["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert {p["name"]: p["containerPort"] for p in head["ports"]}["dashboard"] == 8265
        expected = d["kind"] != "RayJob"  # job clusters have a fixed shape
        assert cs["enableInTreeAutoscaling"] is expected, d["metadata"]["name"]
        if expected:
            assert "securityContext" in cs["autoscalerOptions"]
    rc = cluster_spec(find(docs, "RayCluster", "itemsage-cluster"))
    groups = [g["groupName"] for g in rc["workerGroupSpecs"]]
    assert "cpu" in groups


def test_gpu_overlay_raycluster_has_cpu_and_gpu_groups() -> None:
    rc = cluster_spec(find(render("gpu"), "RayCluster", "itemsage-cluster"))
    assert [g["groupName"] for g in rc["workerGroupSpecs"]] == ["cpu", "gpu"]


def test_gpu_pods_request_and_limit_gpus_and_tolerate_the_taint(docs: Docs) -> None:
    for d in docs:
        for where, tpl in pod_templates(d):
            spec = tpl["spec"]
            for c in spec["containers"]:
                lim, req = gpus(c, "limits"), gpus(c, "requests")
                assert lim == req, f"{where}: nvidia.com/gpu limits {lim} != requests {req}"
                tolerated = any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", []))
                assert (lim > 0) == tolerated, f"{where}: GPU pods (only) tolerate nvidia.com/gpu"
                assert (lim > 0) == c["image"].split(":")[0].endswith("-gpu"), f"{where}: GPU pods use the -gpu image"


def test_ray_token_auth_from_one_secret(docs: Docs) -> None:
    readme = (K8S / "README.md").read_text()
    names = set()
    for d in docs:
        if d["kind"] in RAY_KINDS:
            auth = cluster_spec(d)["authOptions"]
            assert auth["mode"] == "token" and auth.get("enableK8sTokenAuth") in (None, False)
            names.add(auth["secretName"])
            for _, c in ray_containers(d):  # the operator injects RAY_AUTH_*; a literal would override it
                assert not {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} & {e["name"] for e in c.get("env", [])}
    assert len(names) == 1
    (name,) = names
    assert re.search(rf"kubectl -n itemsage create secret generic {name} \\?\s*--from-literal=auth_token=", readme)


# ------------------------------------------------------------------------------ RayJobs


def test_rayjobs_lifecycle(docs: Docs) -> None:
    for name in ("itemsage-preprocess", "itemsage-train"):
        spec = find(docs, "RayJob", name)["spec"]
        assert spec["shutdownAfterJobFinishes"] is True
        assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] > 0
        assert isinstance(spec["backoffLimit"], int) and spec["backoffLimit"] >= 1
        assert "deletionStrategy" not in spec  # incompatible with shutdownAfterJobFinishes + TTL


@pytest.mark.parametrize("job, script", [("itemsage-preprocess", "experiments/preprocess.py"),
                                         ("itemsage-train", "experiments/train.py")])
def test_rayjob_entrypoints_and_configs_exist_and_load(docs: Docs, job: str, script: str) -> None:
    entry, config, overrides = entrypoint_config(find(docs, "RayJob", job)["spec"]["entrypoint"])
    assert entry == script
    assert (REPO / script).is_file(), script
    assert (REPO / config).is_file(), config
    load_config(PipelineConfig, REPO / config, overrides if job == "itemsage-train" else [])


def train_config(docs: Docs) -> Any:
    _, config, overrides = entrypoint_config(find(docs, "RayJob", "itemsage-train")["spec"]["entrypoint"])
    return load_config(PipelineConfig, REPO / config, overrides)


def test_training_gpus_match_the_training_config(docs: Docs, overlay: str) -> None:
    cfg = train_config(docs).train
    job = find(docs, "RayJob", "itemsage-train")
    workers = [g for name, g in ray_groups(job) if name != "head"]
    pods = [(g["replicas"], g["template"]["spec"]["containers"][0]) for g in workers]
    total_gpus = sum(n * gpus(c, "limits") for n, c in pods)
    for g in workers:
        assert g["minReplicas"] == g["replicas"] == g["maxReplicas"], "a job cluster has a fixed size"
    if overlay == "gpu":
        assert cfg.use_gpu == "true"
        gpu_groups = [(n, c) for n, c in pods if gpus(c, "limits")]
        # The trainer asks for 1 GPU per Ray Train worker: one worker pod per GPU.
        assert all(gpus(c, "limits") == 1 for _, c in gpu_groups)
        assert total_gpus == cfg.num_workers
        assert all(cpus(c) >= cfg.cpus_per_worker for _, c in gpu_groups)
    else:
        assert cfg.use_gpu in ("auto", "false") and total_gpus == 0  # auto: no GPU in this cluster
        assert sum(n * cpus(c) for n, c in pods) >= cfg.num_workers * cfg.cpus_per_worker + 1
        assert sum(n for n, _ in pods) >= cfg.num_workers


def test_shared_storage_is_mounted_at_one_path_on_every_ray_pod(docs: Docs) -> None:
    pvc = find(docs, "PersistentVolumeClaim", "itemsage-shared")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    mounts = set()
    for d in docs:
        if d["kind"] not in RAY_KINDS:
            continue
        for group, gs in ray_groups(d):
            spec = gs["template"]["spec"]
            vols = {v["name"]: v for v in spec["volumes"]}
            for c in spec["containers"]:
                m = [vm for vm in c["volumeMounts"] if vols[vm["name"]].get("persistentVolumeClaim", {}).get("claimName") == "itemsage-shared"]
                assert len(m) == 1, f"{d['metadata']['name']}:{group}"
                mounts.add(m[0]["mountPath"])
    assert mounts == {"/mnt/itemsage"}
    cfg = train_config(docs)
    for path in (cfg.train.storage_path, cfg.train.features, cfg.preprocess.output):
        assert path.startswith("/mnt/itemsage/") or "://" in path, path
    assert cfg.preprocess.output == cfg.train.features


def test_in_image_paths_of_the_cluster_config_exist() -> None:
    """Paths under the image's WORKDIR (/home/ray/itemsage) must be files the image copies."""
    cfg = load_config(PipelineConfig, REPO / "experiments/configs/k8s-train.yaml")
    for path in (cfg.preprocess.catalog,):
        if path.startswith("/home/ray/itemsage/"):
            rel = path[len("/home/ray/itemsage/"):]
            assert (REPO / rel).exists(), rel
            assert rel.startswith(("data/sample", "experiments", "deployments")), rel


def test_mlflow_tracking_uri_points_at_the_mlflow_service(docs: Docs) -> None:
    svc = find(docs, "Service", "itemsage-mlflow")
    port = svc["spec"]["ports"][0]["port"]
    for d in docs:
        if d["kind"] not in RAY_KINDS:
            continue
        for where, c in ray_containers(d):
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            assert env.get("MLFLOW_TRACKING_URI") == f"http://itemsage-mlflow:{port}", where


def test_every_ray_pod_of_the_rayservice_starts_serve_in_fast_mode(docs: Docs) -> None:
    # Read when each node's Ray starts: the same settings local starts get (deployments.app).
    from itemsage.serve.fast_ingress import FAST_SERVE_ENV

    service = next(d for d in docs if d["kind"] == "RayService")
    for where, c in ray_containers(service):
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        assert {k: env.get(k) for k in FAST_SERVE_ENV} == FAST_SERVE_ENV, where


# ------------------------------------------------------------------------------ RayService


def test_rayservice_upgrade_strategy_and_gcs_fault_tolerance(docs: Docs) -> None:
    svc = find(docs, "RayService", "itemsage")
    assert svc["spec"]["upgradeStrategy"]["type"] == "NewCluster"  # blue/green (k8s/README.md)
    ft = svc["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    host, port = ft["redisAddress"].split(":")
    redis = find(docs, "Service", host)
    assert int(port) in [p["port"] for p in redis["spec"]["ports"]]
    ref = ft["redisPassword"]["valueFrom"]["secretKeyRef"]
    redis_env = find(docs, "Deployment", host)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "REDIS_PASSWORD", "valueFrom": {"secretKeyRef": ref}} in redis_env
    assert "value" not in ft["redisPassword"]


# ------------------------------------------------------------------------------ MLflow


def test_mlflow_postgres_and_artifacts(docs: Docs) -> None:
    pg = find(docs, "StatefulSet", "itemsage-postgres")
    assert pg["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"] == ["ReadWriteOnce"]
    pg_svc = find(docs, "Service", "itemsage-postgres")
    assert pg["spec"]["serviceName"] == pg_svc["metadata"]["name"]
    ml = find(docs, "Deployment", "itemsage-mlflow")["spec"]["template"]["spec"]
    env = ml["containers"][0]["env"]
    names = [e["name"] for e in env]
    uri = next(e["value"] for e in env if e["name"] == "MLFLOW_BACKEND_STORE_URI")
    assert uri == "postgresql+psycopg2://mlflow:$(POSTGRES_PASSWORD)@itemsage-postgres:5432/mlflow"
    # $(VAR) expands only from variables defined before it.
    assert names.index("POSTGRES_PASSWORD") < names.index("MLFLOW_BACKEND_STORE_URI")
    pw = next(e for e in env if e["name"] == "POSTGRES_PASSWORD")["valueFrom"]["secretKeyRef"]
    pg_pw = next(e for e in pg["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"] == "POSTGRES_PASSWORD")
    assert pg_pw["valueFrom"]["secretKeyRef"] == pw
    dest = next(e["value"] for e in env if e["name"] == "MLFLOW_ARTIFACTS_DESTINATION")
    mounts = {m["mountPath"]: m["name"] for m in ml["containers"][0]["volumeMounts"]}
    vol = next(v for v in ml["volumes"] if v["name"] == mounts[dest])
    find(docs, "PersistentVolumeClaim", vol["persistentVolumeClaim"]["claimName"])


# ------------------------------------------------------------------------------ security


def test_pods_run_non_root_with_dropped_capabilities_and_read_only_root(docs: Docs) -> None:
    problems = []
    count = 0
    for d in docs:
        for where, tpl in pod_templates(d):
            count += 1
            spec = tpl["spec"]
            psc = spec.get("securityContext", {})
            if psc.get("runAsNonRoot") is not True or not psc.get("runAsUser"):
                problems.append(f"{where}: pod needs runAsNonRoot: true and a non-zero runAsUser")
            if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                problems.append(f"{where}: seccompProfile RuntimeDefault")
            if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
                problems.append(f"{where}: host namespaces")
            vols = {v["name"]: v for v in spec.get("volumes", [])}
            if any("hostPath" in v for v in vols.values()):
                problems.append(f"{where}: hostPath volume")
            for c in spec["containers"] + spec.get("initContainers", []):
                sc = c.get("securityContext", {})
                if sc.get("allowPrivilegeEscalation") is not False:
                    problems.append(f"{where}:{c['name']}: allowPrivilegeEscalation must be false")
                if sc.get("capabilities", {}).get("drop") != ["ALL"] or sc.get("capabilities", {}).get("add"):
                    problems.append(f"{where}:{c['name']}: capabilities drop ALL, add none")
                if sc.get("privileged"):
                    problems.append(f"{where}:{c['name']}: privileged")
                if sc.get("readOnlyRootFilesystem") is not True:
                    problems.append(f"{where}:{c['name']}: readOnlyRootFilesystem")
                tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
                if len(tmp) != 1 or "emptyDir" not in vols.get(tmp[0]["name"], {}):
                    problems.append(f"{where}:{c['name']}: a read-only root needs an emptyDir on /tmp")
                if "limits" not in c.get("resources", {}):
                    problems.append(f"{where}:{c['name']}: resource limits")
    assert count >= 12
    assert not problems, "\n".join(problems)


def test_autoscaler_sidecar_security(docs: Docs) -> None:
    for d in docs:
        if d["kind"] in RAY_KINDS and cluster_spec(d).get("enableInTreeAutoscaling"):
            ao = cluster_spec(d)["autoscalerOptions"]
            sc = ao["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
            assert sc["readOnlyRootFilesystem"] is True and sc["runAsNonRoot"] is True
            head_vols = {v["name"]: v for v in cluster_spec(d)["headGroupSpec"]["template"]["spec"]["volumes"]}
            (tmp,) = [m for m in ao["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert "emptyDir" in head_vols[tmp["name"]], "the sidecar mounts the head pod's /tmp emptyDir"


def _secret_literals(node: Any, path: str = "") -> list[str]:
    """Literal values under secret-looking keys (references such as secretName are fine)."""
    out = []
    if isinstance(node, dict):
        if {"name", "value"} <= set(node) and SECRET_NAME.search(str(node["name"])) and node["value"] not in ("", None):
            out.append(f"{path}: env {node['name']} has a literal value")
        for k, v in node.items():
            if k in ("secretName", "secretKeyRef", "secretRef", "name", "key", "serveConfigV2"):
                continue
            if SECRET_NAME.search(str(k)) and isinstance(v, str) and v:
                out.append(f"{path}.{k}: literal")
            if isinstance(v, dict) and SECRET_NAME.search(str(k)) and "value" in v:
                out.append(f"{path}.{k}.value: literal")
            out += _secret_literals(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _secret_literals(v, f"{path}[{i}]")
    elif isinstance(node, str) and re.search(r"://[^/\s:@]+:(?!\$\()[^@\s/]+@", node):
        out.append(f"{path}: credentials in a URI")
    return out


def test_no_inline_secrets(docs: Docs) -> None:
    assert not [d for d in docs if d["kind"] == "Secret"], "Secrets are created by hand (k8s/README.md), never committed"
    problems = [p for d in docs for p in _secret_literals(d, f"{d['kind']}/{d['metadata']['name']}")]
    assert not problems, "\n".join(problems)
    # The checker itself catches the usual mistakes.
    assert _secret_literals({"env": [{"name": "POSTGRES_PASSWORD", "value": "hunter2"}]})
    assert _secret_literals({"redisPassword": {"value": "hunter2"}})
    assert _secret_literals({"value": "postgresql://mlflow:hunter2@db:5432/mlflow"})
    assert not _secret_literals({"value": "postgresql://mlflow:$(POSTGRES_PASSWORD)@db:5432/mlflow"})


def test_every_referenced_secret_is_created_in_the_readme(docs: Docs) -> None:
    readme = (K8S / "README.md").read_text()
    refs = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "secretKeyRef" in node:
                refs.add((node["secretKeyRef"]["name"], node["secretKeyRef"]["key"]))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(list(docs))
    assert {n for n, _ in refs} >= {"itemsage-postgres", "itemsage-redis"}
    for name, key in refs:
        assert re.search(rf"create secret generic {name} \\?\s*--from-literal={key}=", readme), (name, key)


def test_network_policy_keeps_dashboard_and_gcs_in_the_namespace(docs: Docs) -> None:
    pols = [d for d in docs if d["kind"] == "NetworkPolicy"]
    deny = [p for p in pols if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")]
    assert deny and deny[0]["spec"]["policyTypes"] == ["Ingress"], "a default-deny ingress policy"
    ray = [p for p in pols if p["spec"]["podSelector"].get("matchLabels") == {"ray.io/is-ray-node": "yes"}]
    assert len(ray) == 1
    for rule in ray[0]["spec"]["ingress"]:
        ports = {p["port"] for p in rule.get("ports", [])}
        for peer in rule["from"]:
            same_namespace = set(peer) == {"podSelector"}
            if same_namespace:
                continue
            # From outside the namespace: Serve's HTTP port, or the dashboard for the operator alone.
            assert ports, "a rule from other namespaces must name its ports"
            assert 6379 not in ports and 10001 not in ports, "GCS and client ports stay inside"
            if 8265 in ports:
                assert peer["namespaceSelector"].get("matchLabels"), "dashboard only from the operator's namespace"
                assert peer.get("podSelector", {}).get("matchLabels") == {"app.kubernetes.io/name": "kuberay-operator"}
            else:
                assert ports == {8000}
    # The head's ports are the ones this reasons about.
    head = cluster_spec(find(docs, "RayService", "itemsage"))["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {p["name"]: p["containerPort"] for p in head["ports"]} == {
        "gcs-server": 6379, "dashboard": 8265, "client": 10001, "serve": 8000, "metrics": 8080}


def test_readme_covers_the_workflow() -> None:
    readme = (K8S / "README.md").read_text()
    for needle in ("helm install kuberay-operator", "docker build", "docker push", "create secret generic",
                   "kubectl apply -k k8s/overlays/", "port-forward", "ray job submit", "RAY_AUTH_MODE=token",
                   "serve-values.yaml", "python tests/support/k8s.py generate", "curl"):
        assert needle in readme, needle
    assert "--build-arg RAY_IMAGE_VARIANT=-gpu" in readme


def test_scripts_and_configs_named_in_the_readme_exist() -> None:
    readme = (K8S / "README.md").read_text()
    paths = set(re.findall(r"\b((?:experiments|deployments|k8s)/[\w./-]+\.(?:py|yaml))\b", readme))
    assert {"experiments/train.py", "experiments/preprocess.py", "experiments/configs/k8s-train.yaml"} <= paths
    missing = sorted(p for p in paths if not (REPO / p).is_file())
    assert not missing, missing


def test_serve_import_path_exists(docs: Docs) -> None:
    cfg = yaml.safe_load(find(docs, "RayService", "itemsage")["spec"]["serveConfigV2"])
    apps = cfg["applications"]
    assert apps
    for app in apps:
        module, attr = app["import_path"].split(":")
        path = REPO / (module.replace(".", "/") + ".py")
        assert path.is_file(), path
        tree = ast.parse(path.read_text())
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        defined |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        assert attr in defined, app["import_path"]


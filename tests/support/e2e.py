"""The whole pipeline on a real multi-node Ray cluster on this machine, the way users run it.

:func:`run_cluster_e2e` starts PostgreSQL, ``mlflow server`` on it, and a Ray cluster of one head
and one worker node (``ray start``, token authentication on); then, through the Jobs API
(``ray job submit --working-dir .``), preprocesses, trains with one worker per node
(``train.placement_strategy: STRICT_SPREAD``) logging to the PostgreSQL-backed MLflow, embeds the
catalog and builds the index; deploys the Serve application with ``serve deploy`` serving the
registered version from that MLflow, and sends one ``POST /search``. Everything it started is
stopped again, on success or failure. ``python -m tests.support.cluster_e2e`` is the command line;
``tests/cluster/test_multinode.py`` asserts on the returned :class:`ClusterE2EReport`.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from tests.support.jobs import JobResult, submit
from tests.support.mlflow_server import MlflowServer
from tests.support.postgres import PostgresServer, find_bin_dir, install
from tests.support.procs import MARKER_ENV, marked_pids, run, terminate, wait_for
from tests.support.ray_nodes import LocalRayCluster, NodeSpec, run_env

from itemsage.cluster.ports import free_port
from itemsage.config import PipelineConfig, load_config

REGISTERED_MODEL = "itemsage"
# What the training workers print (itemsage.train.loop); the job log carries it to the driver.
WORKER_LINE = re.compile(r"\[itemsage\] train worker rank (\d+)/(\d+) on node ([0-9a-f]+)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class ClusterE2EConfig:
    """Knobs of the multi-node run (its pipeline knobs are in the pipeline YAML ``config``)."""

    config: str = "experiments/configs/cluster.yaml"  # relative to the repository root
    head: NodeSpec = field(default_factory=lambda: NodeSpec(num_cpus=2))
    # The head alone cannot host both training workers: STRICT_SPREAD needs this second node.
    workers: list[NodeSpec] = field(default_factory=lambda: [NodeSpec(num_cpus=2)])
    query: str = "blue shirt"
    k: int = 5
    start_timeout_s: float = 300.0
    job_timeout_s: float = 1200.0
    serve_timeout_s: float = 600.0
    # Run directory (PostgreSQL, MLflow artifacts, Ray temp dir, features, checkpoints, logs);
    # None: a fresh /tmp/isc-*, short enough for Ray's unix socket paths.
    run_dir: str | None = None
    # The run directory is removed after a clean success unless this is set; a failed run always
    # keeps it (logs/, report.json) for reading.
    keep_run_dir: bool = False


@dataclass
class ClusterE2EReport:
    run_dir: str
    nodes: dict[str, str] = field(default_factory=dict)  # node id -> "head" | "worker"
    unauthenticated_status: int = 0  # HTTP status of a Jobs API call without the token
    mlflow_url: str = ""
    mlflow_backend: str = ""  # the PostgreSQL URI, password redacted
    jobs: dict[str, str] = field(default_factory=dict)  # job name -> final status
    job_seconds: dict[str, float] = field(default_factory=dict)
    train_worker_nodes: dict[int, str] = field(default_factory=dict)  # rank -> node id (job log)
    train_worker_side_files: dict[int, str] = field(default_factory=dict)  # rank -> node id (run dir)
    train_worker_lines: list[str] = field(default_factory=list)
    bad_config_line: str = ""  # the one line the missing-config job failed with
    mlflow_runs: int = 0  # runs of the experiment, counted in PostgreSQL
    model_versions: list[str] = field(default_factory=list)  # registered versions, from PostgreSQL
    model_uri: str = ""
    serve_url: str = ""
    search_status: int = 0
    search: dict[str, Any] = field(default_factory=dict)
    leftover_pids: list[int] = field(default_factory=list)  # marked processes alive after teardown
    seconds: float = 0.0

    def excerpt(self) -> str:
        """A compact, quotable summary: nodes, jobs, worker placement, registry, HTTP answer."""
        lines = [f"cluster: {len(self.nodes)} nodes, Jobs API without token -> HTTP {self.unauthenticated_status}"]
        lines += [f"  node {nid} ({role})" for nid, role in sorted(self.nodes.items(), key=lambda x: x[1])]
        lines.append(f"MLflow {self.mlflow_url}, backend store {self.mlflow_backend}")
        for name, status in self.jobs.items():
            lines.append(f"job {name:<10} {status:<9} {self.job_seconds.get(name, 0):5.0f} s")
        lines += [f"  {line.strip()}" for line in self.train_worker_lines]
        if self.bad_config_line:
            lines.append(f"  bad-config: {self.bad_config_line}")
        lines.append(
            f"registered {self.model_uri}; PostgreSQL holds {self.mlflow_runs} run(s), "
            f"versions {self.model_versions}"
        )
        hits = [f"{r.get('item_id')} {r.get('title', '')[:40]!r} {r.get('score', 0):.3f}" for r in self.search.get("results", [])]
        lines.append(
            f"POST {self.serve_url}/search -> {self.search_status}, model_version "
            f"{self.search.get('model_version')}, {len(hits)} results:"
        )
        lines += [f"  {h}" for h in hits]
        lines.append(f"teardown: {len(self.leftover_pids)} processes left; total {self.seconds:.0f} s")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)


class StageFailed(RuntimeError):
    """A stage of the run failed; the message carries the evidence (log tail, status)."""


def _say(msg: str) -> None:
    print(f"[cluster-e2e {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def base_env(repo: Path) -> dict[str, str]:
    """Environment of every node and client: this venv first on PATH (so a job's ``python`` is
    the one with the project), the repository on PYTHONPATH (Serve imports ``deployments.app``
    on every node, as the container image arranges with its own PYTHONPATH), no model hub."""
    env = run_env()
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    env["PYTHONPATH"] = ":".join(p for p in (str(repo), env.get("PYTHONPATH", "")) if p)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"})
    # Serve's fast mode keeps a stopping API replica draining for 30 s, so that a load balancer in
    # front can let go of it; the only stop here is the teardown's `serve shutdown`, after the one
    # answered request, with nothing in flight and no load balancer: it would only be waited out.
    env.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")
    return env


def http_json(url: str, body: Any = None, timeout_s: float = 60.0) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        # url: an http:// address of the local cluster this run started (dashboard, Serve, MLflow).
        with urllib.request.urlopen(req, timeout=timeout_s) as r:  # nosec B310
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {"error": e.read().decode(errors="replace")[:500]}


def worker_nodes_from_log(text: str) -> tuple[dict[int, str], list[str]]:
    """``{rank: node id}`` and the matching lines of a training job's log."""
    nodes: dict[int, str] = {}
    lines: dict[int, str] = {}
    for line in text.splitlines():
        m = WORKER_LINE.search(line)
        if m and int(m.group(1)) not in nodes:
            nodes[int(m.group(1))] = m.group(3)
            lines[int(m.group(1))] = ANSI.sub("", line).strip()
    return dict(sorted(nodes.items())), [lines[r] for r in sorted(lines)]


def worker_nodes_from_run_dir(run_dir: Path) -> dict[int, str]:
    """``{rank: node id}`` from the side files the workers write (``workers/rank<r>.json``)."""
    out = {}
    for p in sorted((run_dir / "itemsage" / "workers").glob("rank*.json")):
        data = json.loads(p.read_text())
        if data.get("node_id"):
            out[int(data["rank"])] = str(data["node_id"])
    return out


def first_error_line(text: str) -> str:
    """The entry point's one-line ``error: ...`` / ``config error: ...`` in a job log."""
    for line in text.splitlines():
        s = line.strip()
        if s.startswith(("error:", "config error:")):
            return s
    return ""


class _Run:
    """One run's state and stages; :func:`run_cluster_e2e` drives it."""

    def __init__(self, cfg: ClusterE2EConfig, repo: Path, say: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.repo = repo
        self.say = say
        # mkdtemp makes a fresh private (0700) directory, so a shared /tmp is safe; /tmp rather than
        # $TMPDIR keeps Ray's unix socket paths under their length limit.
        self.root = Path(cfg.run_dir or tempfile.mkdtemp(prefix="isc-", dir="/tmp"))  # nosec B108
        self.root.mkdir(parents=True, exist_ok=True)
        # PostgreSQL runs as another user when we are root: it must be able to traverse this.
        self.root.chmod(0o711)
        self.logs = self.root / "logs"
        self.logs.mkdir(exist_ok=True)
        self.shared = self.root / "shared"  # what every node sees at the same path
        self.shared.mkdir(exist_ok=True)
        self.id = uuid.uuid4().hex[:10]
        self.env = base_env(repo)
        self.report = ClusterE2EReport(run_dir=str(self.root))
        self.pipeline = load_config(PipelineConfig, repo / cfg.config)
        self.pg: PostgresServer | None = None
        self.mlflow: MlflowServer | None = None
        self.cluster: LocalRayCluster | None = None
        self.serve_port = 0

    def marked(self, part: str) -> dict[str, str]:
        return {**self.env, MARKER_ENV: f"{self.id}-{part}"}

    # ------------------------------------------------------------------ services

    def postgres_bin(self) -> Path:
        """PostgreSQL's server binaries, installed first when missing (``PostgresUnavailable``
        when that cannot be done here)."""
        return find_bin_dir() or install(self.logs / "apt.log")

    def start_postgres(self, bin_dir: Path) -> str:
        self.pg = PostgresServer(self.root / "postgres", self.marked("postgres"), bin_dir)
        self.pg.start(self.cfg.start_timeout_s)
        uri = self.pg.create_database("mlflow")
        self.report.mlflow_backend = self.pg.redacted_uri("mlflow")
        self.say(f"PostgreSQL {bin_dir.parent.name} on 127.0.0.1:{self.pg.port} (socket dir {self.pg.socket_dir})")
        return uri

    def start_mlflow(self, backend_uri: str) -> None:
        self.mlflow = MlflowServer(backend_uri, self.root / "mlflow-artifacts", self.marked("mlflow"), self.logs / "mlflow.log")
        self.mlflow.start(self.cfg.start_timeout_s)
        self.report.mlflow_url = self.mlflow.url
        self.say(f"mlflow server at {self.mlflow.url}, backend {self.report.mlflow_backend}")

    def start_services(self, bin_dir: Path) -> None:
        """PostgreSQL, ``mlflow server`` on it and the Ray cluster, the first two in a thread beside
        the third: each start mostly waits (initdb and the server's start, MLflow's schema
        migration, the raylets registering), so side by side they take about as long as the
        longest of them rather than the sum (2026-12-05, idle 2-core box: see the Makefile)."""
        with ThreadPoolExecutor(max_workers=1) as pool:
            tracking = pool.submit(lambda: self.start_mlflow(self.start_postgres(bin_dir)))
            try:
                self.start_ray()
            finally:
                # Waits for the thread also when Ray failed (teardown then finds what it started);
                # its own error (PostgresUnavailable: the test skips) is raised first.
                tracking.result()

    def start_ray(self) -> None:
        self.cluster = LocalRayCluster(self.root / "cluster", self.env, marker=f"{self.id}-ray")
        self.cluster.start(self.cfg.head, self.cfg.workers, self.cfg.start_timeout_s)
        for node in self.cluster.alive_nodes():
            self.report.nodes[node["node_id"]] = "head" if node.get("is_head_node") else "worker"
        self.report.unauthenticated_status = self.cluster.status_without_token()
        self.say(f"Ray cluster up: GCS {self.cluster.address}, dashboard {self.cluster.dashboard_url}, "
                 f"nodes {self.report.nodes}; without the token the Jobs API answers {self.report.unauthenticated_status}")

    # ------------------------------------------------------------------ jobs

    def job(self, name: str, *entrypoint: str, expect: str = "SUCCEEDED") -> JobResult:
        assert self.cluster is not None and self.mlflow is not None
        self.say(f"ray job submit -- {' '.join(entrypoint)}")
        result = submit(
            self.cluster, name, entrypoint,
            working_dir=self.repo,
            # RAY_DEDUP_LOGS=0: the workers' placement lines differ only in ids, which Ray's log
            # de-duplication would fold into one "[repeated 2x]" line.
            env_vars={"MLFLOW_TRACKING_URI": self.mlflow.url, "RAY_DEDUP_LOGS": "0"},
            log_dir=self.logs,
            timeout_s=self.cfg.job_timeout_s,
        )
        self.report.jobs[name] = result.status
        self.report.job_seconds[name] = round(result.seconds, 1)
        self.say(f"job {name}: {result.status} in {result.seconds:.0f} s (log {result.log})")
        if result.status != expect:
            raise StageFailed(f"job {name} ended {result.status}, expected {expect}; last lines:\n{result.tail()}")
        return result

    def pipeline_jobs(self) -> None:
        cfg = self.cfg.config
        features = str(self.shared / "features")
        storage = str(self.shared / "ray_results")
        # The job with a missing config runs beside preprocessing: it needs no CPU of the cluster
        # (a job's driver reserves none) and only waits on its upload and its driver's start.
        with ThreadPoolExecutor(max_workers=1) as pool:
            bad_config = pool.submit(self.bad_config_job)
            self.job("preprocess", "python", "experiments/preprocess.py", "--config", cfg, f"preprocess.output={features}")
            bad_config.result()
        train = self.job("train", "python", "experiments/train.py", "--config", cfg,
                         f"train.features={features}", f"train.storage_path={storage}")
        nodes, lines = worker_nodes_from_log(train.log_text())
        self.report.train_worker_nodes = nodes
        self.report.train_worker_lines = lines
        self.report.train_worker_side_files = worker_nodes_from_run_dir(Path(storage) / self.pipeline.train.name)
        self.check_registry()
        model = self.report.model_uri
        embeddings = str(self.shared / "embeddings")
        self.job("embed", "python", "experiments/embed.py", "--model", model, "--features", features, "--out", embeddings)
        self.job("index", "python", "experiments/build_index.py", "--embeddings", embeddings, "--model", model,
                 "--out", str(self.shared / "index"), "--config", cfg)

    def bad_config_job(self) -> None:
        """A job submitted with a config file that does not exist fails with one clear line."""
        result = self.job("bad-config", "python", "experiments/train.py", "--config", "experiments/configs/missing.yaml",
                          expect="FAILED")
        self.report.bad_config_line = first_error_line(result.log_text())

    def check_registry(self) -> None:
        """Runs and model versions, read from PostgreSQL itself: the server really stores there."""
        assert self.pg is not None
        runs = self.pg.query(
            "mlflow",
            "SELECT count(*) FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id WHERE e.name = %s",
            (self.pipeline.train.mlflow_experiment,),
        )
        versions = self.pg.query("mlflow", "SELECT version FROM model_versions WHERE name = %s ORDER BY version",
                                 (REGISTERED_MODEL,))
        self.report.mlflow_runs = int(runs[0][0])
        self.report.model_versions = [str(v[0]) for v in versions]
        if not self.report.model_versions:
            raise StageFailed("training succeeded but registered no model version in MLflow")
        self.report.model_uri = f"models:/{REGISTERED_MODEL}/{self.report.model_versions[-1]}"
        self.say(f"MLflow (PostgreSQL): {self.report.mlflow_runs} run(s), versions {self.report.model_versions}")

    # ------------------------------------------------------------------ serve

    def serve_config(self) -> Path:
        """``deployments/serve_config.yaml`` made cluster-ready by the same function that generates
        the RayService's ``serveConfigV2`` (tests/support/k8s.py), with this run's values."""
        from tests.support.k8s import cluster_serve_config

        assert self.mlflow is not None
        self.serve_port = free_port()
        source = yaml.safe_load((self.repo / "deployments" / "serve_config.yaml").read_text())
        values = {
            "proxy_location": "HeadOnly",
            "http_options": {"host": "127.0.0.1", "port": self.serve_port},
            "version": {
                "model_uri": self.report.model_uri,
                "index_uri": self.report.model_uri,  # the index logged with that model version
                "features": str(self.shared / "features"),
                "mlflow_tracking_uri": self.mlflow.url,
            },
        }
        path = self.root / "serve_config.yaml"
        path.write_text(yaml.safe_dump(cluster_serve_config(source, values, "cpu"), sort_keys=False))
        return path

    def serve(self) -> None:
        assert self.cluster is not None
        config = self.serve_config()
        serve_bin = str(Path(sys.executable).parent / "serve")
        self.say(f"serve deploy {config} (models {self.report.model_uri} from {self.report.mlflow_url})")
        t0 = time.monotonic()
        run([serve_bin, "deploy", str(config), "--address", self.cluster.dashboard_url], self.cluster.env,
            self.logs / "serve.log", 300, cwd=self.repo)
        url = f"http://127.0.0.1:{self.serve_port}"
        self.report.serve_url = url

        def healthy() -> bool:
            apps = (self.cluster.api("/api/serve/applications/") or {}).get("applications", {})  # type: ignore[union-attr]
            app = apps.get("itemsage") or {}
            if app.get("status") in ("DEPLOY_FAILED", "UNHEALTHY"):
                raise StageFailed(f"Serve application {app.get('status')}: {str(app.get('message'))[-2000:]}")
            # url: the http:// Serve address of the cluster this run started.
            with urllib.request.urlopen(f"{url}/healthz", timeout=5) as r:  # nosec B310
                return r.status == 200

        wait_for(healthy, self.cfg.serve_timeout_s, f"Serve application at {url}/healthz", interval_s=2.0)
        self.say(f"Serve healthy after {time.monotonic() - t0:.0f} s")
        status, answer = http_json(f"{url}/search", {"query": self.cfg.query, "k": self.cfg.k})
        self.report.search_status = status
        self.report.search = answer if isinstance(answer, dict) else {"answer": answer}
        self.say(f"POST /search {self.cfg.query!r} -> {status}, {len(self.report.search.get('results', []))} results")

    # ------------------------------------------------------------------ teardown

    def teardown(self) -> None:
        """Stop everything this run started; keep going when one step fails. ``serve shutdown``
        first (it goes through the cluster), then the cluster, ``mlflow server`` and PostgreSQL side
        by side: each stop mostly waits for its processes to exit (up to a SIGTERM grace period),
        so together they take about as long as the longest rather than the sum."""
        if self.cluster is not None and self.cluster.nodes_started:
            cluster = self.cluster
            serve_bin = str(Path(sys.executable).parent / "serve")
            self._stop("serve shutdown", lambda: run([serve_bin, "shutdown", "--address", cluster.dashboard_url, "-y"],
                                                     cluster.env, self.logs / "serve.log", 180, check=False))
        steps: list[tuple[str, Callable[[], Any]]] = []
        if self.cluster is not None and self.cluster.nodes_started:
            steps.append(("ray cluster", self._stop_cluster))
        if self.mlflow is not None:
            steps.append(("mlflow server", self.mlflow.stop))
        if self.pg is not None:
            steps.append(("postgres", self.pg.stop))
        if steps:
            with ThreadPoolExecutor(max_workers=len(steps)) as pool:
                for _ in pool.map(lambda step: self._stop(*step), steps):
                    pass
        # Whatever survived (a daemon that ignored its stop) carries one of our markers.
        leftovers = [p for part in ("ray", "mlflow", "postgres") for p in marked_pids(f"{self.id}-{part}")]
        if leftovers:
            terminate(leftovers, 10)
        self.report.leftover_pids = [p for part in ("ray", "mlflow", "postgres") for p in marked_pids(f"{self.id}-{part}")]
        self.say(f"stopped everything ({len(self.report.leftover_pids)} processes left); logs in {self.logs}")

    def _stop(self, what: str, step: Callable[[], Any]) -> None:
        """One teardown step, timed; its failure is reported, not raised (the others still run)."""
        t0 = time.monotonic()
        try:
            detail = step()
            self.say(f"stopped {what} in {time.monotonic() - t0:.0f} s{detail if isinstance(detail, str) else ''}")
        except Exception as e:  # noqa: BLE001 - one failed stop must not skip the others
            self.say(f"teardown of {what} failed: {type(e).__name__}: {e}")

    def _stop_cluster(self) -> str:
        """Stop the Ray cluster; says which of its processes outlived the SIGTERM grace period."""
        assert self.cluster is not None
        names = self.cluster.process_names()
        killed = self.cluster.stop()
        return f", {len(killed)} needed SIGKILL {sorted(names.get(p, '?') for p in killed)}" if killed else ""


def run_cluster_e2e(cfg: ClusterE2EConfig | None = None, repo: Path | None = None,
                    say: Callable[[str], None] = _say) -> ClusterE2EReport:
    """Run the multi-node pipeline (module doc) and return its report.

    Raises ``PostgresUnavailable`` before starting anything when PostgreSQL cannot be had,
    :class:`StageFailed` / ``TimeoutError`` when a stage fails (after tearing everything down).
    """
    cfg = cfg or ClusterE2EConfig()
    repo = (repo or Path(__file__).resolve().parents[2]).resolve()
    t0 = time.monotonic()
    r = _Run(cfg, repo, say)
    ok = False
    try:
        r.start_services(r.postgres_bin())
        r.pipeline_jobs()
        r.serve()
        ok = True
    finally:
        with contextlib.suppress(KeyboardInterrupt):
            r.teardown()
        r.report.seconds = round(time.monotonic() - t0, 1)
        (r.root / "report.json").write_text(r.report.to_json())
        if ok and not cfg.keep_run_dir and not r.report.leftover_pids:
            shutil.rmtree(r.root, ignore_errors=True)
        elif not ok:
            say(f"run directory kept for reading: {r.root}")
    return r.report

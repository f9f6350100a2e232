"""What the serving benchmarks share: the closed-loop HTTP load generator, the queries it sends,
starting Serve on 127.0.0.1, and reading CPU time and memory of the processes below this one.

Used by ``serve.py`` (throughput and latency against a baseline) and ``soak.py`` (long mixed
traffic, latency and replica memory over time). Plain module next to them: the scripts run as
``python experiments/bench/<name>.py``, which puts this directory on ``sys.path``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[2]
# Used when the features directory has no queries.parquet: typical shopping queries.
DEFAULT_QUERIES = [
    "black leather shoes", "men casual shirt", "women handbag", "blue jeans", "analog watch for men",
    "red dress", "sports shoes", "white t-shirt", "sunglasses", "silver watch", "kurta for women",
    "running shoes", "wallet", "formal trousers", "backpack", "flip flops", "perfume", "belt",
]

# (path, JSON body) of request number i.
RequestFor = Callable[[int], tuple[str, Any]]
# path, start, end (perf_counter seconds), HTTP status (0: no answer), first bytes of the body.
OnAnswer = Callable[[str, float, float, int, bytes], None]


# ------------------------------------------------------------------------------ load generator


async def closed_loop(
    url: str, request_for: RequestFor, concurrency: int, total: int, max_seconds: float, on_answer: OnAnswer | None = None,
) -> tuple[list[float], int, float]:
    """Closed-loop load: ``concurrency`` clients, each sending its next POST when the previous
    answer arrives, ``total`` requests in all or until ``max_seconds`` (both bound every run).

    Returns (latencies in seconds of the 200 answers, number of failed requests, elapsed seconds).
    """
    import aiohttp

    latencies: list[float] = []
    errors = 0
    sent = 0
    deadline = time.perf_counter() + max_seconds
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal sent, errors
        while sent < total and time.perf_counter() < deadline:
            i = sent
            sent += 1
            path, body = request_for(i)
            t0 = time.perf_counter()
            status, raw = 0, b""
            try:
                async with session.post(f"{url}{path}", json=body) as r:
                    raw = await r.read()
                    status = r.status
            except (TimeoutError, aiohttp.ClientError) as e:
                raw = repr(e).encode()
            t1 = time.perf_counter()
            if status == 200:
                latencies.append(t1 - t0)
            else:
                errors += 1
            if on_answer is not None:
                on_answer(path, t0, t1, status, raw[:300])

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return latencies, errors, elapsed


# ------------------------------------------------------------------------------------ processes


def descendants(root: int | None) -> dict[int, str]:
    """pid -> command line of every process below ``root`` (our Ray cluster, the baseline);
    ``root=None``: every process of the machine."""
    if root is None:
        procs = list(psutil.process_iter())
    else:
        try:
            procs = psutil.Process(root).children(recursive=True)
        except psutil.NoSuchProcess:
            return {}
    out = {}
    for proc in procs:
        try:
            out[proc.pid] = " ".join(proc.cmdline())
        except psutil.Error:
            continue  # exited meanwhile, or not ours to read
    return out


def label(cmdline: str) -> str:
    if "baseline_server.py" in cmdline:
        return "baseline server"
    if cmdline.startswith("ray::ServeReplica:"):
        return replica_deployment(cmdline)
    if cmdline.startswith(("ray::ProxyActor", "ray::HAProxyManager")):
        return "Serve proxy"
    if cmdline.split(" ", 1)[0].endswith("/haproxy"):
        return "HAProxy"  # Serve's ingress in its high-throughput mode (itemsage.serve.fast_ingress)
    if cmdline.startswith("ray::ServeController"):
        return "Serve controller"
    return "Ray (gcs, raylet, other workers)"


def process_cpu() -> dict[str, float]:
    """CPU seconds (user + system) so far, per kind of process below this one, plus this one
    (the load generator)."""
    out: dict[str, float] = {}
    for pid, cmdline in descendants(os.getpid()).items():
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        kind = label(cmdline)
        out[kind] = out.get(kind, 0.0) + t.user + t.system
    t = os.times()
    out["load generator"] = t.user + t.system
    return out


def replica_pids(app: str, root: int | None) -> dict[int, str]:
    """pid -> deployment name of each Serve replica process of application ``app`` below ``root``.

    Ray names a replica's worker process ``ray::ServeReplica:<app>:<deployment>``; with
    ``root=None`` (a Serve app this process did not start) every such process of the machine
    counts, so another Serve app of the same name on the machine would be counted too.
    """
    prefix = f"ray::ServeReplica:{app}:"
    return {pid: replica_deployment(cmd) for pid, cmd in descendants(root).items() if cmd.startswith(prefix)}


def replica_deployment(title: str) -> str:
    """The deployment of a replica process title ``ray::ServeReplica:<app>:<deployment>``, which
    reads ``...:<deployment>.<method>`` while the replica runs a method (e.g. ``check_health``)."""
    return title.split()[0].rsplit(":", 1)[1].split(".", 1)[0]


def rss_bytes(pid: int) -> int | None:
    """Resident set size of ``pid`` (None once it has exited)."""
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


# ---------------------------------------------------------------------------------------- Serve


def wait_healthy(url: str, timeout_s: float, proc: Any = None) -> None:
    """Poll ``GET /healthz`` until 200; fail early if ``proc`` (a Popen) has exited."""
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with code {proc.returncode}")
        try:
            # url: the http://127.0.0.1 server this benchmark started itself.
            with urllib.request.urlopen(f"{url}/healthz", timeout=5) as r:  # nosec B310
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not healthy after {timeout_s:.0f}s")


def served_version(model_uri: str, index_uri: str, mlflow_tracking_uri: str, features: str | None) -> dict[str, str]:
    v = {"model_uri": model_uri, "index_uri": index_uri, "mlflow_tracking_uri": mlflow_tracking_uri}
    if features:
        v["features"] = features
    return v


def start_serve(version: dict[str, str], port: int, num_cpus: int | None) -> str:
    """Start a local Ray (no dashboard) and deploy deployments/serve_config.yaml on 127.0.0.1."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from deployments.app import run_local

    return run_local(version, host="127.0.0.1", port=port, num_cpus=num_cpus, timeout_s=600)


def get_json(url: str, timeout: float = 10) -> Any:
    import urllib.request

    # url: the http://127.0.0.1 server a benchmark started itself (or was pointed at).
    with urllib.request.urlopen(url, timeout=timeout) as r:  # nosec B310
        return json.loads(r.read())


def load_queries(url: str) -> list[str]:
    """The features directory's search queries (what training saw), else DEFAULT_QUERIES."""
    try:
        import pyarrow.parquet as pq

        from itemsage.serve.bundle import features_dir
        from itemsage.trained import load_manifest

        v = get_json(f"{url}/version")
        manifest = load_manifest(v["model"]["uri"])
        texts = pq.read_table(Path(features_dir(manifest, None, os.getcwd())) / "queries.parquet", columns=["text"]).column("text").to_pylist()
        texts = [t for t in texts if t and t.strip()]
        if texts:
            return sorted(set(texts))[:500]
    except Exception:  # noqa: BLE001 - any problem: fall back to the built-in list
        pass
    return list(DEFAULT_QUERIES)

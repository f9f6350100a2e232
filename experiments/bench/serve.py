"""Serving benchmark: the Ray Serve app vs a plain single-process server, same machine, one run.

Both serve the same model and index version through the same API code; the difference is the
architecture: Serve runs Ingress -> Retriever -> QueryEncoder replicas with ``@serve.batch``
(concurrent queries share one MiniLM forward), the baseline (experiments/bench/baseline_server.py)
is FastAPI + torch + FAISS in one process encoding each request on its own.

    nice -n 10 python experiments/bench/serve.py                       # after `make demo`
    nice -n 10 python experiments/bench/serve.py --model-uri DIR --index-uri DIR --requests 200

For each concurrency (1, 8, 32, 64) it sends a bounded number of ``POST /search`` requests (closed
loop: each client sends its next request when the previous answer arrives) to 127.0.0.1 only, to
both servers in alternating rounds (baseline then Serve, Serve then baseline, ...) so that load
from other processes on a shared machine hits both alike. It prints throughput and p50/p99
latency, the ratios, and PASS/FAIL for: Serve >= 1.2x baseline throughput at concurrency 32, and
Serve p50 at concurrency 1 within 1.5x of the baseline's.

Serve runs in Ray's high-throughput mode (HAProxy ingress; itemsage.serve.fast_ingress) unless
the environment says otherwise: ``RAY_SERVE_ENABLE_HA_PROXY=0 RAY_SERVE_THROUGHPUT_OPTIMIZED=0``
measures it on Serve's Python proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import (  # noqa: E402  (shared with soak.py)
    DEFAULT_QUERIES,  # noqa: F401  (kept importable from here)
    REPO,
    closed_loop,
    load_queries,
    process_cpu,
    served_version,
    wait_healthy,
)
from loadgen import start_serve as _start_serve  # noqa: E402

LEVELS = (1, 8, 32, 64)
THROUGHPUT_TARGET = 1.2  # Serve / baseline requests per second at concurrency 32
P50_LIMIT = 1.5  # Serve / baseline median latency at concurrency 1


@dataclass
class Result:
    server: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    # CPU milliseconds per request, by process kind (both servers' processes are counted in
    # every run: an idle server's background work is part of the machine's load).
    cpu_ms_per_request: dict[str, float]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-uri", default="models:/itemsage/latest")
    p.add_argument("--index-uri", default="models:/itemsage/latest")
    p.add_argument("--features", default=None)
    p.add_argument("--mlflow-tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    p.add_argument("--levels", type=int, nargs="+", default=list(LEVELS))
    p.add_argument("--requests", type=int, default=240, help="requests per server at concurrency 1")
    p.add_argument("--per-client", type=int, default=16, help="requests per client at higher concurrency")
    p.add_argument("--max-seconds", type=float, default=90.0, help="time cap of one run")
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds per concurrency (requests split across them)")
    p.add_argument("--warmup", type=int, default=32)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--serve-port", type=int, default=8000)
    p.add_argument("--baseline-port", type=int, default=8100)
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------ load generator


async def drive(url: str, queries: list[str], concurrency: int, total: int, max_seconds: float, k: int) -> tuple[list[float], int, float]:
    """Closed-loop load: ``concurrency`` clients, ``total`` requests in all (or until the cap)."""
    return await closed_loop(url, lambda i: ("/search", {"query": queries[i % len(queries)], "k": k}), concurrency, total, max_seconds)


@dataclass
class Run:
    """One closed-loop run against one server: raw latencies, errors, seconds, CPU seconds by process."""

    latencies: list[float]
    errors: int
    seconds: float
    cpu: dict[str, float]


def run_once(url: str, queries: list[str], concurrency: int, total: int, max_seconds: float, k: int) -> Run:
    before = process_cpu()
    lat, errors, elapsed = asyncio.run(drive(url, queries, concurrency, total, max_seconds, k))
    after = process_cpu()
    return Run(lat, errors, elapsed, {label: after[label] - before.get(label, 0.0) for label in after})


def summarize(server: str, concurrency: int, runs: list[Run]) -> Result:
    """One row from the rounds of one server at one concurrency (latencies pooled, times summed)."""
    lat = [x for r in runs for x in r.latencies]
    errors = sum(r.errors for r in runs)
    elapsed = sum(r.seconds for r in runs)
    ms = np.asarray(lat) * 1e3 if lat else np.asarray([np.nan])
    n = max(len(lat) + errors, 1)
    labels = {label for r in runs for label in r.cpu}
    cpu = {label: round(sum(r.cpu.get(label, 0.0) for r in runs) * 1e3 / n, 2) for label in labels}
    return Result(
        server, concurrency, len(lat) + errors, errors, round(elapsed, 2), round(len(lat) / elapsed, 1),
        round(float(np.percentile(ms, 50)), 1), round(float(np.percentile(ms, 99)), 1),
        {k: v for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]) if v >= 0.05},
    )


def measure_level(
    servers: dict[str, str], queries: list[str], concurrency: int, total: int, rounds: int, max_seconds: float, k: int
) -> list[Result]:
    """Both servers at one concurrency, in ``rounds`` alternating rounds (A B, B A, A B, ...).

    Load from other processes on a shared machine drifts over seconds; alternating the order
    round by round makes both servers see the same drift, so the ratio is not decided by which
    one happened to run during a busy spell.
    """
    runs: dict[str, list[Run]] = {name: [] for name in servers}
    per_round = max(concurrency, -(-total // rounds))
    for r in range(rounds):
        order = list(servers) if r % 2 == 0 else list(reversed(servers))
        for name in order:
            runs[name].append(run_once(servers[name], queries, concurrency, per_round, max_seconds / rounds, k))
    return [summarize(name, concurrency, runs[name]) for name in servers]


# --------------------------------------------------------------------------------------- servers


def version(args: argparse.Namespace) -> dict[str, str]:
    return served_version(args.model_uri, args.index_uri, args.mlflow_tracking_uri, args.features)


def start_baseline(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    cmd = [
        sys.executable, str(REPO / "experiments" / "bench" / "baseline_server.py"),
        "--model-uri", args.model_uri, "--index-uri", args.index_uri,
        "--mlflow-tracking-uri", args.mlflow_tracking_uri, "--port", str(args.baseline_port),
    ]
    if args.features:
        cmd += ["--features", args.features]
    proc = subprocess.Popen(cmd, cwd=os.getcwd(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{args.baseline_port}"
    try:
        wait_healthy(url, 300, proc)
    except BaseException:  # noqa: BLE001 - also Ctrl-C: never leave the baseline server running
        proc.kill()
        raise RuntimeError(f"baseline server failed to start: {(proc.stderr.read() if proc.stderr else '')[-2000:]}") from None
    return proc, url


def start_serve(args: argparse.Namespace) -> str:
    return _start_serve(version(args), args.serve_port, args.num_cpus)


def same_answers(a: str, b: str, queries: list[str], k: int) -> bool:
    """Both servers answer with the same version and the same ranking (a fair comparison)."""
    import urllib.request

    def ask(url: str, q: str) -> dict[str, Any]:
        req = urllib.request.Request(f"{url}/search", json.dumps({"query": q, "k": k}).encode(), {"content-type": "application/json"})
        # url: the http://127.0.0.1 servers this benchmark started itself.
        with urllib.request.urlopen(req, timeout=60) as r:  # nosec B310
            return json.loads(r.read())

    for q in queries[:5]:
        x, y = ask(a, q), ask(b, q)
        if (x["model_version"], x["index_version"]) != (y["model_version"], y["index_version"]):
            return False
        if [h["item_id"] for h in x["results"]] != [h["item_id"] for h in y["results"]]:
            return False
    return True


# ----------------------------------------------------------------------------------------- report


def report(results: list[Result]) -> tuple[str, bool]:
    by = {(r.server, r.concurrency): r for r in results}
    lines = [
        "| concurrency | baseline req/s | baseline p50 ms | baseline p99 ms | serve req/s | serve p50 ms | serve p99 ms | throughput ratio | p50 ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in sorted({r.concurrency for r in results}):
        b, s = by.get(("baseline", c)), by.get(("serve", c))
        if b is None or s is None:
            continue
        lines.append(
            f"| {c} | {b.rps} | {b.p50_ms} | {b.p99_ms} | {s.rps} | {s.p50_ms} | {s.p99_ms} | "
            f"{s.rps / b.rps:.2f}x | {s.p50_ms / b.p50_ms:.2f}x |"
        )
    ok = True
    checks = []
    if ("serve", 32) in by and ("baseline", 32) in by:
        ratio = by[("serve", 32)].rps / by[("baseline", 32)].rps
        passed = ratio >= THROUGHPUT_TARGET
        ok &= passed
        checks.append(f"{'PASS' if passed else 'FAIL'}: throughput at concurrency 32 is {ratio:.2f}x the baseline (target >= {THROUGHPUT_TARGET}x)")
    if ("serve", 1) in by and ("baseline", 1) in by:
        ratio = by[("serve", 1)].p50_ms / by[("baseline", 1)].p50_ms
        passed = ratio <= P50_LIMIT
        ok &= passed
        checks.append(f"{'PASS' if passed else 'FAIL'}: p50 at concurrency 1 is {ratio:.2f}x the baseline (limit <= {P50_LIMIT}x)")
    for c in (32,):
        for name in ("baseline", "serve"):
            r = by.get((name, c))
            if r is not None:
                own = {k: v for k, v in r.cpu_ms_per_request.items() if k != "load generator"}
                parts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(own.items(), key=lambda kv: -kv[1]))
                checks.append(f"CPU ms per request at concurrency {c}, {name} run: total {sum(own.values()):.1f} ({parts})")
    errors = sum(r.errors for r in results)
    if errors:
        ok = False
        checks.append(f"FAIL: {errors} requests failed")
    return "\n".join([*lines, "", *checks]), ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import ray

    baseline = None
    try:
        print("starting the baseline server ...", flush=True)
        baseline, base_url = start_baseline(args)
        print("starting Ray Serve ...", flush=True)
        serve_url = start_serve(args)
        queries = load_queries(serve_url)
        if not same_answers(base_url, serve_url, queries, args.k):
            print("FAIL: the two servers do not serve the same version/answers; not comparable")
            return 1
        for url in (base_url, serve_url):  # warm-up: lazy init, connection pools, allocator
            run_once(url, queries, 8, args.warmup, args.max_seconds, args.k)
        results = []
        servers = {"baseline": base_url, "serve": serve_url}
        for c in args.levels:
            total = max(args.requests, c * args.per_client)
            for r in measure_level(servers, queries, c, total, args.rounds, args.max_seconds, args.k):
                print(f"  {r.server:8s} c={c:<3d} {r.rps:7.1f} req/s  p50 {r.p50_ms:7.1f} ms  p99 {r.p99_ms:7.1f} ms  ({r.requests} requests, {r.errors} errors)", flush=True)
                results.append(r)
        table, ok = report(results)
        print()
        print(f"POST /search, k={args.k}, {os.cpu_count()} CPUs, {len(queries)} distinct queries")
        print(table)
        if args.out:
            Path(args.out).write_text(json.dumps([asdict(r) for r in results], indent=2))
        return 0 if ok else 1
    finally:
        if baseline is not None:
            baseline.send_signal(signal.SIGINT)
            try:
                baseline.wait(20)
            except subprocess.TimeoutExpired:
                baseline.kill()
        if ray.is_initialized():
            from deployments.app import shutdown_local  # on sys.path once start_serve has run

            shutdown_local()
            ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())

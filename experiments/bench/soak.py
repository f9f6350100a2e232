"""Soak test of the Serve app: mixed traffic at a fixed concurrency for a long time, on 127.0.0.1.

    nice -n 10 python experiments/bench/soak.py                        # after `make demo`: 10 min, c=32
    python experiments/bench/soak.py --duration 60 --concurrency 16 --plot soak.png --json soak.json
    python experiments/bench/soak.py --url http://127.0.0.1:8000       # an app that is already up

Without ``--url`` it starts a local Ray (no dashboard) and deploys deployments/serve_config.yaml on
127.0.0.1 at a free port, like bench/serve.py, and shuts both down at the end. Traffic is closed
loop (each client sends its next request when the previous answer arrives), bounded by
``--duration`` and ``--max-requests``, and mixes ``POST /search`` (shopping queries),
``/similar`` (catalog items found by those searches) and ``/embed/item`` (their title and product
type, every fourth with the item's own photo). A warm-up of the same mix comes first, so lazy
initialisation and allocator growth are not counted as a leak.

Reported: requests and failed requests (target 0), p50/p99 latency per time window (all requests,
and p99 per endpoint), and the resident memory (RSS) of every Serve replica process of the app,
sampled each window: start vs end per replica and the growth in percent (target < 10%). A replica
that started or stopped during the run (autoscaling, a replaced replica) is listed but has no
growth figure. Exit status 0 when every target holds.
"""

# No `from __future__ import annotations`: with string annotations, @dataclass looks the module up
# in sys.modules, which a module loaded from its path (the tests) need not be in.
import argparse
import asyncio
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import closed_loop, get_json, load_queries, replica_pids, rss_bytes, served_version, start_serve  # noqa: E402

ENDPOINTS = ("search", "similar", "embed_item")
# Out of every 10 requests: 5 searches, 3 similar-item lookups, 2 item embeddings.
DEFAULT_MIX = "search=5,similar=3,embed_item=2"
RSS_GROWTH_LIMIT_PCT = 10.0


@dataclass
class Window:
    index: int
    start_s: float
    requests: int
    errors: int
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    p99_ms_by_endpoint: dict[str, float | None]
    rss_mb_total: float | None  # all replicas, sampled at the end of the window


@dataclass
class Replica:
    pid: int
    deployment: str
    start_mb: float | None
    end_mb: float | None
    growth_pct: float | None  # None: not alive at both ends of the run


@dataclass
class SoakReport:
    url: str
    concurrency: int
    duration_s: float
    window_s: float
    mix: dict[str, int]
    requests: int
    errors: int
    errors_by_endpoint: dict[str, int]
    error_samples: list[str]
    windows: list[Window]
    replicas: list[Replica]
    rss_samples: list[dict[str, Any]] = field(default_factory=list)  # t_s, pid -> MB
    checks: dict[str, bool] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(self.checks.values())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=None, help="soak this running app (http://127.0.0.1:PORT) instead of starting one")
    p.add_argument("--app", default="itemsage", help="Serve application name, to find its replica processes (with --url: any on this machine)")
    p.add_argument("--model-uri", default="models:/itemsage/latest")
    p.add_argument("--index-uri", default="models:/itemsage/latest")
    p.add_argument("--features", default=None)
    p.add_argument("--mlflow-tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    p.add_argument("--port", type=int, default=0, help="port of the app this script starts (0: a free one)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--duration", type=float, default=600.0, help="seconds of measured traffic")
    p.add_argument("--window", type=float, default=30.0, help="seconds per row of the latency table")
    p.add_argument("--warmup", type=float, default=30.0, help="seconds of the same traffic before measuring")
    p.add_argument("--max-requests", type=int, default=1_000_000, help="cap on measured requests")
    p.add_argument("--mix", default=DEFAULT_MIX, help=f"relative weights of the endpoints (default {DEFAULT_MIX})")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--rss-growth-limit", type=float, default=RSS_GROWTH_LIMIT_PCT, help="percent, per replica")
    p.add_argument("--plot", default=None, help="write a PNG of p99 and replica RSS over time here")
    p.add_argument("--json", default=None, help="write the report as JSON here ('-': stdout, instead of the table)")
    return p.parse_args(argv)


def parse_mix(text: str) -> dict[str, int]:
    mix = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        if name.strip() not in ENDPOINTS or not weight.strip().isdigit():
            raise ValueError(f"--mix: {part!r} is not ENDPOINT=WEIGHT with ENDPOINT in {', '.join(ENDPOINTS)}")
        mix[name.strip()] = int(weight)
    if sum(mix.values()) <= 0:
        raise ValueError("--mix: the weights add up to 0")
    return mix


# ------------------------------------------------------------------------------------- traffic


class Traffic:
    """Request number i -> (path, body), a fixed interleaving of the mix over real catalog items.

    The items come from the app itself (search answers and their image URLs), so the script needs
    nothing but the URL, and every ``/similar`` names an item the served index holds.
    """

    def __init__(self, url: str, queries: list[str], mix: dict[str, int], k: int, seed: int = 0) -> None:
        self.queries, self.k = queries, k
        items: dict[str, dict[str, Any]] = {}
        for q in queries[:24]:
            for hit in post_json(f"{url}/search", {"query": q, "k": 20})["results"]:
                items.setdefault(hit["item_id"], hit)
        if not items:
            raise RuntimeError(f"{url}/search returned no items; nothing to soak /similar with")
        self.items = sorted(items.values(), key=lambda h: h["item_id"])
        self.photos = {}
        for hit in self.items[:8]:
            if hit.get("image_url"):
                import base64
                import urllib.request

                # url: the 127.0.0.1 app under test; image_url is a path of that app.
                with urllib.request.urlopen(url + hit["image_url"], timeout=30) as r:  # nosec B310
                    self.photos[hit["item_id"]] = base64.b64encode(r.read()).decode()
        # The interleaving: the mix's endpoints spread over one cycle, shuffled once (seeded).
        self.cycle = [name for name, w in mix.items() for _ in range(w)]
        random.Random(seed).shuffle(self.cycle)  # the order of the traffic, not a secret

    def __call__(self, i: int) -> tuple[str, Any]:
        kind = self.cycle[i % len(self.cycle)]
        item = self.items[(i * 7) % len(self.items)]
        if kind == "search":
            return "/search", {"query": self.queries[i % len(self.queries)], "k": self.k}
        if kind == "similar":
            return "/similar", {"item_id": item["item_id"], "k": self.k}
        body: dict[str, Any] = {"title": item.get("title") or "item", "product_types": item.get("product_types") or ""}
        # Every fourth pass through the cycle sends photos (i % 4 would miss cycle positions).
        if (i // len(self.cycle)) % 4 == 0 and item["item_id"] in self.photos:
            body["images"] = [self.photos[item["item_id"]]]
        return "/embed/item", body


def post_json(url: str, body: Any) -> Any:
    import urllib.request

    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    # url: the 127.0.0.1 app under test.
    with urllib.request.urlopen(req, timeout=60) as r:  # nosec B310
        return json.loads(r.read())


ENDPOINT_OF = {"/search": "search", "/similar": "similar", "/embed/item": "embed_item"}


# ---------------------------------------------------------------------------------------- soak


def sample_rss(app: str, root: int | None) -> dict[int, tuple[str, float]]:
    """pid -> (deployment, RSS MB) of every replica process of ``app`` right now."""
    out = {}
    for pid, deployment in replica_pids(app, root).items():
        rss = rss_bytes(pid)
        if rss is not None:
            out[pid] = (deployment, rss / 2**20)
    return out


async def _soak(url: str, traffic: Traffic, concurrency: int, duration_s: float, window_s: float, max_requests: int,
                app: str, root: int | None) -> tuple[list[tuple[str, float, float, int, bytes]], list[tuple[float, dict]], float]:
    records: list[tuple[str, float, float, int, bytes]] = []
    samples: list[tuple[float, dict]] = []
    t0 = time.perf_counter()
    done = asyncio.Event()

    async def sampler() -> None:
        # One sample at each window boundary; reading process stats takes milliseconds, so it can share
        # the load generator's event loop without delaying answers noticeably.
        n = 0
        while True:
            samples.append((time.perf_counter() - t0, sample_rss(app, root)))
            n += 1
            try:
                await asyncio.wait_for(done.wait(), timeout=max(0.0, t0 + n * window_s - time.perf_counter()))
                break
            except TimeoutError:
                continue

    task = asyncio.create_task(sampler())
    try:
        await closed_loop(url, traffic, concurrency, max_requests, duration_s, lambda *r: records.append(r))
    finally:
        done.set()
        await task
    samples.append((time.perf_counter() - t0, sample_rss(app, root)))  # the end of the run
    return records, samples, t0


def percentile_ms(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(np.asarray(values) * 1e3, q)), 1) if values else None


def summarise(url: str, concurrency: int, duration_s: float, window_s: float, mix: dict[str, int],
              records: list[tuple[str, float, float, int, bytes]], samples: list[tuple[float, dict]], t0: float,
              rss_growth_limit: float) -> SoakReport:
    n_windows = max(1, math.ceil(duration_s / window_s - 1e-9))
    by_window: list[list[tuple[str, float, int]]] = [[] for _ in range(n_windows)]
    errors_by = dict.fromkeys(ENDPOINTS, 0)
    error_samples = []
    for path, start, end, status, raw in records:
        # A request belongs to the window in which it was sent: those sent at the very end may be
        # answered after the duration, and still count in the last window.
        w = min(int((start - t0) // window_s), n_windows - 1)
        by_window[w].append((ENDPOINT_OF[path], end - start, status))
        if status != 200:
            errors_by[ENDPOINT_OF[path]] += 1
            if len(error_samples) < 10:
                error_samples.append(f"{path} -> {status or 'no answer'}: {raw[:200].decode(errors='replace')}")
    windows = []
    for w, rows in enumerate(by_window):
        ok = [lat for _, lat, s in rows if s == 200]
        rss = [sum(mb for _, mb in snap.values()) for t, snap in samples if t <= (w + 1) * window_s + window_s / 2 and snap]
        windows.append(Window(
            w, round(w * window_s, 1), len(rows), sum(s != 200 for _, _, s in rows), round(len(ok) / window_s, 1),
            percentile_ms(ok, 50), percentile_ms(ok, 99),
            {e: percentile_ms([lat for name, lat, s in rows if name == e and s == 200], 99) for e in ENDPOINTS},
            round(rss[-1], 1) if rss else None,
        ))
    first, last = samples[0][1], samples[-1][1]
    replicas = []
    for pid in sorted(set(first) | set(last)):
        start_mb = first[pid][1] if pid in first else None
        end_mb = last[pid][1] if pid in last else None
        growth = round((end_mb - start_mb) / start_mb * 100, 2) if start_mb and end_mb is not None else None
        replicas.append(Replica(pid, (first.get(pid) or last[pid])[0], _r(start_mb), _r(end_mb), growth))
    errors = sum(errors_by.values())
    measured = [r.growth_pct for r in replicas if r.growth_pct is not None]
    checks = {
        "no failed requests": errors == 0,
        "every window has answers": all(w.requests - w.errors > 0 for w in windows),
        "replica memory measured at start and end": bool(measured),
        f"replica RSS growth < {rss_growth_limit:g}%": bool(measured) and max(measured) < rss_growth_limit,
    }
    return SoakReport(
        url, concurrency, duration_s, window_s, mix, len(records), errors, errors_by, error_samples, windows, replicas,
        [{"t_s": round(t, 1), "rss_mb": {str(pid): round(mb, 1) for pid, (_, mb) in snap.items()}} for t, snap in samples],
        checks,
    )


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def run_soak(url: str, *, concurrency: int = 32, duration_s: float = 600.0, window_s: float = 30.0, warmup_s: float = 30.0,
             max_requests: int = 1_000_000, mix: dict[str, int] | None = None, k: int = 10, app: str = "itemsage",
             root: int | None = None, rss_growth_limit: float = RSS_GROWTH_LIMIT_PCT) -> SoakReport:
    """Soak the app at ``url``; replica processes are looked for below pid ``root`` (None: anywhere)."""
    mix = mix or parse_mix(DEFAULT_MIX)
    traffic = Traffic(url, load_queries(url), mix, k)
    if warmup_s > 0:
        asyncio.run(closed_loop(url, traffic, concurrency, max_requests, warmup_s))
    if not sample_rss(app, root):
        raise RuntimeError(f"no Serve replica process of app {app!r} found (below pid {root}); see --app")
    records, samples, t0 = asyncio.run(_soak(url, traffic, concurrency, duration_s, window_s, max_requests, app, root))
    return summarise(url, concurrency, duration_s, window_s, mix, records, samples, t0, rss_growth_limit)


# -------------------------------------------------------------------------------------- report


def table(report: SoakReport) -> str:
    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f}"

    lines = [
        f"Soak of {report.url}: {report.requests} requests at concurrency {report.concurrency} for {report.duration_s:g} s "
        f"(mix {report.mix}), {report.errors} failed {report.errors_by_endpoint}",
        "",
        "| window | from s | requests | errors | answers/s | p50 ms | p99 ms | search p99 | similar p99 | embed_item p99 | replica RSS MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for w in report.windows:
        e = w.p99_ms_by_endpoint
        lines.append(f"| {w.index} | {w.start_s:g} | {w.requests} | {w.errors} | {w.rps} | {ms(w.p50_ms)} | {ms(w.p99_ms)} | "
                     f"{ms(e['search'])} | {ms(e['similar'])} | {ms(e['embed_item'])} | {ms(w.rss_mb_total)} |")
    lines += ["", "| replica | pid | RSS start MB | RSS end MB | growth % |", "|---|---:|---:|---:|---:|"]
    for r in report.replicas:
        lines.append(f"| {r.deployment} | {r.pid} | {ms(r.start_mb)} | {ms(r.end_mb)} | "
                     f"{'-' if r.growth_pct is None else f'{r.growth_pct:+.2f}'} |")
    lines.append("")
    lines += [f"{'PASS' if ok else 'FAIL'}: {name}" for name, ok in report.checks.items()]
    lines += [f"  error: {s}" for s in report.error_samples]
    return "\n".join(lines)


def plot(report: SoakReport, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display; a file only
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    mid = [w.start_s + report.window_s / 2 for w in report.windows]
    top.plot(mid, [w.p99_ms for w in report.windows], "k-o", label="all")
    for e in ENDPOINTS:
        top.plot(mid, [w.p99_ms_by_endpoint[e] for w in report.windows], "--", marker=".", label=e)
    top.set_ylabel("p99 latency (ms)")
    top.set_title(f"Soak: concurrency {report.concurrency}, {report.requests} requests, {report.errors} failed")
    top.legend()
    deployment = {str(r.pid): r.deployment for r in report.replicas}
    for pid in sorted({p for s in report.rss_samples for p in s["rss_mb"]}):
        pts = [(s["t_s"], s["rss_mb"][pid]) for s in report.rss_samples if pid in s["rss_mb"]]
        bottom.plot(*zip(*pts), marker=".", label=f"{deployment.get(pid, '?')} (pid {pid})")
    bottom.set_ylabel("replica RSS (MB)")
    bottom.set_xlabel("seconds since the start of the soak")
    bottom.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mix = parse_mix(args.mix)
    started = args.url is None
    try:
        if started:
            import socket

            port = args.port
            if not port:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    port = int(s.getsockname()[1])
            print("starting Ray Serve on 127.0.0.1 ...", file=sys.stderr, flush=True)
            url = start_serve(served_version(args.model_uri, args.index_uri, args.mlflow_tracking_uri, args.features), port, args.num_cpus)
        else:
            url = args.url.rstrip("/")
            get_json(f"{url}/healthz")
        report = run_soak(url, concurrency=args.concurrency, duration_s=args.duration, window_s=args.window,
                          warmup_s=args.warmup, max_requests=args.max_requests, mix=mix, k=args.k, app=args.app,
                          root=os.getpid() if started else None, rss_growth_limit=args.rss_growth_limit)
    finally:
        if started:
            import ray
            from deployments.app import shutdown_local

            if ray.is_initialized():
                shutdown_local()
                ray.shutdown()
    if args.plot:
        plot(report, args.plot)
    doc = json.dumps({**asdict(report), "ok": report.ok}, indent=2)
    if args.json == "-":
        print(doc)
    else:
        print(table(report))
        if args.json:
            Path(args.json).write_text(doc)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Live catalog writes under search load: time-to-visible on every replica, and what writes cost.

    nice -n 10 python experiments/bench/live.py                    # after `make demo`, ~2 min
    python experiments/bench/live.py --phase-seconds 30 --json live.json
    python experiments/bench/live.py --url http://127.0.0.1:8000 --token "$ITEMSAGE_WRITE_TOKEN"

Without ``--url`` it starts a local Ray (no dashboard) and deploys deployments/serve_config.yaml
on 127.0.0.1 at a free port with ``--retrievers`` Retriever replicas (default 2) and a fresh write
token, and shuts both down at the end.

Load: ``--concurrency`` (8) closed-loop ``POST /search`` clients, plus one client cycling
``/similar`` and ``/recommend`` over catalog items, the same in every phase. Phases alternate
A B B A (A: reads only; B: reads plus writes), ``--phase-seconds`` each, so load drifting on a
shared machine hits both alike. Writes in B are open loop: ``--text-writes-per-s`` (20) text-only
``PUT /items/{id}`` (every fifth a ``DELETE`` of an item written before, every seventh an update)
and ``--image-writes-per-s`` (2) multipart PUTs with a catalog photo.

Time-to-visible: every read answer names the Retriever replica that answered and the change-log
position it had applied when the request started (``X-Itemsage-Replica``,
``X-Itemsage-Applied-Seq``; a replica applies the log in order). A write acknowledged at time
``t`` with log position ``seq`` is visible on a replica from the first answer of that replica
with applied seq >= ``seq``, received at ``t'``; its time-to-visible is the largest ``t' - t``
over all replicas (0 when a replica had it before the client got its 200). Those answers come
from ``/search``, ``/similar`` and ``/recommend`` alike; each replica answers every few tens of
milliseconds, the resolution of the figure. The headers are checked against the items
themselves at the end: for written items, ``GET /items/{id}`` from each replica that claims to
have applied the write must answer it (upserted) or 404 (deleted).

Printed: search throughput with and without writes and their ratio (target >= 0.8x), write
latency, time-to-visible p50/p99 for text and image writes (targets 1 s and 2 s), failed
requests. Exit status 0 when every target holds and no request failed.
"""

# No `from __future__ import annotations`: @dataclass looks the module up in sys.modules, which a
# module loaded from its path (the tests) need not be in.
import argparse
import asyncio
import bisect
import json
import os
import random
import secrets
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import REPO, get_json, load_queries, process_cpu, served_version  # noqa: E402

REPLICA = "X-Itemsage-Replica"
APPLIED = "X-Itemsage-Applied-Seq"
TARGET_RATIO = 0.8
TARGET_TEXT_S = 1.0
TARGET_IMAGE_S = 2.0
TITLES = [
    "linen summer shirt",
    "leather ankle boots",
    "floral maxi dress",
    "running shoes",
    "denim jacket",
    "silk scarf",
    "canvas backpack",
    "analog steel watch",
    "wool beanie",
    "cotton chinos",
]
COLOURS = ["red", "navy", "black", "olive", "white", "beige", "grey"]


@dataclass
class Write:
    item_id: str
    kind: str  # text | image | delete
    sent: float
    acked: float | None = None
    seq: int | None = None
    status: int = 0
    visible_s: float | None = None  # on every replica


@dataclass
class Phase:
    name: str
    writes: bool
    seconds: float
    searches: int = 0
    search_errors: int = 0
    probe_errors: int = 0
    search_latencies: list[float] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds per kind of process (app started here)

    @property
    def rps(self) -> float:
        return self.searches / self.seconds if self.seconds else 0.0


class Samples:
    """(received at, applied seq) per replica, from every read answer."""

    def __init__(self) -> None:
        self.by_replica: dict[str, tuple[list[float], list[int]]] = {}

    def add(self, headers: Any, received: float) -> None:
        replica, seq = headers.get(REPLICA), headers.get(APPLIED)
        if replica is None or seq is None:
            return
        times, seqs = self.by_replica.setdefault(replica, ([], []))
        # Keep seqs non-decreasing (a slower answer may carry an older seq): running maximum.
        times.append(received)
        seqs.append(max(int(seq), seqs[-1] if seqs else 0))

    def visible_at(self, replica: str, seq: int) -> float | None:
        times, seqs = self.by_replica[replica]
        i = bisect.bisect_left(seqs, seq)
        return times[i] if i < len(times) else None

    def claims(self, replica: str, seq: int) -> bool:
        return self.visible_at(replica, seq) is not None


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def ms(v: float | None) -> str:
    return "-" if v is None else f"{1000 * v:.0f} ms"


class Bench:
    def __init__(
        self, url: str, token: str, args: argparse.Namespace, queries: list[str], items: list[str], images: list[bytes]
    ) -> None:
        self.url, self.args, self.queries, self.items, self.images = url, args, queries, items, images
        self.auth = {"Authorization": f"Bearer {token}"}
        self.samples = Samples()
        self.writes: list[Write] = []
        self.live: dict[str, None] = {}  # acknowledged upserts not deleted since, in order
        self.busy: set[str] = set()  # ids with a write in flight: never picked for another one
        self.run_id = secrets.token_hex(3)
        self.rng = random.Random(args.seed)
        self.write_errors: list[str] = []

    async def searcher(self, session: Any, phase: Phase, deadline: float, i: int) -> None:
        import aiohttp

        n = 0
        while time.perf_counter() < deadline:
            body = {"query": self.queries[(i * 7919 + n) % len(self.queries)], "k": 10}
            n += 1
            t0 = time.perf_counter()
            try:
                async with session.post(f"{self.url}/search", json=body) as r:
                    await r.read()
                    t1 = time.perf_counter()
                    self.samples.add(r.headers, t1)
                    if r.status == 200:
                        phase.searches += 1
                        phase.search_latencies.append(t1 - t0)
                        continue
            except (TimeoutError, aiohttp.ClientError):
                pass
            phase.search_errors += 1

    async def prober(self, session: Any, phase: Phase, deadline: float) -> None:
        """``/similar`` and ``/recommend`` in turn: more samples, from the other read paths."""
        import aiohttp

        n = 0
        while time.perf_counter() < deadline:
            item = self.items[n % len(self.items)]
            path, body = (
                ("/similar", {"item_id": item, "k": 10})
                if n % 2 == 0
                else ("/recommend", {"history": [item, self.items[(n * 31 + 1) % len(self.items)]], "k": 10})
            )
            n += 1
            try:
                async with session.post(f"{self.url}{path}", json=body) as r:
                    await r.read()
                    self.samples.add(r.headers, time.perf_counter())
                    if r.status == 200:
                        continue
            except (TimeoutError, aiohttp.ClientError):
                pass
            phase.probe_errors += 1

    async def write_one(self, session: Any, w: Write, image: bytes | None) -> None:
        import aiohttp

        url = f"{self.url}/items/{w.item_id}"
        fields = {
            "title": f"{self.rng.choice(COLOURS)} {self.rng.choice(TITLES)}",
            "brand": "livebench",
            "product_types": "apparel",
        }
        try:
            if w.kind == "delete":
                req = session.delete(url, headers=self.auth)
            elif image is not None:
                form = aiohttp.FormData()
                for k, v in fields.items():
                    form.add_field(k, v)
                form.add_field("image", image, filename="photo.jpg", content_type="image/jpeg")
                req = session.put(url, data=form, headers=self.auth)
            else:
                req = session.put(url, json=fields, headers=self.auth)
            async with req as r:
                raw = await r.read()
                w.status = r.status
                if r.status == 200:
                    w.acked = time.perf_counter()
                    w.seq = int(json.loads(raw)["seq"])
                else:
                    self.write_errors.append(f"{w.kind} {w.item_id}: {r.status} {raw[:200]!r}")
        except (TimeoutError, aiohttp.ClientError) as e:
            self.write_errors.append(f"{w.kind} {w.item_id}: {e!r}")
        if w.acked is not None and w.kind != "delete":
            self.live[w.item_id] = None
        self.busy.discard(w.item_id)

    async def writer(self, session: Any, deadline: float, per_s: float, kind: str) -> None:
        """Open loop: one write every ``1/per_s`` s, each in its own task (a slow one delays none)."""
        if per_s <= 0:
            return
        tasks: list[asyncio.Task[None]] = []
        n, start = 0, time.perf_counter()
        while time.perf_counter() < deadline and len(self.writes) < self.args.max_writes:
            w_kind, image = kind, None
            idle = [i for i in self.live if i not in self.busy] if kind == "text" else []
            if n % 5 == 4 and idle:
                w_kind, item_id = "delete", self.rng.choice(idle)
                del self.live[item_id]
            elif n % 7 == 6 and idle:
                item_id = self.rng.choice(idle)  # an update of a live item
            else:
                item_id = f"live-{self.run_id}-{kind}-{n}"
            self.busy.add(item_id)
            if w_kind == "image":
                image = self.images[n % len(self.images)]
            w = Write(item_id, w_kind, time.perf_counter())
            self.writes.append(w)
            tasks.append(asyncio.create_task(self.write_one(session, w, image)))
            n += 1
            await asyncio.sleep(max(0.0, start + n / per_s - time.perf_counter()))
        await asyncio.gather(*tasks)

    async def phase(self, session: Any, phase: Phase) -> None:
        deadline = time.perf_counter() + phase.seconds
        jobs = [self.searcher(session, phase, deadline, i) for i in range(self.args.concurrency)]
        jobs.append(self.prober(session, phase, deadline))
        if phase.writes:
            # Writes stop a little before the reads, so that every write is acknowledged and seen
            # while the full read load still samples both replicas.
            stop = deadline - self.args.write_margin_seconds
            jobs.append(self.writer(session, stop, self.args.text_writes_per_s, "text"))
            jobs.append(self.writer(session, stop, self.args.image_writes_per_s, "image"))
        t0, cpu0 = time.perf_counter(), process_cpu()
        await asyncio.gather(*jobs)
        phase.seconds = time.perf_counter() - t0  # the writes' tail may run past the deadline
        cpu1 = process_cpu()
        phase.cpu_s = {k: round(cpu1[k] - cpu0.get(k, 0.0), 2) for k in sorted(cpu1)}

    async def settle(self, session: Any, timeout_s: float) -> None:
        """Probe until every replica has answered past the last acknowledged write (bounded)."""
        last = max((w.seq for w in self.writes if w.seq is not None), default=0)
        deadline = time.perf_counter() + timeout_s
        dummy = Phase("settle", False, 0.0)
        while time.perf_counter() < deadline:
            if self.samples.by_replica and all(self.samples.claims(r, last) for r in self.samples.by_replica):
                return
            # Several at once: a lone sequential client may be routed to one replica only.
            until = time.perf_counter() + 0.5
            await asyncio.gather(*(self.prober(session, dummy, until) for _ in range(self.args.concurrency)))

    async def check_claims(self, session: Any, limit: int) -> dict[str, int]:
        """GET /items/{id} for written items: a replica whose applied seq covers the item's last
        write must answer it (upsert) or 404 (delete). Returns counts of checks and violations."""
        last: dict[str, Write] = {}
        for w in self.writes:
            if w.seq is not None and (w.item_id not in last or w.seq > last[w.item_id].seq):  # type: ignore[operator]
                last[w.item_id] = w
        checked = violations = 0
        for w in list(last.values())[:limit]:
            async with session.get(f"{self.url}/items/{w.item_id}") as r:
                await r.read()
                replica, seq = r.headers.get(REPLICA), int(r.headers.get(APPLIED, "-1"))
                if replica is None or seq < (w.seq or 0):
                    continue
                checked += 1
                if r.status != (404 if w.kind == "delete" else 200):
                    violations += 1
        return {"checked": checked, "violations": violations}

    def time_to_visible(self) -> None:
        replicas = sorted(self.samples.by_replica)
        for w in self.writes:
            if w.seq is None or w.acked is None:
                continue
            seen = [self.samples.visible_at(r, w.seq) for r in replicas]
            if replicas and all(t is not None for t in seen):
                w.visible_s = max(0.0, max(seen) - w.acked)  # type: ignore[type-var]


async def run(url: str, token: str, args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp

    queries = load_queries(url)
    items = sorted(
        {h["item_id"] for q in queries[:40] for h in post_json(url, "/search", {"query": q, "k": 10})["results"]}
    )
    images = [p.read_bytes() for p in sorted(Path(args.images).glob("*.jpg"))[:20]]
    if not images and args.image_writes_per_s > 0:
        raise SystemExit(f"no *.jpg under {args.images} for the image writes")
    bench = Bench(url, token, args, queries, items, images)
    phases = [
        Phase(f"{n}{i}", w, args.phase_seconds)
        for i, (n, w) in enumerate(
            [("reads", False), ("writes", True), ("writes", True), ("reads", False)][: 2 * args.rounds]
        )
    ]
    connector = aiohttp.TCPConnector(limit=args.concurrency + 64)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        await bench.phase(session, Phase("warmup", False, args.warmup_seconds))
        for p in phases:
            await bench.phase(session, p)
            print(
                f"  {p.name}: {p.searches} searches in {p.seconds:.1f}s ({p.rps:.1f}/s), "
                f"{p.search_errors} failed searches, {p.probe_errors} failed probes",
                flush=True,
            )
            print("    CPU s: " + ", ".join(f"{k} {v:.1f}" for k, v in p.cpu_s.items() if v >= 0.05), flush=True)
        await bench.settle(session, 15.0)
        claims = await bench.check_claims(session, 400)
    bench.time_to_visible()
    return report(bench, phases, claims)


def post_json(url: str, path: str, body: Any) -> Any:
    import urllib.request

    req = urllib.request.Request(url + path, json.dumps(body).encode(), {"content-type": "application/json"})
    # url: the http://127.0.0.1 server this benchmark started itself (or was pointed at).
    with urllib.request.urlopen(req, timeout=60) as r:  # nosec B310
        return json.loads(r.read())


def report(bench: Bench, phases: list[Phase], claims: dict[str, int]) -> dict[str, Any]:
    reads = [p for p in phases if not p.writes]
    writes = [p for p in phases if p.writes]
    rps_reads = sum(p.searches for p in reads) / sum(p.seconds for p in reads)
    rps_writes = sum(p.searches for p in writes) / sum(p.seconds for p in writes)
    ratio = rps_writes / rps_reads if rps_reads else 0.0
    acked = [w for w in bench.writes if w.acked is not None]
    ttv = {
        k: [w.visible_s for w in acked if w.kind == k and w.visible_s is not None] for k in ("text", "delete", "image")
    }
    text_ttv = ttv["text"] + ttv["delete"]
    never = [w for w in acked if w.visible_s is None]
    t0 = min((w.sent for w in bench.writes), default=0.0)
    out = {
        "replicas": sorted(bench.samples.by_replica),
        "search_rps_without_writes": rps_reads,
        "search_rps_with_writes": rps_writes,
        "throughput_ratio": ratio,
        "search_p50_s": {
            "without": pct([x for p in reads for x in p.search_latencies], 50),
            "with": pct([x for p in writes for x in p.search_latencies], 50),
        },
        "failed_searches": sum(p.search_errors for p in phases),
        "failed_probes": sum(p.probe_errors for p in phases),
        "writes_sent": len(bench.writes),
        "writes_acked": {k: sum(1 for w in acked if w.kind == k) for k in ("text", "delete", "image")},
        "writes_failed": len(bench.writes) - len(acked),
        "write_errors": bench.write_errors[:10],
        "write_latency_p50_s": pct([w.acked - w.sent for w in acked], 50),  # type: ignore[operator]
        "write_latency_p99_s": pct([w.acked - w.sent for w in acked], 99),  # type: ignore[operator]
        "ttv_text_p50_s": pct(text_ttv, 50),
        "ttv_text_p99_s": pct(text_ttv, 99),
        "ttv_image_p50_s": pct(ttv["image"], 50),
        "ttv_image_p99_s": pct(ttv["image"], 99),
        "ttv_text_max_s": max(text_ttv, default=None),
        "ttv_image_max_s": max(ttv["image"], default=None),
        "never_visible": len(never),
        # The resolution of the figures: the longest a replica went without answering a read.
        "max_sample_gap_s": {
            r: round(float(max(np.diff(t), default=0.0)), 3) for r, (t, _) in bench.samples.by_replica.items()
        },
        "queue_len_cache_s": os.environ.get("RAY_SERVE_QUEUE_LENGTH_CACHE_TIMEOUT_S", "10 (Serve's default)"),
        "ttv_p99_s_by_kind": {k: pct(v, 99) for k, v in ttv.items()},
        # The slowest writes, times relative to the first write: where a tail comes from.
        "slowest": [
            {
                "kind": w.kind,
                "item_id": w.item_id,
                "seq": w.seq,
                "sent": round(w.sent - t0, 3),
                "acked": round(w.acked - t0, 3),
                "visible_s": round(w.visible_s, 3),  # type: ignore[operator]
                "seen": {
                    r: None if (t := bench.samples.visible_at(r, w.seq)) is None else round(t - t0, 3)  # type: ignore[arg-type]
                    for r in sorted(bench.samples.by_replica)
                },
            }
            for w in sorted((w for w in acked if w.visible_s is not None), key=lambda w: -w.visible_s)[:8]  # type: ignore[operator]
        ],
        "claims_checked": claims["checked"],
        "claims_violated": claims["violations"],
        "phases": [{k: v for k, v in asdict(p).items() if k != "search_latencies"} for p in phases],
    }
    checks = {
        f"search throughput with writes >= {TARGET_RATIO}x without": ratio >= TARGET_RATIO,
        f"text time-to-visible p99 <= {TARGET_TEXT_S:.0f} s": (out["ttv_text_p99_s"] or 1e9) <= TARGET_TEXT_S,
        f"image time-to-visible p99 <= {TARGET_IMAGE_S:.0f} s": (out["ttv_image_p99_s"] or 1e9) <= TARGET_IMAGE_S
        if bench.args.image_writes_per_s > 0
        else True,
        "every acknowledged write visible on every replica": not never
        and len(out["replicas"]) >= bench.args.retrievers,
        "replica headers agree with GET /items": claims["violations"] == 0 and claims["checked"] > 0,
        "no failed request": out["failed_searches"] == 0 and out["failed_probes"] == 0 and out["writes_failed"] == 0,
    }
    out["checks"] = checks
    return out


def print_report(r: dict[str, Any]) -> None:
    print(f"\nreplicas answering: {len(r['replicas'])}")
    print(
        f"search throughput: {r['search_rps_without_writes']:.1f}/s without writes, "
        f"{r['search_rps_with_writes']:.1f}/s with: ratio {r['throughput_ratio']:.2f}x"
    )
    print(f"search p50: {ms(r['search_p50_s']['without'])} without, {ms(r['search_p50_s']['with'])} with writes")
    a = r["writes_acked"]
    print(
        f"writes acknowledged: {a['text']} text upserts, {a['delete']} deletes, {a['image']} image upserts; "
        f"{r['writes_failed']} failed; latency p50 {ms(r['write_latency_p50_s'])}, p99 {ms(r['write_latency_p99_s'])}"
    )
    print(
        f"time-to-visible on every replica: text p50 {ms(r['ttv_text_p50_s'])}, p99 {ms(r['ttv_text_p99_s'])} "
        f"(max {ms(r['ttv_text_max_s'])}); image p50 {ms(r['ttv_image_p50_s'])}, p99 {ms(r['ttv_image_p99_s'])} "
        f"(max {ms(r['ttv_image_max_s'])}); never visible: {r['never_visible']}"
    )
    print(f"replica headers checked against GET /items: {r['claims_checked']} checked, {r['claims_violated']} wrong")
    print(
        f"longest a replica went unsampled: {r['max_sample_gap_s']} s (router queue-length cache: {r['queue_len_cache_s']} s)"
    )
    print(f"failed: {r['failed_searches']} searches, {r['failed_probes']} probes")
    for name, ok in r["checks"].items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    for e in r["write_errors"]:
        print(f"  write error: {e}")


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", help="an app that is already up (default: start one on 127.0.0.1)")
    p.add_argument(
        "--token",
        default=os.environ.get("ITEMSAGE_WRITE_TOKEN"),
        help="write token for --url (default $ITEMSAGE_WRITE_TOKEN)",
    )
    p.add_argument("--model-uri", default="models:/itemsage/latest")
    p.add_argument("--index-uri", default=None, help="default: the model URI (its logged index)")
    p.add_argument("--mlflow-tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    p.add_argument("--features", default=None, help="features directory (default: the model manifest's)")
    p.add_argument("--retrievers", type=int, default=2, help="Retriever replicas of the app started here (>= 2)")
    p.add_argument(
        "--live-dir", default=None, help="serve.live.dir of the app started here (default: a fresh temporary one)"
    )
    p.add_argument("--changelog-uri", default="", help="serve.live.changelog_uri (default: SQLite in the live dir)")
    p.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of the local Ray started here")
    p.add_argument("--concurrency", type=int, default=8, help="closed-loop /search clients")
    p.add_argument("--text-writes-per-s", type=float, default=20.0)
    p.add_argument("--image-writes-per-s", type=float, default=2.0)
    p.add_argument("--phase-seconds", type=float, default=20.0, help="length of each phase (A B B A)")
    p.add_argument("--rounds", type=int, default=2, choices=(1, 2), help="1: A B; 2: A B B A")
    p.add_argument("--warmup-seconds", type=float, default=5.0)
    p.add_argument(
        "--queue-len-cache-s",
        type=float,
        default=1.0,
        help="RAY_SERVE_QUEUE_LENGTH_CACHE_TIMEOUT_S of the app started here (Serve's default: 10)",
    )
    p.add_argument(
        "--write-margin-seconds", type=float, default=3.0, help="writes stop this long before a write phase ends"
    )
    p.add_argument("--max-writes", type=int, default=5000, help="bound on writes in all")
    p.add_argument(
        "--images", default=str(REPO / "data" / "sample" / "fashion" / "images"), help="*.jpg for image writes"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the report here")
    args = p.parse_args()

    started = args.url is None
    if started:
        if args.retrievers < 2:
            p.error("--retrievers must be >= 2: visibility is measured on every replica")
        from itemsage.cluster.ports import free_port

        token = secrets.token_urlsafe(24)
        os.environ["ITEMSAGE_WRITE_TOKEN"] = token  # before Ray starts: the replicas inherit it
        # Serve's router remembers each replica's queue length for 10 s by default; after a burst
        # of writes made one Retriever look busy, it sent every read to the other one for those
        # 10 s, so nothing could be seen of the first (measured: a 10.4 s "time-to-visible" of
        # writes that replica had applied long before). Re-probing after 1 s keeps both sampled.
        os.environ.setdefault("RAY_SERVE_QUEUE_LENGTH_CACHE_TIMEOUT_S", str(args.queue_len_cache_s))
        sys.path.insert(0, str(REPO))
        from deployments.app import run_local

        version = served_version(
            args.model_uri, args.index_uri or args.model_uri, args.mlflow_tracking_uri, args.features
        )
        deployments = {"Retriever": {"num_replicas": args.retrievers}}
        live_dir = args.live_dir or tempfile.mkdtemp(prefix="itemsage-live-bench-")
        live = {"enabled": True, "dir": str(Path(live_dir).absolute()), "changelog_uri": args.changelog_uri}
        url = run_local(
            version,
            host="127.0.0.1",
            port=free_port(),
            serve_cfg={"live": live},
            deployments=deployments,
            num_cpus=args.num_cpus,
            timeout_s=600,
        )
        print(
            f"serving {get_json(url + '/version')['model']['version']} at {url} with {args.retrievers} Retriever replicas"
        )
    else:
        url, token = args.url.rstrip("/"), args.token
        if not token:
            p.error("--token (or $ITEMSAGE_WRITE_TOKEN) is needed with --url")
    try:
        result = asyncio.run(run(url, token, args))
    finally:
        if started:
            from deployments.app import shutdown_local

            shutdown_local(drain=False)
    print_report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if all(result["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())

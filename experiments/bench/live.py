"""Live catalog writes under search load: time-to-visible on every replica, and what writes cost.

    nice -n 10 python experiments/bench/live.py                    # after `make demo`, ~3 min
    python experiments/bench/live.py --phase-seconds 30 --json live.json
    python experiments/bench/live.py --url http://127.0.0.1:8000 --token "$ITEMSAGE_WRITE_TOKEN"

Without ``--url`` it starts a local Ray (no dashboard) and deploys deployments/serve_config.yaml
on 127.0.0.1 at a free port with ``--retrievers`` Retriever replicas (default 2) and a fresh write
token, and shuts both down at the end.

Load: ``--concurrency`` (8) closed-loop ``POST /search`` clients, plus one client cycling
``/similar`` and ``/recommend`` over catalog items, plus the checker below, the same in every
phase. Phases alternate A B B A (A: reads only; B: reads plus writes), ``--phase-seconds`` each,
so load drifting on a shared machine hits both alike. Writes in B are open loop:
``--text-writes-per-s`` (20) text-only ``PUT /items/{id}`` (every fifth a ``DELETE`` of an item
written before, every seventh an update) and ``--image-writes-per-s`` (2) multipart PUTs with a
catalog photo.

Time-to-visible is measured where it happens. Every Retriever replica stamps each step it applies
of the change log with the wall-clock time the step's index lock was released (from then on its
searches see every change up to that step's seq) and answers its recent steps at
``GET /live/applied``. The benchmark collects them from every replica (concurrent calls until each
replica has answered; the stamps do not depend on when a call reaches a replica). A write
acknowledged at ``t`` (the client got its 200) with log position ``seq`` is visible on a replica
from the first of its steps reaching ``seq``; its time-to-visible is the latest of those over all
replicas minus ``t`` (0 when every replica had it before the client got the 200). The benchmark
and the replicas share a clock when it starts the app itself; with ``--url`` each replica's clock
offset is estimated from its ``now`` (the answer with the shortest round trip) and taken out.

The stamps are checked against real answers. A checker sends ``--check-per-s`` requests a second,
cycling ``/search`` (the title of a recent write), ``/similar`` and ``/recommend``, all with
``k = --check-k`` (the API's ``max_k``, more than the demo catalog holds: an answer then holds
every item, so "returned" is exact, not a ranking question). Every read answer names the replica
and the log position it had applied when the request started (``X-Itemsage-Replica``,
``X-Itemsage-Applied-Seq``). For every exhaustive answer: each item written here must be in it
exactly when its last acknowledged write at or below that position is an upsert, and that
position must be at least what the replica's stamps say it had applied when the request was
sent. Finally ``GET /items/{id}`` of written items is checked against the headers the same way.
What the router happened to show (a replica counts as having applied a write from its first
answer past it) is printed too, as an upper bound: its resolution is how often the router sends a
read to each replica.

Printed: search throughput with and without writes and their ratio (target >= 0.8x), write
latency, time-to-visible p50/p99 for text and image writes (targets 1 s and 2 s), the checks, and
PASS/FAIL per target. Exit status 0 when every target holds and no request failed.
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
    sent: float  # wall clock (time.time()), like the replicas' stamps
    acked: float | None = None
    seq: int | None = None
    status: int = 0
    visible_s: float | None = None  # on every replica, from the replicas' own stamps
    observed_s: float | None = None  # on every replica, as the router happened to show it


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


@dataclass
class Answer:
    """One exhaustive-k read answer of the checker: who answered, at what applied seq, what."""

    path: str
    replica: str
    seq: int  # applied seq of the replica when the request started (header)
    sent: float
    received: float
    ids: frozenset[str]
    exhaustive: bool  # fewer results than k: every item of the index (minus the query's own) is in it


class Samples:
    """(received at, applied seq) per replica, from every read answer's headers."""

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


class Timelines:
    """Each replica's apply steps (``GET /live/applied``): (seq, applied_at) in seq order, and the
    replica's estimated clock offset (its clock minus ours)."""

    def __init__(self) -> None:
        self.steps: dict[str, dict[int, float]] = {}
        self.applied: dict[str, int] = {}
        self.offset: dict[str, tuple[float, float]] = {}  # replica -> (round trip, offset)

    def add(self, replica: str, body: dict[str, Any], sent: float, received: float) -> None:
        own = self.steps.setdefault(replica, {})
        for s in body["steps"]:
            own[int(s["seq"])] = float(s["applied_at"])
        self.applied[replica] = max(self.applied.get(replica, 0), int(body["applied_seq"]))
        rtt = received - sent
        if replica not in self.offset or rtt < self.offset[replica][0]:
            self.offset[replica] = (rtt, float(body["now"]) - (sent + received) / 2)

    def _sorted(self, replica: str) -> tuple[list[int], list[float]]:
        items = sorted(self.steps.get(replica, {}).items())
        return [s for s, _ in items], [t for _, t in items]

    def visible_at(self, replica: str, seq: int, correct_clock: bool) -> float | None:
        """When ``replica`` could first answer with ``seq`` applied (our clock), or None."""
        seqs, times = self._sorted(replica)
        i = bisect.bisect_left(seqs, seq)
        if i == len(seqs):
            return None
        # Steps are stamped in apply order: a later step's stamp is never earlier.
        return times[i] - (self.offset[replica][1] if correct_clock else 0.0)

    def applied_by(self, replica: str, when: float, correct_clock: bool) -> int:
        """The highest seq ``replica``'s stamps say it had applied at ``when`` (our clock)."""
        seqs, times = self._sorted(replica)
        shift = self.offset[replica][1] if correct_clock else 0.0
        i = bisect.bisect_right([t - shift for t in times], when)
        return seqs[i - 1] if i else 0


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
        self.timelines = Timelines()
        self.answers: list[Answer] = []
        self.writes: list[Write] = []
        self.live: dict[str, None] = {}  # acknowledged upserts not deleted since, in order
        self.busy: set[str] = set()  # ids with a write in flight: never picked for another one
        self.titles: dict[str, str] = {}  # title of each item's last upsert sent
        self.run_id = secrets.token_hex(3)
        self.rng = random.Random(args.seed)
        self.write_errors: list[str] = []
        self.warm: dict[str, float] = {}  # latency of the warm-up writes, by kind
        self.correct_clock = bool(getattr(args, "url", None))  # another machine's clock

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
                    self.samples.add(r.headers, time.time())
                    if r.status == 200:
                        phase.searches += 1
                        phase.search_latencies.append(t1 - t0)
                        continue
            except (TimeoutError, aiohttp.ClientError):
                pass
            phase.search_errors += 1

    async def prober(self, session: Any, phase: Phase, deadline: float) -> None:
        """``/similar`` and ``/recommend`` in turn: the other read paths under load."""
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
                    self.samples.add(r.headers, time.time())
                    if r.status == 200:
                        continue
            except (TimeoutError, aiohttp.ClientError):
                pass
            phase.probe_errors += 1

    def check_request(self, n: int) -> tuple[str, dict[str, Any]]:
        """The checker's ``n``-th request: all three read paths, each asking for every item."""
        k = self.args.check_k
        item = self.items[n % len(self.items)]
        if n % 3 == 0:
            recent = [self.titles[i] for i in list(self.live)[-20:] if i in self.titles]
            query = recent[n % len(recent)] if recent else self.queries[n % len(self.queries)]
            return "/search", {"query": query, "k": k}
        if n % 3 == 1:
            return "/similar", {"item_id": item, "k": k}
        return "/recommend", {"history": [item], "k": k}

    async def checker(self, session: Any, phase: Phase, deadline: float) -> None:
        """Open loop, ``--check-per-s``: exhaustive answers, checked against the writes at the end."""
        import aiohttp

        if self.args.check_per_s <= 0:
            return
        n, start = 0, time.perf_counter()
        while time.perf_counter() < deadline:
            path, body = self.check_request(n)
            n += 1
            sent = time.time()
            try:
                async with session.post(f"{self.url}{path}", json=body) as r:
                    raw = await r.read()
                    self.samples.add(r.headers, time.time())
                    replica, seq = r.headers.get(REPLICA), r.headers.get(APPLIED)
                    if r.status == 200 and replica is not None and seq is not None:
                        hits = json.loads(raw)["results"]
                        ids = frozenset(h["item_id"] for h in hits)
                        answer = Answer(path, replica, int(seq), sent, time.time(), ids, len(hits) < body["k"])
                        self.answers.append(answer)
                    else:
                        phase.probe_errors += 1
            except (TimeoutError, aiohttp.ClientError):
                phase.probe_errors += 1
            await asyncio.sleep(max(0.0, start + n / self.args.check_per_s - time.perf_counter()))

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
                    w.acked = time.time()
                    w.seq = int(json.loads(raw)["seq"])
                else:
                    self.write_errors.append(f"{w.kind} {w.item_id}: {r.status} {raw[:200]!r}")
        except (TimeoutError, aiohttp.ClientError) as e:
            self.write_errors.append(f"{w.kind} {w.item_id}: {e!r}")
        if w.acked is not None and w.kind != "delete":
            self.live[w.item_id] = None
            self.titles[w.item_id] = fields["title"]
        self.busy.discard(w.item_id)

    async def warm_writes(self, session: Any) -> None:
        """One text and one photo write before the warm-up phase, as the warm-up reads do for
        reads: the first write of a freshly started app pays one-time costs (the first item-tower
        and backbone forwards, the first log transaction). Timed and reported, not counted."""
        for kind, image in (("text", None), ("image", self.images[0] if self.images else None)):
            w = Write(f"live-{self.run_id}-warm-{kind}", kind, time.time())
            await self.write_one(session, w, image)
            if w.acked is None:
                raise SystemExit(f"the warm-up {kind} write failed: {self.write_errors[-1:]}")
            self.warm[kind] = w.acked - w.sent
            self.live.pop(w.item_id, None)  # not picked for updates or deletes: not judged

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
            w = Write(item_id, w_kind, time.time())
            self.writes.append(w)
            tasks.append(asyncio.create_task(self.write_one(session, w, image)))
            n += 1
            await asyncio.sleep(max(0.0, start + n / per_s - time.perf_counter()))
        await asyncio.gather(*tasks)

    async def phase(self, session: Any, phase: Phase) -> None:
        deadline = time.perf_counter() + phase.seconds
        jobs = [self.searcher(session, phase, deadline, i) for i in range(self.args.concurrency)]
        jobs.append(self.prober(session, phase, deadline))
        jobs.append(self.checker(session, phase, deadline))
        if phase.writes:
            # Writes stop a little before the reads, so the last ones are checked under load too.
            stop = deadline - self.args.write_margin_seconds
            jobs.append(self.writer(session, stop, self.args.text_writes_per_s, "text"))
            jobs.append(self.writer(session, stop, self.args.image_writes_per_s, "image"))
        t0, cpu0 = time.perf_counter(), process_cpu()
        await asyncio.gather(*jobs)
        phase.seconds = time.perf_counter() - t0  # the writes' tail may run past the deadline
        cpu1 = process_cpu()
        phase.cpu_s = {k: round(cpu1[k] - cpu0.get(k, 0.0), 2) for k in sorted(cpu1)}

    async def collect_steps(self, session: Any, timeout_s: float) -> None:
        """``GET /live/applied`` until every replica (seen in any answer, at least ``--retrievers``)
        has reported steps up to the last acknowledged write (bounded by ``timeout_s``)."""
        last = max((w.seq for w in self.writes if w.seq is not None), default=0)
        deadline = time.perf_counter() + timeout_s

        async def one() -> None:
            after = min((max(self.timelines.steps.get(r, {0: 0.0})) for r in self.samples.by_replica), default=0)
            sent = time.time()
            async with session.get(f"{self.url}/live/applied", params={"after": str(after)}) as r:
                body = await r.json()
                received = time.time()
                replica = r.headers.get(REPLICA)
                if r.status == 200 and replica is not None:
                    self.timelines.add(replica, body, sent, received)

        def done() -> bool:
            replicas = set(self.samples.by_replica) | set(self.timelines.steps)
            return len(replicas) >= self.args.retrievers and all(
                self.timelines.applied.get(r, 0) >= last for r in replicas
            )

        while True:
            # Several at once: a lone sequential client may be routed to one replica only.
            await asyncio.gather(*(one() for _ in range(self.args.concurrency)))
            if done() or time.perf_counter() > deadline:
                return

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

    def applied_at(self, replica: str, w: Write, t0: float) -> float | None:
        """When ``replica`` applied ``w``, in seconds after ``t0`` (for the report)."""
        t = self.timelines.visible_at(replica, w.seq or 0, self.correct_clock)
        return None if t is None else round(t - t0, 3)

    def replicas(self) -> list[str]:
        return sorted(set(self.samples.by_replica) | set(self.timelines.steps))

    def time_to_visible(self) -> None:
        """Each acknowledged write's time-to-visible on every replica: from the replicas' stamps
        (``visible_s``), and as the router showed it (``observed_s``, an upper bound)."""
        replicas = self.replicas()
        for w in self.writes:
            if w.seq is None or w.acked is None or not replicas:
                continue
            stamped = [self.timelines.visible_at(r, w.seq, self.correct_clock) for r in replicas]
            if all(t is not None for t in stamped):
                w.visible_s = max(0.0, max(stamped) - w.acked)  # type: ignore[type-var]
            seen = [self.samples.visible_at(r, w.seq) if r in self.samples.by_replica else None for r in replicas]
            if all(t is not None for t in seen):
                w.observed_s = max(0.0, max(seen) - w.acked)  # type: ignore[type-var]

    def check_answers(self) -> dict[str, Any]:
        """Exhaustive answers against the writes and the replicas' stamps (see the module doc).

        The header's seq is what the replica had applied when the request started; the search
        itself runs a little later and may include later changes, up to what the replica's stamps
        say it had applied when the answer arrived. An item is judged when its state is the same
        everywhere in that range, and when every write of it was acknowledged (a write that
        failed may or may not be in the log). Returns counts per path, and up to 10 violations."""
        history: dict[str, list[tuple[int, str]]] = {}
        unsure: set[str] = set()
        for w in self.writes:
            if w.seq is None:
                unsure.add(w.item_id)
            else:
                history.setdefault(w.item_id, []).append((w.seq, w.kind))
        judged = {i: sorted(h) for i, h in history.items() if i not in unsure}
        out: dict[str, Any] = {
            "answers": {},
            "item_checks": 0,
            "item_skipped": 0,  # written while the request ran: either state is right
            "wrong_items": 0,
            "stamps_ahead": 0,
            "examples": [],
        }
        for a in self.answers:
            counts = out["answers"].setdefault(a.path, {"exhaustive": 0, "not_exhaustive": 0})
            if not a.exhaustive:
                counts["not_exhaustive"] += 1
                continue
            counts["exhaustive"] += 1
            upto = a.seq
            if a.replica in self.timelines.steps:
                stamped = self.timelines.applied_by(a.replica, a.sent, self.correct_clock)
                if a.seq < stamped:  # the stamps said "searchable" before the replica answered so
                    out["stamps_ahead"] += 1
                    if len(out["examples"]) < 10:
                        out["examples"].append(f"{a.path} on {a.replica}: answered at seq {a.seq}, stamped {stamped}")
                upto = max(a.seq, self.timelines.applied_by(a.replica, a.received, self.correct_clock))
            for item_id, h in judged.items():
                i = bisect.bisect_right(h, (a.seq, "~"))  # the last write at or below a.seq
                if i < len(h) and h[i][0] <= upto:
                    out["item_skipped"] += 1
                    continue
                expected = i > 0 and h[i - 1][1] != "delete"
                out["item_checks"] += 1
                if (item_id in a.ids) != expected:
                    out["wrong_items"] += 1
                    if len(out["examples"]) < 10:
                        out["examples"].append(
                            f"{a.path} on {a.replica} at seq {a.seq}: {item_id} {'missing' if expected else 'returned'}"
                        )
        return out


async def run(url: str, token: str, args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp

    queries = load_queries(url)
    # Catalog items for /similar and /recommend (not items an earlier run wrote: a history of live
    # items is a 404, and they may be gone).
    found = {h["item_id"] for q in queries[:40] for h in post_json(url, "/search", {"query": q, "k": 10})["results"]}
    items = sorted(i for i in found if not i.startswith("live-"))
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
        await bench.warm_writes(session)
        await bench.phase(session, Phase("warmup", False, args.warmup_seconds))
        for p in phases:
            await bench.phase(session, p)
            print(
                f"  {p.name}: {p.searches} searches in {p.seconds:.1f}s ({p.rps:.1f}/s), "
                f"{p.search_errors} failed searches, {p.probe_errors} failed probes",
                flush=True,
            )
            print("    CPU s: " + ", ".join(f"{k} {v:.1f}" for k, v in p.cpu_s.items() if v >= 0.05), flush=True)
            if p.writes:  # a replica keeps its last 10,000 steps: collect them as they come
                await bench.collect_steps(session, 15.0)
        await bench.collect_steps(session, 15.0)
        claims = await bench.check_claims(session, 400)
    bench.time_to_visible()
    return report(bench, phases, claims, bench.check_answers())


def post_json(url: str, path: str, body: Any) -> Any:
    import urllib.request

    req = urllib.request.Request(url + path, json.dumps(body).encode(), {"content-type": "application/json"})
    # url: the http://127.0.0.1 server this benchmark started itself (or was pointed at).
    with urllib.request.urlopen(req, timeout=60) as r:  # nosec B310
        return json.loads(r.read())


def report(bench: Bench, phases: list[Phase], claims: dict[str, int], answers: dict[str, Any]) -> dict[str, Any]:
    reads = [p for p in phases if not p.writes]
    writes = [p for p in phases if p.writes]
    rps_reads = sum(p.searches for p in reads) / sum(p.seconds for p in reads)
    rps_writes = sum(p.searches for p in writes) / sum(p.seconds for p in writes)
    ratio = rps_writes / rps_reads if rps_reads else 0.0
    acked = [w for w in bench.writes if w.acked is not None]

    def of(kinds: tuple[str, ...], attr: str) -> list[float]:
        return [getattr(w, attr) for w in acked if w.kind in kinds and getattr(w, attr) is not None]

    text_ttv, image_ttv = of(("text", "delete"), "visible_s"), of(("image",), "visible_s")
    never = [w for w in acked if w.visible_s is None]
    t0 = min((w.sent for w in bench.writes), default=0.0)
    replicas = bench.replicas()
    exhaustive = {p: c["exhaustive"] for p, c in answers["answers"].items()}
    out = {
        "replicas": replicas,
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
        "write_latency_p99_s_by_kind": {
            k: pct([w.acked - w.sent for w in acked if w.kind == k], 99)  # type: ignore[operator]
            for k in ("text", "delete", "image")
        },
        "warm_up_write_latency_s": bench.warm,
        # The slowest writes to their 200, times relative to the first write.
        "slowest_writes": [
            {"kind": w.kind, "seq": w.seq, "sent": round(w.sent - t0, 3), "latency_s": round(w.acked - w.sent, 3)}  # type: ignore[operator]
            for w in sorted(acked, key=lambda w: w.sent - w.acked)[:10]  # type: ignore[operator]
        ],
        "ttv_text_p50_s": pct(text_ttv, 50),
        "ttv_text_p99_s": pct(text_ttv, 99),
        "ttv_text_max_s": max(text_ttv, default=None),
        "ttv_image_p50_s": pct(image_ttv, 50),
        "ttv_image_p99_s": pct(image_ttv, 99),
        "ttv_image_max_s": max(image_ttv, default=None),
        "never_visible": len(never),
        # Through the router: a replica counts from its first answer past the write (upper bound).
        "observed_text_p99_s": pct(of(("text", "delete"), "observed_s"), 99),
        "observed_image_p99_s": pct(of(("image",), "observed_s"), 99),
        "max_sample_gap_s": {
            r: round(float(max(np.diff(t), default=0.0)), 3) for r, (t, _) in bench.samples.by_replica.items()
        },
        "clock_offset_s": {r: round(off, 4) for r, (_, off) in bench.timelines.offset.items()},
        "clock_corrected": bench.correct_clock,
        "answers_checked": answers,
        # The slowest writes, times relative to the first write: where a tail comes from.
        "slowest": [
            {
                "kind": w.kind,
                "item_id": w.item_id,
                "seq": w.seq,
                "sent": round(w.sent - t0, 3),
                "acked": round(w.acked - t0, 3),  # type: ignore[operator]
                "visible_s": round(w.visible_s, 3),  # type: ignore[arg-type]
                "applied": {r: bench.applied_at(r, w, t0) for r in replicas},
            }
            for w in sorted((w for w in acked if w.visible_s is not None), key=lambda w: -w.visible_s)[:8]  # type: ignore[operator]
        ],
        "claims_checked": claims["checked"],
        "claims_violated": claims["violations"],
        "phases": [{k: v for k, v in asdict(p).items() if k != "search_latencies"} for p in phases],
    }
    checks = {
        f"search throughput with writes >= {TARGET_RATIO}x without": ratio >= TARGET_RATIO,
        f"text time-to-visible p99 <= {TARGET_TEXT_S:.0f} s on every replica": (out["ttv_text_p99_s"] or 1e9)
        <= TARGET_TEXT_S,
        f"image time-to-visible p99 <= {TARGET_IMAGE_S:.0f} s on every replica": (out["ttv_image_p99_s"] or 1e9)
        <= TARGET_IMAGE_S
        if bench.args.image_writes_per_s > 0
        else True,
        "every acknowledged write applied on every replica": not never and len(replicas) >= bench.args.retrievers,
        "exhaustive /search, /similar, /recommend answers agree with the writes and the stamps": answers["wrong_items"]
        == 0
        and answers["stamps_ahead"] == 0
        and all(exhaustive.get(p, 0) > 0 for p in ("/search", "/similar", "/recommend")),
        "replica headers agree with GET /items": claims["violations"] == 0 and claims["checked"] > 0,
        "no failed request": out["failed_searches"] == 0 and out["failed_probes"] == 0 and out["writes_failed"] == 0,
    }
    out["checks"] = checks
    return out


def print_report(r: dict[str, Any]) -> None:
    print(f"\nreplicas: {len(r['replicas'])}")
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
    by_kind = r["write_latency_p99_s_by_kind"]
    warm = r["warm_up_write_latency_s"]
    print(
        f"  write latency p99 by kind: text {ms(by_kind['text'])}, delete {ms(by_kind['delete'])}, "
        f"image {ms(by_kind['image'])}; warm-up writes (not counted): text {ms(warm.get('text'))}, "
        f"image {ms(warm.get('image'))}"
    )
    print(
        "  slowest writes (s after the first): "
        + ", ".join(f"{w['kind']}@{w['sent']}: {w['latency_s']}" for w in r["slowest_writes"][:6])
    )
    print(
        f"time-to-visible on every replica (replicas' stamps): text p50 {ms(r['ttv_text_p50_s'])}, "
        f"p99 {ms(r['ttv_text_p99_s'])} (max {ms(r['ttv_text_max_s'])}); image p50 {ms(r['ttv_image_p50_s'])}, "
        f"p99 {ms(r['ttv_image_p99_s'])} (max {ms(r['ttv_image_max_s'])}); never applied: {r['never_visible']}"
    )
    print(
        f"as the router happened to show it (upper bound): text p99 {ms(r['observed_text_p99_s'])}, "
        f"image p99 {ms(r['observed_image_p99_s'])}; longest a replica went without a read: {r['max_sample_gap_s']} s"
    )
    c = r["answers_checked"]
    per_path = ", ".join(
        f"{p} {v['exhaustive']} ({v['not_exhaustive']} not exhaustive)" for p, v in c["answers"].items()
    )
    print(
        f"exhaustive answers checked: {per_path}; {c['item_checks']} item checks, {c['wrong_items']} wrong "
        f"({c['item_skipped']} items written while their request ran: not judged), "
        f"{c['stamps_ahead']} answers behind their replica's stamps"
    )
    for e in c["examples"]:
        print(f"  wrong: {e}")
    print(f"replica headers checked against GET /items: {r['claims_checked']} checked, {r['claims_violated']} wrong")
    corrected = "taken out" if r["clock_corrected"] else "same machine: not applied"
    print(f"replica clock offsets (estimated, {corrected}): {r['clock_offset_s']} s")
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
    p.add_argument("--check-per-s", type=float, default=2.0, help="exhaustive-k checker requests per second")
    p.add_argument("--check-k", type=int, default=1000, help="k of the checker (the API's max_k)")
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
        # 10 s (one replica idle, the other overloaded). Re-probing after 1 s keeps the read load
        # spread over both, as a production router with fresh queue lengths would.
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

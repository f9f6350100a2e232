"""Live writes survive SIGKILL: a Retriever replica, the ItemEncoder replica, then the whole app.

The app runs as ``serve run`` in a process of its own (its own local Ray, as an operator runs it),
so "the whole Serve app" can be killed like a crashed machine: the ``serve run`` driver and every
process below it (GCS, raylet, controller, HAProxy, every replica) get SIGKILL at once. Then the
same config is started again on the same live directory (SQLite change log + snapshots).

During 2,000 writes from 16 clients (new items, and deletes of acknowledged ones) and a steady
search load from 4 clients:

1. after ~500 writes one of the two Retriever replicas is SIGKILLed,
2. after ~1,000 the ItemEncoder replica,
3. after ~1,500 the whole app; writers pause until it answers again, then finish.

Then, on every Retriever replica: every acknowledged upsert is served (in ``/search``, with its
title), every acknowledged delete is gone, and every unacknowledged write is all there or not
there at all (index and ``GET /items`` agree, on every replica). No search failed outside the
whole-app outage. The counts are printed.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from conftest import free_port
from live_http import on_every_replica, request

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TOKEN = "live-faults-test-token"
WRITES = 2000
KILLS = {500: "Retriever", 1000: "ItemEncoder", 1500: "app"}
MAX_K = 5000  # more than the catalog will hold: one /search returns every item of a replica
REPLICAS = 2
# Concurrent writers: the ItemEncoder batches concurrent writes, so 16 clients finish the 2,000
# writes several times faster than 4 (4 made the test ~270 s of a 2-core CI run).
WRITERS = 16


@dataclass
class Attempt:
    item_id: str
    op: str  # upsert | delete
    title: str | None
    status: int = 0  # 0: no answer (connection lost)
    seq: int | None = None
    answered_at: float = 0.0  # when the answer (or the lost connection) came back


class App:
    """``serve run`` of one config in its own session; ``kill_all`` SIGKILLs it and all below it."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config, self.port, self.log = config, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 420.0) -> float:
        env = {
            **{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
            "RAY_USAGE_STATS_ENABLED": "0",
            "ITEMSAGE_WRITE_TOKEN": TOKEN,
        }
        env.setdefault("RAY_raylet_start_wait_time_s", "120")
        from itemsage.serve.fast_ingress import use_fast_serving

        use_fast_serving(env)
        serve_bin = Path(sys.executable).parent / "serve"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(serve_bin), "run", str(self.config)],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started = time.monotonic()
        while True:
            assert self.proc.poll() is None, f"serve run exited:\n{self.log.read_text(errors='replace')[-4000:]}"
            assert time.monotonic() - started < timeout_s, (
                f"not healthy:\n{self.log.read_text(errors='replace')[-4000:]}"
            )
            try:
                if (
                    request(self.url, "GET", "/healthz", timeout=5).status == 200
                    and self.running("Retriever") == REPLICAS
                ):
                    return time.monotonic()
            except OSError:
                pass
            time.sleep(0.5)

    def processes(self) -> list[psutil.Process]:
        assert self.proc is not None
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def replicas(self, deployment: str) -> list[psutil.Process]:
        out = []
        for p in self.processes():
            try:
                if " ".join(p.cmdline()).startswith(f"ray::ServeReplica:itemsage:{deployment}"):
                    out.append(p)
            except psutil.Error:
                continue
        return out

    def running(self, deployment: str) -> int:
        return len(self.replicas(deployment))

    def kill_all(self) -> int:
        procs = self.processes()
        for p in procs:
            try:
                p.kill()
            except psutil.Error:
                continue
        assert self.proc is not None
        self.proc.wait(30)
        psutil.wait_procs(procs, timeout=30)
        return len(procs)

    def stop(self) -> None:
        """SIGKILL whatever is left, as the whole-app fault does: a graceful ``serve run`` stop
        (Ctrl-C) is test_serve_run_cli's, and here it only cost ~9 s of waiting for it."""
        if self.proc is not None:
            self.kill_all()


class Traffic:
    """Writer and 4 searcher threads against ``app.url`` (followed across a restart)."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.attempts: list[Attempt] = []
        self.searches: list[tuple[float, float, int]] = []
        self.lock = threading.Lock()
        self.writing = threading.Event()  # cleared while the whole app is down
        self.writing.set()
        self.stop = threading.Event()
        self.acked_live: list[str] = []
        self.kills: list[tuple[float, str]] = []  # (when, what), in order
        self.n = 0
        self.rng = random.Random(7)

    def next_write(self) -> Attempt | None:
        with self.lock:
            if self.n >= WRITES:
                return None
            self.n += 1
            n = self.n
            if n % 10 == 0 and self.acked_live:
                item = self.acked_live.pop(self.rng.randrange(len(self.acked_live)))
                a = Attempt(item, "delete", None)
            else:
                a = Attempt(
                    f"fault-{n}", "upsert", f"fault item {n} {self.rng.choice(['shirt', 'shoe', 'watch', 'bag'])}"
                )
            self.attempts.append(a)
            return a

    def writer(self) -> None:
        while not self.stop.is_set():
            self.writing.wait()
            a = self.next_write()
            if a is None:
                return
            path = f"/items/{a.item_id}"
            try:
                r = request(
                    self.app.url,
                    "PUT" if a.op == "upsert" else "DELETE",
                    path,
                    {"title": a.title} if a.op == "upsert" else None,
                    token=TOKEN,
                    timeout=60,
                )
                a.status = r.status
                if r.status == 200:
                    a.seq = int(r.body["seq"])
                    if a.op == "upsert":
                        with self.lock:
                            self.acked_live.append(a.item_id)
            except OSError:
                a.status = 0
            a.answered_at = time.monotonic()

    def searcher(self, i: int) -> None:
        queries = ["shirt", "black shoes", "watch", "handbag", "fault item"]
        n = 0
        while not self.stop.is_set():
            self.writing.wait()  # a client of a dead app waits for it rather than spin on refusals
            t0 = time.monotonic()
            try:
                status = request(
                    self.app.url, "POST", "/search", {"query": queries[(i + n) % 5], "k": 10}, timeout=60
                ).status
            except OSError:
                status = 0
            with self.lock:
                self.searches.append((t0, time.monotonic(), status))
            n += 1

    def done(self) -> int:
        with self.lock:
            return self.n


def serve_config(trained: Any, port: int, live_dir: Path) -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    from deployments.app import serve_config_dict

    version = {
        "model_uri": "models:/itemsage/1",
        "index_uri": "models:/itemsage/1",
        "mlflow_tracking_uri": trained.tracking_uri,
    }
    # Snapshots every 400 changes: the restarts below start from a snapshot plus the log after it.
    serve_cfg = {"max_k": MAX_K, "live": {"enabled": True, "dir": str(live_dir), "snapshot_every": 400}}
    deployments = {
        "Retriever": {"num_replicas": REPLICAS},
        "QueryEncoder": {"num_replicas": 1, "autoscaling_config": None},
    }
    return serve_config_dict(version, port=port, serve_cfg=serve_cfg, deployments=deployments)


def test_acknowledged_writes_survive_sigkill(trained_serving: Any, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "serve_config.yaml"
    config.write_text(yaml.safe_dump(serve_config(trained_serving, port, tmp_path / "live")))
    app = App(config, port, tmp_path / "serve.log")
    started = time.monotonic()
    writes_from = app.start()
    traffic = Traffic(app)
    threads = [threading.Thread(target=traffic.writer, daemon=True) for _ in range(WRITERS)]
    threads += [threading.Thread(target=traffic.searcher, args=(i,), daemon=True) for i in range(4)]
    report: dict[str, Any] = {"killed": {}, "start_s": round(writes_from - started, 1)}
    outage: tuple[float, float] | None = None
    try:
        for t in threads:
            t.start()
        for at, what in KILLS.items():
            deadline = time.monotonic() + 600
            while traffic.done() < at:
                assert time.monotonic() < deadline and any(t.is_alive() for t in threads[:WRITERS]), (
                    f"stuck at {traffic.done()} writes"
                )
                time.sleep(0.05)
            traffic.kills.append((time.monotonic(), what))
            if what == "app":
                killed_at = time.monotonic()
                traffic.writing.clear()  # new requests wait; the ones in flight fail with the app
                report["killed"]["app processes"] = app.kill_all()
                healthy_at = app.start()
                outage = (killed_at, healthy_at)
                report["restart_s"] = round(healthy_at - killed_at, 1)
                traffic.writing.set()
            else:
                victims = app.replicas(what)
                assert len(victims) == (REPLICAS if what == "Retriever" else 1), (what, victims)
                victims[0].kill()
                report["killed"][what] = victims[0].pid
        for t in threads[:WRITERS]:
            t.join(900)
        assert traffic.done() == WRITES
        report["writes_s"] = round(time.monotonic() - writes_from, 1)  # the app's outage included
        # Every replica back (Serve replaced the killed ones), then a little more search traffic.
        deadline = time.monotonic() + 300
        while app.running("Retriever") < REPLICAS or app.running("ItemEncoder") < 1:
            assert time.monotonic() < deadline, "replicas not replaced"
            time.sleep(0.5)
        traffic.stop.set()
        for t in threads[WRITERS:]:
            t.join(120)
        check_after_restart(app, traffic, outage, report)
    except BaseException:
        print(app.log.read_text(errors="replace")[-6000:])
        raise
    finally:
        traffic.stop.set()
        traffic.writing.set()
        app.stop()


def check_after_restart(app: App, traffic: Traffic, outage: tuple[float, float] | None, report: dict[str, Any]) -> None:
    assert outage is not None
    acked = [a for a in traffic.attempts if a.seq is not None]
    unacked = [a for a in traffic.attempts if a.seq is None]
    report["writes"] = dict(Counter(f"{a.op} {'acked' if a.seq else a.status}" for a in traffic.attempts))
    bad_status = [a for a in unacked if a.status not in (0, 503)]
    assert not bad_status, [(a.op, a.item_id, a.status) for a in bad_status[:5]]
    last = max(a.seq for a in acked)  # type: ignore[type-var]
    # Each replica's whole index, with titles.
    answers = on_every_replica(
        app.url, "POST", "/search", {"query": "fault item", "k": MAX_K}, last, REPLICAS, timeout_s=120
    )
    served = {r: {h["item_id"]: h["title"] for h in a.body["results"]} for r, a in answers.items()}
    upserts = {a.item_id: a for a in traffic.attempts if a.op == "upsert"}
    deletes = {a.item_id: a for a in traffic.attempts if a.op == "delete"}
    missing, resurrected, half, uncertain = [], [], [], 0
    for item_id, up in upserts.items():
        gone = deletes.get(item_id)
        if up.seq is not None and gone is None:
            missing += [(r, item_id) for r, ids in served.items() if ids.get(item_id) != up.title]
        elif gone is not None and gone.seq is not None:
            resurrected += [(r, item_id) for r, ids in served.items() if item_id in ids]
        else:  # an unacknowledged write: all there or not there, on every replica alike
            uncertain += 1
            there = set()
            for r, got in on_every_replica(app.url, "GET", f"/items/{item_id}", None, last, REPLICAS).items():
                in_index = item_id in served[r]
                there.add(in_index)
                whole = got.status == 200 and got.body["title"] == up.title and served[r].get(item_id) == up.title
                if in_index != (got.status == 200) or (in_index and not whole):
                    half.append((r, item_id, in_index, got.status))
            if len(there) > 1:
                half.append(("replicas disagree", item_id))
    failed = [(t0, t1, s) for t0, t1, s in traffic.searches if s != 200]

    def after_kill(t: float) -> str:  # the last kill before ``t``
        return next((f"{what} kill" for at, what in reversed(traffic.kills) if at <= t), "no kill")

    outside = [f for f in failed if f[1] < outage[0] or f[0] > outage[1]]
    report.update(
        acked=len(acked),
        unacked=len(unacked),
        unacked_after=dict(Counter(f"{a.status} after {after_kill(a.answered_at)}" for a in unacked)),
        searches=len(traffic.searches),
        failed_searches=len(failed),
        failed_outside_app_kill=len(outside),
        missing=len(missing),
        resurrected=len(resurrected),
        half_there=len(half),
        uncertain_checked=uncertain,
        unacked_found_whole=sum(
            1 for a in unacked if a.op == "upsert" and all(a.item_id in s for s in served.values())
        ),
    )
    print(f"[live faults] {report}")
    assert not missing, missing[:5]
    assert not resurrected, resurrected[:5]
    assert not half, half[:5]
    assert not outside, outside[:5]
    assert len(acked) >= WRITES // 2, report  # the faults cost some writes, not most

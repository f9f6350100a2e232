"""A multi-node Ray cluster on one machine, started with ``ray start`` as on real machines.

One head (``ray start --head``, dashboard and Jobs API on 127.0.0.1) and worker nodes
(``ray start --address``), each with its own resources. Token authentication stays on:
``RAY_AUTH_MODE=token`` with a fresh random token in a 0600 file that every node and every client
command (``ray job submit``, ``serve deploy``) reads through ``RAY_AUTH_TOKEN_PATH``; HTTP calls
send it as ``Authorization: Bearer``. ``ray start`` would otherwise use (or create) the user's
``~/.ray/auth_token``, which other Ray instances on the machine share.

Isolation from other Ray instances on the same machine (a colleague's tests):

- every port is chosen free (no 6379/8265/10001/52365 defaults), workers bind OS-assigned ports;
- each node has a private ``--temp-dir``: ``ray start`` records this cluster's address there and not
  in ``/tmp/ray/ray_current_cluster``, where a plain ``ray.init()`` elsewhere would find and join
  it; and each node's log monitor tails only its own workers' logs (with one shared session dir,
  both would forward every line, twice);
- every process of the cluster has ``RAY_ADDRESS`` set to it: Ray internals that look for "the"
  cluster on this machine (Ray Train's placement group cleaner uses the State API) would
  otherwise find several and give up;
- :meth:`LocalRayCluster.stop` kills only processes carrying this cluster's marker variable
  (``procs.MARKER_ENV``): ``ray stop`` would kill every Ray process of the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from tests.support.procs import MARKER_ENV, marked_pids, run, terminate, wait_for

from itemsage.cluster.ports import free_ports
from itemsage.serve.fast_ingress import use_fast_serving

# Per-node ports `ray start` would otherwise take from fixed defaults (two nodes on one machine,
# and other Ray instances, would collide on them).
_NODE_PORT_FLAGS = (
    "--node-manager-port",
    "--object-manager-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
)


@dataclass
class NodeSpec:
    """Logical resources of one node. Several nodes may share the same physical cores."""

    num_cpus: float
    # Small on purpose: each node's object store would otherwise claim 30% of the machine's memory.
    object_store_bytes: int = 400_000_000


@dataclass
class LocalRayCluster:
    root: Path
    base_env: dict[str, str]
    marker: str
    token: str = field(default_factory=lambda: secrets.token_hex(32), repr=False)
    gcs_port: int = 0
    dashboard_port: int = 0
    nodes_started: int = 0

    def temp_dir(self, node: int) -> Path:
        """Node ``node``'s Ray temp dir (0: the head); short, for Ray's unix socket paths."""
        return self.root / f"ray{node}"

    @property
    def token_path(self) -> Path:
        return self.root / "ray_auth_token"

    @property
    def log(self) -> Path:
        return self.root / "ray_start.log"

    @property
    def address(self) -> str:
        """The GCS address worker nodes and ``ray.init`` use."""
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        """The Jobs/Serve REST address (``ray job submit --address``, ``serve deploy -a``)."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def env(self) -> dict[str, str]:
        """Environment of every command that talks to this cluster (the nodes included)."""
        env = {k: v for k, v in self.base_env.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
        env.update(
            {
                "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN_PATH": str(self.token_path),
                MARKER_ENV: self.marker,
                "RAY_USAGE_STATS_ENABLED": "0",
            }
        )
        use_fast_serving(env)  # Serve on this cluster gets HAProxy ingress unless base_env says 0
        if self.gcs_port:
            env["RAY_ADDRESS"] = self.address
        return env

    def _ray(self) -> str:
        return str(Path(sys.executable).parent / "ray")

    def _start_node(self, head: bool, spec: NodeSpec, timeout_s: float) -> None:
        ports = free_ports(len(_NODE_PORT_FLAGS) + (3 if head else 0))
        args = [self._ray(), "start", "--disable-usage-stats", f"--temp-dir={self.temp_dir(self.nodes_started)}",
                f"--num-cpus={spec.num_cpus:g}", "--num-gpus=0", f"--object-store-memory={spec.object_store_bytes}",
                # 0/0: workers bind ports the OS picks, instead of the shared 10002-19999 default range.
                "--min-worker-port=0", "--max-worker-port=0"]
        args += [f"{flag}={port}" for flag, port in zip(_NODE_PORT_FLAGS, ports)]
        if head:
            self.gcs_port, self.dashboard_port, client_port = ports[-3:]
            args += ["--head", f"--port={self.gcs_port}", "--dashboard-host=127.0.0.1",
                     f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={client_port}"]
        else:
            args += [f"--address={self.address}"]
        run(args, self.env, self.log, timeout_s)
        self.nodes_started += 1

    def start(self, head: NodeSpec, workers: list[NodeSpec], timeout_s: float = 240.0) -> LocalRayCluster:
        """Start the head and the worker nodes; return once all of them are alive."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.token_path.write_text(self.token)
        self.token_path.chmod(0o600)
        self._start_node(True, head, timeout_s)
        wait_for(lambda: self.api("/api/version"), timeout_s, f"Ray dashboard at {self.dashboard_url}")
        for spec in workers:
            self._start_node(False, spec, timeout_s)
        want = 1 + len(workers)
        wait_for(lambda: len(self.alive_nodes()) == want, timeout_s, f"{want} alive Ray nodes")
        return self

    # ------------------------------------------------------------------ REST (dashboard)

    def api(self, path: str, method: str = "GET", body: Any = None, token: bool = True) -> Any:
        """JSON from the dashboard's REST API (Jobs, State, Serve), authenticated with the token."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"content-type": "application/json"}
        if token:
            headers["authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(f"{self.dashboard_url}{path}", data=data, method=method, headers=headers)
        # dashboard_url: http://<head>:<port> of the head node this object started.
        with urllib.request.urlopen(req, timeout=15) as r:  # nosec B310
            return json.loads(r.read() or b"null")

    def status_without_token(self, path: str = "/api/jobs/") -> int:
        """HTTP status of an unauthenticated request (401 while token auth is on)."""
        try:
            self.api(path, token=False)
        except urllib.error.HTTPError as e:
            return e.code
        return 200

    def alive_nodes(self) -> list[dict[str, Any]]:
        """``[{node_id, is_head_node, resources_total, ...}]`` of the alive nodes (State API)."""
        answer = self.api("/api/v0/nodes?limit=100&detail=true")
        rows = answer["data"]["result"]["result"]
        return [n for n in rows if n.get("state") == "ALIVE"]

    def job_info(self, submission_id: str) -> dict[str, Any]:
        return self.api(f"/api/jobs/{submission_id}")

    # ------------------------------------------------------------------ stop

    def stop(self, grace_s: float = 20.0) -> list[int]:
        """Kill this cluster's processes (and nothing else); returns the pids that needed SIGKILL.

        In ``ray stop``'s order, each step with a third of ``grace_s``: the raylets, then every
        other process but the GCS, then the GCS (Ray's agents fate-share with their raylet, and the
        GCS goes last so that nothing loses it while stopping). SIGTERM to all of them at once
        left the raylets and the GCS running until the SIGKILL (2026-12-05, tests/support/e2e.py's
        teardown log). Whatever is still marked after that (a worker started meanwhile) goes last.
        """
        names = self.process_names()
        raylets = [p for p, n in names.items() if n == "raylet"]
        gcs = [p for p, n in names.items() if n == "gcs_server"]
        others = [p for p in names if p not in raylets and p not in gcs]
        killed: list[int] = []
        for step in (raylets, others, gcs):
            killed += terminate(step, grace_s / 3)
        return killed + terminate(marked_pids(self.marker), grace_s / 3)

    def process_names(self) -> dict[int, str]:
        """``{pid: executable name}`` of this cluster's processes now running."""
        names: dict[int, str] = {}
        for pid in marked_pids(self.marker):
            with contextlib.suppress(psutil.Error):
                names[pid] = psutil.Process(pid).name()
        return names

    def is_down(self) -> bool:
        return not marked_pids(self.marker)


def run_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """``os.environ`` (or ``base``) without anything pointing at another Ray cluster."""
    env = dict(os.environ if base is None else base)
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        env.pop(key, None)
    return env

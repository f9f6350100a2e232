"""Free TCP ports on 127.0.0.1, for the listeners of a Ray this project starts (HAProxy's stats
and metrics pages) and for the local clusters the tests start.

A port is chosen now and bound later by another process, so in between nothing else may take it.
The kernel hands out ports for ``bind(port=0)`` (every gRPC server and worker of a Ray does that)
from its ephemeral range, and Ray's workers take 10002-19999: a port chosen from either can be
gone, or answered by a gRPC server, by the time our listener starts (seen as a health check
reading HTTP/2 frames). So ports are chosen from the gap between the two when the machine has one.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

# Ray's default worker ports are 10002-19999 (``ray start --min-worker-port/--max-worker-port``).
RAY_WORKER_PORTS_END = 19999
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def reserved_gap() -> range | None:
    """Ports above Ray's worker ports and below the kernel's ephemeral range (Linux), or None."""
    try:
        low = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    gap = range(RAY_WORKER_PORTS_END + 1, low)
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

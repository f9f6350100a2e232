"""Fail fast, in one line, when ``RAY_ADDRESS`` names a Ray cluster that nobody answers at.

``ray.init()`` pointed at a dead address retries the GCS for minutes, printing a C++ warning every
few seconds, before it gives up with a traceback. Entry points call :func:`check_ray_address`
first, so a typo in the address (or a cluster that is down) costs seconds and one clear line.
"""

from __future__ import annotations

import os
import socket
import time
from urllib.parse import urlsplit

# Addresses that do not name a host: let ray.init() decide (start or find a local instance).
_NO_HOST = ("", "auto", "local")
# Long enough for a head that is still starting, short next to ray.init()'s minutes of retries.
CONNECT_TIMEOUT_S = 10.0


class RayAddressError(RuntimeError):
    """``RAY_ADDRESS`` is malformed or no process accepts connections there."""


def host_port(address: str) -> tuple[str, int]:
    """``host:port``, ``ray://host:port`` or ``http://host:port`` -> ``(host, port)``."""
    text = address.strip()
    parts = urlsplit(text if "://" in text else f"gcs://{text}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise RayAddressError(f"RAY_ADDRESS={address!r} is not host:port (e.g. 10.0.0.5:6379)")
    return parts.hostname, port


def check_ray_address(address: str | None = None, timeout_s: float | None = None) -> str | None:
    """Check that the cluster ``address`` (default: ``$RAY_ADDRESS``) accepts TCP connections.

    Returns the address checked, or None when there is none to check (no ``RAY_ADDRESS``, ``auto``
    or ``local``). Retries until ``timeout_s`` (default :data:`CONNECT_TIMEOUT_S`) so a head that is still starting up is not refused.
    Raises :class:`RayAddressError` with the address and the last socket error otherwise.
    """
    if address is None:
        address = os.environ.get("RAY_ADDRESS", "")
    if address.strip() in _NO_HOST:
        return None
    host, port = host_port(address)
    if timeout_s is None:
        timeout_s = CONNECT_TIMEOUT_S
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(3.0, max(timeout_s, 0.1))):
                return address
        except OSError as e:
            last = e
        if time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    reason = last.strerror or str(last) or type(last).__name__
    raise RayAddressError(
        f"cannot reach the Ray cluster at RAY_ADDRESS={address} ({reason} after {timeout_s:g}s); "
        "start it (`ray start --head`) or fix RAY_ADDRESS"
    )

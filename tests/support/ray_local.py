"""A small local Ray for tests that run Ray Data pipelines in process."""

from __future__ import annotations

import ray


def start_small_ray(attempts: int = 3) -> None:
    """``ray.init`` on 2 CPUs, retried: the raylet gives its agents a fixed ~15 s to start, which a
    2-core box shared with other test runs can miss; a second try then usually succeeds."""
    for attempt in range(1, attempts + 1):
        try:
            ray.init(num_cpus=2, include_dashboard=False)
            return
        except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception for this
            ray.shutdown()
            if attempt == attempts or "timed out during startup" not in str(e):
                raise

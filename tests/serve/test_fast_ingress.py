"""Every Ray this project starts runs Serve in Ray's high-throughput mode (HAProxy ingress), unless
the user's environment opts out; the end-to-end Serve suites run on it."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from itemsage.cluster.ray_nodes import LocalRayCluster
from itemsage.serve.fast_ingress import FAST_SERVE_ENV, use_fast_serving

REPO = Path(__file__).resolve().parents[2]


def test_fills_in_what_is_unset_and_keeps_an_opt_out() -> None:
    env: dict[str, str] = {"RAY_SERVE_ENABLE_HA_PROXY": "0"}
    assert use_fast_serving(env) == {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
    assert env == {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}


class _Stop(Exception):
    """Raised by the captured ray.init: the test needs the environment Ray would start in."""


def test_run_local_starts_ray_in_fast_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    for key in FAST_SERVE_ENV:
        # setenv then delenv: unset now, and unset again after the test (whatever run_local sets).
        monkeypatch.setenv(key, "x")
        monkeypatch.delenv(key)
    seen: list[dict[str, Any]] = []

    def fake_init(*args: Any, **kwargs: Any) -> None:
        seen.append({k: os.environ.get(k) for k in FAST_SERVE_ENV})
        raise _Stop

    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    sys.path.insert(0, str(REPO))
    from deployments.app import run_local

    with pytest.raises(_Stop):
        run_local({"model_uri": "m", "index_uri": "i"})
    assert seen == [FAST_SERVE_ENV]


def test_ray_start_clusters_get_it_and_respect_an_opt_out(tmp_path: Path) -> None:
    default = LocalRayCluster(tmp_path, base_env={"PATH": "/usr/bin"}, marker="m")
    assert {k: default.env[k] for k in FAST_SERVE_ENV} == FAST_SERVE_ENV
    opted_out = LocalRayCluster(tmp_path, base_env={"RAY_SERVE_ENABLE_HA_PROXY": "0"}, marker="m")
    assert opted_out.env["RAY_SERVE_ENABLE_HA_PROXY"] == "0"

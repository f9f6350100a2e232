"""Every Ray this project starts runs Serve in Ray's high-throughput mode (HAProxy ingress), unless
the user's environment opts out, and stopping Serve leaves no HAProxy behind; the end-to-end Serve
suites run on it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.support.procs import wait_for
from tests.support.ray_nodes import LocalRayCluster

from itemsage.serve.fast_ingress import (
    FAST_SERVE_ENV,
    HAPROXY_PORT_KEYS,
    haproxy_pids,
    stop_leftover_haproxy,
    use_fast_serving,
)

REPO = Path(__file__).resolve().parents[2]


def test_fills_in_what_is_unset_and_keeps_an_opt_out() -> None:
    env: dict[str, str] = {"RAY_SERVE_ENABLE_HA_PROXY": "0"}
    assert use_fast_serving(env) == {**FAST_SERVE_ENV, "RAY_SERVE_ENABLE_HA_PROXY": "0"}
    assert not set(HAPROXY_PORT_KEYS) & set(env)  # no HAProxy, no ports to choose


def test_each_start_gets_free_haproxy_ports_and_a_users_port_stays() -> None:
    """A HAProxy left by an earlier Serve on this machine (or a second one running) must not stop
    this one from starting: its stats and metrics listeners, and the fallback proxy its HAProxy
    forwards to while no Ingress replica runs, get ports nobody holds."""
    env: dict[str, str] = {}
    first = use_fast_serving(env)
    ports = [int(first[k]) for k in HAPROXY_PORT_KEYS]
    assert len(set(ports)) == 4 and all(p > 0 for p in ports)
    assert {"RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT"} <= set(first)
    with socket.socket() as held:  # someone now holds the first stats port
        held.bind(("127.0.0.1", ports[0]))
        held.listen()
        second = use_fast_serving(env)
        assert int(second[HAPROXY_PORT_KEYS[0]]) != ports[0]
    mine = {"RAY_SERVE_HAPROXY_STATS_PORT": "18404"}
    assert use_fast_serving(mine)["RAY_SERVE_HAPROXY_STATS_PORT"] == "18404"


class _Stop(Exception):
    """Raised by the captured ray.init: the test needs the environment Ray would start in."""


def test_run_local_starts_ray_in_fast_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    for key in (*FAST_SERVE_ENV, *HAPROXY_PORT_KEYS):
        # setenv then delenv: unset now, and unset again after the test (whatever run_local sets).
        monkeypatch.setenv(key, "x")
        monkeypatch.delenv(key)
    seen: list[dict[str, Any]] = []

    def fake_init(*args: Any, **kwargs: Any) -> None:
        seen.append({k: os.environ.get(k) for k in FAST_SERVE_ENV})
        assert all(os.environ.get(k, "").isdigit() for k in HAPROXY_PORT_KEYS)
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


def test_leftover_haproxy_of_our_nodes_is_stopped_and_no_other(tmp_path: Path) -> None:
    """A HAProxy that outlived Serve's shutdown is found by its node's config directory and killed;
    one of another Ray node is left alone. Stand-ins: processes named .../haproxy with such args."""

    def fake_haproxy(node: str) -> subprocess.Popen:
        cfg = f"/tmp/haproxy-serve/{node}/haproxy.cfg"
        script = "import time; time.sleep(120)"
        return subprocess.Popen(["bash", "-c", f'exec -a {tmp_path}/haproxy {sys.executable} -c "{script}" -db -f {cfg}'])

    ours, theirs = fake_haproxy("node-ours"), fake_haproxy("node-theirs")
    try:
        wait_for(lambda: haproxy_pids(["node-ours"]) == [ours.pid] or None, 10, "stand-in HAProxy to start")
        assert stop_leftover_haproxy(["node-ours"]) == 1
        assert ours.wait(10) == -signal.SIGKILL
        assert theirs.poll() is None and haproxy_pids(["node-theirs"]) == [theirs.pid]
        assert stop_leftover_haproxy([]) == 0
    finally:
        for proc in (ours, theirs):
            proc.kill()
            proc.wait(10)

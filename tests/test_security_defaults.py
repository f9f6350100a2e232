"""Nothing listens beyond loopback unless someone configures it: the Serve HTTP API (no
authentication), the Ray dashboard (Jobs API: remote code execution for whoever reaches it).

Fast: the values are read from the code and config that set them, and the commands and
``ray.init`` calls are captured, not run; no Ray is started.
"""

from __future__ import annotations

import ast
import inspect
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.support.scripts import load_script

from itemsage.serve.fast_ingress import FAST_SERVE_ENV, HAPROXY_PORT_KEYS

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
SOURCE_DIRS = ("platform", "experiments", "deployments")


def test_serve_config_host_defaults_to_loopback() -> None:
    from itemsage.config import ServeConfig
    from itemsage.serve.deployments import serve_config

    assert ServeConfig().host == "127.0.0.1"
    assert serve_config({}).host == "127.0.0.1"  # what the Serve graph builds from empty args


def test_serve_config_yaml_binds_http_to_loopback() -> None:
    from ray.serve.schema import ServeDeploySchema

    sys.path.insert(0, str(REPO))
    from deployments.app import CONFIG_FILE, serve_config_dict

    http = yaml.safe_load(CONFIG_FILE.read_text()).get("http_options") or {}
    # Explicit, never Serve's default: in HAProxy mode (itemsage.serve.fast_ingress, on wherever we
    # start Ray) that default is every interface.
    assert http.get("host") == "127.0.0.1"
    # What run_local and `serve run` deploy when no host is given, after Serve's validation.
    cfg = serve_config_dict({"model_uri": "m", "index_uri": "i"}, port=8123)
    assert ServeDeploySchema.model_validate(cfg).http_options.host == "127.0.0.1"


def test_ray_start_head_binds_the_dashboard_to_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support import ray_nodes

    commands: list[list[str]] = []
    monkeypatch.setattr(ray_nodes, "run", lambda args, env, log, timeout_s: commands.append(list(args)))
    cluster = ray_nodes.LocalRayCluster(root=tmp_path, base_env={}, marker="test")
    cluster._start_node(True, ray_nodes.NodeSpec(num_cpus=1), 1.0)
    cluster._start_node(False, ray_nodes.NodeSpec(num_cpus=1), 1.0)
    head, worker = commands
    assert head[1:3] == ["start", "--disable-usage-stats"] and "--head" in head
    assert [a for a in head if a.startswith("--dashboard-host")] == ["--dashboard-host=127.0.0.1"]
    assert cluster.dashboard_url.startswith("http://127.0.0.1:")
    # Nothing in either command widens a bind address.
    assert not [a for a in head + worker if "0.0.0.0" in a]


def _ray_init_calls(source: str) -> list[dict[str, Any]]:
    """Keyword arguments of every ``ray.init(...)`` call in ``source`` (non-literal values: '?')."""
    calls = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "init" \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "ray":
            calls.append({k.arg: (k.value.value if isinstance(k.value, ast.Constant) else "?") for k in node.keywords})
    return calls


def _public_dashboard(kwargs: dict[str, Any]) -> bool:
    """A ``ray.init`` that may serve the dashboard beyond loopback: include_dashboard not False
    and a dashboard_host that is not a loopback literal (absent: Ray's default, checked below)."""
    if kwargs.get("include_dashboard") is False:
        return False
    return "dashboard_host" in kwargs and kwargs["dashboard_host"] not in LOOPBACK


def test_the_ray_init_checker_catches_what_it_should() -> None:
    bad = ['ray.init(dashboard_host="0.0.0.0")', "ray.init(num_cpus=2, dashboard_host=host)",
           'ray.init(include_dashboard=True, dashboard_host="0.0.0.0")']
    good = ["ray.init(num_cpus=2, include_dashboard=False)", 'ray.init(dashboard_host="127.0.0.1")', "ray.init()",
            'ray.init(include_dashboard=False, dashboard_host="0.0.0.0")']
    assert all(_public_dashboard(c) for s in bad for c in _ray_init_calls(s))
    assert not any(_public_dashboard(c) for s in good for c in _ray_init_calls(s))


def test_no_local_ray_init_binds_the_dashboard_publicly() -> None:
    # Ray's own default (ray.init with no dashboard_host) is loopback; an upgrade could change it.
    assert inspect.signature(__import__("ray").init).parameters["dashboard_host"].default in LOOPBACK
    found, public = 0, []
    for top in SOURCE_DIRS:
        for path in sorted((REPO / top).rglob("*.py")):
            for kwargs in _ray_init_calls(path.read_text()):
                found += 1
                if _public_dashboard(kwargs):
                    public.append(f"{path.relative_to(REPO)}: ray.init({kwargs})")
    assert found >= 10  # the scan still sees the entry points' ray.init calls
    assert not public, public


class _Stop(Exception):
    """Raised by the captured ray.init: the test needs its arguments, not a cluster."""


def _capture_ray_init(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    import ray

    seen: list[dict[str, Any]] = []

    def fake_init(*args: Any, **kwargs: Any) -> None:
        seen.append(kwargs)
        raise _Stop

    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for key in (*FAST_SERVE_ENV, *HAPROXY_PORT_KEYS):  # what run_local / pipeline.py put in os.environ is undone afterwards
        monkeypatch.setenv(key, "x")
        monkeypatch.delenv(key)
    return seen


def test_make_demo_pipeline_binds_its_dashboard_to_loopback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`make demo` runs experiments/pipeline.py; its local Ray serves the dashboard (whose State
    API Ray Train's placement group cleaner needs) on loopback only, named explicitly."""
    assert "experiments/pipeline.py" in (REPO / "Makefile").read_text()
    seen = _capture_ray_init(monkeypatch)
    monkeypatch.chdir(tmp_path)  # main() chdirs to the repo; monkeypatch puts the cwd back
    pipeline = load_script("experiments/pipeline.py")
    with pytest.raises(_Stop):
        pipeline.main(["--config", "experiments/configs/demo.yaml"])
    assert len(seen) == 1 and seen[0].get("dashboard_host") in LOOPBACK, seen


def test_run_local_starts_ray_without_a_dashboard(monkeypatch: pytest.MonkeyPatch) -> None:
    """The serve stage of `make demo` and the tests deploy through deployments.app.run_local."""
    seen = _capture_ray_init(monkeypatch)
    sys.path.insert(0, str(REPO))
    from deployments.app import run_local

    with pytest.raises(_Stop):
        run_local({"model_uri": "m", "index_uri": "i"})
    assert len(seen) == 1 and seen[0].get("include_dashboard") is False, seen

"""The ItemSage Serve application: ``serve run deployments/serve_config.yaml``, or from Python.

From the command line (repo root)::

    serve run deployments/serve_config.yaml
    serve run deployments.app:build_app model_uri=models:/itemsage/latest index_uri=models:/itemsage/latest

From Python (tests, ``make demo``): the same config file, with the version and port overridden::

    from deployments.app import run_local
    url = run_local({"model_uri": "models:/itemsage/1", "index_uri": "models:/itemsage/1"})
    run_local({"model_uri": "models:/itemsage/2", "index_uri": "models:/itemsage/2"})  # in place

Relative paths in ``args`` and in the deployments' ``user_config`` are relative to the directory
the app is started from (``base_dir``, default: the current directory).
"""

from __future__ import annotations

import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from itemsage.serve.core import ServingSpec
from itemsage.serve.deployments import build_graph

APP_NAME = "itemsage"
WEB_DIR = Path(__file__).resolve().parent / "web"
CONFIG_FILE = Path(__file__).resolve().parent / "serve_config.yaml"
# Keys of ``args`` that are not part of the served version's user_config.
_APP_KEYS = ("serve", "base_dir", "web_dir")


def build_app(args: Mapping[str, Any] | None = None) -> Any:
    """Serve application builder (``import_path: deployments.app:build_app``).

    ``args``: optional ``serve`` (ServeConfig overrides, e.g. ``{"max_k": 100}``), ``base_dir``,
    ``web_dir``, and the served version (``model_uri``, ``index_uri``, ``features``, ...; see
    :class:`~itemsage.serve.core.ServingSpec`). Without ``model_uri`` the version must come from
    the deployments' ``user_config`` in the serve config file.
    """
    args = dict(args or {})
    unknown = sorted(set(args) - set(_APP_KEYS) - set(ServingSpec.KEYS))
    if unknown:
        raise ValueError(f"unknown app argument(s) {', '.join(unknown)}; known: {', '.join([*_APP_KEYS, *ServingSpec.KEYS])}")
    serve_cfg = args.get("serve") or {}
    if isinstance(serve_cfg, str):  # `serve run ... serve='{"max_k": 100}'`
        import json

        serve_cfg = json.loads(serve_cfg)
    base_dir = str(Path(args.get("base_dir") or os.getcwd()).resolve())
    version = {k: args[k] for k in ServingSpec.KEYS if args.get(k) not in (None, "")}
    return build_graph(
        serve_cfg,
        web_dir=str(args.get("web_dir") or WEB_DIR),
        base_dir=base_dir,
        user_config=version or None,
    )


def serve_config_dict(
    version: Mapping[str, Any] | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
    serve_cfg: Mapping[str, Any] | None = None,
    deployments: Mapping[str, Mapping[str, Any]] | None = None,
    path: str | Path = CONFIG_FILE,
) -> dict[str, Any]:
    """``deployments/serve_config.yaml`` as a dict, with overrides.

    Args:
        version: the served version; replaces the version keys (``ServingSpec.KEYS``) of every
            deployment ``user_config`` that names one, keeping their other knobs (batching).
        host, port: ``http_options``.
        serve_cfg: ServeConfig overrides merged into the app's ``args.serve``.
        deployments: per deployment name, fields to set (``ray_actor_options`` and
            ``user_config`` are merged key by key).
    """
    cfg = yaml.safe_load(Path(path).read_text())
    http = cfg.setdefault("http_options", {})
    if host is not None:
        http["host"] = host
    if port is not None:
        http["port"] = port
    (app,) = cfg["applications"]
    if serve_cfg:
        args = app.setdefault("args", {})
        args["serve"] = {**(args.get("serve") or {}), **dict(serve_cfg)}
    known = {d["name"] for d in app["deployments"]}
    unknown = sorted(set(deployments or {}) - known)
    if unknown:
        raise ValueError(f"unknown deployment(s) {unknown}; the config has {sorted(known)}")
    for dep in app["deployments"]:
        uc = dep.get("user_config")
        if version is not None and isinstance(uc, dict) and "model_uri" in uc:
            dep["user_config"] = {**{k: v for k, v in uc.items() if k not in ServingSpec.KEYS}, **dict(version)}
        for key, value in (deployments or {}).get(dep["name"], {}).items():
            if key in ("ray_actor_options", "user_config") and isinstance(value, Mapping):
                dep[key] = {**(dep.get(key) or {}), **dict(value)}
            else:
                dep[key] = value
    return cfg


def deploy(config: Mapping[str, Any], timeout_s: float = 300.0, wait: bool = True) -> str:
    """Deploy a Serve config dict on the connected Ray, like ``serve run``/``serve deploy`` do.

    Deploying again with only ``user_config`` changed is Serve's lightweight update: the replicas
    stay and ``reconfigure()`` swaps the version in place. Returns the base URL.
    """
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(dict(config))
    client = serve_start(
        http_options=schema.http_options.model_dump(),
        proxy_location=schema.proxy_location,
        global_logging_config=schema.logging_config,
    )
    client.deploy_apps(schema)
    url = f"http://{schema.http_options.host}:{schema.http_options.port}"
    if wait:
        wait_healthy(url, timeout_s)
    return url


def run_local(
    version: Mapping[str, Any],
    *,
    host: str | None = None,
    port: int | None = None,
    serve_cfg: Mapping[str, Any] | None = None,
    deployments: Mapping[str, Mapping[str, Any]] | None = None,
    num_cpus: int | None = None,
    timeout_s: float = 300.0,
) -> str:
    """Start (or reuse) a local Ray and deploy ``serve_config.yaml`` serving ``version``.

    For tests and ``make demo``; the same config and code path as ``serve run``. Call again
    with another ``version`` to swap it in place. Returns the base URL once ``/healthz`` is 200.
    """
    import ray

    from itemsage.serve.fast_ingress import use_fast_serving

    if not ray.is_initialized():
        use_fast_serving()  # HAProxy ingress + throughput-optimised Serve for the Ray started here
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    cfg = serve_config_dict(version, host=host, port=port, serve_cfg=serve_cfg, deployments=deployments)
    return deploy(cfg, timeout_s)


def wait_healthy(url: str, timeout_s: float = 180.0) -> dict[str, Any]:
    """Poll ``GET /healthz`` until it answers 200 (returns its body) or raise TimeoutError."""
    import json

    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            # url is the Serve HTTP address from our own config (http://host:port), never request data.
            with urllib.request.urlopen(f"{url}/healthz", timeout=5) as r:  # nosec B310
                if r.status == 200:
                    return json.loads(r.read())
        except (urllib.error.URLError, OSError, ValueError) as e:
            last = str(e)
        time.sleep(0.5)
    raise TimeoutError(f"{url}/healthz not healthy after {timeout_s:.0f}s ({last})")


def shutdown_local(drain: bool = True) -> None:
    """Tear down the app and Serve (leaves Ray running for the caller to stop), and any HAProxy
    process Serve's shutdown left behind on this machine (itemsage.serve.fast_ingress).

    ``drain=False`` (nothing in flight, e.g. a test's teardown; the second Ctrl-C does the same)
    stops the local Ray this driver started, and Serve's processes with it, without the API
    replica's 30 s drain; Ray is then stopped too."""
    import ray
    from ray import serve

    from itemsage.serve.fast_ingress import stop_leftover_haproxy

    nodes = [n["NodeID"] for n in ray.nodes()] if ray.is_initialized() else []
    if drain:
        serve.shutdown()
    else:
        ray.shutdown()
    stop_leftover_haproxy(nodes)


def serve_until_stopped() -> None:
    """Block until Ctrl-C or SIGTERM, then :func:`shutdown_local`, draining; a second one stops
    without waiting for the drain. Call it after :func:`run_local` (``make demo``'s serve stage,
    ``python deployments/app.py``).

    SIGTERM (``kill``, ``docker stop``, ``make`` passing on the SIGTERM it got) takes the Ctrl-C
    path: ``ray.init`` leaves the driver with SIGTERM handlers of Ray's own (a Python one that
    exits at once, and the C++ core worker's failure handler, which prints "*** SIGTERM received"
    with a stack trace and aborts), and neither lets Serve drain.
    """
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # raises KeyboardInterrupt, as SIGINT does
    try:
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    # Serve's fast mode keeps the API replica draining for 30 s before it stops, so that a load
    # balancer in front can let go of it (RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S).
    print("\nstopping Serve (its API replica drains for up to 30 s; Ctrl-C again to kill)", flush=True)
    try:
        shutdown_local()
        print("stopped", flush=True)
    except KeyboardInterrupt:  # Ray stops Serve's processes with this driver
        print("stopped without draining", flush=True)


if __name__ == "__main__":  # python deployments/app.py MODEL_URI INDEX_URI [--port N]
    import argparse

    p = argparse.ArgumentParser(description="Serve ItemSage locally until Ctrl-C or SIGTERM.")
    p.add_argument("model_uri")
    p.add_argument("index_uri")
    p.add_argument("--features", default=None)
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    a = p.parse_args()
    version = {"model_uri": a.model_uri, "index_uri": a.index_uri}
    if a.features:
        version["features"] = a.features
    base = run_local(version, host=a.host, port=a.port)
    print(f"ItemSage is serving at {base}  (API docs: {base}/docs)", flush=True)
    serve_until_stopped()

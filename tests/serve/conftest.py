"""Fixtures for the serving tests.

Fast tests run the API in-process (FastAPI TestClient over the same core the Serve graph uses) on
``tiny_serving``: a randomly initialised model and a Flat index over 60 sample items, two
versions. The slow tests start Ray Serve on ``trained_serving``: the demo model trained on the
bundled sample by the real pipeline (see test_serve_e2e.py).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import build_tiny_serving  # noqa: E402

from itemsage.cluster.ports import free_port  # noqa: E402  (the test modules import it from here)


@pytest.fixture(scope="session")
def tiny_serving(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_tiny_serving(sample_dir, tmp_path_factory.mktemp("tiny_serving"), versions=2)


@pytest.fixture(scope="session")
def sample_image(sample_dir: Path) -> bytes:
    return sorted((sample_dir / "fashion" / "images").glob("*.jpg"))[0].read_bytes()


@pytest.fixture(scope="module")
def local_client(tiny_serving: dict[str, Path]) -> Iterator[object]:
    """TestClient of the in-process API serving tiny version 1."""
    from fastapi.testclient import TestClient

    from itemsage.serve.local import create_local_app

    app = create_local_app({"model_uri": str(tiny_serving["model_1"]), "index_uri": str(tiny_serving["index_1"])})
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="session")
def trained_serving(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> object:
    """The demo model trained on the sample, registered as ``itemsage`` versions 1 and 2 (slow).

    Built once per run: under pytest-xdist the fault test and the other serving suites are two
    groups on two workers (tests/support/xdist_groups.py), which share one build."""
    import os

    from trained import build_trained_serving, shared_trained_serving

    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        return build_trained_serving(sample_dir, tmp_path_factory.mktemp("trained_serving"))
    return shared_trained_serving(sample_dir, tmp_path_factory.getbasetemp().parent, worker)


def start_serve_app(
    trained: object, version: str = "1", deployments: dict | None = None, num_cpus: int = 4, serve_cfg: dict | None = None
) -> dict:
    """Start a local Ray (no dashboard) and deploy deployments/serve_config.yaml on 127.0.0.1 at a
    free port, serving ``models:/itemsage/<version>`` of ``trained`` (a ``TrainedServing``), the
    way ``serve run`` deploys it. The caller stops it with :func:`stop_serve_app`."""
    import os

    import ray

    repo = str(Path(__file__).resolve().parents[2])
    if repo not in sys.path:
        sys.path.insert(0, repo)
    from deployments.app import run_local

    from itemsage.serve.fast_ingress import use_fast_serving

    if ray.is_initialized():
        ray.shutdown()
    # A busy shared machine can take longer than Ray's default to register the local node.
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")
    use_fast_serving()  # the Ray started here must run Serve the way run_local starts it
    # Logical CPUs: the config reserves ~2 CPUs of replicas, more than a 2-core CI box has.
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    port = free_port()
    uri = f"models:/itemsage/{version}"
    spec = {"model_uri": uri, "index_uri": uri, "mlflow_tracking_uri": trained.tracking_uri}  # type: ignore[attr-defined]
    try:
        url = run_local(spec, host="127.0.0.1", port=port, serve_cfg=serve_cfg, deployments=deployments, timeout_s=600)
    except BaseException:
        stop_serve_app()
        raise
    return {"url": url, "port": port, "trained": trained}


def stop_serve_app() -> None:
    import ray
    from deployments.app import shutdown_local

    if ray.is_initialized():
        # No request is in flight here: skip the 30 s drain (tests/serve/test_serve_run_cli.py covers it).
        shutdown_local(drain=False)

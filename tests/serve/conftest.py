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
    """The demo model trained on the sample, registered as ``itemsage`` versions 1 and 2 (slow)."""
    from trained import build_trained_serving

    return build_trained_serving(sample_dir, tmp_path_factory.mktemp("trained_serving"))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

"""Fixtures for the Python API tests: the small trained sample model (see sample_model.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from sample_model import SampleModel, build_sample_model, one_torch_thread  # noqa: E402


@pytest.fixture(scope="session")
def sample_model(tmp_path_factory: pytest.TempPathFactory) -> SampleModel:
    return build_sample_model(tmp_path_factory.getbasetemp() / "sample_model")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with one_torch_thread():
        yield

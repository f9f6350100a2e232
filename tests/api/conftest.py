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


@pytest.fixture(scope="session")
def sage(sample_model: SampleModel):
    from itemsage.api import ItemSage

    return ItemSage.load(sample_model.bundle, device="cpu")


@pytest.fixture(scope="session")
def train_features(sage, sample_model: SampleModel):
    """The training catalog featurized by the API (read-only in every test that takes it)."""
    with one_torch_thread():
        return sage.featurize_catalog(sample_model.train_catalog, engine="local")


@pytest.fixture(scope="session")
def indexed(sage, train_features):
    """``(train_features, an IVF index of them)`` with its lexical part; tests only search it."""
    with one_torch_thread():
        return train_features, sage.build_index(train_features, "IVF{nlist},Flat")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with one_torch_thread():
        yield

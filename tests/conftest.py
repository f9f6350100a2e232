"""Shared test fixtures. Tests never read the full downloads (data/fashion, data/shopee): they use the
bundled sample in data/sample."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Weights come from pip packages; make any accidental hub download fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE

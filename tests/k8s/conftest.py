"""Fixtures for the manifest tests (helpers: k8s_support.py). No cluster or Docker needed; the
overlays are rendered by `kubectl kustomize`, and tests that need them skip without kubectl."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

# The helpers live beside the tests (tests/ has no packages): make them importable here too.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from k8s_support import OVERLAYS, REPO, render  # noqa: E402


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def docs(overlay: str) -> tuple[dict[str, Any], ...]:
    return render(overlay)

"""The trained demo model is built once per test run, also when two pytest-xdist workers need it
(tests/serve/trained.py ``shared_trained_serving``): the first builds, the next loads its record."""

from __future__ import annotations

from pathlib import Path

import pytest
import trained
from trained import TrainedServing, shared_trained_serving


def test_the_second_worker_loads_the_first_workers_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[Path] = []

    def build(sample_dir: Path, root: Path) -> TrainedServing:
        built.append(root)
        return TrainedServing(f"sqlite:///{root / 'mlflow.db'}", root / "features", ("1", "2"))

    monkeypatch.setattr(trained, "build_trained_serving", build)
    first = shared_trained_serving(tmp_path / "sample", tmp_path / "run", "gw0")
    second = shared_trained_serving(tmp_path / "sample", tmp_path / "run", "gw1")
    assert built == [tmp_path / "run" / "trained_serving-gw0"]
    assert second == first


def test_a_failed_build_is_retried_in_a_directory_of_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    roots: list[Path] = []

    def build(sample_dir: Path, root: Path) -> TrainedServing:
        roots.append(root)
        if len(roots) == 1:
            raise RuntimeError("training diverged")
        return TrainedServing("sqlite:///x.db", root / "features", ("1", "2"))

    monkeypatch.setattr(trained, "build_trained_serving", build)
    with pytest.raises(RuntimeError, match="diverged"):
        shared_trained_serving(tmp_path, tmp_path / "run", "gw0")
    again = shared_trained_serving(tmp_path, tmp_path / "run", "gw1")  # the lock was released
    assert roots == [tmp_path / "run" / "trained_serving-gw0", tmp_path / "run" / "trained_serving-gw1"]
    assert again.features == tmp_path / "run" / "trained_serving-gw1" / "features"

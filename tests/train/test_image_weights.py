"""Which image-backbone weights file a trained model resolves to (itemsage.trained.image_weights)."""

from __future__ import annotations

from pathlib import Path

import pytest

from itemsage.config import PipelineConfig, load_config
from itemsage.data.images import file_sha256, weights_record
from itemsage.trained.image_weights import (
    ENV_VAR,
    ImageWeightsError,
    recorded_image_weights,
    resolve_image_weights,
)


@pytest.fixture(autouse=True)
def _no_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "trained" / "rn50.pth"
    path.parent.mkdir()
    path.write_bytes(b"the weights the model was trained with")
    return path


def manifest(weights: Path | None, backbone: str = "resnet50") -> dict:
    return {"image_backbone": backbone, "image_weights": weights_record(str(weights) if weights else None)}


def test_record_is_absolute_path_and_checksum(weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(weights.parent)
    assert weights_record("rn50.pth") == {"path": str(weights), "sha256": file_sha256(weights)}
    assert weights_record(None) is None
    assert weights_record("s3://bucket/rn50.pth") == {"path": "s3://bucket/rn50.pth", "sha256": None}


def test_packaged_weights_need_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = manifest(None, "efficientnet-lite0")
    assert resolve_image_weights(m, "m") is None
    # An override is for models trained from a weights file; it never replaces packaged weights.
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "rn50.pth"))
    assert resolve_image_weights(m, "m", override=str(tmp_path / "x.pth")) is None


def test_recorded_path(weights: Path) -> None:
    assert resolve_image_weights(manifest(weights), "m") == str(weights)


def test_missing_recorded_file_names_it_and_the_settings(weights: Path) -> None:
    m = manifest(weights)
    weights.unlink()
    with pytest.raises(ImageWeightsError) as info:
        resolve_image_weights(m, "models:/itemsage/3")
    msg = str(info.value)
    for part in (str(weights), "models:/itemsage/3", "serve.image_weights_path", ENV_VAR, "does not exist"):
        assert part in msg


def test_override_and_environment(weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = manifest(weights)
    copy = tmp_path / "elsewhere.pth"
    copy.write_bytes(weights.read_bytes())
    weights.unlink()  # another machine: the recorded path is not there
    assert resolve_image_weights(m, "m", override=str(copy)) == str(copy)
    monkeypatch.setenv(ENV_VAR, str(copy))
    assert resolve_image_weights(m, "m") == str(copy)
    # The explicit override wins over the environment.
    with pytest.raises(ImageWeightsError, match="nowhere.pth"):
        resolve_image_weights(m, "m", override=str(tmp_path / "nowhere.pth"))


def test_other_weights_are_refused(weights: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.pth"
    other.write_bytes(b"some other weights")
    with pytest.raises(ImageWeightsError, match="is not the resnet50 weights file"):
        resolve_image_weights(manifest(weights), "m", override=str(other))


def test_a_file_changed_in_place_is_noticed(weights: Path) -> None:
    import os

    m = manifest(weights)
    assert resolve_image_weights(m, "m") == str(weights)
    weights.write_bytes(b"overwritten by a different download")
    os.utime(weights, ns=(1, 1))  # a different mtime, whatever the file system's resolution
    with pytest.raises(ImageWeightsError, match="is not the resnet50 weights file"):
        resolve_image_weights(m, "m")


def test_resnet_without_any_file_recorded() -> None:
    with pytest.raises(ImageWeightsError, match="records none"):
        resolve_image_weights({"image_backbone": "resnet50", "image_weights": None}, "m")


def test_manifests_from_before_the_record(weights: Path) -> None:
    """Models whose manifest has no ``image_weights``: the bundle config's path, unchecked."""
    old = {"image_backbone": "resnet50"}
    assert resolve_image_weights(old, "m", legacy_path=str(weights)) == str(weights)
    cfg = load_config(PipelineConfig)
    assert recorded_image_weights({"backbone": "resnet50", "config": {"image": {"weights_path": "/w.pth"}}}, cfg) == {
        "path": "/w.pth",
        "sha256": None,
    }
    assert recorded_image_weights({"backbone": "efficientnet-lite0", "backbone_weights": None}, cfg) is None

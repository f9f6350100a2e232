"""Several item-disjoint splits of one configuration: each split's features, run directory and
training configuration, and one configuration hash for all of them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import itemsage.data.pipeline as pipeline
import itemsage.studies.splits as splits
from itemsage.config import PipelineConfig, load_config, to_dict
from itemsage.eval.run_tags import config_hash

DEMO = Path(__file__).resolve().parents[2] / "experiments" / "configs" / "demo.yaml"


@pytest.fixture
def recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """Preprocessing writes only its manifest and an empty items file (what marks a finished
    preprocess output); a seed run records its overrides."""
    calls: dict[str, list] = {"preprocess": [], "seeds": []}

    def fake_preprocess(cfg):  # noqa: ANN001, ANN202
        calls["preprocess"].append(cfg)
        Path(cfg.output).mkdir(parents=True, exist_ok=True)
        (Path(cfg.output) / "manifest.json").write_text(json.dumps({"config": to_dict(cfg)}, default=str))
        (Path(cfg.output) / "items.parquet").touch()

    def fake_seeds(base, overrides, seeds, progress=print, **kwargs):  # noqa: ANN001, ANN202
        calls["seeds"].append((list(overrides), list(seeds), kwargs))
        return []

    monkeypatch.setattr(pipeline, "run_preprocess", fake_preprocess)
    monkeypatch.setattr(splits, "run_seeds", fake_seeds)
    return calls


def test_each_other_split_is_preprocessed_and_trained_apart(tmp_path: Path, recorded: dict[str, list]) -> None:
    features, storage = tmp_path / "features", tmp_path / "runs"
    base = [f"train.features={features}", f"train.storage_path={storage}"]
    splits.run_splits(DEMO, base, [0, 3, 5], [0, 1], progress=lambda _: None, split="val")

    # The configuration's own split (engagement seed 0) is trained on its features as configured,
    # made there first since they did not exist.
    assert [c.engagement.seed for c in recorded["preprocess"]] == [0, 3, 5]
    assert [c.output for c in recorded["preprocess"]] == [str(features), f"{features}_split3", f"{features}_split5"]
    own, three, five = recorded["seeds"]
    assert own == (base, [0, 1], {"split": "val"})
    assert three[0][-2:] == [f"train.features={features}_split3", f"train.storage_path={storage}/split3"]
    assert five[0][-1] == f"train.storage_path={storage}/split5"
    # Only the features and run directory differ: every split's models are one configuration.
    cfgs = [load_config(PipelineConfig, DEMO, overrides) for overrides, _, _ in recorded["seeds"]]
    assert cfgs[1].train.features == f"{features}_split3"
    assert len({config_hash(to_dict(c)) for c in cfgs}) == 1
    # Run again: every split's features are kept; the own split's even when made otherwise (by hand).
    own_manifest = features / "manifest.json"
    own_manifest.write_text(json.dumps({"config": {"made": "by hand"}}))
    splits.run_splits(DEMO, base, [0, 3, 5], [0, 1], progress=lambda _: None)
    assert len(recorded["preprocess"]) == 3


def test_a_split_s_features_are_reused_until_its_preprocessing_changes(
    tmp_path: Path, recorded: dict[str, list]
) -> None:
    base = [f"train.features={tmp_path / 'f'}", f"train.storage_path={tmp_path / 'r'}"]
    splits.run_splits(DEMO, base, [2], [0], progress=lambda _: None)
    splits.run_splits(DEMO, base, [2], [0], progress=lambda _: None)
    assert len(recorded["preprocess"]) == 1  # the second call trains on the kept features
    splits.run_splits(DEMO, [*base, "preprocess.text.min_count=2"], [2], [0], progress=lambda _: None)
    assert len(recorded["preprocess"]) == 2 and recorded["preprocess"][1].text.min_count == 2


def test_split_seeds_must_be_distinct() -> None:
    with pytest.raises(ValueError, match="distinct"):
        splits.run_splits(DEMO, [], [1, 1], [0])

"""Seed runs of one configuration: their own run names, one grouping key for the report."""

from __future__ import annotations

from pathlib import Path

import pytest

from itemsage.config import to_dict
from itemsage.eval.run_tags import config_hash, config_label
from itemsage.studies.seeds import run_seeds, seed_config

DEMO = Path(__file__).resolve().parents[2] / "experiments" / "configs" / "demo.yaml"


def test_each_seed_is_a_run_of_its_own_with_one_config_key() -> None:
    cfgs = [seed_config(DEMO, ["train.max_steps=7"], s) for s in (0, 1, 2)]
    assert [c.train.seed for c in cfgs] == [0, 1, 2]
    names = [c.train.name for c in cfgs]
    assert len(set(names)) == 3 and all(n.endswith(f"_seed{s}") for n, s in zip(names, (0, 1, 2)))
    assert {config_label(n) for n in names} == {config_label(cfgs[0].train.name)}
    assert len({config_hash(to_dict(c)) for c in cfgs}) == 1  # seeds group together
    other = seed_config(DEMO, ["train.max_steps=7", "train.lr=0.01"], 0)
    assert config_hash(to_dict(other)) != config_hash(to_dict(cfgs[0]))  # a different config does not
    # Seeding a seed run again does not stack suffixes.
    again = seed_config(DEMO, [f"train.name={names[1]}"], 5)
    assert again.train.name == f"{config_label(names[1])}_seed5"


def test_config_label() -> None:
    assert config_label("amazon_seed12") == "amazon" and config_label("shopee-seed0") == "shopee"
    assert config_label("seedling") == "seedling" and config_label("fashion") == "fashion"


def test_seeds_must_be_distinct() -> None:
    with pytest.raises(ValueError, match="distinct"):
        run_seeds(DEMO, [], [1, 1], tracking=False)


def test_a_finished_seed_run_again_reports_its_training_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Evaluating a trained seed on another split resumes a finished run in seconds: the report
    must still show what the training took."""
    import itemsage.eval.evaluate as evaluate
    import itemsage.eval.result as result
    import itemsage.studies.seeds as seeds
    import itemsage.train.trainer as trainer

    steps = iter([7, 7, 9])
    clock = iter([0.0, 100.0, 500.0, 502.0, 600.0, 605.0])

    def fake_training(cfg, tracking=True):  # noqa: ANN001, ANN202
        run_dir = trainer.run_dir_of(cfg)
        return trainer.TrainResult(run_dir, next(steps), None, None, {}, None, None, "models:/x/1", run_dir)

    monkeypatch.setattr(trainer, "run_training", fake_training)
    monkeypatch.setattr(evaluate, "evaluate_model", lambda *a, **k: None)
    monkeypatch.setattr(result, "surface_summary", lambda ev: {})
    monkeypatch.setattr(seeds.time, "perf_counter", lambda: next(clock))
    overrides = [f"train.storage_path={tmp_path}"]
    runs = [run_seeds(DEMO, overrides, [0], tracking=False, progress=lambda _: None)[0] for _ in range(3)]
    # Trained (100 s), re-run with nothing left to train (the 100 s again), trained further (5 s).
    assert [r.train_seconds for r in runs] == [100.0, 100.0, 5.0]

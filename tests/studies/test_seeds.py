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

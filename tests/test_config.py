from pathlib import Path

import pytest

from itemsage.config import (
    ConfigError,
    PipelineConfig,
    TrainConfig,
    dump_config,
    flatten,
    load_config,
)


def test_defaults_are_the_paper_sizes():
    cfg = PipelineConfig()
    assert cfg.train.model.hash_buckets == 100_000
    assert cfg.train.model.num_heads == 8
    assert cfg.preprocess.text.bigram_vocab_size == 1_000_000


def test_yaml_and_dotted_overrides(tmp_path: Path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 0.01\n  model:\n    arch: mlp\n")
    cfg = load_config(PipelineConfig, f, ["train.batch_size=64", "train.surfaces=[search, home]"])
    assert cfg.train.lr == 0.01
    assert cfg.train.model.arch == "mlp"
    assert cfg.train.batch_size == 64
    assert cfg.train.surfaces == ["search", "home"]


def test_unknown_key_names_the_dotted_key(tmp_path: Path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  model:\n    hiden_dim: 3\n")
    with pytest.raises(ConfigError, match=r"train\.model\.hiden_dim"):
        load_config(PipelineConfig, f)


@pytest.mark.parametrize(
    "override, key",
    [("lr=fast", "lr"), ("batch_size=1.5", "batch_size"), ("register_model=3", "register_model")],
)
def test_wrong_type_names_the_key(override: str, key: str):
    with pytest.raises(ConfigError, match=key):
        load_config(TrainConfig, None, [override])


def test_int_is_accepted_for_float():
    assert load_config(TrainConfig, None, ["lr=1"]).lr == 1.0


def test_missing_file_is_one_clear_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(PipelineConfig, tmp_path / "nope.yaml")


def test_dump_then_load_roundtrips(tmp_path: Path):
    cfg = load_config(PipelineConfig, None, ["train.loss.logq_correction=false"])
    dump_config(cfg, tmp_path / "out.yaml")
    assert load_config(PipelineConfig, tmp_path / "out.yaml") == cfg


def test_flatten_gives_dotted_params():
    flat = flatten(PipelineConfig())
    assert flat["train.model.hidden_dim"] == 512
    assert flat["train.loss.cms_depth"] == 4

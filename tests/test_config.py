import pickle
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from itemsage.config import (
    ConfigError,
    PipelineConfig,
    TrainConfig,
    dump_config,
    flatten,
    from_dict,
    load_config,
    to_dict,
)

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"


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


# ------------------------------------------------------------------ errors name the key and its siblings


def test_unknown_key_lists_the_keys_allowed_at_that_level(tmp_path: Path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  model:\n    finetune_text_layer: 1\n")
    with pytest.raises(ConfigError) as e:
        load_config(PipelineConfig, f)
    msg = str(e.value)
    assert msg.startswith("unknown config key train.model.finetune_text_layer (known keys under train.model: arch,")
    assert "finetune_text_layers" in msg and "did you mean train.model.finetune_text_layers?" in msg


def test_unknown_section_at_the_top_level(tmp_path: Path):
    f = tmp_path / "c.yaml"
    f.write_text("trian:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown config key trian \(known keys under the top level: "
                                          r"index, preprocess, serve, train\); did you mean train\?"):
        load_config(PipelineConfig, f)


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("train:\n  model:\n    use_image: 'yes'\n", "train.model.use_image: expected true/false, got 'yes'"),
        ("train:\n  max_steps: '300'\n", "train.max_steps: expected an integer, got '300'"),
        ("train:\n  batch_size: true\n", "train.batch_size: expected an integer, got True"),
        ("train:\n  name: 7\n", "train.name: expected a string, got 7"),
        ("train:\n  model: 3\n", "train.model: expected a mapping, got 3"),
        ("train:\n  model:\n    hash_seeds: [1, x]\n", "train.model.hash_seeds[1]: expected an integer, got 'x'"),
        ("train:\n  task_quotas: {search/click: high}\n", "train.task_quotas.search/click: expected a number, got 'high'"),
        ("preprocess:\n  engagement:\n    action_shares: [1]\n", "preprocess.engagement.action_shares: expected a mapping"),
        ("serve:\n  allowed_image_roots: /data\n", "serve.allowed_image_roots: expected a list, got '/data'"),
        ("train:\n  lr_decay: step\n", "train.lr_decay: must be one of 'cosine', 'linear' or 'constant', got 'step'"),
    ],
)
def test_wrong_type_in_yaml_names_the_dotted_key(tmp_path: Path, yaml_text: str, message: str):
    f = tmp_path / "c.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError) as e:
        load_config(PipelineConfig, f)
    assert message in str(e.value)


def test_every_error_is_reported_at_once(tmp_path: Path):
    with pytest.raises(ConfigError) as e:
        load_config(PipelineConfig, None, ["train.lrr=1", "serve.port=http"])
    lines = str(e.value).splitlines()
    assert len(lines) == 2
    assert any(line.startswith("unknown config key train.lrr") for line in lines)
    assert "serve.port: expected an integer, got 'http'" in lines


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.model.num_headz=2", "unknown config key train.model.num_headz (known keys under train.model: arch,"),
        ("train.lr", "override 'train.lr' must look like section.key=value"),
        ("train..lr=1", "override 'train..lr': empty key in the dotted path"),
        ("train.lr.x=1", "train.lr: expected a number, got {'x': 1}"),
        ("train.surfaces=[search", "override train.surfaces: value '[search' is not valid YAML"),
        ("train=3", "train: expected a mapping, got 3"),
        ("train.val_catalog=test", "train.val_catalog: must be one of 'split' or 'all', got 'test'"),
    ],
)
def test_override_errors_name_the_dotted_key(override: str, message: str):
    with pytest.raises(ConfigError) as e:
        load_config(PipelineConfig, None, [override])
    assert message in str(e.value)


def test_override_beats_yaml_and_keeps_its_siblings(tmp_path: Path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  model:\n    hidden_dim: 64\n    num_heads: 4\n")
    cfg = load_config(PipelineConfig, f, ["train.model.hidden_dim=32", "train.lr_decay=linear"])
    assert (cfg.train.model.hidden_dim, cfg.train.model.num_heads, cfg.train.lr_decay) == (32, 4, "linear")


# ------------------------------------------------------------------ immutable, replace(), pickling


def test_configs_are_immutable_and_replace_checks_the_change():
    cfg = PipelineConfig()
    with pytest.raises(ValidationError):
        cfg.train.lr = 0.5  # type: ignore[misc]
    tc = cfg.train.replace(lr=0.5, model=cfg.train.model.replace(hidden_dim=64))
    assert (tc.lr, tc.model.hidden_dim, tc.batch_size) == (0.5, 64, cfg.train.batch_size)
    assert cfg.train.lr == 1e-3  # the original is untouched
    with pytest.raises(ConfigError, match="lr: expected a number, got 'fast'"):
        cfg.train.replace(lr="fast")
    with pytest.raises(ConfigError, match="unknown config key lrr"):
        cfg.train.replace(lrr=0.5)


def test_configs_pickle_for_ray():
    # Ray ships objects to actors and tasks with cloudpickle; plain pickle is what it falls back on.
    from ray import cloudpickle

    cfg = load_config(PipelineConfig, None, ["train.task_quotas={search/click: 2.0}", "train.surfaces=[search]"])
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    assert cloudpickle.loads(cloudpickle.dumps(cfg)) == cfg


def test_plain_data_round_trip_is_what_workers_rebuild():
    cfg = load_config(PipelineConfig, None, ["train.lr_decay=constant", "train.model.hash_seeds=[3, 5]"])
    data = to_dict(cfg)
    assert data["train"]["model"]["hash_seeds"] == [3, 5]  # YAML/JSON-able, no tuples
    assert from_dict(PipelineConfig, data) == cfg
    assert from_dict(PipelineConfig, data).train.model.hash_seeds == (3, 5)


# ------------------------------------------------------------------ dump, shipped configs, MLflow params


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_dump_and_load_back(tmp_path: Path, name: str):
    cfg = load_config(PipelineConfig, CONFIGS / f"{name}.yaml")
    dump_config(cfg, tmp_path / "config.yaml")
    assert load_config(PipelineConfig, tmp_path / "config.yaml") == cfg


def test_a_config_written_before_newer_keys_loads_with_their_defaults(tmp_path: Path):
    old = to_dict(PipelineConfig())
    del old["train"]["lr_decay"], old["train"]["val_catalog"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    cfg = load_config(PipelineConfig, tmp_path / "config.yaml")
    assert (cfg.train.lr_decay, cfg.train.val_catalog) == ("cosine", "split")


def _leaf_keys(cls: type[BaseModel], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for name, f in cls.model_fields.items():
        sub = f.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out |= _leaf_keys(sub, f"{prefix}{name}.")
        else:
            out.add(prefix + name)
    return out


def test_flatten_has_every_knob():
    # Mappings with entries flatten one level further; empty ones stay a single param.
    cfg = load_config(PipelineConfig, None, ["train.task_quotas={}"])
    flat = flatten(cfg)
    expected = _leaf_keys(PipelineConfig) - {"preprocess.engagement.action_shares"}
    expected |= {f"preprocess.engagement.action_shares.{a}" for a in cfg.preprocess.engagement.action_shares}
    expected -= {"index.filterable"}  # a mapping of sections: one param per attribute and knob
    expected |= {f"index.filterable.{n}.{k}" for n in cfg.index.filterable for k in ("field", "type", "separator")}
    assert set(flat) == expected
    assert flat["train.lr_decay"] == "cosine" and flat["train.val_catalog"] == "split"


def test_use_gpu_takes_yaml_booleans_and_refuses_anything_else():
    cfg = load_config(PipelineConfig, None, ["train.use_gpu=true", "index.use_gpu=false"])
    assert (cfg.train.use_gpu, cfg.index.use_gpu) == ("true", "false")
    assert load_config(PipelineConfig, None, ["train.use_gpu=auto"]).train.use_gpu == "auto"
    with pytest.raises(ConfigError, match="train.use_gpu: must be one of 'auto', 'true' or 'false', got 'gpu'"):
        load_config(PipelineConfig, None, ["train.use_gpu=gpu"])

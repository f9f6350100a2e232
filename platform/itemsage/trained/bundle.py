"""The trained-model bundle format, read and written here only.

A bundle directory holds::

    model.safetensors   the ItemSageModel state_dict (item tower, query towers, loss temperature,
                        sketch): plain tensors, no pickled code
    text_encoder.safetensors   only after SearchSage-style fine-tuning: the fine-tuned MiniLM
                        layers (the frozen rest ships with the pip package)
    config.yaml         the full resolved PipelineConfig (model/loss for the architecture,
                        preprocess for featurizing new items the same way)
    vocab.json          the training vocab, unchanged (itemsage.data.text.Vocab)
    manifest.json       format, backbones, dims, vocab size, step, validation metrics, features dir

A training checkpoint directory (:mod:`itemsage.trained.checkpoint`) carries the same files with
``state.pt`` instead of the two safetensors files; the readers here accept either.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from itemsage.config import TEXT_FIELDS, PipelineConfig, apply_overrides, dump_config, from_dict, load_config
from itemsage.data.features_io import resolve
from itemsage.data.text import Vocab
from itemsage.trained.checkpoint import STATE_FILE, load_checkpoint
from itemsage.trained.image_weights import recorded_image_weights
from itemsage.trained.registry import MANIFEST_FILE, WEIGHTS_FILE, ModelNotFoundError, resolve_model_dir

if TYPE_CHECKING:
    import torch

    from itemsage.data.text_encoder import TextEncoder

MANIFEST_FORMAT = "itemsage-model"
MANIFEST_VERSION = 1
TEXT_ENCODER_FILE = "text_encoder.safetensors"
TEXT_BACKBONE = "all-MiniLM-L6-v2"

# Architecture switches added after bundles were first written, with the value that rebuilds what
# a bundle written without them holds.
_LEGACY_MODEL_KEYS = {"use_title_embedding": "false", "title_skip": "false", "query_residual": "false"}
# Settings removed since bundles were written that change nothing a bundle holds (serving knobs):
# dropped from an older bundle's config.yaml, so that models registered before still load.
_RETIRED_KEYS: tuple[tuple[str, ...], ...] = (("index", "filters", "exact_below"),)


# ------------------------------------------------------------------------------------ write


def model_manifest(
    cfg: PipelineConfig,
    features_manifest: Mapping[str, Any],
    vocab: Vocab,
    step: int,
    metrics: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Everything a consumer needs to rebuild the model and feed it, without reading the config."""
    m = cfg.train.model
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "arch": m.arch,
        "image_backbone": features_manifest.get("backbone", cfg.preprocess.image.backbone),
        # The backbone's weights file (path + sha256; None: packaged weights), see trained.image_weights.
        "image_weights": recorded_image_weights(features_manifest, cfg),
        # 0: trained on a text-only catalog, so its closeup tower never saw an image (None: unknown).
        "items_with_images": (features_manifest.get("counts") or {}).get("items_with_images"),
        "text_backbone": TEXT_BACKBONE,
        "image_dim": int(features_manifest["image_dim"]),
        "text_query_dim": int(features_manifest.get("text_query_dim", 384)),
        # The width of what the towers return outside training: + 384 with the frozen title part
        # (model.title_blend), + 1 with the hubness coordinate (model.hubness_weight), which
        # indexes and query vectors then carry too.
        "embedding_dim": m.served_dim(),
        "vocab_size": vocab.size,
        "vocab_sizes": vocab.sizes,
        "hash_buckets": m.hash_buckets,
        "hash_seeds": list(m.hash_seeds),
        "text_fields": list(features_manifest.get("text_fields", TEXT_FIELDS)),
        # Fields an empty title's MiniLM embedding comes from, as in the features (features written
        # before preprocess.title_fallback existed: none, an empty title was the zero vector).
        "title_fallback": list(features_manifest.get("title_fallback", [])),
        "max_images": m.max_images,
        # > 0: search queries must be encoded by the bundle's fine-tuned MiniLM, not the packaged
        # one (and not the features directory's precomputed text_emb).
        "finetune_text_layers": m.finetune_text_layers,
        "surfaces": ["search", "closeup", "home"],
        "step": int(step),
        "metrics": dict(metrics or {}),
        "features": cfg.train.features,
    }


def _read_features_file(features: str, name: str) -> bytes:
    fs, root = resolve(features)
    with fs.open_input_stream(f"{root.rstrip('/')}/{name}") as f:
        return f.read()


class BundleFiles:
    """The non-weight bundle files (config.yaml, vocab.json, manifest.json) for one training run.

    The vocab is read from the features directory once and copied byte for byte into every
    checkpoint, so inference tokenizes exactly as training did.
    """

    def __init__(self, cfg: PipelineConfig, features_manifest: Mapping[str, Any]) -> None:
        self.cfg = cfg
        self.features_manifest = dict(features_manifest)
        self.raw_vocab = _read_features_file(cfg.train.features, "vocab.json")
        self.vocab = Vocab.from_dict(json.loads(self.raw_vocab))

    def write(self, directory: str | Path, step: int, metrics: Mapping[str, float] | None = None) -> dict[str, Any]:
        """Write the three files into ``directory``; returns the manifest."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        dump_config(self.cfg, d / "config.yaml")
        (d / "vocab.json").write_bytes(self.raw_vocab)
        manifest = model_manifest(self.cfg, self.features_manifest, self.vocab, step, metrics)
        (d / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        return manifest


def write_bundle(checkpoint_dir: str | Path, out_dir: str | Path) -> Path:
    """Turn a training checkpoint into a bundle: safetensors weights + the checkpoint's bundle files."""
    from safetensors.torch import save_file

    src, out = Path(checkpoint_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = load_checkpoint(src)
    # safetensors refuses tensors that share storage; clones are independent and contiguous.
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in state.model.items()}, str(out / WEIGHTS_FILE))
    if state.text_encoder:
        save_file(
            {k: v.detach().cpu().contiguous().clone() for k, v in state.text_encoder.items()},
            str(out / TEXT_ENCODER_FILE),
        )
    for name in ("config.yaml", "vocab.json"):
        shutil.copyfile(src / name, out / name)
    manifest = json.loads((src / MANIFEST_FILE).read_text())
    manifest.update(step=state.step, metrics={**manifest.get("metrics", {}), **state.metrics})
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


# ------------------------------------------------------------------------------------- read


def read_manifest(model_dir: str | Path) -> dict[str, Any]:
    """``manifest.json`` of a bundle or checkpoint directory, checked to be an ItemSage model's."""
    d = Path(model_dir)
    path = d / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelNotFoundError(f"{d} has no {MANIFEST_FILE}") from None
    except ValueError as e:
        raise ModelNotFoundError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ModelNotFoundError(f"{path} is not an {MANIFEST_FORMAT} manifest")
    return manifest


def load_manifest(uri_or_dir: str | Path) -> dict[str, Any]:
    """The manifest of any model reference (:func:`~itemsage.trained.registry.resolve_model_dir`),
    without loading weights or torch: what needs only dims, backbones and the features dir."""
    return read_manifest(resolve_model_dir(uri_or_dir))


def load_bundle_config(model_dir: str | Path) -> PipelineConfig:
    """The resolved config a bundle or checkpoint was trained with (``config.yaml``)."""
    path = Path(model_dir) / "config.yaml"
    written = yaml.safe_load(path.read_text()) if path.is_file() else None
    model_keys = ((written or {}).get("train") or {}).get("model") or {}
    legacy = [f"train.model.{k}={v}" for k, v in _LEGACY_MODEL_KEYS.items() if k not in model_keys]
    if isinstance(written, dict):
        _drop_retired(written)
        return from_dict(PipelineConfig, apply_overrides(written, legacy))
    return load_config(PipelineConfig, path, legacy)  # missing, empty or not a mapping: its errors


def _drop_retired(config: dict[str, Any]) -> None:
    """Remove :data:`_RETIRED_KEYS` from ``config`` in place."""
    for *parents, key in _RETIRED_KEYS:
        node: Any = config
        for name in parents:
            node = node.get(name) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(key, None)


def read_model_state(model_dir: str | Path) -> dict[str, torch.Tensor]:
    """The ItemSageModel state_dict of a bundle (``model.safetensors``) or checkpoint (``state.pt``)."""
    from safetensors.torch import load_file

    d = Path(model_dir)
    if (d / WEIGHTS_FILE).is_file():
        return load_file(str(d / WEIGHTS_FILE))
    if (d / STATE_FILE).is_file():
        return load_checkpoint(d).model
    raise ModelNotFoundError(f"{d} has a manifest but no {WEIGHTS_FILE} or {STATE_FILE}")


def read_text_encoder_state(model_dir: str | Path, layers: int) -> dict[str, torch.Tensor]:
    """The fine-tuned MiniLM layers of a model trained with ``finetune_text_layers = layers > 0``."""
    from safetensors.torch import load_file

    d = Path(model_dir)
    if (d / TEXT_ENCODER_FILE).is_file():
        return load_file(str(d / TEXT_ENCODER_FILE))
    if (d / STATE_FILE).is_file():
        return load_checkpoint(d).text_encoder
    raise ModelNotFoundError(f"{d}: fine-tuned with {layers} text layers but has no {TEXT_ENCODER_FILE}")


def text_encoder_from_state(layers: int, state: Mapping[str, torch.Tensor], where: str = "") -> TextEncoder:
    """The packaged MiniLM with its top ``layers`` replaced by fine-tuned ``state``.

    Used by training (resuming from a checkpoint) and by loading, so both rebuild the encoder the
    same way. Raises :class:`ModelNotFoundError` when ``state`` is empty or names other tensors.
    """
    from itemsage.data.text_encoder import TextEncoder

    encoder = TextEncoder(trainable_layers=layers)
    unknown = set(state) - set(encoder.state_dict())
    if unknown or not state:
        shown = sorted(unknown)[:1] or ["no tensors"]
        raise ModelNotFoundError(f"{where or 'text encoder'}: weights do not match {TEXT_BACKBONE} ({shown[0]})")
    encoder.load_state_dict(dict(state), strict=False)
    return encoder

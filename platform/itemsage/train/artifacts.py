"""The trained-model bundle: what inference needs, registered in MLflow, loadable from anywhere.

A bundle directory holds::

    model.safetensors   the ItemSageModel state_dict (item tower, query towers, loss temperature,
                        sketch): plain tensors, no pickled code
    text_encoder.safetensors   only after SearchSage-style fine-tuning: the fine-tuned MiniLM
                        layers (the frozen rest ships with the pip package); see
                        :func:`load_text_encoder`
    config.yaml         the full resolved PipelineConfig (model/loss for the architecture,
                        preprocess.text for tokenizing new items the same way)
    vocab.json          the training vocab, unchanged (itemsage.data.text.Vocab)
    manifest.json       format, backbones, dims, vocab size, step, validation metrics, features dir

A training checkpoint directory carries the same files with ``state.pt`` instead of
``model.safetensors``; :func:`load_trained_model` accepts either, a Ray Train run directory (its
latest checkpoint), or an MLflow URI (``models:/itemsage/3``, ``models:/itemsage/latest``,
``runs:/<run_id>/model``).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from itemsage.config import TEXT_FIELDS, PipelineConfig, dump_config, load_config
from itemsage.data.features_io import resolve
from itemsage.data.text import Vocab
from itemsage.model import ItemSageModel, build_model
from itemsage.train.checkpoint import STATE_FILE, latest_checkpoint_dir, load_checkpoint

MANIFEST_FORMAT = "itemsage-model"
MANIFEST_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
TEXT_ENCODER_FILE = "text_encoder.safetensors"
TEXT_BACKBONE = "all-MiniLM-L6-v2"
REGISTERED_MODEL = "itemsage"


class ModelNotFoundError(FileNotFoundError):
    """A model URI or directory does not exist or is not an ItemSage model."""


def _read_features_file(features: str, name: str) -> bytes:
    fs, root = resolve(features)
    with fs.open_input_stream(f"{root.rstrip('/')}/{name}") as f:
        return f.read()


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
        "text_backbone": TEXT_BACKBONE,
        "image_dim": int(features_manifest["image_dim"]),
        "text_query_dim": int(features_manifest.get("text_query_dim", 384)),
        "embedding_dim": m.embedding_dim,
        "vocab_size": vocab.size,
        "vocab_sizes": vocab.sizes,
        "hash_buckets": m.hash_buckets,
        "hash_seeds": list(m.hash_seeds),
        "text_fields": list(features_manifest.get("text_fields", TEXT_FIELDS)),
        "max_images": m.max_images,
        # > 0: search queries must be encoded by the fine-tuned MiniLM of load_text_encoder(), not
        # the packaged one (and not the features directory's precomputed text_emb).
        "finetune_text_layers": m.finetune_text_layers,
        "surfaces": ["search", "closeup", "home"],
        "step": int(step),
        "metrics": dict(metrics or {}),
        "features": cfg.train.features,
    }


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
        (d / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        return manifest


def write_bundle(checkpoint_dir: str | Path, out_dir: str | Path) -> Path:
    """Turn a training checkpoint into a bundle: safetensors weights + the checkpoint's bundle files."""
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
    manifest = json.loads((src / "manifest.json").read_text())
    manifest.update(step=state.step, metrics={**manifest.get("metrics", {}), **state.metrics})
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def resolve_model_dir(uri_or_dir: str | Path) -> Path:
    """A local bundle/checkpoint directory for a path, a Ray run dir or an MLflow model URI.

    MLflow URIs are downloaded (or, for local artifact stores, used in place) with the tracking URI
    from ``$MLFLOW_TRACKING_URI`` (default ``sqlite:///mlflow.db``).
    """
    ref = str(uri_or_dir)
    if ref.startswith(("models:/", "runs:/")) or ("://" in ref and not ref.startswith("file://")):
        import mlflow

        from itemsage.train.tracking import resolve_tracking_uri

        mlflow.set_tracking_uri(resolve_tracking_uri())
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref))
        except Exception as e:  # noqa: BLE001 - MLflow raises several types for "not there"
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ModelNotFoundError(f"model {ref!r} not found in MLflow ({first})") from e
    else:
        local = Path(ref.removeprefix("file://"))
        if not local.exists():
            raise ModelNotFoundError(f"model directory {ref!r} does not exist")
    if not (local / "manifest.json").is_file():
        latest = latest_checkpoint_dir(local) if local.is_dir() else None
        if latest is None:
            raise ModelNotFoundError(
                f"{ref!r} is not an ItemSage model: no manifest.json (expected a bundle, a training "
                f"checkpoint, a Ray Train run directory, or an MLflow models:/ or runs:/ URI)"
            )
        local = latest
    return local


# Architecture switches added after bundles were first written, with the value that rebuilds what
# a bundle written without them holds.
_LEGACY_MODEL_KEYS = {"use_title_embedding": "false", "title_skip": "false", "query_residual": "false"}


def load_bundle_config(model_dir: str | Path) -> PipelineConfig:
    """The resolved config a bundle or checkpoint was trained with (``config.yaml``)."""
    path = Path(model_dir) / "config.yaml"
    written = yaml.safe_load(path.read_text()) if path.is_file() else None
    model_keys = ((written or {}).get("train") or {}).get("model") or {}
    legacy = [f"train.model.{k}={v}" for k, v in _LEGACY_MODEL_KEYS.items() if k not in model_keys]
    return load_config(PipelineConfig, path, legacy)


def load_trained_model(
    uri_or_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[ItemSageModel, dict[str, Any], Vocab]:
    """``(model in eval mode, manifest, vocab)`` from a bundle, checkpoint, run dir or MLflow URI.

    Raises :class:`ModelNotFoundError` (a ``FileNotFoundError``) with the reference in the message
    when nothing loadable is there.
    """
    d = resolve_model_dir(uri_or_dir)
    manifest = json.loads((d / "manifest.json").read_text())
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ModelNotFoundError(f"{d}/manifest.json is not an {MANIFEST_FORMAT} manifest")
    cfg = load_bundle_config(d)
    vocab = Vocab.load(d / "vocab.json")
    model = build_model(
        cfg.train.model,
        cfg.train.loss,
        vocab_size=int(manifest["vocab_size"]),
        image_dim=int(manifest["image_dim"]),
        num_text_fields=len(manifest["text_fields"]),
        text_dim=int(manifest.get("text_query_dim", 384)),
    )
    if (d / WEIGHTS_FILE).is_file():
        state = load_file(str(d / WEIGHTS_FILE))
    elif (d / STATE_FILE).is_file():
        state = load_checkpoint(d).model
    else:
        raise ModelNotFoundError(f"{d} has a manifest but no {WEIGHTS_FILE} or {STATE_FILE}")
    model.load_state_dict(state)
    return model.to(device).eval(), manifest, vocab


def load_text_encoder(uri_or_dir: str | Path, device: str | torch.device = "cpu") -> nn.Module | None:
    """The fine-tuned MiniLM search-query encoder of a model (eval mode), or None when the model was
    trained with the encoder frozen (then the packaged ``TextEncoder()`` is the right one).

    Accepts the same references as :func:`load_trained_model`.
    """
    d = resolve_model_dir(uri_or_dir)
    manifest = json.loads((d / "manifest.json").read_text())
    layers = int(manifest.get("finetune_text_layers", 0))
    if layers <= 0:
        return None
    if (d / TEXT_ENCODER_FILE).is_file():
        state = load_file(str(d / TEXT_ENCODER_FILE))
    elif (d / STATE_FILE).is_file():
        state = load_checkpoint(d).text_encoder
    else:
        raise ModelNotFoundError(f"{d}: fine-tuned with {layers} text layers but has no {TEXT_ENCODER_FILE}")
    from itemsage.data.text_encoder import TextEncoder

    encoder = TextEncoder(trainable_layers=layers)
    unknown = set(state) - set(encoder.state_dict())
    if unknown or not state:
        raise ModelNotFoundError(f"{d}: text encoder weights do not match all-MiniLM-L6-v2 ({sorted(unknown)[:1]})")
    encoder.load_state_dict(state, strict=False)
    return encoder.to(device).eval()


def register_bundle(tracking_uri: str, run_id: str, bundle_dir: str | Path, name: str = REGISTERED_MODEL) -> str:
    """Log ``bundle_dir`` as the run's ``model`` artifact and register it as a new version of ``name``.

    MLflow 3's ``register_model`` only accepts flavour-logged models; a bundle of plain files is
    registered with the client API instead, its source pointing at the run's artifact. Returns the
    new version number.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    client.log_artifacts(run_id, str(bundle_dir), "model")
    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if "already exists" not in str(e).lower() and "RESOURCE_ALREADY_EXISTS" not in str(e):
            raise
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/model"
    mv = client.create_model_version(name, source=source, run_id=run_id)
    client.set_tag(run_id, "itemsage.registered_version", mv.version)
    return str(mv.version)

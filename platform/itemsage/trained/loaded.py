"""A trained model, loaded: :func:`load_trained` -> :class:`TrainedModel`.

The only way the Python API, offline evaluation, batch embedding and Serve get a model: from an
MLflow URI (``models:/name/<N|latest>``, ``models:/name@alias``, ``runs:/<id>/model``), a bundle or
checkpoint directory, or a Ray Train run directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from itemsage.config import PipelineConfig
from itemsage.data.text import Vocab
from itemsage.manifest import ManifestFields
from itemsage.model import ItemFeatureStore, ItemSageModel, build_model
from itemsage.trained.bundle import (
    load_bundle_config,
    read_manifest,
    read_model_state,
    read_text_encoder_state,
    text_encoder_from_state,
)
from itemsage.trained.image_weights import resolve_image_weights
from itemsage.trained.queries import embed_search_queries, frozen_text_encoder
from itemsage.trained.registry import ModelRef, resolve_model_dir, resolve_model_ref

if TYPE_CHECKING:
    from itemsage.data.text_encoder import TextEncoder

# Rows per item-tower call when embedding a feature store in this process.
ITEM_BATCH = 256


def pick_device(device: str = "auto") -> str:
    """ "auto" -> "cuda" when torch sees a GPU, else "cpu"; anything else unchanged."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@dataclass(frozen=True)
class TrainedModel(ManifestFields):
    """A trained model pinned to one version, with every tower and what feeding them needs.

    ``ref.version`` is the registry's number for ``models:/`` URIs and a hash of the bundle files
    otherwise, the label batch embedding writes and Serve checks an index against.
    ``finetuned_text_encoder`` is the model's own MiniLM when it was trained with
    ``finetune_text_layers > 0``, else None; :attr:`text_encoder` is the search-query encoder to
    use either way.
    """

    model: ItemSageModel
    manifest: dict[str, Any]
    vocab: Vocab
    config: PipelineConfig
    ref: ModelRef
    model_dir: Path
    device: str = "cpu"
    finetuned_text_encoder: TextEncoder | None = None
    # Where the image backbone's weights file is on this machine when not at the recorded path
    # (load_trained's ``image_weights_path``); see :attr:`image_weights_path`.
    image_weights_override: str | None = None

    # ------------------------------------------------------------------------ versions

    @property
    def uri(self) -> str:
        return self.ref.uri

    @property
    def name(self) -> str | None:
        return self.ref.name

    @property
    def version(self) -> str:
        return self.ref.version

    @property
    def registered(self) -> bool:
        return self.ref.registered

    # ------------------------------------------------------------------- preprocessing

    @property
    def image_weights_path(self) -> str | None:
        """The image backbone's weights file on this machine (None: the packaged weights).

        The file recorded at preprocessing, unless ``load_trained(image_weights_path=...)`` or
        ``$ITEMSAGE_IMAGE_WEIGHTS`` points elsewhere. Raises
        :class:`~itemsage.trained.image_weights.ImageWeightsError` naming the file and the settings
        that fix it when the file is missing or holds other weights than the model was trained with.
        """
        image = self.config.preprocess.image
        legacy = image.weights_path if image.backbone == self.image_backbone else None
        return resolve_image_weights(self.manifest, self.uri, self.image_weights_override, legacy_path=legacy)

    @property
    def finetune_text_layers(self) -> int:
        return int(self.manifest.get("finetune_text_layers", 0))

    @property
    def text_encoder(self) -> TextEncoder:
        """The search-query encoder: the fine-tuned MiniLM, else the process's frozen packaged one
        (built on first use)."""
        if self.finetuned_text_encoder is not None:
            return self.finetuned_text_encoder
        return frozen_text_encoder(self.device)

    # ---------------------------------------------------------------------- embeddings

    @torch.inference_mode()
    def embed_items(self, store: ItemFeatureStore, batch_size: int = ITEM_BATCH) -> np.ndarray:
        """``[store.num_items, embedding_dim]`` float32 unit item embeddings, in store order."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = np.zeros((store.num_items, self.embedding_dim), dtype=np.float32)
        for start in range(0, store.num_items, batch_size):
            idx = torch.arange(start, min(start + batch_size, store.num_items))
            batch = store.gather(idx).to(self.device)
            out[start : start + len(idx)] = self.model.embed_items(batch).float().cpu().numpy()
        return out

    def embed_search_queries(self, texts: Sequence[str]) -> np.ndarray:
        """``[n, embedding_dim]`` search-query embeddings (:func:`itemsage.trained.queries.embed_search_queries`)."""
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.embedding_dim), np.float32)
        if any(not t.strip() for t in texts):
            raise ValueError("empty search query: every text must contain something to search for")
        return embed_search_queries(self.model, self.text_encoder, texts, self.vocab).numpy()

    @torch.inference_mode()
    def embed_query_features(self, surface: str, feats: torch.Tensor) -> np.ndarray:
        """Frozen query features of ``surface`` (closeup: image features, home: user features,
        search: MiniLM features) -> ``[n, embedding_dim]`` unit query embeddings."""
        return self.model.embed_queries(surface, feats.to(self.device)).float().cpu().numpy()

    def embed_closeup(self, image_feats: torch.Tensor) -> np.ndarray:
        """Closeup queries from frozen image-backbone features ``[n, image_dim]``."""
        return self.embed_query_features("closeup", image_feats)

    def embed_home(self, user_feats: torch.Tensor) -> np.ndarray:
        """Home-feed queries from user features (``ItemFeatureStore.user_feats``)."""
        return self.embed_query_features("home", user_feats)


def load_trained(
    uri_or_dir: str | Path, device: str = "cpu", version: str | None = None, image_weights_path: str | None = None
) -> TrainedModel:
    """Load a model version: ``models:/name/<N|latest>``, ``models:/name@alias``,
    ``runs:/<id>/model``, or a bundle, checkpoint or Ray Train run directory.

    ``device``: "cpu", "cuda" or "auto". ``version`` overrides the content-hash version of a local
    bundle (Serve's ``model_version``). ``image_weights_path``: the image backbone's weights file
    on this machine, when not at the path recorded at preprocessing (checked lazily, on first
    use of the backbone: :attr:`TrainedModel.image_weights_path`). Raises :class:`~itemsage.trained.ModelNotFoundError` (a
    ``FileNotFoundError``) naming the reference when nothing loadable is there.
    """
    dev = pick_device(device)
    ref = uri_or_dir if isinstance(uri_or_dir, ModelRef) else resolve_model_ref(str(uri_or_dir), version)
    d = resolve_model_dir(ref.uri)
    manifest = read_manifest(d)
    config = load_bundle_config(d)
    vocab = Vocab.load(d / "vocab.json")
    model = build_model(
        config.train.model,
        config.train.loss,
        vocab_size=int(manifest["vocab_size"]),
        image_dim=int(manifest["image_dim"]),
        num_text_fields=len(manifest["text_fields"]),
        text_dim=int(manifest.get("text_query_dim", 384)),
    )
    model.load_state_dict(read_model_state(d))
    model.requires_grad_(False)
    encoder = None
    layers = int(manifest.get("finetune_text_layers", 0))
    if layers > 0:
        encoder = text_encoder_from_state(layers, read_text_encoder_state(d, layers), str(d))
        encoder.requires_grad_(False)
        encoder = encoder.to(dev).eval()
    return TrainedModel(model.to(dev).eval(), manifest, vocab, config, ref, d, dev, encoder, image_weights_path)

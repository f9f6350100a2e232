"""Frozen feature extraction and tower forwards shared by the Serve deployments and the baseline.

Two halves, split on purpose:

* per request, on the caller's coroutine: validate and decode what the client sent (base64,
  image bytes, allowed local paths, item ids). Every way that can fail is a 4xx
  :class:`~itemsage.serve.errors.ServeError` for *that* request only.
* per batch: the tensor work (MiniLM, the image backbone, query projections, the item tower),
  which only ever sees inputs that already passed the first half, so one bad request can never
  fail the other requests batched with it.

The frozen backbones (MiniLM, EfficientNet/ResNet) are the same for every model version, so one
:class:`Backbones` per process serves all versions; only the small learned towers are per version.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from itemsage.config import ServeConfig
from itemsage.data.images import BACKBONES, ImageBackbone, ImageDecodeError, get_backbone, load_image
from itemsage.data.query_tokens import query_token_ids
from itemsage.data.text import title_embedding_text
from itemsage.model import ItemFeatureStore
from itemsage.model.catalog_queries import history_queries, photo_queries
from itemsage.serve.bundle import ModelBundle
from itemsage.serve.errors import BadRequestError, InvalidImageError, NotReadyError, PayloadTooLargeError
from itemsage.serve.uploads import read_allowed_file
from itemsage.trained.image_weights import ImageWeightsError

# ------------------------------------------------------------------------------ backbones


class Backbones:
    """The frozen MiniLM text encoder and image backbones of this process, built on first use.

    Image backbones are keyed by name *and* weights file: two versions trained from different
    ResNet-50 files need two backbones, versions sharing one file share it. Building is guarded
    by a lock because batches run in worker threads: two first requests must not build (and
    hold) two copies of a backbone.
    """

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._lock = threading.Lock()
        self._text: Any = None
        self._images: dict[tuple[str, str | None], ImageBackbone] = {}

    @property
    def text(self) -> Any:
        with self._lock:
            if self._text is None:
                from itemsage.trained.queries import frozen_text_encoder

                self._text = frozen_text_encoder(self.device)
            return self._text

    def has_image(self, name: str) -> bool:
        return name in BACKBONES

    def image(self, name: str, weights: str | None = None) -> ImageBackbone:
        """Backbone ``name`` with ``weights`` (a local file; None: its packaged weights)."""
        if name not in BACKBONES:
            # The model is fine, the request asks for what it cannot do: a client error.
            raise BadRequestError(
                f"this model's image features come from {name!r}, which has no image backbone to run "
                "at serving time; image queries are not available"
            )
        with self._lock:
            if (name, weights) not in self._images:
                self._images[name, weights] = get_backbone(name, weights, self.device)
            return self._images[name, weights]

    def pixels(self, data: bytes, name: str, max_pixels: int, weights: str | None = None) -> torch.Tensor:
        """Decode and preprocess one image for backbone ``name`` -> [3, S, S] (4xx on bad input)."""
        backbone = self.image(name, weights)
        try:
            img = load_image(data, max_pixels)
        except ImageDecodeError as e:
            if e.reason == "too_large":
                raise PayloadTooLargeError(f"image too large: {e.detail}") from None
            raise InvalidImageError(f"not a usable image ({e.reason}): {e.detail or e.reason}") from None
        return backbone.preprocess(img)

    @torch.inference_mode()
    def image_feats(self, pixels: Sequence[torch.Tensor], name: str, weights: str | None = None) -> torch.Tensor:
        """[N, dim] backbone features of preprocessed images, one forward for all of them."""
        if not pixels:
            return torch.zeros(0, BACKBONES[name].dim) if name in BACKBONES else torch.zeros(0, 0)
        backbone = self.image(name, weights)
        return backbone(torch.stack(list(pixels)).to(self.device)).float().cpu()

    def text_feats(self, texts: Sequence[str], encoder: Any = None) -> torch.Tensor:
        """[N, 384] MiniLM sentence embeddings, one padded batch (texts are short queries).

        ``encoder``: a version's fine-tuned MiniLM; default the shared frozen one.
        """
        from itemsage.trained.queries import search_query_features

        enc = encoder if encoder is not None else self.text
        return search_query_features(enc, texts, batch_size=len(texts))


# ------------------------------------------------------------------------- query towers


@torch.inference_mode()
def project(bundle: ModelBundle, surface: str, feats: torch.Tensor, texts: Sequence[str] = ()) -> np.ndarray:
    """Frozen query features -> unit query embeddings with this version's ``surface`` tower.

    ``texts``: the search queries themselves, tokenized with the version's vocab for a model whose
    search tower reads tokens too (``model.text_residual``)."""
    dev = next(bundle.model.parameters()).device
    tokens = None
    if surface == "search" and bundle.model.text_residual is not None:
        tokens = query_token_ids(bundle.vocab, texts)
    return bundle.model.embed_queries(surface, feats.to(dev), tokens).float().cpu().numpy()


def closeup_feats(bundle: ModelBundle, item_id: str) -> torch.Tensor | None:
    """The closeup query features of a catalog item (its first image), None when it has none."""
    feats = bundle.first_image_feats(item_id)
    return None if feats is None else torch.from_numpy(np.asarray(feats, np.float32)).unsqueeze(0)


@torch.inference_mode()
def catalog_item_embeddings(bundle: ModelBundle, item_ids: Sequence[str]) -> np.ndarray:
    """Item-tower embeddings of catalog items from the stored features (no backbone needed)."""
    batch = bundle.store.gather(torch.tensor(bundle.rows(item_ids), dtype=torch.int64))
    dev = next(bundle.model.parameters()).device
    return bundle.model.embed_items(batch.to(dev)).float().cpu().numpy()


# --------------------------------------------------------------------------- item tower


@dataclass
class PreparedItem:
    """A validated item payload: token ids per text field, preprocessed image pixels, and the title
    (MiniLM-encoded in the batch, for towers with ``model.use_title_embedding``)."""

    tokens: dict[str, list[int]]
    pixels: list[torch.Tensor]
    title: str = ""
    # The image backbone's weights file the pixels are for (None: packaged weights).
    weights: str | None = None


def image_payloads(payload: Mapping[str, Any], cfg: ServeConfig) -> list[bytes]:
    """The raw bytes of an item's images: uploads (already base64-decoded by the API layer), then
    local paths, read here, on the server that owns the files, and only under allowed roots."""
    out = [bytes(b) for b in payload.get("images") or []]
    out += [
        read_allowed_file(p, cfg.allowed_image_roots, cfg.max_upload_bytes) for p in payload.get("image_paths") or []
    ]
    return out


def image_weights(bundle: ModelBundle) -> str | None:
    """The version's image-backbone weights file here (None: packaged): recorded at training,
    overridable by ``serve.image_weights_path``. Missing or different weights are this server's
    misconfiguration, not the client's: 503 naming the file and the setting."""
    try:
        return bundle.trained.image_weights_path
    except ImageWeightsError as e:
        raise NotReadyError(f"image features are unavailable: {e}") from None


def check_image_input(bundle: ModelBundle, what: str) -> None:
    """422 when this version cannot use an image at all (before any decoding)."""
    if not bundle.trained_on_images:
        raise BadRequestError(
            f"model version {bundle.ref.version} was trained on a catalog without item images, so it has "
            f"no use for {what}; search by text, or ask /similar for a catalog item_id"
        )


def prepare_item(
    payload: Mapping[str, Any], bundle: ModelBundle, backbones: Backbones, cfg: ServeConfig
) -> PreparedItem:
    """Tokenize the text fields with the model's vocab and preprocess the images (4xx on bad input)."""
    images = image_payloads(payload, cfg)
    if images and not backbones.has_image(bundle.image_backbone):
        raise BadRequestError(
            f"this model was trained on {bundle.image_backbone!r} image features, which cannot be computed "
            "at serving time; send the item without images"
        )
    if images:
        check_image_input(bundle, "item images (send the item without them)")
    weights = image_weights(bundle) if images else None
    pixels = [
        backbones.pixels(b, bundle.image_backbone, cfg.max_image_pixels, weights) for b in images[: bundle.max_images]
    ]
    tokens = {f: bundle.vocab.encode(str(payload.get(f) or "")).tolist() for f in bundle.text_fields}
    # The title embedding's text as in the model's training features (an empty title falls back).
    return PreparedItem(tokens, pixels, title_embedding_text(payload, bundle.title_fallback), weights)


@torch.inference_mode()
def embed_prepared_items(bundle: ModelBundle, backbones: Backbones, items: Sequence[PreparedItem]) -> np.ndarray:
    """[N, D] item embeddings: one backbone forward over every image of the batch, one tower forward."""
    all_pixels = [p for it in items for p in it.pixels]
    # Every item of one version resolved the same weights file.
    weights = next((it.weights for it in items if it.pixels), None)
    feats = backbones.image_feats(all_pixels, bundle.image_backbone, weights).numpy() if all_pixels else None
    # The frozen encoder, as in preprocessing (items.parquet title_emb), even for a version whose
    # search queries use a fine-tuned one.
    titles = backbones.text_feats([it.title for it in items]).numpy() if bundle.uses_title_embedding else None
    rows, start = [], 0
    for i, it in enumerate(items):
        n = len(it.pixels)
        row: dict[str, Any] = {f"tok_{f}": ids for f, ids in it.tokens.items()}
        if n:
            row["image_feats"] = feats[start : start + n].reshape(-1).tolist()  # type: ignore[index]
        if titles is not None:
            row["title_emb"] = titles[i]
        start += n
        rows.append(row)
    store = ItemFeatureStore.from_rows(rows, bundle.image_dim, bundle.text_fields, bundle.max_images)
    batch = store.gather(torch.arange(len(items)))
    dev = next(bundle.model.parameters()).device
    return bundle.model.embed_items(batch.to(dev)).float().cpu().numpy()


# ------------------------------------------------------------------- per-process encoders


class LocalEncoders:
    """Everything a process needs to encode queries and items for any loaded model version.

    Holds the frozen backbones once and the last two model versions (:class:`VersionCache`),
    so requests pinned to the previous version keep working while a swap is under way. The
    ``*_batch`` methods take one entry per request, possibly for different versions, and run one
    backbone forward for all of them; only the small per-version towers run per version group.
    """

    def __init__(self, cfg: ServeConfig, device: str = "cpu", cache_size: int = 2, base_dir: str | None = None) -> None:
        from itemsage.serve.bundle import VersionCache, absolute_path

        # A relative serve.image_weights_path is relative to where the app was started (base_dir),
        # not to a replica's working directory.
        if cfg.image_weights_path:
            cfg = cfg.replace(image_weights_path=absolute_path(cfg.image_weights_path, base_dir))
        self.cfg = cfg
        self.device = device
        self.backbones = Backbones(device)
        self._cache: VersionCache[Any, ModelBundle] = VersionCache(cache_size)
        self._lock = threading.Lock()

    def bundle(self, spec: Any) -> ModelBundle:
        """The loaded :class:`ModelBundle` of a ``ModelSpec`` (loads it on first use; blocking)."""
        from itemsage.serve.bundle import load_bundle

        with self._lock:  # one load per version, even when several threads ask at once
            return self._cache.get_or_load(
                spec, lambda: load_bundle(spec.ref, spec.features, self.device, self.cfg.image_weights_path)
            )

    def cached(self, spec: Any) -> ModelBundle | None:
        """The bundle if already loaded, else None. Never waits: the lock may be held for seconds by
        a load in another thread, and this runs on the event loop."""
        return self._cache.peek(spec)

    def cached_versions(self) -> list[str]:
        return [k.ref.version for k in self._cache.keys()]

    def warm(self, spec: Any, text: bool = True) -> None:
        """Load the version and build the backbones it needs, so first requests pay nothing.

        ``text=False`` skips MiniLM: the item tower never uses it (an item's text goes in as
        token ids), so the ItemEncoder does not hold a copy.
        """
        bundle = self.bundle(spec)
        if text and bundle.text_encoder is None:
            _ = self.backbones.text
        if self.backbones.has_image(bundle.image_backbone) and bundle.trained_on_images:
            # A missing or different weights file fails the version's load here (ImageWeightsError
            # naming the file and the setting), not its first image request.
            self.backbones.image(bundle.image_backbone, bundle.trained.image_weights_path)

    # ---- queries -----------------------------------------------------------------------------
    def text_batch(self, bundles: Sequence[ModelBundle], texts: Sequence[str]) -> list[np.ndarray]:
        # Versions sharing the frozen MiniLM share one forward; a fine-tuned one runs its own.
        frozen = [i for i, b in enumerate(bundles) if b.text_encoder is None]
        shared = self.backbones.text_feats([texts[i] for i in frozen]) if frozen else None
        position = {i: j for j, i in enumerate(frozen)}

        def run(b: ModelBundle, rows: list[int]) -> np.ndarray:
            if b.text_encoder is None:
                feats = shared[[position[i] for i in rows]]  # type: ignore[index]
            else:
                feats = self.backbones.text_feats([texts[i] for i in rows], b.text_encoder)
            return project(b, "search", feats, [texts[i] for i in rows])

        return _per_version(bundles, run)

    def image_pixels(self, bundle: ModelBundle, data: bytes) -> torch.Tensor:
        check_image_input(bundle, "image queries")
        weights = image_weights(bundle)
        return self.backbones.pixels(data, bundle.image_backbone, self.cfg.max_image_pixels, weights)

    def image_batch(self, bundles: Sequence[ModelBundle], pixels: Sequence[torch.Tensor]) -> list[np.ndarray]:
        # Versions share the backbone only when they name the same one with the same weights file.
        out: list[np.ndarray | None] = [None] * len(bundles)
        keys = [(b.image_backbone, image_weights(b) or "") for b in bundles]
        for key in sorted(set(keys)):
            idx = [i for i, k in enumerate(keys) if k == key]
            feats = self.backbones.image_feats([pixels[i] for i in idx], key[0], key[1] or None)
            part = _per_version(
                [bundles[i] for i in idx],
                lambda b, rows, feats=feats: photo_queries(b.model, b.store, feats[rows]).numpy(),
            )
            for i, emb in zip(idx, part):
                out[i] = emb
        return out  # type: ignore[return-value]

    def history(self, bundle: ModelBundle, item_ids: Sequence[str]) -> np.ndarray:
        """A user's query as ``model.home_query`` says (404 for unknown ids)."""
        return history_queries(bundle.model, bundle.store, [bundle.rows(item_ids)]).numpy()[0]

    def similar_query(self, bundle: ModelBundle, item_id: str) -> tuple[str, np.ndarray]:
        """The query for "items like this one": the closeup tower on its first image (the paper's
        closeup surface) with its catalog neighbours, the item itself left out; an item without
        images falls back to its own item-tower embedding."""
        feats = closeup_feats(bundle, item_id)
        if feats is not None:
            own = torch.tensor(bundle.rows([item_id]), dtype=torch.int64)
            return "closeup", photo_queries(bundle.model, bundle.store, feats, exclude=own).numpy()[0]
        emb = torch.from_numpy(catalog_item_embeddings(bundle, [item_id]))
        dev = next(bundle.model.parameters()).device
        with torch.inference_mode():  # popularity-debiased like every query (model.popularity_debias)
            return "item", bundle.model.embed_item_queries(emb.to(dev)).float().cpu().numpy()[0]

    # ---- items -------------------------------------------------------------------------------
    def prepare_item(self, bundle: ModelBundle, payload: Mapping[str, Any]) -> PreparedItem:
        return prepare_item(payload, bundle, self.backbones, self.cfg)

    def item_batch(self, bundles: Sequence[ModelBundle], items: Sequence[PreparedItem]) -> list[np.ndarray]:
        return _per_version(bundles, lambda b, rows: embed_prepared_items(b, self.backbones, [items[i] for i in rows]))


def _per_version(bundles: Sequence[ModelBundle], run: Any) -> list[np.ndarray]:
    """Apply ``run(bundle, rows)`` once per distinct bundle; results back in request order."""
    out: list[np.ndarray | None] = [None] * len(bundles)
    groups: dict[int, list[int]] = {}
    for i, b in enumerate(bundles):
        groups.setdefault(id(b), []).append(i)
    for rows in groups.values():
        emb = run(bundles[rows[0]], rows)
        for j, i in enumerate(rows):
            out[i] = emb[j]
    return out  # type: ignore[return-value]

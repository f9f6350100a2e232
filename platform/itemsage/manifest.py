"""Typed reads of a model manifest (``manifest.json`` of a bundle or checkpoint).

Shared by the loaded model (``itemsage.trained.TrainedModel``) and the views built on it
(serving's ``ModelBundle``), so the defaults for manifests written before a field existed live in
one place.
"""

from __future__ import annotations

from typing import Any

from itemsage.config import TEXT_FIELDS


class ManifestFields:
    """Mixin for a class with a ``manifest`` dict and a ``model`` attribute."""

    manifest: dict[str, Any]
    model: Any  # the loaded ItemSageModel

    @property
    def uses_title_embedding(self) -> bool:
        """Whether item embeddings read MiniLM title embeddings: the item tower's input
        (``model.use_title_embedding``) or the served title part (``model.title_blend``)."""
        cfg = self.model.model_cfg
        return bool(cfg.use_title_embedding or cfg.title_blend > 0)

    @property
    def image_backbone(self) -> str:
        return str(self.manifest.get("image_backbone", ""))

    @property
    def trained_on_images(self) -> bool:
        """False when the training catalog had no item images (Amazon metadata, Shopee without its
        image folder): the closeup tower then never saw an image feature, so image queries and
        item images mean nothing to this model. Manifests without the count: True."""
        count = self.manifest.get("items_with_images")
        return count is None or int(count) > 0

    @property
    def image_dim(self) -> int:
        return int(self.manifest["image_dim"])

    @property
    def embedding_dim(self) -> int:
        return int(self.manifest["embedding_dim"])

    @property
    def text_fields(self) -> tuple[str, ...]:
        return tuple(self.manifest.get("text_fields") or TEXT_FIELDS)

    @property
    def title_fallback(self) -> tuple[str, ...]:
        """The fields an empty title's MiniLM embedding is computed from (``preprocess.title_fallback``
        of the training features); manifests without it: none."""
        return tuple(self.manifest.get("title_fallback") or ())

    @property
    def max_images(self) -> int:
        return int(self.manifest.get("max_images", 20))

"""The public Python API: one trained ItemSage model, every kind of embedding it makes.

    from itemsage.api import ItemSage

    sage = ItemSage.load("models:/itemsage/3")            # or a bundle / checkpoint directory
    ids, items = sage.embed_catalog("data/sample/fashion")   # [N, 256], any supported layout
    queries = sage.embed_text_queries(["red running shoes"]) # [1, 256], same space
    scores = queries @ items.T                              # cosine: every vector is unit-norm

Items, search queries (text), closeup queries (images) and home-feed users all land in one
``embedding_dim``-d space (256 by default), so any query ranks any item by inner product. Items the
model never saw are fine: catalogs are featurized with the model's own vocabulary and image backbone
(the preprocessing featurizers), exactly as training featurized its catalog. See
docs/python-api.md for the full walk-through.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from itemsage.config import FilterableAttribute, HybridConfig, IndexConfig
from itemsage.data.images import ImageBackbone, ImageDecodeError, get_backbone, load_image
from itemsage.index import ItemIndex, build_index
from itemsage.index.attributes import AttributeTable, specs_from_config
from itemsage.index.compat import check_features_compatible, is_features_dir
from itemsage.index.embed import CPU_BATCH_SIZE
from itemsage.index.featurize import CatalogFeatures, featurize_catalog
from itemsage.index.filters import FilterError
from itemsage.index.hybrid import SearchModeError, fuse, lexical_search, resolve_mode
from itemsage.index.lexical import LexicalIndex, item_text
from itemsage.model import ItemFeatureStore
from itemsage.model.catalog_queries import history_queries, photo_queries
from itemsage.trained import ModelNotFoundError
from itemsage.trained.loaded import TrainedModel, load_trained, pick_device

__all__ = ["CatalogFeatures", "FilterError", "ItemSage", "ModelNotFoundError", "SearchModeError"]

# Decoded pixels of one query image; larger images are refused before decoding (bomb guard).
MAX_QUERY_PIXELS = 40_000_000


class ItemSage:
    """A loaded model version. Build it with :meth:`load`; every ``embed_*`` returns float32
    ``[n, embedding_dim]`` unit vectors (NumPy), row i for input i."""

    def __init__(self, trained: TrainedModel, device: str = "cpu") -> None:
        self.trained = trained
        self.device = device
        self._backbone: ImageBackbone | None = None

    @classmethod
    def load(cls, uri_or_dir: str | Path, device: str = "auto", image_weights_path: str | None = None) -> ItemSage:
        """Load ``models:/itemsage/<version|latest>``, ``runs:/<id>/model``, or a bundle,
        checkpoint or Ray Train run directory.

        MLflow URIs use ``$MLFLOW_TRACKING_URI`` (default ``sqlite:///mlflow.db``). Raises
        :class:`ModelNotFoundError` (a ``FileNotFoundError``) naming the reference when it does
        not exist. ``device``: "auto" (CUDA when available), "cpu" or "cuda".
        ``image_weights_path``: for a model trained from a backbone weights file (e.g. resnet50),
        where that file is on this machine if not at the path recorded at preprocessing.
        """
        dev = pick_device(device)
        return cls(load_trained(uri_or_dir, device=dev, image_weights_path=image_weights_path), dev)

    # ------------------------------------------------------------------ what this model is

    @property
    def version(self) -> str:
        """The registry version ("3"), or a content hash ("sha-...") for a local bundle."""
        return self.trained.version

    @property
    def dim(self) -> int:
        return self.trained.embedding_dim

    @property
    def manifest(self) -> dict[str, Any]:
        return dict(self.trained.manifest)

    def __repr__(self) -> str:
        return f"ItemSage(uri={self.trained.uri!r}, version={self.version!r}, dim={self.dim}, device={self.device!r})"

    # ------------------------------------------------------------------------------ items

    def featurize_catalog(
        self, path: str | Path, layout: str = "auto", *, title_embeddings: bool = True, engine: str = "auto"
    ) -> CatalogFeatures:
        """Read a catalog (``layout``: auto | fashion | shopee | generic) and compute its item
        features with this model's vocab and image backbone.

        Keep the result to embed users against it (:meth:`embed_users`) without featurizing the
        catalog twice. ``engine``: "local" (this process), "ray" (Ray Data stages of
        preprocessing) or "auto" (Ray for large catalogs or when connected to a cluster).
        """
        return featurize_catalog(
            path, self.trained, layout, title_embeddings=title_embeddings, engine=engine, device=self.device
        )

    def embed_catalog(
        self, path: str | Path, layout: str = "auto", *, engine: str = "auto", batch_size: int = CPU_BATCH_SIZE
    ) -> tuple[list[str], np.ndarray]:
        """``(item_ids, embeddings [N, dim])`` of every usable item of a catalog.

        ``path`` is a catalog in any supported layout, or a preprocessed features directory
        made with this model's vocabulary. Rows the catalog readers reject (no id, duplicate id,
        no content) are skipped, as in preprocessing.
        """
        if is_features_dir(str(path)):
            check_features_compatible(str(path), self.trained)
            store = ItemFeatureStore.load(
                str(path), max_images=self.trained.max_images, text_fields=self.trained.text_fields
            )
        else:
            feats = self.featurize_catalog(
                path, layout, title_embeddings=self.trained.uses_title_embedding, engine=engine
            )
            store = feats.store(self.trained.max_images, self.trained.text_fields)
        return list(store.item_ids or []), self._embed_store(store, batch_size)

    def embed_features(
        self, features: CatalogFeatures, batch_size: int = CPU_BATCH_SIZE
    ) -> tuple[list[str], np.ndarray]:
        """``(item_ids, embeddings)`` of an already featurized catalog (:meth:`featurize_catalog`)."""
        store = features.store(self.trained.max_images, self.trained.text_fields)
        return features.item_ids, self._embed_store(store, batch_size)

    def build_index(
        self,
        features: CatalogFeatures,
        spec: str = "Flat",
        *,
        filterable: Mapping[str, FilterableAttribute] | None = None,
        batch_size: int = CPU_BATCH_SIZE,
        lexical: bool = True,
    ) -> ItemIndex:
        """An index (``itemsage.index``) over a featurized catalog's item embeddings, with its
        filterable attributes (default: ``IndexConfig().filterable``) read from the catalog, so
        :meth:`search` can take ``filters``, and (``lexical``) a BM25 index over the items' text
        fields, so it can search in lexical and hybrid mode. IVF specs ("IVF{nlist},Flat") can
        remove items later."""
        ids, vectors = self.embed_features(features, batch_size)
        index = build_index(vectors, ids, spec, use_gpu="auto" if self.device != "cpu" else False)
        index.model_version = self.version
        attrs = IndexConfig().filterable if filterable is None else filterable
        labels = index.idmap.lookup(ids)
        columns = {c: features.items[c].tolist() for c in features.items.columns}
        index.attach_attributes(AttributeTable.from_columns(specs_from_config(attrs), labels, columns))
        if lexical:
            fields = [f for f in self.trained.text_fields if f in features.items.columns]
            rows = features.items[fields].to_dict("records") if fields else []
            docs = {
                int(lab): item_text({str(k): v for k, v in row.items()}, fields)
                for lab, row in zip(labels.tolist(), rows)
            }
            index.attach_lexical(LexicalIndex(fields, docs) if fields else None)
        return index

    def search(
        self,
        index: ItemIndex,
        queries: str | Sequence[str] | np.ndarray,
        k: int = 10,
        filters: Mapping[str, Any] | None = None,
        mode: str | None = None,
        hybrid: HybridConfig | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Top-k ``(item_id, score)`` per query, best first, among the items matching ``filters``.

        ``queries``: search texts (embedded by the search tower) or query embeddings [n, dim] of
        any surface. ``filters`` is the HTTP API's object (``{"gender": "Women", "price":
        {"lt": 50}}``, docs/serving.md), applied inside the index search; a filter naming an
        attribute the index lacks, or a value of the wrong type, raises ``FilterError`` (a
        ``ValueError``); no matching item gives empty lists.

        ``mode``: "dense" (embeddings, scores are cosines), "lexical" (BM25 over the items' text,
        scores are BM25) or "hybrid" (both rankings fused by reciprocal rank, RRF scores), as
        ``/search`` takes it; default ``hybrid.default_mode`` (``HybridConfig``), dense for an
        index without a lexical index or for embedding queries. Lexical and hybrid need texts and
        an index with a lexical index (:meth:`build_index`); else ``SearchModeError``.
        """
        cfg = hybrid or HybridConfig()
        if isinstance(queries, str):
            queries = [queries]
        where = index.select(dict(filters)) if filters else None  # bad filters fail before embedding
        if isinstance(queries, np.ndarray):
            if mode not in (None, "dense"):
                raise SearchModeError(f"search mode {mode!r} needs query texts, not embeddings")
            mode = "dense"
        mode = resolve_mode(index, mode, cfg)
        texts = list(queries) if not isinstance(queries, np.ndarray) else []
        if mode == "lexical":
            ids, lex_scores = lexical_search(index, texts, k, where, cfg)
            return [[(i, float(s)) for i, s in zip(row, srow)] for row, srow in zip(ids, lex_scores)]
        q = queries if isinstance(queries, np.ndarray) else self.embed_text_queries(texts)
        if mode == "dense":
            ids, scores = index.search(q, k, where=where)
            return [[(i, float(s)) for i, s in zip(row, srow)] for row, srow in zip(ids, scores)]
        n = max(int(k), cfg.depth)
        dense_ids, _ = index.search(q, n, where=where)
        lex_ids, _ = lexical_search(index, texts, n, where, cfg)
        return [fuse(d, lx, cfg)[:k] for d, lx in zip(dense_ids, lex_ids)]

    def _embed_store(self, store: ItemFeatureStore, batch_size: int) -> np.ndarray:
        return self.trained.embed_items(store, batch_size)

    # ---------------------------------------------------------------------------- queries

    def embed_text_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Search queries: MiniLM sentence embedding (the model's fine-tuned MiniLM when it was
        trained with ``finetune_text_layers > 0``, else the frozen one), then the search tower.
        A blank text raises ``ValueError``."""
        return self.trained.embed_search_queries(texts)

    @torch.inference_mode()
    def embed_image_queries(
        self,
        images: Sequence[str | Path | bytes],
        catalog: CatalogFeatures | str | Path | None = None,
        layout: str = "auto",
    ) -> np.ndarray:
        """Closeup queries: image files (paths or URIs) or encoded image bytes -> the frozen image
        backbone -> this model's closeup tower. With ``catalog`` (as :meth:`embed_users` takes it),
        each photo's ``model.closeup_neighbors`` nearest catalog photos are read too, as Serve does
        (``itemsage.model.catalog_queries``); without it, the tower alone. A bad image raises
        ``ValueError`` naming it."""
        if not images:
            return np.zeros((0, self.dim), np.float32)
        backbone = self._image_backbone()
        pixels = []
        for i, src in enumerate(images):
            try:
                img = load_image(str(src) if isinstance(src, Path) else src, MAX_QUERY_PIXELS)
            except ImageDecodeError as e:
                name = f"{len(src)} bytes" if isinstance(src, bytes) else str(src)
                raise ValueError(f"image query {i} ({name}) is not usable: {e}") from None
            pixels.append(backbone.preprocess(img))
        feats = backbone(torch.stack(pixels).to(self.device)).float()
        if catalog is None:
            return self._project("closeup", feats)
        store, _ = self._catalog_store(catalog, layout)
        return photo_queries(self.trained.model, store, feats).numpy()

    def _image_backbone(self) -> ImageBackbone:
        if not self.trained.trained_on_images:
            raise ValueError(
                f"this model cannot embed image queries: model {self.trained.uri} was trained on a catalog "
                "without item images, so its closeup tower never saw an image"
            )
        if self._backbone is None:
            name = self.trained.image_backbone
            try:
                self._backbone = get_backbone(name, self.trained.image_weights_path, self.device)
            except ValueError as e:
                raise ValueError(f"this model cannot embed image queries: {e}") from None
        return self._backbone

    @torch.inference_mode()
    def embed_users(
        self, histories: Sequence[Sequence[str]], catalog: CatalogFeatures | str | Path, layout: str = "auto"
    ) -> np.ndarray:
        """Home-feed queries: each user is the list of item ids they engaged with.

        ``catalog`` gives the items' features: a :class:`CatalogFeatures` from
        :meth:`featurize_catalog` (fastest when called repeatedly), a features directory, or a
        raw catalog path (featurized on the fly). The query is built as ``model.home_query`` says:
        the mean of the history items' embeddings ("items"), or the home tower on the mean
        first-image feature and mean title embedding of the history ("tower",
        docs/feature-format.md).
        """
        if not histories:
            return np.zeros((0, self.dim), np.float32)
        store, ids = self._catalog_store(catalog, layout)
        row_of = {item_id: r for r, item_id in enumerate(ids)}
        rows = []
        for u, history in enumerate(histories):
            if not history:
                raise ValueError(f"history {u} is empty: a home-feed query needs at least one item")
            missing = [i for i in history if i not in row_of]
            if missing:
                shown = ", ".join(repr(m) for m in missing[:5])
                raise KeyError(f"history {u}: item id(s) not in the catalog: {shown}")
            rows.append([row_of[i] for i in history])
        return history_queries(self.trained.model, store, rows).numpy()

    def _catalog_store(self, catalog: CatalogFeatures | str | Path, layout: str) -> tuple[ItemFeatureStore, list[str]]:
        if isinstance(catalog, CatalogFeatures):
            if not catalog.has_title_emb:
                raise ValueError(
                    "these catalog features have no title embeddings; featurize with title_embeddings=True"
                )
            return catalog.store(self.trained.max_images, self.trained.text_fields), catalog.item_ids
        if is_features_dir(str(catalog)):
            store = ItemFeatureStore.load(
                str(catalog), max_images=self.trained.max_images, text_fields=self.trained.text_fields
            )
            if store.image_dim != self.trained.image_dim:
                raise ValueError(
                    f"features {catalog} have {store.image_dim}-d image features; "
                    f"this model reads {self.trained.image_dim}-d"
                )
            return store, list(store.item_ids or [])
        feats = self.featurize_catalog(catalog, layout, title_embeddings=True)
        return feats.store(self.trained.max_images, self.trained.text_fields), feats.item_ids

    def _project(self, surface: str, feats: torch.Tensor) -> np.ndarray:
        return self.trained.embed_query_features(surface, feats)

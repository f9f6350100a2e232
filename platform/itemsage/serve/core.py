"""The retrieval core: one immutable serving state (model version + index + catalog) and its search.

A :class:`RetrievalState` is built completely (index read and verified, catalog loaded) before it
is published, and is never modified afterwards. Swapping versions is a single reference
assignment, so a request that picked up the old state finishes on the old state: every answer
comes from exactly one model version and one index version, and says which.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from itemsage.serve.bundle import Catalog, absolute_path, features_dir
from itemsage.serve.errors import InvalidImageError, ItemNotFoundError
from itemsage.serve.filtering import facets_json, search_where, select_filter
from itemsage.trained import ModelRef, resolve_model_ref


@dataclass(frozen=True)
class ServingSpec:
    """What to serve: the ``user_config`` of the deployments, validated.

    Attributes:
        model_uri: ``models:/itemsage/3``, ``models:/itemsage/latest``, ``runs:/<id>/model`` or a
            bundle/checkpoint directory.
        index_uri: a saved index directory, or ``models:/itemsage/3`` for the index logged with
            that model version.
        features: features directory for catalog metadata and item features; default: the one
            named in the model manifest.
        model_version: version label for a model that is not in the registry (default: a hash of
            its files).
        index_version: version label of the index (default: derived from its metadata and hash).
        mlflow_tracking_uri: tracking server for ``models:/`` and ``runs:/`` URIs (default:
            ``$MLFLOW_TRACKING_URI``).
    """

    model_uri: str
    index_uri: str
    features: str | None = None
    model_version: str | None = None
    index_version: str | None = None
    mlflow_tracking_uri: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    KEYS = ("model_uri", "index_uri", "features", "model_version", "index_version", "mlflow_tracking_uri")

    @classmethod
    def from_user_config(cls, config: Mapping[str, Any], allowed_extra: Collection[str] = ()) -> ServingSpec:
        """Validate a user_config mapping; deployment-specific knobs go through ``allowed_extra``."""
        if not isinstance(config, Mapping):
            raise ValueError(f"user_config must be a mapping, got {type(config).__name__}")
        unknown = sorted(set(config) - set(cls.KEYS) - set(allowed_extra))
        if unknown:
            raise ValueError(
                f"unknown user_config key(s) {', '.join(unknown)}; known: {', '.join([*cls.KEYS, *allowed_extra])}"
            )
        for key in ("model_uri", "index_uri"):
            if not isinstance(config.get(key), str) or not config[key]:
                raise ValueError(f"user_config.{key} is required (a non-empty string)")
        values = {k: (None if config.get(k) in (None, "") else str(config[k])) for k in cls.KEYS}
        extra = {k: v for k, v in config.items() if k in allowed_extra}
        return cls(**values, extra=extra)  # type: ignore[arg-type]

    def resolved(self, base_dir: str | None) -> ServingSpec:
        """Local paths (and a relative SQLite tracking URI) made absolute against ``base_dir``.

        Replicas do not run in the directory the app was started from, so relative paths in a
        user_config mean "relative to where ``serve run``/``run_local`` was started", pinned here.
        """
        if base_dir is None:
            return self
        tracking = self.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
        if tracking.startswith("sqlite:///") and not tracking.startswith("sqlite:////"):
            tracking = "sqlite:///" + absolute_path(tracking[len("sqlite:///") :], base_dir)
        elif "://" not in tracking:
            tracking = absolute_path(tracking, base_dir)
        return dataclasses.replace(
            self,
            model_uri=absolute_path(self.model_uri, base_dir),
            index_uri=absolute_path(self.index_uri, base_dir),
            features=absolute_path(self.features, base_dir) if self.features else None,
            mlflow_tracking_uri=tracking,
        )

    def apply_environment(self) -> None:
        """Point MLflow at the configured tracking server before any ``models:/`` lookup."""
        if self.mlflow_tracking_uri:
            os.environ["MLFLOW_TRACKING_URI"] = self.mlflow_tracking_uri


@dataclass(frozen=True)
class ModelSpec:
    """What an encoder needs to load one model version: a pinned reference and the features."""

    ref: ModelRef
    features: str


@dataclass(frozen=True)
class Hit:
    item_id: str
    score: float


@dataclass(frozen=True)
class RetrievalState:
    """One published serving version. Immutable; replaced, never edited."""

    model: ModelSpec
    model_manifest: dict[str, Any]
    index: Any  # itemsage.index ItemIndex
    index_uri: str
    index_version: str
    catalog: Catalog

    @property
    def model_version(self) -> str:
        return self.model.ref.version

    def where(self, filters: Mapping[str, Any] | None) -> Any:
        """The index selection of a request's ``filters`` (None: no filter); 422 when the index
        cannot filter on them (``itemsage.index.filters``)."""
        return select_filter(self.index, filters)

    def search(self, query: np.ndarray, k: int, exclude: Collection[str] = (), where: Any = None) -> list[Hit]:
        """Top ``k`` items for one query embedding, leaving out ``exclude`` (e.g. the query item),
        among the items ``where`` selects (:meth:`where`; the filter runs inside the index search)."""
        want = min(int(k) + len(exclude), self.index.ntotal)
        if want <= 0:
            return []
        ids, scores = search_where(self.index, np.asarray(query, np.float32).reshape(1, -1), want, where)
        hits = [Hit(i, float(s)) for i, s in zip(ids[0], scores[0]) if i not in exclude and np.isfinite(s)]
        return hits[:k]

    def search_many(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """Top ``k`` items for each row of ``queries`` [Q, D]: one index call for the batch."""
        kk = min(int(k), self.index.ntotal)
        if kk <= 0:
            return [[] for _ in range(len(queries))]
        ids, scores = self.index.search(np.asarray(queries, np.float32), kk)
        return [
            [Hit(i, float(s)) for i, s in zip(row_ids, row_scores) if np.isfinite(s)]
            for row_ids, row_scores in zip(ids, scores)
        ]

    def hit_json(self, hit: Hit) -> dict[str, Any]:
        item = self.catalog.get(hit.item_id) if hit.item_id in self.catalog else None
        return {
            "item_id": hit.item_id,
            "score": hit.score,
            "title": item.title if item else "",
            "product_types": item.fields.get("product_types", "") if item else "",
            "image_url": image_url(hit.item_id) if item and item.image_paths else None,
        }

    def answer(self, surface: str, k: int, hits: list[Hit], mode: str = "dense") -> dict[str, Any]:
        return {
            "surface": surface,
            "k": k,
            "mode": mode,
            "results": [self.hit_json(h) for h in hits],
            "model_version": self.model_version,
            "index_version": self.index_version,
        }

    def item_json(self, item_id: str) -> dict[str, Any]:
        item = self.catalog.get(item_id)
        return {
            "item_id": item.item_id,
            "title": item.title,
            "fields": {k: v for k, v in item.fields.items() if v},
            "image_urls": [image_url(item.item_id, i) for i in range(len(item.image_paths))],
            "index_version": self.index_version,
        }

    def versions(self) -> dict[str, Any]:
        m = self.model_manifest
        return {
            "model": {
                "name": self.model.ref.name,
                "version": self.model_version,
                "uri": self.model.ref.uri,
                "image_backbone": str(m.get("image_backbone", "")),
                "embedding_dim": int(m.get("embedding_dim", self.index.dim)),
            },
            "index": {
                "version": self.index_version,
                "uri": self.index_uri,
                "spec": self.index.spec,
                "ntotal": int(self.index.ntotal),
                "device": self.index.device,
                "model_version": None if self.index.model_version is None else str(self.index.model_version),
            },
        }

    def facets(self) -> dict[str, Any]:
        return facets_json(self.index, self.index_version)

    def health(self) -> dict[str, Any]:
        if self.index is None or self.index.ntotal <= 0:
            raise RuntimeError("the index is not loaded or holds no items")
        return {
            "status": "ok",
            "model_version": self.model_version,
            "index_version": self.index_version,
            "items": int(self.index.ntotal),
        }


def image_url(item_id: str, position: int = 0) -> str:
    from urllib.parse import quote

    suffix = f"?i={position}" if position else ""
    return f"/items/{quote(item_id, safe='')}/image{suffix}"


_MEDIA_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp", "BMP": "image/bmp"}


def read_catalog_image(path: str, max_bytes: int) -> tuple[bytes, str]:
    """Bytes and media type of a catalog image; refuses anything that is not a web image format.

    The path always comes from the catalog, never from the request; the format check makes sure
    that even a bad catalog entry cannot turn this endpoint into a reader of arbitrary files.
    """
    try:
        if "://" in path:
            from pyarrow import fs as pafs

            filesystem, inner = pafs.FileSystem.from_uri(path)
            with filesystem.open_input_stream(inner) as f:
                data = f.read(max_bytes + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(max_bytes + 1)
    except (OSError, ValueError):
        raise ItemNotFoundError("the item's image file is missing") from None
    if len(data) > max_bytes:
        raise InvalidImageError("the item's image file is over the size limit")
    try:
        fmt = Image.open(io.BytesIO(data)).format or ""
    except Exception:  # noqa: BLE001 - Pillow raises many types for non-images
        fmt = ""
    if fmt not in _MEDIA_TYPES:
        raise ItemNotFoundError("the item's image file is not a servable image")
    return data, _MEDIA_TYPES[fmt]


# ------------------------------------------------------------------------------- loading


def resolve_index_dir(index_uri: str, tracking_uri: str | None = None) -> tuple[Path, Path | None]:
    """A local index directory for a path or ``models:/<name>/<version>`` (the index logged with
    that model version), and the temporary download directory to delete after loading, if any."""
    if index_uri.startswith("models:/"):
        ref = resolve_model_ref(index_uri)
        if ref.name is None:
            raise ValueError(f"cannot resolve index URI {index_uri!r}")
        from itemsage.index import download_index

        dst = Path(tempfile.mkdtemp(prefix=f"itemsage-index-{ref.name}-{ref.version}-"))
        try:
            return Path(download_index(ref.name, ref.version, dst, tracking_uri=tracking_uri)), dst
        except BaseException:
            shutil.rmtree(dst, ignore_errors=True)
            raise
    p = Path(index_uri.removeprefix("file://"))
    if not p.is_dir():
        raise FileNotFoundError(f"index directory {index_uri!r} does not exist")
    return p, None


def index_version_of(index_dir: Path, override: str | None) -> str:
    """``override``, else ``<model version>-<content hash>`` from the index's metadata.json.

    The content hash (of the index files' recorded SHA-256s) tells two indexes for the same model
    apart, e.g. a rebuild after catalog changes.
    """
    if override:
        return override
    meta = json.loads((index_dir / "metadata.json").read_text())
    digest = "".join(sorted(str(v.get("sha256", "")) for v in meta.get("files", {}).values()))
    short = hashlib.sha256(digest.encode()).hexdigest()[:8]
    mv = meta.get("model_version")
    return f"{mv}-{short}" if mv not in (None, "") else short


def load_state(spec: ServingSpec, use_gpu: str | bool = False, base_dir: str | None = None) -> RetrievalState:
    """Load and verify everything a version needs; nothing is published here (heavy).

    ``spec`` should already be :meth:`ServingSpec.resolved`; ``base_dir`` anchors a relative
    features path found in the model manifest.
    """
    from itemsage.index import load_index
    from itemsage.trained import load_manifest

    spec.apply_environment()
    ref = resolve_model_ref(spec.model_uri, spec.model_version)
    manifest = load_manifest(ref.uri)
    features = features_dir(manifest, spec.features, base_dir)
    index_dir, download = resolve_index_dir(spec.index_uri, spec.mlflow_tracking_uri)
    try:
        index = load_index(
            index_dir,
            expected_dim=int(manifest["embedding_dim"]),
            # A registry version is authoritative; a local bundle's hash cannot be compared with
            # what the index recorded, so there the dimension check is what we have.
            expected_model_version=ref.version if ref.registered else None,
            use_gpu=use_gpu,
        )
        index_version = index_version_of(index_dir, spec.index_version)
    finally:
        if download is not None:  # the index is in memory now; downloads must not pile up per swap
            shutil.rmtree(download, ignore_errors=True)
    catalog = Catalog.load(features)
    missing = [i for i in index.idmap.item_ids() if i not in catalog]
    if missing:
        raise ValueError(
            f"{len(missing)} of {index.ntotal} indexed items are not in the catalog of {features} "
            f"(e.g. {missing[0]!r}): the index was built from another catalog"
        )
    return RetrievalState(
        model=ModelSpec(ref, features),
        model_manifest=manifest,
        index=index,
        index_uri=spec.index_uri,
        index_version=index_version,
        catalog=catalog,
    )

"""What one model version needs at serving time, loaded once and shared by reference.

A :class:`ModelBundle` is the trained model plus what feeds it: the vocab (to tokenize new items
exactly as training did), the frozen backbones' names and the features directory's item store
(catalog items' image features and title embeddings, for closeup queries by item id and home-feed
user features from a history). A :class:`Catalog` is the item metadata the API returns (titles,
image paths). Both are immutable once built: a version swap builds new ones and replaces a
reference, never mutates a loaded one under a running request.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
import pyarrow.parquet as pq

from itemsage.config import TEXT_FIELDS
from itemsage.data.features_io import resolve
from itemsage.manifest import ManifestFields
from itemsage.serve.errors import ItemNotFoundError
from itemsage.trained import ModelRef

if TYPE_CHECKING:  # torch stays out of processes that only route requests (Ingress, Retriever)
    from itemsage.data.text import Vocab
    from itemsage.model import ItemFeatureStore, ItemSageModel
    from itemsage.trained import TrainedModel


def absolute_path(path: str, base: str | None = None) -> str:
    """``path`` made absolute (URIs unchanged), against ``base`` when given.

    Serve replicas do not run in the driver's working directory, so every local path in a
    user_config is pinned before it leaves the process that read it.
    """
    if not path or "://" in path or path.startswith("models:/") or path.startswith("runs:/"):
        return path
    p = Path(path).expanduser()
    if not p.is_absolute() and base is not None:
        p = Path(base) / p
    return str(p.resolve())


# ---------------------------------------------------------------------------------- catalog


@dataclass(frozen=True)
class CatalogItem:
    item_id: str
    image_paths: tuple[str, ...]
    fields: dict[str, str]

    @property
    def title(self) -> str:
        return self.fields.get("title", "")


class Catalog:
    """Item metadata from ``<features>/catalog.parquet``, by item id (read-only after load)."""

    def __init__(self, items: Sequence[CatalogItem]) -> None:
        self._items = {it.item_id: it for it in items}

    @classmethod
    def load(cls, features: str) -> Catalog:
        fs, root = resolve(features)
        table = pq.read_table(f"{root}/catalog.parquet", filesystem=fs)
        cols = {c: table.column(c).to_pylist() for c in table.column_names}
        n = table.num_rows
        base = root if "://" not in features else None
        items = []
        for i in range(n):
            paths = tuple(absolute_path(str(p), base) for p in (cols.get("image_paths", [None] * n)[i] or []))
            fields = {f: str(cols[f][i] or "") for f in TEXT_FIELDS if f in cols}
            items.append(CatalogItem(str(cols["item_id"][i]), paths, fields))
        return cls(items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._items

    def get(self, item_id: str) -> CatalogItem:
        try:
            return self._items[item_id]
        except KeyError:
            raise ItemNotFoundError(f"unknown item id {item_id!r}") from None

    def image_path(self, item_id: str, position: int = 0) -> str:
        """The catalog's own path of the item's ``position``-th image (never a client's path)."""
        item = self.get(item_id)
        if not 0 <= position < len(item.image_paths):
            raise ItemNotFoundError(f"item {item_id!r} has no image {position}")
        return item.image_paths[position]

    def ids(self) -> list[str]:
        return list(self._items)


# ----------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelBundle(ManifestFields):
    """A loaded model version (:class:`~itemsage.trained.TrainedModel`) and the features directory
    whose item store it reads catalog items from (closeup queries by item id, home-feed histories)."""

    trained: TrainedModel
    store: ItemFeatureStore
    row_of: dict[str, int]
    features: str

    @property
    def ref(self) -> ModelRef:
        return self.trained.ref

    @property
    def model(self) -> ItemSageModel:
        return self.trained.model

    @property
    def manifest(self) -> dict[str, Any]:  # type: ignore[override]
        return self.trained.manifest

    @property
    def vocab(self) -> Vocab:
        return self.trained.vocab

    @property
    def device(self) -> str:
        return self.trained.device

    @property
    def text_encoder(self) -> Any:
        """The version's own fine-tuned MiniLM, or None: then search queries go through the
        process's frozen packaged MiniLM, shared by every version."""
        return self.trained.finetuned_text_encoder

    def rows(self, item_ids: Sequence[str]) -> list[int]:
        """Store rows of catalog items; unknown ids are all named in one 404."""
        missing = [i for i in item_ids if i not in self.row_of]
        if missing:
            shown = ", ".join(repr(m) for m in missing[:5])
            raise ItemNotFoundError(f"unknown item id{'s' if len(missing) > 1 else ''} {shown}")
        return [self.row_of[i] for i in item_ids]

    def first_image_feats(self, item_id: str) -> np.ndarray | None:
        """The item's first image's frozen features (the closeup query), or None without images."""
        row = self.rows([item_id])[0]
        if not bool(self.store.has_image[row]):
            return None
        return self.store.first_image_feat[row].numpy()


def features_dir(manifest: dict[str, Any], override: str | None, base_dir: str | None = None) -> str:
    """The features directory (absolute): the user_config's, else the one the model was trained on.

    A relative path in the manifest is relative to where training ran; it is resolved against
    ``base_dir`` (where the app was started), which is right when both ran from the repo root.
    """
    features = override or manifest.get("features")
    if not features:
        raise FileNotFoundError("the model manifest names no features directory; set user_config.features")
    features = absolute_path(str(features), base_dir)
    if "://" not in features and not Path(features).is_dir():
        raise FileNotFoundError(
            f"features directory {features!r} does not exist here; set user_config.features to its absolute path or URI"
        )
    return features


def load_bundle(
    ref: ModelRef, features: str | None = None, device: str = "cpu", image_weights_path: str | None = None
) -> ModelBundle:
    """Load a model version and its features' item store (heavy: call off the event loop).

    ``image_weights_path``: ``serve.image_weights_path`` (see ``TrainedModel.image_weights_path``)."""
    from itemsage.model import ItemFeatureStore
    from itemsage.trained import load_trained

    trained = load_trained(ref, device=device, image_weights_path=image_weights_path)
    feats = features_dir(trained.manifest, features)
    store = ItemFeatureStore.load(feats, max_images=trained.max_images, text_fields=trained.manifest.get("text_fields"))
    ids = store.item_ids or []
    return ModelBundle(trained=trained, store=store, row_of={str(i): r for r, i in enumerate(ids)}, features=feats)


K = TypeVar("K")
V = TypeVar("V")


class VersionCache(Generic[K, V]):
    """The last ``size`` loaded versions by key.

    Two by default: the version being served and the one before it, so requests pinned to the old
    version while a swap happens still find their model.
    """

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def peek(self, key: K) -> V | None:
        """Lookup without touching the recency order (a single dict read: safe without a lock)."""
        return self._items.get(key)

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def keys(self) -> list[K]:
        return list(self._items)

    def get_or_load(self, key: K, load: Callable[[], V]) -> V:
        value = self.get(key)
        if value is None:
            value = load()
            self.put(key, value)
        return value

"""Read a features directory back (docs/feature-format.md): its manifest, the pairs of a split and
the frozen query features per surface.

Training, its validation and offline evaluation all read the same directory the same way, so the
readers live here, below both; bad inputs fail with one :class:`FeaturesError` that names the path
or split at fault.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from itemsage.config import SURFACES
from itemsage.data.features_io import resolve
from itemsage.data.query_tokens import QueryTokenTable
from itemsage.data.splits import SPLITS
from itemsage.data.text import Vocab

PAIR_COLUMNS = ["surface", "task", "query_key", "item_idx"]
# The query group of closeup pairs whose viewed item has no image: the item itself, through the
# item tower (``ItemSageModel.embed_query_batch``), as Serve's /similar queries such an item.
ITEM_QUERY = "item"


class ItemImages(Protocol):
    """What :meth:`QueryFeatures.load` reads of an ``itemsage.model.ItemFeatureStore`` (a layer
    above this one, so it is named by shape, not imported)."""

    @property
    def first_image_feat(self) -> torch.Tensor: ...

    @property
    def has_image(self) -> torch.Tensor: ...

    def gather(self, item_idx: torch.Tensor) -> Any: ...


class FeaturesError(ValueError):
    """A features directory, or a split of it, is missing or cannot be read."""


def _join(root: str, *parts: str) -> str:
    return posixpath.join(root, *parts)


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def features_location(features: str) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, root)`` of a features directory, or :class:`FeaturesError` if it is missing."""
    fs, root = resolve(features)
    if not _exists(fs, root):
        raise FeaturesError(
            f"features directory {features!r} does not exist; run experiments/preprocess.py first "
            f"(or set train.features=<dir>)"
        )
    for name in ("manifest.json", "items.parquet"):
        if not _exists(fs, _join(root, name)):
            raise FeaturesError(f"features directory {features!r} has no {name}; is it a preprocess output?")
    return fs, root


def read_manifest(features: str) -> dict[str, Any]:
    fs, root = features_location(features)
    with fs.open_input_stream(_join(root, "manifest.json")) as f:
        return json.loads(f.read().decode())


def pairs_path(features: str, split: str) -> str:
    """Path (or URI) of ``pairs/<split>.parquet``, checked to exist."""
    if split not in SPLITS:
        raise FeaturesError(f"unknown split {split!r}; expected one of {SPLITS}")
    fs, root = features_location(features)
    path = _join(root, "pairs", f"{split}.parquet")
    if not _exists(fs, path):
        raise FeaturesError(f"features directory {features!r} has no pairs/{split}.parquet")
    return path if "://" not in features else features.rstrip("/") + f"/pairs/{split}.parquet"


def read_pairs(features: str, split: str, surfaces: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """One split's pairs as numpy columns (``PAIR_COLUMNS``), restricted to ``surfaces`` if given.

    Raises :class:`FeaturesError` when the split is empty (after the surface filter): a run that
    cannot train or validate should say so up front, not after the workers have started.
    """
    pairs_path(features, split)
    fs, root = features_location(features)
    table = pq.read_table(_join(root, "pairs", f"{split}.parquet"), filesystem=fs, columns=PAIR_COLUMNS)
    if surfaces:
        table = table.filter(pc.is_in(table.column("surface"), value_set=pa.array(list(surfaces), pa.string())))
    if table.num_rows == 0:
        where = f" for surfaces {list(surfaces)}" if surfaces else ""
        raise FeaturesError(f"split {split!r} of {features!r} has no pairs{where}")
    return {
        "surface": table.column("surface").to_numpy(zero_copy_only=False).astype(str),
        "task": table.column("task").to_numpy(zero_copy_only=False).astype(str),
        "query_key": table.column("query_key").to_numpy().astype(np.int64),
        "item_idx": table.column("item_idx").to_numpy().astype(np.int64),
    }


@dataclass
class QueryFeatures:
    """Frozen query features per surface, indexed by ``query_key`` (feature-format.md).

    search: ``queries.parquet`` ``text_emb`` by ``query_idx``; closeup: the viewed item's first image
    feature (``ItemFeatureStore.first_image_feat``) by ``item_idx``; home: ``users.parquet``
    ``user_feat`` by ``user_idx``. A surface whose file is absent has ``None`` and fails on use.
    ``search_text`` (the raw query strings, by ``query_idx``) is only loaded for SearchSage-style
    fine-tuning, where the text encoder runs inside the training step. ``search_tokens`` (the
    query texts as vocabulary ids, ``itemsage.data.query_tokens``) only for models whose search
    tower reads tokens (``model.text_residual``).
    """

    text_emb: torch.Tensor | None
    first_image: torch.Tensor
    user_feat: torch.Tensor | None
    search_text: np.ndarray | None = None
    # The item store: closeup queries of items without an image are the items themselves.
    items: ItemImages | None = None
    search_tokens: QueryTokenTable | None = None

    @classmethod
    def load(
        cls, features: str, store: ItemImages, with_text: bool = False, with_tokens: bool = False
    ) -> QueryFeatures:
        """``store``: the ``ItemFeatureStore`` of the same features directory, whose first image
        per item is the closeup query table (already in memory there). ``with_tokens`` tokenizes
        the query texts with the directory's ``vocab.json`` (the model's, once evaluation has
        re-tokenized a foreign catalog)."""
        fs, root = features_location(features)
        queries = _join(root, "queries.parquet")
        texts = _strings_by_index(fs, queries, "query_idx", "text") if (with_text or with_tokens) else None
        tokens = None
        if with_tokens and texts is not None:
            vocab_path = _join(root, "vocab.json")
            if not _exists(fs, vocab_path):
                raise FeaturesError(f"features directory {features!r} has no vocab.json to tokenize queries with")
            location = vocab_path if "://" not in features else features.rstrip("/") + "/vocab.json"
            tokens = QueryTokenTable.encode(Vocab.load(location), texts.tolist())
        return cls(
            text_emb=_dense_by_index(fs, queries, "query_idx", "text_emb"),
            first_image=store.first_image_feat,
            user_feat=_dense_by_index(fs, _join(root, "users.parquet"), "user_idx", "user_feat"),
            search_text=texts if with_text else None,
            search_tokens=tokens,
            items=store,
        )

    def tokens(self, keys: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``[n, L]`` padded token ids of the search queries ``keys`` (``query_idx``)."""
        if self.search_tokens is None:
            raise FeaturesError("search query tokens were not loaded (QueryFeatures.load(with_tokens=True))")
        return self.search_tokens.rows(keys)

    def texts(self, keys: torch.Tensor | np.ndarray) -> list[str]:
        """Raw search query strings for ``query_idx`` keys (fine-tuning only)."""
        if self.search_text is None:
            raise FeaturesError("search query texts were not loaded (QueryFeatures.load(with_text=True))")
        return self.search_text[np.asarray(keys, dtype=np.int64)].tolist()

    def table(self, surface: str) -> torch.Tensor:
        tables = {"search": self.text_emb, "closeup": self.first_image, "home": self.user_feat}
        if surface not in tables:
            raise KeyError(f"unknown surface {surface!r}; expected one of {SURFACES}")
        t = tables[surface]
        if t is None:
            missing = "queries.parquet" if surface == "search" else "users.parquet"
            raise FeaturesError(f"{surface} pairs need {missing} in the features directory")
        return t

    def for_surface(self, surface: str, keys: torch.Tensor | np.ndarray) -> torch.Tensor:
        return self.table(surface)[torch.as_tensor(keys, dtype=torch.int64)]

    def groups(
        self,
        surfaces: np.ndarray,
        keys: np.ndarray,
        device: torch.device | str = "cpu",
        always: Collection[str] = (),
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{surface: (row positions, features)}`` for a mixed batch (``ItemSageModel.forward``).

        Closeup queries whose item has no image form the :data:`ITEM_QUERY` group instead, whose
        "features" are the items' gathered features (an ``ItemBatch``) for the item tower: a
        text-only catalog (Amazon metadata) still learns from its item-to-item engagement.
        Surfaces in ``always`` get a group even when the batch has none of their queries (zero
        rows): their tower then still takes part in the step, with a zero gradient, which is what
        lets DDP run without searching the graph for unused parameters every step.
        """
        out: dict[str, tuple[torch.Tensor, Any]] = {}
        surfaces = np.asarray(surfaces)
        keys = np.asarray(keys, dtype=np.int64)
        imageless = self.imageless(surfaces, keys)
        for s in SURFACES:
            rows = np.flatnonzero((surfaces == s) & ~imageless)
            if rows.size or s in always:
                feats = self.for_surface(s, keys[rows]).to(device, non_blocking=True)
                out[s] = (torch.from_numpy(rows).to(device), feats)
        rows = np.flatnonzero(imageless)
        if rows.size:
            assert self.items is not None  # imageless() finds rows only with a store
            batch = self.items.gather(torch.from_numpy(keys[rows])).to(device, non_blocking=True)
            out[ITEM_QUERY] = (torch.from_numpy(rows).to(device), batch)
        return out

    def imageless(self, surfaces: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Mask of the closeup rows whose viewed item has no image (queried by the item tower)."""
        closeup = np.asarray(surfaces) == "closeup"
        if self.items is None or not closeup.any():
            return np.zeros(len(closeup), dtype=bool)
        out = closeup.copy()
        has_image = self.items.has_image[torch.from_numpy(np.asarray(keys, dtype=np.int64)[closeup])]
        out[closeup] = ~has_image.numpy()
        return out


def _dense_by_index(fs: pafs.FileSystem, path: str, index_col: str, value_col: str) -> torch.Tensor | None:
    """A ``list<float>`` column as a dense ``[max index + 1, d]`` tensor, rows placed by index."""
    if not _exists(fs, path):
        return None
    table = pq.read_table(path, filesystem=fs, columns=[index_col, value_col])
    if table.num_rows == 0:
        return None
    idx = table.column(index_col).to_numpy().astype(np.int64)
    col = table.column(value_col).combine_chunks()
    dim = int(pc.list_value_length(col)[0].as_py())
    values = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
    out = torch.zeros(int(idx.max()) + 1, dim)
    out[torch.from_numpy(idx)] = torch.from_numpy(values)
    return out


def _strings_by_index(fs: pafs.FileSystem, path: str, index_col: str, value_col: str) -> np.ndarray | None:
    if not _exists(fs, path):
        return None
    table = pq.read_table(path, filesystem=fs, columns=[index_col, value_col])
    idx = table.column(index_col).to_numpy().astype(np.int64)
    out = np.full(int(idx.max()) + 1 if len(idx) else 0, "", dtype=object)
    out[idx] = np.asarray(table.column(value_col).to_pylist(), dtype=object)
    return out


def kind_name(product_type: str, category_path: str) -> str:
    """An item's kind facet: its product type, else the last ``category_path`` level, lower-cased
    ("" when it has neither; the synthetic engagement's kind, ``itemsage.data.synthetic_engagement``)."""
    return (product_type or category_path.split(">")[-1]).strip().lower()


def catalog_strings(features: str, names: Sequence[str]) -> dict[str, list[str]]:
    """The named columns of a features directory's ``catalog.parquet`` as one string per item:
    "" for a null or NaN, and for every item of a column the catalog does not have."""
    fs, root = features_location(features)
    path = _join(root, "catalog.parquet")
    if not _exists(fs, path):
        raise FeaturesError(f"features directory {features!r} has no catalog.parquet")
    have = [c for c in names if c in set(pq.read_schema(path, filesystem=fs).names)]
    n = pq.read_metadata(path, filesystem=fs).num_rows
    out = {name: [""] * n for name in names}
    if have:
        table = pq.read_table(path, filesystem=fs, columns=have)
        for name in have:
            out[name] = ["" if v is None or v != v else str(v) for v in table.column(name).to_pylist()]  # v != v: NaN
    return out


def item_kinds(features: str) -> np.ndarray:
    """``kind[item_idx]``: a code per kind (:func:`kind_name`), -1 where an item has none; all -1
    when the catalog has neither ``product_types`` nor ``category_path``. Codes follow the sorted
    kind names, so they are the same on every worker."""
    columns = catalog_strings(features, ("product_types", "category_path"))
    kinds = [kind_name(p, c) for p, c in zip(columns["product_types"], columns["category_path"])]
    names = sorted({k for k in kinds if k})
    code = {k: i for i, k in enumerate(names)}
    return np.asarray([code.get(k, -1) for k in kinds], dtype=np.int64)

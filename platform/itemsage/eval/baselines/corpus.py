"""The raw text a lexical baseline reads: item text fields, search query strings, user histories.

Read from the features directory (``catalog.parquet``, ``queries.parquet``, ``users.parquet``;
docs/feature-format.md), so a baseline sees the same items, queries and users the model is
evaluated on, by the same indices.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from itemsage.data.features_read import FeaturesError, features_location


@dataclass(frozen=True)
class TextCorpus:
    """``item_texts[item_idx]``: the item's text fields joined by spaces (empty fields skipped);
    ``query_texts[query_idx]`` and ``histories[user_idx]`` (item indices) where the directory has
    search queries and users, else None."""

    item_texts: list[str]
    fields: tuple[str, ...]
    query_texts: list[str] | None
    histories: list[np.ndarray] | None

    @classmethod
    def load(cls, features: str, fields: Sequence[str]) -> TextCorpus:
        fs, root = features_location(features)
        path = posixpath.join(root, "catalog.parquet")
        if not _exists(fs, path):
            raise FeaturesError(
                f"features directory {features!r} has no catalog.parquet (the lexical baselines read it)"
            )
        catalog = pq.read_table(path, filesystem=fs)
        have = [f for f in fields if f in catalog.column_names]
        if not have:
            raise FeaturesError(f"catalog.parquet of {features!r} has none of the text fields {list(fields)}")
        columns = [[str(v or "").strip() for v in catalog.column(f).to_pylist()] for f in have]
        texts = [" ".join(v for v in row if v) for row in zip(*columns)]
        return cls(
            item_texts=texts,
            fields=tuple(have),
            query_texts=_by_index(fs, posixpath.join(root, "queries.parquet"), "query_idx", "text"),
            histories=_histories(fs, posixpath.join(root, "users.parquet")),
        )

    @property
    def num_items(self) -> int:
        return len(self.item_texts)


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _by_index(fs: pafs.FileSystem, path: str, index_col: str, value_col: str) -> list[str] | None:
    if not _exists(fs, path):
        return None
    t = pq.read_table(path, filesystem=fs, columns=[index_col, value_col])
    if t.num_rows == 0:
        return None
    idx = t.column(index_col).to_numpy().astype(np.int64)
    out = [""] * (int(idx.max()) + 1)
    for i, v in zip(idx.tolist(), t.column(value_col).to_pylist()):
        out[i] = str(v or "")
    return out


def _histories(fs: pafs.FileSystem, path: str) -> list[np.ndarray] | None:
    if not _exists(fs, path):
        return None
    t = pq.read_table(path, filesystem=fs, columns=["user_idx", "history"])
    if t.num_rows == 0:
        return None
    idx = t.column("user_idx").to_numpy().astype(np.int64)
    out = [np.zeros(0, np.int64)] * (int(idx.max()) + 1)
    for i, h in zip(idx.tolist(), t.column("history").to_pylist()):
        out[i] = np.asarray(h or [], dtype=np.int64)
    return out

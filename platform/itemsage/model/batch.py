"""Item feature batches, and the in-memory store that builds them without per-item Python.

Training touches every item thousands of times, so ``items.parquet`` (see docs/feature-format.md) is
read once into flat tensors: all image feature vectors back to back plus per-item offsets, all token
ids back to back plus per-(item, field) offsets. ``gather`` then turns a tensor of item indices into an
:class:`ItemBatch` with a handful of vectorised index operations, so the data path never loops over
items or tokens in Python.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from itemsage.config import TEXT_FIELDS, TEXT_QUERY_DIM
from itemsage.data.features_io import resolve


@dataclass
class ItemBatch:
    """Model input for ``B`` items with ``M`` image slots and ``F`` text fields.

    Attributes:
        image_feats: ``[B, M, D]`` frozen image-backbone features, zero in padded slots.
        image_mask: ``[B, M]`` bool, True where an image is present.
        text_ids: ``[T]`` int64 token ids of every (item, field) bag, back to back.
        text_offsets: ``[B * F]`` int64 start of bag ``b * F + f`` (item b, field f) in ``text_ids``.
        text_mask: ``[B, F]`` bool, True where the field has at least one token.
        title_emb: ``[B, 384]`` frozen MiniLM title embeddings, zeros where an item has no title;
            ``None`` when the caller has none (only towers with ``model.use_title_embedding`` need it).
    """

    image_feats: torch.Tensor
    image_mask: torch.Tensor
    text_ids: torch.Tensor
    text_offsets: torch.Tensor
    text_mask: torch.Tensor
    title_emb: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.image_feats.shape[0])

    @property
    def num_text_fields(self) -> int:
        return int(self.text_mask.shape[1])

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> ItemBatch:
        # Field by field (not a loop over dataclasses.fields) so the type checker sees every field.
        return ItemBatch(
            image_feats=fn(self.image_feats),
            image_mask=fn(self.image_mask),
            text_ids=fn(self.text_ids),
            text_offsets=fn(self.text_offsets),
            text_mask=fn(self.text_mask),
            title_emb=None if self.title_emb is None else fn(self.title_emb),
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ItemBatch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> ItemBatch:
        return self._map(lambda t: t.pin_memory())


def _exclusive_cumsum(lengths: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(lengths, 0) - lengths


def _segment_gather(
    values: torch.Tensor, offsets: torch.Tensor, segments: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concatenate ``values[offsets[s]:offsets[s+1]]`` for each ``s`` in ``segments``, vectorised.

    Returns ``(gathered, new_starts, lengths)`` with ``new_starts`` the segments' starts in
    ``gathered``.
    """
    starts = offsets[segments]
    lengths = offsets[segments + 1] - starts
    new_starts = _exclusive_cumsum(lengths)
    total = int(lengths.sum())
    seg_of = torch.repeat_interleave(torch.arange(segments.numel()), lengths, output_size=total)
    src = starts[seg_of] + (torch.arange(total) - new_starts[seg_of])
    return values[src], new_starts, lengths


def _list_column(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A ``list<...>`` column as (flat values, per-row lengths); null rows count as empty."""
    if table.num_rows:
        col = table.column(name).combine_chunks()
    else:
        col = pa.array([], table.schema.field(name).type)
    lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.list_flatten(col).to_numpy(zero_copy_only=False)
    return values, lengths


class ItemFeatureStore:
    """All items' model features in memory as flat tensors; ``gather`` builds an :class:`ItemBatch`.

    Args:
        image_values: ``[I, D]`` float32, every item's image features back to back (item order).
        image_offsets: ``[N + 1]`` int64, item ``i``'s images are rows ``image_offsets[i]:[i+1]``.
        token_ids: ``[T]`` int64, every (item, field) bag back to back, item-major.
        token_offsets: ``[N * F + 1]`` int64, bag ``(i, f)`` is ``token_ids[o[i*F+f]:o[i*F+f+1]]``.
        title_emb: ``[N, 384]`` float32 frozen MiniLM title embeddings (home-feed user features, and
            an item-tower input with ``model.use_title_embedding``).
        num_text_fields: ``F``.
        max_images: images per item the model sees (``ModelConfig.max_images``); extra images are
            kept in the store but cut at gather time.
        item_ids: optional string ids, row ``i`` = item_idx ``i``.
    """

    def __init__(
        self,
        image_values: torch.Tensor,
        image_offsets: torch.Tensor,
        token_ids: torch.Tensor,
        token_offsets: torch.Tensor,
        title_emb: torch.Tensor,
        num_text_fields: int = len(TEXT_FIELDS),
        max_images: int = 20,
        item_ids: Sequence[str] | None = None,
    ) -> None:
        n = image_offsets.numel() - 1
        if n < 0 or token_offsets.numel() != n * num_text_fields + 1:
            raise ValueError(
                f"offsets disagree: {image_offsets.numel() - 1} items by image offsets, "
                f"{token_offsets.numel()} token offsets for {num_text_fields} fields"
            )
        if title_emb.shape[0] != n:
            raise ValueError(f"title_emb has {title_emb.shape[0]} rows for {n} items")
        if int(image_offsets[-1]) != image_values.shape[0] or int(token_offsets[-1]) != token_ids.numel():
            raise ValueError("last offset must equal the number of stored values")
        self.image_values = image_values.to(torch.float32)
        self.image_offsets = image_offsets.to(torch.int64)
        self.token_ids = token_ids.to(torch.int64)
        self.token_offsets = token_offsets.to(torch.int64)
        self.title_emb = title_emb.to(torch.float32)
        self.num_text_fields = int(num_text_fields)
        self.max_images = int(max_images)
        self.item_ids = list(item_ids) if item_ids is not None else None
        self.n_images = self.image_offsets[1:] - self.image_offsets[:-1]
        self.has_image = self.n_images > 0
        first = self.image_offsets[:-1].clamp(max=max(self.image_values.shape[0] - 1, 0))
        if self.image_values.shape[0]:
            self.first_image_feat = self.image_values[first] * self.has_image.unsqueeze(1)
        else:
            self.first_image_feat = torch.zeros(n, self.image_dim)
        self._photo_bank: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def num_items(self) -> int:
        return self.image_offsets.numel() - 1

    @property
    def image_dim(self) -> int:
        return int(self.image_values.shape[1])

    def photo_bank(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows of the items with a photo and their unit first-image features, computed on
        first use and kept (``[n_photos, image_dim]`` float32): where a photo query's catalog
        neighbours are searched (``itemsage.model.catalog_queries``)."""
        if self._photo_bank is None:
            rows = torch.nonzero(self.has_image).flatten()
            feats = self.first_image_feat[rows].float()
            self._photo_bank = (rows, feats / feats.norm(dim=1, keepdim=True).clamp(min=1e-12))
        return self._photo_bank

    def __len__(self) -> int:
        return self.num_items

    # ------------------------------------------------------------------ construction

    @classmethod
    def load(
        cls, features_dir: str, max_images: int = 20, text_fields: Sequence[str] | None = None
    ) -> ItemFeatureStore:
        """Read ``<features_dir>/items.parquet`` (+ ``manifest.json``); local path or URI.

        ``image_dim`` and the text-field order come from the manifest (``text_fields`` overrides the
        latter); ``max_images`` is ``ModelConfig.max_images``.
        """
        fs, root = resolve(str(features_dir))
        with fs.open_input_stream(f"{root}/manifest.json") as f:
            manifest = json.loads(f.read().decode())
        image_dim = int(manifest["image_dim"])
        fields_ = tuple(text_fields or manifest.get("text_fields") or TEXT_FIELDS)
        table = pq.read_table(f"{root}/items.parquet", filesystem=fs)
        return cls.from_table(table, image_dim, fields_, max_images)

    @classmethod
    def from_rows(
        cls,
        rows: Sequence[Mapping[str, Any]],
        image_dim: int,
        text_fields: Sequence[str] = TEXT_FIELDS,
        max_images: int = 20,
    ) -> ItemFeatureStore:
        """Build a store for new items (serving, evaluation) from dicts keyed like items.parquet.

        Missing keys mean empty: no ``image_feats`` -> no images, no ``tok_<field>`` -> empty field,
        no ``title_emb`` -> zeros. Rows are taken in the given order (row ``i`` = index ``i``).
        """
        n = len(rows)
        n_images, img, titles = [], [], []
        for r in rows:
            feats = np.asarray(r.get("image_feats") or [], dtype=np.float32)
            if feats.size % image_dim:
                raise ValueError(f"image_feats of length {feats.size} is not a multiple of {image_dim}")
            n_images.append(feats.size // image_dim)
            img.append(feats)
            t = r.get("title_emb")
            titles.append(np.zeros(TEXT_QUERY_DIM, np.float32) if t is None else np.asarray(t, np.float32))
        data: dict[str, Any] = {
            "item_id": [str(r.get("item_id", i)) for i, r in enumerate(rows)],
            "n_images": pa.array(n_images, pa.int32()),
            "image_feats": pa.array([a.tolist() for a in img], pa.list_(pa.float32())),
            "title_emb": pa.array([t.tolist() for t in titles], pa.list_(pa.float32())),
        }
        for fld in text_fields:
            data[f"tok_{fld}"] = pa.array(
                [[int(x) for x in (r.get(f"tok_{fld}") or [])] for r in rows], pa.list_(pa.int32())
            )
        data["item_idx"] = pa.array(np.arange(n, dtype=np.int64))
        return cls.from_table(pa.table(data), image_dim, text_fields, max_images)

    @classmethod
    def from_table(
        cls, table: pa.Table, image_dim: int, text_fields: Sequence[str], max_images: int = 20
    ) -> ItemFeatureStore:
        """Build from an items table (feature-format columns), sorted by ``item_idx`` = 0..N-1."""
        if "item_idx" in table.column_names and table.num_rows:
            table = table.sort_by("item_idx")
            idx = table.column("item_idx").to_numpy()
            if not np.array_equal(idx, np.arange(table.num_rows)):
                raise ValueError("items.parquet item_idx must be exactly 0..N-1")
        n = table.num_rows
        img_values, img_lengths = _list_column(table, "image_feats")
        if img_lengths.size and np.any(img_lengths % image_dim):
            raise ValueError(f"image_feats lengths must be multiples of image_dim={image_dim}")
        image_offsets = np.zeros(n + 1, np.int64)
        np.cumsum(img_lengths // image_dim, out=image_offsets[1:])
        image_values = img_values.astype(np.float32).reshape(-1, image_dim)

        title_values, title_lengths = _list_column(table, "title_emb")
        if np.any(title_lengths != TEXT_QUERY_DIM):
            raise ValueError(f"title_emb must have {TEXT_QUERY_DIM} values per item")
        title_emb = title_values.astype(np.float32).reshape(n, TEXT_QUERY_DIM)

        token_ids, token_offsets = _interleave_fields(table, [f"tok_{f}" for f in text_fields])
        item_ids = table.column("item_id").to_pylist() if "item_id" in table.column_names else None
        return cls(
            torch.from_numpy(image_values),
            torch.from_numpy(image_offsets),
            torch.from_numpy(token_ids),
            torch.from_numpy(token_offsets),
            torch.from_numpy(title_emb),
            num_text_fields=len(text_fields),
            max_images=max_images,
            item_ids=item_ids,
        )

    # ------------------------------------------------------------------ batches

    def gather(self, item_idx: torch.Tensor) -> ItemBatch:
        """The :class:`ItemBatch` for ``item_idx`` (``[B]`` int64, repeats allowed), vectorised.

        ``M`` is the largest image count in this batch, capped at ``max_images``; it may be 0.
        """
        idx = torch.as_tensor(item_idx, dtype=torch.int64).reshape(-1)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_items):
            raise IndexError(f"item_idx out of range [0, {self.num_items})")
        b, f = idx.numel(), self.num_text_fields
        counts = self.n_images[idx].clamp(max=self.max_images)
        m = int(counts.max()) if b else 0
        slot = torch.arange(m)
        image_mask = slot.unsqueeze(0) < counts.unsqueeze(1)
        if m:
            src = (self.image_offsets[idx].unsqueeze(1) + slot).clamp(max=self.image_values.shape[0] - 1)
            image_feats = self.image_values[src] * image_mask.unsqueeze(-1)
        else:
            image_feats = torch.zeros(b, 0, self.image_dim)
        bags = (idx.unsqueeze(1) * f + torch.arange(f)).reshape(-1)
        text_ids, text_offsets, lengths = _segment_gather(self.token_ids, self.token_offsets, bags)
        return ItemBatch(
            image_feats, image_mask, text_ids, text_offsets, (lengths > 0).reshape(b, f), self.title_emb[idx]
        )

    def user_feats(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """Home-feed query features ``[U, D + 384]`` from users' item histories (feature-format.md).

        ``concat(mean first-image feature over the history items that have an image (zeros when none
        has one), mean title_emb over all history items (zeros for an empty history))``.
        """
        u = len(histories)
        lengths = torch.tensor([len(h) for h in histories], dtype=torch.int64)
        flat = torch.tensor([int(i) for h in histories for i in h], dtype=torch.int64)
        owner = torch.repeat_interleave(torch.arange(u), lengths)
        img_sum = torch.zeros(u, self.image_dim).index_add_(0, owner, self.first_image_feat[flat])
        img_cnt = torch.zeros(u).index_add_(0, owner, self.has_image[flat].to(torch.float32))
        title_sum = torch.zeros(u, TEXT_QUERY_DIM).index_add_(0, owner, self.title_emb[flat])
        img_mean = img_sum / img_cnt.clamp(min=1).unsqueeze(1)
        title_mean = title_sum / lengths.clamp(min=1).to(torch.float32).unsqueeze(1)
        return torch.cat([img_mean, title_mean], dim=1)


def _interleave_fields(table: pa.Table, columns: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-field ``list<int>`` columns -> item-major flat ids + ``[N * F + 1]`` offsets."""
    n, f = table.num_rows, len(columns)
    per_field = []
    lengths = np.zeros((n, f), np.int64)
    for j, col in enumerate(columns):
        if col in table.column_names:
            values, lens = _list_column(table, col)
        else:  # a catalog without this field: every bag empty
            values, lens = np.zeros(0, np.int64), np.zeros(n, np.int64)
        per_field.append(values.astype(np.int64))
        lengths[:, j] = lens
    offsets = np.zeros(n * f + 1, np.int64)
    np.cumsum(lengths.reshape(-1), out=offsets[1:])
    out = np.empty(int(offsets[-1]), np.int64)
    dst_start = offsets[:-1].reshape(n, f)
    for j, values in enumerate(per_field):
        lens = lengths[:, j]
        src_start = np.cumsum(lens) - lens
        row = np.repeat(np.arange(n), lens)
        pos = dst_start[row, j] + (np.arange(values.size) - src_start[row])
        out[pos] = values
    return out, offsets

"""The ItemSage item tower: a transformer over an item's image and text feature embeddings.

Sequence per item: ``[CLS] + image_1..image_M + text_field_1..text_field_F`` (paper: up to 20 images
and 12 text features), plus a ``[TITLE]`` token from the frozen MiniLM title embedding when
``model.use_title_embedding`` is on. Each group has its own projection to ``hidden_dim``, so the transformer can
tell a brand from a title without position embeddings, and images (an unordered set) share one
projection. One encoder layer attends across all of them; the CLS output becomes the 256-d,
L2-normalised product embedding shared by every surface.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from itemsage.config import TEXT_FIELDS, ModelConfig
from itemsage.model.batch import TEXT_QUERY_DIM, ItemBatch
from itemsage.model.hash_embedding import HashEmbeddingBag
from itemsage.model.query_towers import QueryProjection
from itemsage.model.text_residual import TextResidual


class GroupedLinear(nn.Module):
    """``G`` independent ``Linear(in_dim, out_dim)`` layers applied to ``[..., G, in_dim]`` at once.

    Equivalent to one ``nn.Linear`` per text field, but a single einsum instead of 12 small matmuls.
    Each group is initialised exactly like ``nn.Linear``.
    """

    def __init__(self, num_groups: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_groups, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(num_groups, out_dim))
        bound = 1.0 / math.sqrt(in_dim)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.einsum("...gi,gio->...go", x, self.weight)
        return out + self.bias.to(out.dtype)  # under autocast: stay bf16 like nn.Linear does


class EmbeddingHead(nn.Module):
    """CLS state -> LayerNorm -> Linear -> GELU -> Linear -> L2 normalise (paper's output head)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """The output before L2 normalisation (residual paths are added to it first)."""
        return self.fc2(F.gelu(self.fc1(self.norm(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.raw(x), dim=-1)

    def zero_output(self) -> None:
        """Start the head at 0, so the residual paths alone make the initial embedding."""
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)


def title_input(batch: ItemBatch) -> torch.Tensor:
    """The batch's ``[B, 384]`` title embeddings, or a clear error for a tower that needs them."""
    if batch.title_emb is None:
        raise ValueError(
            "this model uses title embeddings (model.use_title_embedding) but the item batch has none; "
            "featurize items with title embeddings"
        )
    return batch.title_emb


class ItemSageTower(nn.Module):
    """ItemSage item encoder: ``forward(ItemBatch) -> [B, cfg.embedding_dim]`` unit vectors.

    ``cfg.use_image`` / ``cfg.use_text`` switch a whole group off by masking it out of attention
    (the image-only and text-only ablations run this same code path, and the switched-off group's
    parameters stay in the autograd graph with zero gradient, so DDP sees no unused parameters);
    CLS is never masked, so items with no images and no text still get a (learned, constant)
    embedding instead of NaNs.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        vocab_size: int,
        image_dim: int,
        num_text_fields: int = len(TEXT_FIELDS),
    ) -> None:
        super().__init__()
        if not (cfg.use_image or cfg.use_text):
            raise ValueError("at least one of model.use_image / model.use_text must be true")
        self.cfg = cfg
        self.image_dim = int(image_dim)
        self.num_text_fields = int(num_text_fields)
        h = cfg.hidden_dim
        self.text_embedding = HashEmbeddingBag(
            vocab_size, cfg.hash_buckets, cfg.hash_dim, cfg.hash_seeds, token_dropout=cfg.token_dropout
        )
        self.cls = nn.Parameter(torch.randn(cfg.hash_dim) * cfg.hash_dim**-0.5)
        self.cls_proj = nn.Linear(cfg.hash_dim, h)
        self.image_proj = nn.Linear(self.image_dim, h)
        self.text_proj = GroupedLinear(self.num_text_fields, cfg.hash_dim, h)
        self.title_proj = nn.Linear(TEXT_QUERY_DIM, h) if cfg.use_title_embedding else None
        layer = nn.TransformerEncoderLayer(
            d_model=h,
            nhead=cfg.num_heads,
            dim_feedforward=cfg.ffn_dim,
            dropout=cfg.dropout,
            activation="gelu",
            batch_first=True,
            # Pre-norm: image features and summed token embeddings arrive at very different scales;
            # normalising before attention keeps one layer stable without input-specific tuning.
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)
        self.head = EmbeddingHead(h, cfg.head_hidden_dim, cfg.embedding_dim)
        self.title_skip: QueryProjection | None = None
        if cfg.use_title_embedding and cfg.title_skip:
            self.title_skip = QueryProjection(TEXT_QUERY_DIM, cfg.embedding_dim, cfg.hidden_dim)
            self.title_gate = nn.Parameter(torch.ones(()))
        # model.image_skip: the first image's feature through the closeup query projection (tied
        # in build_model), gated, added to the output; image_gate exists only with it.
        self.image_skip: QueryProjection | None = None
        if cfg.image_skip and cfg.use_image:
            self.image_skip = QueryProjection(self.image_dim, cfg.embedding_dim, cfg.hidden_dim)
            self.image_gate = nn.Parameter(torch.ones(()))
        self.text_residual: TextResidual | None = None
        if cfg.text_residual:
            self.text_residual = TextResidual(cfg.hash_dim, cfg.embedding_dim)
            self.head.zero_output()

    def forward(self, batch: ItemBatch) -> torch.Tensor:
        b, f = batch.batch_size, self.num_text_fields
        if batch.num_text_fields != f:
            raise ValueError(f"batch has {batch.num_text_fields} text fields, tower expects {f}")
        m = self.cfg.max_images
        image_feats, image_mask = batch.image_feats[:, :m], batch.image_mask[:, :m]
        dtype = self.cls_proj.weight.dtype

        cls = self.cls_proj(self.cls.to(dtype)).expand(b, 1, -1)
        images = self.image_proj(image_feats.to(dtype))
        bags = self.text_embedding(batch.text_ids, batch.text_offsets).view(b, f, -1)
        texts = self.text_proj(bags)
        parts = [cls, images, texts]

        if not self.cfg.use_image:
            image_mask = torch.zeros_like(image_mask)
        text_mask = batch.text_mask if self.cfg.use_text else torch.zeros_like(batch.text_mask)
        masks = [torch.ones_like(text_mask[:, :1]), image_mask, text_mask]
        if self.title_proj is not None:
            title = title_input(batch)
            parts.append(self.title_proj(title.to(dtype)).unsqueeze(1))
            # An all-zero row is an item without a title; text-only ablations drop the title too.
            has_title = (title.abs().sum(1, keepdim=True) > 0) & self.cfg.use_text
            masks.append(has_title)
        tokens = torch.cat(parts, dim=1)
        present = torch.cat(masks, dim=1)
        hidden = self.encoder(tokens, src_key_padding_mask=~present)
        if self.text_residual is not None:
            # One normalisation over head + residuals: the head starts at 0 (a normalised zero has
            # no usable gradient), so the title skip and the pooled text make the first embedding.
            out = self.head.raw(hidden[:, 0])
            out = out + self.text_residual(bags.sum(1)) * float(self.cfg.use_text)
            if self.title_skip is not None:
                out = out + self.title_gate.to(out.dtype) * self.title_skip(title) * has_title.to(out.dtype)
            return F.normalize(out + self._image_skip(batch, out.dtype), dim=-1)
        out = self.head(hidden[:, 0])
        if self.title_skip is not None:
            skip = self.title_skip(title) * has_title.to(out.dtype)
            out = F.normalize(out + self.title_gate.to(out.dtype) * skip.to(out.dtype), dim=-1)
        if self.image_skip is not None:
            out = F.normalize(out + self._image_skip(batch, out.dtype), dim=-1)
        return out

    def _image_skip(self, batch: ItemBatch, dtype: torch.dtype) -> torch.Tensor | float:
        """Gated closeup projection of the first image's feature (0 for items without an image,
        and when ``model.image_skip`` is off)."""
        if self.image_skip is None or batch.image_feats.shape[1] == 0:
            return 0.0
        has_image = batch.image_mask[:, :1].to(dtype)
        skip = self.image_skip(batch.image_feats[:, 0]).to(dtype) * has_image
        return self.image_gate.to(dtype) * skip

    def flops_per_item(self, num_images: float, num_tokens: float) -> float:
        """Analytic forward FLOPs (2 per multiply-add) for one item; the benchmark's MFU numerator."""
        cfg, h, f = self.cfg, self.cfg.hidden_dim, self.num_text_fields
        length = 1 + num_images + f + int(self.title_proj is not None)
        fl = 2 * num_tokens * self.text_embedding.num_hashes * cfg.hash_dim  # weighted bag sums
        fl += 2 * (num_images * self.image_dim + (f + 1) * cfg.hash_dim) * h  # group projections
        if self.title_proj is not None:
            fl += 2 * TEXT_QUERY_DIM * h
        per_layer = 2 * length * 4 * h * h  # q, k, v, out projections
        per_layer += 2 * 2 * length * length * h  # scores and weighted values
        per_layer += 2 * 2 * length * h * cfg.ffn_dim  # feed-forward
        fl += cfg.num_layers * per_layer
        fl += 2 * (h * cfg.head_hidden_dim + cfg.head_hidden_dim * cfg.embedding_dim)
        return float(fl)

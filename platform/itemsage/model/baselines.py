"""The paper's concat-MLP baseline item tower, and the ``model.arch`` switch.

ItemSage's ablation compares its transformer against the simplest strong alternative: pool the image
embeddings, concatenate them with the text feature embeddings, and run an MLP. Same inputs, same hash
embedding, same 256-d normalised output, so the comparison isolates the transformer.
"""

from __future__ import annotations

from typing import TypeAlias

import torch
import torch.nn.functional as F
from torch import nn

from itemsage.config import TEXT_FIELDS, ModelConfig
from itemsage.model.batch import TEXT_QUERY_DIM, ItemBatch
from itemsage.model.hash_embedding import HashEmbeddingBag
from itemsage.model.item_tower import ItemSageTower, title_input
from itemsage.model.text_residual import TextResidual

ARCHS = ("itemsage", "mlp")


class ConcatMLPTower(nn.Module):
    """``concat(masked mean of image features, F text-field embeddings) -> MLP -> L2 normalise``.

    ``cfg.use_image`` / ``cfg.use_text`` zero the switched-off group's slice of the input, the MLP
    equivalent of the transformer's attention mask. The input LayerNorm puts the backbone's image
    features and the summed token embeddings on one scale.
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
        self.text_embedding = HashEmbeddingBag(
            vocab_size, cfg.hash_buckets, cfg.hash_dim, cfg.hash_seeds, token_dropout=cfg.token_dropout
        )
        in_dim = self.image_dim + self.num_text_fields * cfg.hash_dim
        in_dim += TEXT_QUERY_DIM if cfg.use_title_embedding else 0
        self.mlp = nn.Sequential(
            nn.LayerNorm(in_dim),
            nn.Linear(in_dim, cfg.head_hidden_dim),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.head_hidden_dim, cfg.hidden_dim),
            nn.GELU(),
            nn.Linear(cfg.hidden_dim, cfg.embedding_dim),
        )
        self.text_residual: TextResidual | None = None
        if cfg.text_residual:
            # As in the transformer tower: the MLP starts at 0 and the pooled text path alone makes
            # the first embedding, so the ablation compares the two towers from the same start.
            self.text_residual = TextResidual(cfg.hash_dim, cfg.embedding_dim)
            last = self.mlp[-1]
            assert isinstance(last, nn.Linear)  # built just above; narrows the type for mypy
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, batch: ItemBatch) -> torch.Tensor:
        b, f = batch.batch_size, self.num_text_fields
        if batch.num_text_fields != f:
            raise ValueError(f"batch has {batch.num_text_fields} text fields, tower expects {f}")
        first = self.mlp[1]
        assert isinstance(first, nn.Linear)  # narrows the Sequential item for the type checker
        dtype = first.weight.dtype
        m = self.cfg.max_images
        mask = batch.image_mask[:, :m].to(dtype)
        feats = batch.image_feats[:, :m].to(dtype)
        image = (feats * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
        text = self.text_embedding(batch.text_ids, batch.text_offsets).view(b, f, -1)
        text = text * batch.text_mask.unsqueeze(-1).to(text.dtype)
        # Multiply rather than replace: the switched-off group stays in the autograd graph (with zero
        # gradient), so DDP does not see unused parameters in the ablations.
        image = image * float(self.cfg.use_image)
        text = text * float(self.cfg.use_text)
        parts = [image, text.reshape(b, -1).to(dtype)]
        if self.cfg.use_title_embedding:
            parts.append(title_input(batch).to(dtype) * float(self.cfg.use_text))
        x = torch.cat(parts, dim=1)
        out = self.mlp(x)
        if self.text_residual is not None:
            out = out + self.text_residual(text.sum(1)) * float(self.cfg.use_text)
        return F.normalize(out, dim=-1)


# Either item tower: both read the same ItemBatch and carry their ModelConfig as ``cfg``.
ItemTower: TypeAlias = ItemSageTower | ConcatMLPTower


def build_item_tower(
    cfg: ModelConfig, vocab_size: int, image_dim: int, num_text_fields: int = len(TEXT_FIELDS)
) -> ItemTower:
    """The item tower named by ``cfg.arch``: ``"itemsage"`` (transformer) or ``"mlp"`` (baseline)."""
    if cfg.arch == "itemsage":
        return ItemSageTower(cfg, vocab_size, image_dim, num_text_fields)
    if cfg.arch == "mlp":
        return ConcatMLPTower(cfg, vocab_size, image_dim, num_text_fields)
    raise ValueError(f"unknown model.arch {cfg.arch!r}; expected one of {ARCHS}")

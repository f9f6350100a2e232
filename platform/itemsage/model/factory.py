"""The trainable ItemSage model: item tower + per-surface query towers + loss + frequency sketch.

Everything that has parameters or training state lives in one ``nn.Module`` so that DDP wraps one
object, one ``state_dict`` is one checkpoint, and ``forward`` computes the whole objective (DDP only
synchronises gradients of work done inside the wrapped module's ``forward``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from itemsage.config import TEXT_FIELDS, LossConfig, ModelConfig
from itemsage.data.features_read import ITEM_QUERY
from itemsage.model.baselines import build_item_tower
from itemsage.model.batch import ItemBatch
from itemsage.model.cms import CountMinSketch, allgather_ids
from itemsage.model.item_tower import ItemSageTower
from itemsage.model.loss import SampledSoftmaxLoss
from itemsage.model.query_towers import QueryTowers

# Per surface: (row positions in the batch [n_s], frozen query features [n_s, in_dim]); for the
# ITEM_QUERY group, the query items' features instead.
QueryGroups = Mapping[str, tuple[torch.Tensor, torch.Tensor | ItemBatch]]


class ItemSageModel(nn.Module):
    """Item tower, query towers, loss and the count-min sketch behind the logQ correction."""

    def __init__(
        self,
        item_tower: nn.Module,
        query_towers: QueryTowers,
        loss: SampledSoftmaxLoss,
        sketch: CountMinSketch,
        model_cfg: ModelConfig,
        loss_cfg: LossConfig,
        vocab_size: int,
        image_dim: int,
    ) -> None:
        super().__init__()
        self.item_tower = item_tower
        self.query_towers = query_towers
        self.loss = loss
        self.sketch = sketch
        self.model_cfg = model_cfg
        self.loss_cfg = loss_cfg
        self.vocab_size = int(vocab_size)
        self.image_dim = int(image_dim)

    def embed_items(self, batch: ItemBatch) -> torch.Tensor:
        """``[B, embedding_dim]`` unit item embeddings (batch embedding and serving use this)."""
        return self.item_tower(batch)

    def embed_queries(self, surface: str, feats: torch.Tensor) -> torch.Tensor:
        """``[B, embedding_dim]`` unit query embeddings for one surface's frozen features."""
        return self.query_towers(surface, feats)

    def embed_query_batch(self, queries: QueryGroups, batch_size: int) -> torch.Tensor:
        """Embed a mixed-surface batch: each surface's rows go through its own tower, in row order;
        the :data:`~itemsage.data.features_read.ITEM_QUERY` group (items without an image as
        closeup queries) through the item tower."""
        covered = sum(int(rows.numel()) for rows, _ in queries.values())
        if covered != batch_size:
            raise ValueError(f"query groups cover {covered} rows, batch has {batch_size}")
        out: torch.Tensor | None = None
        for surface, (rows, feats) in queries.items():
            if surface == ITEM_QUERY:
                assert isinstance(feats, ItemBatch), type(feats)
                emb = self.embed_items(feats)
            else:
                assert isinstance(feats, torch.Tensor), type(feats)
                emb = self.embed_queries(surface, feats)
            if out is None:
                out = emb.new_zeros(batch_size, emb.shape[1])
            out = out.index_put((rows.to(emb.device),), emb)
        if out is None:
            raise ValueError("empty query batch")
        return out

    def forward(
        self,
        queries: QueryGroups,
        items: ItemBatch,
        item_ids: torch.Tensor,
        item_logq: torch.Tensor | None = None,
        rand_items: ItemBatch | None = None,
        rand_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The training objective for one batch (see :class:`SampledSoftmaxLoss` for the outputs).

        When logQ correction is on and ``item_logq`` is not given, the sketch supplies it; in training
        mode the sketch first counts this step's positives from every rank (``allgather_ids``), so all
        ranks hold identical sketches and identical corrections.
        """
        if self.loss_cfg.logq_correction and item_logq is None:
            if self.training:
                self.sketch.update(allgather_ids(item_ids))
            item_logq = self.sketch.log_probability(item_ids)
        query = self.embed_query_batch(queries, items.batch_size)
        pos = self.embed_items(items)
        rand = self.embed_items(rand_items) if rand_items is not None else None
        return self.loss(query, pos, item_ids, item_logq, rand, rand_ids)


def build_model(
    cfg: ModelConfig,
    loss_cfg: LossConfig,
    vocab_size: int,
    image_dim: int,
    num_text_fields: int = len(TEXT_FIELDS),
    text_dim: int = 384,
) -> ItemSageModel:
    """Build the model named by ``cfg.arch`` with the loss and sketch sized by ``loss_cfg``."""
    item_tower = build_item_tower(cfg, vocab_size, image_dim, num_text_fields)
    query_towers = QueryTowers(image_dim, text_dim, cfg.embedding_dim, cfg.hidden_dim, cfg.query_residual)
    if isinstance(item_tower, ItemSageTower) and item_tower.title_skip is not None:
        # Tied: an item's title and a search query go through the very same projection (a siamese
        # pair over MiniLM), so training refines MiniLM's title similarity instead of relearning it.
        item_tower.title_skip = query_towers.projection("search")
    return ItemSageModel(
        item_tower=item_tower,
        query_towers=query_towers,
        loss=SampledSoftmaxLoss(loss_cfg),
        sketch=CountMinSketch(loss_cfg.cms_width, loss_cfg.cms_depth),
        model_cfg=cfg,
        loss_cfg=loss_cfg,
        vocab_size=vocab_size,
        image_dim=image_dim,
    )

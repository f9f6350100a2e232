"""ItemSage's training objective: sampled softmax over cosine similarities, two negative sources.

``loss = in_batch_term + random_term``:

* **in-batch**: each query's candidates are all positives in the batch. Cheap and hard negatives,
  but sampled by popularity, so each column's logit is corrected by ``- log q_j`` (logQ correction,
  ``q_j`` from a count-min sketch), and columns that are the row's own positive item under another
  row (duplicates in the batch) are masked instead of being pushed away.
* **random**: candidates are the row's positive plus ``R`` items drawn uniformly from the catalog,
  shared by all rows. Uniform sampling needs no correction; it teaches the tail items that in-batch
  sampling rarely shows. Random items equal to the row's positive are masked.

Logits are ``scale * cos(q, i)`` with a learned temperature. The column edits are small composable
*logit processors* (OmniSearchSage style) so new corrections slot in without touching the loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from itemsage.config import LossConfig


@dataclass
class LogitContext:
    """What a logit processor may look at for a ``[B, C]`` logit matrix.

    Attributes:
        row_ids: ``[B]`` item id of each row's positive.
        col_ids: ``[C]`` item id of each candidate column (``None`` if unknown).
        col_logq: ``[C]`` log sampling probability of each column (``None`` if unknown).
        labels: ``[B]`` column index of each row's positive.
    """

    row_ids: torch.Tensor
    col_ids: torch.Tensor | None
    col_logq: torch.Tensor | None
    labels: torch.Tensor


class LogitProcessor(nn.Module):
    """``(logits [B, C], ctx) -> logits``; subclasses edit candidate columns."""

    def forward(self, logits: torch.Tensor, ctx: LogitContext) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class LogQCorrection(LogitProcessor):
    """Subtract ``log q_j`` from every column ``j`` (positive included: it is a sample too)."""

    def forward(self, logits: torch.Tensor, ctx: LogitContext) -> torch.Tensor:
        if ctx.col_logq is None:
            raise ValueError("logQ correction is on but no log-probabilities were given (pos_logq)")
        return logits - ctx.col_logq.to(logits.dtype).unsqueeze(0)


class SameItemMask(LogitProcessor):
    """Mask (``-inf``) every column holding the row's positive item, except the label column.

    A duplicate of the positive is not a negative: pushing it away would push the positive away too.
    """

    def forward(self, logits: torch.Tensor, ctx: LogitContext) -> torch.Tensor:
        if ctx.col_ids is None:
            return logits
        same = ctx.row_ids.unsqueeze(1) == ctx.col_ids.unsqueeze(0)
        is_label = torch.zeros_like(same).scatter_(1, ctx.labels.unsqueeze(1), True)
        return logits.masked_fill(same & ~is_label, float("-inf"))


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 -> fp32. Logits reach 1/temperature_min = 100, where bf16 steps are 0.5: far
    coarser than the logQ terms and the cosine differences the loss is made of."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(_upcast(logits), labels)


class SampledSoftmaxLoss(nn.Module):
    """ItemSage sampled-softmax loss with a learned temperature.

    The temperature is stored as ``log t`` (always positive, scale-free steps); the logit scale
    ``1 / t`` is clamped at ``1 / cfg.temperature_min`` so a runaway temperature cannot make the
    softmax one-hot and the gradients vanish. Inputs are L2-normalised again here, so logits are
    cosine similarities whatever the towers return, and the loss always runs in (at least) float32,
    outside any autocast region.
    """

    def __init__(self, cfg: LossConfig) -> None:
        super().__init__()
        if not (cfg.in_batch_negatives or cfg.random_negatives):
            raise ValueError("enable at least one of loss.in_batch_negatives / loss.random_negatives")
        if not 0 < cfg.temperature_min <= cfg.temperature_init:
            raise ValueError("need 0 < loss.temperature_min <= loss.temperature_init")
        self.cfg = cfg
        self.log_temperature = nn.Parameter(
            torch.tensor(math.log(cfg.temperature_init)), requires_grad=cfg.learn_temperature
        )
        self.in_batch_processors = nn.ModuleList(([LogQCorrection()] if cfg.logq_correction else []) + [SameItemMask()])
        self.random_processors = nn.ModuleList([SameItemMask()])

    @property
    def scale(self) -> torch.Tensor:
        return torch.exp(-self.log_temperature).clamp(max=1.0 / self.cfg.temperature_min)

    @staticmethod
    def _process(processors: nn.ModuleList, logits: torch.Tensor, ctx: LogitContext) -> torch.Tensor:
        for p in processors:
            logits = p(logits, ctx)
        return logits

    def forward(
        self,
        query: torch.Tensor,
        pos_item: torch.Tensor,
        pos_ids: torch.Tensor,
        pos_logq: torch.Tensor | None = None,
        rand_items: torch.Tensor | None = None,
        rand_ids: torch.Tensor | None = None,
        rand_log_weight: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Mean losses over the ``B`` rows.

        Args:
            query: ``[B, d]`` query embeddings.
            pos_item: ``[B, d]`` embedding of each row's engaged item.
            pos_ids: ``[B]`` item ids of those items (for masking duplicates).
            pos_logq: ``[B]`` log sampling probability of each positive (needed with logQ).
            rand_items: ``[R, d]`` uniformly sampled items (needed with random negatives).
            rand_ids: ``[R]`` their ids (for masking a random draw of the positive).
            rand_log_weight: ``[R]`` ``log(q_j / q_uniform)`` of each random negative when they were
                not drawn uniformly (``loss.same_type_negatives``); subtracted from their logits
                when ``loss.same_type_logq`` is on (a uniform draw has 0).

        Returns:
            ``loss`` (the sum of enabled terms), ``in_batch_loss``, ``random_loss`` (0 when a term
            is disabled) and ``temperature`` (detached).
        """
        with torch.autocast(query.device.type, enabled=False):
            return self._loss(query, pos_item, pos_ids, pos_logq, rand_items, rand_ids, rand_log_weight)

    def _loss(
        self,
        query: torch.Tensor,
        pos_item: torch.Tensor,
        pos_ids: torch.Tensor,
        pos_logq: torch.Tensor | None,
        rand_items: torch.Tensor | None,
        rand_ids: torch.Tensor | None,
        rand_log_weight: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        q = F.normalize(_upcast(query), dim=-1)
        pos = F.normalize(_upcast(pos_item), dim=-1)
        scale = self.scale
        b = q.shape[0]
        labels = torch.arange(b, device=q.device)
        zero = q.new_zeros(())
        in_batch, random = zero, zero
        if self.cfg.in_batch_negatives:
            logits = scale * (q @ pos.T)
            ctx = LogitContext(pos_ids, pos_ids, pos_logq, labels)
            in_batch = _cross_entropy(self._process(self.in_batch_processors, logits, ctx), labels)
        if self.cfg.random_negatives:
            if rand_items is None:
                raise ValueError("random negatives are on but rand_items is None")
            neg = F.normalize(_upcast(rand_items), dim=-1)
            neg_logits = scale * (q @ neg.T)
            if rand_log_weight is not None and self.cfg.same_type_logq:
                neg_logits = neg_logits - rand_log_weight.to(neg_logits).unsqueeze(0)
            logits = torch.cat([scale * (q * pos).sum(-1, keepdim=True), neg_logits], dim=1)
            col_ids = None
            if rand_ids is not None:
                # Column 0 is each row's own positive (the label, never masked); -1 is a placeholder.
                col_ids = torch.cat([pos_ids.new_full((1,), -1), rand_ids.to(pos_ids.dtype)])
            ctx = LogitContext(pos_ids, col_ids, None, torch.zeros_like(labels))
            logits = self._process(self.random_processors, logits, ctx)
            random = _cross_entropy(logits, ctx.labels)
        return {
            "loss": in_batch + random,
            "in_batch_loss": in_batch,
            "random_loss": random,
            "temperature": (1.0 / scale).detach(),
        }

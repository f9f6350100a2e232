"""The trainable ItemSage model: item tower + per-surface query towers + loss + frequency sketch.

Everything that has parameters or training state lives in one ``nn.Module`` so that DDP wraps one
object, one ``state_dict`` is one checkpoint, and ``forward`` computes the whole objective (DDP only
synchronises gradients of work done inside the wrapped module's ``forward``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from itemsage.config import SURFACES, TEXT_FIELDS, LossConfig, ModelConfig
from itemsage.data.features_read import ITEM_QUERY
from itemsage.model.baselines import build_item_tower
from itemsage.model.batch import TEXT_QUERY_DIM, ItemBatch, ItemFeatureStore
from itemsage.model.cms import CountMinSketch, allgather_ids
from itemsage.model.hash_embedding import HashEmbeddingBag
from itemsage.model.hubness import neighbour_similarity
from itemsage.model.item_tower import ItemSageTower
from itemsage.model.loss import SampledSoftmaxLoss
from itemsage.model.query_towers import QueryTowers
from itemsage.model.text_residual import TextResidual

# Per surface: (row positions in the batch [n_s], frozen query features [n_s, in_dim]); for the
# ITEM_QUERY group, the query items' features instead.
QueryGroups = Mapping[str, tuple[torch.Tensor, torch.Tensor | ItemBatch]]

# Weight of the past in the running mean of training query embeddings (model.popularity_debias):
# about the last 100 steps, so the mean follows the towers as they train.
QUERY_MEAN_MOMENTUM = 0.99

# Rows of the running means: one per surface's queries, and the engaged (positive) items.
MEAN_ROWS: tuple[str, ...] = (*SURFACES, "item")


class SearchTokensMissing(ValueError):
    """A model with ``model.text_residual`` was asked to embed search queries without their tokens."""


class ItemSageModel(nn.Module):
    """Item tower, query towers, loss and the count-min sketch behind the logQ correction.

    Buffers ``query_mean`` / ``query_mean_weight``: a running mean of each surface's training query
    embeddings, and in the last row of the engaged items' embeddings (bias-corrected EMAs): the
    popularity prior that ``model.popularity_debias`` takes out of query scores at evaluation and
    serving (the last row for an item used as the query, "more like this" without an image).
    Models saved before the running means existed load with zeros (plain scores).

    Buffer ``hubness_bank``: unit embeddings of catalog items (``model.hubness_weight``), set after
    training (:meth:`set_hubness_bank`); empty until then and in models saved without one. With
    ``hubness_weight`` > 0, outside training every embedding gets one more coordinate: items
    ``-hubness_weight * h(x)`` (:func:`~itemsage.model.hubness.neighbour_similarity` against the
    bank, 0 while it is empty), queries 1, so an inner product scores ``q . x - w h(x)``.

    With ``model.title_blend`` = b > 0, outside training every embedding also carries ``sqrt(b)``
    times a unit frozen MiniLM vector (items: their ``title_emb``; queries: the same space's vector
    of the query, :meth:`embed_queries`), between the model's part and the hubness coordinate, so an
    inner product scores ``q . x + b cos(t_q, t_x) - w h(x)``: the trained similarity plus the frozen
    encoder's, which training cannot have bent towards the items it saw (cold start).
    """

    query_mean: torch.Tensor
    query_mean_weight: torch.Tensor
    hubness_bank: torch.Tensor

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
        # Read at evaluation and serving, not fixed at construction: the weight is a scoring choice
        # on a trained model (model.popularity_debias in its config, recorded with it).
        self.popularity_debias = float(model_cfg.popularity_debias)
        self.register_buffer("query_mean", torch.zeros(len(MEAN_ROWS), model_cfg.embedding_dim))
        self.register_buffer("query_mean_weight", torch.zeros(len(MEAN_ROWS)))
        self.hubness_weight = float(model_cfg.hubness_weight)
        self.hubness_neighbors = int(model_cfg.hubness_neighbors)
        self.register_buffer("hubness_bank", torch.zeros(0, model_cfg.embedding_dim))
        self.title_blend = float(model_cfg.title_blend)

    def _load_from_state_dict(self, state_dict: dict[str, torch.Tensor], prefix: str, *args: object) -> None:
        bank = state_dict.get(prefix + "hubness_bank")
        if bank is None:  # saved before the bank existed, or without one: plain scores
            bank = state_dict[prefix + "hubness_bank"] = self.hubness_bank.new_zeros(0, self.hubness_bank.shape[1])
        # The bank's size is the saved catalog's: take its shape before copying.
        self.hubness_bank = self.hubness_bank.new_zeros(bank.shape)
        for name in ("query_mean", "query_mean_weight"):
            mine = getattr(self, name)
            saved = state_dict.get(prefix + name)
            if saved is None:  # a model saved before the running means existed
                state_dict[prefix + name] = torch.zeros_like(mine)
            elif saved.shape[0] < mine.shape[0]:  # saved before the "item" row: none for it
                pad = mine.new_zeros((mine.shape[0] - saved.shape[0], *saved.shape[1:]))
                state_dict[prefix + name] = torch.cat([saved.to(mine.dtype), pad])
        super()._load_from_state_dict(state_dict, prefix, *args)

    @property
    def text_residual(self) -> TextResidual | None:
        """The item tower's pooled text path, which search queries share (``model.text_residual``)."""
        return getattr(self.item_tower, "text_residual", None)

    def mean_query(self, surface: str) -> torch.Tensor:
        """``[embedding_dim]`` mean training query embedding of ``surface``, or of the engaged items
        for ``"item"`` (zeros before training)."""
        if surface not in MEAN_ROWS:
            raise KeyError(f"no running mean for {surface!r}; expected one of {MEAN_ROWS}")
        i = MEAN_ROWS.index(surface)
        w = self.query_mean_weight[i]
        return self.query_mean[i] / w if float(w) > 0 else torch.zeros_like(self.query_mean[i])

    def debias(self, surface: str, query: torch.Tensor) -> torch.Tensor:
        """``normalize(query - popularity_debias * mean_query(surface))`` outside training; else as is."""
        if self.training or self.popularity_debias <= 0:
            return query
        return F.normalize(query - self.popularity_debias * self.mean_query(surface).to(query.dtype), dim=-1)

    def embed_item_queries(self, item_emb: torch.Tensor, title_emb: torch.Tensor | None = None) -> torch.Tensor:
        """Item embeddings used as queries ("more like this"), popularity-debiased like a surface's.
        Takes the item side as :meth:`embed_items` returns it (its hubness coordinate, if any, is
        dropped; its title part, if any, kept) and returns the query side. ``title_emb``: ``[B,
        384]`` frozen title vectors for items given as their ``embedding_dim`` part alone (the mean
        of a history's, :func:`~itemsage.model.catalog_queries.history_queries`)."""
        d = int(self.model_cfg.embedding_dim)
        query = self.debias("item", item_emb[:, :d])
        if self.title_on and title_emb is None and item_emb.shape[1] >= d + TEXT_QUERY_DIM:
            return self._as_query(query, title_part=item_emb[:, d : d + TEXT_QUERY_DIM])
        return self._as_query(query, title_emb)

    @property
    def hubness_on(self) -> bool:
        """Whether embeddings carry the hubness coordinate (``model.hubness_weight`` > 0, not training)."""
        return self.hubness_weight > 0 and not self.training

    @property
    def title_on(self) -> bool:
        """Whether embeddings carry the frozen title part (``model.title_blend`` > 0, not training)."""
        return self.title_blend > 0 and not self.training

    @property
    def output_dim(self) -> int:
        """Width of the embeddings outside training: ``embedding_dim``, + 384 with the title part,
        + 1 with the hubness coordinate."""
        return self.model_cfg.served_dim()

    def _title_part(self, title_emb: torch.Tensor | None, rows: int, like: torch.Tensor) -> torch.Tensor:
        """``sqrt(title_blend)`` times the unit ``title_emb`` (zero rows stay zero; ``None``: zeros)."""
        if title_emb is None:
            return like.new_zeros(rows, TEXT_QUERY_DIM)
        if title_emb.shape != (rows, TEXT_QUERY_DIM):
            raise ValueError(f"title vectors must be [{rows}, {TEXT_QUERY_DIM}], got {tuple(title_emb.shape)}")
        unit = F.normalize(title_emb.to(like.device, torch.float32), dim=-1)
        return (unit * self.title_blend**0.5).to(like.dtype)

    def _as_query(
        self, query: torch.Tensor, title_emb: torch.Tensor | None = None, title_part: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The query side of the served layout: ``query``, then (``title_on``) its title part, given
        as raw vectors (``title_emb``) or already scaled (``title_part``), then (``hubness_on``) 1."""
        parts = [query]
        if self.title_on:
            parts.append(title_part if title_part is not None else self._title_part(title_emb, len(query), query))
        if self.hubness_on:
            parts.append(query.new_ones(query.shape[0], 1))
        return torch.cat(parts, dim=1) if len(parts) > 1 else query

    @torch.no_grad()
    def set_hubness_bank(self, item_emb: torch.Tensor) -> None:
        """Store ``[m, embedding_dim]`` unit catalog item embeddings (from :meth:`embed_item_vectors`)
        as the bank that :data:`model.hubness_weight` scores against."""
        if item_emb.ndim != 2 or item_emb.shape[1] != self.model_cfg.embedding_dim:
            raise ValueError(
                f"a hubness bank needs [m, {self.model_cfg.embedding_dim}] item embeddings, got {tuple(item_emb.shape)}"
            )
        self.hubness_bank = item_emb.detach().float().to(self.query_mean.device).contiguous()

    def embed_item_vectors(self, batch: ItemBatch) -> torch.Tensor:
        """``[B, embedding_dim]`` unit item embeddings without the hubness coordinate (the bank's rows)."""
        return self.item_tower(batch)

    @torch.no_grad()
    def embed_store_rows(self, store: ItemFeatureStore, rows: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """:meth:`embed_item_vectors` of ``store``'s items ``rows``, ``chunk`` at a time, on the CPU
        (``[len(rows), embedding_dim]`` float32): the hubness bank, and the items that queries
        built from catalog items average (``itemsage.model.catalog_queries``)."""
        dev = self.query_mean.device
        parts = [
            self.embed_item_vectors(store.gather(rows[i : i + chunk]).to(dev)).float().cpu()
            for i in range(0, len(rows), chunk)
        ]
        return torch.cat(parts) if parts else torch.zeros(0, int(self.model_cfg.embedding_dim))

    @torch.no_grad()
    def _track_mean(self, row: str, emb: torch.Tensor) -> None:
        if emb.shape[0] == 0:
            return
        mean = emb.float().mean(0)
        if not bool(torch.isfinite(mean).all()):
            return  # a NaN step is skipped by the optimizer; it must not poison the mean either
        i = MEAN_ROWS.index(row)
        self.query_mean[i].mul_(QUERY_MEAN_MOMENTUM).add_(mean, alpha=1 - QUERY_MEAN_MOMENTUM)
        self.query_mean_weight[i].mul_(QUERY_MEAN_MOMENTUM).add_(1 - QUERY_MEAN_MOMENTUM)

    def embed_items(self, batch: ItemBatch) -> torch.Tensor:
        """``[B, embedding_dim]`` unit item embeddings (batch embedding and serving use this); with
        the title part and the hubness coordinate appended outside training (``[B, output_dim]``)."""
        x = self.item_tower(batch)
        parts = [x]
        if self.title_on:
            if batch.title_emb is None:
                raise ValueError(
                    "this model serves a frozen title part (model.title_blend) but the item batch has no title_emb"
                )
            parts.append(self._title_part(batch.title_emb, len(x), x))
        if self.hubness_on:
            h = neighbour_similarity(x, self.hubness_bank, self.hubness_neighbors)
            parts.append((-self.hubness_weight * h).to(x.dtype)[:, None])
        return torch.cat(parts, dim=1) if len(parts) > 1 else x

    def embed_queries(
        self,
        surface: str,
        feats: torch.Tensor,
        token_ids: torch.Tensor | None = None,
        expansion: torch.Tensor | None = None,
        title_emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[B, output_dim]`` query embeddings for one surface's frozen features (the first
        ``embedding_dim`` values a unit vector).

        ``expansion``: ``[B, embedding_dim]`` unit vectors added to the tower's output before it is
        normalised again (a photo query's catalog neighbours, ``itemsage.model.catalog_queries``).

        ``token_ids``: ``[B, L]`` vocabulary ids of search queries' text, padded with -1
        (``itemsage.data.query_tokens``); required for search with ``model.text_residual``, where
        they go through the item tower's pooled text path. Outside training, with
        ``popularity_debias`` > 0, the surface's mean training query is taken out (cold start).

        ``title_emb``: ``[B, 384]`` the query's vector in the frozen title space (``model.title_blend``);
        by default a search query's MiniLM feature itself and a home user's text half (the mean
        title of the history), nothing for a photo alone.
        """
        out = self.query_towers(surface, feats)
        if expansion is not None:
            out = F.normalize(out + expansion.to(out.device, out.dtype), dim=-1)
        residual = self.text_residual
        if surface == "search" and residual is not None:
            if token_ids is None:
                raise SearchTokensMissing(
                    "this model embeds search queries with their text tokens (model.text_residual): "
                    "pass the query's token ids (itemsage.data.query_tokens.query_token_ids)"
                )
            embedding = self.item_tower.text_embedding
            assert isinstance(embedding, HashEmbeddingBag)  # both towers own one; narrows for mypy
            text = residual.embed_tokens(embedding, token_ids.to(out.device))
            out = F.normalize(out + text.to(out.dtype) * float(self.model_cfg.use_text), dim=-1)
        if title_emb is None and surface == "search":
            title_emb = feats
        elif title_emb is None and surface == "home":
            title_emb = feats[:, -TEXT_QUERY_DIM:]
        return self._as_query(self.debias(surface, out), title_emb)

    def embed_query_batch(
        self, queries: QueryGroups, batch_size: int, search_token_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Embed a mixed-surface batch: each surface's rows go through its own tower, in row order;
        the :data:`~itemsage.data.features_read.ITEM_QUERY` group (items without an image as
        closeup queries) through the item tower.

        ``search_token_ids``: ``[n_search, L]`` padded token ids of the search group's rows, in
        the group's order (needed with ``model.text_residual``).
        """
        covered = sum(int(rows.numel()) for rows, _ in queries.values())
        if covered != batch_size:
            raise ValueError(f"query groups cover {covered} rows, batch has {batch_size}")
        out: torch.Tensor | None = None
        for surface, (rows, feats) in queries.items():
            if surface == ITEM_QUERY:
                assert isinstance(feats, ItemBatch), type(feats)
                emb = self._as_query(self.embed_item_vectors(feats), feats.title_emb)
            else:
                assert isinstance(feats, torch.Tensor), type(feats)
                emb = self.embed_queries(surface, feats, search_token_ids if surface == "search" else None)
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
        search_token_ids: torch.Tensor | None = None,
        rand_log_weight: torch.Tensor | None = None,
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
        query = self.embed_query_batch(queries, items.batch_size, search_token_ids)
        pos = self.embed_item_vectors(items)
        if self.training:
            for surface, (rows, _) in queries.items():
                self._track_mean(surface, query[rows.to(query.device)].detach())
            self._track_mean("item", pos.detach())
        rand = self.embed_item_vectors(rand_items) if rand_items is not None else None
        return self.loss(query, pos, item_ids, item_logq, rand, rand_ids, rand_log_weight)


def build_checks(cfg: ModelConfig) -> None:
    """Raise ``ValueError`` for model settings no model can be built (or scored) with."""
    if not 0.0 <= cfg.token_dropout < 1.0:
        raise ValueError(f"model.token_dropout must be in [0, 1), got {cfg.token_dropout}")
    if cfg.popularity_debias < 0:
        raise ValueError(f"model.popularity_debias must be >= 0, got {cfg.popularity_debias}")
    if cfg.hubness_weight < 0:
        raise ValueError(f"model.hubness_weight must be >= 0, got {cfg.hubness_weight}")
    if cfg.hubness_neighbors < 1:
        raise ValueError(f"model.hubness_neighbors must be >= 1, got {cfg.hubness_neighbors}")
    if cfg.hubness_bank_size < 1:
        raise ValueError(f"model.hubness_bank_size must be >= 1, got {cfg.hubness_bank_size}")
    if cfg.title_blend < 0:
        raise ValueError(f"model.title_blend must be >= 0, got {cfg.title_blend}")
    if cfg.title_blend > 0 and cfg.finetune_text_layers > 0:
        raise ValueError(
            "model.title_blend compares a search query's frozen MiniLM feature with the frozen title "
            "embeddings; with model.finetune_text_layers > 0 the query feature leaves that space"
        )


def build_model(
    cfg: ModelConfig,
    loss_cfg: LossConfig,
    vocab_size: int,
    image_dim: int,
    num_text_fields: int = len(TEXT_FIELDS),
    text_dim: int = 384,
    token_idf: torch.Tensor | None = None,
) -> ItemSageModel:
    """Build the model named by ``cfg.arch`` with the loss and sketch sized by ``loss_cfg``.

    ``token_idf``: ``[vocab_size]`` IDF over the training items (``itemsage.model.text_prior``);
    required to start a new model with ``cfg.text_init = "idf"``, not needed to rebuild one whose
    weights are loaded next.
    """
    build_checks(cfg)
    item_tower = build_item_tower(cfg, vocab_size, image_dim, num_text_fields)
    if token_idf is not None:
        if cfg.text_init != "idf":
            raise ValueError(f"token_idf given but model.text_init is {cfg.text_init!r}, not 'idf'")
        item_tower.text_embedding.init_from_idf(token_idf)
    query_towers = QueryTowers(image_dim, text_dim, cfg.embedding_dim, cfg.hidden_dim, cfg.query_residual)
    if isinstance(item_tower, ItemSageTower) and item_tower.title_skip is not None:
        # Tied: an item's title and a search query go through the very same projection (a siamese
        # pair over MiniLM), so training refines MiniLM's title similarity instead of relearning it.
        item_tower.title_skip = query_towers.projection("search")
    if isinstance(item_tower, ItemSageTower) and item_tower.image_skip is not None:
        # Tied likewise (model.image_skip): an item's photo and a closeup query's photo go through
        # the very same projection, so a photo query starts at the frozen image similarity.
        item_tower.image_skip = query_towers.projection("closeup")
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

"""The request flows (search, similar, recommend, embed, item metadata) over a pinned state.

:class:`Retriever` is the plain, in-process core: it owns the current
:class:`~itemsage.serve.core.RetrievalState` and runs every flow against it. Encoding is delegated
to an :class:`Encoding`, which is either in-process (:class:`~itemsage.serve.local.LocalEncoding`,
used by the single-process baseline server) or Ray Serve handles to the batched encoder deployments. Each flow
reads ``self.state`` exactly once, at its start, and passes that state's model version to the
encoder, so the query embedding and the index searched always come from the same version, even
while :meth:`Retriever.swap` publishes a new one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from itemsage.config import ServeConfig
from itemsage.serve.core import ModelSpec, RetrievalState, ServingSpec, load_state, read_catalog_image
from itemsage.serve.errors import BadRequestError, NotReadyError
from itemsage.serve.live import LiveCatalogService
from itemsage.serve.modes import mode_hits, needs_embedding, search_mode, similar_mode, similar_text
from itemsage.serve.writes import write_items


class Encoding(Protocol):
    """Query and item encoders for a pinned model version (``ModelSpec``)."""

    async def text(self, spec: ModelSpec, query: str) -> np.ndarray: ...
    async def texts(self, spec: ModelSpec, queries: list[str]) -> list[np.ndarray]: ...
    async def image(self, spec: ModelSpec, data: bytes) -> np.ndarray: ...
    async def similar_query(self, spec: ModelSpec, item_id: str) -> tuple[str, np.ndarray]: ...
    async def history(self, spec: ModelSpec, item_ids: list[str]) -> np.ndarray: ...
    async def item(self, spec: ModelSpec, payload: dict[str, Any]) -> np.ndarray: ...
    # An item being written to the live catalog: like ``item``, but may wait to batch with other writes.
    async def write_item(self, spec: ModelSpec, payload: dict[str, Any]) -> np.ndarray: ...
    async def warm(self, spec: ModelSpec) -> None: ...


class Retriever:
    """The serving core: current state, version swaps, and every request flow.

    Args:
        cfg: API limits.
        encoding: where query/item embeddings come from.
        use_gpu: index placement ("auto" = FAISS GPU where faiss-gpu and a GPU exist).
        base_dir: what relative paths in a :class:`ServingSpec` are relative to.
    """

    def __init__(
        self, cfg: ServeConfig, encoding: Encoding, use_gpu: str | bool = False, base_dir: str | None = None
    ) -> None:
        self.cfg = cfg
        self.encoding = encoding
        self.use_gpu = use_gpu
        self.base_dir = base_dir
        self._state: RetrievalState | None = None
        self._spec: ServingSpec | None = None
        self._swap_lock = asyncio.Lock()
        # Live catalog writes (serve.live): the change log this replica follows and writes to.
        self.live = LiveCatalogService(cfg, encoding.write_item, base_dir) if cfg.live.enabled else None

    # ---- versions ------------------------------------------------------------------------------
    @property
    def state(self) -> RetrievalState:
        state = self._state
        if state is None:
            raise NotReadyError("no model/index version is loaded yet")
        return state

    @property
    def loaded(self) -> bool:
        return self._state is not None

    async def swap(self, spec: ServingSpec) -> RetrievalState:
        """Load ``spec`` completely, warm the encoders on it, then publish it in one assignment.

        Requests already running keep the state they read; a failed load leaves the current
        version serving and re-raises. Concurrent swaps are serialised, last one wins.
        """
        spec = spec.resolved(self.base_dir)
        async with self._swap_lock:
            current = self._state
            if current is not None and spec == self._spec:
                return current
            new = await asyncio.to_thread(load_state, spec, self.use_gpu, self.base_dir)
            await self.encoding.warm(new.model)
            if self.live is not None:  # live items (re-embedded for a new model) before publishing
                new = await self.live.attach(new, self.use_gpu)
            self._state, self._spec = new, spec  # the swap: one reference, atomic for every reader
            if self.live is not None:
                self.live.follow(lambda: self._state)
            return new

    # ---- flows ---------------------------------------------------------------------------------
    async def search(
        self, query: str, k: int, filters: Mapping[str, Any] | None = None, mode: str | None = None
    ) -> dict[str, Any]:
        state = self.state
        where = state.where(filters)  # 422 before any encoding work
        mode = search_mode(state, mode, self.cfg.hybrid)
        emb = await self.encoding.text(state.model, query) if needs_embedding(mode) else None
        return state.answer("search", k, mode_hits(state, mode, query, emb, k, where, self.cfg.hybrid), mode)

    def search_mode(self, mode: str | None) -> str:
        """The mode a search asking for ``mode`` runs in now (422 for one the index cannot answer):
        checked per request before requests are batched, so one bad mode fails only its request."""
        return search_mode(self.state, mode, self.cfg.hybrid)

    async def search_many(
        self, queries: list[str], ks: list[int], modes: Sequence[str | None] | None = None
    ) -> list[dict[str, Any]]:
        """Several searches on one pinned state: one encoder call, one index call.

        The Serve Retriever batches concurrent ``/search`` requests through this, so a batch
        costs one round trip to the QueryEncoder instead of one per request. ``modes``: each
        search's mode (None: the default); the lexical part runs per query.
        """
        state = self.state
        resolved = [search_mode(state, m, self.cfg.hybrid) for m in (modes or [None] * len(queries))]
        if all(m == "dense" for m in resolved):
            embs = await self.encoding.texts(state.model, list(queries))
            hits = state.search_many(np.stack(embs), max(ks))
            return [state.answer("search", k, h[:k]) for k, h in zip(ks, hits)]
        rows = [i for i, m in enumerate(resolved) if needs_embedding(m)]
        embedded = await self.encoding.texts(state.model, [queries[i] for i in rows]) if rows else []
        emb_of = dict(zip(rows, embedded))
        return [
            state.answer("search", k, mode_hits(state, m, q, emb_of.get(i), k, None, self.cfg.hybrid), m)
            for i, (q, k, m) in enumerate(zip(queries, ks, resolved))
        ]

    async def similar(
        self,
        k: int,
        item_id: str | None = None,
        image: bytes | None = None,
        filters: Mapping[str, Any] | None = None,
        mode: str | None = None,
    ) -> dict[str, Any]:
        """Items like a catalog item (by id, in ``mode``: its embedding, its text in the lexical
        index, or both fused) or like a photo (dense only: a photo has no text)."""
        state = self.state
        where = state.where(filters)
        if item_id is None:
            if mode not in (None, "dense"):
                raise BadRequestError(
                    f"/similar by image answers in dense mode only (a photo has no text), not {mode!r}"
                )
            assert image is not None
            emb = await self.encoding.image(state.model, image)
            return state.answer("closeup", k, state.search(emb, k, where=where))
        state.catalog.get(item_id)  # 404 before any encoding work
        mode = similar_mode(state, mode, self.cfg.hybrid)
        surface, query = "item", None
        if needs_embedding(mode):
            query = self.live.query_vector(state, item_id) if self.live is not None else None
            if query is None:  # not written live: the model's feature store has it
                surface, query = await self.encoding.similar_query(state.model, item_id)
        text = "" if mode == "dense" else similar_text(state, item_id)
        hits = mode_hits(state, mode, text, query, k, where, self.cfg.hybrid, exclude={item_id})
        return state.answer(surface, k, hits, mode)

    async def recommend(
        self, history: Sequence[str], k: int, filters: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        state = self.state
        where = state.where(filters)
        ids = list(dict.fromkeys(history))  # repeats add nothing to a mean
        for i in ids:
            state.catalog.get(i)
        emb = await self.encoding.history(state.model, ids)
        # A home feed shows new things: items already in the history are left out.
        return state.answer("home", k, state.search(emb, k, exclude=set(ids), where=where))

    async def embed_query(
        self, text: str | None = None, image: bytes | None = None, history: Sequence[str] | None = None
    ) -> dict[str, Any]:
        state = self.state
        if text is not None:
            surface, emb = "search", await self.encoding.text(state.model, text)
        elif image is not None:
            surface, emb = "closeup", await self.encoding.image(state.model, image)
        else:
            ids = list(dict.fromkeys(history or []))
            for i in ids:
                state.catalog.get(i)
            surface, emb = "home", await self.encoding.history(state.model, ids)
        return _embedding(surface, emb, state)

    async def embed_item(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        state = self.state
        emb = await self.encoding.item(state.model, dict(payload))
        return _embedding("item", emb, state)

    # ---- metadata ------------------------------------------------------------------------------
    async def item(self, item_id: str) -> dict[str, Any]:
        return self.state.item_json(item_id)

    async def item_image(self, item_id: str, position: int = 0) -> tuple[bytes, str]:
        path = self.state.catalog.image_path(item_id, position)
        return await asyncio.to_thread(read_catalog_image, path, self.cfg.max_upload_bytes)

    # ---- live catalog writes (serve.live) -------------------------------------------------------
    def _live_service(self) -> LiveCatalogService:
        if self.live is None:
            raise NotReadyError("live catalog writes are disabled on this server (serve.live.enabled=false)")
        return self.live

    async def upsert_items(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Add or replace items (durably logged before this returns); see LiveCatalogService."""
        return await self._live_service().upsert_items(self.state, items)

    async def delete_items(self, item_ids: list[str]) -> dict[str, Any]:
        return await self._live_service().delete_items(self.state, item_ids)

    async def write_items(self, upserts: list[dict[str, Any]], deletes: list[str]) -> dict[str, Any]:
        """Upserts and deletes of one request (``POST /items/bulk``); see itemsage.serve.writes."""
        return await write_items(self._live_service(), self.state, upserts, deletes)

    async def item_digests(self) -> dict[str, str]:
        return await self._live_service().item_digests(self.state)

    async def live_status(self) -> dict[str, Any]:
        return self._live_service().status(self.state)

    async def applied_steps(self, after: int = 0) -> dict[str, Any]:
        """When this replica applied each recent change-log step (``GET /live/applied``); an index
        without live writes is the log's empty start: seq 0, no steps."""
        state = self.state
        if self.live is None:
            return {"applied_seq": 0, "now": time.time(), "steps": []}
        return self.live.applied_steps(state, after)

    async def version(self) -> dict[str, Any]:
        return self.state.versions()

    async def facets(self) -> dict[str, Any]:
        return self.state.facets()

    async def health(self) -> dict[str, Any]:
        return self.state.health()


def _embedding(surface: str, emb: np.ndarray, state: RetrievalState) -> dict[str, Any]:
    vec = np.asarray(emb, np.float32).reshape(-1)
    return {"surface": surface, "dim": int(vec.size), "embedding": vec.tolist(), "model_version": state.model_version}

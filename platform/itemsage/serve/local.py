"""The whole API in one process, no Ray: the benchmark baseline and the fast tests.

Same FastAPI app (:func:`~itemsage.serve.api.create_api`), same :class:`Retriever` core, with the
encoders called in-process one request at a time (:class:`LocalEncoding`): the plain
"FastAPI + torch + FAISS" server that the Serve deployment graph is measured against.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI

from itemsage.config import ServeConfig
from itemsage.serve.api import create_api
from itemsage.serve.core import ModelSpec, ServingSpec
from itemsage.serve.encoders import LocalEncoders
from itemsage.serve.service import Retriever


class LocalEncoding:
    """:class:`~itemsage.serve.service.Encoding` in this process, one request at a time, each in a
    worker thread: no batching across requests (the baseline)."""

    def __init__(self, encoders: LocalEncoders) -> None:
        self.enc = encoders

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def text(self, spec: ModelSpec, query: str) -> np.ndarray:
        return await self._run(lambda: self.enc.text_batch([self.enc.bundle(spec)], [query])[0])

    async def texts(self, spec: ModelSpec, queries: list[str]) -> list[np.ndarray]:
        return await self._run(lambda: self.enc.text_batch([self.enc.bundle(spec)] * len(queries), queries))

    async def image(self, spec: ModelSpec, data: bytes) -> np.ndarray:
        def run() -> np.ndarray:
            b = self.enc.bundle(spec)
            return self.enc.image_batch([b], [self.enc.image_pixels(b, data)])[0]

        return await self._run(run)

    async def similar_query(self, spec: ModelSpec, item_id: str) -> tuple[str, np.ndarray]:
        return await self._run(lambda: self.enc.similar_query(self.enc.bundle(spec), item_id))

    async def history(self, spec: ModelSpec, item_ids: list[str]) -> np.ndarray:
        return await self._run(lambda: self.enc.history(self.enc.bundle(spec), item_ids))

    async def item(self, spec: ModelSpec, payload: dict[str, Any]) -> np.ndarray:
        def run() -> np.ndarray:
            b = self.enc.bundle(spec)
            return self.enc.item_batch([b], [self.enc.prepare_item(b, payload)])[0]

        return await self._run(run)

    async def write_item(self, spec: ModelSpec, payload: dict[str, Any]) -> np.ndarray:
        return await self.item(spec, payload)

    async def warm(self, spec: ModelSpec) -> None:
        await self._run(self.enc.warm, spec)


def local_retriever(cfg: ServeConfig, device: str = "cpu", base_dir: str | None = None) -> Retriever:
    """A :class:`Retriever` whose encoders run in this process."""
    encoders = LocalEncoders(cfg, device, base_dir=base_dir)
    return Retriever(cfg, LocalEncoding(encoders), use_gpu=device != "cpu", base_dir=base_dir)


def create_local_app(
    version: Mapping[str, Any],
    cfg: ServeConfig | None = None,
    device: str = "cpu",
    base_dir: str | None = None,
    web_dir: str | Path | None = None,
) -> FastAPI:
    """The API app over an in-process :class:`Retriever`; the version loads at startup (lifespan)."""
    cfg = cfg or ServeConfig()
    spec = ServingSpec.from_user_config(version)
    retriever = local_retriever(cfg, device, base_dir or os.getcwd())
    app = create_api(retriever, cfg, web_dir, title="ItemSage (single process)")
    app.state.retriever = retriever

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await retriever.swap(spec)
        yield
        if retriever.live is not None:  # stop following the change log
            await retriever.live.close()

    app.router.lifespan_context = lifespan
    return app

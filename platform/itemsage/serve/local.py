"""The whole API in one process, no Ray: the benchmark baseline and the fast tests.

Same FastAPI app (:func:`~itemsage.serve.api.create_api`), same :class:`Retriever` core, with the
encoders called in-process one request at a time (:class:`LocalEncoding`): the plain
"FastAPI + torch + FAISS" server that the Serve deployment graph is measured against.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from itemsage.config import ServeConfig
from itemsage.serve.api import create_api
from itemsage.serve.core import ServingSpec
from itemsage.serve.encoders import LocalEncoders
from itemsage.serve.service import LocalEncoding, Retriever


def local_retriever(cfg: ServeConfig, device: str = "cpu", base_dir: str | None = None) -> Retriever:
    """A :class:`Retriever` whose encoders run in this process."""
    return Retriever(cfg, LocalEncoding(LocalEncoders(cfg, device)), use_gpu=device != "cpu", base_dir=base_dir)


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

    app.router.lifespan_context = lifespan
    return app

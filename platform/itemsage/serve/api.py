"""The HTTP API as one FastAPI app over any backend with the :class:`Backend` methods.

The Serve ``Ingress`` deployment and the single-process baseline server build the very same app
(:func:`create_api`), the first over Ray Serve handles, the second over an in-process
:class:`~itemsage.serve.service.Retriever`; so validation, limits, status codes and response
bodies are identical, and the benchmark compares serving architectures, not two APIs.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the route parameters' annotations
# at runtime, and the request models exist only per app (add_endpoints sets them).
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any, Protocol

from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response

from itemsage.config import ServeConfig
from itemsage.serve.auth import WriteToken, token_dependency
from itemsage.serve.endpoints import ENDPOINTS
from itemsage.serve.errors import ServeError, as_serve_error
from itemsage.serve.schemas import ErrorResponse, RequestModels, build_request_models, build_write_models
from itemsage.serve.uploads import decode_base64
from itemsage.serve.write_api import core_item, openapi_request_body, read_item_write, with_served_headers

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parents[3] / "deployments" / "web"
_WEB_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}


class Backend(Protocol):
    """What the handlers call: the ``backend`` methods named in ``ENDPOINTS``, as
    :class:`~itemsage.serve.service.Retriever` implements them."""

    async def search(
        self, query: str, k: int, filters: dict[str, Any] | None = None, mode: str | None = None
    ) -> dict[str, Any]: ...
    async def similar(
        self,
        k: int,
        item_id: str | None = None,
        image: bytes | None = None,
        filters: dict[str, Any] | None = None,
        mode: str | None = None,
    ) -> dict[str, Any]: ...
    async def recommend(self, history: list[str], k: int, filters: dict[str, Any] | None = None) -> dict[str, Any]: ...
    async def facets(self) -> dict[str, Any]: ...
    async def embed_query(
        self, text: str | None = None, image: bytes | None = None, history: list[str] | None = None
    ) -> dict[str, Any]: ...
    async def embed_item(self, payload: dict[str, Any]) -> dict[str, Any]: ...
    async def item(self, item_id: str) -> dict[str, Any]: ...
    async def item_image(self, item_id: str, position: int = 0) -> tuple[bytes, str]: ...
    async def version(self) -> dict[str, Any]: ...
    async def health(self) -> dict[str, Any]: ...
    async def upsert_items(self, items: list[dict[str, Any]]) -> dict[str, Any]: ...
    async def item_digests(self) -> dict[str, str]: ...
    async def delete_items(self, item_ids: list[str]) -> dict[str, Any]: ...
    async def write_items(self, upserts: list[dict[str, Any]], deletes: list[str]) -> dict[str, Any]: ...
    async def applied_steps(self, after: int = 0) -> dict[str, Any]: ...


class ServiceUnavailableError(ServeError):
    """A backend failure that is not the client's fault (after retries): 503, never a 500."""

    status_code = 503


class BodyLimit:
    """ASGI middleware: 413 for request bodies over ``limit`` bytes, before anything parses them.

    Content-Length is checked up front; a body without one (chunked) is read here, counted, and
    refused at the limit, then replayed to the app. Reading it here rather than counting inside
    the app matters: FastAPI turns any error raised while it reads a body into a 400.
    """

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Any]], send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers") or []:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.limit:
                    await _too_large(send, self.limit)
                    return
                if declared >= 0:  # the server enforces a declared length; nothing to count
                    await self.app(scope, receive, send)
                    return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.limit:
                await _too_large(send, self.limit)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _too_large(send: Any, limit: int) -> None:
    body = json.dumps({"detail": f"request body is larger than {limit} bytes"}).encode()
    await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


# What each error status means, for the OpenAPI document (an endpoint lists its codes in ENDPOINTS).
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "missing or wrong bearer token"},
    403: {
        "model": ErrorResponse,
        "description": "local image path outside the allowed roots; writes disabled (no token)",
    },
    404: {"model": ErrorResponse, "description": "unknown item id"},
    413: {"model": ErrorResponse, "description": "upload or request body too large"},
    422: {"model": ErrorResponse, "description": "invalid request (validation message in detail)"},
    503: {"model": ErrorResponse, "description": "not ready, or a backend failure after retrying"},
}


def create_api(
    backend: Backend, cfg: ServeConfig, web_dir: str | Path | None = None, title: str = "ItemSage"
) -> FastAPI:
    """The FastAPI app: JSON API, OpenAPI docs (``/docs``), and the web page at ``/``.

    One route per entry of :data:`~itemsage.serve.endpoints.ENDPOINTS`, answered by the handler
    of the same name (:func:`_handlers`).
    """
    app = FastAPI(
        title=title,
        version="1",
        description="Product retrieval with ItemSage embeddings: text search, similar items, home feed.",
    )
    web = _load_web(Path(web_dir) if web_dir else WEB_DIR)

    @app.exception_handler(ServeError)
    async def _serve_error(_: Request, exc: ServeError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default body, minus the echoed input: a rejected 10 MB upload must not be
        # sent back to the client.
        errors = [{k: v for k, v in e.items() if k not in ("input", "ctx", "url")} for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        err = as_serve_error(exc)
        if err is not None:
            return JSONResponse({"detail": err.detail}, status_code=err.status_code)
        log.exception("request failed")
        return JSONResponse({"detail": "internal error; the request was not completed"}, status_code=503)

    add_endpoints(app, _handlers(backend, cfg), build_request_models(cfg), WriteToken.from_config(cfg), cfg)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index_page() -> Response:
        return _web_response(web, "index.html")

    @app.get("/web/{name}", include_in_schema=False)
    async def web_file(name: str) -> Response:
        return _web_response(web, name)

    # Outermost of the app's own middleware: the size check runs before any body is parsed.
    app.add_middleware(BodyLimit, limit=cfg.max_request_bytes)
    return app


def add_endpoints(
    app: FastAPI,
    handlers: Mapping[str, Callable[..., Awaitable[Any]]],
    requests: RequestModels,
    token: WriteToken | None = None,
    cfg: ServeConfig | None = None,
) -> None:
    """Register every :data:`ENDPOINTS` route on ``app``; each handler's ``body`` parameter gets the
    endpoint's request model as its annotation (the models carry the config's limits, so they
    exist only per app). Write endpoints (and, with ``cfg.reads_require_token``, the reads but the
    ops ones) need ``token``; without a token, writes are refused (403)."""
    token = token or WriteToken("", "serve.write_token")
    guarded = token_dependency(token)
    reads_guarded = cfg is not None and cfg.reads_require_token
    missing = [e.name for e in ENDPOINTS if e.name not in handlers]
    extra = sorted(set(handlers) - {e.name for e in ENDPOINTS})
    if missing or extra:
        raise ValueError(f"ENDPOINTS and the HTTP handlers disagree: no handler for {missing}, no endpoint for {extra}")
    for ep in ENDPOINTS:
        handler = handlers[ep.name]
        extra_args: dict[str, Any] = {"response_model": ep.response}
        if ep.request is not None and ep.multipart:  # the handler reads the body (JSON or form)
            extra_args["openapi_extra"] = openapi_request_body(getattr(requests, ep.request))
        elif ep.request is not None:
            _set_body_model(handler, getattr(requests, ep.request))
        if ep.write or (reads_guarded and ep.tag != "ops"):
            extra_args["dependencies"] = [Depends(guarded)]
        responses: dict[int | str, dict[str, Any]] = {c: ERRORS[c] for c in ep.errors}
        if ep.response is not None and not ep.write:
            handler = with_served_headers(handler)
        if ep.media_type is not None:  # a raw file, not a JSON body
            responses = {200: {"content": {ep.media_type: {}}}, **responses}
            extra_args = {"response_class": Response}
        app.add_api_route(
            ep.path,
            handler,
            methods=[ep.method],
            responses=responses,
            tags=[ep.tag],
            description=ep.summary,
            **extra_args,
        )


def _set_body_model(handler: Callable[..., Any], model: type[Any]) -> None:
    sig = inspect.signature(handler)
    if "body" not in sig.parameters:
        raise ValueError(f"handler {handler.__name__} takes a request body but has no 'body' parameter")
    params = [p.replace(annotation=model) if p.name == "body" else p for p in sig.parameters.values()]
    handler.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]


def _handlers(backend: Backend, cfg: ServeConfig) -> dict[str, Callable[..., Awaitable[Any]]]:
    """The HTTP handlers, by :class:`~itemsage.serve.endpoints.Endpoint` name: each turns a
    validated request into its backend call (``body`` is the endpoint's request model)."""

    def image_bytes(data: str) -> bytes:
        return decode_base64(data, cfg.max_upload_bytes)

    item_model, _ = build_write_models(cfg)  # PUT reads its body itself (JSON or multipart)

    async def search(body: Any) -> Any:
        return await backend.search(body.query, body.k, filters=body.filters, mode=body.mode)

    async def similar(body: Any) -> Any:
        image = image_bytes(body.image) if body.image is not None else None
        return await backend.similar(body.k, item_id=body.item_id, image=image, filters=body.filters, mode=body.mode)

    async def recommend(body: Any) -> Any:
        return await backend.recommend(list(body.history), body.k, filters=body.filters)

    async def embed_query(body: Any) -> Any:
        image = image_bytes(body.image) if body.image is not None else None
        history = list(body.history) if body.history is not None else None
        return await backend.embed_query(text=body.text, image=image, history=history)

    async def embed_item(body: Any) -> Any:
        payload = body.model_dump()
        payload["images"] = [image_bytes(s) for s in body.images]
        return await backend.embed_item(payload)

    async def item(item_id: str) -> Any:
        return await backend.item(item_id)

    async def item_image(item_id: str, i: int = Query(0, ge=0, lt=cfg.max_item_images)) -> Response:
        data, media_type = await backend.item_image(item_id, i)
        return Response(data, media_type=media_type, headers={"Cache-Control": "public, max-age=3600"})

    async def healthz() -> Any:
        try:
            return await backend.health()
        except Exception as exc:  # noqa: BLE001 - any failure means "not healthy"
            err = as_serve_error(exc)
            detail = err.detail if err else f"unhealthy: {type(exc).__name__}"
            return JSONResponse({"detail": detail}, status_code=503)

    async def version() -> Any:
        return await backend.version()

    async def put_item(
        request: Request, item_id: str = PathParam(min_length=1, max_length=cfg.max_item_id_chars)
    ) -> Any:
        item = await read_item_write(request, item_model, cfg)
        done = await backend.upsert_items([core_item(item_id, item)])
        return {"item_id": item_id, "op": "upsert", "seq": done["seq"], "model_version": done.get("model_version")}

    async def delete_item(item_id: str = PathParam(min_length=1, max_length=cfg.max_item_id_chars)) -> Any:
        done = await backend.delete_items([item_id])
        return {"item_id": item_id, "op": "delete", "seq": done["seq"], "model_version": None}

    async def bulk_items(body: Any) -> Any:
        upserts = []
        for it in body.items:
            payload = it.model_dump()
            payload["images"] = [image_bytes(s) for s in it.images]
            upserts.append(core_item(payload.pop("item_id"), payload))
        return await backend.write_items(upserts, list(body.delete))

    async def catalog_digests() -> Any:
        return {"items": await backend.item_digests()}

    async def facets() -> Any:
        return await backend.facets()

    async def live_applied(after: int = Query(0, ge=0, description="only steps past this seq")) -> Any:
        return await backend.applied_steps(after)

    handlers = (
        search,
        similar,
        recommend,
        embed_query,
        embed_item,
        item,
        item_image,
        healthz,
        version,
        put_item,
        delete_item,
        bulk_items,
        catalog_digests,
        facets,
        live_applied,
    )
    return {h.__name__: h for h in handlers}


def _load_web(directory: Path) -> dict[str, tuple[bytes, str]]:
    """The page's files, read once: a fixed set served from memory, so no request can name a path."""
    files: dict[str, tuple[bytes, str]] = {}
    if directory.is_dir():
        for p in directory.iterdir():
            if p.is_file() and p.suffix in _WEB_TYPES:
                files[p.name] = (p.read_bytes(), _WEB_TYPES[p.suffix])
    return files


def _web_response(web: dict[str, tuple[bytes, str]], name: str) -> Response:
    if name not in web:
        return JSONResponse({"detail": f"no such page file {name!r}"}, status_code=404)
    data, media_type = web[name]
    return Response(data, media_type=media_type)

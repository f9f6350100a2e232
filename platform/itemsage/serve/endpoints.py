"""The HTTP API's endpoints, each declared once: method, path, request and response model.

Everything else reads this table: :func:`~itemsage.serve.api.create_api` registers one route per
entry (and refuses to build an app whose handlers or request models do not match it), the Serve
deployments forward exactly the backend methods named here from the Ingress to the Retriever
(:mod:`itemsage.serve.deployments`), and ``tests/serve/test_endpoints.py`` checks the API table in
``docs/serving.md`` and the URLs the web page calls against the OpenAPI document built from it.

Adding an endpoint: one entry here, its HTTP handler in ``api.py`` (turns the request into a
backend call), its request model in ``schemas.py`` if it takes a body, and the backend method it
calls on :class:`~itemsage.serve.service.Retriever`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from itemsage.serve.filtering import FacetsResponse
from itemsage.serve.schemas import (
    AppliedStepsResponse,
    BulkWriteResponse,
    EmbeddingResponse,
    HealthResponse,
    ItemDigestsResponse,
    ItemInfo,
    SearchResponse,
    VersionResponse,
    WriteResponse,
)


@dataclass(frozen=True)
class Endpoint:
    """One route of the API.

    Attributes:
        name: the HTTP handler in ``api.py`` of this name (also the OpenAPI operation's name).
        method: HTTP method.
        path: route path, FastAPI syntax (``{item_id}``).
        backend: the backend method (``Retriever``/``HandleBackend``) the handler calls.
        response: the 200 body's model; ``None`` for a raw file answer (see ``media_type``).
        request: the field of :class:`~itemsage.serve.schemas.RequestModels` holding the JSON
            body's model, or ``None`` when the endpoint takes no body.
        errors: the error status codes it can answer (described in ``api.ERRORS``).
        tag: OpenAPI group.
        summary: what it answers, one sentence (the OpenAPI description).
        media_type: for a raw file answer, its media type(s).
        write: part of the write API: needs the write token (``itemsage.serve.auth``) and is
            never retried by the Ingress (a write that fails is answered 503; the client decides).
        multipart: the body may also come as ``multipart/form-data`` (text fields + image files);
            the handler then reads the body itself (``itemsage.serve.write_api``).
    """

    name: str
    method: Literal["GET", "POST", "PUT", "DELETE"]
    path: str
    backend: str
    response: type[BaseModel] | None
    request: str | None
    errors: tuple[int, ...]
    tag: str
    summary: str
    media_type: str | None = None
    write: bool = False
    multipart: bool = False


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        name="search",
        method="POST",
        path="/search",
        backend="search",
        request="search",
        response=SearchResponse,
        errors=(413, 422, 503),
        tag="retrieval",
        summary="Products for a text query (search surface).",
    ),
    Endpoint(
        name="similar",
        method="POST",
        path="/similar",
        backend="similar",
        request="similar",
        response=SearchResponse,
        errors=(404, 413, 422, 503),
        tag="retrieval",
        summary="Products similar to a catalog item (``item_id``) or an uploaded photo (``image``, base64).",
    ),
    Endpoint(
        name="recommend",
        method="POST",
        path="/recommend",
        backend="recommend",
        request="recommend",
        response=SearchResponse,
        errors=(404, 413, 422, 503),
        tag="retrieval",
        summary="A home feed for a user given the items they engaged with (home surface).",
    ),
    Endpoint(
        name="embed_query",
        method="POST",
        path="/embed/query",
        backend="embed_query",
        request="embed_query",
        response=EmbeddingResponse,
        errors=(404, 413, 422, 503),
        tag="embeddings",
        summary="The query embedding of a text, an image or a history (one of them).",
    ),
    Endpoint(
        name="embed_item",
        method="POST",
        path="/embed/item",
        backend="embed_item",
        request="embed_item",
        response=EmbeddingResponse,
        errors=(403, 413, 422, 503),
        tag="embeddings",
        summary="The item embedding of a new or changed product (text fields + images).",
    ),
    Endpoint(
        name="item",
        method="GET",
        path="/items/{item_id}",
        backend="item",
        request=None,
        response=ItemInfo,
        errors=(404, 503),
        tag="catalog",
        summary="Catalog metadata of one item.",
    ),
    Endpoint(
        name="item_image",
        method="GET",
        path="/items/{item_id}/image",
        backend="item_image",
        request=None,
        response=None,
        errors=(404, 503),
        tag="catalog",
        media_type="image/*",
        summary="The item's ``i``-th catalog image (only files the catalog itself names are served).",
    ),
    Endpoint(
        name="put_item",
        method="PUT",
        path="/items/{item_id}",
        backend="upsert_items",
        request="item_write",
        response=WriteResponse,
        # 404: an id with "/" in it matches no route (write it through /items/bulk)
        errors=(401, 403, 404, 413, 422, 503),
        tag="catalog writes",
        summary="Add or replace an item (JSON, or multipart with image files); 200 once it is in the change log.",
        write=True,
        multipart=True,
    ),
    Endpoint(
        name="delete_item",
        method="DELETE",
        path="/items/{item_id}",
        backend="delete_items",
        request=None,
        response=WriteResponse,
        errors=(401, 403, 404, 503),
        tag="catalog writes",
        summary="Remove an item; 200 once the delete is in the change log.",
        write=True,
    ),
    Endpoint(
        name="bulk_items",
        method="POST",
        path="/items/bulk",
        backend="write_items",
        request="bulk_write",
        response=BulkWriteResponse,
        errors=(401, 403, 404, 413, 422, 503),
        tag="catalog writes",
        summary="Up to max_bulk_items upserts and deletes at once, all checked before any is stored.",
        write=True,
    ),
    Endpoint(
        name="catalog_digests",
        method="GET",
        path="/catalog/digests",
        backend="item_digests",
        request=None,
        response=ItemDigestsResponse,
        errors=(401, 403, 503),
        tag="catalog writes",
        summary="Content digest of every served item: what a catalog sync compares a catalog file with (write token).",
        write=True,
    ),
    Endpoint(
        name="healthz",
        method="GET",
        path="/healthz",
        backend="health",
        request=None,
        response=HealthResponse,
        errors=(503,),
        tag="ops",
        summary="200 once a model and a non-empty index are loaded, else 503 saying why.",
    ),
    Endpoint(
        name="version",
        method="GET",
        path="/version",
        backend="version",
        request=None,
        response=VersionResponse,
        errors=(503,),
        tag="ops",
        summary="The model and index versions answering right now.",
    ),
    Endpoint(
        name="live_applied",
        method="GET",
        path="/live/applied",
        backend="applied_steps",
        request=None,
        response=AppliedStepsResponse,
        errors=(422, 503),
        tag="ops",
        summary="When the answering replica applied each recent change-log step (time-to-visible, measured where it happens).",
    ),
    Endpoint(
        name="facets",
        method="GET",
        path="/facets",
        backend="facets",
        request=None,
        response=FacetsResponse,
        errors=(503,),
        tag="retrieval",
        summary="The attributes ``filters`` may name: keyword values with item counts, number ranges.",
    ),
)

# The backend methods the endpoints call, in table order: what the Ingress forwards to the Retriever.
BACKEND_METHODS: tuple[str, ...] = tuple(dict.fromkeys(e.backend for e in ENDPOINTS))
# The backend methods that write (never retried: a write that failed may still have been logged).
WRITE_METHODS: frozenset[str] = frozenset(e.backend for e in ENDPOINTS if e.write)

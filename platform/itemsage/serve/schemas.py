"""Request and response bodies of the HTTP API.

Request limits come from :class:`~itemsage.config.ServeConfig`, so the request models are built per
config by :func:`build_request_models`; the OpenAPI document then shows the real limits
(``maxLength``, ``maximum``...), which is what the schemathesis fuzz test generates inputs from.
Every request model forbids unknown fields, so a typo ("querry") is a 422 naming the field rather
than a silently ignored key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints, create_model, model_validator

from itemsage.config import TEXT_FIELDS, ServeConfig
from itemsage.serve.filtering import FILTERS_DESCRIPTION

# -------------------------------------------------------------------------------- responses


class Hit(BaseModel):
    """One retrieved item, with what a results page needs to show it."""

    item_id: str
    score: float = Field(description="inner product of the query and item embeddings (cosine)")
    title: str = ""
    product_types: str = ""
    image_url: str | None = Field(None, description="GET path of the item's first image, if it has one")


class SearchResponse(BaseModel):
    surface: str = Field(description="query tower that embedded the query: search | closeup | home")
    k: int
    results: list[Hit]
    model_version: str = Field(description="model version that embedded the query")
    index_version: str = Field(description="index version that was searched")


class EmbeddingResponse(BaseModel):
    surface: str = Field(description="'item' or the query tower: search | closeup | home")
    dim: int
    embedding: list[float]
    model_version: str


class ItemInfo(BaseModel):
    item_id: str
    title: str
    fields: dict[str, str] = Field(description="the catalog's non-empty text fields")
    image_urls: list[str]
    index_version: str


class ModelVersionInfo(BaseModel):
    name: str | None
    version: str
    uri: str
    image_backbone: str
    embedding_dim: int


class IndexVersionInfo(BaseModel):
    version: str
    uri: str
    spec: str
    ntotal: int
    device: str
    model_version: str | None = Field(description="model version whose item embeddings the index holds")


class VersionResponse(BaseModel):
    model: ModelVersionInfo
    index: IndexVersionInfo


class HealthResponse(BaseModel):
    status: str
    model_version: str
    index_version: str
    items: int


class ErrorResponse(BaseModel):
    detail: Any


# --------------------------------------------------------------------------------- requests


def _exactly_one(model: BaseModel, names: tuple[str, ...]) -> None:
    given = [n for n in names if getattr(model, n) is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of {', '.join(names)} (got {', '.join(given) or 'none'})")


def _not_blank(value: str | None, what: str) -> None:
    if value is not None and not value.strip():
        raise ValueError(f"{what} must not be blank")


@dataclass(frozen=True)
class RequestModels:
    """The request body classes for one :class:`ServeConfig`."""

    search: type[BaseModel]
    similar: type[BaseModel]
    recommend: type[BaseModel]
    embed_query: type[BaseModel]
    embed_item: type[BaseModel]


def build_request_models(cfg: ServeConfig) -> RequestModels:
    """Request models whose limits are ``cfg``'s."""
    K = Annotated[StrictInt, Field(ge=1, le=cfg.max_k, description=f"number of results, 1..{cfg.max_k}")]
    Query = Annotated[
        str,
        StringConstraints(min_length=1, max_length=cfg.max_query_chars),
        Field(description=f"search text, 1..{cfg.max_query_chars} characters"),
    ]
    ItemId = Annotated[str, StringConstraints(min_length=1, max_length=cfg.max_item_id_chars)]
    History = Annotated[
        list[ItemId],
        Field(min_length=1, max_length=cfg.max_history, description="item ids the user engaged with, any order"),
    ]
    # Base64 text; its size is checked after decoding (413), not by the schema (which would say 422).
    Image = Annotated[str, Field(description="base64-encoded image file (JPEG, PNG, WebP, ...)")]
    strict = ConfigDict(extra="forbid")
    # Values are checked against the served index's attributes (itemsage.serve.filtering: 422).
    Filters = Annotated[
        dict[str, Any] | None, Field(max_length=cfg.max_filter_clauses, description=FILTERS_DESCRIPTION)
    ]

    class SearchRequest(BaseModel):
        model_config = strict
        query: Query
        k: K = 10
        filters: Filters = None

        @model_validator(mode="after")
        def _check(self) -> SearchRequest:
            _not_blank(self.query, "query")
            return self

    class SimilarRequest(BaseModel):
        """Items similar to a catalog item (by id) or to an uploaded image."""

        model_config = strict
        item_id: ItemId | None = None
        image: Image | None = None
        k: K = 10
        filters: Filters = None

        @model_validator(mode="after")
        def _check(self) -> SimilarRequest:
            _exactly_one(self, ("item_id", "image"))
            return self

    class RecommendRequest(BaseModel):
        model_config = strict
        history: History
        k: K = 10
        filters: Filters = None

    class EmbedQueryRequest(BaseModel):
        """One query for one tower: text (search), image (closeup) or history (home)."""

        model_config = strict
        text: Query | None = None
        image: Image | None = None
        history: History | None = None

        @model_validator(mode="after")
        def _check(self) -> EmbedQueryRequest:
            _exactly_one(self, ("text", "image", "history"))
            _not_blank(self.text, "text")
            return self

    Field_ = Annotated[str, StringConstraints(max_length=cfg.max_text_field_chars)]
    fields: dict[str, Any] = {f: (Field_, "") for f in TEXT_FIELDS}
    # Named before the call: mypy reads an Annotated[...] written inline as a create_model
    # argument as a type form and its Field description strings as forward references.
    ItemImages = Annotated[list[Image], Field(max_length=cfg.max_item_images, description="base64 image files")]
    ImagePaths = Annotated[
        list[Annotated[str, StringConstraints(min_length=1, max_length=4096)]],
        Field(
            max_length=cfg.max_item_images,
            description="server-local image files, only under the configured allowed roots",
        ),
    ]
    EmbedItemBase = create_model(
        "EmbedItemBase",
        __config__=strict,
        item_id=(ItemId | None, None),
        images=(ItemImages, []),
        image_paths=(ImagePaths, []),
        **fields,
    )

    class EmbedItemRequest(EmbedItemBase):  # type: ignore[misc, valid-type]
        """A new or changed item: any of the 12 text fields plus images (uploads or allowed paths)."""

        @model_validator(mode="after")
        def _check(self) -> EmbedItemRequest:
            has_text = any(getattr(self, f).strip() for f in TEXT_FIELDS)
            if not has_text and not self.images and not self.image_paths:
                raise ValueError("an item needs at least one non-empty text field or one image")
            if len(self.images) + len(self.image_paths) > cfg.max_item_images:
                raise ValueError(f"at most {cfg.max_item_images} images per item")
            return self

    return RequestModels(SearchRequest, SimilarRequest, RecommendRequest, EmbedQueryRequest, EmbedItemRequest)

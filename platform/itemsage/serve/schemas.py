"""Request and response bodies of the HTTP API.

Request limits come from :class:`~itemsage.config.ServeConfig`, so the request models are built per
config by :func:`build_request_models`; the OpenAPI document then shows the real limits
(``maxLength``, ``maximum``...), which is what the schemathesis fuzz test generates inputs from.
Every request model forbids unknown fields, so a typo ("querry") is a 422 naming the field rather
than a silently ignored key.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
    create_model,
    model_validator,
)

from itemsage.config import TEXT_FIELDS, SearchMode, ServeConfig
from itemsage.serve.filtering import FILTERS_DESCRIPTION

# The search modes (itemsage.serve.modes): an unknown one is a 422 naming the allowed values.
SearchModeName = SearchMode

MODE_DESCRIPTION = (
    "dense: the search tower and the vector index; lexical: BM25 over the items' text; hybrid: both "
    "rankings fused by reciprocal rank. Omitted: the server's default (serve.hybrid.default_mode)."
)
SIMILAR_MODE_DESCRIPTION = (
    "For an item_id: dense: the item's embedding and the vector index; lexical: BM25 with the item's "
    "own text; hybrid: both rankings fused by reciprocal rank. Omitted: the server's default "
    "(serve.hybrid.similar_default_mode). An image is answered in dense mode only."
)

# -------------------------------------------------------------------------------- responses


class Hit(BaseModel):
    """One retrieved item, with what a results page needs to show it."""

    item_id: str
    score: float = Field(
        description="dense: inner product of the query and item embeddings (cosine); lexical: BM25; "
        "hybrid: reciprocal-rank-fusion score"
    )
    title: str = ""
    product_types: str = ""
    image_url: str | None = Field(None, description="GET path of the item's first image, if it has one")


class SearchResponse(BaseModel):
    surface: str = Field(description="query tower that embedded the query: search | closeup | home")
    k: int
    mode: SearchModeName = Field("dense", description="retrieval that answered: dense | lexical | hybrid")
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


class WriteResponse(BaseModel):
    """A write that is in the durable change log (acknowledged)."""

    item_id: str
    op: Literal["upsert", "delete"]
    seq: int = Field(
        description="the write's position in the change log; an answer from a replica that has applied it "
        "carries X-Applied-Seq >= seq"
    )
    model_version: str | None = Field(None, description="model version that embedded the item (upserts)")


class ItemDigestsResponse(BaseModel):
    items: dict[str, str] = Field(description="content digest of every served item, by item id (for a catalog sync)")


class AppliedStep(BaseModel):
    seq: int = Field(description="change-log position the replica's index reached in this apply step")
    applied_at: float = Field(description="Unix time (the replica's clock) from which its searches see it")


class AppliedStepsResponse(BaseModel):
    applied_seq: int = Field(description="the last change this replica has applied")
    now: float = Field(description="Unix time on the replica when it answered (to estimate clock offset)")
    steps: list[AppliedStep] = Field(description="its recent apply steps past ``after``, oldest first")


class BulkWriteResponse(BaseModel):
    upserted: int
    deleted: int
    seq: int = Field(description="change-log position of the request's last write: all of it is visible once applied")
    model_version: str | None = Field(None, description="model version that embedded the upserts")


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
    item_write: type[BaseModel]
    bulk_write: type[BaseModel]


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
        mode: Annotated[SearchModeName | None, Field(description=MODE_DESCRIPTION)] = None

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
        mode: Annotated[SearchModeName | None, Field(description=SIMILAR_MODE_DESCRIPTION)] = None

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

    item_write, bulk_write = build_write_models(cfg)
    return RequestModels(
        SearchRequest, SimilarRequest, RecommendRequest, EmbedQueryRequest, EmbedItemRequest, item_write, bulk_write
    )


def build_write_models(cfg: ServeConfig) -> tuple[type[BaseModel], type[BaseModel]]:
    """``PUT /items/{item_id}``'s body (the item; its id is in the path) and ``POST /items/bulk``'s.

    An item needs a non-blank ``title`` (every catalog row has one; the item tower and the result
    pages rely on it); the other text fields are optional. Images are base64 in JSON, files in a
    multipart PUT (``itemsage.serve.write_api``).
    """
    strict = ConfigDict(extra="forbid")
    ItemId = Annotated[str, StringConstraints(min_length=1, max_length=cfg.max_item_id_chars)]
    Text = Annotated[str, StringConstraints(max_length=cfg.max_text_field_chars)]
    Title = Annotated[
        str,
        StringConstraints(min_length=1, max_length=cfg.max_text_field_chars),
        Field(description="required, not blank"),
    ]
    Images = Annotated[
        list[str], Field(max_length=cfg.max_item_images, description="base64 image files (JPEG, PNG, WebP, ...)")
    ]
    # Strict: "true" or "3" stay the strings they are.
    Attribute = StrictBool | StrictInt | StrictFloat | StrictStr | list[StrictStr]
    AttributeName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")]
    Attributes = Annotated[
        dict[AttributeName, Attribute],
        Field(description="filterable catalog attributes (keyword, keyword list, number, boolean) by name"),
    ]
    fields: dict[str, Any] = {f: (Text, "") for f in TEXT_FIELDS if f != "title"}
    ItemWriteBase = create_model(
        "ItemWriteBase",
        __config__=strict,
        title=(Title, ...),
        images=(Images, []),
        attributes=(Attributes, {}),
        **fields,
    )

    class ItemWrite(ItemWriteBase):  # type: ignore[misc, valid-type]
        """A new or changed catalog item: its text fields (``title`` required), images, attributes."""

        @model_validator(mode="after")
        def _check(self) -> ItemWrite:
            _not_blank(self.title, "title")
            clash = sorted(set(self.attributes) & {*TEXT_FIELDS, "item_id", "images", "image_paths"})
            if clash:
                raise ValueError(f"attribute names {clash} are item fields, not attributes")
            return self

    class BulkItem(ItemWrite):
        item_id: ItemId

    class BulkWrite(BaseModel):
        """Upserts and deletes: every item checked and every deleted id known before any is stored."""

        model_config = strict
        items: Annotated[
            list[BulkItem], Field(max_length=cfg.max_bulk_items, description="items to add or replace")
        ] = []
        delete: Annotated[list[ItemId], Field(max_length=cfg.max_bulk_items, description="item ids to remove")] = []

        @model_validator(mode="after")
        def _check(self) -> BulkWrite:
            n = len(self.items) + len(self.delete)
            if not 1 <= n <= cfg.max_bulk_items:
                raise ValueError(f"a bulk write holds 1..{cfg.max_bulk_items} items (upserts + deletes), got {n}")
            ids = [it.item_id for it in self.items] + list(self.delete)
            repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
            if repeated:
                raise ValueError(f"item ids named more than once in one bulk write: {repeated[:5]}")
            return self

    return ItemWrite, BulkWrite

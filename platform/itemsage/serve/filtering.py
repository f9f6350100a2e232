"""The HTTP side of filtered retrieval: the ``filters`` request field, 422s, and ``GET /facets``.

The filter model and its evaluation live in the index (``itemsage.index.filters``,
``itemsage.index.attributes``, ``itemsage.index.filtered``); this module only turns a request's
``filters`` into an index selection, maps a bad filter to a 422 naming the problem, and describes
the filterable attributes for the web page's facet controls.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field

from itemsage.serve.errors import BadRequestError, NotReadyError

FILTERS_DESCRIPTION = (
    "Only items matching every key (AND). Keys: the attributes GET /facets lists. A value is a "
    'string or number (equality), a list (any of them), or {"gte"|"gt"|"lte"|"lt": number} '
    '(a numeric range), e.g. {"gender": "Women", "color": ["Red", "Pink"], "price": {"lt": 50}}. '
    "Applied inside the index search; no match gives an empty result list."
)


def select_filter(index: Any, filters: Mapping[str, Any] | None) -> Any:
    """``index.select(filters)``; a filter the index cannot apply becomes a 422 with the reason."""
    from itemsage.index.filters import FilterError

    if not filters:
        return None
    try:
        return index.select(dict(filters))
    except FilterError as e:
        raise BadRequestError(str(e)) from None


def search_where(index: Any, queries: Any, k: int, where: Any) -> Any:
    """``index.search`` restricted to ``where``; an index that cannot filter (faiss-gpu has no ID
    selectors) is a 503 saying so, not an internal error."""
    if where is None:
        return index.search(queries, k)
    from itemsage.index.base import UnsupportedOperationError

    try:
        return index.search(queries, k, where=where)
    except UnsupportedOperationError as e:
        raise NotReadyError(str(e)) from None


class FacetValue(BaseModel):
    value: str
    count: int = Field(description="items of the index with this value")


class Facet(BaseModel):
    name: str = Field(description="the key to use in ``filters``")
    type: str = Field(description="keyword | keyword_list | number")
    values: list[FacetValue] | None = Field(None, description="keyword values, most frequent first")
    count: int | None = Field(None, description="number attributes: items that have a value")
    min: float | None = None
    max: float | None = None


class FacetsResponse(BaseModel):
    attributes: list[Facet]
    items: int = Field(description="items in the index")
    index_version: str


def facets_json(index: Any, index_version: str) -> dict[str, Any]:
    table = getattr(index, "attributes", None)
    return {
        "attributes": table.facets() if table is not None else [],
        "items": int(index.ntotal),
        "index_version": index_version,
    }

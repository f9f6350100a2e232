"""The filter clause model of a search request: equality, in-list, numeric range, AND of clauses.

A request's ``filters`` is a JSON object, one key per attribute, every key must hold (AND)::

    {"gender": "Women",                      equality (keyword, keyword_list or number)
     "color": ["Red", "Pink"],               in-list: any of the values
     "price": {"gte": 10, "lt": 50}}         numeric range: gte / gt / lte / lt, any of them

:func:`parse_filter` turns it into a :class:`Filter` and checks it against the attributes an index
declares filterable (:class:`AttributeSpec`): an unknown attribute, a value of the wrong type, a
range on a keyword, an empty list or an empty range raise :class:`FilterError` naming the attribute
and what is allowed (the HTTP API answers 422 with that message). Evaluating a filter to the set of
matching items is :meth:`itemsage.index.attributes.AttributeTable.select`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

KEYWORD = "keyword"
KEYWORD_LIST = "keyword_list"
NUMBER = "number"
ATTRIBUTE_TYPES = (KEYWORD, KEYWORD_LIST, NUMBER)
RANGE_OPS = ("gte", "gt", "lte", "lt")
# In-list length cap: a filter is a facet choice, not a list of item ids.
MAX_IN_LIST = 1000


class FilterError(ValueError):
    """A filter names an attribute the index cannot filter on, or a value of the wrong type."""


@dataclass(frozen=True)
class AttributeSpec:
    """A filterable attribute: its name in requests, its catalog column and its type."""

    name: str
    field: str
    type: str
    separator: str = ","

    def __post_init__(self) -> None:
        if self.type not in ATTRIBUTE_TYPES:
            raise ValueError(f"attribute {self.name!r}: type must be one of {ATTRIBUTE_TYPES}; got {self.type!r}")


@dataclass(frozen=True)
class Equals:
    attribute: str
    value: str | float


@dataclass(frozen=True)
class OneOf:
    attribute: str
    values: tuple[str | float, ...]


@dataclass(frozen=True)
class Range:
    """``lo <= x <= hi`` with each bound optional and open or closed."""

    attribute: str
    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False


Clause = Equals | OneOf | Range


@dataclass(frozen=True)
class Filter:
    """Clauses that must all hold (AND). An empty filter matches every item."""

    clauses: tuple[Clause, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.clauses)


def _is_number(v: Any) -> bool:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int beyond float range (JSON allows any digits)
        return False


def _scalar(spec: AttributeSpec, value: Any) -> str | float:
    if spec.type == NUMBER:
        if not _is_number(value):
            raise FilterError(
                f"filter {spec.name!r} is a number attribute: give a finite number, a list of numbers or a "
                f'range {{"gte": .., "lte": ..}}; got {value!r}'
            )
        return float(value)
    if not isinstance(value, str):
        raise FilterError(
            f"filter {spec.name!r} is a {spec.type} attribute: give a string or a list of strings; got {value!r}"
        )
    return value


def _range(spec: AttributeSpec, bounds: Mapping[str, Any]) -> Range:
    if spec.type != NUMBER:
        raise FilterError(f"filter {spec.name!r} is a {spec.type} attribute: ranges apply to number attributes only")
    unknown = sorted(set(bounds) - set(RANGE_OPS))
    if unknown or not bounds:
        raise FilterError(
            f"filter {spec.name!r}: a range takes {', '.join(RANGE_OPS)}"
            + (f"; got {', '.join(map(repr, unknown))}" if unknown else "; got none")
        )
    for op, v in bounds.items():
        if not _is_number(v):
            raise FilterError(f"filter {spec.name!r}: bound {op} must be a finite number; got {v!r}")
    if "gte" in bounds and "gt" in bounds or "lte" in bounds and "lt" in bounds:
        raise FilterError(f"filter {spec.name!r}: give at most one lower bound (gte/gt) and one upper bound (lte/lt)")
    lo_open = "gt" in bounds
    hi_open = "lt" in bounds
    lo = float(bounds.get("gt", bounds.get("gte", -math.inf)))
    hi = float(bounds.get("lt", bounds.get("lte", math.inf)))
    if lo > hi or (lo == hi and (lo_open or hi_open)):
        raise FilterError(f"filter {spec.name!r}: the range is empty (lower bound {lo} above upper bound {hi})")
    return Range(spec.name, lo, hi, lo_open, hi_open)


def parse_filter(filters: Mapping[str, Any] | None, specs: Mapping[str, AttributeSpec]) -> Filter:
    """The :class:`Filter` of a request's ``filters`` object, checked against ``specs``."""
    if filters is None:
        return Filter()
    if not isinstance(filters, Mapping):
        raise FilterError(f"filters must be an object of attribute: value; got {type(filters).__name__}")
    clauses: list[Clause] = []
    for name, value in filters.items():
        spec = specs.get(name)
        if spec is None:
            have = ", ".join(sorted(specs)) or "none (this index was built without filterable attributes)"
            raise FilterError(f"unknown filter attribute {name!r}; filterable: {have}")
        if isinstance(value, Mapping):
            clauses.append(_range(spec, value))
        elif isinstance(value, (list, tuple)):
            if not value:
                raise FilterError(f"filter {name!r}: the list of values is empty (give at least one)")
            if len(value) > MAX_IN_LIST:
                raise FilterError(f"filter {name!r}: at most {MAX_IN_LIST} values; got {len(value)}")
            clauses.append(OneOf(name, tuple(dict.fromkeys(_scalar(spec, v) for v in value))))
        else:
            clauses.append(Equals(name, _scalar(spec, value)))
    return Filter(tuple(clauses))

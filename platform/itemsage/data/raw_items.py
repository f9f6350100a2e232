"""What every catalog layout hands on: raw source records (``RawItem``), and the checks they all
share (ids, UTF-8, field lengths, image files, emptiness, repeated ids) that turn them into the
generic item table (``normalise_source``).

The rejects these checks produce are listed in ``itemsage.data.catalog``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from itemsage.config import TEXT_FIELDS, TextConfig
from itemsage.data.rejects import Reject, fix_utf8, non_utf8_reject

STAGE = "catalog"
# One default, in config.py: the tokenizer truncates with the same limit.
MAX_FIELD_CHARS: int = TextConfig().max_chars_per_field
LINK_COLUMNS: tuple[str, ...] = ("item_id", "action", "linked_id")


@dataclass
class RawItem:
    """One source record before the shared checks (ids, UTF-8, lengths, images, emptiness)."""

    where: str
    item_id: str | None
    fields: dict[str, str]
    image_paths: list[str] = field(default_factory=list)
    group: str | None = None
    # Numeric attributes (amazon: price), NaN when unknown; one float64 column each.
    numeric: dict[str, float] = field(default_factory=dict)
    # {action: [linked item ids]} the record lists (amazon: also_buy, also_view).
    links: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Source:
    """What an adapter hands to the shared normalisation."""

    raws: list[RawItem]
    # Values the source implies for every item (e.g. merchant_domain). They are filled in after
    # the emptiness check, so a row with no real content is still an "empty_item".
    constants: dict[str, str]
    has_group: bool
    location: Path
    numeric_columns: tuple[str, ...] = ()
    has_links: bool = False


def is_uri(path: str) -> bool:
    return "://" in path


def absolute_path(path: str) -> str:
    # abspath rather than resolve: symlinked image stores keep the path the user gave. os.path,
    # not pathlib: this runs once per image of million-item catalogs.
    return path if is_uri(path) else os.path.abspath(os.path.expanduser(path))


def normalise_raw(
    raw: RawItem, item_id: str, bad_id: bool, rejects: list[Reject], max_images: int, max_field_chars: int
) -> tuple[dict[str, str], list[str]] | None:
    """The shared checks of one record whose id is ``item_id`` (not empty, not a repeat): its 12
    text fields (UTF-8 fixed, cut to ``max_field_chars``) and image paths (existing, at most
    ``max_images``); None when it is empty. Source constants are not filled in yet."""
    fields: dict[str, str] = {}
    non_utf8 = ["item_id"] if bad_id else []
    for name in TEXT_FIELDS:
        value, bad = fix_utf8(raw.fields.get(name, "").strip())
        if bad:
            non_utf8.append(name)
        if len(value) > max_field_chars:
            rejects.append(
                Reject(
                    STAGE,
                    item_id,
                    "truncated_field",
                    f"{raw.where}: {name} has {len(value)} characters, cut to {max_field_chars}",
                )
            )
            value = value[:max_field_chars]
        fields[name] = value
    if non_utf8:
        rejects.append(non_utf8_reject(STAGE, item_id, raw.where, non_utf8))
    paths: list[str] = []
    for p in raw.image_paths:
        p, _ = fix_utf8(p)
        p = absolute_path(p)
        if not is_uri(p) and not os.path.isfile(p):
            rejects.append(
                Reject(STAGE, item_id, "missing_image", f"{raw.where}: image file not found: {p}; item kept without it")
            )
            continue
        paths.append(p)
    if len(paths) > max_images:
        rejects.append(
            Reject(STAGE, item_id, "too_many_images", f"{raw.where}: {len(paths)} images, the first {max_images} kept")
        )
        paths = paths[:max_images]
    if not paths and not any(fields.values()):
        rejects.append(Reject(STAGE, item_id, "empty_item", f"{raw.where}: no text and no images"))
        return None
    return fields, paths


def raw_item_id(raw: RawItem, rejects: list[Reject]) -> tuple[str, bool] | None:
    """The record's id (UTF-8 fixed) and whether it needed fixing; None, with a reject, if empty."""
    item_id, bad_id = fix_utf8((raw.item_id or "").strip())
    if not item_id:
        rejects.append(Reject(STAGE, None, "missing_id", f"{raw.where}: empty or absent id"))
        return None
    return item_id, bad_id


def duplicate_reject(item_id: str, where: str) -> Reject:
    return Reject(STAGE, item_id, "duplicate_id", f"{where}: id already read; the first row is kept")


def item_group(raw_group: str | None, item_id: str) -> str:
    # An item without a group is its own group, so splitting still keeps it whole.
    return fix_utf8((raw_group or "").strip())[0] or f"item:{item_id}"


def normalise_source(
    source: Source, rejects: list[Reject], max_images: int, max_field_chars: int
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    columns = ["item_id", "image_paths", *TEXT_FIELDS] + (["group"] if source.has_group else [])
    columns += list(source.numeric_columns)
    out: dict[str, list[Any]] = {c: [] for c in columns}
    links: dict[str, list[str]] = {c: [] for c in LINK_COLUMNS}
    kept: set[str] = set()
    for raw in source.raws:
        ident = raw_item_id(raw, rejects)
        if ident is None:
            continue
        item_id, bad_id = ident
        if item_id in kept:
            rejects.append(duplicate_reject(item_id, raw.where))
            continue
        normalised = normalise_raw(raw, item_id, bad_id, rejects, max_images, max_field_chars)
        if normalised is None:
            continue
        fields, paths = normalised
        for name, value in source.constants.items():
            fields[name] = fields[name] or value
        kept.add(item_id)
        out["item_id"].append(item_id)
        out["image_paths"].append(paths)
        for name in TEXT_FIELDS:
            out[name].append(fields[name])
        if source.has_group:
            out["group"].append(item_group(raw.group, item_id))
        for name in source.numeric_columns:
            out[name].append(raw.numeric.get(name, math.nan))
        for action, linked in raw.links.items():
            links["item_id"] += [item_id] * len(linked)
            links["action"] += [action] * len(linked)
            links["linked_id"] += linked
    items = pd.DataFrame(out, columns=columns)
    for c in columns:
        if c in source.numeric_columns:
            items[c] = items[c].astype("float64")
        elif c != "image_paths":
            items[c] = items[c].astype(str)
    return items, (pd.DataFrame(links, columns=list(LINK_COLUMNS), dtype=str) if source.has_links else None)

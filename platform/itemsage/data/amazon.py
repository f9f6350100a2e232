"""The McAuley Amazon product metadata format: one line -> one ``AmazonProduct`` (or a ``Reject``).

Reads lines of the public "Amazon Review Data (2018)" files (``meta_<Category>.json.gz``: one JSON
object a line) and of the 2014 release (one Python literal a line, read with ``ast.literal_eval``,
with ``related: {also_bought, also_viewed, bought_together}``, ``categories`` as a list of paths,
``imUrl`` and a numeric ``price``). ``parse_amazon_line`` never raises on bad input: it is called on
every raw line of files with millions of them (by ``itemsage.data.catalog`` and from Ray Data
``map_batches``), where one bad line must cost that line only.

How the fields become the 12 ItemSage text features (also in ``docs/catalog-mapping.md`` and the
table of ``itemsage.data.catalog``; keep the three in step):

===============  ==========================================================================
feature          from
===============  ==========================================================================
title            ``title``; HTML removed. A title that is only a broken HTML fragment
                 (``<span class="a-size-medium a-color-secondary"``, most of
                 Magazine_Subscriptions) is missing: ""
description      ``description`` paragraphs, then ``feature`` bullets, then bullets scraped into
                 ``category`` (see category_path), joined by " "
merchant_domain  "amazon.com" (``AMAZON_CONSTANTS``, filled in after the emptiness check)
link_text        ""
category_path    ``category`` (2014: the first of ``categories``) joined by " > ", repeated
                 levels once; the path ends at the first entry that reads like a sentence (ends
                 in . ! ?, or over 8 words): Gift_Cards lines carry feature bullets there
product_types    distinct of: the category path's leaf (2014: every path's leaf),
                 ``main_cat``, ``details`` "Format" (e.g. "Print Magazine"), joined by ", "
brand            ``brand``; when empty, ``details`` "Brand", "Publisher" or "Manufacturer"
colors           ``details`` "Color" / "Colour"
materials        ``details`` "Material" / "Material Type" / "Fabric Type"
patterns         ``details`` "Pattern"
size             ``details`` "Size"
size_type        ""
===============  ==========================================================================

Every text is HTML-stripped (tags, ``<script>``/``<style>`` bodies and a tag cut off before its
``>`` are removed, then entities such as ``&amp;`` and ``&#39;`` decoded, whitespace collapsed).
Other ``details`` (shipping, dimensions, ASIN), ``rank``, ``date``, ``tech1/2``, ``fit`` and
``similar_item`` are not used: they are shipping boilerplate or mostly empty.

``price``: ``"$12.99"`` -> 12.99, ``"$1,299.00"`` -> 1299.0; a range ``"$5.00 - $10.00"`` -> 5.0,
its **low end** (the price a shopper can buy the product at; a filter "under $8" should find it);
2014's numeric price as is; anything else (empty, scraped CSS, negative) -> ``None``.

``image_names``: basenames of ``imageURLHighRes``, then ``imageURL`` (2014: ``imUrl``), URL-decoded,
distinct, in that order. They name files only: the catalog maps them to a local folder when one is
configured; nothing is ever fetched.

``also_buy``: ``also_buy`` (2014: ``also_bought`` then ``bought_together``); ``also_view``:
``also_view`` (2014: ``also_viewed``); distinct, in file order, the product itself left out.

Rejects (``stage`` "catalog"): ``malformed_row`` (neither JSON nor a Python literal, e.g. a
truncated line, or not an object), ``missing_id`` (no ``asin``), ``non_utf8_text`` (bytes that
are not UTF-8 were replaced by U+FFFD; the product is kept). Duplicate asins, over-long fields and
products without any text are the catalog normaliser's (``duplicate_id``, ``truncated_field``,
``empty_item``), as for every layout.
"""

from __future__ import annotations

import ast
import gzip
import html
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from itemsage.config import TEXT_FIELDS
from itemsage.data.rejects import Reject, fix_utf8, non_utf8_reject

STAGE = "catalog"
# Values every Amazon product shares; filled in after the emptiness check (catalog.Source).
AMAZON_CONSTANTS: dict[str, str] = {"merchant_domain": "amazon.com"}
# File names the layout reads: meta_<Category>.json[.gz] (the public release) or
# <Category>/meta.json[.gz] (one folder per category).
META_FILE = re.compile(r"^meta(_.+)?\.json(\.gz)?$", re.IGNORECASE)
# A category entry longer than this many words is a scraped bullet, not a category.
MAX_CATEGORY_WORDS = 8

_SCRIPT = re.compile(r"<(script|style)\b.*?(?:</\1\s*>|$)", re.IGNORECASE | re.DOTALL)
# Only "<" followed by a tag-name character opens a tag, so "5 < 6 > 4" stays text.
_TAG = re.compile(r"<[A-Za-z/!?][^<>]*>")
_CUT_TAG = re.compile(r"<[A-Za-z/!?][^<>]*$")
_SPACE = re.compile(r"\s+")
_ALT = re.compile(r"""\balt\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
_NUMBER = r"(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?"
_PRICE = re.compile(rf"^\$?\s*{_NUMBER}(?:\s*-\s*\$?\s*{_NUMBER})?$")
_SENTENCE_END = (".", "!", "?")


@dataclass(frozen=True)
class AmazonProduct:
    """One product line, parsed: text in the 12 ``TEXT_FIELDS`` (every key present, "" when
    unknown), the price, image file names and the co-engagement links it lists."""

    item_id: str
    fields: dict[str, str]
    price: float | None
    image_names: list[str]
    also_buy: list[str]
    also_view: list[str]


# --------------------------------------------------------------------------------------------
# Files and lines
# --------------------------------------------------------------------------------------------


def is_meta_file(path: Path) -> bool:
    """A McAuley metadata file by its name: ``meta_<Category>.json[.gz]`` or ``meta.json[.gz]``."""
    return path.is_file() and bool(META_FILE.match(path.name))


def amazon_files(path: Path) -> list[Path]:
    """The metadata files of a catalog path: the file itself, or a directory's
    ``meta_<Category>.json[.gz]`` files and ``<Category>/meta.json[.gz]`` subfolders, sorted."""
    if path.is_file():
        return [path] if is_meta_file(path) else []
    if not path.is_dir():
        return []
    found = [p for p in path.iterdir() if is_meta_file(p)]
    found += [p for sub in path.iterdir() if sub.is_dir() for p in sub.iterdir() if is_meta_file(p)]
    return sorted(found)


def file_label(file: Path, root: Path) -> str:
    """How rejects name a file: relative to the catalog path (``Gift_Cards/meta.json.gz``)."""
    try:
        rel = file.relative_to(root)
    except ValueError:
        return file.name
    return file.name if str(rel) == "." else str(rel)


def iter_lines(file: Path) -> Iterator[tuple[int, bytes]]:
    """``(line number, raw bytes)`` of a metadata file, gzip or plain (by its magic bytes), one
    line in memory at a time. A gzip file cut short ends the iteration with ``EOFError``."""
    with file.open("rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    with opener(file, "rb") as fh:
        yield from enumerate(fh, start=1)


# --------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------


def strip_html(text: str) -> str:
    """Text without HTML tags (or a tag cut off before its ``>``), entities decoded, one space."""
    if "<" in text:
        text = _SCRIPT.sub(" ", text)
        text = _TAG.sub(" ", text)
        text = _CUT_TAG.sub(" ", text)
    if "&" in text:
        text = html.unescape(text)
    return _SPACE.sub(" ", text).strip()


def _texts(value: Any) -> list[str]:
    """Every string inside ``value`` (a string, a list of them, nested lists), HTML-stripped, non-empty."""
    if isinstance(value, str):
        text = strip_html(value)
        return [text] if text else []
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _texts(v)]
    if isinstance(value, bool) or value is None or isinstance(value, dict):
        return []
    if isinstance(value, (int, float)):
        return [str(value)]
    return []


def _text(value: Any) -> str:
    return " ".join(_texts(value))


def _distinct(values: list[str]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))


def _is_sentence(entry: str) -> bool:
    return entry.endswith(_SENTENCE_END) or len(entry.split()) > MAX_CATEGORY_WORDS


def split_category(path: list[str]) -> tuple[list[str], list[str]]:
    """A ``category`` list -> (the category path, bullets scraped into it).

    Repeated levels are kept once ("Gift Cards", "Gift Cards"); the path ends at the first entry
    that reads like a sentence, and it and everything after it are bullets.
    """
    levels: list[str] = []
    for i, entry in enumerate(path):
        if _is_sentence(entry):
            return levels, path[i:]
        if not levels or levels[-1] != entry:
            levels.append(entry)
    return levels, []


def _details(value: Any) -> dict[str, str]:
    """``details`` with normalised keys ("\\n  Product Dimensions: \\n" -> "product dimensions")."""
    if not isinstance(value, dict):
        return {}
    out: dict[str, str] = {}
    for key, v in value.items():
        name = _SPACE.sub(" ", str(key)).strip().rstrip(":").strip().lower()
        text = _text(v)
        if name and text and name not in out:
            out[name] = text
    return out


def _first(details: dict[str, str], *names: str) -> str:
    return next((details[n] for n in names if details.get(n)), "")


def _main_cat(value: Any) -> str:
    """``main_cat``; some are an ``<img ... alt="AMAZON FASHION"/>`` tag: its alt text then."""
    if not isinstance(value, str):
        return ""
    text = strip_html(value)
    if not text and (alt := _ALT.search(value)):
        text = strip_html(alt.group(1))
    return text


# --------------------------------------------------------------------------------------------
# Price, images, links
# --------------------------------------------------------------------------------------------


def parse_price(value: Any) -> float | None:
    """``"$12.99"`` -> 12.99, ``"$5.00 - $10.00"`` -> 5.0 (the low end), a number as is; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        price = float(value)
        return price if math.isfinite(price) and price >= 0 else None
    if not isinstance(value, str):
        return None
    m = _PRICE.match(value.strip())
    if not m:
        return None
    price = float(m.group(1).replace(",", "") + (m.group(2) or ""))
    return price if math.isfinite(price) else None


def _url_basename(url: str) -> str:
    # Plain string splits rather than urlsplit: this runs for every image URL of every line.
    name = url.strip().split("#", 1)[0].split("?", 1)[0].rsplit("/", 1)[-1]
    return (unquote(name) if "%" in name else name).strip()


def image_names(record: dict[str, Any]) -> list[str]:
    """Basenames of the record's image URLs: high resolution first, then thumbnails (2014: ``imUrl``)."""
    urls: list[str] = []
    for key in ("imageURLHighRes", "imageURL", "imUrl"):
        value = record.get(key)
        values = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        urls += [v for v in values if isinstance(v, str)]
    return _distinct([_url_basename(u) for u in urls])


def _asins(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [v.strip() for v in value if isinstance(v, str) and v.strip()]


def links(record: dict[str, Any], asin: str) -> tuple[list[str], list[str]]:
    """``(also_buy, also_view)`` of a 2018 or 2014 record, distinct, without the product itself."""
    value = record.get("related")
    related: dict[str, Any] = value if isinstance(value, dict) else {}
    buy = _asins(record.get("also_buy")) + _asins(related.get("also_bought")) + _asins(related.get("bought_together"))
    view = _asins(record.get("also_view")) + _asins(related.get("also_viewed"))
    return [a for a in _distinct(buy) if a != asin], [a for a in _distinct(view) if a != asin]


# --------------------------------------------------------------------------------------------
# One line
# --------------------------------------------------------------------------------------------


def parse_record(line: str) -> tuple[dict[str, Any] | None, str]:
    """A 2018 JSON line or a 2014 Python-literal line as a dict, or ``None`` and why not.

    JSON is tried first (2018, and every line of the big files); ``ast.literal_eval`` only when it
    fails. Both can raise more than their syntax error on hostile input (huge integers, deep
    nesting): each costs the line, never the file.
    """
    try:
        record = json.loads(line)
    except (ValueError, RecursionError) as json_error:
        try:
            record = ast.literal_eval(line.strip())
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            msg = json_error.msg if isinstance(json_error, json.JSONDecodeError) else type(json_error).__name__
            return None, f"neither JSON nor a Python literal (JSON: {msg})"
    if not isinstance(record, dict):
        return None, "not an object"
    return record, ""


def product_fields(record: dict[str, Any]) -> dict[str, str]:
    """The 12 text features of a parsed record (the mapping table of the module docstring)."""
    details = _details(record.get("details"))
    category = record.get("category")
    paths = [category] if isinstance(category, list) else []
    if not paths and isinstance(record.get("categories"), list):  # 2014: a list of paths
        paths = [p for p in record["categories"] if isinstance(p, list)]
    split = [split_category(_texts(p)) for p in paths]
    levels = split[0][0] if split else []
    bullets = [b for _, scraped in split for b in scraped]
    leaves = [lv[-1] for lv, _ in split if lv]
    return dict.fromkeys(TEXT_FIELDS, "") | {
        "title": _text(record.get("title")),
        "description": " ".join(_texts(record.get("description")) + _texts(record.get("feature")) + _distinct(bullets)),
        "category_path": " > ".join(levels),
        "product_types": ", ".join(_distinct([*leaves, _main_cat(record.get("main_cat")), details.get("format", "")])),
        "brand": _text(record.get("brand")) or _first(details, "brand", "publisher", "manufacturer"),
        "colors": _first(details, "color", "colour"),
        "materials": _first(details, "material", "material type", "fabric type"),
        "patterns": _first(details, "pattern"),
        "size": _first(details, "size"),
    }


def _decode(line: bytes | str) -> str:
    # surrogateescape keeps undecodable bytes findable, so fix_utf8 can report them per product.
    return line.decode("utf-8", errors="surrogateescape") if isinstance(line, bytes) else line


def parse_amazon_line(line: bytes | str, where: str) -> tuple[AmazonProduct | None, Reject | None]:
    """One metadata line -> ``(product, None)``, ``(product, Reject)`` for a product kept with a
    repair (``non_utf8_text``), or ``(None, Reject)`` for a line that is skipped (``malformed_row``,
    ``missing_id``). ``where`` names the line in the reject ("meta_Gift_Cards.json.gz line 12").
    Never raises on bad input. A blank line is ``(None, None)``.
    """
    text = _decode(line).lstrip("\ufeff")
    if not text.strip():
        return None, None
    record, error = parse_record(text)
    if record is None:
        asin = re.search(r"""["']asin["']\s*:\s*["']([^"']+)["']""", text)
        item_id = fix_utf8(asin.group(1))[0] if asin else None
        return None, Reject(STAGE, item_id, "malformed_row", f"{where}: {error}")
    try:
        return _product(record, where)
    except Exception as e:  # noqa: BLE001 - a value of an unforeseen type costs its line, not the file
        return None, Reject(STAGE, None, "malformed_row", f"{where}: unreadable record ({type(e).__name__}: {e})")


def _product(record: dict[str, Any], where: str) -> tuple[AmazonProduct | None, Reject | None]:
    raw_asin = record.get("asin")
    asin, bad_asin = fix_utf8(raw_asin.strip() if isinstance(raw_asin, str) else "")
    if not asin:
        return None, Reject(STAGE, None, "missing_id", f"{where}: empty or absent asin")
    non_utf8 = ["asin"] if bad_asin else []
    fields: dict[str, str] = {}
    for name, value in product_fields(record).items():
        fields[name], bad = fix_utf8(value)
        if bad:
            non_utf8.append(name)
    also_buy, also_view = links(record, asin)
    product = AmazonProduct(
        item_id=asin,
        fields=fields,
        price=parse_price(record.get("price")),
        image_names=[fix_utf8(n)[0] for n in image_names(record)],
        also_buy=[fix_utf8(a)[0] for a in also_buy],
        also_view=[fix_utf8(a)[0] for a in also_view],
    )
    if non_utf8:
        return product, non_utf8_reject(STAGE, asin, where, non_utf8)
    return product, None

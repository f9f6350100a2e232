"""Catalog readers: every supported source becomes one generic item table.

Preprocessing, training, embedding and serving all read the generic schema of
``docs/feature-format.md`` (``item_id``, ``image_paths`` and the 12 ``TEXT_FIELDS``), so a new
source only needs an adapter here. ``read_catalog`` returns that table plus one ``Reject`` per
skipped or degraded record; bad rows never stop a read, because one broken line in a
million-row export should cost one item, not the whole run.

Layouts (``LAYOUTS``) and how each source fills the 12 text features (also in
``docs/catalog-mapping.md``; keep the two in step):

================  ==================================================  ==================  =========
feature           fashion (Kaggle Fashion Product Images, Myntra)     shopee (train.csv)  generic
================  ==================================================  ==================  =========
item_id           ``id``                                              ``posting_id``      item_id
image_paths       ``images/<id>.jpg``; without that file the product   [] (*)              image_paths
                  is text-only (reject "missing_image")
title             ``productDisplayName``                              ``title`` (**)      title
description       from real fields only: "<usage> wear, <season>      ""                  description
                  <year>", e.g. "Casual wear, Summer 2012"
merchant_domain   "myntra.com"                                        "shopee"            merchant_domain
link_text         ""                                                  ""                  link_text
category_path     "masterCategory > subCategory > articleType"        ""                  category_path
product_types     ``articleType``                                     ""                  product_types
brand             title words (at most 4) before the first gender     ""                  brand
                  word (Men, Women, Boys, Girls, Unisex, Kids, also
                  Mens / Girl's) when that prefix starts >= 2 titles
                  of the catalog (case-insensitive)
colors            ``baseColour``                                      ""                  colors
materials         ""                                                  ""                  materials
patterns          ""                                                  ""                  patterns
size              ""                                                  ""                  size
size_type         ``gender``                                          ""                  size_type
group             (none)                                              ``label_group``     group
================  ==================================================  ==================  =========

(*) The Shopee ``image`` column names files of the competition's ``train_images/`` folder, which
our copy lacks; when a ``train_images/`` folder sits beside ``train.csv`` its files are used.
(**) Shopee titles carry literal UTF-8 byte escapes (``Nescafe \\xc3\\x89clair``); they are
decoded (``Nescafe Éclair``).
Fashion values "NA" mean "unknown" and become "". Generic lists (e.g. ``colors: ["red",
"blue"]``) are joined with ", "; numbers become their text.

amazon (McAuley ``meta_<Category>.json[.gz]`` or ``<Category>/meta.json[.gz]``, 2018 JSON or 2014
Python-literal lines; every text HTML-stripped; the full rules in ``itemsage.data.amazon``):

================  ==========================================================================
feature           amazon
================  ==========================================================================
item_id           ``asin``
image_paths       [] (text-only); with ``images_dir``, the ``imageURLHighRes`` / ``imageURL``
                  basenames that exist as files there (never fetched)
title             ``title``; a broken HTML fragment title is missing ("")
description       ``description`` + ``feature`` + bullets scraped into ``category``
merchant_domain   "amazon.com"
link_text         ""
category_path     ``category`` levels joined " > " (up to the first sentence-like entry)
product_types     the path's leaf, ``main_cat``, ``details`` Format (distinct, ", ")
brand             ``brand``, else ``details`` Brand / Publisher / Manufacturer
colors            ``details`` Color;  materials: Material (Type) / Fabric Type
patterns          ``details`` Pattern;  size: ``details`` Size;  size_type: ""
price             float64 column: "$12.99" -> 12.99, "$5.00 - $10.00" -> 5.0 (low end), else NaN
================  ==========================================================================

Its ``also_buy`` / ``also_view`` lists come back as ``CatalogReadResult.links`` (of kept items).

Bad input and the ``Reject.reason`` it produces (``stage`` is "catalog"):

- ``missing_id``: empty or absent id -> row skipped.
- ``duplicate_id``: a later row repeats a kept id -> skipped (first one wins).
- ``malformed_row``: wrong field count, broken quotes, a JSON line that is not an object ->
  skipped; the rows after it are still read.
- ``repaired_row``: more fields than the header where the surplus is explained by unquoted
  commas in the free-text title column (the original Kaggle ``styles.csv`` has such lines) ->
  the commas are kept in the title.
- ``non_utf8_text``: bytes that are not UTF-8 -> replaced by U+FFFD, item kept.
- ``truncated_field``: a field over ``max_field_chars`` characters -> cut, item kept.
- ``missing_image``: a referenced local image file does not exist -> path dropped, text kept.
- ``too_many_images``: more than ``max_images`` paths -> the first ``max_images`` are kept.
- ``empty_item``: neither text nor images -> skipped.

A path that does not exist, or whose layout is unknown, raises one ``CatalogError`` that names the
path and the supported layouts; so does a Parquet file that cannot be read at all (truncated,
not Parquet). Whether an image decodes is checked later, by the image stage.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from itemsage.config import TEXT_FIELDS, TextConfig
from itemsage.data.amazon import AMAZON_CONSTANTS, amazon_files, file_label, is_meta_file, iter_lines, parse_amazon_line
from itemsage.data.rejects import Reject, fix_utf8

LAYOUTS: tuple[str, ...] = ("fashion", "shopee", "generic", "amazon")
STAGE = "catalog"
# One default, in config.py: the tokenizer truncates with the same limit.
MAX_FIELD_CHARS: int = TextConfig().max_chars_per_field
GENERIC_SUFFIXES: tuple[str, ...] = (".parquet", ".jsonl", ".ndjson")
FASHION_REQUIRED: tuple[str, ...] = ("id", "productDisplayName")
SHOPEE_REQUIRED: tuple[str, ...] = ("posting_id", "title", "label_group")
LINK_COLUMNS: tuple[str, ...] = ("item_id", "action", "linked_id")
# Myntra titles name the audience right after the brand ("Puma Men ...", "Gini and Jony Girl's ...").
GENDER_WORDS = frozenset({"men", "women", "boys", "girls", "unisex", "kids", "mens", "womens", "boy", "girl", "kid"})
# A quoted field may legitimately span lines; beyond this many we call the quote broken.
MAX_CONTINUATION_LINES = 20
# The csv module refuses fields over 128 KiB by default, which would lose an over-long row as
# "malformed_row" instead of cutting it ("truncated_field"). The file is in memory already, so a
# higher cap costs nothing; only raised, never lowered, for other users of the module.
csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))

_LAYOUT_HELP = (
    "supported layouts: fashion (a directory with styles.csv + images/<id>.jpg, or the styles.csv "
    "file), shopee (a directory with train.csv, or a CSV with posting_id,title,label_group), "
    "generic (a .parquet/.jsonl file, or a directory of them, with an item_id column), "
    "amazon (McAuley metadata: a meta_<Category>.json[.gz] file, or a directory of them or of "
    "<Category>/meta.json[.gz] folders)"
)


class CatalogError(ValueError):
    """The catalog as a whole cannot be read: missing path or unknown layout."""


@dataclass
class CatalogReadResult:
    """The generic item table plus what was skipped or degraded on the way."""

    items: pd.DataFrame
    rejects: list[Reject]
    layout: str
    source: str
    # Item-to-item links the catalog itself lists (amazon: also_buy / also_view), of kept items
    # only: columns item_id, action, linked_id (LINK_COLUMNS). None when the layout has none.
    links: pd.DataFrame | None = None

    def reject_counts(self) -> dict[str, int]:
        """``{reason: count}``, sorted by reason so summaries diff cleanly."""
        return dict(sorted(Counter(r.reason for r in self.rejects).items()))


@dataclass
class _RawItem:
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
class _Source:
    """What an adapter hands to the shared normalisation."""

    raws: list[_RawItem]
    # Values the source implies for every item (e.g. merchant_domain). They are filled in after
    # the emptiness check, so a row with no real content is still an "empty_item".
    constants: dict[str, str]
    has_group: bool
    location: Path
    numeric_columns: tuple[str, ...] = ()
    has_links: bool = False


# --------------------------------------------------------------------------------------------
# Layout detection
# --------------------------------------------------------------------------------------------


def _layout_error(path: Path, why: str) -> CatalogError:
    return CatalogError(f"cannot read catalog {path}: {why}; {_LAYOUT_HELP}")


def _csv_header(path: Path) -> list[str]:
    """The header of a CSV file, decoded leniently (a broken byte must not hide the layout)."""
    with path.open("rb") as fh:
        first = fh.readline().decode("utf-8", errors="replace").lstrip("\ufeff")
    try:
        return [c.strip() for c in next(csv.reader([first.rstrip("\r\n")]))]
    except (StopIteration, csv.Error):
        return []


def _csv_layout(path: Path) -> str | None:
    header = set(_csv_header(path))
    if set(FASHION_REQUIRED) <= header:
        return "fashion"
    if set(SHOPEE_REQUIRED) <= header:
        return "shopee"
    return None


def _generic_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in GENERIC_SUFFIXES)


def detect_layout(path: str | Path) -> str:
    """Which of ``LAYOUTS`` the file or directory at ``path`` holds; ``CatalogError`` if none."""
    p = Path(path)
    if not p.exists():
        raise _layout_error(p, "the path does not exist")
    if p.is_dir():
        if (p / "styles.csv").is_file():
            return "fashion"
        if (p / "train.csv").is_file() and _csv_layout(p / "train.csv") == "shopee":
            return "shopee"
        if _generic_files(p):
            return "generic"
        if amazon_files(p):
            return "amazon"
        raise _layout_error(p, "the directory holds no recognised catalog files")
    if p.suffix.lower() == ".csv":
        layout = _csv_layout(p)
        if layout:
            return layout
        raise _layout_error(p, "the CSV header matches neither fashion nor shopee")
    if p.suffix.lower() in GENERIC_SUFFIXES:
        return "generic"
    if is_meta_file(p):
        return "amazon"
    raise _layout_error(p, f"unknown file type {p.suffix or '(no suffix)'!r}")


# --------------------------------------------------------------------------------------------
# Lenient text and CSV decoding
# --------------------------------------------------------------------------------------------


def read_text(path: Path) -> str:
    """Decode a file as UTF-8, keeping undecodable bytes as surrogates so they can be found,
    reported per item and replaced (``fix_utf8``) instead of failing the whole file."""
    return path.read_bytes().decode("utf-8", errors="surrogateescape").lstrip("\ufeff")


def parse_json_object(line: str) -> tuple[dict[str, Any] | None, str]:
    """One JSONL record as a dict, or ``None`` and why not.

    Besides syntax errors, ``json`` raises ValueError for integers over 4300 digits and
    RecursionError for deeply nested values; each of them must cost one line, not the file.
    """
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        return None, f"invalid JSON ({e.msg})"
    except (ValueError, RecursionError) as e:
        return None, f"invalid JSON ({type(e).__name__}: {str(e)[:120]})"
    if not isinstance(record, dict):
        return None, "not a JSON object"
    return record, ""


def _parse_csv_record(buf: str) -> list[str]:
    # strict=True turns a stray quote into an error instead of silently gluing fields together.
    return next(csv.reader(io.StringIO(buf), strict=True))


def read_csv_rows(
    text: str | Iterable[str],
    rejects: list[Reject],
    *,
    stage: str,
    id_column: str,
    free_text_column: str | None = None,
) -> tuple[list[str], Iterator[tuple[str, dict[str, str]]]]:
    """Header and ``(where, row)`` pairs of a CSV text (or of its lines, streamed), skipping broken
    records.

    Parsed record by record (not with one ``csv.reader`` over the file) so that a broken quote
    costs one line: a quote left open swallows at most ``MAX_CONTINUATION_LINES`` following lines
    and only when they complete the record with the right field count. Surplus fields are folded
    back into ``free_text_column`` (unquoted commas in a title), with a "repaired_row" reject.
    Rows are parsed lazily, reading at most ``MAX_CONTINUATION_LINES`` lines ahead, so a file
    streamed line by line (``itemsage.data.ingest``) never sits in memory whole; ``rejects`` is
    complete once the iterator is exhausted.
    """
    lines = iter(text.split("\n") if isinstance(text, str) else text)
    first_line = next(lines, "")
    try:
        header = [c.strip() for c in _parse_csv_record(first_line.rstrip("\r"))]
    except (csv.Error, StopIteration):
        header = []  # the caller reports the missing columns, naming the file
    n = len(header)
    id_idx = header.index(id_column) if id_column in header else None
    free_idx = header.index(free_text_column) if free_text_column in header else None

    def rows() -> Iterator[tuple[str, dict[str, str]]]:
        ahead: deque[str] = deque()  # lines i, i+1, ... already read from ``lines``
        i = 1

        def line(k: int) -> str | None:
            """Line ``k`` (k >= i) of the file, or None past its end."""
            while len(ahead) <= k - i:
                nxt = next(lines, None)
                if nxt is None:
                    return None
                ahead.append(nxt)
            return ahead[k - i]

        def advance(to: int) -> None:
            nonlocal i
            for _ in range(min(to - i, len(ahead))):
                ahead.popleft()
            i = to

        while (current := line(i)) is not None:
            first = current.rstrip("\r")
            if not first.strip():
                advance(i + 1)
                continue
            where = f"line {i + 1}"
            fields: list[str] | None = None
            error = ""
            buf, j = first, i
            while True:
                try:
                    fields = _parse_csv_record(buf)
                    break
                except csv.Error as e:
                    error = str(e)
                    open_quote = "unexpected end of data" in error
                    following = line(j + 1) if open_quote and j - i < MAX_CONTINUATION_LINES else None
                    if following is None:
                        break
                    j += 1
                    buf += "\n" + following.rstrip("\r")
            if fields is not None and j > i and len(fields) != n:
                fields, error = None, "unbalanced quote"
            if fields is None:
                # Only the first line is lost; the lines the open quote swallowed are re-read.
                rejects.append(
                    Reject(stage, _guess_id(first, id_idx), "malformed_row", f"{where}: broken quotes ({error})")
                )
                advance(i + 1)
                continue
            advance(j + 1)
            repaired = False
            if free_idx is not None and len(fields) > n:
                repaired = True
                extra = len(fields) - n
                fields = (
                    fields[:free_idx]
                    + [",".join(fields[free_idx : free_idx + extra + 1])]
                    + fields[free_idx + extra + 1 :]
                )
            item_id = (
                fix_utf8(fields[id_idx].strip())[0] or None if id_idx is not None and id_idx < len(fields) else None
            )
            if repaired:
                rejects.append(
                    Reject(
                        stage,
                        item_id,
                        "repaired_row",
                        f"{where}: {n + extra} fields for {n} columns; the surplus "
                        f"commas were kept inside {free_text_column}",
                    )
                )
            if len(fields) != n:
                rejects.append(Reject(stage, item_id, "malformed_row", f"{where}: {len(fields)} fields, expected {n}"))
                continue
            yield where, dict(zip(header, fields))

    return header, rows()


def _guess_id(line: str, id_idx: int | None) -> str | None:
    """Best-effort id of an unparseable line, so its reject can still be traced to a product."""
    if id_idx is None:
        return None
    parts = line.split(",")
    value = parts[id_idx].strip().strip('"') if id_idx < len(parts) else ""
    return fix_utf8(value)[0] or None


# --------------------------------------------------------------------------------------------
# Adapters
# --------------------------------------------------------------------------------------------


def _known(value: str | None) -> str:
    """Fashion uses "NA" for unknown; unknown is the empty string in our schema."""
    value = (value or "").strip()
    return "" if value.upper() == "NA" else value


def _title_prefix(title: str) -> str:
    """Words of a Myntra title before its first gender word: "Puma Men Grey T-shirt" -> "Puma"."""
    words = title.split()
    for i, word in enumerate(words):
        if word.lower().strip(".,()'’").removesuffix("'s").removesuffix("’s") in GENDER_WORDS:
            # More than 4 words before "Men" is a phrase, not a brand.
            return " ".join(words[:i]) if i <= 4 else ""
    return ""


def _fashion_description(usage: str, season: str, year: str) -> str:
    """Built only from real fields, so the description never invents product facts."""
    parts = []
    if usage:
        parts.append(f"{usage} wear")
    when = " ".join(x for x in (season, year.removesuffix(".0")) if x)
    if when:
        parts.append(when)
    return ", ".join(parts)


def fashion_images_dir(styles: Path) -> str:
    return str(styles.parent.absolute() / "images")


def fashion_raw(where: str, r: dict[str, str], images: str, recurring: Callable[[str], bool]) -> _RawItem:
    """One styles.csv row as a raw item; ``recurring(prefix)`` says whether a title prefix starts
    at least two titles of the catalog (only then is it taken as the brand)."""
    item_id = r["id"].strip()
    title = r["productDisplayName"].strip()
    prefix = _title_prefix(title)
    article = _known(r.get("articleType"))
    return _RawItem(
        where=where,
        item_id=item_id,
        fields={
            "title": title,
            "description": _fashion_description(_known(r.get("usage")), _known(r.get("season")), _known(r.get("year"))),
            "category_path": " > ".join(
                x for x in (_known(r.get("masterCategory")), _known(r.get("subCategory")), article) if x
            ),
            "product_types": article,
            "brand": prefix if prefix and recurring(prefix.lower()) else "",
            "colors": _known(r.get("baseColour")),
            "size_type": _known(r.get("gender")),
        },
        image_paths=[os.path.join(images, f"{item_id}.jpg")] if item_id else [],
    )


def fashion_styles(path: Path) -> Path:
    styles = path / "styles.csv" if path.is_dir() else path
    if not styles.is_file():
        raise _layout_error(path, "layout 'fashion' needs a styles.csv")
    return styles


def check_fashion_header(styles: Path, header: list[str]) -> None:
    missing = [c for c in FASHION_REQUIRED if c not in header]
    if missing:
        raise _layout_error(styles, f"layout 'fashion' needs columns {missing} in the header")


FASHION_CONSTANTS: dict[str, str] = {"merchant_domain": "myntra.com"}
SHOPEE_CONSTANTS: dict[str, str] = {"merchant_domain": "shopee"}


def _read_fashion(path: Path, rejects: list[Reject]) -> _Source:
    styles = fashion_styles(path)
    header, rows = read_csv_rows(
        read_text(styles), rejects, stage=STAGE, id_column="id", free_text_column="productDisplayName"
    )
    check_fashion_header(styles, header)
    images = fashion_images_dir(styles)
    records = list(rows)
    # A title prefix is a brand only when it recurs: "Puma" starts many titles, while the words
    # before "Men" in a one-off title are as likely a product line as a brand.
    prefix_counts = Counter(p.lower() for _, r in records if (p := _title_prefix(r["productDisplayName"])))
    raws = [fashion_raw(where, r, images, lambda p: prefix_counts[p] >= 2) for where, r in records]
    return _Source(raws, FASHION_CONSTANTS, has_group=False, location=styles)


_BYTE_ESCAPES = re.compile(r"(?:\\x[0-9a-fA-F]{2})+")


def _decode_byte_escapes(text: str) -> str:
    r"""``"Nescafe \xc3\x89clair"`` (literal backslashes) -> ``"Nescafe Éclair"``."""
    return _BYTE_ESCAPES.sub(
        lambda m: bytes.fromhex(m.group(0).replace("\\x", "")).decode("utf-8", errors="replace"), text
    )


def shopee_train(path: Path) -> Path:
    train = path / "train.csv" if path.is_dir() else path
    if not train.is_file():
        raise _layout_error(path, "layout 'shopee' needs a train.csv")
    return train


def check_shopee_header(train: Path, header: list[str]) -> None:
    missing = [c for c in SHOPEE_REQUIRED if c not in header]
    if missing:
        raise _layout_error(train, f"layout 'shopee' needs columns {missing} in the header")


def shopee_images_dir(train: Path, header: list[str]) -> Path | None:
    """The competition's ``train_images/`` beside ``train.csv``, when present and named by rows."""
    images = train.parent / "train_images"
    return images if images.is_dir() and "image" in header else None


def shopee_raw(where: str, r: dict[str, str], images: Path | None) -> _RawItem:
    image = r.get("image", "").strip()
    return _RawItem(
        where=where,
        item_id=r["posting_id"].strip(),
        fields={"title": _decode_byte_escapes(r["title"].strip())},
        image_paths=[str(images / image)] if images is not None and image else [],
        group=r["label_group"].strip(),
    )


def _read_shopee(path: Path, rejects: list[Reject]) -> _Source:
    train = shopee_train(path)
    header, rows = read_csv_rows(
        read_text(train), rejects, stage=STAGE, id_column="posting_id", free_text_column="title"
    )
    check_shopee_header(train, header)
    images = shopee_images_dir(train, header)
    raws = [shopee_raw(where, r, images) for where, r in rows]
    return _Source(raws, SHOPEE_CONSTANTS, has_group=True, location=train)


def _as_text(value: Any) -> str:
    """Generic field values as text: None/NaN -> "", lists joined, 12.0 -> "12"."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        # A Parquet binary column: text, not "b'...'"; broken bytes become surrogates, which
        # the shared normalisation replaces and reports ("non_utf8_text").
        return value.decode("utf-8", errors="surrogateescape")
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return str(int(value)) if value.is_integer() else str(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(t for v in value if (t := _as_text(v).strip()))
    if isinstance(value, dict):
        # default: Parquet structs hold values JSON has no type for (timestamps, bytes).
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=_as_text)
    if hasattr(value, "tolist"):  # numpy arrays / scalars from Parquet
        return _as_text(value.tolist())
    return str(value)


def _as_paths(value: Any) -> list[str]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [t for v in value if (t := _as_text(v).strip())]
    return [_as_text(value)]


def _parquet_records(file: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    parquet = pq.ParquetFile(file)
    if "item_id" not in parquet.schema_arrow.names:
        raise _layout_error(file, "a generic catalog needs an item_id column")
    row = 0
    for batch in parquet.iter_batches(batch_size=4096):
        for record in batch.to_pylist():
            row += 1
            yield f"{file.name} row {row}", record


def _generic_records(file: Path, rejects: list[Reject]) -> Iterator[tuple[str, dict[str, Any]]]:
    if file.suffix.lower() == ".parquet":
        # Parquet has no lines to skip: a file that is not Parquet, truncated, or with a broken
        # page cannot be read past the damage, so it is refused as a whole, by name.
        try:
            yield from _parquet_records(file)
        except (pa.ArrowException, OSError, UnicodeDecodeError) as e:
            raise CatalogError(f"cannot read catalog {file}: not a readable Parquet file ({e})") from e
        return
    for n, line in enumerate(read_text(file).split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{file.name} line {n}"
        record, error = parse_json_object(line)
        if record is None:
            rejects.append(Reject(STAGE, None, "malformed_row", f"{where}: {error}"))
            continue
        yield where, record


def generic_files(path: Path) -> list[Path]:
    """The files of a generic catalog at ``path`` (a file or a directory of them)."""
    if path.is_dir():
        files = _generic_files(path)
        if not files:
            raise _layout_error(path, "layout 'generic' needs .parquet or .jsonl files")
        return files
    if path.suffix.lower() in GENERIC_SUFFIXES:
        return [path]
    raise _layout_error(path, "layout 'generic' needs .parquet or .jsonl files")


def generic_raw(where: str, rec: dict[str, Any], folder: str) -> _RawItem:
    """One generic record; relative image paths are relative to ``folder``, the file's folder."""
    group = rec.get("group")
    return _RawItem(
        where=where,
        item_id=_as_text(rec.get("item_id")),
        fields={f: _as_text(rec.get(f)) for f in TEXT_FIELDS},
        image_paths=[p if _is_uri(p) else os.path.join(folder, p) for p in _as_paths(rec.get("image_paths"))],
        group=_as_text(group) if group is not None else None,
    )


def _read_generic(path: Path, rejects: list[Reject]) -> _Source:
    raws, has_group = [], False
    for file in generic_files(path):
        for where, rec in _generic_records(file, rejects):
            has_group = has_group or "group" in rec
            raws.append(generic_raw(where, rec, str(file.parent)))
    return _Source(raws, {}, has_group=has_group, location=path)


def _amazon_images(names: list[str], images_dir: Path | None) -> list[str]:
    """``imageURL`` basenames that exist as files in ``images_dir``; none without one. A name
    without a local file is not a reject: the public files name far more images than anyone has."""
    if images_dir is None:
        return []
    return [path for name in names if os.path.isfile(path := os.path.join(images_dir, name))]


def _read_amazon(path: Path, rejects: list[Reject], images_dir: Path | None = None) -> _Source:
    files = amazon_files(path)
    if not files:
        raise _layout_error(path, "layout 'amazon' needs meta_<Category>.json[.gz] or <Category>/meta.json[.gz] files")
    raws = []
    for file in files:
        label = file_label(file, path)
        n = 0
        try:
            for n, line in iter_lines(file):
                product, reject = parse_amazon_line(line, f"{label} line {n}")
                if reject is not None:
                    rejects.append(reject)
                if product is None:
                    continue
                raws.append(
                    _RawItem(
                        where=f"{label} line {n}",
                        item_id=product.item_id,
                        fields=product.fields,
                        image_paths=_amazon_images(product.image_names, images_dir),
                        numeric={"price": math.nan if product.price is None else product.price},
                        links={"also_buy": product.also_buy, "also_view": product.also_view},
                    )
                )
        except (OSError, EOFError, zlib.error) as e:
            # A gzip stream cut short or corrupt: the lines before the damage are kept.
            rejects.append(
                Reject(
                    STAGE,
                    None,
                    "malformed_row",
                    f"{label}: unreadable after line {n} ({e}); the lines before it are kept",
                )
            )
    return _Source(
        raws, dict(AMAZON_CONSTANTS), has_group=False, location=path, numeric_columns=("price",), has_links=True
    )


_ADAPTERS = {"fashion": _read_fashion, "shopee": _read_shopee, "generic": _read_generic}


# --------------------------------------------------------------------------------------------
# Shared normalisation
# --------------------------------------------------------------------------------------------


def _is_uri(path: str) -> bool:
    return "://" in path


def _absolute(path: str) -> str:
    # abspath rather than resolve: symlinked image stores keep the path the user gave. os.path,
    # not pathlib: this runs once per image of million-item catalogs.
    return path if _is_uri(path) else os.path.abspath(os.path.expanduser(path))


def normalise_raw(
    raw: _RawItem, item_id: str, bad_id: bool, rejects: list[Reject], max_images: int, max_field_chars: int
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
        rejects.append(
            Reject(
                STAGE,
                item_id,
                "non_utf8_text",
                f"{raw.where}: bytes that are not UTF-8 in {', '.join(non_utf8)} were replaced by U+FFFD",
            )
        )
    paths: list[str] = []
    for p in raw.image_paths:
        p, _ = fix_utf8(p)
        p = _absolute(p)
        if not _is_uri(p) and not os.path.isfile(p):
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


def raw_item_id(raw: _RawItem, rejects: list[Reject]) -> tuple[str, bool] | None:
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


def _normalise(
    source: _Source, rejects: list[Reject], max_images: int, max_field_chars: int
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


def resolve_layout(path: Path, layout: str) -> str:
    """``layout``, or the detected one for "auto"; a ``CatalogError`` for an unknown layout or a
    missing path (both readers, ``read_catalog`` and the Ray Data ingest, start here)."""
    if layout == "auto":
        return detect_layout(path)
    if layout not in LAYOUTS:
        raise _layout_error(path, f"unknown layout {layout!r}")
    if not path.exists():
        raise _layout_error(path, "the path does not exist")
    return layout


def read_catalog(
    path: str | Path,
    layout: str = "auto",
    max_images: int = 20,
    max_field_chars: int = MAX_FIELD_CHARS,
    images_dir: str | Path | None = None,
) -> CatalogReadResult:
    """Read the catalog at ``path`` into the generic schema (see the module docstring).

    ``layout`` is one of ``LAYOUTS`` or "auto" (``detect_layout``). Rows that cannot be used are
    skipped and degraded rows repaired, each with a ``Reject``; only a missing path or an
    unreadable layout raises ``CatalogError``. ``images_dir`` (amazon only): a folder where the
    ``imageURL`` basenames are looked up as local files; without it Amazon items are text-only.
    """
    p = Path(path)
    layout = resolve_layout(p, layout)
    rejects: list[Reject] = []
    if layout == "amazon":
        source = _read_amazon(p, rejects, Path(images_dir).absolute() if images_dir else None)
    else:
        source = _ADAPTERS[layout](p, rejects)
    items, links = _normalise(source, rejects, max_images, max_field_chars)
    return CatalogReadResult(
        items=items, rejects=rejects, layout=layout, source=str(source.location.absolute()), links=links
    )

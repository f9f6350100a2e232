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

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from itemsage.data.layout_amazon import read_amazon
from itemsage.data.layout_fashion import read_fashion
from itemsage.data.layout_generic import read_generic
from itemsage.data.layout_shopee import read_shopee
from itemsage.data.layouts import resolve_layout
from itemsage.data.raw_items import MAX_FIELD_CHARS, normalise_source
from itemsage.data.rejects import Reject

_ADAPTERS = {"fashion": read_fashion, "shopee": read_shopee, "generic": read_generic}


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
        source = read_amazon(p, rejects, Path(images_dir).absolute() if images_dir else None)
    else:
        source = _ADAPTERS[layout](p, rejects)
    items, links = normalise_source(source, rejects, max_images, max_field_chars)
    return CatalogReadResult(
        items=items, rejects=rejects, layout=layout, source=str(source.location.absolute()), links=links
    )

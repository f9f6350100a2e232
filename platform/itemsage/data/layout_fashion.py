"""The ``fashion`` layout (Kaggle Fashion Product Images, Myntra ``styles.csv`` + ``images/``)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from itemsage.data.layouts import FASHION_REQUIRED, layout_error
from itemsage.data.raw_items import STAGE, RawItem, Source
from itemsage.data.records import read_csv_rows, read_text
from itemsage.data.rejects import Reject

# Myntra titles name the audience right after the brand ("Puma Men ...", "Gini and Jony Girl's ...").
GENDER_WORDS = frozenset({"men", "women", "boys", "girls", "unisex", "kids", "mens", "womens", "boy", "girl", "kid"})


def _known(value: str | None) -> str:
    """Fashion uses "NA" for unknown; unknown is the empty string in our schema."""
    value = (value or "").strip()
    return "" if value.upper() == "NA" else value


def title_prefix(title: str) -> str:
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


def fashion_raw(where: str, r: dict[str, str], images: str, recurring: Callable[[str], bool]) -> RawItem:
    """One styles.csv row as a raw item; ``recurring(prefix)`` says whether a title prefix starts
    at least two titles of the catalog (only then is it taken as the brand)."""
    item_id = r["id"].strip()
    title = r["productDisplayName"].strip()
    prefix = title_prefix(title)
    article = _known(r.get("articleType"))
    return RawItem(
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
        raise layout_error(path, "layout 'fashion' needs a styles.csv")
    return styles


def check_fashion_header(styles: Path, header: list[str]) -> None:
    missing = [c for c in FASHION_REQUIRED if c not in header]
    if missing:
        raise layout_error(styles, f"layout 'fashion' needs columns {missing} in the header")


FASHION_CONSTANTS: dict[str, str] = {"merchant_domain": "myntra.com"}


def read_fashion(path: Path, rejects: list[Reject]) -> Source:
    styles = fashion_styles(path)
    header, rows = read_csv_rows(
        read_text(styles), rejects, stage=STAGE, id_column="id", free_text_column="productDisplayName"
    )
    check_fashion_header(styles, header)
    images = fashion_images_dir(styles)
    records = list(rows)
    # A title prefix is a brand only when it recurs: "Puma" starts many titles, while the words
    # before "Men" in a one-off title are as likely a product line as a brand.
    prefix_counts = Counter(p.lower() for _, r in records if (p := title_prefix(r["productDisplayName"])))
    raws = [fashion_raw(where, r, images, lambda p: prefix_counts[p] >= 2) for where, r in records]
    return Source(raws, FASHION_CONSTANTS, has_group=False, location=styles)

"""Which catalog layout a path holds (``detect_layout``), and the one error a catalog that cannot
be read at all raises (``CatalogError``, naming the path and the supported layouts)."""

from __future__ import annotations

import csv
from pathlib import Path

from itemsage.data.amazon import amazon_files, is_meta_file

LAYOUTS: tuple[str, ...] = ("fashion", "shopee", "generic", "amazon")
GENERIC_SUFFIXES: tuple[str, ...] = (".parquet", ".jsonl", ".ndjson")
FASHION_REQUIRED: tuple[str, ...] = ("id", "productDisplayName")
SHOPEE_REQUIRED: tuple[str, ...] = ("posting_id", "title", "label_group")

LAYOUT_HELP = (
    "supported layouts: fashion (a directory with styles.csv + images/<id>.jpg, or the styles.csv "
    "file), shopee (a directory with train.csv, or a CSV with posting_id,title,label_group), "
    "generic (a .parquet/.jsonl file, or a directory of them, with an item_id column), "
    "amazon (McAuley metadata: a meta_<Category>.json[.gz] file, or a directory of them or of "
    "<Category>/meta.json[.gz] folders)"
)


class CatalogError(ValueError):
    """The catalog as a whole cannot be read: missing path or unknown layout."""


def layout_error(path: Path, why: str) -> CatalogError:
    return CatalogError(f"cannot read catalog {path}: {why}; {LAYOUT_HELP}")


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


def generic_dir_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in GENERIC_SUFFIXES)


def detect_layout(path: str | Path) -> str:
    """Which of ``LAYOUTS`` the file or directory at ``path`` holds; ``CatalogError`` if none."""
    p = Path(path)
    if not p.exists():
        raise layout_error(p, "the path does not exist")
    if p.is_dir():
        if (p / "styles.csv").is_file():
            return "fashion"
        if (p / "train.csv").is_file() and _csv_layout(p / "train.csv") == "shopee":
            return "shopee"
        if generic_dir_files(p):
            return "generic"
        if amazon_files(p):
            return "amazon"
        raise layout_error(p, "the directory holds no recognised catalog files")
    if p.suffix.lower() == ".csv":
        layout = _csv_layout(p)
        if layout:
            return layout
        raise layout_error(p, "the CSV header matches neither fashion nor shopee")
    if p.suffix.lower() in GENERIC_SUFFIXES:
        return "generic"
    if is_meta_file(p):
        return "amazon"
    raise layout_error(p, f"unknown file type {p.suffix or '(no suffix)'!r}")


def resolve_layout(path: Path, layout: str) -> str:
    """``layout``, or the detected one for "auto"; a ``CatalogError`` for an unknown layout or a
    missing path (both readers, ``read_catalog`` and the Ray Data ingest, start here)."""
    if layout == "auto":
        return detect_layout(path)
    if layout not in LAYOUTS:
        raise layout_error(path, f"unknown layout {layout!r}")
    if not path.exists():
        raise layout_error(path, "the path does not exist")
    return layout

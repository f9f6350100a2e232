"""The ``amazon`` layout (McAuley metadata files; the line format is ``itemsage.data.amazon``)."""

from __future__ import annotations

import math
import os
import zlib
from pathlib import Path

from itemsage.data.amazon import AMAZON_CONSTANTS, amazon_files, file_label, iter_lines, parse_amazon_line
from itemsage.data.layouts import layout_error
from itemsage.data.raw_items import STAGE, RawItem, Source
from itemsage.data.rejects import Reject


def amazon_images(names: list[str], images_dir: Path | None) -> list[str]:
    """``imageURL`` basenames that exist as files in ``images_dir``; none without one. A name
    without a local file is not a reject: the public files name far more images than anyone has."""
    if images_dir is None:
        return []
    return [path for name in names if os.path.isfile(path := os.path.join(images_dir, name))]


def read_amazon(path: Path, rejects: list[Reject], images_dir: Path | None = None) -> Source:
    files = amazon_files(path)
    if not files:
        raise layout_error(path, "layout 'amazon' needs meta_<Category>.json[.gz] or <Category>/meta.json[.gz] files")
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
                    RawItem(
                        where=f"{label} line {n}",
                        item_id=product.item_id,
                        fields=product.fields,
                        image_paths=amazon_images(product.image_names, images_dir),
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
    return Source(
        raws, dict(AMAZON_CONSTANTS), has_group=False, location=path, numeric_columns=("price",), has_links=True
    )

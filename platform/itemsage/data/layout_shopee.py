"""The ``shopee`` layout (Shopee product matching ``train.csv``)."""

from __future__ import annotations

import re
from pathlib import Path

from itemsage.data.layouts import SHOPEE_REQUIRED, layout_error
from itemsage.data.raw_items import STAGE, RawItem, Source
from itemsage.data.records import read_csv_rows, read_text
from itemsage.data.rejects import Reject

SHOPEE_CONSTANTS: dict[str, str] = {"merchant_domain": "shopee"}


_BYTE_ESCAPES = re.compile(r"(?:\\x[0-9a-fA-F]{2})+")


def _decode_byte_escapes(text: str) -> str:
    r"""``"Nescafe \xc3\x89clair"`` (literal backslashes) -> ``"Nescafe Éclair"``."""
    return _BYTE_ESCAPES.sub(
        lambda m: bytes.fromhex(m.group(0).replace("\\x", "")).decode("utf-8", errors="replace"), text
    )


def shopee_train(path: Path) -> Path:
    train = path / "train.csv" if path.is_dir() else path
    if not train.is_file():
        raise layout_error(path, "layout 'shopee' needs a train.csv")
    return train


def check_shopee_header(train: Path, header: list[str]) -> None:
    missing = [c for c in SHOPEE_REQUIRED if c not in header]
    if missing:
        raise layout_error(train, f"layout 'shopee' needs columns {missing} in the header")


def shopee_images_dir(train: Path, header: list[str]) -> Path | None:
    """The competition's ``train_images/`` beside ``train.csv``, when present and named by rows."""
    images = train.parent / "train_images"
    return images if images.is_dir() and "image" in header else None


def shopee_raw(where: str, r: dict[str, str], images: Path | None) -> RawItem:
    image = r.get("image", "").strip()
    return RawItem(
        where=where,
        item_id=r["posting_id"].strip(),
        fields={"title": _decode_byte_escapes(r["title"].strip())},
        image_paths=[str(images / image)] if images is not None and image else [],
        group=r["label_group"].strip(),
    )


def read_shopee(path: Path, rejects: list[Reject]) -> Source:
    train = shopee_train(path)
    header, rows = read_csv_rows(
        read_text(train), rejects, stage=STAGE, id_column="posting_id", free_text_column="title"
    )
    check_shopee_header(train, header)
    images = shopee_images_dir(train, header)
    raws = [shopee_raw(where, r, images) for where, r in rows]
    return Source(raws, SHOPEE_CONSTANTS, has_group=True, location=train)

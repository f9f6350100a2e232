"""The ``amazon`` catalog layout (itemsage.data.catalog): detection, several category files read
together, gzip or plain, price column, images_dir, and the bundled sample's damaged lines."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest

from itemsage.config import TEXT_FIELDS
from itemsage.data.catalog import read_catalog
from itemsage.data.layouts import CatalogError, detect_layout
from itemsage.data.raw_items import LINK_COLUMNS

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample" / "amazon"
SAMPLE_PRODUCTS = 300  # 150 per category (experiments/make_amazon_sample.py)


def product(asin: str, title: str = "", **fields: object) -> dict[str, object]:
    return {"asin": asin, "title": title, "also_buy": [], "also_view": [], "price": "", **fields}


def write_meta(path: Path, records: list[dict[str, object]] | list[bytes], gz: bool = True) -> Path:
    lines = [r if isinstance(r, bytes) else json.dumps(r).encode() for r in records]
    data = b"\n".join(lines) + b"\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


# ------------------------------------------------------------------------------ detection


def test_detects_a_folder_of_category_subfolders_the_public_file_names_and_single_files(tmp_path: Path) -> None:
    assert detect_layout(SAMPLE) == "amazon"
    assert detect_layout(SAMPLE / "Gift_Cards") == "amazon"
    assert detect_layout(SAMPLE / "Gift_Cards" / "meta.json.gz") == "amazon"
    flat = tmp_path / "flat"
    write_meta(flat / "meta_Gift_Cards.json.gz", [product("B1", "Card")])
    write_meta(flat / "meta_Magazine_Subscriptions.json", [product("B2", "Mag")], gz=False)
    assert detect_layout(flat) == "amazon"
    assert detect_layout(flat / "meta_Magazine_Subscriptions.json") == "amazon"


def test_other_json_files_are_not_amazon(tmp_path: Path) -> None:
    write_meta(tmp_path / "reviews.json.gz", [product("B1", "Card")])
    with pytest.raises(CatalogError, match="amazon"):
        detect_layout(tmp_path)
    with pytest.raises(CatalogError, match="unknown file type"):
        detect_layout(tmp_path / "reviews.json.gz")


# ------------------------------------------------------------------------------ reading


def test_several_category_files_are_read_together_gzip_or_plain(tmp_path: Path) -> None:
    write_meta(tmp_path / "Gift_Cards" / "meta.json.gz", [product("B1", "Card", price="$25.00", also_buy=["B2"])])
    write_meta(
        tmp_path / "meta_Magazine_Subscriptions.json",
        [product("B2", "Mag", price="$5.00 - $10.00", also_view=["B1", "B9"])],
        gz=False,
    )
    result = read_catalog(tmp_path)
    assert result.layout == "amazon"
    items = result.items.set_index("item_id")
    assert list(items.index) == ["B1", "B2"]
    assert list(result.items.columns) == ["item_id", "image_paths", *TEXT_FIELDS, "price"]
    assert str(result.items["price"].dtype) == "float64"
    assert items.loc["B1", "price"] == 25.0 and items.loc["B2", "price"] == 5.0
    assert (result.items["merchant_domain"] == "amazon.com").all()
    assert result.items["image_paths"].map(len).sum() == 0  # text-only without images_dir
    assert result.links is not None and list(result.links.columns) == list(LINK_COLUMNS)
    assert sorted(map(tuple, result.links.to_numpy().tolist())) == [
        ("B1", "also_buy", "B2"),
        ("B2", "also_view", "B1"),
        ("B2", "also_view", "B9"),  # outside links are kept here; the pair stage counts and drops them
    ]


def test_unknown_price_is_nan(tmp_path: Path) -> None:
    write_meta(tmp_path / "meta_X.json.gz", [product("B1", "Card", price=".a-box-inner{color:#fff}")])
    assert math.isnan(read_catalog(tmp_path).items["price"].iloc[0])


def test_images_dir_maps_image_url_basenames_to_local_files_only(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "51se+qMOjGL.jpg").write_bytes(b"a jpeg")
    record = product(
        "B1",
        "Card",
        imageURLHighRes=[
            "https://images-na.ssl-images-amazon.com/images/I/51se%2BqMOjGL.jpg",
            "https://images-na.ssl-images-amazon.com/images/I/NOTHERE.jpg",
        ],
    )
    write_meta(tmp_path / "cat" / "meta_X.json.gz", [record])
    with_dir = read_catalog(tmp_path / "cat", images_dir=images)
    assert with_dir.items["image_paths"].iloc[0] == [str(images / "51se+qMOjGL.jpg")]
    # A URL without a local file is no reject: the public files name far more images than anyone has.
    assert with_dir.reject_counts() == {}
    assert read_catalog(tmp_path / "cat").items["image_paths"].iloc[0] == []


def test_a_gzip_file_cut_short_keeps_the_lines_before_the_damage(tmp_path: Path) -> None:
    records = [product(f"B{i}", f"Card {i}", description=["x" * 2000]) for i in range(200)]
    path = write_meta(tmp_path / "meta_X.json.gz", records)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    result = read_catalog(tmp_path)
    assert 0 < len(result.items) < 200
    assert result.reject_counts() == {"malformed_row": 1}
    assert "meta_X.json.gz: unreadable after line" in result.rejects[0].detail


def test_duplicate_asins_keep_the_first_line_and_its_links(tmp_path: Path) -> None:
    write_meta(
        tmp_path / "meta_X.json.gz",
        [product("B1", "First", also_buy=["B2"]), product("B2", "Other"), product("B1", "Second", also_buy=["B3"])],
    )
    result = read_catalog(tmp_path)
    assert result.items.set_index("item_id").loc["B1", "title"] == "First"
    assert [(r.reason, r.item_id) for r in result.rejects] == [("duplicate_id", "B1")]
    assert result.links is not None and result.links["linked_id"].tolist() == ["B2"]


# ------------------------------------------------------------------------------ bundled sample


def test_the_bundled_sample_skips_counts_and_repairs_its_damaged_lines() -> None:
    result = read_catalog(SAMPLE)
    assert result.layout == "amazon"
    # 300 real products + the HTML-title and the non-UTF-8 copies, which are kept (repaired).
    assert len(result.items) == SAMPLE_PRODUCTS + 2
    assert result.reject_counts() == {"duplicate_id": 1, "empty_item": 1, "malformed_row": 1, "non_utf8_text": 1}
    where = {r.reason: r.detail.split(":")[0] for r in result.rejects}
    assert all(w.startswith("Gift_Cards/meta.json.gz line ") for w in where.values())
    titles = result.items["title"].tolist()
    assert not any("<" in t or "&amp;" in t or "&#39;" in t for t in titles)
    assert any(t.endswith("& free shipping") for t in titles)
    assert any(t.startswith("Caf\ufffd ") for t in titles)
    # Most Magazine_Subscriptions titles are a broken HTML fragment: missing, the item kept.
    magazines = result.items[result.items["product_types"].str.contains("Magazine Subscriptions")]
    assert len(magazines) == 150
    assert (magazines["title"] == "").sum() > 100
    assert (magazines["brand"] != "").mean() > 0.9  # the publisher names them instead
    assert result.items["price"].notna().sum() > 50

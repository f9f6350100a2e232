"""Catalog readers: real sample rows through every adapter, and each kind of bad input."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from itemsage.config import TEXT_FIELDS
from itemsage.data.catalog import CatalogReadResult, read_catalog
from itemsage.data.layouts import LAYOUTS, CatalogError, detect_layout
from itemsage.data.rejects import Reject

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"
FASHION_HEADER = ("id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,"
                  "productDisplayName")
GENERIC_COLUMNS = ["item_id", "image_paths", *TEXT_FIELDS]


@pytest.fixture(scope="module")
def fashion() -> CatalogReadResult:
    return read_catalog(SAMPLE / "fashion")


@pytest.fixture(scope="module")
def shopee() -> CatalogReadResult:
    return read_catalog(SAMPLE / "shopee")


@pytest.fixture(scope="module")
def sample_image() -> Path:
    return next((SAMPLE / "fashion" / "images").glob("*.jpg"))


def write_fashion(root: Path, lines: list[str | bytes], images: list[str], sample_image: Path) -> Path:
    """A fashion-layout catalog: the real header, the given raw data lines, real JPEGs."""
    body = b"\n".join(x if isinstance(x, bytes) else x.encode() for x in [FASHION_HEADER, *lines])
    root.mkdir(parents=True, exist_ok=True)
    (root / "styles.csv").write_bytes(body + b"\n")
    (root / "images").mkdir(exist_ok=True)
    for item_id in images:
        shutil.copyfile(sample_image, root / "images" / f"{item_id}.jpg")
    return root


def reasons(result: CatalogReadResult) -> list[str]:
    return [r.reason for r in result.rejects]


# ------------------------------------------------------------------ real sample, every adapter


def test_fashion_sample_has_the_generic_schema(fashion: CatalogReadResult) -> None:
    items = fashion.items
    assert fashion.layout == "fashion"
    assert list(items.columns) == GENERIC_COLUMNS
    assert len(items) == 300 and items["item_id"].is_unique
    assert fashion.rejects == []
    for paths in items["image_paths"]:
        assert len(paths) == 1 and Path(paths[0]).is_absolute() and Path(paths[0]).is_file()
    for name in ["item_id", *TEXT_FIELDS]:
        assert all(isinstance(v, str) for v in items[name])


def test_fashion_fields_map_from_the_real_row(fashion: CatalogReadResult) -> None:
    with (SAMPLE / "fashion" / "styles.csv").open(newline="") as fh:
        rows = {r["id"]: r for r in csv.DictReader(fh)}
    for item in fashion.items.to_dict("records"):
        row = rows[item["item_id"]]
        assert item["title"] == row["productDisplayName"]
        path = f"{row['masterCategory']} > {row['subCategory']} > {row['articleType']}"
        assert item["category_path"] == path
        assert item["product_types"] == row["articleType"]
        assert item["colors"] == ("" if row["baseColour"] == "NA" else row["baseColour"])
        assert item["size_type"] == row["gender"]
        assert item["merchant_domain"] == "myntra.com"
        assert item["image_paths"][0].endswith(f"/images/{row['id']}.jpg")
        for field in ("link_text", "materials", "patterns", "size"):
            assert item[field] == ""
        if row["usage"] not in ("", "NA"):
            assert item["description"].startswith(f"{row['usage']} wear")
        if row["season"] and row["year"]:
            assert f"{row['season']} {row['year']}" in item["description"]


def test_fashion_brand_is_a_recurring_title_prefix(fashion: CatalogReadResult) -> None:
    items = fashion.items
    branded = items[items["brand"] != ""]
    assert len(branded) > 100  # most titles start with a brand that recurs in the sample
    prefix_counts = Counter(t.lower().split()[0] for t in items["title"])
    for brand, title in zip(branded["brand"], branded["title"]):
        assert title.startswith(brand + " ")
        assert prefix_counts[brand.lower().split()[0]] >= 2


def test_fashion_brand_needs_two_products(tmp_path: Path, sample_image: Path) -> None:
    root = write_fashion(tmp_path / "c", [
        "1,Men,Apparel,Topwear,Tshirts,Grey,Summer,2012,Casual,Puma Men Grey T-shirt",
        "2,Women,Apparel,Topwear,Tops,Red,Summer,2012,Casual,PUMA Women Red Top",
        "3,Men,Apparel,Topwear,Tshirts,Blue,Summer,2012,Casual,Zorblax Men Blue T-shirt",
    ], ["1", "2", "3"], sample_image)
    brands = read_catalog(root).items.set_index("item_id")["brand"]
    assert brands.to_dict() == {"1": "Puma", "2": "PUMA", "3": ""}


def test_shopee_sample_is_text_only_with_complete_groups(shopee: CatalogReadResult) -> None:
    items = shopee.items
    assert shopee.layout == "shopee"
    assert list(items.columns) == [*GENERIC_COLUMNS, "group"]
    assert shopee.rejects == []
    assert all(len(p) == 0 for p in items["image_paths"])
    assert (items["merchant_domain"] == "shopee").all()
    assert items.groupby("group").size().min() >= 2
    assert (items["title"] != "").all()
    assert (items[[f for f in TEXT_FIELDS if f not in ("title", "merchant_domain")]] == "").all().all()


def test_shopee_literal_byte_escapes_are_decoded(shopee: CatalogReadResult) -> None:
    raw = (SAMPLE / "shopee" / "train.csv").read_text(encoding="utf-8")
    assert "\\xe2\\x9c\\x85" in raw  # the sample keeps one real escaped title on purpose
    assert not shopee.items["title"].str.contains("\\x", regex=False).any()
    assert shopee.items["title"].str.contains("\u2705").any()  # the decoded check mark


def test_shopee_uses_train_images_when_present(tmp_path: Path, sample_image: Path) -> None:
    (tmp_path / "train.csv").write_text(
        "posting_id,image,image_phash,title,label_group\n"
        "train_1,a.jpg,ff,Paper Bag,7\n"
        "train_2,b.jpg,fe,Paper Bag Brown,7\n"
        "train_3,c.jpg,fd,Lonely Listing,\n")
    (tmp_path / "train_images").mkdir()
    shutil.copyfile(sample_image, tmp_path / "train_images" / "a.jpg")
    result = read_catalog(tmp_path)
    items = result.items.set_index("item_id")
    assert reasons(result) == ["missing_image", "missing_image"]
    assert items.loc["train_1", "image_paths"] == [str(tmp_path / "train_images" / "a.jpg")]
    assert items.loc["train_2", "image_paths"] == []
    assert items.loc["train_3", "group"] == "item:train_3"  # no label_group: its own group


def test_detect_layout_on_every_kind_of_path(tmp_path: Path) -> None:
    pd.DataFrame({"item_id": ["a"], "title": ["x"]}).to_parquet(tmp_path / "c.parquet")
    (tmp_path / "jsonl").mkdir()
    (tmp_path / "jsonl" / "part-0.jsonl").write_text('{"item_id": "a", "title": "x"}\n')
    assert detect_layout(SAMPLE / "fashion") == "fashion"
    assert detect_layout(SAMPLE / "fashion" / "styles.csv") == "fashion"
    assert detect_layout(SAMPLE / "shopee") == "shopee"
    assert detect_layout(SAMPLE / "shopee" / "train.csv") == "shopee"
    assert detect_layout(tmp_path / "c.parquet") == "generic"
    assert detect_layout(tmp_path / "jsonl") == "generic"


def test_generic_parquet_roundtrip_resolves_paths_and_values(tmp_path: Path, sample_image: Path) -> None:
    (tmp_path / "img").mkdir()
    shutil.copyfile(sample_image, tmp_path / "img" / "a.jpg")
    pd.DataFrame({
        "item_id": [101, 102],
        "image_paths": [["img/a.jpg"], []],
        "title": ["Red wool scarf", "Blue mug"],
        "colors": [["red", "maroon"], None],
        "size": [42.0, None],
        "group": ["g1", "g1"],
        "unrelated": [1, 2],
    }).to_parquet(tmp_path / "catalog.parquet")
    result = read_catalog(tmp_path / "catalog.parquet")
    items = result.items.set_index("item_id")
    assert result.layout == "generic" and result.rejects == []
    assert list(result.items.columns) == [*GENERIC_COLUMNS, "group"]
    assert items.loc["101", "image_paths"] == [str(tmp_path / "img" / "a.jpg")]
    assert items.loc["102", "image_paths"] == []
    assert items.loc["101", "colors"] == "red, maroon"
    assert items.loc["101", "size"] == "42"
    assert items.loc["102", "colors"] == "" and items.loc["102", "description"] == ""


def test_generic_directory_of_jsonl_files(tmp_path: Path) -> None:
    (tmp_path / "part-0.jsonl").write_text('{"item_id": "a", "title": "Lamp"}\n')
    (tmp_path / "part-1.jsonl").write_text('{"item_id": "b", "brand": "Acme"}\n\n')
    result = read_catalog(tmp_path)
    assert result.items["item_id"].tolist() == ["a", "b"]
    assert "group" not in result.items.columns


def test_reject_to_dict_and_counts() -> None:
    r = Reject("catalog", "7", "missing_image", "line 3: gone")
    assert r.to_dict() == {"stage": "catalog", "item_id": "7", "reason": "missing_image", "detail": "line 3: gone"}
    result = CatalogReadResult(pd.DataFrame(), [r, r, Reject("catalog", None, "missing_id", "")], "fashion", "x")
    assert result.reject_counts() == {"missing_id": 1, "missing_image": 2}


# ------------------------------------------------------------------ bad input, one case per test

GOOD = "10,Men,Apparel,Topwear,Tshirts,Grey,Summer,2012,Casual,Puma Men Grey T-shirt"
GOOD2 = "11,Women,Footwear,Shoes,Heels,Red,Fall,2011,Casual,Catwalk Women Red Heels"


def test_missing_id_skips_only_that_row(tmp_path: Path, sample_image: Path) -> None:
    root = write_fashion(tmp_path, [",Men,Apparel,Topwear,Tshirts,Grey,Summer,2012,Casual,No Id Shirt",
                                    GOOD], ["10"], sample_image)
    result = read_catalog(root)
    assert reasons(result) == ["missing_id"]
    assert result.items["item_id"].tolist() == ["10"]


def test_duplicate_id_keeps_the_first_row(tmp_path: Path, sample_image: Path) -> None:
    root = write_fashion(tmp_path, [GOOD, GOOD.replace("Grey T-shirt", "Copy")], ["10"], sample_image)
    result = read_catalog(root)
    assert reasons(result) == ["duplicate_id"]
    assert result.items["title"].tolist() == ["Puma Men Grey T-shirt"]


def test_row_with_too_few_fields_is_rejected(tmp_path: Path, sample_image: Path) -> None:
    root = write_fashion(tmp_path, ["12,Men,Apparel,Topwear", GOOD], ["10", "12"], sample_image)
    result = read_catalog(root)
    assert reasons(result) == ["malformed_row"]
    assert "4 fields, expected 10" in result.rejects[0].detail
    assert result.items["item_id"].tolist() == ["10"]


def test_broken_quote_costs_one_line_not_the_rest(tmp_path: Path, sample_image: Path) -> None:
    broken = '12,Men,Apparel,Topwear,Tshirts,Grey,Summer,2012,Casual,"Broken quote shirt'
    root = write_fashion(tmp_path, [broken, GOOD, GOOD2], ["10", "11", "12"], sample_image)
    result = read_catalog(root)
    assert reasons(result) == ["malformed_row"]
    assert result.rejects[0].item_id == "12"
    assert result.items["item_id"].tolist() == ["10", "11"]


def test_quoted_field_spanning_lines_is_kept(tmp_path: Path, sample_image: Path) -> None:
    multi = '12,Men,Apparel,Topwear,Tshirts,Grey,Summer,2012,Casual,"Two line\nshirt, grey"'
    root = write_fashion(tmp_path, [multi, GOOD], ["10", "12"], sample_image)
    result = read_catalog(root)
    assert result.rejects == []
    assert result.items["title"].tolist() == ["Two line\nshirt, grey", "Puma Men Grey T-shirt"]


def test_unquoted_commas_in_the_title_are_repaired(tmp_path: Path, sample_image: Path) -> None:
    root = write_fashion(tmp_path, [GOOD.replace("Grey T-shirt", "Grey T-shirt, Pack of 2")], ["10"], sample_image)
    result = read_catalog(root)
    assert reasons(result) == ["repaired_row"]
    assert result.items["title"].tolist() == ["Puma Men Grey T-shirt, Pack of 2"]


def test_non_utf8_bytes_are_replaced_and_recorded(tmp_path: Path, sample_image: Path) -> None:
    latin1 = "10,Men,Apparel,Topwear,Tshirts,Grey,Summer,2012,Casual,Café Men Grey Shirt".encode("latin-1")
    root = write_fashion(tmp_path, [latin1, GOOD2], ["10", "11"], sample_image)
    result = read_catalog(root)
    assert reasons(result) == ["non_utf8_text"]
    assert "title" in result.rejects[0].detail
    assert result.items["title"].tolist()[0] == "Caf\ufffd Men Grey Shirt"
    assert len(result.items) == 2


def test_over_long_field_is_truncated(tmp_path: Path, sample_image: Path) -> None:
    long_title = "Puma Men " + "x" * 20_000
    root = write_fashion(tmp_path, [GOOD.replace("Puma Men Grey T-shirt", long_title)], ["10"], sample_image)
    result = read_catalog(root)
    assert reasons(result) == ["truncated_field"]
    assert len(result.items["title"].iloc[0]) == 10_000


def test_missing_image_keeps_the_text(tmp_path: Path, sample_image: Path) -> None:
    root = write_fashion(tmp_path, [GOOD, GOOD2], ["11"], sample_image)  # no images/10.jpg
    result = read_catalog(root)
    assert reasons(result) == ["missing_image"]
    item = result.items.set_index("item_id").loc["10"]
    assert item["image_paths"] == [] and item["title"] == "Puma Men Grey T-shirt"


def test_missing_referenced_image_in_generic_catalog(tmp_path: Path) -> None:
    (tmp_path / "c.jsonl").write_text(json.dumps({"item_id": "a", "title": "Lamp",
                                                  "image_paths": ["nope.jpg"]}) + "\n")
    result = read_catalog(tmp_path / "c.jsonl")
    assert reasons(result) == ["missing_image"]
    assert result.items["image_paths"].tolist() == [[]]


def test_item_with_neither_text_nor_images_is_rejected(tmp_path: Path, sample_image: Path) -> None:
    root = write_fashion(tmp_path, ["12,,,,,,,,,", GOOD], ["10"], sample_image)
    result = read_catalog(root)
    # No images/12.jpg either; the constant merchant_domain does not count as content.
    assert reasons(result) == ["missing_image", "empty_item"]
    assert result.items["item_id"].tolist() == ["10"]


def test_too_many_images_keeps_the_first_max(tmp_path: Path, sample_image: Path) -> None:
    names = [f"{i}.jpg" for i in range(5)]
    for name in names:
        shutil.copyfile(sample_image, tmp_path / name)
    (tmp_path / "c.jsonl").write_text(json.dumps({"item_id": "a", "image_paths": names}) + "\n")
    result = read_catalog(tmp_path, max_images=3)
    assert reasons(result) == ["too_many_images"]
    assert [Path(p).name for p in result.items["image_paths"].iloc[0]] == names[:3]


def test_invalid_json_line_is_rejected_and_the_rest_read(tmp_path: Path) -> None:
    (tmp_path / "c.jsonl").write_text('{"item_id": "a", "title": "Lamp"}\n{"item_id": "b",\n[1, 2]\n'
                                      '{"item_id": "c", "title": "Mug"}\n')
    result = read_catalog(tmp_path / "c.jsonl")
    assert reasons(result) == ["malformed_row", "malformed_row"]
    assert result.items["item_id"].tolist() == ["a", "c"]


def test_path_that_does_not_exist_raises_one_catalog_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError) as err:
        read_catalog(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value)
    assert all(layout in str(err.value) for layout in LAYOUTS)


def test_directory_of_unknown_files_raises_catalog_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a catalog")
    with pytest.raises(CatalogError, match="supported layouts"):
        read_catalog(tmp_path)


def test_csv_with_unknown_header_raises_catalog_error(tmp_path: Path) -> None:
    (tmp_path / "products.csv").write_text("sku,name\n1,Lamp\n")
    with pytest.raises(CatalogError, match="products.csv"):
        read_catalog(tmp_path / "products.csv")


def test_explicit_layout_that_does_not_fit_raises_catalog_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="train.csv"):
        read_catalog(SAMPLE / "fashion", layout="shopee")
    with pytest.raises(CatalogError, match="unknown layout 'etsy'"):
        read_catalog(SAMPLE / "fashion", layout="etsy")
    with pytest.raises(CatalogError, match="meta_<Category>"):
        read_catalog(SAMPLE / "fashion", layout="amazon")


def test_generic_parquet_without_item_id_raises_catalog_error(tmp_path: Path) -> None:
    pd.DataFrame({"title": ["x"]}).to_parquet(tmp_path / "c.parquet")
    with pytest.raises(CatalogError, match="item_id"):
        read_catalog(tmp_path / "c.parquet")

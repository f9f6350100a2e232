"""The McAuley Amazon metadata line parser (itemsage.data.amazon): every wart of the public files."""

from __future__ import annotations

import json
import math

import pytest

from itemsage.config import TEXT_FIELDS
from itemsage.data.amazon import (
    AmazonProduct,
    parse_amazon_line,
    parse_price,
    split_category,
    strip_html,
)

BROKEN_TITLE = '<span class="a-size-medium a-color-secondary"'


def line_2018(**fields: object) -> str:
    """A 2018 line as the public files write it (json.dumps of every key)."""
    record: dict[str, object] = {
        "category": [],
        "tech1": "",
        "description": [],
        "fit": "",
        "title": "",
        "also_buy": [],
        "tech2": "",
        "brand": "",
        "feature": [],
        "rank": [],
        "also_view": [],
        "details": {},
        "main_cat": "",
        "similar_item": "",
        "date": "",
        "price": "",
        "asin": "B000000001",
        "imageURL": [],
        "imageURLHighRes": [],
    }
    record.update(fields)
    return json.dumps(record)


def parse_ok(line: str | bytes) -> AmazonProduct:
    product, reject = parse_amazon_line(line, "test line 1")
    assert reject is None, reject
    assert product is not None
    return product


def test_a_2018_line_maps_onto_the_12_text_features() -> None:
    p = parse_ok(
        line_2018(
            asin="B00005N7NQ",
            title="Reason",
            category=["Magazine Subscriptions", "Professional &amp; Trade", "Economics"],
            description=["REASON is edited for people <b>interested</b> in economics.", ""],
            feature=["12 issues a year"],
            brand="",
            main_cat="Magazine Subscriptions",
            details={"Format:": "Print Magazine", "Publisher:": "Reason Foundation", "ASIN: ": "B00005N7NQ"},
            price="$12.99",
            also_buy=["B1", "B2", "B1", "B00005N7NQ"],
            also_view=["B3"],
            imageURL=["https://images-na.ssl-images-amazon.com/images/I/51se%2BqMOjGL._SX38_SY50_CR,0,0,38,50_.jpg"],
            imageURLHighRes=["https://images-na.ssl-images-amazon.com/images/I/51se%2BqMOjGL.jpg"],
        )
    )
    assert p.item_id == "B00005N7NQ"
    assert set(p.fields) == set(TEXT_FIELDS)
    assert p.fields["title"] == "Reason"
    assert p.fields["description"] == "REASON is edited for people interested in economics. 12 issues a year"
    assert p.fields["category_path"] == "Magazine Subscriptions > Professional & Trade > Economics"
    assert p.fields["product_types"] == "Economics, Magazine Subscriptions, Print Magazine"
    # An empty brand falls back to the publisher of the details.
    assert p.fields["brand"] == "Reason Foundation"
    # merchant_domain is the catalog's constant, filled in after the emptiness check.
    assert p.fields["merchant_domain"] == ""
    assert p.price == 12.99
    # Distinct, in file order, without the product itself.
    assert p.also_buy == ["B1", "B2"]
    assert p.also_view == ["B3"]
    # High resolution first, URL-decoded; the thumbnail's own name follows.
    assert p.image_names == ["51se+qMOjGL.jpg", "51se+qMOjGL._SX38_SY50_CR,0,0,38,50_.jpg"]


def test_details_fill_colour_material_pattern_and_size() -> None:
    p = parse_ok(
        line_2018(
            title="Scarf",
            details={"\n    Color: \n    ": "Navy", "Material Type:": "Wool", "Pattern:": "Plaid", "Size:": "One size"},
        )
    )
    assert (p.fields["colors"], p.fields["materials"], p.fields["patterns"], p.fields["size"]) == (
        "Navy",
        "Wool",
        "Plaid",
        "One size",
    )


def test_a_2014_python_literal_line_with_related_lists() -> None:
    line = repr(
        {
            "asin": "0000031852",
            "title": "Girls Ballet Tutu Zebra Hot Pink",
            "price": 3.17,
            "imUrl": "http://ecx.images-amazon.com/images/I/51fAmVkTbyL._SY300_.jpg",
            "related": {
                "also_bought": ["B00JHONN1S", "B002BZX8Z6"],
                "also_viewed": ["B00JHONN1S", "B0015NG0C2"],
                "bought_together": ["B002BZX8Z6", "B00D0WDS9A"],
            },
            "salesRank": {"Toys & Games": 211836},
            "brand": "Coxlures",
            "categories": [["Sports & Outdoors", "Other Sports", "Dance"], ["Clothing", "Girls"]],
        }
    )
    assert line.startswith("{'asin'")  # not JSON: single quotes, as the 2014 files are written
    p = parse_ok(line)
    assert p.item_id == "0000031852"
    assert p.price == 3.17
    assert p.fields["title"] == "Girls Ballet Tutu Zebra Hot Pink"
    assert p.fields["category_path"] == "Sports & Outdoors > Other Sports > Dance"
    assert p.fields["product_types"] == "Dance, Girls"
    assert p.fields["brand"] == "Coxlures"
    assert p.also_buy == ["B00JHONN1S", "B002BZX8Z6", "B00D0WDS9A"]
    assert p.also_view == ["B00JHONN1S", "B0015NG0C2"]
    assert p.image_names == ["51fAmVkTbyL._SY300_.jpg"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Happy Valentine&#39;s Day", "Happy Valentine's Day"),
        ("Fashion &amp; Style", "Fashion & Style"),
        ("<b>Bold</b> &lt;tag&gt;", "Bold <tag>"),
        ("<p>one</p><p>two</p>", "one two"),
        ("text<script>var x = '<b>';</script> after", "text after"),
        ("<style>.a{color:red}</style>Plain", "Plain"),
        ("5 < 6 and 7 > 3", "5 < 6 and 7 > 3"),
        ('cut off <span class="a-size-medium', "cut off"),
        ("  many \n\t spaces  ", "many spaces"),
    ],
)
def test_strip_html(raw: str, expected: str) -> None:
    assert strip_html(raw) == expected


def test_a_broken_html_title_is_missing_and_the_product_keeps_its_other_text() -> None:
    p = parse_ok(line_2018(title=BROKEN_TITLE, brand="Conde Nast", description=["Allure is the beauty expert."]))
    assert p.fields["title"] == ""
    assert p.fields["brand"] == "Conde Nast"


def test_html_and_entities_are_stripped_from_the_title() -> None:
    p = parse_ok(line_2018(title=" Amazon Gift Card - Print - Happy Father&#39;s Day <i>(Argyle)</i>"))
    assert p.fields["title"] == "Amazon Gift Card - Print - Happy Father's Day (Argyle)"


def test_main_cat_given_as_an_img_tag_uses_its_alt_text() -> None:
    tag = '<img src="https://images-na.ssl-images-amazon.com/x.png" class="nav-categ-image" alt="AMAZON FASHION"/>'
    p = parse_ok(line_2018(title="Card", main_cat=tag))
    assert p.fields["product_types"] == "AMAZON FASHION"


def test_feature_bullets_scraped_into_the_category_go_to_the_description() -> None:
    category = [
        "Gift Cards",
        "Gift Cards",
        "No expiration, no fees.",
        "Redeemable toward millions of items storewide on Amazon.com.",
    ]
    p = parse_ok(line_2018(title="Card", category=category))
    assert p.fields["category_path"] == "Gift Cards"
    assert (
        p.fields["description"]
        == "No expiration, no fees. Redeemable toward millions of items storewide on Amazon.com."
    )
    levels, bullets = split_category(["A", "A", "B", "a bullet that has far too many words to be a category name"])
    assert levels == ["A", "B"]
    assert bullets == ["a bullet that has far too many words to be a category name"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("$12.99", 12.99),
        ("$1,299.00", 1299.0),
        ("12", 12.0),
        ("$5.00 - $10.00", 5.0),  # a range: its low end
        ("$5.00-$10.00", 5.0),
        ("", None),
        ("\n\n\n<script", None),
        (".a-box-inner{background-color:#fff}#alohaBuyBoxWidget .selected{color:gray}", None),
        ("$", None),
        ("free", None),
        ("$1,2345.00", None),
        (3.17, 3.17),  # 2014: already a number
        (float("nan"), None),
        (-1.0, None),
        (True, None),
        (None, None),
        (["$5"], None),
    ],
)
def test_parse_price(raw: object, expected: float | None) -> None:
    got = parse_price(raw)
    if expected is None:
        assert got is None
    else:
        assert got is not None and math.isclose(got, expected)


def test_non_utf8_bytes_are_replaced_and_reported_and_the_product_is_kept() -> None:
    # A Latin-1 "é" (one byte 0xE9) where UTF-8 needs two.
    raw = line_2018(asin="B0CAFE", title="CAFX card").encode("utf-8").replace(b"CAFX", b"Caf\xe9")
    product, reject = parse_amazon_line(raw, "meta_Gift_Cards.json.gz line 7")
    assert product is not None and reject is not None
    assert product.fields["title"] == "Caf\ufffd card"
    assert (reject.stage, reject.item_id, reject.reason) == ("catalog", "B0CAFE", "non_utf8_text")
    assert "meta_Gift_Cards.json.gz line 7" in reject.detail and "title" in reject.detail
    json.dumps(product.fields, ensure_ascii=False).encode("utf-8")  # every kept text is valid UTF-8


def test_a_lone_surrogate_escape_is_non_utf8_text() -> None:
    product, reject = parse_amazon_line('{"asin": "B1", "title": "bad \\ud800 escape"}', "l")
    assert product is not None and reject is not None and reject.reason == "non_utf8_text"


@pytest.mark.parametrize(
    "line",
    [
        line_2018(asin="B0TRUNC", title="cut")[:60],
        '{"asin": "B0X", "title": "unterminated',
        "not a record at all",
        "{'asin': 'B0X', 'title': 'half a 2014 line",
        '["B0X", "a list, not an object"]',
        "[" * 100_000,
    ],
)
def test_unreadable_lines_are_malformed_rows_and_never_raise(line: str) -> None:
    product, reject = parse_amazon_line(line, "f line 3")
    assert product is None
    assert reject is not None and reject.reason == "malformed_row"
    assert reject.detail.startswith("f line 3: ")


def test_a_truncated_line_names_its_asin_when_it_can() -> None:
    _, reject = parse_amazon_line('{"asin": "B0TRUNC", "title": "cut', "f line 9")
    assert reject is not None and reject.item_id == "B0TRUNC"


@pytest.mark.parametrize("asin", ["", "   ", None, 12345, ["B1"]])
def test_a_product_without_a_usable_asin_is_missing_id(asin: object) -> None:
    product, reject = parse_amazon_line(line_2018(asin=asin, title="x"), "l")
    assert product is None and reject is not None and reject.reason == "missing_id"


def test_fields_of_unexpected_types_cost_nothing_but_their_value() -> None:
    p = parse_ok(
        line_2018(
            title=["Two", "parts"],
            description="one string, not a list",
            category="not a list",
            details=["not", "a dict"],
            also_buy="B1",
            also_view=[1, None, "B2"],
            imageURL="https://x/y/z.jpg",
            brand=None,
        )
    )
    assert p.fields["title"] == "Two parts"
    assert p.fields["description"] == "one string, not a list"
    assert p.fields["category_path"] == ""
    assert p.also_buy == []
    assert p.also_view == ["B2"]
    assert p.image_names == ["z.jpg"]


def test_a_product_with_no_text_is_still_returned_for_the_normaliser_to_count() -> None:
    # Emptiness depends on images found later (images_dir), so the catalog reports "empty_item".
    p = parse_ok(line_2018(asin="B0EMPTY", title=BROKEN_TITLE))
    assert not any(p.fields.values())


def test_blank_lines_are_neither_products_nor_rejects() -> None:
    assert parse_amazon_line(b"\n", "l") == (None, None)
    assert parse_amazon_line("   ", "l") == (None, None)

"""The web page's facet controls in headless Chromium, over the in-process API (no Ray).

The tiny serving index gets a ``price`` number attribute here (the sample catalog has none), so
the page shows both kinds of control: a select of values with counts per keyword attribute and
min/max boxes per number attribute. Choosing values re-runs the search with ``filters``, and every
card shown must match them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.web_page import CHROMIUM, CHROMIUM_ARGS, local_api, needs_chromium

from itemsage.index import load_index
from itemsage.index.attributes import AttributeTable, specs_from_config

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def priced_index(tiny_serving: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny index with gender/product_type/color from its catalog and a price per item."""
    import pyarrow.parquet as pq

    from itemsage.config import FilterableAttribute, IndexConfig

    index = load_index(tiny_serving["index_1"], use_gpu=False)
    ids = index.idmap.item_ids()
    catalog = pq.read_table(tiny_serving["features"] / "catalog.parquet").to_pandas().set_index("item_id")
    columns = {f: [catalog.loc[i, f] for i in ids] for f in ("size_type", "product_types", "colors")}
    columns["price"] = [10.0 + 5 * r for r in range(len(ids))]  # 10, 15, ... 305
    specs = specs_from_config({**IndexConfig().filterable, "price": FilterableAttribute(type="number")})
    index.attach_attributes(AttributeTable.from_columns(specs, index.idmap.lookup(ids), columns))
    return index.save(tmp_path_factory.mktemp("priced") / "index")


@pytest.fixture(scope="module")
def page_url(tiny_serving: dict[str, Path], priced_index: Path) -> Iterator[str]:
    with local_api(str(tiny_serving["model_1"]), str(priced_index)) as url:
        yield url


def shown_items(page: Any) -> list[str]:
    return page.eval_on_selector_all("#results .card", "cs => cs.map(c => c.dataset.itemId)")


def test_facet_controls_filter_the_results(page_url: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    facets = {a["name"]: a for a in httpx.get(page_url + "/facets").json()["attributes"]}
    gender = facets["gender"]["values"][0]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(page_url + "/", wait_until="networkidle")
            page.wait_for_selector("#facets select[data-facet=gender]")
            # A select per keyword attribute, its options the values with their counts.
            options = page.eval_on_selector_all(
                "#facets select[data-facet=gender] option", "os => os.map(o => o.textContent)"
            )
            assert options == ["any"] + [f"{v['value']} ({v['count']})" for v in facets["gender"]["values"]]
            assert page.eval_on_selector_all("#facets select", "s => s.map(e => e.dataset.facet)") == [
                "gender",
                "product_type",
                "color",
            ]
            # Min/max boxes per number attribute, with the catalog's range as placeholders.
            assert page.get_attribute("#facets input[data-facet=price][data-bound=min]", "placeholder") == "min 10"
            assert page.get_attribute("#facets input[data-facet=price][data-bound=max]", "placeholder") == "max 305"

            page.fill("#query", "shirt")
            page.press("#query", "Enter")
            page.wait_for_selector("#results .card")
            unfiltered = shown_items(page)
            assert len(unfiltered) == 24

            with page.expect_response(lambda r: r.url.endswith("/search")) as answer:
                page.select_option("#facets select[data-facet=gender]", gender["value"])
            assert answer.value.request.post_data_json["filters"] == {"gender": gender["value"]}
            page.wait_for_function(
                "n => document.querySelectorAll('#results .card').length === n", arg=min(24, gender["count"])
            )
            for item in shown_items(page):
                assert httpx.get(f"{page_url}/items/{item}").json()["fields"]["size_type"] == gender["value"]

            with page.expect_response(lambda r: r.url.endswith("/search")) as answer:
                page.fill("#facets input[data-facet=price][data-bound=max]", "100")
                page.press("#facets input[data-facet=price][data-bound=max]", "Enter")
            assert answer.value.request.post_data_json["filters"] == {"gender": gender["value"], "price": {"lte": 100}}
            page.wait_for_selector("#status:has-text('products')")
            narrowed = shown_items(page)
            assert 0 < len(narrowed) < min(24, gender["count"])

            # An impossible range is refused with the reason, shown on the page.
            with page.expect_response(lambda r: r.url.endswith("/search")) as answer:
                page.fill("#facets input[data-facet=price][data-bound=min]", "5000")
                page.press("#facets input[data-facet=price][data-bound=min]", "Enter")
            assert answer.value.status == 422
            page.wait_for_selector("#status:has-text('the range is empty')")

            # Nothing matches: an empty result list and a status line, not an error.
            with page.expect_response(lambda r: r.url.endswith("/search")) as answer:
                page.fill("#facets input[data-facet=price][data-bound=max]", "")
                page.press("#facets input[data-facet=price][data-bound=max]", "Enter")
            assert answer.value.status == 200
            assert answer.value.request.post_data_json["filters"] == {"gender": gender["value"], "price": {"gte": 5000}}
            page.wait_for_function("() => document.querySelectorAll('#results .card').length === 0")
            assert page.inner_text("#status").startswith("0 products")
            page.screenshot(path=str(tmp_path / "facets.png"))
        finally:
            browser.close()

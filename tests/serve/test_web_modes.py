"""The web page's search-mode control in headless Chromium, over the in-process API (no Ray).

The tiny serving index gets its lexical index here (as the index pipeline builds it): the page
sends the chosen ``mode`` with ``/search`` and ``/similar`` (none for "default mode") and its status
line says which mode answered.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.web_page import CHROMIUM, CHROMIUM_ARGS, local_api, needs_chromium

from itemsage.config import TEXT_FIELDS, HybridConfig
from itemsage.index import load_index
from itemsage.index.lexical import lexical_for_index

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def page_url(tiny_serving: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    index = load_index(tiny_serving["index_1"], use_gpu=False)
    index.attach_lexical(lexical_for_index(index.idmap, str(tiny_serving["features"]), TEXT_FIELDS))
    saved = index.save(tmp_path_factory.mktemp("web_modes") / "index")
    with local_api(str(tiny_serving["model_1"]), str(saved)) as url:
        yield url


def test_the_mode_control_picks_the_mode_and_the_page_says_which_answered(page_url: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(page_url + "/", wait_until="networkidle")
            options = page.eval_on_selector_all("#mode option", "os => os.map(o => o.value)")
            assert options == ["", "hybrid", "dense", "lexical"]

            page.fill("#query", "leather shoes")
            with page.expect_response(lambda r: r.url.endswith("/search")) as answer:
                page.press("#query", "Enter")
            assert "mode" not in answer.value.request.post_data_json  # the server's default
            default = HybridConfig().default_mode
            page.wait_for_selector(f"#status:has-text('{default} search')")

            for mode in ("lexical", "dense", "hybrid"):
                with page.expect_response(lambda r: r.url.endswith("/search")) as answer:
                    page.select_option("#mode", mode)  # re-runs the current query in that mode
                assert answer.value.request.post_data_json["mode"] == mode
                assert answer.value.json()["mode"] == mode
                page.wait_for_selector(f"#status:has-text('{mode} search')")
                shown = page.eval_on_selector_all("#results .card", "cs => cs.map(c => c.dataset.itemId)")
                assert shown == [h["item_id"] for h in answer.value.json()["results"]]

            # A product's similar items come in the chosen mode too, and the page says which.
            with page.expect_response(lambda r: r.url.endswith("/similar")) as answer:
                page.click("#results .card >> nth=0")
            assert answer.value.request.post_data_json["mode"] == "hybrid"
            assert answer.value.json()["mode"] == "hybrid"
            page.wait_for_selector("#status:has-text('similar items · hybrid')")
        finally:
            browser.close()

"""Preprocessing of the bundled Amazon sample end to end (itemsage.data.pipeline, on the local Ray of
tests/data/conftest.py).

One run per module, on data/sample/amazon (300 real products, their also_buy / also_view links and
five damaged lines) plus a 5-core reviews file written here: counts, rejects.jsonl reasons, the
price attribute and the pairs are checked against what the raw files say, read independently.
"""

from __future__ import annotations

import gzip
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from itemsage.config import EngagementConfig, PreprocessConfig
from itemsage.data.pipeline import run_preprocess
from itemsage.data.splits import item_splits

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample" / "amazon"
USERS = 30


def raw_products() -> list[dict]:
    """The sample's readable lines, first line per asin (as the catalog keeps them)."""
    out: dict[str, dict] = {}
    for path in sorted(SAMPLE.glob("*/meta.json.gz")):
        for line in gzip.decompress(path.read_bytes()).splitlines():
            try:
                record = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            out.setdefault(record["asin"], record)
    return list(out.values())


@pytest.fixture(scope="module")
def run(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("amazon")
    asins = sorted(r["asin"] for r in raw_products() if r.get("title") or r.get("description"))
    lines = [
        json.dumps({"reviewerID": f"U{u}", "asin": asins[(u * 11 + k * 3) % len(asins)], "unixReviewTime": 1e9 + k})
        for u in range(USERS)
        for k in range(5)
    ]
    lines += [
        json.dumps({"reviewerID": "U0", "asin": "NOT_IN_CATALOG", "unixReviewTime": 1}),
        '{"reviewerID": "U1", "asin": "B0',
    ]
    reviews = tmp / "reviews_5.json.gz"
    reviews.write_bytes(gzip.compress("\n".join(lines).encode()))
    cfg = PreprocessConfig(
        catalog=str(SAMPLE),
        reviews=str(reviews),
        output=str(tmp / "features"),
        engagement=EngagementConfig(val_fraction=0.2, test_fraction=0.2),
        rows_per_block=64,
    )
    summary = run_preprocess(cfg)
    return cfg, summary, Path(cfg.output)


@pytest.mark.slow
def test_counts_and_every_reject_reason(run) -> None:
    _, summary, out = run
    assert (summary.layout, summary.engagement_source) == ("amazon", "amazon")
    assert summary.items == 302  # 300 products + the HTML-title and non-UTF-8 copies (repaired)
    assert summary.items_with_images == 0
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    by_reason = Counter(f"{r['stage']}/{r['reason']}" for r in rejects)
    for reason, n in {
        "catalog/malformed_row": 1,
        "catalog/empty_item": 1,
        "catalog/non_utf8_text": 1,
        "catalog/duplicate_id": 1,
        "engagement/link_outside_catalog": 2,  # one per action, with the counts in the detail
        "engagement/review_outside_catalog": 1,
        "engagement/malformed_row": 1,
    }.items():
        assert by_reason[reason] == n, reason
    assert summary.skipped == dict(sorted(by_reason.items()))
    catalog_rejects = [r for r in rejects if r["stage"] == "catalog"]
    assert all(r["detail"].startswith("Gift_Cards/meta.json.gz line ") for r in catalog_rejects)


@pytest.mark.slow
def test_link_counts_match_the_raw_files(run) -> None:
    _, summary, out = run
    products = raw_products()
    kept = set(pq.read_table(out / "catalog.parquet").column("item_id").to_pylist())
    expected: Counter[str] = Counter()
    for action in ("also_buy", "also_view"):
        links = {(p["asin"], b) for p in products if p["asin"] in kept for b in p[action] if b != p["asin"]}
        expected[f"{action}_links"] = len(links)
        expected[f"{action}_pairs"] = sum(b in kept for _, b in links)
        expected[f"{action}_outside_catalog"] = sum(b not in kept for _, b in links)
    counts = summary.engagement_counts
    assert {k: counts[k] for k in expected} == dict(expected)
    assert counts["also_buy_pairs"] > 1000 and counts["also_view_pairs"] > 1000
    assert (counts["reviews"], counts["review_outside_catalog"], counts["review_pairs"]) == (
        USERS * 5 + 1,
        1,
        USERS * 5,
    )
    assert json.loads((out / "summary.json").read_text())["engagement_counts"] == counts


@pytest.mark.slow
def test_closeup_pairs_follow_the_item_disjoint_split(run) -> None:
    """Every in-catalog link is a closeup pair of its engaged item's split (a train pair whose
    query item is held out is dropped), then either written or dropped with a "pairs" reject."""
    cfg, _, out = run
    ids = pq.read_table(out / "catalog.parquet").column("item_id").to_pylist()
    split = item_splits(pd.DataFrame({"item_id": ids}), cfg.engagement.val_fraction, cfg.engagement.test_fraction, 0)
    kept = set(ids)
    expected: Counter[str] = Counter()
    for p in raw_products():
        if p["asin"] not in kept:
            continue
        for action in ("also_buy", "also_view"):
            for b in dict.fromkeys(p[action]):
                if b in kept and b != p["asin"] and not (split[b] == "train" and split[p["asin"]] != "train"):
                    expected[split[b]] += 1
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    dropped = sum(1 for r in rejects if r["stage"] == "pairs" and r["reason"].startswith("closeup"))
    written = 0
    for name in ("train", "val", "test"):
        table = pq.read_table(out / "pairs" / f"{name}.parquet").to_pandas()
        closeup = table[table["surface"] == "closeup"]
        assert set(closeup["action"]) <= {"also_buy", "also_view"}
        assert set(closeup["source"]) <= {"amazon"}
        assert len(closeup) <= expected[name]
        written += len(closeup)
        # Held-out items are unseen in training.
        if name != "train":
            held = {ids[i] for i in table["item_idx"]}
            assert all(split[i] == name for i in held)
    assert written + dropped == sum(expected.values())


@pytest.mark.slow
def test_reviews_give_home_users_and_price_is_a_float_attribute(run) -> None:
    _, summary, out = run
    assert 0 < summary.users <= USERS
    train = pq.read_table(out / "pairs" / "train.parquet").to_pandas()
    assert set(train.loc[train["surface"] == "home", "task"]) == {"home/review"}
    catalog = pq.read_table(out / "catalog.parquet")
    assert str(catalog.schema.field("price").type) == "double"
    price = dict(zip(catalog.column("item_id").to_pylist(), catalog.column("price").to_pylist()))
    raw = {p["asin"]: p.get("price", "") for p in raw_products()}
    known = [a for a, v in raw.items() if a in price and v.startswith("$") and " - " not in v]
    assert len(known) > 50
    for asin in known:
        assert math.isclose(price[asin], float(raw[asin][1:].replace(",", "")))
    assert all(math.isnan(price[a]) for a, v in raw.items() if a in price and not v)


@pytest.mark.slow
def test_a_broken_title_is_embedded_from_its_fallback_fields(run) -> None:
    """A Magazine_Subscriptions product whose title is a broken HTML fragment keeps an empty title
    (no title tokens) but gets the MiniLM embedding of its fallback text, not the zero vector, and
    the manifest records the fallback for serving (preprocess.title_fallback)."""
    from itemsage.data.text import title_embedding_text
    from itemsage.data.text_encoder import TextEncoder

    cfg, _, out = run
    catalog = pq.read_table(out / "catalog.parquet").to_pandas()
    items = pq.read_table(out / "items.parquet", columns=["item_idx", "tok_title", "title_emb"]).to_pandas()
    untitled = catalog.index[catalog["title"] == ""].to_numpy()
    assert len(untitled) > 50
    row = int(untitled[0])
    assert len(items["tok_title"][row]) == 0
    text = title_embedding_text(catalog.iloc[row].to_dict(), cfg.title_fallback)
    assert text and text.startswith(catalog["brand"][row] or catalog["category_path"][row])
    expected = TextEncoder().encode([text])[0]
    np.testing.assert_allclose(np.asarray(items["title_emb"][row]), expected, atol=1e-4)
    assert json.loads((out / "manifest.json").read_text())["title_fallback"] == list(cfg.title_fallback)

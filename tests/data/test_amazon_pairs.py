"""Amazon engagement (itemsage.data.copurchase): also_buy / also_view links -> closeup pairs of two
actions, outside links counted, item-disjoint split, and the 5-core reviews parser."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from itemsage.config import EngagementConfig, PreprocessConfig
from itemsage.data import pipeline as P
from itemsage.data.catalog import read_catalog
from itemsage.data.copurchase import amazon_engagements, link_pairs, read_reviews
from itemsage.data.engagement import ENGAGEMENT_COLUMNS, EngagementError
from itemsage.model.sampler import MultiTaskBatcher

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample" / "amazon"


def links(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["item_id", "action", "linked_id"])


def test_links_inside_the_catalog_become_closeup_pairs_of_their_action() -> None:
    pairs, rejects, counts = link_pairs(
        links(
            [
                ("A", "also_buy", "B"),
                ("A", "also_buy", "B"),  # listed twice: one pair
                ("A", "also_view", "B"),  # the same two products under the other action: its own task
                ("B", "also_view", "A"),  # the reverse direction: its own pair
                ("A", "also_buy", "A"),  # a product linking itself: no pair
                ("A", "also_buy", "X1"),
                ("B", "also_buy", "X1"),
                ("B", "also_view", "X2"),
            ]
        ),
        ["A", "B", "C"],
    )
    assert list(pairs.columns) == ENGAGEMENT_COLUMNS
    got = sorted(zip(pairs["surface"], pairs["action"], pairs["query"], pairs["item_id"]))
    assert got == [
        ("closeup", "also_buy", "A", "B"),
        ("closeup", "also_view", "A", "B"),
        ("closeup", "also_view", "B", "A"),
    ]
    assert set(pairs["source"]) == {"amazon"}
    assert pairs["timestamp"].isna().all()
    assert counts == {
        "also_buy_links": 3,
        "also_buy_outside_catalog": 2,
        "also_buy_pairs": 1,
        "also_view_links": 3,
        "also_view_outside_catalog": 1,
        "also_view_pairs": 2,
    }
    # One aggregated reject per action, not one per link; its detail carries the counts.
    assert sorted((r.stage, r.reason) for r in rejects) == [("engagement", "link_outside_catalog")] * 2
    buy = next(r for r in rejects if r.detail.startswith("also_buy"))
    assert "2 of 3" in buy.detail and "1 asins" in buy.detail and "X1" in buy.detail


def test_no_links_no_pairs_and_no_rejects() -> None:
    pairs, rejects, counts = link_pairs(links([]), ["A"])
    assert len(pairs) == 0 and rejects == []
    assert counts["also_buy_links"] == 0 and counts["also_view_pairs"] == 0


def test_sample_pairs_split_item_disjointly_and_the_trainer_mixes_both_actions() -> None:
    cfg = PreprocessConfig(catalog=str(SAMPLE), engagement=EngagementConfig(val_fraction=0.2, test_fraction=0.2))
    catalog, items = P.load_catalog(cfg)
    eng = P.prepare_engagements(cfg, catalog.layout, items, catalog.links)
    assert eng.source == "amazon"
    # The sample is cut so that most of its links resolve inside it.
    assert eng.counts["also_buy_pairs"] > 1000 and eng.counts["also_view_pairs"] > 1000
    assert eng.counts["also_buy_outside_catalog"] > 0
    train, val, test = (eng.splits[s] for s in ("train", "val", "test"))
    assert len(val) and len(test)
    train_items = set(train["item_id"]) | set(train["query"])
    for held in (val, test):
        assert not set(held["item_id"]) & train_items
    assert set(train["action"]) == {"also_buy", "also_view"}
    # Every batch holds both tasks, in equal shares by default (train.task_quotas).
    chunk = {
        "item_idx": np.arange(len(train)),
        "query_key": np.arange(len(train)),
        "surface": train["surface"].to_numpy().astype(str),
        "action": train["action"].to_numpy().astype(str),
    }
    batcher = MultiTaskBatcher(["closeup/also_buy", "closeup/also_view"], {}, batch_size=64)
    batches = list(batcher([chunk]))
    assert batches
    for batch in batches[:5]:
        tasks, n = np.unique(batch["task"], return_counts=True)
        assert list(tasks) == ["closeup/also_buy", "closeup/also_view"]
        assert list(n) == [32, 32]


def test_reviews_need_the_amazon_layout_and_an_existing_file(tmp_path: Path, sample_dir: Path) -> None:
    with pytest.raises(P.PreprocessError, match="amazon layout only"):
        P.validate_config(PreprocessConfig(catalog=str(sample_dir / "shopee"), reviews=str(SAMPLE)))
    with pytest.raises(P.PreprocessError, match="reviews: file not found"):
        P.validate_config(PreprocessConfig(catalog=str(SAMPLE), reviews=str(tmp_path / "nope.json.gz")))
    with pytest.raises(P.PreprocessError, match="images_dir: not a directory"):
        P.validate_config(PreprocessConfig(catalog=str(SAMPLE), images_dir=str(tmp_path / "nope")))


# ------------------------------------------------------------------------------ reviews


def review(user: str, asin: str, ts: object = 1_400_000_000, **extra: object) -> bytes:
    record = {"overall": 5.0, "verified": True, "reviewerID": user, "asin": asin, "unixReviewTime": ts}
    record.update(extra)
    return json.dumps(record).encode()


def test_reviews_become_home_pairs_with_their_time(tmp_path: Path) -> None:
    lines = [
        review("U1", "A", 1_500_000_000, reviewText="great", summary="Five Stars"),
        review("U1", "B", 1_400_000_000),
        review("U2", "A", "1300000000"),  # some files write the time as text
        review("U2", "A", 1_300_000_001),  # the same user and product again: counted once
        review("U2", "OUT"),
        review("U3", "OUT"),
        b'{"reviewerID": "U4", "asin": "A", "unixRev',  # truncated
        review("", "A"),
        json.dumps({"reviewerID": "U5", "unixReviewTime": 1}).encode(),
        review("U6", "B", "yesterday"),
        b"",
        review("U7", "C").replace(b"U7", b"U\xe97"),  # a Latin-1 byte in the user id
    ]
    path = tmp_path / "reviews_Gift_Cards_5.json.gz"
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    pairs, rejects, counts = read_reviews(path, ["A", "B", "C"])
    assert list(pairs.columns) == ENGAGEMENT_COLUMNS
    got = list(zip(pairs["surface"], pairs["action"], pairs["query"], pairs["item_id"], pairs["user_id"]))
    assert got == [
        ("home", "review", "U1", "A", "U1"),
        ("home", "review", "U1", "B", "U1"),
        ("home", "review", "U2", "A", "U2"),
        ("home", "review", "U6", "B", "U6"),
        ("home", "review", "U\ufffd7", "C", "U\ufffd7"),
    ]
    assert pairs["timestamp"].tolist()[:3] == [1.5e9, 1.4e9, 1.3e9]
    assert np.isnan(pairs["timestamp"].iloc[3])
    assert set(pairs["source"]) == {"amazon_reviews"}
    assert sorted(r.reason for r in rejects) == [
        "bad_timestamp",
        "malformed_row",
        "missing_id",
        "missing_user",
        "review_outside_catalog",
    ]
    outside = next(r for r in rejects if r.reason == "review_outside_catalog")
    # 7 distinct readable reviews (U2's second review of A is the same pair).
    assert "2 of 7" in outside.detail and "OUT" in outside.detail
    assert counts == {"reviews": 7, "review_outside_catalog": 2, "review_pairs": 5}


def test_plain_reviews_file_and_missing_path(tmp_path: Path) -> None:
    path = tmp_path / "reviews.json"
    path.write_bytes(review("U1", "A") + b"\n")
    pairs, _, _ = read_reviews(path, ["A"])
    assert pairs["item_id"].tolist() == ["A"]
    with pytest.raises(EngagementError, match="does not exist"):
        read_reviews(tmp_path / "none.json", ["A"])


def test_reviews_add_user_histories_from_train_items_only(tmp_path: Path) -> None:
    catalog = read_catalog(SAMPLE)
    ids = catalog.items["item_id"].tolist()
    lines = [review(f"U{u}", ids[(u * 7 + k) % len(ids)], 1_400_000_000 + k) for u in range(40) for k in range(6)]
    path = tmp_path / "reviews.json.gz"
    path.write_bytes(gzip.compress(b"\n".join(lines)))
    cfg = PreprocessConfig(catalog=str(SAMPLE), reviews=str(path))
    _, items = P.load_catalog(cfg)
    eng = P.prepare_engagements(cfg, catalog.layout, items, catalog.links)
    assert eng.counts["review_pairs"] == 240
    assert {"home", "closeup"} == set(pd.concat(eng.splits.values())["surface"])
    train_items = set(eng.splits["train"]["item_id"])
    assert len(eng.histories) == 40
    for history in eng.histories.values():
        assert set(history) <= train_items
    # Most recent first.
    h = eng.histories["U0"]
    times = {ids[k % len(ids)]: k for k in range(6)}
    assert [times[i] for i in h] == sorted((times[i] for i in h), reverse=True)
    pairs, _, _ = amazon_engagements(None, items, str(path))
    assert set(pairs["surface"]) == {"home"}

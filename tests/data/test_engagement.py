"""Engagement pairs: synthetic rules, real Shopee pairs, log reading, leak-free splits and histories."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from itemsage.config import ACTIONS, EngagementConfig
from itemsage.data.catalog import read_catalog
from itemsage.data.engagement import ENGAGEMENT_COLUMNS, EngagementError, read_engagements
from itemsage.data.shopee_pairs import shopee_pairs
from itemsage.data.splits import build_user_histories, split_by_item, split_by_time, stable_unit
from itemsage.data.synthetic_engagement import synthesize_engagements

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"
SMALL = EngagementConfig(num_users=60, search_pairs=800, closeup_pairs=800, home_pairs=400)
TINY = EngagementConfig(num_users=10, search_pairs=100, closeup_pairs=100, home_pairs=50)


@pytest.fixture(scope="module")
def fashion() -> pd.DataFrame:
    return read_catalog(SAMPLE / "fashion").items


@pytest.fixture(scope="module")
def shopee() -> pd.DataFrame:
    return read_catalog(SAMPLE / "shopee").items


@pytest.fixture(scope="module")
def synthetic(fashion: pd.DataFrame) -> pd.DataFrame:
    return synthesize_engagements(fashion, SMALL)


def top_share(engagements: pd.DataFrame, fraction: float, n_items: int) -> float:
    """Share of all engagements that go to the most engaged ``fraction`` of the catalog."""
    counts = engagements["item_id"].value_counts()
    return counts.head(int(n_items * fraction)).sum() / len(engagements)


# ------------------------------------------------------------------ synthetic engagement


def test_synthetic_is_deterministic_and_independent_of_row_order(fashion: pd.DataFrame,
                                                                 synthetic: pd.DataFrame) -> None:
    again = synthesize_engagements(fashion.sample(frac=1.0, random_state=7), SMALL)
    pd.testing.assert_frame_equal(synthetic, again)
    other_seed = synthesize_engagements(fashion, SMALL.replace(seed=1))
    assert not synthetic.equals(other_seed)


def test_synthetic_schema_and_label(fashion: pd.DataFrame, synthetic: pd.DataFrame) -> None:
    assert list(synthetic.columns) == ENGAGEMENT_COLUMNS
    assert (synthetic["source"] == "synthetic").all()
    assert synthetic.groupby("surface").size().to_dict() == {"closeup": 800, "home": 400, "search": 800}
    assert set(synthetic["item_id"]) <= set(fashion["item_id"])
    assert synthetic["timestamp"].notna().all()
    assert (synthetic["user_id"] != "").all()


def test_funnel_is_dense_clicks_sparse_checkouts(synthetic: pd.DataFrame) -> None:
    for surface, pairs in synthetic.groupby("surface"):
        counts = pairs["action"].value_counts()
        assert counts["click"] > counts["save"] > counts["checkout"], surface
        for action in ACTIONS:  # exact shares, to within one pair
            assert abs(counts.get(action, 0) - SMALL.action_shares[action] * len(pairs)) <= 1


def test_checkouts_go_to_better_matches(fashion: pd.DataFrame) -> None:
    cfg = SMALL.replace(search_pairs=0, home_pairs=0, closeup_pairs=3000)
    closeup = synthesize_engagements(fashion, cfg)
    colours = fashion.set_index("item_id")["colors"]
    same_colour = colours.loc[closeup["query"]].to_numpy() == colours.loc[closeup["item_id"]].to_numpy()
    rate = pd.Series(same_colour).groupby(closeup["action"].to_numpy()).mean()
    assert rate["checkout"] > rate["click"] + 0.05


def test_popularity_is_skewed_by_the_exponent(fashion: pd.DataFrame, synthetic: pd.DataFrame) -> None:
    flat = synthesize_engagements(fashion, SMALL.replace(popularity_exponent=0.0))
    skewed = top_share(synthetic, 0.1, len(fashion))
    assert skewed > 0.4  # the top 10% of items get far more than 10% of engagement
    assert skewed > top_share(flat, 0.1, len(fashion)) + 0.2


def test_search_queries_are_noisy_attribute_text_not_titles(fashion: pd.DataFrame,
                                                            synthetic: pd.DataFrame) -> None:
    search = synthetic[synthetic["surface"] == "search"]
    titles = {t.lower() for t in fashion["title"]}
    assert (search["query"].str.strip() != "").all()
    assert not search["query"].str.lower().isin(titles).any()
    assert search["query"].nunique() > 100  # word drops, synonyms and order give variety
    # The engaged item is of the kind the query asks for, in most cases recognisably so.
    kinds = fashion.set_index("item_id")["product_types"].str.lower()
    first_word = [k.split()[0][:4] for k in kinds.loc[search["item_id"]]]
    mentions = [w in q for w, q in zip(first_word, search["query"].str.lower())]
    assert np.mean(mentions) > 0.4


def test_closeup_queries_are_items_with_images_and_related(fashion: pd.DataFrame,
                                                           synthetic: pd.DataFrame) -> None:
    items = fashion.set_index("item_id")
    closeup = synthetic[synthetic["surface"] == "closeup"]
    assert all(len(items.loc[q, "image_paths"]) > 0 for q in closeup["query"])
    assert (closeup["query"] != closeup["item_id"]).all()
    same_type = items.loc[closeup["query"], "product_types"].to_numpy() == \
        items.loc[closeup["item_id"], "product_types"].to_numpy()
    assert same_type.mean() > 0.95


def facet_match_rates(fashion: pd.DataFrame, share: float) -> tuple[float, float]:
    """(search, closeup) shares of engagements that match: a search query naming a catalog colour
    engages an item of that colour; a closeup engages an item of the viewed item's kind, colour
    and gender."""
    pairs = synthesize_engagements(fashion, SMALL.replace(facet_match_share=share))
    items = fashion.set_index("item_id")
    colour = items["colors"].str.lower()
    names = sorted(set(colour), key=len, reverse=True)  # "navy blue" before "blue"
    search = pairs[pairs["surface"] == "search"]
    named = [(next((c for c in names if f" {c} " in f" {q.lower()} "), None), i)
             for q, i in zip(search["query"], search["item_id"])]
    named = [(c, i) for c, i in named if c is not None]
    search_rate = float(np.mean([colour[i] == c for c, i in named]))
    closeup = pairs[pairs["surface"] == "closeup"]
    facets = items[["product_types", "colors", "size_type"]]
    same = facets.loc[closeup["query"]].to_numpy() == facets.loc[closeup["item_id"]].to_numpy()
    return search_rate, float(same.all(axis=1).mean())


def test_engaged_items_mostly_have_the_facets_asked_for(fashion: pd.DataFrame) -> None:
    # A result list for "navy blue shirts for men" is mostly navy blue men's shirts; popularity
    # alone would let a far more popular near miss win most draws.
    search, closeup = facet_match_rates(fashion, SMALL.facet_match_share)
    # (Some of the 300 sample items have no other item of their kind, colour and gender.)
    assert search > 0.9 and closeup > 0.7
    loose_search, loose_closeup = facet_match_rates(fashion, 0.0)
    assert search > loose_search + 0.1 and closeup > loose_closeup + 0.3


def test_facet_match_share_outside_0_1_is_refused(fashion: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="facet_match_share"):
        synthesize_engagements(fashion, TINY.replace(facet_match_share=1.5))


def test_home_queries_are_users_with_a_profile(fashion: pd.DataFrame, synthetic: pd.DataFrame) -> None:
    home = synthetic[synthetic["surface"] == "home"]
    assert (home["query"] == home["user_id"]).all()
    # Users have 2-3 preferred product types: most of a user's home items share few types.
    types = fashion.set_index("item_id")["product_types"]
    per_user = home.assign(t=types.loc[home["item_id"]].to_numpy()).groupby("user_id")["t"]
    top3_share = per_user.apply(lambda s: s.value_counts().head(3).sum() / len(s))
    assert top3_share.mean() > 0.7


def test_catalog_without_images_gets_no_closeup_pairs(fashion: pd.DataFrame) -> None:
    text_only = fashion.assign(image_paths=[[] for _ in range(len(fashion))])
    pairs = synthesize_engagements(text_only, TINY)
    assert "closeup" not in set(pairs["surface"])
    assert {"search", "home"} <= set(pairs["surface"])


def test_title_only_catalog_builds_queries_from_title_words(shopee: pd.DataFrame) -> None:
    pairs = synthesize_engagements(shopee, TINY.replace(search_pairs=300))
    search = pairs[pairs["surface"] == "search"]
    assert len(search) == 300
    titles = shopee.set_index("item_id")["title"].str.lower()
    overlap = [bool(set(q.split()) & set(titles[i].split()))
               for q, i in zip(search["query"], search["item_id"])]
    assert np.mean(overlap) > 0.9


@pytest.mark.parametrize("n_items", [1, 2])
def test_tiny_catalogs_work(fashion: pd.DataFrame, n_items: int) -> None:
    tiny = fashion.head(n_items)
    pairs = synthesize_engagements(tiny, TINY)
    assert set(pairs["item_id"]) <= set(tiny["item_id"])
    assert len(pairs[pairs["surface"] == "home"]) == TINY.home_pairs
    if n_items == 1:
        assert "closeup" not in set(pairs["surface"])


def test_empty_catalog_gives_empty_pairs(fashion: pd.DataFrame) -> None:
    pairs = synthesize_engagements(fashion.head(0), TINY)
    assert pairs.empty and list(pairs.columns) == ENGAGEMENT_COLUMNS


def test_unknown_action_share_is_refused(fashion: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="like"):
        synthesize_engagements(fashion, TINY.replace(action_shares={"like": 1.0}))


# ------------------------------------------------------------------ real Shopee pairs


def test_shopee_pairs_join_listings_of_one_group(shopee: pd.DataFrame) -> None:
    pairs = shopee_pairs(shopee)
    assert list(pairs.columns) == ENGAGEMENT_COLUMNS
    assert len(pairs) == len(shopee)  # every listing of a >= 2 group queries once
    assert set(pairs["source"]) == {"shopee"}
    assert set(pairs["surface"]) == {"search"} and set(pairs["action"]) == {"click"}
    listing = shopee.set_index("item_id")
    titles_of_group = shopee.groupby("group")["item_id"].apply(list).to_dict()
    for query, item in zip(pairs["query"], pairs["item_id"]):
        mates = [m for m in titles_of_group[listing.loc[item, "group"]] if m != item]
        assert query in {listing.loc[m, "title"] for m in mates}
    assert pairs["item_id"].is_unique


def test_shopee_pairs_need_groups(fashion: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="group"):
        shopee_pairs(fashion)


# ------------------------------------------------------------------ splits and histories


def test_split_is_item_disjoint_and_drops_leaking_closeups(fashion: pd.DataFrame,
                                                           synthetic: pd.DataFrame) -> None:
    splits = split_by_item(synthetic, fashion, 0.2, 0.2, seed=0)
    train_items = set(splits["train"]["item_id"])
    held_out = set(splits["val"]["item_id"]) | set(splits["test"]["item_id"])
    assert len(splits["val"]) > 0 and len(splits["test"]) > 0
    assert not train_items & held_out
    assert not set(splits["val"]["item_id"]) & set(splits["test"]["item_id"])
    train_closeup = splits["train"][splits["train"]["surface"] == "closeup"]
    assert not set(train_closeup["query"]) & held_out
    assert sum(len(s) for s in splits.values()) < len(synthetic)  # some closeups were dropped
    again = split_by_item(synthetic, fashion, 0.2, 0.2, seed=0)
    for name in ("train", "val", "test"):
        pd.testing.assert_frame_equal(splits[name], again[name])


def test_split_keeps_shopee_groups_whole(shopee: pd.DataFrame) -> None:
    pairs = shopee_pairs(shopee)
    splits = split_by_item(pairs, shopee, 0.2, 0.2, seed=3)
    group_of = shopee.set_index("item_id")["group"]
    groups = {name: set(group_of.loc[s["item_id"]]) for name, s in splits.items()}
    assert groups["val"] and groups["test"]
    assert not groups["train"] & groups["val"] and not groups["train"] & groups["test"]
    assert sum(len(s) for s in splits.values()) == len(pairs)


def test_time_split_holds_out_the_latest_engagements(synthetic: pd.DataFrame) -> None:
    splits = split_by_time(synthetic, 0.2, 0.1)
    assert sum(len(s) for s in splits.values()) == len(synthetic)  # nothing dropped
    ts = {name: s["timestamp"] for name, s in splits.items()}
    assert ts["train"].max() < ts["val"].min() and ts["val"].max() < ts["test"].min()
    assert len(splits["test"]) == pytest.approx(0.1 * len(synthetic), abs=2)
    assert len(splits["val"]) == pytest.approx(0.2 * len(synthetic), abs=2)
    # Not item-disjoint: popular items are engaged before and after the cut.
    assert set(splits["train"]["item_id"]) & set(splits["test"]["item_id"])


def test_time_split_keeps_ties_together_and_undated_pairs_in_train() -> None:
    pairs = pd.DataFrame({"surface": "search", "action": "click", "query": "q", "item_id": list("abcdefgh"),
                          "timestamp": [math.nan, 1.0, 2.0, 3.0, 3.0, 3.0, 4.0, 5.0]})
    splits = split_by_time(pairs, 0.25, 0.25)
    assert list(splits["test"]["item_id"]) == ["g", "h"]
    assert list(splits["val"]["item_id"]) == ["d", "e", "f"]  # the tie at t=3 stays whole
    assert list(splits["train"]["item_id"]) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="timestamps"):
        split_by_time(pairs.assign(timestamp=math.nan), 0.1, 0.1)
    with pytest.raises(ValueError, match="fraction"):
        split_by_time(pairs, 0.5, 0.5)


def test_split_hash_is_stable_across_processes() -> None:
    # Fixed values: a change here means every existing split would silently move.
    assert stable_unit("item:15970", 0) == pytest.approx(0.7378820556914099, abs=1e-15)
    assert stable_unit("item:15970", 1) != stable_unit("item:15970", 0)


def test_split_rejects_unknown_items_and_bad_fractions(fashion: pd.DataFrame,
                                                       synthetic: pd.DataFrame) -> None:
    stray = synthetic.head(1).assign(item_id="not-in-catalog")
    with pytest.raises(ValueError, match="not in the catalog"):
        split_by_item(stray, fashion, 0.1, 0.1, seed=0)
    with pytest.raises(ValueError, match="fraction"):
        split_by_item(synthetic, fashion, 0.6, 0.5, seed=0)


def test_histories_are_recent_first_distinct_and_capped() -> None:
    log = pd.DataFrame({
        "user_id": ["u1", "u1", "u1", "u1", "u1", "u2", ""],
        "item_id": ["a", "b", "c", "a", "held", "b", "c"],
        "timestamp": [1.0, 5.0, 3.0, 9.0, 10.0, math.nan, 1.0],
    })
    histories = build_user_histories(log, allowed_items={"a", "b", "c"}, max_len=2)
    assert histories == {"u1": ["a", "b"], "u2": ["b"]}
    assert build_user_histories(log, {"a", "b", "c"}, max_len=10)["u1"] == ["a", "b", "c"]


def test_histories_exclude_held_out_items(fashion: pd.DataFrame, synthetic: pd.DataFrame) -> None:
    splits = split_by_item(synthetic, fashion, 0.2, 0.2, seed=0)
    train_items = set(splits["train"]["item_id"])
    held_out = set(fashion["item_id"]) - train_items
    histories = build_user_histories(synthetic, train_items, max_len=SMALL.history_length)
    assert histories and all(len(h) <= SMALL.history_length for h in histories.values())
    assert not {i for h in histories.values() for i in h} & held_out
    assert sum(len(h) for h in histories.values()) > len(histories)  # most users have a history


# ------------------------------------------------------------------ real logs


def log_rows() -> list[dict[str, object]]:
    return [
        {"surface": "search", "action": "click", "query": "red heels", "item_id": "10", "user_id": "u1",
         "timestamp": 100},
        {"surface": "home", "action": "checkout", "query": "u2", "item_id": "11", "user_id": "",
         "timestamp": "2024-01-02T03:04:05Z"},
        {"surface": "closeup", "action": "save", "query": "10", "item_id": "11", "user_id": "u1",
         "timestamp": None},
        {"surface": "pins", "action": "click", "query": "x", "item_id": "10", "user_id": "u1", "timestamp": 1},
        {"surface": "search", "action": "like", "query": "x", "item_id": "10", "user_id": "u1", "timestamp": 1},
        {"surface": "search", "action": "click", "query": "x", "item_id": "999", "user_id": "u1", "timestamp": 1},
        {"surface": "search", "action": "click", "query": " ", "item_id": "10", "user_id": "u1", "timestamp": 1},
        {"surface": "closeup", "action": "click", "query": "998", "item_id": "10", "user_id": "u1", "timestamp": 1},
    ]


BAD_REASONS = ["unknown_surface", "unknown_action", "unknown_item", "empty_query", "unknown_query_item"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_read_engagements_keeps_good_rows_and_rejects_bad(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"log.{fmt}"
    rows = log_rows()
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        frame = pd.DataFrame(rows).astype({"timestamp": str}).replace({"None": ""})
        frame.to_csv(path, index=False) if fmt == "csv" else frame.to_parquet(path)
    log, rejects = read_engagements(path, known_item_ids={"10", "11"})
    assert [r.reason for r in rejects] == BAD_REASONS
    assert list(log.columns) == ENGAGEMENT_COLUMNS
    assert log["surface"].tolist() == ["search", "home", "closeup"]
    assert log["user_id"].tolist() == ["u1", "u2", "u1"]  # home: the query names the user
    assert log["timestamp"].iloc[0] == 100.0
    assert log["timestamp"].iloc[1] == pd.Timestamp("2024-01-02T03:04:05Z").timestamp()
    assert math.isnan(log["timestamp"].iloc[2])
    assert set(log["source"]) == {"log"}


def test_read_engagements_missing_path_or_columns(tmp_path: Path) -> None:
    with pytest.raises(EngagementError, match="does not exist"):
        read_engagements(tmp_path / "none.csv", set())
    (tmp_path / "log.csv").write_text("surface,query\nsearch,x\n")
    with pytest.raises(EngagementError, match="action"):
        read_engagements(tmp_path / "log.csv", set())


def test_time_split_preprocessing_keeps_held_out_engagements_out_of_home_queries() -> None:
    from itemsage.config import PreprocessConfig
    from itemsage.data import pipeline as P

    cfg = PreprocessConfig(catalog=str(SAMPLE / "fashion"), engagement=SMALL.replace(split="time"))
    catalog, items = P.load_catalog(cfg)
    eng = P.prepare_engagements(cfg, catalog.layout, items)
    cut = eng.splits["val"]["timestamp"].min()
    train = eng.splits["train"]
    for user, history in eng.histories.items():
        engaged = train[(train["user_id"] == user)]
        assert set(history) <= set(engaged["item_id"])  # histories come from train-period pairs only
    assert train["timestamp"].max() < cut
    for name in ("val", "test"):
        home = eng.splits[name][eng.splits[name]["surface"] == "home"]
        assert len(home) > 0
        assert not any(item in eng.histories.get(user, []) for user, item in zip(home["query"], home["item_id"]))
    repeats = [r for r in eng.rejects if r.reason == "home_item_in_history"]
    assert repeats  # popular items come back: some held-out home pairs repeat a history item
    with pytest.raises(P.PreprocessError, match="engagement.split"):
        P.validate_config(cfg.replace(engagement=SMALL.replace(split="random")))

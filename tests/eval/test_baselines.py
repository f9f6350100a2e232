"""The baselines on a tiny hand-made catalog where the right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from itemsage.eval.baselines import Bm25Ranker, TfidfRanker, random_ranks, ranks_from_scores

CATALOG = [
    "Navy blue cotton shirt for men slim fit",  # 0
    "Red leather handbag with gold chain",  # 1
    "Wooden dining table oak six seats",  # 2
    "Navy blue cotton shirts for men, slim fit!",  # 3: near-duplicate of 0
    "Stainless steel kitchen knife set",  # 4
    "Zyxqu gadget charger",  # 5: a word no other item has
    "Blue denim jeans for women",  # 6
    "Oak wooden coffee table",  # 7
]
ALL = np.arange(len(CATALOG))


def _rank_of(ranker, queries, target: int, exclude: int = -1) -> int:
    return int(ranker.ranks(queries, ALL, np.array([target]), np.array([exclude]))[0])


@pytest.mark.parametrize("ranker_cls", [TfidfRanker, Bm25Ranker])
def test_item_to_item_finds_the_near_duplicate(ranker_cls) -> None:
    ranker = ranker_cls(CATALOG)
    # The query item itself is excluded; its near-duplicate is the best of the rest.
    assert _rank_of(ranker, ranker.item_queries(np.array([0])), target=3, exclude=0) == 0
    assert _rank_of(ranker, ranker.item_queries(np.array([2])), target=7, exclude=2) == 0
    # Without the exclusion the query item would rank first and push its duplicate to second.
    assert _rank_of(ranker, ranker.item_queries(np.array([0])), target=3) == 1


@pytest.mark.parametrize("ranker_cls", [TfidfRanker, Bm25Ranker])
def test_text_query_finds_the_matching_items(ranker_cls) -> None:
    ranker = ranker_cls(CATALOG)
    q = ranker.text_queries(["oak table"] * 2)
    ranks = ranker.ranks(q, ALL, np.array([2, 4]), np.array([-1, -1]))
    assert ranks[0] <= 1  # one of the two oak tables
    assert ranks[1] == len(CATALOG) - 1  # the knife set shares nothing: tied with every other zero, last


def test_tfidf_user_query_is_the_mean_of_the_history() -> None:
    ranker = TfidfRanker(CATALOG)
    users = ranker.user_queries([np.array([2, 7]), np.array([1])])
    ranks = ranker.ranks(users, ALL, np.array([2, 1]), np.array([-1, -1]))
    assert ranks[0] <= 1 and ranks[1] == 0  # a table for the table user (7 is the other), the handbag
    bm25 = Bm25Ranker(CATALOG)
    assert bm25.user_queries([np.array([2, 7])])[0] == bm25.item_tokens[2] + bm25.item_tokens[7]


def test_tfidf_fit_on_training_items_knows_no_held_out_trigram() -> None:
    """IDF (and the trigram vocabulary) from training items only: a word that only a held-out
    item has cannot match anything, as for a model whose vocabulary comes from training items."""
    train_only = TfidfRanker(CATALOG, fit_items=np.array([i for i in ALL if i != 5]))
    whole = TfidfRanker(CATALOG)
    assert _rank_of(whole, whole.text_queries(["zyxqu"]), target=5) == 0
    assert _rank_of(train_only, train_only.text_queries(["zyxqu"]), target=5) == len(CATALOG) - 1


def test_bm25_empty_query_matches_nothing() -> None:
    bm25 = Bm25Ranker(CATALOG)
    assert bm25.text_queries(["the of and"]) == [[]]
    assert _rank_of(bm25, [[]], target=0) == len(CATALOG) - 1


def test_ties_count_against_the_target_and_exclusion_removes_a_candidate() -> None:
    scores = np.array([[0.5, 0.9, 0.5, 0.1], [0.9, 0.5, 0.2, 0.2]])
    assert ranks_from_scores(scores, np.array([0, 1]), np.array([-1, -1])).tolist() == [2, 1]
    assert ranks_from_scores(scores, np.array([0, 1]), np.array([1, 0])).tolist() == [1, 0]


def test_random_recall_is_about_k_over_n() -> None:
    n, pairs = 1000, 20_000
    ranks = random_ranks(n, np.full(pairs, -1), seed=3)
    assert abs((ranks < 10).mean() - 10 / n) < 0.003
    excluded = random_ranks(n, np.zeros(pairs, dtype=np.int64), seed=3)
    assert excluded.max() <= n - 2  # one candidate fewer when the query item is excluded


def test_empty_catalog_text_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no character trigrams"):
        TfidfRanker(["", ""])

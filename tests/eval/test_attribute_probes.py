"""Attribute-relevance probes (itemsage.eval.attribute_probes): facets, queries, capped Recall@k."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from itemsage.eval.attribute_probes import Facets, attribute_queries, attribute_recall, capped_recall, query_text
from itemsage.eval.recall import RecallTable


def _facets() -> Facets:
    # items 0-2: men's navy shirts; 3: women's navy shirt; 4: no colour; 5: kind from the path.
    return Facets.from_columns(
        product_types=["Shirts", "Shirts", "shirts", "Shirts", "Shirts", ""],
        category_path=["", "", "", "", "", "Apparel > Topwear > Shirts"],
        colors=["Navy Blue", "navy blue, white", "Navy Blue", "Navy Blue", "", "Navy Blue"],
        size_type=["Men", "Men", "men", "Women", "Men", "Men"],
    )


def test_facets_group_items_by_kind_colour_and_gender() -> None:
    f = _facets()
    assert f.group[0] == f.group[1] == f.group[2] == f.group[5]  # case, extra colours, path kind
    assert f.group[3] != f.group[0] and f.group[3] >= 0
    assert f.group[4] == -1  # a missing facet takes no part
    assert f.names[f.group[0]] == ("shirts", "navy blue", "men")
    assert f.relevant_counts()[f.group[0]] == 4


def test_query_text_uses_the_synthetic_wording() -> None:
    rng = np.random.default_rng(0)
    texts = {query_text("shirts", "navy blue", "men", rng) for _ in range(50)}
    for t in texts:
        assert ("navy" in t) and ("shirt" in t) and ("men" in t), t
    assert len(texts) > 1  # synonyms, seeded


def test_queries_come_from_held_out_items_only() -> None:
    f = _facets()
    has_image = np.array([True, True, False, True, True, True])
    q = attribute_queries(f, held_out=np.array([0, 3, 4]), has_image=has_image, seed=0)
    # One text query per facet triple of the held-out items (item 4 has none).
    assert sorted(q["attr_search"].group.tolist()) == sorted({int(f.group[0]), int(f.group[3])})
    assert (q["attr_search"].item == -1).all() and len(q["attr_search"].texts) == 2
    # Item 3 is the only women's navy shirt: nothing else is relevant to it as a query item.
    assert q["attr_closeup"].item.tolist() == [0] and q["attr_item2item"].item.tolist() == [0]
    again = attribute_queries(f, held_out=np.array([0, 3, 4]), has_image=has_image, seed=0)
    assert again["attr_search"].texts == q["attr_search"].texts


def test_home_queries_are_users_whose_next_item_is_held_out() -> None:
    f = _facets()
    # (user, engaged item): user 7 engages held-out items 0 and 2 (one facet triple: one query)
    # and 3; user 8 engages only item 1, a training item (no query).
    users, items = np.array([7, 7, 7, 8]), np.array([0, 2, 3, 1])
    q = attribute_queries(f, np.array([0, 2, 3]), np.ones(6, bool), home_pairs=(users, items))["attr_home"]
    assert q.user is not None
    assert sorted(zip(q.user.tolist(), q.group.tolist())) == sorted([(7, int(f.group[0])), (7, int(f.group[3]))])
    assert (q.item == -1).all()  # nothing is excluded: the engaged item is one of the relevant
    assert "attr_home" not in attribute_queries(f, np.array([0]), np.ones(6, bool))


def test_capped_recall_is_precision_when_many_are_relevant_and_recall_when_few() -> None:
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
    relevant = torch.tensor([[True, False, True, True, True], [False, True, False, False, False]])
    r = capped_recall(scores, relevant, (2, 4))
    assert r[2].tolist() == [0.5, 1.0]  # row 0: 1 of the top 2; row 1: its only relevant item
    assert r[4].tolist() == [0.75, 1.0]


def test_capped_recall_ties_count_against_relevant_items_and_empty_rows_are_nan() -> None:
    scores = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    relevant = torch.tensor([[True, False, False, True], [False, False, False, False]])
    r = capped_recall(scores, relevant, (2,))
    assert r[2][0].item() == 0.0  # two non-relevant items share the top score with the relevant one
    assert math.isnan(r[2][1].item())
    with pytest.raises(ValueError, match="candidates"):
        capped_recall(scores, relevant, (5,))


def test_attribute_recall_excludes_the_query_item_and_table_averages() -> None:
    f = _facets()
    q = attribute_queries(f, np.array([0]), np.ones(6, bool))["attr_item2item"]
    # The query item scores highest; excluded, the next three (1, 2, 5) are its relevant items.
    scores = np.array([[9.0, 8.0, 7.0, 1.0, 0.5, 6.0]])
    r = attribute_recall(q, f, lambda rows: scores[rows], ks=(3,))
    assert r[3].tolist() == [1.0]
    table = RecallTable(ks=(3,))
    table.add_values("m", "attr_item2item/all", r)
    assert table.get("m", "attr_item2item/all", 3) == 1.0 and table.rows[("m", "attr_item2item/all")]["n"] == 1
    with pytest.raises(ValueError, match="k="):
        table.add_values("m", "attr_item2item/all", {10: r[3]})

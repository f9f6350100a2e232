"""Filtered search from Python: ``ItemSage.build_index`` keeps the catalog's filterable
attributes with the index, ``ItemSage.search`` takes the HTTP API's ``filters`` object."""

from __future__ import annotations

import numpy as np
import pytest

from itemsage.api import FilterError, ItemSage


def test_search_with_filters_returns_only_matching_items(sage: ItemSage, indexed) -> None:
    features, index = indexed
    items = features.items.set_index("item_id")
    gender = items["size_type"].value_counts().index[1]
    hits = sage.search(index, ["red dress", "black watch"], k=20, filters={"gender": gender})
    n_match = int((items["size_type"] == gender).sum())
    for row in hits:
        assert 0 < len(row) <= min(20, n_match)
        assert all(items.loc[i, "size_type"] == gender for i, _ in row)
        scores = [s for _, s in row]
        assert scores == sorted(scores, reverse=True)


def test_filtered_search_equals_exact_search_over_the_matching_items(sage: ItemSage, indexed) -> None:
    features, index = indexed
    ids, vectors = sage.embed_features(features)
    items = features.items.set_index("item_id")
    article = items["product_types"].value_counts().index[0]
    q = sage.embed_text_queries(["casual shoes"])
    keep = np.array([items.loc[i, "product_types"] == article for i in ids])
    scores = (q @ vectors.T)[0]
    scores[~keep] = -np.inf
    want = [ids[j] for j in np.argsort(-scores)[:5]]
    got = [i for i, _ in sage.search(index, q, k=5, filters={"product_type": [article]})[0]]
    assert len(set(got) & set(want)) >= 4  # IVF: near-exact, widened by the filter's selectivity


def test_bad_filters_raise_and_no_match_is_empty(sage: ItemSage, indexed) -> None:
    _, index = indexed
    with pytest.raises(FilterError, match="unknown filter attribute 'size'"):
        sage.search(index, "shoes", filters={"size": "M"})
    with pytest.raises(ValueError, match="keyword attribute"):
        sage.search(index, "shoes", filters={"gender": 3})
    assert sage.search(index, ["shoes", "bags"], filters={"gender": "nobody"}) == [[], []]

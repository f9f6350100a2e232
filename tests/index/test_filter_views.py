"""Filter views and cached selections: a filter's own copy of its items, following every write.

A view answers as the selector paths would (exact views: the brute-force filtered top-k; IVF
views: recall >= 0.95 against it), and after adds, removes and attribute changes it holds exactly
the items a fresh selection of its filter holds. Cached selections and parsed filters are reused
until a write, and never confuse filters that parse differently.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from tests.index.test_index_filters import SPECS, attribute_columns, exact_filtered

from itemsage.config import FilterSearchConfig
from itemsage.index import build_index
from itemsage.index.attributes import AttributeTable
from itemsage.index.filters import FilterError

POLICY = FilterSearchConfig(exact_max_matches=60, view_exact_max=100)


def indexed(catalog: Any, n: int, policy: FilterSearchConfig = POLICY, spec: str = "IVF64,Flat") -> Any:
    cols = attribute_columns(n)
    index = build_index(catalog.x[:n], catalog.ids[:n], spec, use_gpu=False)
    index.set_search_params(nprobe=4)
    labels = index.idmap.lookup(index.idmap.item_ids())
    index.attach_attributes(AttributeTable.from_columns(SPECS, labels, cols, policy))
    return index, cols


def view_items(index: Any, filters: dict) -> set[int]:
    sel = index.select(filters)
    view = index._views.get(sel.filter)
    assert view is not None, filters
    return set(view.members)


def selected(index: Any, filters: dict) -> set[int]:
    return set(index.select(filters).labels().tolist())


def test_views_answer_like_exact_filtered_search(catalog: Any) -> None:
    """Single keyword values are prebuilt; a conjunction gets its view on first use. Small views
    are exact (the brute-force answer), large ones an IVF with recall >= 0.95 against it."""
    index, cols = indexed(catalog, len(catalog.ids))
    views = index._views
    assert views is not None and len(views) > 0  # prebuilt: the values above view_exact_max
    for filters in ({"gender": "Boys"}, {"gender": "Women"}, {"gender": ["Men", "Unisex"], "color": "Red"}):
        sel = index.select(filters)
        got, _ = index.search(catalog.queries, 10, where=sel)
        view = views.get(sel.filter)
        assert view is not None and view.count == sel.count
        want = exact_filtered(catalog, cols, filters, 10)
        if view.exact:
            assert got == want
        else:
            recall = np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got, want)])
            assert recall >= 0.95, (filters, recall)


def test_one_view_per_filter_however_it_is_written(catalog: Any) -> None:
    index, _ = indexed(catalog, 1000)
    a = index.select({"gender": ["Unisex", "Men"], "color": "Red"})
    b = index.select({"color": ["Red"], "gender": ["Men", "Unisex"]})
    assert a.filter == b.filter
    index.search(catalog.queries[:1], 5, where=a)
    before = len(index._views)
    index.search(catalog.queries[:1], 5, where=b)
    assert len(index._views) == before


# IVF views with bfloat16 codes (re-scored), IVF views with float32 codes, exact views.
@pytest.mark.parametrize(("exact_max", "bf16_min"), [(100, 200), (100, 5000), (5000, 5000)])
def test_views_follow_adds_removes_and_attribute_changes(catalog: Any, exact_max: int, bf16_min: int) -> None:
    policy = FilterSearchConfig(exact_max_matches=60, view_exact_max=exact_max, view_bf16_min_items=bf16_min)
    n = 2500
    index, _ = indexed(catalog, n, policy)
    filters = [{"gender": "Women"}, {"gender": "Boys"}, {"gender": "Women", "color": "Red"}]
    for f in filters:  # views exist before the writes
        index.search(catalog.queries[:1], 10, where=index.select(f))
    # New items: vector first, then attributes (as the live index applies an upsert) ...
    new_ids = catalog.ids[n : n + 30]
    index.add(new_ids, catalog.x[n : n + 30])
    new_labels = index.idmap.lookup(new_ids).tolist()
    for label in new_labels[:20]:
        index.attributes.set_item(label, {"size_type": "Women", "colors": "Red"})
    # ... and attributes before the vector (a label can get its attributes first).
    late = int(index.idmap.assign(["late-item"])[0])
    index.attributes.set_item(late, {"size_type": "Boys"})
    index._add(catalog.x[n + 40][None, :], np.array([late], np.int64))
    # An item changes gender, another is deleted.
    women = sorted(selected(index, {"gender": "Women"}) - set(new_labels))
    index.attributes.set_item(women[0], {"size_type": "Boys", "colors": "Blue"})
    gone = index.idmap.labels_to_ids(np.array([[women[1]]]))[0]
    index.remove(gone)
    for f in filters:
        assert view_items(index, f) == selected(index, f), f
    assert set(new_labels[:20]) <= view_items(index, {"gender": "Women", "color": "Red"})
    assert late in view_items(index, {"gender": "Boys"}) and women[0] in view_items(index, {"gender": "Boys"})
    assert women[1] not in view_items(index, {"gender": "Women"})
    # What a search returns follows too: the new Women+Red items find themselves.
    got, _ = index.search(catalog.x[n : n + 20], 1, where=index.select({"gender": "Women", "color": "Red"}))
    assert [g[0] for g in got] == new_ids[:20]


def test_selection_is_cached_until_a_write(catalog: Any) -> None:
    index, _ = indexed(catalog, 500)
    a = index.select({"gender": "Women"})
    assert index.select({"gender": "Women"}) is a  # same filter, no write: the same selection
    params = a.search_parameters()
    assert a.search_parameters() is params
    label = int(sorted(set(range(500)) - set(a.labels().tolist()))[0])
    index.attributes.set_item(label, {"size_type": "Women"})
    b = index.select({"gender": "Women"})
    assert b is not a and b.count == a.count + 1 and label in b.labels().tolist()


def test_parsed_filters_are_told_apart_by_type(catalog: Any) -> None:
    """1, 1.0 and True hash alike in Python; a cached parse must not hand one's filter to another."""
    index, _ = indexed(catalog, 300)
    assert index.select({"price": 1}) is not None
    for bad in ({"price": True}, {"price": "1"}, {"gender": 1}):
        with pytest.raises(FilterError):
            index.select(bad)
        with pytest.raises(FilterError):  # refused again, never served from a cache
            index.select(bad)


def test_views_stay_within_their_memory_budget(catalog: Any) -> None:
    one = 200 * (catalog.x.shape[1] * 4 + 8)  # bytes of a view of ~200 items
    policy = FilterSearchConfig(view_prebuild=False, view_max_bytes=3 * one)
    index, _ = indexed(catalog, 3000, policy)
    for price in range(0, 200, 20):  # ten range filters of ~15% of 3000 items... each ~450 items
        sel = index.select({"price": {"gte": price, "lt": price + 5}})
        index.search(catalog.queries[:1], 5, where=sel)
        assert index._views.nbytes <= policy.view_max_bytes
    assert 0 < len(index._views) < 10


def test_no_views_when_switched_off(catalog: Any) -> None:
    index, cols = indexed(catalog, 1000, FilterSearchConfig(exact_max_matches=60, views=False))
    assert index._views is None
    got, _ = index.search(catalog.queries[:5], 10, where=index.select({"gender": "Boys"}))
    assert got == exact_filtered(
        type(catalog)(x=catalog.x[:1000], ids=catalog.ids[:1000], queries=catalog.queries[:5]),
        cols,
        {"gender": "Boys"},
        10,
    )


def test_compact_views_rank_and_score_exactly(catalog: Any) -> None:
    """A bfloat16 view re-scores its candidates from the float32 vectors: the scores returned are
    the exact inner products of the items returned, best first, and recall stays >= 0.95."""
    policy = FilterSearchConfig(exact_max_matches=60, view_exact_max=100, view_bf16_min_items=200)
    index, cols = indexed(catalog, len(catalog.ids), policy)
    sel = index.select({"gender": "Women"})
    got, scores = index.search(catalog.queries, 10, where=sel)
    assert index._views.get(sel.filter).codes == "bf16"
    row_of = {i: r for r, i in enumerate(catalog.ids)}
    for qi, (ids, s) in enumerate(zip(got, scores)):
        exact = catalog.x[[row_of[i] for i in ids]] @ catalog.queries[qi]
        assert np.allclose(s[: len(ids)], exact, atol=1e-5) and np.all(np.diff(s[: len(ids)]) <= 1e-6)
    want = exact_filtered(catalog, cols, {"gender": "Women"}, 10)
    assert np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got, want)]) >= 0.95


def test_large_filters_get_no_view_on_a_request(catalog: Any) -> None:
    """A filter above view_lazy_max_items is not made to wait for a view build: the selector path
    answers it (and a prebuilt view of a single value still serves it)."""
    policy = FilterSearchConfig(exact_max_matches=60, view_prebuild=False, view_lazy_max_items=100)
    index, cols = indexed(catalog, 1000, policy)
    sel = index.select({"gender": "Women"})
    assert sel.count > 100
    got, _ = index.search(catalog.queries[:3], 10, where=sel)
    assert index._views.get(sel.filter) is None and all(len(g) == 10 for g in got)
    small = index.select({"gender": "Boys"})
    index.search(catalog.queries[:1], 10, where=small)
    assert index._views.get(small.filter) is not None


def test_live_upserts_and_deletes_reach_cached_selections_and_views(catalog: Any) -> None:
    """Through the live index (change log order, under its lock): an upsert's attributes make the
    cached selection stale and put the item in its filter's view; an update moves it to another
    view; a delete takes it out of every view."""
    from itemsage.index.changelog import Change
    from itemsage.index.live import LiveIndex

    n = 2000
    cols = attribute_columns(n)
    index = build_index(catalog.x[:n], catalog.ids[:n], "IVF64,Flat", use_gpu=False, model_version="1")
    labels = index.idmap.lookup(index.idmap.item_ids())
    index.attach_attributes(AttributeTable.from_columns(SPECS, labels, cols, POLICY))
    live = LiveIndex(index, "b1", "1")
    boys, men = {"gender": "Boys"}, {"gender": "Men"}
    before = live.select(boys)
    live.search(catalog.queries[:1], 10, where=before)  # the Boys view exists, the selection is cached
    vec = catalog.x[n]

    def upsert(seq: int, gender: str) -> Change:
        fields = {"title": "t", "size_type": gender, "colors": "Red"}
        return Change(seq, "upsert", "live-item", fields, (), "", vec, "1", 0.0)  # type: ignore[arg-type]

    live.apply([upsert(1, "Boys")])
    sel = live.select(boys)
    assert sel is not before and sel.count == before.count + 1
    got, _ = live.search(vec[None, :], 1, where=sel)
    assert got == [["live-item"]]
    label = int(index.idmap.lookup(["live-item"])[0])
    assert label in view_items(index, boys)
    live.apply([upsert(2, "Men")])  # an update: new label, other gender
    assert "live-item" not in live.search(vec[None, :], 10, where=live.select(boys))[0][0]
    assert live.search(vec[None, :], 1, where=live.select(men))[0] == [["live-item"]]
    new_label = int(index.idmap.lookup(["live-item"])[0])
    assert label not in view_items(index, boys) and new_label in view_items(index, men)
    live.apply([Change(3, "delete", "live-item", {}, (), "", None, None, 0.0)])  # type: ignore[arg-type]
    assert new_label not in view_items(index, men)
    assert "live-item" not in live.search(vec[None, :], 10, where=live.select(men))[0][0]
    for f in (boys, men):
        assert view_items(index, f) == selected(index, f)

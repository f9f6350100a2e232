"""Filtered search: the selector is applied inside every index kind, and the answers are right.

Every returned item satisfies the filter; a filter matching k' < k items returns exactly those;
filtered IVF reaches the recall of exact filtered search; the attribute table survives save/load
and follows live updates (set_item / remove_item, index.remove).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from itemsage.config import FilterSearchConfig
from itemsage.index import build_index, load_index
from itemsage.index.attributes import AttributeTable
from itemsage.index.filtered import uses_exact
from itemsage.index.filters import AttributeSpec, FilterError, parse_filter

SPECS = {
    "gender": AttributeSpec("gender", "size_type", "keyword"),
    "color": AttributeSpec("color", "colors", "keyword_list"),
    "price": AttributeSpec("price", "price", "number"),
}
GENDERS = ["Men", "Women", "Unisex", "Boys"]
COLORS = ["Red", "Blue", "Black", "White", "Green"]


def attribute_columns(n: int, seed: int = 0) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    # Skewed: Boys is rare (1%), so one equality filter runs the exact path.
    gender = rng.choice(GENDERS, size=n, p=[0.495, 0.395, 0.10, 0.01]).tolist()
    colors = [", ".join(rng.choice(COLORS, size=rng.integers(1, 3), replace=False)) for _ in range(n)]
    price = np.round(rng.uniform(1, 200, size=n), 2).tolist()
    price[::50] = [None] * len(price[::50])  # some items have no price
    return {"size_type": gender, "colors": colors, "price": price}


def matches(cols: dict[str, list], row: int, filters: dict) -> bool:
    """The filter evaluated the slow, obvious way on one catalog row (the reference)."""
    for name, want in filters.items():
        field = SPECS[name].field
        v = cols[field][row]
        if SPECS[name].type == "number":
            if v is None:
                return False
            if isinstance(want, dict):
                ok = all({"gte": v >= b, "gt": v > b, "lte": v <= b, "lt": v < b}[op] for op, b in want.items())
            else:
                ok = v in (want if isinstance(want, list) else [want])
        else:
            have = {p.strip() for p in v.split(",")} if SPECS[name].type == "keyword_list" else {v}
            ok = bool(have & set(want if isinstance(want, list) else [want]))
        if not ok:
            return False
    return True


def exact_filtered(cat: Any, cols: dict[str, list], filters: dict, k: int) -> list[list[str]]:
    keep = np.array([matches(cols, r, filters) for r in range(len(cat.ids))])
    scores = cat.queries @ cat.x.T
    scores[:, ~keep] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[cat.ids[j] for j in row if np.isfinite(scores[q, j])] for q, row in enumerate(order)]


# At 3,000 items the default threshold (measured at 1M) would send every filter to the exact
# path; 60 items sends the rare "Boys" (1%) there and keeps every other filter on the selector path.
POLICY = FilterSearchConfig(exact_max_matches=60)


def with_attributes(index, cols):  # noqa: ANN001, ANN201
    labels = index.idmap.lookup(index.idmap.item_ids())
    index.attach_attributes(AttributeTable.from_columns(SPECS, labels, cols, POLICY))
    return index


FILTERS = [
    {"gender": "Women"},
    {"gender": ["Men", "Unisex"], "color": "Red"},
    {"color": ["Green", "White"], "price": {"gte": 20, "lt": 80}},
    {"gender": "Boys"},  # ~1%: the exact path
    {"price": {"gt": 199.5}},  # a handful of items: fewer than k
]


@pytest.mark.parametrize("spec", ["Flat", "IVF64,Flat", "HNSW16", "IVF64,PQ8", "TorchExact"])
def test_every_result_satisfies_the_filter(catalog: Any, spec: str) -> None:
    cols = attribute_columns(len(catalog.ids))
    index = with_attributes(build_index(catalog.x, catalog.ids, spec, use_gpu=False), cols)
    row_of = {i: r for r, i in enumerate(catalog.ids)}
    for filters in FILTERS:
        ids, scores = index.search(catalog.queries[:20], 10, where=index.select(filters))
        n_match = sum(matches(cols, r, filters) for r in range(len(catalog.ids)))
        for row_ids, row_scores in zip(ids, scores):
            assert all(matches(cols, row_of[i], filters) for i in row_ids), (spec, filters)
            assert len(set(row_ids)) == len(row_ids)
            assert np.all(np.diff(row_scores[: len(row_ids)]) <= 1e-6)  # best first
            if spec in ("Flat", "TorchExact"):  # exact: always fills k (ANN may find fewer)
                assert len(row_ids) == min(10, n_match), (spec, filters, len(row_ids), n_match)


def test_fewer_matches_than_k_returns_exactly_those(catalog: Any) -> None:
    cols = attribute_columns(len(catalog.ids))
    cols["size_type"][5] = cols["size_type"][77] = cols["size_type"][2999] = "Girls"
    for spec in ("IVF64,Flat", "HNSW16", "Flat", "IVF64,PQ8", "TorchExact"):
        index = with_attributes(build_index(catalog.x, catalog.ids, spec, use_gpu=False), cols)
        ids, scores = index.search(catalog.queries[:5], 10, where=index.select({"gender": "Girls"}))
        for row, s in zip(ids, scores):
            assert sorted(row) == sorted(catalog.ids[i] for i in (5, 77, 2999))
            assert np.isinf(s[3:]).all()


def test_no_match_is_an_empty_result(catalog: Any) -> None:
    index = with_attributes(build_index(catalog.x, catalog.ids, "IVF64,Flat", use_gpu=False), attribute_columns(3000))
    ids, _ = index.search(catalog.queries[:3], 10, where=index.select({"gender": "Nobody"}))
    assert ids == [[], [], []]
    ids, _ = index.search(catalog.queries[:3], 10, where=index.select({"price": {"gte": 1e6}}))
    assert ids == [[], [], []]


def test_filtered_ivf_recall_matches_exact_filtered_search(catalog: Any) -> None:
    """Recall@10 of IVF with the selector (nprobe widened by selectivity) vs exact filtered search.

    With a fixed nprobe and a post-filter, a 10% filter would keep about one of ten results; the
    selector inside the search keeps the recall of the unfiltered index."""
    cols = attribute_columns(len(catalog.ids))
    index = with_attributes(build_index(catalog.x, catalog.ids, "IVF64,Flat", use_gpu=False), cols)
    index.set_search_params(nprobe=24)  # unfiltered recall@10: 0.98
    for filters in ({"gender": "Women"}, {"gender": "Unisex"}, {"gender": ["Men", "Unisex"], "color": "Red"}):
        sel = index.select(filters)
        assert sel is not None and not uses_exact(sel, index.ntotal, 10, index.attributes.policy)
        got, _ = index.search(catalog.queries, 10, where=sel)
        want = exact_filtered(catalog, cols, filters, 10)
        recall = np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got, want)])
        assert recall >= 0.95, (filters, recall)


def test_threshold_switches_to_exact_search(catalog: Any) -> None:
    """At most ``exact_max_matches`` matches: the answer is exact even on a coarse IVF (nprobe=1)."""
    cols = attribute_columns(len(catalog.ids))
    index = with_attributes(build_index(catalog.x, catalog.ids, "IVF64,Flat", use_gpu=False), cols)
    index.set_search_params(nprobe=1)
    filters = {"gender": "Boys"}
    sel = index.select(filters)
    assert sel is not None and uses_exact(sel, index.ntotal, 10, POLICY)
    got, _ = index.search(catalog.queries, 10, where=sel)
    assert got == exact_filtered(catalog, cols, filters, 10)


def test_bad_filters_say_what_is_wrong() -> None:
    cases = [
        ({"colour": "Red"}, "unknown filter attribute 'colour'; filterable: color, gender, price"),
        ({"price": "cheap"}, "number attribute"),
        ({"gender": 3}, "keyword attribute"),
        ({"gender": {"gte": 1}}, "ranges apply to number attributes only"),
        ({"price": {"from": 1}}, "a range takes gte, gt, lte, lt"),
        ({"price": {"gte": 10, "lte": 5}}, "the range is empty"),
        ({"color": []}, "the list of values is empty"),
        ({"price": True}, "number attribute"),
        ({"price": float("nan")}, "number attribute"),
        ({"price": {"lt": 10**400}}, "must be a finite number"),
        ({"gender": ["Men", {"x": 1}]}, "keyword attribute"),
    ]
    for filters, message in cases:
        with pytest.raises(FilterError, match=message.replace("(", r"\(")):
            parse_filter(filters, SPECS)


def test_index_without_attributes_refuses_filters(catalog: Any) -> None:
    index = build_index(catalog.x[:100], catalog.ids[:100], "Flat", use_gpu=False)
    assert index.select(None) is None and index.select({}) is None
    with pytest.raises(FilterError, match="built without filterable attributes"):
        index.select({"gender": "Women"})


def test_attributes_saved_and_loaded_with_the_index(catalog: Any, tmp_path: Path) -> None:
    cols = attribute_columns(len(catalog.ids))
    index = with_attributes(build_index(catalog.x, catalog.ids, "IVF64,Flat", use_gpu=False), cols)
    before, _ = index.search(catalog.queries[:10], 10, where=index.select(FILTERS[1]))
    index.save(tmp_path / "ix")
    loaded = load_index(tmp_path / "ix", use_gpu=False)
    assert loaded.attributes is not None
    after, _ = loaded.search(catalog.queries[:10], 10, where=loaded.select(FILTERS[1]))
    assert after == before
    assert loaded.attributes.facets() == index.attributes.facets()
    (tmp_path / "ix" / "attributes.npz").write_bytes(b"garbage")
    with pytest.raises(Exception, match="corrupt"):
        load_index(tmp_path / "ix", use_gpu=False)


def test_live_updates_change_what_a_filter_selects(catalog: Any) -> None:
    cols = attribute_columns(len(catalog.ids))
    index = with_attributes(build_index(catalog.x, catalog.ids, "IVF64,Flat", use_gpu=False), cols)
    table = index.attributes
    label = int(index.idmap.lookup([catalog.ids[0]])[0])
    table.set_item(label, {"size_type": "Girls", "colors": "Teal", "price": 5.0})
    ids, _ = index.search(catalog.queries[:1], 10, where=index.select({"gender": "Girls", "color": "Teal"}))
    assert ids == [[catalog.ids[0]]]
    assert {"value": "Girls", "count": 1} in next(f for f in table.facets() if f["name"] == "gender")["values"]
    # A new item: added to the index, then given attributes, past the table's capacity.
    new = catalog.x[1] * -1
    index.add(["new-item"], new[None, :])
    table.set_item(int(index.idmap.lookup(["new-item"])[0]), {"size_type": "Girls"})
    ids, _ = index.search(new[None, :], 10, where=index.select({"gender": "Girls"}))
    assert ids[0][0] == "new-item" and set(ids[0]) == {"new-item", catalog.ids[0]}
    index.remove([catalog.ids[0]])
    ids, _ = index.search(catalog.queries[:1], 10, where=index.select({"gender": "Girls"}))
    assert ids == [["new-item"]]
    table.remove_item(int(index.idmap.lookup(["new-item"])[0]))
    ids, _ = index.search(catalog.queries[:1], 10, where=index.select({"gender": "Girls"}))
    assert ids == [[]]


def test_any_json_filter_is_parsed_or_refused_clearly(catalog: Any) -> None:
    """Whatever JSON a client sends as ``filters``: a selection or a FilterError, nothing else."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    index = with_attributes(
        build_index(catalog.x[:200], catalog.ids[:200], "Flat", use_gpu=False), attribute_columns(200)
    )
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    values = st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
        max_leaves=6,
    )
    keys = st.sampled_from(["gender", "color", "price", "size"]) | st.text(max_size=6)

    @settings(max_examples=300, deadline=None)
    @given(
        st.dictionaries(
            keys, values | st.dictionaries(st.sampled_from(["gte", "gt", "lte", "lt"]), scalars, max_size=2), max_size=3
        )
    )
    def check(filters: dict) -> None:
        try:
            sel = index.select(filters)
        except FilterError:
            return
        ids, _ = index.search(catalog.queries[:1], 5, where=sel)
        assert len(ids[0]) <= 5

    check()


def test_selecting_while_a_writer_grows_the_table(catalog: Any) -> None:
    """Searches running while set_item grows the table (new labels past its capacity) never fail."""
    import threading

    index = with_attributes(build_index(catalog.x, catalog.ids, "IVF64,Flat", use_gpu=False), attribute_columns(3000))
    table = index.attributes
    errors: list[BaseException] = []
    done = threading.Event()

    def write() -> None:
        try:
            for label in range(3000, 40_000, 7):
                table.set_item(label, {"size_type": "Women", "colors": "Red", "price": 1.0})
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)
        finally:
            done.set()

    writer = threading.Thread(target=write)
    writer.start()
    searches = 0
    while not done.is_set() or searches == 0:
        sel = index.select({"gender": ["Women", "Men"], "price": {"lt": 150}})
        ids, _ = index.search(catalog.queries[:1], 10, where=sel)
        assert ids[0]
        searches += 1
    writer.join()
    assert not errors and searches > 0
    assert table.select(parse_filter({"price": {"lte": 1.0}}, SPECS)).count >= (40_000 - 3000) // 7


def test_filter_correlated_with_the_vectors_keeps_recall(catalog: Any) -> None:
    """An attribute that follows the embedding (like gender words in titles): the lists nearest a
    query hold few matching items, so nprobe must follow where the matches are, not their share."""
    x0 = catalog.x[:, 0]
    cols = attribute_columns(len(catalog.ids))
    cols["size_type"] = ["A" if v > np.quantile(x0, 0.9) else "B" for v in x0]  # 10%, one side
    index = with_attributes(build_index(catalog.x, catalog.ids, "IVF64,Flat", use_gpu=False), cols)
    index.set_search_params(nprobe=16)
    queries = catalog.queries[catalog.queries[:, 0] < np.median(catalog.queries[:, 0])]  # the other side
    filters = {"gender": "A"}
    got, _ = index.search(queries, 10, where=index.select(filters))
    sub = type(catalog)(x=catalog.x, ids=catalog.ids, queries=queries)
    want = exact_filtered(sub, cols, filters, 10)
    recall = np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got, want)])
    assert recall >= 0.95, recall


def test_items_added_later_are_found_by_the_probed_filter_search(catalog: Any) -> None:
    """New items (add + set_item) count in the per-list statistics that pick IVF's lists."""
    cols = attribute_columns(2700)
    index = with_attributes(build_index(catalog.x[:2700], catalog.ids[:2700], "IVF64,Flat", use_gpu=False), cols)
    index.set_search_params(nprobe=16)
    assert index.select({"gender": "Men"}) is not None  # counts cached before the additions
    new_ids = catalog.ids[2700:]
    index.add(new_ids, catalog.x[2700:])
    for label in index.idmap.lookup(new_ids).tolist():
        index.attributes.set_item(label, {"size_type": "New"})
    sel = index.select({"gender": "New"})
    assert sel is not None and not uses_exact(sel, index.ntotal, 10, POLICY)  # the selector path
    got, _ = index.search(catalog.x[2700:2750], 10, where=sel)
    assert all(set(row) <= set(new_ids) for row in got)
    assert np.mean([row[0] == i for row, i in zip(got, new_ids[:50])]) >= 0.9  # each finds itself


def test_exact_path_follows_adds_and_removes(catalog: Any) -> None:
    """The exact path scores a label-ordered copy of the vectors; it follows the index's writes,
    and its answers are the brute-force filtered top-k, with the copy or without it."""
    n = 2500
    cols = attribute_columns(n)
    answers = []
    for copy in (True, False):
        index = build_index(catalog.x[:n], catalog.ids[:n], "IVF64,Flat", use_gpu=False)
        index.set_search_params(nprobe=1)
        policy = FilterSearchConfig(exact_max_matches=60, label_vectors=copy)
        labels = index.idmap.lookup(index.idmap.item_ids())
        index.attach_attributes(AttributeTable.from_columns(SPECS, labels, cols, policy))
        assert (index._label_vectors is not None) == copy
        new_ids = catalog.ids[n : n + 20]
        index.add(new_ids, catalog.x[n : n + 20])
        for label in index.idmap.lookup(new_ids).tolist():
            index.attributes.set_item(label, {"size_type": "Boys"})
        gone = [i for r, i in enumerate(catalog.ids[:n]) if cols["size_type"][r] == "Boys"][:5]
        index.remove(gone)
        sel = index.select({"gender": "Boys"})
        assert sel is not None and uses_exact(sel, index.ntotal, 10, policy)
        got, scores = index.search(catalog.queries, 10, where=sel)
        keep = [r for r in range(n + 20) if r >= n or (cols["size_type"][r] == "Boys" and catalog.ids[r] not in gone)]
        s = catalog.queries @ catalog.x[keep].T
        want = [[catalog.ids[keep[j]] for j in row] for row in np.argsort(-s, axis=1, kind="stable")[:, :10]]
        assert got == want
        assert np.allclose(scores, -np.sort(-s, axis=1)[:, :10], atol=1e-5)
        assert index._probe is not None and index._probe.sizes.sum() == index.ntotal  # list sizes follow
        answers.append(got)
    assert answers[0] == answers[1]


def test_label_vectors_grow_remove_and_drop_what_the_index_lacks() -> None:
    from itemsage.index.label_vectors import LabelVectors

    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 4)).astype(np.float32)
    lv = LabelVectors(4)
    lv.add(x[:3], np.array([0, 1, 2]))
    lv.add(x[3:], np.arange(100, 107))  # past the capacity: grows
    assert len(lv) == 10 and lv.nbytes >= 107 * 4 * 4
    lv.remove(np.array([1, 103, 10_000]))  # an unknown label is ignored
    got, held = lv.gather(np.array([0, 1, 2, 50, 103, 106, 5000]))
    assert held.tolist() == [0, 2, 106]
    assert np.array_equal(got, x[[0, 2, 9]])
    with pytest.raises(ValueError, match="non-negative"):
        lv.add(x[:1], np.array([-1]))


def test_probed_ivf_search_answers_a_batch_as_one_query_at_a_time(catalog: Any) -> None:
    """The per-list probing runs every query of a batch in one FAISS call (rows probing fewer
    lists padded): the same answers as one query per call."""
    cols = attribute_columns(len(catalog.ids))
    index = with_attributes(build_index(catalog.x, catalog.ids, "IVF64,Flat", use_gpu=False), cols)
    index.set_search_params(nprobe=4)
    for filters in FILTERS[:3]:
        sel = index.select(filters)
        assert sel is not None and not uses_exact(sel, index.ntotal, 10, POLICY)
        batch, batch_scores = index.search(catalog.queries[:30], 10, where=sel)
        one = [index.search(catalog.queries[i : i + 1], 10, where=sel) for i in range(30)]
        assert batch == [ids[0] for ids, _ in one]
        assert np.allclose(batch_scores, np.concatenate([s for _, s in one]))


def test_live_snapshot_keeps_the_filter_attributes(catalog: Any, tmp_path: Path) -> None:
    """A live index's snapshot saves the filter bitmaps with the live items' attributes: a replica
    restarted from it filters as before."""
    from itemsage.index.changelog import Change
    from itemsage.index.live import LiveIndex

    n = 500
    index = build_index(catalog.x[:n], catalog.ids[:n], "IVF16,Flat", use_gpu=False, model_version="1")
    with_attributes(index, attribute_columns(n))
    live = LiveIndex(index, "b1", "1")
    v = catalog.x[n]
    fields = {"title": "t", "size_type": "Girls", "colors": "Teal", "price": 3.0}
    live.apply([Change(1, "upsert", "new-item", fields, (), "", v, "1", 0.0)])  # type: ignore[arg-type]
    live.save(tmp_path / "snap")
    back = LiveIndex.load(tmp_path / "snap")
    assert back.attributes is not None
    for filters in ({"gender": "Girls", "color": "Teal"}, FILTERS[1]):
        want, _ = live.search(catalog.queries[:5], 10, where=live.select(filters))
        got, _ = back.search(catalog.queries[:5], 10, where=back.select(filters))
        assert got == want
    assert got == want and back.search(v[None, :], 1, where=back.select({"gender": "Girls"}))[0] == [["new-item"]]

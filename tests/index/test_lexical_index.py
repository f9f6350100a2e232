"""The lexical index (itemsage.index.lexical) and the search modes (itemsage.index.hybrid): BM25
order, saved and versioned with the dense index, adds and deletes, filters by the same bitmap,
reciprocal-rank fusion, and a live index whose writes are found by their words, restored from a
snapshot and compacted."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from itemsage.config import FilterableAttribute, HybridConfig
from itemsage.index import CorruptIndexError, build_index, load_index
from itemsage.index.attributes import AttributeTable, specs_from_config
from itemsage.index.changelog import Change, ItemWrite, open_changelog
from itemsage.index.hybrid import SearchModeError, lexical_search, resolve_mode, rrf
from itemsage.index.lexical import LEXICAL_FILE, LexicalIndex, item_text
from itemsage.index.live import LiveIndex, SnapshotStore, catch_up, compact, restore

DIM = 8
WORDS = ["red", "blue", "green", "shirt", "dress", "shoes", "linen", "wool", "cotton", "boots", "scarf", "hat"]


def catalog(n: int = 120, seed: int = 0) -> tuple[list[str], list[str], np.ndarray, list[str]]:
    """ids, titles of 2-4 words, unit vectors, and a gender per item."""
    rng = np.random.default_rng(seed)
    ids = [f"item-{i}" for i in range(n)]
    titles = [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 5)), replace=False)) for _ in range(n)]
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    genders = ["Women" if i % 3 == 0 else "Men" for i in range(n)]
    return ids, titles, x / np.linalg.norm(x, axis=1, keepdims=True), genders


def indexed(spec: str = "Flat", n: int = 120) -> tuple[Any, list[str]]:
    ids, titles, x, genders = catalog(n)
    index = build_index(x, ids, spec, use_gpu=False, model_version="1")
    labels = index.idmap.lookup(ids)
    index.attach_lexical(LexicalIndex(["title"], dict(zip(labels.tolist(), titles))))
    specs = specs_from_config({"gender": FilterableAttribute(field="size_type")})
    index.attach_attributes(AttributeTable.from_columns(specs, labels, {"size_type": genders}))
    return index, titles


def bm25_ranking(titles: list[str], query: str, keep: list[bool] | None = None) -> list[tuple[int, float]]:
    """BM25 (k1=1.2, b=0.75, Lucene idf) by hand over the kept documents: the reference order."""
    docs = [t.split() for t in titles]
    n = len(docs)
    avg = sum(len(d) for d in docs) / n
    out = []
    for i, d in enumerate(docs):
        if keep is not None and not keep[i]:
            continue
        s = 0.0
        for w in dict.fromkeys(query.split()):
            df = sum(w in dd for dd in docs)
            tf = d.count(w)
            if tf:
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                s += idf * tf * 2.2 / (tf + 1.2 * (1 - 0.75 + 0.75 * len(d) / avg))
        if s > 0:
            out.append((i, s))
    return sorted(out, key=lambda t: -t[1])


# ------------------------------------------------------------------------------- the BM25 index


def test_bm25_order_and_analysis() -> None:
    titles = ["Red linen shirt", "the red red dress", "blue wool scarf", "Shirt of green cotton"]
    lex = LexicalIndex(["title"], dict(enumerate(titles)))
    assert lex.analyze("The RED-shirt, a 2x x") == ["red", "shirt", "2x"]  # lower case, \w\w+, stop words out
    labels, scores = lex.search("red shirt", 10)
    assert labels.tolist()[:1] == [0] and set(labels.tolist()) == {0, 1, 3}
    assert np.all(np.diff(scores) <= 0)
    expect = bm25_ranking([t.lower().replace("the ", "").replace("of ", "") for t in titles], "red shirt")
    assert [i for i, _ in expect] == labels.tolist()
    assert np.allclose([s for _, s in expect], scores, rtol=1e-3)
    assert lex.search("the of a", 10)[0].size == 0  # stop words only: nothing matches
    assert lex.search("zebra", 10)[0].size == 0
    with pytest.raises(ValueError, match="positive integer"):
        lex.search("red", 0)


def test_add_delete_and_update_by_label() -> None:
    lex = LexicalIndex(["title"], {1: "red shirt", 2: "blue dress"})
    lex.add([7], ["red boots"])
    assert set(lex.search("red", 10)[0].tolist()) == {1, 7}
    lex.remove([1])
    assert lex.search("red", 10)[0].tolist() == [7]
    lex.stage(add=[(7, "green hat")])  # the same label again: replaced, not duplicated
    assert lex.search("red", 10)[0].size == 0  # staged but a search commits first
    assert lex.search("hat", 10)[0].tolist() == [7] and len(lex) == 2
    lex.remove([999])  # unknown: nothing happens
    assert len(lex) == 2


def test_removing_from_the_dense_index_removes_the_words() -> None:
    index, titles = indexed("IVF4,Flat")
    victim = next(i for i, t in enumerate(titles) if "red" in t.split())
    index.remove([f"item-{victim}"])
    ids, _ = lexical_search(index, ["red"], 200)
    assert f"item-{victim}" not in ids[0] and ids[0]


def test_saved_and_versioned_with_the_dense_index(tmp_path: Path) -> None:
    from itemsage.serve.core import index_version_of

    index, titles = indexed()
    a = index.save(tmp_path / "a")
    meta = json.loads((a / "metadata.json").read_text())
    assert LEXICAL_FILE in meta["files"]  # checksummed with the vectors, part of the version hash
    loaded = load_index(a, expected_model_version="1", use_gpu=False)
    assert loaded.lexical is not None and loaded.lexical.fields == ("title",)
    for q in ("red shirt", "wool", "green linen boots"):
        assert lexical_search(loaded, [q], 10)[0] == lexical_search(index, [q], 10)[0]
    # Same vectors, one word changed: another index version.
    assert index.lexical is not None
    index.lexical.add([int(index.idmap.lookup(["item-0"])[0])], ["a different title"])
    b = index.save(tmp_path / "b")
    assert index_version_of(a, None) != index_version_of(b, None)
    # A damaged lexical file is refused like a damaged vector file.
    raw = bytearray((a / LEXICAL_FILE).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (a / LEXICAL_FILE).write_bytes(bytes(raw))
    with pytest.raises(CorruptIndexError, match=LEXICAL_FILE):
        load_index(a, use_gpu=False)


def test_an_index_without_words_answers_dense_by_default_only() -> None:
    ids, _, x, _ = catalog(20)
    plain = build_index(x, ids, "Flat", use_gpu=False)
    cfg = HybridConfig(default_mode="hybrid")
    assert resolve_mode(plain, None, cfg) == "dense"
    for mode in ("lexical", "hybrid"):
        with pytest.raises(SearchModeError, match="without one"):
            resolve_mode(plain, mode, cfg)
    with pytest.raises(SearchModeError, match="unknown search mode"):
        resolve_mode(plain, "sparse", cfg)
    index, _ = indexed()
    assert resolve_mode(index, None, cfg) == "hybrid" and resolve_mode(index, "dense", cfg) == "dense"


# ------------------------------------------------------------------------------------- filters


@pytest.mark.parametrize("term_set_max", [4096, 0])  # the term set inside the query | the widened read
def test_filters_restrict_lexical_hits_by_the_same_bitmap(term_set_max: int) -> None:
    index, titles = indexed(n=300)
    cfg = HybridConfig(term_set_max=term_set_max)
    where = index.select({"gender": "Women"})
    women = [i % 3 == 0 for i in range(len(titles))]
    for q in ("red shirt", "wool scarf hat", "boots"):
        ids, scores = lexical_search(index, [q], 5, where, cfg)
        expect = bm25_ranking(titles, q, women)
        assert len(ids[0]) == min(5, len(expect))
        assert all(int(i.split("-")[1]) % 3 == 0 for i in ids[0])
        # the top-5 women's items by BM25 (ties may swap, so compare scores)
        assert np.allclose(scores[0], [s for _, s in expect[:5]], rtol=1e-3)
    nobody = index.select({"gender": "Nobody"})
    assert lexical_search(index, ["red"], 5, nobody, cfg)[0] == [[]]


# ------------------------------------------------------------------------------------- fusion


def test_reciprocal_rank_fusion_order() -> None:
    fused = rrf([["a", "b", "c"], ["c", "d", "a"]], rrf_k=60)
    score = {i: s for i, s in fused}
    assert math.isclose(score["a"], 1 / 61 + 1 / 63) and math.isclose(score["c"], 1 / 63 + 1 / 61)
    assert math.isclose(score["b"], 1 / 62) and math.isclose(score["d"], 1 / 62)
    # a and c tie (the first ranking's order breaks it), then b and d likewise
    assert [i for i, _ in fused] == ["a", "c", "b", "d"]
    # weights: a lexical weight of 3 puts the lexical ranking's top first
    assert rrf([["a", "b"], ["b", "c"]], [1.0, 3.0], 60)[0][0] == "b"
    assert [i for i, _ in rrf([["x", "y"], []], rrf_k=0)] == ["x", "y"]
    with pytest.raises(ValueError, match="weights"):
        rrf([["a"]], [1.0, 2.0])


# --------------------------------------------------------------------------------- live writes


def upsert(seq: int, item_id: str, title: str, rng: np.random.Generator) -> Change:
    v = rng.standard_normal(DIM).astype(np.float32)
    return Change(seq, "upsert", item_id, {"title": title}, (), "", v / np.linalg.norm(v), "1", 0.0)  # type: ignore[arg-type]


def test_live_writes_are_found_by_their_words() -> None:
    index, _ = indexed("IVF4,Flat")
    live = LiveIndex(index, "b1", "1")
    rng = np.random.default_rng(3)
    live.apply([upsert(1, "new-1", "zebra print jacket", rng), upsert(2, "item-5", "ocelot tote", rng)])
    assert lexical_search(live, ["zebra"], 5)[0] == [["new-1"]]
    assert lexical_search(live, ["ocelot"], 5)[0] == [["item-5"]]  # a base item's new text
    live.apply([upsert(3, "new-1", "plain jacket", rng)])  # updated: the old words are gone
    assert lexical_search(live, ["zebra"], 5)[0] == [[]]
    assert lexical_search(live, ["plain"], 5)[0] == [["new-1"]]
    live.apply([Change(4, "delete", "new-1", {}, (), "", None, None, 0.0)])  # type: ignore[arg-type]
    assert lexical_search(live, ["plain jacket"], 5)[0] == [[]]


def test_snapshot_restore_and_compaction_keep_the_words(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)

    def vec() -> np.ndarray:
        v = rng.standard_normal(DIM).astype(np.float32)
        return v / np.linalg.norm(v)

    with open_changelog("", tmp_path / "live") as log:
        store = SnapshotStore(tmp_path / "live")
        serving = restore(indexed("IVF4,Flat")[0], "b1", "1", log, store)
        log.append([ItemWrite.upsert("new-a", {"title": "aardvark lamp"}, vec(), "1")])
        log.append([ItemWrite.upsert("new-b", {"title": "bison rug"}, vec(), "1")])
        log.append([ItemWrite.delete("item-0")])
        catch_up(serving, log)
        seq, snap = compact(serving, log, store)
        assert LEXICAL_FILE in json.loads((snap / "index" / "metadata.json").read_text())["files"]
        log.append([ItemWrite.upsert("new-a", {"title": "capybara lamp"}, vec(), "1")])  # after the snapshot
        catch_up(serving, log)
        restarted = restore(indexed("IVF4,Flat")[0], "b1", "1", log, store)  # snapshot + 1 change
        from_scratch = restore(indexed("IVF4,Flat")[0], "b1", "1", log, None)  # base + pruned log
    for q in ("aardvark", "capybara lamp", "bison", "red shirt", "wool"):
        expect = lexical_search(serving, [q], 10)[0]
        assert lexical_search(restarted, [q], 10)[0] == expect, q
        assert lexical_search(from_scratch, [q], 10)[0] == expect, q
    assert lexical_search(serving, ["aardvark"], 5)[0] == [[]]
    assert lexical_search(restarted, ["capybara"], 5)[0] == [["new-a"]]
    deleted_title = item_text({"title": catalog()[1][0]}, ["title"])
    assert lexical_search(serving, [deleted_title], 200)[0][0]  # its words still find other items
    assert "item-0" not in lexical_search(restarted, [deleted_title], 200)[0][0]

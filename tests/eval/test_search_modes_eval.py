"""The evaluation's lexical and hybrid rows (itemsage.eval.modes) on a catalog whose rankings are
known: each pair's rank is its item's position in the served mode's list, past every k when the
list does not hold it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from itemsage.config import HybridConfig
from itemsage.eval.modes import add_mode_rows, candidate_lexical, mode_lists
from itemsage.eval.recall import RecallTable
from itemsage.eval.validation import ValSet
from itemsage.index.hybrid import fuse

N = 40


def test_lexical_and_hybrid_rows_rank_what_search_would_answer() -> None:
    rng = np.random.default_rng(0)
    items = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((N, 8)).astype(np.float32)), dim=1)
    item_texts = [f"common word{i}" for i in range(N)]
    item_texts[7] = "rare zebra lamp"
    item_texts[9] = "zebra rug"
    query_texts = ["zebra lamp", "nothing matches this"]
    # pair 0: query 0 engages item 7 (lexical rank 0); its embedding points at item 3.
    # pair 1: query 0 engages item 3 (dense rank 0, not in the lexical list).
    # pair 2: query 1 engages item 5 (no lexical hit at all).
    queries = torch.stack([items[3], items[3], items[5]])
    pairs = ValSet(
        surfaces=np.array(["search"] * 3),
        tasks=np.array(["search/click"] * 3),
        query_key=np.array([0, 0, 1]),
        candidates=torch.arange(N),
        target=torch.tensor([7, 3, 5]),
        exclude=torch.tensor([-1, -1, -1]),
    )
    table = RecallTable(ks=(1, 10))
    cfg = HybridConfig(depth=20)
    lexical = candidate_lexical(pairs.candidates, item_texts, ("title",))
    add_mode_rows(table, mode_lists(pairs, queries, items, lexical, query_texts, cfg.depth), cfg)
    assert table.get("lexical", "search/all", 1) == 1 / 3  # only pair 0's item is the lexical top
    dense = torch.topk(queries[0] @ items.T, 20).indices.tolist()
    fused = [int(c) for c, _ in fuse([str(c) for c in dense], ["7", "9"], cfg)]
    expect = [fused.index(7) < 10, fused.index(3) < 10, True]  # pair 2: lexical empty, dense rank 0
    assert table.get("hybrid", "search/all", 10) == sum(expect) / 3
    # at k=1 at most one of pairs 0 and 1 hits (they share the query's list), pair 2 always does
    assert table.get("hybrid", "search/all", 1) == ((fused[0] == 7) + (fused[0] == 3) + 1) / 3


def test_item_queries_search_with_their_own_text_and_never_find_themselves() -> None:
    """item -> item (what /similar?mode=... answers for an item id): the lexical query is the query
    item's own text, and the item itself, first in both of its lists, is left out of each; the
    frozen MiniLM vectors get the same fusion (minilm_hybrid)."""
    rng = np.random.default_rng(1)
    items = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((N, 8)).astype(np.float32)), dim=1)
    item_texts = [f"common word{i}" for i in range(N)]
    item_texts[7] = "rare zebra lamp"
    item_texts[9] = "zebra rug"
    # The query is item 7 and engages item 9; the model's embedding of item 7 is item 7's own vector
    # (its best match, to be left out), the frozen one points at item 9.
    pairs = ValSet(
        surfaces=np.array(["closeup"]),
        tasks=np.array(["item2item/also_view"]),
        query_key=np.array([7]),
        candidates=torch.arange(N),
        target=torch.tensor([9]),
        exclude=torch.tensor([7]),
    )
    frozen = (items[9][None, :], items)
    table = RecallTable(ks=(1, 10))
    cfg = HybridConfig(depth=20)
    lexical = candidate_lexical(pairs.candidates, item_texts, ("title",))
    add_mode_rows(table, mode_lists(pairs, items[7][None, :], items, lexical, item_texts, cfg.depth, frozen), cfg)
    assert table.get("lexical", "item2item/all", 1) == 1.0  # 7 left out, 9 is the lexical top
    assert table.get("minilm_hybrid", "item2item/all", 1) == 1.0  # top of both of its lists
    dense = [c for c in torch.topk(items[7] @ items.T, 21).indices.tolist() if c != 7][:20]
    assert dense[0] != 7
    fused = [int(c) for c, _ in fuse([str(c) for c in dense], ["9"], cfg)]
    assert table.get("hybrid", "item2item/all", 1) == float(fused[0] == 9)
    assert table.get("hybrid", "item2item/all", 10) == float(fused.index(9) < 10)


def test_mode_lists_refuse_a_fusion_deeper_than_they_were_read_and_a_foreign_index() -> None:
    """A sweep fuses lists read once: a setting that reads deeper than they go, or an index over
    other candidates, would silently score the wrong lists."""
    items = torch.nn.functional.normalize(torch.randn(N, 8), dim=1)
    item_texts = [f"word{i}" for i in range(N)]
    pairs = ValSet(
        surfaces=np.array(["search"]),
        tasks=np.array(["search/click"]),
        query_key=np.array([0]),
        candidates=torch.arange(N),
        target=torch.tensor([3]),
        exclude=torch.tensor([-1]),
    )
    lexical = candidate_lexical(pairs.candidates, item_texts, ("title",))
    lists = mode_lists(pairs, items[:1], items, lexical, ["word3"], depth=20)
    with pytest.raises(ValueError, match="depth 20"):
        add_mode_rows(RecallTable(ks=(1, 10)), lists, HybridConfig(depth=30))
    other = candidate_lexical(torch.arange(N - 1), item_texts, ("title",))
    with pytest.raises(ValueError, match="39 documents for 40 candidates"):
        mode_lists(pairs, items[:1], items, other, ["word3"], depth=20)

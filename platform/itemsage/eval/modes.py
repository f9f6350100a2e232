"""The search probe in the served search modes: lexical (the lexical index) and hybrid (RRF).

``/search`` answers in dense, lexical or hybrid mode (``itemsage.index.hybrid``); the evaluation
measures the two that are not the model alone with the very code that serves them: the
:class:`~itemsage.index.lexical.LexicalIndex` over the candidates' text (the fields the BM25
baseline reads) and :func:`~itemsage.index.hybrid.fuse` of the dense and lexical rankings, each
read to ``HybridConfig.depth``. A pair's rank is its item's position in that mode's list; an item
outside the list (below the depth) gets a rank past every reported k, as it would be absent from
a served answer. Rows: ``lexical`` and ``hybrid`` next to ``itemsage`` (dense alone).
"""

from __future__ import annotations

import numpy as np
import torch

from itemsage.config import HybridConfig
from itemsage.eval.recall import RecallTable
from itemsage.eval.validation import ValSet
from itemsage.index.hybrid import fuse
from itemsage.index.lexical import LexicalIndex

MODE_METHODS: tuple[str, ...] = ("hybrid", "lexical")
# Query embeddings scored against the catalog per block: [chunk, catalog] float32.
CHUNK = 1024


def _dense_top(queries: torch.Tensor, items: torch.Tensor, depth: int) -> np.ndarray:
    """[Q, depth] candidate positions of each query's best items by inner product."""
    out = []
    items = items.float()
    for start in range(0, queries.shape[0], CHUNK):
        scores = queries[start : start + CHUNK].float() @ items.T
        out.append(torch.topk(scores, min(depth, items.shape[0]), dim=1).indices.numpy())
    return np.concatenate(out) if out else np.zeros((0, depth), np.int64)


def _rank_in(ranking: list[int], target: int, miss: int) -> int:
    try:
        return ranking.index(target)
    except ValueError:
        return miss


def add_search_mode_rows(
    table: RecallTable,
    pairs: ValSet,
    queries: torch.Tensor,
    item_emb: torch.Tensor,
    item_texts: list[str],
    query_texts: list[str],
    fields: tuple[str, ...],
    cfg: HybridConfig | None = None,
) -> None:
    """``lexical`` and ``hybrid`` rows of the search probe's ``pairs``.

    ``queries`` [P, D]: each pair's search-tower embedding (the model's row); ``item_emb`` [C, D]:
    the candidates' item embeddings; ``item_texts[item_idx]`` and ``query_texts[query_idx]``: the
    catalog's and the queries' text (``eval.baselines.TextCorpus``).
    """
    cfg = cfg or HybridConfig()
    depth = max(cfg.depth, max(table.ks))
    cand = pairs.candidates.numpy()
    lexical = LexicalIndex(fields, {j: item_texts[int(i)] for j, i in enumerate(cand.tolist())})
    keys = np.asarray(pairs.query_key, dtype=np.int64)
    # Pairs of one query share its rankings: each distinct query is searched once.
    distinct, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    dense_top = _dense_top(queries[torch.from_numpy(first)], item_emb, depth + 1)
    miss = len(cand)  # past every reported k
    target, exclude = pairs.target.numpy(), pairs.exclude.numpy()
    ranks = {m: np.full(len(keys), miss, np.int64) for m in MODE_METHODS}
    lists: dict[int, tuple[list[int], list[int]]] = {}
    for q, key in enumerate(distinct.tolist()):
        labels, _ = lexical.search(query_texts[key], depth + 1)
        lists[q] = (dense_top[q].tolist(), labels.tolist())
    for p in range(len(keys)):
        dense, lex = lists[int(inverse[p])]
        if exclude[p] >= 0:  # a query item is never its own neighbour (not the case for text queries)
            dense = [c for c in dense if c != exclude[p]]
            lex = [c for c in lex if c != exclude[p]]
        dense, lex = dense[:depth], lex[:depth]
        ranks["lexical"][p] = _rank_in(lex, int(target[p]), miss)
        fused = [int(c) for c, _ in fuse([str(c) for c in dense], [str(c) for c in lex], cfg)]
        ranks["hybrid"][p] = _rank_in(fused, int(target[p]), miss)
    tasks = pairs.tasks.tolist()
    for method in MODE_METHODS:
        table.add(method, tasks, torch.from_numpy(ranks[method]), pairs.cohorts)

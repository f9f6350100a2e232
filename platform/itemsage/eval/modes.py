"""The served retrieval modes that are not the model alone: lexical (the lexical index) and hybrid (RRF).

``/search`` and ``/similar`` (by item id) answer in dense, lexical or hybrid mode
(``itemsage.index.hybrid``); the evaluation measures the two that are not the model alone with the
very code that serves them: the :class:`~itemsage.index.lexical.LexicalIndex` over the candidates'
text (the fields the BM25 baseline reads) and :func:`~itemsage.index.hybrid.fuse` of the dense and
lexical rankings, each read to ``HybridConfig.depth``. The lexical query is a search query's text,
or for item -> item the query item's own text, as ``/similar`` searches with it. A pair's rank is
its item's position in that mode's list; an item outside the list (below the depth) gets a rank
past every reported k, as it would be absent from a served answer. Rows: ``lexical`` and
``hybrid`` next to ``itemsage`` (dense alone), and, given frozen MiniLM vectors, ``minilm_hybrid``:
the same fusion with frozen MiniLM in the model's place, the hybrid a user builds with no training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from itemsage.config import HybridConfig
from itemsage.eval.baselines.corpus import TextCorpus
from itemsage.eval.recall import RecallTable
from itemsage.eval.validation import ValSet
from itemsage.index.hybrid import fuse
from itemsage.index.lexical import LexicalIndex

MODE_METHODS: tuple[str, ...] = ("hybrid", "lexical")
FROZEN_HYBRID = "minilm_hybrid"
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


def mode_query_texts(corpus: TextCorpus, query_kind: str) -> list[str] | None:
    """The lexical query of each query key of a probe a served mode answers: a search query's text
    (``/search``), a catalog item's own text for an item or its photo (``/similar`` by id queries an
    item with a photo as the closeup probe does, a text-only one as item -> item does); None for
    a probe no mode serves (home) or search pairs without query texts."""
    if query_kind == "text":
        return corpus.query_texts
    if query_kind in ("item", "image"):
        return corpus.item_texts
    return None


def list_depth(table: RecallTable, cfg: HybridConfig | None = None) -> int:
    """How deep a mode's list is read: the fusion's depth, at least the table's largest k."""
    return max((cfg or HybridConfig()).depth, max(table.ks))


def candidate_lexical(candidates: torch.Tensor, item_texts: Sequence[str], fields: tuple[str, ...]) -> LexicalIndex:
    """The lexical index over the candidates' text, labelled by candidate position: built once per
    candidate set (every probe of an evaluation ranks against the same catalog)."""
    return LexicalIndex(fields, {j: item_texts[int(i)] for j, i in enumerate(candidates.tolist())})


@dataclass
class ModeLists:
    """Each distinct query's dense and lexical lists of a probe's ``pairs``, read once to ``depth``
    + 1 (an item query's own item is dropped per pair): only the fusion differs between hybrid
    settings (``add_mode_rows``)."""

    pairs: ValSet
    depth: int
    inverse: np.ndarray  # [P] each pair's distinct query
    dense: dict[str, np.ndarray]  # method -> [Q, depth + 1] candidate positions
    lexical: list[list[int]]  # [Q] candidate positions


def mode_lists(
    pairs: ValSet,
    queries: torch.Tensor,
    item_emb: torch.Tensor,
    lexical: LexicalIndex,
    query_texts: Sequence[str],
    depth: int,
    frozen: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> ModeLists:
    """The lists every mode row of ``pairs`` is read from.

    ``queries`` [P, D]: each pair's query embedding (the model's row); ``item_emb`` [C, D]: the
    candidates' item embeddings; ``lexical``: :func:`candidate_lexical` of the same candidates;
    ``query_texts``: the lexical query of each ``pairs.query_key`` (search: the queries' text; item
    -> item: the catalog's text again); ``frozen``: frozen MiniLM vectors of the pairs' queries [P,
    384] and of the candidates [C, 384].
    """
    if len(lexical) != len(pairs.candidates):
        raise ValueError(f"the lexical index holds {len(lexical)} documents for {len(pairs.candidates)} candidates")
    keys = np.asarray(pairs.query_key, dtype=np.int64)
    # Pairs of one query share its rankings: each distinct query is searched once.
    distinct, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    firsts = torch.from_numpy(first)
    dense = {"hybrid": _dense_top(queries[firsts], item_emb, depth + 1)}
    if frozen is not None:
        dense[FROZEN_HYBRID] = _dense_top(frozen[0][firsts], frozen[1], depth + 1)
    lexical_lists = [lexical.search(query_texts[key], depth + 1)[0].tolist() for key in distinct.tolist()]
    return ModeLists(pairs, depth, inverse, dense, lexical_lists)


def add_mode_rows(table: RecallTable, lists: ModeLists, cfg: HybridConfig | None = None) -> None:
    """``lexical`` and ``hybrid`` rows (and ``minilm_hybrid`` where ``lists`` has frozen lists) of
    ``lists.pairs``, each mode's list read to ``cfg.depth`` (at least the table's largest k)."""
    cfg = cfg or HybridConfig()
    depth = list_depth(table, cfg)
    if depth > lists.depth:
        raise ValueError(f"the lists were read to depth {lists.depth}; this fusion reads {depth}")
    pairs = lists.pairs
    miss = len(pairs.candidates)  # past every reported k
    target, exclude = pairs.target.numpy(), pairs.exclude.numpy()
    ranks = {m: np.full(len(target), miss, np.int64) for m in (*MODE_METHODS, *lists.dense)}
    for p in range(len(target)):
        q = int(lists.inverse[p])
        lex = [c for c in lists.lexical[q] if c != exclude[p]][:depth]  # never a query item's own
        ranks["lexical"][p] = _rank_in(lex, int(target[p]), miss)
        for method, top in lists.dense.items():
            dense = [int(c) for c in top[q] if c != exclude[p]][:depth]
            fused = [int(c) for c, _ in fuse([str(c) for c in dense], [str(c) for c in lex], cfg)]
            ranks[method][p] = _rank_in(fused, int(target[p]), miss)
    tasks = pairs.tasks.tolist()
    for method, r in ranks.items():
        table.add(method, tasks, torch.from_numpy(r), pairs.cohorts)

"""Retrieval modes over one index: dense (embeddings), lexical (BM25) and hybrid (both, fused by rank).

``/search`` queries with its text; ``/similar`` by item id with the item's own embedding and its
own text in the lexical index (:func:`item_text`).

Hybrid uses reciprocal-rank fusion (Cormack, Clarke and Buettcher, SIGIR 2009): each mode's
ranking is read to ``depth``; an item scores ``sum_m weight_m / (rrf_k + rank_m)`` over the modes
that ranked it (rank 1-based); the fused list is sorted by that score. It needs no score
calibration between an inner product and a BM25 score, which have unrelated scales. The same
:func:`rrf` ranks the evaluation's hybrid rows (``itemsage.eval.modes``) and answers ``/search``,
so the table measures what is served (``/similar`` likewise).

Every function takes an ``ItemIndex`` or a ``LiveIndex``: a live index is read under its lock
(:meth:`~itemsage.index.live.LiveIndex.reading`), so the lexical labels and the id map agree.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from itemsage.config import SEARCH_MODES, HybridConfig
from itemsage.index.attributes import Selection
from itemsage.index.lexical import LexicalIndex


class SearchModeError(ValueError):
    """A search mode that does not exist, or that this index cannot answer (no lexical index)."""


def check_mode(mode: str) -> str:
    if mode not in SEARCH_MODES:
        raise SearchModeError(f"unknown search mode {mode!r}; expected one of {', '.join(SEARCH_MODES)}")
    return mode


def has_lexical(index: Any) -> bool:
    return getattr(index, "lexical", None) is not None


def resolve_mode(index: Any, mode: str | None, cfg: HybridConfig, default: str | None = None) -> str:
    """The mode a search runs in: ``mode`` as asked (checked), or the configured default when none
    was asked (``default``, else ``cfg.default_mode``), falling back to dense on an index built
    without a lexical index (an explicit lexical or hybrid request on such an index is a
    :class:`SearchModeError`)."""
    if mode is None:
        default = check_mode(default or cfg.default_mode)
        return default if default == "dense" or has_lexical(index) else "dense"
    check_mode(mode)
    if mode != "dense" and not has_lexical(index):
        raise SearchModeError(
            f"search mode {mode!r} needs a lexical index, and this index was built without one "
            "(index.lexical.enabled); rebuild the index or search with mode 'dense'"
        )
    return mode


@contextlib.contextmanager
def _held(index: Any) -> Iterator[Any]:
    """The index with its lexical part and id map held still (a live index's lock)."""
    reading = getattr(index, "reading", None)
    if reading is None:
        yield index
    else:
        with reading() as inner:
            yield inner


def lexical_search(
    index: Any, texts: Sequence[str], k: int, where: Selection | None = None, cfg: HybridConfig | None = None
) -> tuple[list[list[str]], list[np.ndarray]]:
    """Top-k item ids and BM25 scores per text (best first), among the items ``where`` selects."""
    cfg = cfg or HybridConfig()
    ids: list[list[str]] = []
    scores: list[np.ndarray] = []
    with _held(index) as inner:
        lexical: LexicalIndex | None = getattr(inner, "lexical", None)
        if lexical is None:
            raise SearchModeError("this index has no lexical index")
        for text in texts:
            labels, s = lexical.search(text, k, where, cfg.term_set_max)
            ids.append(inner.idmap.labels_to_ids(labels[None, :])[0] if labels.size else [])
            scores.append(s)
    return ids, scores


def item_text(index: Any, item_id: str) -> str:
    """The text the lexical index holds for ``item_id``: the lexical query of "items like this one"
    (``/similar`` by id in lexical or hybrid mode)."""
    with _held(index) as inner:
        lexical: LexicalIndex | None = getattr(inner, "lexical", None)
        if lexical is None:
            raise SearchModeError("this index has no lexical index")
        text = lexical.text(int(inner.idmap.lookup([item_id])[0]))
    if text is None:
        raise SearchModeError(f"item {item_id!r} has no document in the lexical index")
    return text


def rrf(
    rankings: Sequence[Sequence[str]], weights: Sequence[float] | None = None, rrf_k: float = 60.0
) -> list[tuple[str, float]]:
    """Reciprocal-rank fusion of ranked id lists: ``(id, score)`` best first. Ties keep the order
    of first appearance (the first ranking's order first)."""
    if weights is None:
        weights = [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError(f"{len(rankings)} rankings but {len(weights)} weights")
    if rrf_k < 0:
        raise ValueError(f"rrf_k must be >= 0; got {rrf_k}")
    score: dict[str, float] = {}
    for ranking, w in zip(rankings, weights):
        for rank, item in enumerate(ranking, start=1):
            score[item] = score.get(item, 0.0) + float(w) / (rrf_k + rank)
    order = sorted(score.items(), key=lambda kv: -kv[1])  # sorted() is stable: ties keep first appearance
    return order


def fuse(dense: Sequence[str], lexical: Sequence[str], cfg: HybridConfig) -> list[tuple[str, float]]:
    """The hybrid ranking of one query from its dense and lexical rankings."""
    return rrf([dense, lexical], [cfg.dense_weight, cfg.lexical_weight], cfg.rrf_k)


def depth(k: int, cfg: HybridConfig) -> int:
    """How deep each mode's ranking is read for a hybrid top-k."""
    return max(int(k), int(cfg.depth))


__all__ = [
    "SearchModeError",
    "check_mode",
    "depth",
    "fuse",
    "has_lexical",
    "item_text",
    "lexical_search",
    "resolve_mode",
    "rrf",
]

"""``/search`` and ``/similar`` in a mode: dense, lexical or hybrid (``itemsage.index.hybrid``) over a pinned state.

The request's ``mode`` (or ``serve.hybrid.default_mode``, for ``/similar``
``serve.hybrid.similar_default_mode``) picks the retrieval; an index built without a lexical
index answers the default in dense mode, and an explicit lexical or hybrid request on it is a 422
saying so. Every answer names the mode that produced it (``mode``). Filters restrict both
rankings by the same bitmap before they are fused.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np

from itemsage.config import HybridConfig
from itemsage.serve.core import Hit, RetrievalState
from itemsage.serve.errors import BadRequestError


def search_mode(state: RetrievalState, mode: str | None, cfg: HybridConfig) -> str:
    """The mode this search runs in on ``state``'s index (422 for one it cannot answer)."""
    from itemsage.index.hybrid import SearchModeError, resolve_mode

    try:
        return resolve_mode(state.index, mode, cfg)
    except SearchModeError as e:
        raise BadRequestError(str(e)) from None


def similar_mode(state: RetrievalState, mode: str | None, cfg: HybridConfig) -> str:
    """The mode "items like this one" runs in on ``state``'s index (422 for one it cannot answer)."""
    from itemsage.index.hybrid import SearchModeError, resolve_mode

    try:
        return resolve_mode(state.index, mode, cfg, default=cfg.similar_default_mode)
    except SearchModeError as e:
        raise BadRequestError(str(e)) from None


def similar_text(state: RetrievalState, item_id: str) -> str:
    """The lexical query of "items like ``item_id``": its own text in the lexical index."""
    from itemsage.index.hybrid import SearchModeError, item_text

    try:
        return item_text(state.index, item_id)
    except SearchModeError as e:
        raise BadRequestError(str(e)) from None


def needs_embedding(mode: str) -> bool:
    return mode != "lexical"


def mode_hits(
    state: RetrievalState,
    mode: str,
    text: str,
    emb: np.ndarray | None,
    k: int,
    where: Any,
    cfg: HybridConfig,
    exclude: Collection[str] = (),
) -> list[Hit]:
    """The top ``k`` hits of one query in ``mode`` (already resolved), among what ``where`` keeps,
    leaving out ``exclude`` (the query item of ``/similar``) from both rankings.

    Scores: inner product (dense), BM25 (lexical), reciprocal-rank-fusion score (hybrid).
    """
    from itemsage.index.hybrid import depth, fuse, lexical_search

    if mode == "dense":
        assert emb is not None
        return state.search(emb, k, exclude=exclude, where=where)
    n = depth(k, cfg) if mode == "hybrid" else k
    ids, scores = lexical_search(state.index, [text], n + len(exclude), where, cfg)
    lexical = [Hit(i, float(s)) for i, s in zip(ids[0], scores[0].tolist()) if i not in exclude][:n]
    if mode == "lexical":
        return lexical[:k]
    assert emb is not None
    dense = state.search(emb, n, exclude=exclude, where=where)
    fused = fuse([h.item_id for h in dense], [h.item_id for h in lexical], cfg)
    return [Hit(i, s) for i, s in fused[:k]]

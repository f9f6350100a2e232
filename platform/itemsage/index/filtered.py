"""Filtered search inside the index: FAISS ID selectors in the ANN search, exact search when selective.

Given the :class:`~itemsage.index.attributes.Selection` of a filter (a bitmap over index labels),
a filter with a view (``itemsage.index.views``: a copy of its items' vectors, kept per filter and
following writes) is answered from it; any other runs one of two ways, chosen by its match count:

* **ANN with the selector** (more than ``FilterSearchConfig.exact_max_matches`` matches): the
  bitmap becomes a FAISS ``IDSelectorBitmap`` passed in the search parameters
  (``SearchParametersIVF``, ``SearchParametersHNSW`` with ``efSearch``, plain ``SearchParameters``
  for flat codes; through ``IndexIDMap2``, ``IndexPreTransform`` and ``IndexRefine`` wrappers), so
  non-matching items are skipped while the lists / graph are scanned and the top-k is taken among
  matching items only. As fewer items match, each probed list holds fewer candidates, so the search
  widens by ``(1 / selectivity) ** widen_exponent`` (capped at ``max_widen``): efSearch for HNSW;
  an IVF index picks its lists per query from where the matching items are (:class:`ListProbe`).
* **Exact over the selected items** (at most ``exact_max_matches``, or at most k): their vectors
  are gathered by label (from a label-ordered copy, ``itemsage.index.label_vectors``) and scored
  with one matrix product. Walking an ANN structure where almost nothing qualifies costs more than
  scoring the few items that do (and a graph walk loses recall there); scoring m items costs m dot
  products, independent of the catalog size.

``experiments/bench/filters.py`` measures both paths against exact filtered search and a
post-filter baseline; docs/serving.md ("Filters") has the table the threshold was chosen from.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import faiss
import numpy as np

from itemsage.config import FilterSearchConfig
from itemsage.index.attributes import Selection

# Widening that means "every IVF list" (nprobe = nlist) / the largest graph beam (MAX_EF_SEARCH).
FULL_SCAN = 1e9
MAX_EF_SEARCH = 4096


class FilterableIndex(Protocol):
    """What a filtered search needs from an ``ItemIndex`` subclass."""

    @property
    def ntotal(self) -> int: ...

    def _search_selected(
        self, queries: np.ndarray, k: int, selection: Selection, widen: float
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def _selected_vectors(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None: ...

    def _search_view(
        self, queries: np.ndarray, k: int, selection: Selection
    ) -> tuple[np.ndarray, np.ndarray] | None: ...


def widen_factor(selectivity: float, policy: FilterSearchConfig) -> float:
    """How many times the ANN knob (nprobe / efSearch) grows for a filter of this selectivity."""
    if selectivity >= 1.0:
        return 1.0
    return float(min(policy.max_widen, (1.0 / max(selectivity, 1e-12)) ** policy.widen_exponent))


def uses_exact(selection: Selection, ntotal: int, k: int, policy: FilterSearchConfig) -> bool:
    return selection.count <= max(k, policy.exact_max_matches)


def filtered_search(
    index: FilterableIndex, queries: np.ndarray, k: int, selection: Selection, policy: FilterSearchConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Scores and labels [Q, k] of the best items among ``selection`` (-1 / -inf past the matches)."""
    nq = queries.shape[0]
    if selection.count == 0:
        return np.full((nq, k), -np.inf, np.float32), np.full((nq, k), -1, np.int64)
    # A filter with a view (itemsage.index.views) scans just its own items.
    got = index._search_view(queries, k, selection)
    if got is not None:
        return got
    widen = widen_factor(selection.count / max(index.ntotal, 1), policy)
    if uses_exact(selection, index.ntotal, k, policy):
        got = index._selected_vectors(selection.labels())
        if got is not None:
            return exact_top_k(queries, got[0], got[1], k)
        # Codes that do not give the vectors back (PQ, SQ): scan every list with the selector,
        # so no matching item is missed (distances stay the codes' approximations).
        widen = FULL_SCAN
    return index._search_selected(queries, k, selection, widen)


def exact_top_k(queries: np.ndarray, vectors: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k of ``queries`` over ``vectors`` (row i has label ``labels[i]``)."""
    nq, m = queries.shape[0], vectors.shape[0]
    scores = np.full((nq, k), -np.inf, np.float32)
    out = np.full((nq, k), -1, np.int64)
    if m == 0:
        return scores, out
    s = queries @ vectors.T
    kk = min(k, m)
    part = np.argpartition(-s, kk - 1, axis=1)[:, :kk] if kk < m else np.broadcast_to(np.arange(m), (nq, m))
    top = np.take_along_axis(s, part, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    rows = np.take_along_axis(part, order, axis=1)
    scores[:, :kk] = np.take_along_axis(top, order, axis=1)
    out[:, :kk] = labels[rows]
    return scores, out


def bitmap_selector(bitmap: np.ndarray) -> faiss.IDSelector:
    """A FAISS ``IDSelectorBitmap`` reading ``bitmap`` in place (keep the array alive meanwhile)."""
    return faiss.IDSelectorBitmap(bitmap.size, faiss.swig_ptr(bitmap))


def selector_params(index: faiss.Index, sel: faiss.IDSelector, widen: float, keep: list[Any]) -> faiss.SearchParameters:
    """Search parameters for ``index`` (a CPU FAISS index, possibly wrapped) that apply ``sel`` in the
    search, with nprobe / efSearch widened. Every object FAISS will read is appended to ``keep``:
    the parameters hold raw pointers, so the Python objects must outlive the search."""
    idx = faiss.downcast_index(index)
    if isinstance(idx, faiss.IndexIDMap):
        # IndexIDMap(2) translates the selector to its inner positions itself (FAISS >= 1.8).
        return selector_params(idx.index, sel, widen, keep)
    params: Any
    if isinstance(idx, faiss.IndexPreTransform):
        params = faiss.SearchParametersPreTransform()
        inner = selector_params(idx.index, sel, widen, keep)
        params.index_params = inner
    elif isinstance(idx, faiss.IndexRefine):
        params = faiss.IndexRefineSearchParameters()
        params.k_factor = idx.k_factor
        params.base_index_params = selector_params(idx.base_index, sel, widen, keep)
    elif isinstance(idx, faiss.IndexIVF):
        params = faiss.SearchParametersIVF()
        params.nprobe = int(min(idx.nlist, math.ceil(idx.nprobe * widen)))
    elif isinstance(idx, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW()
        params.efSearch = int(min(MAX_EF_SEARCH, max(idx.hnsw.efSearch, math.ceil(idx.hnsw.efSearch * widen))))
    else:
        params = faiss.SearchParameters()
    params.sel = sel
    keep.append(params)
    return params


class ListProbe:
    """Which IVF lists a filtered search probes, per query, from where the matching items are.

    Widening nprobe by the filter's *global* selectivity assumes matching items are spread evenly
    over the IVF lists. Real attributes are not: a query's nearest lists hold few items of another
    gender or product type than the query's own (measured on the fashion catalog: recall 0.04-0.6
    that way). So, per query:

    * the lists are probed nearest first, skipping lists without a matching item (scanning one
      only tests its items against the selector), until they hold ``target`` matching items;
    * ``target`` is what the widened search would scan were the matches spread evenly
      (``nprobe * widen * matches / nlist``, at least ``min_probe_per_k * k``), times a *density boost*: how many times
      rarer the matches are in the query's own ``nprobe`` nearest lists than in the catalog
      (1 when the filter is independent of the embedding, up to ``max_density_boost``). A query
      far from the filter's region must look further; one inside it needs no more than usual.

    Per-list match counts of a selection come from a label -> list map (one int32 per label,
    following adds and removes) and are cached by the selection's key (filter + attribute version).
    """

    CACHE_SIZE = 64

    def __init__(self, ivf: faiss.IndexIVF) -> None:
        invlists = ivf.invlists
        self.nlist = int(ivf.nlist)
        self.list_of = np.full(max(int(ivf.ntotal), 1), -1, np.int32)
        self.sizes = np.zeros(self.nlist, np.int64)
        for lst in range(self.nlist):
            size = invlists.list_size(lst)
            if size:
                ids = faiss.rev_swig_ptr(invlists.get_ids(lst), size).copy()
                self._grow(int(ids.max()) + 1)
                self.list_of[ids] = lst
                self.sizes[lst] = size
        self._counts: dict[Any, np.ndarray] = {}
        # The coarse centroids (fixed once trained): ranking all nlist lists per query is one
        # matrix product and an argsort (half the quantizer's search with k = nlist at 1,024 lists).
        # A quantizer that cannot give them back keeps its own search.
        self.centroids: np.ndarray | None = None
        if ivf.metric_type == faiss.METRIC_INNER_PRODUCT:
            try:
                self.centroids = ivf.quantizer.reconstruct_n(0, self.nlist)
            except RuntimeError:
                self.centroids = None

    def _ranked_lists(self, ivf: faiss.IndexIVF, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every list per query, nearest first, with its coarse score."""
        if self.centroids is None:
            return ivf.quantizer.search(queries, self.nlist)
        scores = queries @ self.centroids.T
        order = np.argsort(-scores, axis=1)
        return scores[np.arange(queries.shape[0])[:, None], order], order

    def _grow(self, n: int) -> None:
        if n > self.list_of.size:
            grown = np.full(max(n, 2 * self.list_of.size), -1, np.int32)
            grown[: self.list_of.size] = self.list_of
            self.list_of = grown

    def added(self, ivf: faiss.IndexIVF, vectors: np.ndarray, labels: np.ndarray) -> None:
        self._grow(int(labels.max()) + 1)
        lists = ivf.quantizer.assign(vectors, 1).reshape(-1)
        self.list_of[labels] = lists
        np.add.at(self.sizes, lists, 1)

    def removed(self, labels: np.ndarray) -> None:
        labels = labels[(labels >= 0) & (labels < self.list_of.size)]
        lists = self.list_of[labels]
        np.subtract.at(self.sizes, lists[lists >= 0], 1)
        self.list_of[labels] = -1

    def counts(self, selection: Selection) -> np.ndarray:
        """Matching items per IVF list."""
        cached = self._counts.get(selection.key) if selection.key is not None else None
        if cached is not None:
            return cached
        n = min(self.list_of.size, selection.bitmap.size * 8)
        bits = np.unpackbits(selection.bitmap, bitorder="little", count=n).view(bool)
        lists = self.list_of[:n][bits]
        counts = np.bincount(lists[lists >= 0], minlength=self.nlist)
        if selection.key is not None:
            if len(self._counts) >= self.CACHE_SIZE:
                self._counts.pop(next(iter(self._counts)))
            self._counts[selection.key] = counts
        return counts

    def search(
        self,
        ivf: faiss.IndexIVF,
        queries: np.ndarray,
        k: int,
        selection: Selection,
        sel: Any,
        widen: float,
        max_density_boost: float,
        min_per_k: float = 1.0,
    ) -> tuple[np.ndarray, np.ndarray]:
        counts = self.counts(selection)
        base = int(ivf.nprobe)
        dq, iq = self._ranked_lists(ivf, queries)
        per_list = counts[iq]
        share = selection.count / max(int(self.sizes.sum()), 1)
        local = per_list[:, :base].sum(axis=1) / np.maximum(self.sizes[iq[:, :base]].sum(axis=1), 1)
        boost = np.clip(share / np.maximum(local, 1e-12), 1.0, max(1.0, max_density_boost))
        target = np.maximum(min_per_k * k, base * widen * selection.count / self.nlist) * boost
        reach = (np.cumsum(per_list, axis=1) < target[:, None]).sum(axis=1)
        take = (per_list > 0) & (np.arange(self.nlist)[None, :] <= reach[:, None])
        width = max(1, int(take.sum(axis=1).max()))
        first = np.argsort(~take, axis=1, kind="stable")[:, :width]
        rows = np.arange(queries.shape[0])[:, None]  # plain fancy indexing: take_along_axis costs more per call
        assign = np.ascontiguousarray(np.where(take[rows, first], iq[rows, first], -1), np.int64)
        dis = np.ascontiguousarray(dq[rows, first], np.float32)
        params = faiss.SearchParametersIVF()
        params.sel = sel
        params.nprobe = width
        nq = queries.shape[0]
        scores = np.empty((nq, k), np.float32)
        labels = np.empty((nq, k), np.int64)
        q = np.ascontiguousarray(queries, np.float32)
        # All queries in one call (FAISS skips the -1 padding of rows that probe fewer lists);
        # the C++ call: the Python wrapper of search_preassigned refuses search parameters.
        ivf.search_preassigned_c(
            nq,
            faiss.swig_ptr(q),
            k,
            faiss.swig_ptr(assign),
            faiss.swig_ptr(dis),
            faiss.swig_ptr(scores),
            faiss.swig_ptr(labels),
            False,
            params,
        )
        return scores, labels

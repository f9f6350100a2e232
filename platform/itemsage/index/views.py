"""Filter views: per filter, a copy of its matching items' vectors, searched instead of the catalog.

A filtered search over the whole index tests every item of the probed lists (or, for exact search,
of the catalog) against the filter's selector, so its cost follows the catalog; and a filter of a
few hundred items still pays a fixed cost per request for gathering their vectors. Facet filters
repeat (a shop's filters are its facet values and a few of their combinations), so a filter that
keeps at most ``FilterSearchConfig.view_max_items`` items gets a **view**: its items' vectors in
one place, kept under the normalised filter, searched by later requests without any selector:

* up to ``view_exact_max`` items: one contiguous matrix, scored exactly (one matrix product);
* above: a small IVF-Flat of its own (``view_lists_per_sqrt * sqrt(items)`` lists, trained on the
  view's vectors; ids are the index's labels), probing the fewest lists whose recall@10 against
  exact search over the view reaches ``view_recall_target`` for a sample of catalog vectors as
  queries (measured once, when the view is built), and never a smaller share of its lists than
  the index probes of its own. Every item it holds matches, so no probe is spent on items the
  filter drops.

Views **follow writes**: the attribute table calls :meth:`FilterViews.changed` for every label a
``set_item`` / ``remove_item`` touches, the index calls :meth:`FilterViews.added` /
:meth:`FilterViews.removed` when vectors come and go, and each view tests that one label against
its filter (``AttributeTable.matches``) to take it in or drop it. So a view is never rebuilt for a
write, and a view and a fresh selection of its filter hold the same items. Writes must not overlap
searches (the live index applies them under its lock, as for the index itself).

Views of single keyword values (the facets) are built when the attributes attach
(``view_prebuild``); any other filter's on its first request, when it keeps at most
``view_lazy_max_items`` items (the request waits for the build). Memory: the views' vectors, at most
``view_max_bytes`` in all (the least recently used view is dropped past it; its filter falls back
to the selector paths of ``itemsage.index.filtered`` until it is asked for again).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import faiss
import numpy as np

from itemsage.config import FilterSearchConfig
from itemsage.index.attributes import AttributeTable, Selection
from itemsage.index.filtered import exact_top_k
from itemsage.index.filters import Equals, Filter

# (vectors [m, d], labels [m]) of those labels that have a vector; None: the index cannot say.
VectorsOf = Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray] | None"]
# Exact scores [Q, c] of queries [Q, d] with the vectors of labels [Q, c] (-inf for -1).
Rescore = Callable[[np.ndarray, np.ndarray], np.ndarray]
SEED = 1234
# Norm of the noise added to catalog vectors to make calibration queries: the index sweep's
# (itemsage.index.pipeline.QUERY_NOISE), so a view is tuned on the queries the index was.
CALIBRATION_NOISE = 0.5


class View:
    """The items of one filter: exact (a matrix) or a small IVF over them."""

    def __init__(
        self,
        flt: Filter,
        vectors: np.ndarray,
        labels: np.ndarray,
        policy: FilterSearchConfig,
        calibration: np.ndarray | None = None,
        rescore: Rescore | None = None,
    ) -> None:
        self.filter = flt
        self.dim = vectors.shape[1]
        self.members: set[int] = set(labels.tolist())
        self.last_used = 0
        self.nlist = 0
        self.min_nprobe = 0
        self.codes = "exact"
        self._ivf: Any = None
        self._rescore: Rescore | None = None
        self._block = (np.ascontiguousarray(vectors, np.float32), np.asarray(labels, np.int64))
        if labels.size > policy.view_exact_max:
            self._build_ivf(policy, calibration, rescore)

    def _build_ivf(self, policy: FilterSearchConfig, calibration: np.ndarray | None, rescore: Rescore | None) -> None:
        vectors, labels = self._block
        nlist = max(1, min(labels.size, round(policy.view_lists_per_sqrt * math.sqrt(labels.size))))
        quantizer = faiss.IndexFlatIP(self.dim)
        ivf: Any
        if compact(policy, labels.size, rescore):
            # bfloat16 needs no training and keeps 8 bits of mantissa: ranking candidates by it
            # and re-scoring the best exactly loses nothing measurable.
            ivf = faiss.IndexIVFScalarQuantizer(
                quantizer, self.dim, nlist, faiss.ScalarQuantizer.QT_bf16, faiss.METRIC_INNER_PRODUCT, False
            )
            self.codes, self._rescore, self.rerank = "bf16", rescore, max(1, policy.view_rerank)
        else:
            ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            self.codes, self.rerank = "flat", 1
        ivf.cp.niter = 10
        ivf.cp.seed = SEED
        # Small lists on purpose (a few dozen items): FAISS's "too few points per centroid"
        # warning does not apply. Training on at most 64 points per list bounds the k-means.
        ivf.cp.min_points_per_centroid = 1
        ivf.cp.max_points_per_centroid = 64
        ivf.train(vectors)
        ivf.add_with_ids(vectors, labels)
        self.nlist = nlist
        # The quantizer must outlive the IVF that points at it.
        self._quantizer, self._ivf = quantizer, ivf
        self._params: dict[int, Any] = {}
        self.min_nprobe = calibrated_nprobe(
            lambda q, k, nprobe: self._search_ivf(q, k, nprobe), vectors, nlist, calibration, policy.view_recall_target
        )
        self._block = (np.empty((0, self.dim), np.float32), labels[:0])

    def _search_ivf(self, queries: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        params = self._params.get(nprobe)
        if params is None:
            params = self._params[nprobe] = faiss.SearchParametersIVF()
            params.nprobe = nprobe
        if self._rescore is None:
            return self._ivf.search(queries, k, params=params)
        # Candidates from the bfloat16 codes, ranked by their exact scores (-1 padding scores -inf
        # and so stays last).
        _, cand = self._ivf.search(queries, k * self.rerank, params=params)
        exact = self._rescore(queries, cand)
        if queries.shape[0] == 1:
            order = (-exact[0]).argsort(kind="stable")[:k]
            return exact[0][order][None, :], cand[0][order][None, :]
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        rows = np.arange(queries.shape[0])[:, None]
        return exact[rows, order], cand[rows, order]

    @property
    def count(self) -> int:
        return len(self.members)

    @property
    def exact(self) -> bool:
        return self._ivf is None

    @property
    def nbytes(self) -> int:
        return len(self.members) * item_bytes(self.dim, self.codes)

    def search(self, queries: np.ndarray, k: int, share: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of the view; an IVF view probes at least ``share`` of its lists."""
        if self._ivf is not None:
            nprobe = min(self.nlist, max(self.min_nprobe, math.ceil(share * self.nlist - 1e-9)))
            return self._search_ivf(queries, k, nprobe)
        vectors, labels = self._block
        return top_k(queries, vectors, labels, k)

    def add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        new = [i for i, lab in enumerate(labels.tolist()) if lab not in self.members]
        if not new:
            return
        vectors, labels = vectors[new], labels[new]
        if self._ivf is not None:
            self._ivf.add_with_ids(np.ascontiguousarray(vectors, np.float32), labels)
        else:
            old_v, old_l = self._block
            # Labels are never reused, so a new one is the largest: the rows stay in label order.
            order = np.argsort(np.concatenate([old_l, labels]), kind="stable")
            self._block = (
                np.ascontiguousarray(np.concatenate([old_v, vectors])[order], np.float32),
                np.concatenate([old_l, labels])[order],
            )
        self.members.update(labels.tolist())

    def remove(self, labels: np.ndarray) -> None:
        gone = [lab for lab in labels.tolist() if lab in self.members]
        if not gone:
            return
        if self._ivf is not None:
            self._ivf.remove_ids(np.asarray(gone, np.int64))
        else:
            old_v, old_l = self._block
            keep = ~np.isin(old_l, gone)
            self._block = (np.ascontiguousarray(old_v[keep]), old_l[keep])  # one swap: readers see old or new
        self.members.difference_update(gone)


def calibrated_nprobe(
    search: Callable[[np.ndarray, int, int], tuple[np.ndarray, np.ndarray]],
    vectors: np.ndarray,
    nlist: int,
    queries: np.ndarray | None,
    target: float,
    k: int = 10,
) -> int:
    """The fewest lists (``search(queries, k, nprobe)`` over ``vectors``) whose recall@k against
    exact search over the same vectors reaches ``target`` for ``queries`` (catalog vectors: a
    filtered request can come from anywhere in the catalog, far from the view's items); every
    list without queries."""
    if queries is None or queries.shape[0] == 0:
        return nlist
    kk = min(k, vectors.shape[0])
    truth = exact_top_k(queries, vectors, np.arange(vectors.shape[0]), kk)[0][:, kk - 1]
    lo, hi = 1, nlist  # recall grows with nprobe: the smallest reaching the target, by bisection
    while lo < hi:
        mid = (lo + hi) // 2
        scores, _ = search(queries, kk, mid)
        # Ties count, as in the benchmark: an item scoring at least the k-th exact score is right.
        recall = float((scores >= truth[:, None] - 1e-5).sum()) / (kk * queries.shape[0])
        if recall >= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


def compact(policy: FilterSearchConfig, count: int, rescore: Rescore | None) -> bool:
    """Does an IVF view of ``count`` items keep bfloat16 codes (see ``view_bf16_min_items``)."""
    return rescore is not None and count > policy.view_bf16_min_items


def item_bytes(dim: int, codes: str) -> int:
    """Bytes a view keeps per item: its vector (float32, or bfloat16) and label."""
    return (dim * 2 if codes == "bf16" else dim * 4) + 8


def top_k(queries: np.ndarray, vectors: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k of ``queries`` over ``vectors`` (row i has label ``labels[i]``),
    -inf / -1 past the rows. One query (a request) takes a short path: no per-row index arrays."""
    nq, m = queries.shape[0], vectors.shape[0]
    if nq != 1 or m <= k:
        return exact_top_k(queries, vectors, labels, k)
    s = vectors @ queries[0]
    if m <= 256:  # a sort of a few hundred scores costs less than partition + sort + gather
        best = (-s).argsort(kind="stable")[:k]
    else:
        part = s.argpartition(m - k)[m - k :]
        best = part[(-s[part]).argsort(kind="stable")]
    return s[best][None, :], labels[best][None, :]


class FilterViews:
    """The views of one index's filters (see the module docstring), following its writes."""

    def __init__(
        self,
        table: AttributeTable,
        vectors_of: VectorsOf,
        policy: FilterSearchConfig,
        dim: int,
        rescore: Rescore | None = None,
    ) -> None:
        self.table = table
        self.dim = dim
        self._rescore = rescore
        self.policy = policy
        self._vectors_of = vectors_of
        self._views: dict[Filter, View] = {}
        self._tick = 0  # a use counter: which view was used least recently
        self._lock = threading.Lock()  # building and dropping views (searches read without it)
        self._calibration: np.ndarray | None = None
        table.listeners.append(self.changed)

    def calibration_queries(self) -> np.ndarray | None:
        """The queries an IVF view's probing is tuned on (drawn once): catalog vectors plus
        noise, the query model of the index sweep (``itemsage.index.pipeline.sweep_queries``)."""
        if self._calibration is None:
            labels = self.table.labels()
            n = min(self.policy.view_calibration_queries, labels.size)
            rng = np.random.default_rng(SEED)
            pick = np.sort(rng.choice(labels, size=n, replace=False)) if n else labels
            got = self._vectors_of(pick)
            if got is None or got[0].shape[0] == 0:
                return None
            g = rng.standard_normal(got[0].shape).astype(np.float32)
            q = got[0] + g * (CALIBRATION_NOISE / np.linalg.norm(g, axis=1, keepdims=True))
            self._calibration = np.ascontiguousarray(q / np.linalg.norm(q, axis=1, keepdims=True), np.float32)
        return self._calibration

    def _codes(self, count: int) -> str:
        """What a view of ``count`` items built now stores."""
        if count <= self.policy.view_exact_max:
            return "exact"
        return "bf16" if compact(self.policy, count, self._rescore) else "flat"

    def close(self) -> None:
        """Stop following the table (the index attached another one)."""
        if self.changed in self.table.listeners:
            self.table.listeners.remove(self.changed)
        self._views = {}

    def __len__(self) -> int:
        return len(self._views)

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in list(self._views.values()))

    def get(self, flt: Filter) -> View | None:
        return self._views.get(flt)

    def prebuild(self) -> int:
        """Build the views of single keyword values too large for the exact form (the small ones
        cost a gather on first use); the most frequent first, within ``view_max_bytes``. Returns
        how many were built."""
        built = 0
        for name, value, count in self.table.keyword_values():
            if not self.policy.view_exact_max < count <= self.policy.view_max_items:
                continue
            flt = Filter((Equals(name, value),))
            sel = self.table.select(flt)
            if (
                sel is None
                or self.nbytes + count * item_bytes(self.dim, self._codes(count)) > self.policy.view_max_bytes
            ):
                continue
            if self._build(sel) is not None:
                built += 1
        return built

    def search(
        self, queries: np.ndarray, k: int, selection: Selection, share: float = 0.0
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The filter's top-k from its view (built now if it has none); None when the filter gets
        no view (too many items, no vectors to copy). ``share``: see :meth:`View.search`."""
        view = selection.view
        if view is None:
            # Looked up once per selection: a selection lives until the next write, and a view
            # found for it answers right until then even if it is dropped from here meanwhile.
            flt = selection.filter
            if flt is None or selection.count > self.policy.view_max_items:
                return None
            view = self._views.get(flt)
            if view is None:
                if selection.count > self.policy.view_lazy_max_items:
                    return None  # too long a build for a request to wait for
                view = self._build(selection)
                if view is None:
                    return None
            selection.view = view
        self._tick += 1  # unlocked: a lost increment only blurs the eviction order
        view.last_used = self._tick
        return view.search(queries, k, share)

    def _build(self, selection: Selection) -> View | None:
        flt = selection.filter
        assert flt is not None
        with self._lock:
            view = self._views.get(flt)
            if view is not None:
                return view
            got = self._vectors_of(selection.labels())
            if got is None:
                return None
            vectors, labels = got
            need = labels.size * item_bytes(self.dim, self._codes(labels.size))
            if need > self.policy.view_max_bytes:
                return None
            calibration = self.calibration_queries() if labels.size > self.policy.view_exact_max else None
            view = View(flt, vectors, labels, self.policy, calibration, self._rescore)
            self._tick += 1
            view.last_used = self._tick
            views = dict(self._views)
            total = sum(v.nbytes for v in views.values())
            while views and total + need > self.policy.view_max_bytes:
                oldest = min(views, key=lambda f: views[f].last_used)
                total -= views.pop(oldest).nbytes
            views[flt] = view
            self._views = views  # published whole: a search iterating the old dict is unaffected
            return view

    # ---- following writes ----------------------------------------------------------------------
    def changed(self, label: int) -> None:
        """Label ``label``'s attributes changed: take it into the views whose filter it now
        matches (when it has a vector), drop it from those it no longer matches."""
        views = list(self._views.values())
        if not views:
            return
        vector: tuple[np.ndarray, np.ndarray] | None = None
        for view in views:
            inside = label in view.members
            if self.table.matches(view.filter, label):
                if not inside:
                    if vector is None:
                        vector = self._vectors_of(np.array([label], np.int64))
                    if vector is not None and vector[1].size:
                        view.add(*vector)
            elif inside:
                view.remove(np.array([label], np.int64))

    def added(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        """Vectors came for ``labels``: a label whose attributes were set before its vector (so
        no view could take it then) joins the views it matches."""
        for view in list(self._views.values()):
            take = [i for i, lab in enumerate(labels.tolist()) if self.table.matches(view.filter, lab)]
            if take:
                view.add(vectors[take], labels[take])

    def removed(self, labels: np.ndarray) -> None:
        """The vectors of ``labels`` left the index: no view keeps them."""
        for view in list(self._views.values()):
            view.remove(labels)

"""Filtered retrieval benchmark: recall@k and QPS of filtered ANN vs exact filtered search.

For each filter (one table row) three ways to answer "the k best items among those matching":

* **filtered ANN**: ``ItemIndex.search(q, k, where=index.select(filters))``, the serving path
  (``itemsage.index.filtered``): the filter's view (``itemsage.index.views``: its items' vectors,
  exact or a small IVF) when it keeps at most ``view_max_items`` items, else IVF with the filter's
  ``IDSelectorBitmap`` inside the search and lists probed by where the matching items are, or
  exact search over the selected items up to ``FilterSearchConfig.exact_max_matches``;
* **exact filtered search** (the reference and the speed baseline): FAISS ``IndexFlatIP`` over the
  same vectors with the *same* selector in ``SearchParameters(sel=...)``: the cached selection's
  own ``search_parameters()``, so both sides get the filter evaluated and the selector built once;
* **post-filter**: unfiltered IVF top ``--post-k`` (10,000), then keep the matching items: the usual
  shortcut, whose recall collapses once fewer than k matches survive in the top 10k.

Every method calls ``index.select`` per query, as a request does; a repeated filter's selection
is cached per attribute-table version (a write makes it stale), for every method alike. The first
request of each filter is timed alone (wall clock, "first request"): it makes the selection and,
for a filter without a prebuilt view, builds the view. Catalogs:
``--n`` x ``--dim`` synthetic clustered unit vectors (``itemsage.index.synthetic``) with a random
``bucket`` keyword attribute whose values keep exactly 50%, 10%, 1% and 0.1% of the items, and a
uniform ``price`` for a range clause; then (unless ``--no-fashion``) the fashion catalog
(``data/fashion``, read by the catalog adapter) with its real attributes gender (``size_type``),
articleType (``product_types``) and baseColour (``colors``), embedded with the *frozen* MiniLM
title embedding (384-d; no trained model is assumed to exist). Queries are held-out mixture points
(synthetic) or catalog embeddings plus noise (fashion, as the index sweep makes them).

QPS are batch-1 (one query per call, as a request), one FAISS thread and one BLAS thread (numpy's
OpenBLAS would otherwise spin a second thread per matrix product), and by default per CPU second
of this process (``--clock cpu``), so other jobs on a shared box do not distort the ratios.
Targets: recall@k >= 0.95 at every selectivity at >= 5x the exact filtered QPS.

    python experiments/bench/filters.py                                 # 1M x 256 + fashion
    nice -n 10 python experiments/bench/filters.py --queries 200 --out bench_filters.json
    python experiments/bench/filters.py --n 100000 --no-fashion          # quick
"""

from __future__ import annotations

import os

# numpy's OpenBLAS fixes its thread count when numpy loads: one thread, as FAISS gets one
# (--threads), unless the environment says otherwise.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from itemsage.config import FilterSearchConfig
from itemsage.index import ItemIndex, build_index
from itemsage.index.attributes import AttributeTable, specs_from_config
from itemsage.index.filtered import uses_exact
from itemsage.index.filters import AttributeSpec
from itemsage.index.sweep import recall_at_k
from itemsage.index.synthetic import ClusteredSphere, item_ids

SYNTHETIC_SHARES = {"b50": 0.5, "b10": 0.1, "b1": 0.01, "b01": 0.001}
SYNTHETIC_SPECS = {
    "bucket": AttributeSpec("bucket", "bucket", "keyword"),
    "price": AttributeSpec("price", "price", "number"),
}
SYNTHETIC_FILTERS: list[dict[str, Any]] = [
    {"bucket": "b50"},
    {"bucket": "b10"},
    {"bucket": "b1"},
    {"bucket": "b01"},
    {"bucket": ["b50", "b10"], "price": {"lt": 10.0}},  # in-list AND range: ~6%
]
FASHION_FILTERS: list[dict[str, Any]] = [
    {"gender": "Women"},
    {"product_type": "Tshirts"},
    {"color": "Red"},
    {"gender": "Women", "product_type": "Tops"},
    {"product_type": "Watches", "color": "Black"},
    {"product_type": "Skirts"},
    {"gender": "Girls", "color": "Pink"},
]


class Clock:
    def __init__(self, kind: str) -> None:
        self.now: Callable[[], float] = time.process_time if kind == "cpu" else time.perf_counter


def synthetic_catalog(args: argparse.Namespace) -> tuple[np.ndarray, list[str], np.ndarray, dict[str, list[Any]]]:
    mix = ClusteredSphere(dim=args.dim, n_clusters=max(10, args.n // 10_000), seed=args.seed)
    x = mix.sample(args.n, seed=1)
    q = mix.sample(args.queries, seed=2)
    rng = np.random.default_rng(args.seed)
    bucket = np.full(args.n, "rest", dtype=object)
    order = rng.permutation(args.n)
    start = 0
    for value, share in SYNTHETIC_SHARES.items():
        m = round(share * args.n)
        bucket[order[start : start + m]] = value
        start += m
    price = np.round(rng.uniform(0, 100, size=args.n), 2)
    return x, item_ids(args.n), q, {"bucket": bucket.tolist(), "price": price.tolist()}


def fashion_catalog(args: argparse.Namespace) -> tuple[np.ndarray, list[str], np.ndarray, dict[str, list[Any]]]:
    from itemsage.data.catalog import read_catalog
    from itemsage.data.text_encoder import TextEncoder
    from itemsage.index.pipeline import sweep_queries

    items = read_catalog(args.fashion, "fashion").items
    titles = items["title"].astype(str).tolist()
    # The frozen encoder maps the same titles to the same vectors: a rerun may reuse them.
    digest = hashlib.sha256("\n".join(titles).encode()).hexdigest()[:16]
    cached = Path(args.embedding_cache) / f"fashion-minilm-{digest}.npy" if args.embedding_cache else None
    if cached is not None and cached.is_file():
        x = np.load(cached)
        print(f"fashion: {len(titles):,} title embeddings read from {cached}", file=sys.stderr)
    else:
        t0 = time.perf_counter()
        x = TextEncoder().encode(titles, batch_size=128)
        print(
            f"fashion: {len(titles):,} titles embedded with frozen MiniLM in {time.perf_counter() - t0:.0f}s",
            file=sys.stderr,
        )
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            np.save(cached, x)
    keep = np.linalg.norm(x, axis=1) > 0
    x = x[keep] / np.linalg.norm(x[keep], axis=1, keepdims=True)
    items = items[keep].reset_index(drop=True)
    q = sweep_queries(x, n=args.queries, seed=args.seed)
    cols = {c: items[c].tolist() for c in ("size_type", "product_types", "colors")}
    return x.astype(np.float32), items["item_id"].astype(str).tolist(), q, cols


def pick_nprobe(index: ItemIndex, q: np.ndarray, truth: list[list[str]], k: int, target: float) -> tuple[int, float]:
    """The smallest power-of-two nprobe whose unfiltered recall@k reaches ``target``."""
    nlist = getattr(index, "nlist", None) or 1
    nprobe, recall = 1, 0.0
    while True:
        index.set_search_params(nprobe=nprobe)
        ids, _ = index.search(q, k)
        recall = recall_at_k(ids, truth, k)
        if recall >= target or nprobe >= nlist:
            return nprobe, recall
        nprobe *= 2


def run_catalog(
    name: str,
    x: np.ndarray,
    ids: list[str],
    q: np.ndarray,
    columns: dict[str, list[Any]],
    specs: dict[str, AttributeSpec],
    filters: list[dict[str, Any]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    clock = Clock(args.clock)
    n, k = x.shape[0], args.k
    t0 = time.perf_counter()
    spec = f"IVF{args.nlist},Flat" if args.nlist else "IVF{nlist},Flat"  # 0: the library's default
    index = build_index(x, ids, spec, use_gpu=False, seed=args.seed)
    policy = FilterSearchConfig(
        exact_max_matches=args.exact_max_matches,
        widen_exponent=args.widen_exponent,
        max_widen=args.max_widen,
        max_density_boost=args.max_density_boost,
        min_probe_per_k=args.min_probe_per_k,
        views=not args.no_views,
    )
    labels = index.idmap.lookup(ids)
    t_attach = time.perf_counter()
    index.attach_attributes(AttributeTable.from_columns(specs, labels, columns, policy))
    attach_s = time.perf_counter() - t_attach  # bitmaps, label-ordered vectors, prebuilt views
    views = getattr(index, "_views", None)
    view_note = f"; {len(views)} views prebuilt, {views.nbytes / 2**20:.0f} MiB" if views is not None else ""
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)  # row i has label i: build_index hands out labels 0..n-1 in order
    build_s = time.perf_counter() - t0
    exact_ids = [[ids[j] for j in row if j >= 0] for row in flat.search(q, k)[1]]
    nprobe, base_recall = pick_nprobe(index, q, exact_ids, k, args.recall_target)
    print(
        f"{name}: n={n:,} {index.spec} built in {build_s:.0f}s (attributes attached in {attach_s:.1f}s{view_note}); nprobe={nprobe} (unfiltered recall@{k} {base_recall:.3f})",
        file=sys.stderr,
    )

    row_of = {item: r for r, item in enumerate(ids)}
    rows = []
    for flt in filters:
        # The first request of this filter, timed alone (wall clock): it parses the filter, makes
        # its selection and, for a filter without a view yet (a conjunction), builds the view.
        start = time.perf_counter()
        index.search(q[:1], k, where=index.select(flt))
        first_ms = 1000 * (time.perf_counter() - start)
        sel = index.select(flt)
        assert sel is not None
        # The whole query set in one call (what a server batching requests of one filter would
        # do); the exact answer's scores are the recall reference. Exact search gets the same
        # cached selection and FAISS selector as the filtered ANN path (Selection.search_parameters).
        start = clock.now()
        ref_scores, _ = flat.search(q, k, params=sel.search_parameters())
        qps_exact_batch = q.shape[0] / max(clock.now() - start, 1e-9)
        start = clock.now()
        index.search(q, k, where=index.select(flt))
        qps_ann_batch = q.shape[0] / max(clock.now() - start, 1e-9)

        def exact_one(qi: np.ndarray, flt: dict[str, Any] = flt) -> list[str]:
            s = index.select(flt)
            assert s is not None
            _, lab = flat.search(qi, k, params=s.search_parameters())
            return [ids[j] for j in lab[0] if j >= 0]

        def ann_one(qi: np.ndarray, flt: dict[str, Any] = flt) -> list[str]:
            got, _ = index.search(qi, k, where=index.select(flt))
            return got[0]

        def post_one(qi: np.ndarray, flt: dict[str, Any] = flt) -> list[str]:
            s = index.select(flt)
            assert s is not None
            got, _ = index.search(qi, args.post_k)
            lab = index.idmap.lookup(got[0]) if got[0] else np.empty(0, np.int64)
            ok = s.contains(lab)
            return [i for i, o in zip(got[0], ok) if o][:k]

        measured = {}
        for method, fn in (("exact", exact_one), ("ann", ann_one), ("post", post_one)):
            start = clock.now()
            res = [fn(q[i : i + 1]) for i in range(q.shape[0])]
            seconds = max(clock.now() - start, 1e-9)
            measured[method] = (res, q.shape[0] / seconds)
        want = min(k, sel.count)

        def recall(
            found: list[list[str]],
            matches: int = sel.count,
            want: int = want,
            kth: np.ndarray = ref_scores[:, want - 1],
        ) -> float:
            """Share of the k best matching items found, ties counted: an item whose exact score
            reaches the k-th best exact filtered score is as right as the one the reference
            returned (many fashion titles are duplicates and embed identically)."""
            if matches == 0:  # nothing matches: right when nothing came back
                return float(all(not f for f in found))
            hits = 0
            for qi, row in enumerate(found):
                scores = x[[row_of[i] for i in row]] @ q[qi] if row else np.empty(0)
                hits += min(want, int((scores >= kth[qi] - 1e-5).sum()))
            return hits / (want * len(found))

        row = {
            "catalog": name,
            "filter": json.dumps(flt),
            "selectivity": sel.count / n,
            "matches": sel.count,
            "path": path_of(index, sel, n, k, policy),
            "first_request_ms": first_ms,
            "recall_ann": recall(measured["ann"][0]),
            "qps_ann": measured["ann"][1],
            "qps_exact": measured["exact"][1],
            "recall_post": recall(measured["post"][0]),
            "qps_post": measured["post"][1],
            "qps_ann_batch": qps_ann_batch,
            "qps_exact_batch": qps_exact_batch,
        }
        row["speedup"] = row["qps_ann"] / row["qps_exact"]
        row["speedup_batch"] = qps_ann_batch / qps_exact_batch
        rows.append(row)
        print(markdown_row(row), file=sys.stderr)
    return {
        "catalog": name,
        "n": n,
        "dim": int(x.shape[1]),
        "spec": index.spec,
        "nprobe": nprobe,
        "unfiltered_recall": base_recall,
        "build_s": build_s,
        "attach_s": attach_s,
        "views_prebuilt": len(views) if views is not None else 0,
        "views_mib": views.nbytes / 2**20 if views is not None else 0.0,
        "rows": rows,
    }


def path_of(index: ItemIndex, sel: Any, n: int, k: int, policy: FilterSearchConfig) -> str:
    """Which way the filtered ANN search answered this filter."""
    views = getattr(index, "_views", None)
    view = views.get(sel.filter) if views is not None and sel.filter is not None else None
    if view is not None:
        return f"view, exact ({view.count:,})" if view.exact else f"view, IVF{view.nlist} nprobe {view.min_nprobe}"
    return "exact subset" if uses_exact(sel, n, k, policy) else "IVF + selector"


def markdown_row(r: dict[str, Any]) -> str:
    ok = "PASS" if r["recall_ann"] >= 0.95 and r["speedup"] >= 5 else "FAIL"
    return (
        f"| {r['catalog']} | `{r['filter']}` | {100 * r['selectivity']:.2f}% | {r['path']} | "
        f"{r['recall_ann']:.3f} | {r['qps_ann']:,.0f} | {r['qps_exact']:,.0f} | {r['speedup']:.1f}x | "
        f"{r['recall_post']:.3f} | {r['qps_post']:,.0f} | {r['speedup_batch']:.1f}x | "
        f"{r['first_request_ms']:.1f} | {ok} |"
    )


def markdown(results: list[dict[str, Any]], k: int) -> str:
    head = (
        f"| catalog | filter | selectivity | path | recall@{k} filtered ANN | QPS filtered ANN | "
        f"QPS exact filtered | speed-up | recall@{k} post-filter (top 10k) | QPS post-filter | "
        "speed-up, all queries in one call | first request (ms) | target (batch 1) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    return "\n".join([head, *(markdown_row(r) for res in results for r in res["rows"])])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    doc = __doc__ or ""
    p = argparse.ArgumentParser(
        description=doc.split("\n\n")[0],
        epilog=doc.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    default = FilterSearchConfig()
    p.add_argument("--n", type=int, default=1_000_000, help="synthetic catalog size (default 1,000,000)")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument(
        "--queries", type=int, default=200, help="queries per catalog (default 200: exact search at 1M is the cost)"
    )
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--nlist", type=int, default=1024, help="IVF lists (0: the library's ~4*sqrt(N))")
    p.add_argument("--recall-target", type=float, default=0.95, help="unfiltered recall nprobe is chosen for")
    p.add_argument("--post-k", type=int, default=10_000, help="post-filter baseline: unfiltered top-k first")
    p.add_argument("--exact-max-matches", type=int, default=default.exact_max_matches)
    p.add_argument("--widen-exponent", type=float, default=default.widen_exponent)
    p.add_argument("--max-widen", type=float, default=default.max_widen)
    p.add_argument("--max-density-boost", type=float, default=default.max_density_boost)
    p.add_argument("--min-probe-per-k", type=float, default=default.min_probe_per_k)
    p.add_argument(
        "--no-views", action="store_true", help="no filter views (itemsage.index.views): the selector paths only"
    )
    p.add_argument("--threads", type=int, default=1, help="FAISS OpenMP threads (default 1)")
    p.add_argument(
        "--clock", choices=("cpu", "wall"), default="cpu", help="QPS per CPU second (default) or wall second"
    )
    p.add_argument("--fashion", default="data/fashion", help="fashion catalog (styles.csv + images/)")
    p.add_argument(
        "--embedding-cache", help="directory to keep the fashion title embeddings in (reused by a rerun; default: none)"
    )
    p.add_argument("--no-fashion", action="store_true")
    p.add_argument("--no-synthetic", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the results as JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    faiss.omp_set_num_threads(args.threads)
    results = []
    if not args.no_synthetic:
        x, ids, q, cols = synthetic_catalog(args)
        results.append(
            run_catalog(f"synthetic {args.n // 1000}k", x, ids, q, cols, SYNTHETIC_SPECS, SYNTHETIC_FILTERS, args)
        )
        del x
    if not args.no_fashion:
        if not Path(args.fashion).exists():
            print(f"no fashion catalog at {args.fashion}: its rows are skipped", file=sys.stderr)
        else:
            from itemsage.config import IndexConfig

            specs = specs_from_config(IndexConfig().filterable)
            specs.pop("price")
            x, ids, q, cols = fashion_catalog(args)
            results.append(
                run_catalog(
                    "fashion", x, ids, q, cols, specs, FASHION_FILTERS, args.__class__(**{**vars(args), "nlist": 0})
                )
            )
    print(markdown(results, args.k))
    failed = [r for res in results for r in res["rows"] if r["recall_ann"] < 0.95 or r["speedup"] < 5]
    print(f"\n{len(failed)} of {sum(len(r['rows']) for r in results)} rows miss recall >= 0.95 at >= 5x exact QPS")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    return results


if __name__ == "__main__":
    main()

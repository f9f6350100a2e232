"""What the lexical index costs: build, a lexical search, a live batch commit; next to a dense search.

    python experiments/bench/lexical.py --features artifacts/full/shopee
    python experiments/bench/lexical.py --features data/sample/features --queries 200

Over a features directory's ``catalog.parquet`` (the model's default text fields joined, as the
index pipeline builds it) and ``queries.parquet`` (search texts): the time to build the
``LexicalIndex``, the mean time of a lexical search (k = ``HybridConfig.depth``, what hybrid reads),
and the median / max time of a live batch (``--batch`` upserts and as many deletes, staged and
committed, what one applied step of the change log does under the live index's lock). The same
queries also search an exact FAISS index (one thread) of as many random 256-d unit vectors, the dense side of a
hybrid search, measured in the same run: the ratio says what hybrid adds to a dense search. Wall
clock: on a shared box other jobs add noise, so read the ratio rather than the milliseconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

try:
    import itemsage  # noqa: F401
except ImportError:  # a plain checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "platform"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", required=True, help="features directory (catalog.parquet, queries.parquet)")
    p.add_argument("--queries", type=int, default=1000, help="search texts timed")
    p.add_argument("--batch", type=int, default=10, help="upserts (and deletes) per live batch")
    p.add_argument("--batches", type=int, default=20, help="live batches timed")
    p.add_argument("--out", default=None, help="also write the figures as JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import faiss
    import numpy as np
    import pyarrow.parquet as pq

    from itemsage.config import TEXT_FIELDS, HybridConfig
    from itemsage.index import build_index
    from itemsage.index.lexical import LexicalIndex, item_text

    root = Path(args.features)
    catalog = pq.read_table(root / "catalog.parquet").to_pylist()
    texts = [str(t or "") for t in pq.read_table(root / "queries.parquet", columns=["text"]).column("text").to_pylist()]
    texts = [t for t in texts if t.strip()][: args.queries]
    if not catalog or not texts:
        print(f"error: {root} has no catalog items or no search queries", file=sys.stderr)
        return 2
    depth = HybridConfig().depth
    start = time.perf_counter()
    lexical = LexicalIndex(TEXT_FIELDS, {i: item_text(r, TEXT_FIELDS) for i, r in enumerate(catalog)}).warm()
    build_s = time.perf_counter() - start

    faiss.omp_set_num_threads(1)  # batch-1 requests, one thread each (tantivy searches on one too)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((len(catalog), 256)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    dense = build_index(x, [str(i) for i in range(len(catalog))], "Flat", use_gpu=False)
    q = x[rng.integers(0, len(catalog), len(texts))]

    def timed(fn: object, n: int) -> float:
        start = time.perf_counter()
        for i in range(n):
            fn(i)  # type: ignore[operator]
        return (time.perf_counter() - start) / n

    timed(lambda i: lexical.search(texts[i % len(texts)], depth), 50)  # warm up
    lexical_ms = 1000 * timed(lambda i: lexical.search(texts[i], depth), len(texts))
    dense_ms = 1000 * timed(lambda i: dense.search(q[i : i + 1], depth), len(texts))

    commits = []
    next_label = len(catalog)
    for b in range(args.batches):
        adds = [(next_label + j, f"new listing {next_label + j}") for j in range(args.batch)]
        next_label += args.batch
        start = time.perf_counter()
        lexical.stage(add=adds, remove=range(b * args.batch, (b + 1) * args.batch))
        lexical.commit()
        commits.append(1000 * (time.perf_counter() - start))
    figures = {
        "items": len(catalog),
        "build_s": round(build_s, 3),
        "lexical_search_ms": round(lexical_ms, 3),
        "dense_flat_search_ms": round(dense_ms, 3),
        "lexical_over_dense": round(lexical_ms / dense_ms, 2),
        "commit_median_ms": round(float(np.median(commits)), 2),
        "commit_max_ms": round(float(np.max(commits)), 2),
        "depth": depth,
        "batch": args.batch,
    }
    print(
        f"{figures['items']:,} items: lexical index built in {figures['build_s']} s; search (k={depth}) "
        f"{figures['lexical_search_ms']} ms, exact dense search of the same k {figures['dense_flat_search_ms']} ms "
        f"(x{figures['lexical_over_dense']}); a live batch of {args.batch} upserts + {args.batch} deletes "
        f"committed in {figures['commit_median_ms']} ms median, {figures['commit_max_ms']} ms max"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Embed every catalog item with a trained item tower (Ray Data actor pool) into Parquet.

    python experiments/embed.py --model models:/itemsage/3 --features artifacts/features \\
        --out artifacts/embeddings
    python experiments/embed.py --model models:/itemsage/3 --catalog data/fashion \\
        --out artifacts/embeddings-v2 --incremental --previous artifacts/embeddings

--features reads a preprocessed features directory (made with the model's vocabulary);
--catalog reads a raw catalog in any supported layout and featurizes it with the model's
vocabulary and image backbone first. Output: Parquet with item_id, embedding (list<float32>,
embedding_dim values), model_version, content_hash, plus _manifest.json. --incremental with
--previous embeds only items that are new or whose catalog row changed (content hash) and carries
the other rows over; previous embeddings of another model version are never carried over.

Ray: connects to RAY_ADDRESS (as under `ray job submit`) or starts a local instance (--num-cpus
caps it). One tower actor per GPU on GPU clusters. Exit status 2 with a one-line `error: ...`
when the inputs cannot be used.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

try:
    import itemsage  # noqa: F401
except ImportError:  # a plain checkout (e.g. a job's working dir) without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="models:/itemsage/<version|latest>, runs:/<id>/model or a bundle/checkpoint dir")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--features", help="preprocessed features directory (items.parquet)")
    src.add_argument("--catalog", help="raw catalog (fashion / shopee / generic / amazon layout)")
    p.add_argument("--layout", default="auto", choices=["auto", "fashion", "shopee", "generic", "amazon"], help="layout of --catalog")
    p.add_argument("--out", required=True, help="output directory or URI (replaced when the run succeeds)")
    p.add_argument("--incremental", action="store_true", help="embed only new or changed items (needs --previous)")
    p.add_argument("--previous", default=None, help="an earlier output of this script")
    p.add_argument("--batch-size", type=int, default=None, help="rows per tower call (default 1024 on GPU, 256 on CPU)")
    p.add_argument("--concurrency", type=int, default=1, help="tower actors (capped at the GPU count)")
    p.add_argument("--num-threads", type=int, default=0, help="torch threads per actor (0: one per reserved CPU)")
    p.add_argument("--use-gpu", default="auto", choices=["auto", "true", "false"], help="tower actors on GPUs")
    p.add_argument("--num-cpus", type=float, default=None, help="CPUs of a locally started Ray instance")
    p.add_argument("--summary-json", default=None, help="also write the run summary as JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.incremental != bool(args.previous):
        print("error: --incremental and --previous go together (the previous output to update)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from itemsage.index.embed import embed_features

    if args.num_cpus is not None and not os.environ.get("RAY_ADDRESS"):
        import ray

        ray.init(num_cpus=args.num_cpus, include_dashboard=False)
    try:
        summary = embed_features(
            args.model,
            args.features or args.catalog,
            args.out,
            layout=args.layout,
            previous=args.previous,
            batch_size=args.batch_size,
            concurrency=args.concurrency,
            num_threads=args.num_threads,
            use_gpu=args.use_gpu,
        )
    except (FileNotFoundError, ValueError, LookupError) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    print(summary.table(), flush=True)
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

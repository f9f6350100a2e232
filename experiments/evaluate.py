"""Offline Recall@10/@50 of a trained model per surface and task, with the frozen and random baselines.

    python experiments/evaluate.py --model models:/itemsage/3 --features artifacts/features
    python experiments/evaluate.py --model artifacts/ray_results/itemsage/model \\
        --catalog data/shopee --layout shopee --out artifacts/eval/shopee.json

Each held-out (test split) pair ranks its engaged item against the whole evaluation catalog with
exact search. --features: a features directory made with the model's vocabulary (e.g. its training
features). --catalog: any catalog in a supported layout, also one the model never saw; it is
preprocessed with the model's preprocessing config and vocabulary (Ray Data), with engagements
from --engagements, Shopee label groups, or the synthetic generator (the model's seed, default 0).
Neither: the features directory the model was trained on. On the model's own training features,
a split that holds out both items trained on and new ones (a time split) also gets
<surface>/seen and <surface>/unseen rows: new items cannot have the popularity a model learns.

Prints the markdown table and, with --out, writes the JSON; --queries-out writes the search
queries it evaluated and their embeddings (.npz), to compare with the API or Serve. Exit status 2 with a one-line
`error: ...` when the model, catalog or features cannot be used.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

try:
    import itemsage  # noqa: F401
except ImportError:  # a plain checkout (e.g. a job's working dir) without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="models:/itemsage/<version|latest>, runs:/<id>/model or a bundle/checkpoint dir")
    p.add_argument("--catalog", default=None, help="catalog to evaluate on (featurized with the model's vocab and backbone)")
    p.add_argument("--layout", default="auto", choices=["auto", "fashion", "shopee", "generic", "amazon"], help="catalog layout")
    p.add_argument("--engagements", default=None, help="engagement log (Parquet/JSONL/CSV) for --catalog")
    p.add_argument("--features", default=None, help="preprocessed features directory (with the model's vocab)")
    p.add_argument("--features-out", default=None, help="keep the features made from --catalog here")
    p.add_argument("--split", default="test", choices=["test", "val"], help="held-out split to evaluate")
    p.add_argument("--out", default=None, help="write the result as JSON here")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--queries-out", default=None,
                   help="write the evaluated search queries and their embeddings here (.npz: texts, embeddings)")
    p.add_argument("--num-cpus", type=float, default=None, help="CPUs of a locally started Ray (featurizing --catalog)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from itemsage.eval.evaluate import evaluate_model

    if args.num_cpus is not None and args.catalog:
        import os

        import ray

        if not os.environ.get("RAY_ADDRESS"):
            ray.init(num_cpus=args.num_cpus, include_dashboard=False)
    try:
        result = evaluate_model(
            args.model,
            catalog=args.catalog,
            layout=args.layout,
            engagements=args.engagements,
            features=args.features,
            features_out=args.features_out,
            split=args.split,
            device=args.device,
            out=args.out,
            queries_out=args.queries_out,
        )
    except (FileNotFoundError, ValueError, LookupError) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    print(result.markdown(), flush=True)
    if args.out:
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

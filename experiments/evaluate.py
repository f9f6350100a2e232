"""Offline Recall@10/@50 of a trained model per probe and task, next to the baselines a user tries first.

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

Probes: search (text query -> items), closeup (query item's image -> items, where images exist),
item2item (item -> item through the item tower), home (user -> items). Baselines on the same
pairs and candidates: char-3gram TF-IDF and BM25 over the items' text fields, frozen MiniLM,
frozen image features, frozen user features (home), random (--baseline-fit: what TF-IDF's IDF is
fit on). Search and item2item also get the served modes of /search and /similar: the lexical
index alone, hybrid (the model and the lexical index fused by reciprocal rank) and the same fusion
with frozen MiniLM in the model's place. The run is logged to MLflow (--tracking-uri, --experiment; tags say the dataset, split,
configuration and seed) for experiments/quality_report.py; --no-tracking skips that.

Prints the markdown table and, with --out, writes the JSON; --queries-out writes the search
queries it evaluated and their embeddings (.npz), to compare with the API or Serve. Exit status 2 with a one-line
`error: ...` when the model, catalog or features cannot be used, 3 when the result could not be
logged to MLflow (it is printed and written all the same).
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
    from itemsage.data.layouts import LAYOUTS  # every layout the readers know

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model", required=True, help="models:/itemsage/<version|latest>, runs:/<id>/model or a bundle/checkpoint dir"
    )
    p.add_argument(
        "--catalog", default=None, help="catalog to evaluate on (featurized with the model's vocab and backbone)"
    )
    p.add_argument("--layout", default="auto", choices=["auto", *LAYOUTS], help="catalog layout")
    p.add_argument("--engagements", default=None, help="engagement log (Parquet/JSONL/CSV) for --catalog")
    p.add_argument("--features", default=None, help="preprocessed features directory (with the model's vocab)")
    p.add_argument("--features-out", default=None, help="keep the features made from --catalog here")
    p.add_argument("--split", default="test", choices=["test", "val"], help="held-out split to evaluate")
    p.add_argument("--out", default=None, help="write the result as JSON here")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument(
        "--queries-out",
        default=None,
        help="write the evaluated search queries and their embeddings here (.npz: texts, embeddings)",
    )
    p.add_argument("--num-cpus", type=float, default=None, help="CPUs of a locally started Ray (featurizing --catalog)")
    p.add_argument(
        "--baseline-fit",
        default="catalog",
        choices=["catalog", "train"],
        help="fit the TF-IDF baseline's IDF on every catalog item (default) or on training items only",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random baseline")
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)",
    )
    p.add_argument("--experiment", default="itemsage-eval", help="MLflow experiment of the evaluation run")
    p.add_argument(
        "--tag", action="append", default=[], metavar="KEY=VALUE", help="extra tag of the MLflow run (repeatable)"
    )
    p.add_argument("--no-tracking", action="store_true", help="do not log the evaluation to MLflow")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from itemsage.eval.evaluate import evaluate_model
    from itemsage.eval.tracking import log_evaluation, parse_tags

    try:
        tags = parse_tags(args.tag)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

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
            seed=args.seed,
            baseline_fit=args.baseline_fit,
        )
    except (FileNotFoundError, ValueError, LookupError) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    print(result.markdown(), flush=True)
    if args.out:
        print(f"\nwrote {args.out}")
    if not args.no_tracking:
        try:
            run_id = log_evaluation(result, args.tracking_uri, args.experiment, tags)
        except Exception as e:  # noqa: BLE001 - MLflow raises many types; the table is printed already
            print(
                f"error: evaluation not logged to MLflow: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}",
                file=sys.stderr,
            )
            return 3
        print(f"MLflow run: {run_id} (experiment {args.experiment})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

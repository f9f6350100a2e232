"""Train one configuration with several seeds and evaluate each model against the baselines.

    python experiments/seeds.py --config experiments/configs/amazon.yaml --seeds 0 1 2
    python experiments/quality_report.py --tag itemsage.config=amazon

Each seed is a run of its own (train.seed=N, train.name=<name>_seed<N>), registered like any
training; its evaluation on --split (every probe, the model and every baseline, each ranked
against the whole catalog) is logged to MLflow (--eval-experiment) with the configuration and seed
as tags, which experiments/quality_report.py averages over. Re-running resumes finished seeds.

On a small catalog the held-out split moves a figure more than the seed does; repeat over
item-disjoint splits too (preprocess.engagement.seed=N holds out other items):

    python experiments/seeds.py --config experiments/configs/amazon.yaml --split-seeds 0 1 2 3 4 5 --seeds 0

Each split other than the configuration's own is preprocessed into <train.features>_split<N>
(reused while its preprocessing is unchanged) and trained under <train.storage_path>/split<N>;
the report then gives the mean and spread over splits (itemsage.studies.splits).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

try:
    import itemsage  # noqa: F401
except ImportError:  # a plain checkout (e.g. a job's working dir) without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from itemsage.config import ConfigError  # noqa: E402
from itemsage.data.features_read import FeaturesError  # noqa: E402
from itemsage.studies.seeds import run_seeds, seed_config  # noqa: E402
from itemsage.studies.splits import run_splits  # noqa: E402
from itemsage.train.trainer import check_config, check_inputs, start_local_ray  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="pipeline YAML")
    p.add_argument("overrides", nargs="*", help="dotted overrides for every seed, e.g. train.max_steps=100")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="train.seed values (default 0 1 2)")
    p.add_argument(
        "--split-seeds",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="item-disjoint splits (preprocess.engagement.seed values) to repeat the seeds on; "
        "default: only the features' own split",
    )
    p.add_argument("--split", default="test", choices=["test", "val"], help="held-out split to evaluate on")
    p.add_argument(
        "--baseline-fit",
        default="catalog",
        choices=["catalog", "train"],
        help="what the TF-IDF baseline's IDF is fit on",
    )
    p.add_argument("--eval-experiment", default="itemsage-eval", help="MLflow experiment of the evaluation runs")
    p.add_argument("--num-cpus", type=float, default=None, help="CPUs of a locally started Ray cluster")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = seed_config(args.config, args.overrides, args.seeds[0])
        check_config(cfg)
        if args.split_seeds is None:  # other splits' features are made below
            check_inputs(cfg)
    except (ConfigError, FeaturesError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import ray
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    if not ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
        start_local_ray(args.num_cpus)
    kwargs = {
        "split": args.split,
        "tracking": not args.no_tracking,
        "eval_experiment": args.eval_experiment,
        "baseline_fit": args.baseline_fit,
    }
    try:
        if args.split_seeds is None:
            by_split = {None: run_seeds(args.config, args.overrides, args.seeds, **kwargs)}
        else:
            by_split = run_splits(args.config, args.overrides, args.split_seeds, args.seeds, **kwargs)
    except (ConfigError, FeaturesError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n| split seed | seed | model | training s |")
    print("|---:|---:|---|---:|")
    for split_seed, runs in by_split.items():
        for r in runs:
            print(f"| {'-' if split_seed is None else split_seed} | {r.seed} | {r.model_uri} | {r.train_seconds:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

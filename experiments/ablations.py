"""The paper's ablations on one catalog: same splits, same step budget, one switch per variant.

    python experiments/ablations.py --config experiments/configs/demo.yaml
    python experiments/ablations.py --config experiments/configs/fashion.yaml train.max_steps=2000 \\
        --variants concat_mlp,image_only,text_only --out artifacts/ablations/fashion

Variants: itemsage (the reference: transformer tower, image+text, in-batch+random negatives with
logQ, multi-task), concat_mlp, image_only, text_only, in_batch_logq, in_batch_no_logq,
mixed_no_logq, single_search, single_closeup, single_home. The features must exist (run
experiments/preprocess.py with the same config first). Writes ablations.md (the table, with the
paper's direction and whether it held), ablations.png (bar plot) and ablations.json under --out,
and logs them to MLflow as one "ablations" run. Re-running resumes: each evaluated variant is kept
under --out/variants/ (keyed by its configuration, features and split), so it is neither trained
nor evaluated again; on a shared box run a few --variants per call, then all of them at once to
assemble the table.
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
from itemsage.studies.ablations import VARIANTS, run_ablations, select, variant_config  # noqa: E402
from itemsage.train.trainer import check_config, check_inputs, start_local_ray  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="pipeline YAML every variant starts from")
    p.add_argument("overrides", nargs="*", help="dotted overrides for every variant, e.g. train.max_steps=100")
    p.add_argument("--variants", default="", help=f"comma-separated subset of: {', '.join(v.name for v in VARIANTS)}")
    p.add_argument("--out", default="artifacts/ablations", help="directory for ablations.md/.png/.json")
    p.add_argument("--split", default="test", choices=["test", "val"], help="held-out split to evaluate on")
    p.add_argument("--prefix", default="ablation", help="run names are <prefix>-<variant>")
    p.add_argument("--num-cpus", type=float, default=None, help="CPUs of a locally started Ray cluster")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        variants = select([n.strip() for n in args.variants.split(",") if n.strip()])
        # Check every variant's config and the features before the first (long) training run.
        for v in variants:
            cfg = variant_config(args.config, args.overrides, v, args.prefix)
            check_config(cfg)
        check_inputs(cfg)
    except (ConfigError, FeaturesError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import ray
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    if not ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
        start_local_ray(args.num_cpus)
    run_ablations(
        args.config, args.overrides, variants, args.out, split=args.split, prefix=args.prefix,
        tracking=not args.no_tracking,
    )
    print()
    print(Path(args.out, "ablations.md").read_text())
    print(f"table, plot and JSON: {args.out}/ablations.{{md,png,json}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

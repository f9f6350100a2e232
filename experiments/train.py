"""Train ItemSage on Ray Train (DDP over Ray Data shards) with MLflow tracking.

    python experiments/train.py --config experiments/configs/demo.yaml [train.lr=1e-3 ...]

Re-running the same command (same ``train.storage_path`` and ``train.name``) resumes from the latest
checkpoint and continues the same MLflow run. Works locally (starts a small Ray cluster) and under
``ray job submit`` (connects to the cluster in ``RAY_ADDRESS``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import yaml

try:
    import itemsage  # noqa: F401
except ImportError:  # a plain checkout (e.g. a job's working dir) without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from itemsage.cluster.address import RayAddressError, check_ray_address  # noqa: E402
from itemsage.config import ConfigError, PipelineConfig, load_config, to_dict  # noqa: E402
from itemsage.data.features_read import FeaturesError  # noqa: E402
from itemsage.train.trainer import NonFiniteLossError, TrainResult, run_training, start_local_ray  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="pipeline YAML (the train: section is used)")
    p.add_argument(
        "overrides",
        nargs="*",
        help="dotted overrides, e.g. train.lr=1e-3 train.max_steps=50 train.lr_decay=linear train.val_catalog=all",
    )
    p.add_argument("--num-cpus", type=float, default=None, help="CPUs of a locally started Ray cluster")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    return p.parse_args(argv)


def summary(result: TrainResult) -> str:
    """Validation Recall@10 per surface: the model next to the frozen-feature and random baselines."""
    m = result.metrics
    surfaces = sorted({k.split("/")[1] for k in m if k.startswith("val/") and k.endswith("/all/recall_at_10")})
    lines = ["| surface | itemsage R@10 | frozen R@10 | random R@10 |", "|---|---|---|---|"]
    for s in surfaces:
        cells = [m.get(f"{p}/{s}/all/recall_at_10") for p in ("val", "val_frozen", "val_random")]
        lines.append(f"| {s} | " + " | ".join("-" if c is None else f"{c:.3f}" for c in cells) + " |")
    return "\n".join(
        [
            f"run dir:      {result.run_dir}",
            f"steps:        {result.step} (best checkpoint: {result.best_checkpoint})",
            f"MLflow run:   {result.mlflow_run_id}",
            f"model:        {result.model_uri}",
            f"steps/s:      {result.steps_per_s:.2f}",
            "",
            *lines,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(PipelineConfig, args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    try:
        check_ray_address()  # seconds and one line, not minutes of GCS retries, for a dead address
    except RayAddressError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("resolved train config:\n" + yaml.safe_dump({"train": to_dict(cfg.train)}, sort_keys=False), flush=True)
    import ray
    import ray.data

    # The pairs are read once per worker; Ray Data's live progress bars would only bury the
    # training log in carriage returns.
    ray.data.DataContext.get_current().enable_progress_bars = False
    if args.num_cpus is not None and not os.environ.get("RAY_ADDRESS"):
        start_local_ray(args.num_cpus)
    started = time.perf_counter()
    try:
        result = run_training(cfg, tracking=not args.no_tracking)
    except (ConfigError, FeaturesError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary(result), flush=True)
    # Issue 19's budget: a headline configuration trains in at most 20 minutes on 2 CPU cores.
    print(f"wall time:    {time.perf_counter() - started:.0f} s of training and registration", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Preprocess a catalog into a feature directory (docs/feature-format.md) with Ray Data.

    python experiments/preprocess.py [--config experiments/configs/demo.yaml] [KEY=VALUE ...]

--config is a pipeline YAML (sections preprocess/train/index/serve); only its `preprocess` section is
used. Without it, the defaults of itemsage.config.PreprocessConfig apply (the bundled fashion
sample). KEY=VALUE overrides are keys of the preprocess section, with or without the section
prefix, so both spellings work and mean the same:

    catalog=data/fashion output=artifacts/full/fashion image.batch_size=64
    preprocess.catalog=data/fashion preprocess.image.concurrency=2

Values are parsed as YAML (numbers, true/false, lists). `output` may be a local path or a URI
(s3://..., gs://...); the directory is replaced all at once when the run succeeds.

Ray: connects to the cluster in RAY_ADDRESS (as under `ray job submit`) or a running `ray start`,
else starts a local one (--num-cpus caps it). On a cluster, the workers must be able to import
`itemsage`: our image installs it; otherwise add
`--runtime-env-json '{"py_modules": ["platform/itemsage"]}'` to `ray job submit`:

    ray job submit --working-dir . -- python experiments/preprocess.py \\
        --config experiments/configs/demo.yaml catalog=/data/fashion output=s3://bucket/features

Exit status: 0 on success, 2 when the input or config is unusable (missing catalog, unknown
layout, bad key or value), with a one-line `error: ...` on stderr.
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

from itemsage.cluster.address import RayAddressError, check_ray_address  # noqa: E402
from itemsage.config import ConfigError, PipelineConfig, PreprocessConfig, load_config  # noqa: E402
from itemsage.data.engagement import EngagementError  # noqa: E402
from itemsage.data.layouts import CatalogError  # noqa: E402

SECTIONS = ("preprocess", "train", "index", "serve")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="pipeline YAML; its preprocess: section is used")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="preprocess overrides, e.g. catalog=data/fashion image.batch_size=64 "
                        "(a preprocess. prefix is optional)")
    p.add_argument("--num-cpus", type=float, default=None,
                   help="CPUs of a locally started Ray instance (ignored when connecting to a cluster)")
    return p.parse_args(argv)


def normalise_overrides(overrides: list[str]) -> list[str]:
    """``catalog=x`` -> ``preprocess.catalog=x``; other sections are refused, not silently ignored."""
    out = []
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        section = key.split(".", 1)[0]
        if section == "preprocess":
            out.append(item)
        elif section in SECTIONS:
            raise ConfigError(f"override {key}: preprocess.py only reads the preprocess section")
        else:
            out.append(f"preprocess.{item}")
    return out


def load_preprocess_config(path: str | None, overrides: list[str]) -> PreprocessConfig:
    return load_config(PipelineConfig, path, normalise_overrides(overrides)).preprocess


def start_local_ray(num_cpus: float | None) -> None:
    """Start a capped local Ray only when asked to and not connecting to an existing cluster."""
    import os

    import ray

    if num_cpus is not None and not os.environ.get("RAY_ADDRESS") and not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=False)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Imported here so `--help` and config errors answer without loading Ray and torch.
    try:
        cfg = load_preprocess_config(args.config, args.overrides)
        from itemsage.data.pipeline import PreprocessError, run_preprocess, validate_config

        validate_config(cfg)
        check_ray_address()  # seconds and one line, not minutes of GCS retries, for a dead address
    except (ConfigError, ValueError, RayAddressError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        start_local_ray(args.num_cpus)
        summary = run_preprocess(cfg)
    except (CatalogError, EngagementError, PreprocessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary.table(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Make a copy of a trained model with scoring-only settings changed (no training).

    python experiments/scoring_variant.py --model models:/itemsage/N --out artifacts/variant \
        --set title_blend=0.5 [--set hubness_weight=0.8 --set hubness_neighbors=1] \
        [--features artifacts/full/amazon] [--register --tracking-uri sqlite:///mlflow.db]

Settings a trained model can switch because only scoring reads them (evaluation, the Python API,
Serve; ``itemsage.trained.variant.SCORING_FIELDS``): ``popularity_debias``,
``hubness_weight``, ``hubness_neighbors``, ``title_blend``, ``closeup_neighbors``, ``home_query``.
They are recorded in the copy's config, so its evaluations group under that configuration. With
a hubness weight whose settings change, the catalog bank is embedded again (from ``--features``,
default the model's training features). ``--register`` logs the copy in a new MLflow run and
registers it as a new version, its source recorded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

try:
    import itemsage  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from itemsage.trained.registry import REGISTERED_MODEL, resolve_model_dir  # noqa: E402
from itemsage.trained.variant import SCORING_FIELDS, register_variant, scoring_variant  # noqa: E402


def parse_setting(text: str) -> tuple[str, object]:
    """``name=value`` (``model.`` prefix optional), the value read as YAML (0.5, 1, items)."""
    name, sep, value = text.partition("=")
    name = name.strip().removeprefix("train.").removeprefix("model.")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected name=value, got {text!r}")
    if name not in SCORING_FIELDS:
        raise argparse.ArgumentTypeError(f"{name} is not scoring-only; one of {', '.join(SCORING_FIELDS)}")
    return name, yaml.safe_load(value)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="models:/itemsage/N, runs:/<id>/model or a bundle directory")
    p.add_argument("--out", required=True, help="new bundle directory")
    p.add_argument(
        "--set",
        dest="settings",
        type=parse_setting,
        action="append",
        required=True,
        metavar="NAME=VALUE",
        help="a scoring-only model setting (repeatable)",
    )
    p.add_argument("--features", default=None, help="catalog to embed a hubness bank from (default: the model's)")
    p.add_argument("--register", action="store_true")
    p.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    args = p.parse_args(argv)
    if args.register:
        import mlflow

        mlflow.set_tracking_uri(args.tracking_uri)
    changes = dict(args.settings)
    try:
        recorded = scoring_variant(resolve_model_dir(args.model), args.out, changes, args.features)
    except (ValueError, FileExistsError) as e:
        sys.exit(f"scoring_variant: {e}")
    print(f"bundle {args.out}: " + ", ".join(f"model.{k}={v}" for k, v in recorded.items()))
    if args.register:
        name = "variant_" + "_".join(f"{k}{v}" for k, v in recorded.items())
        version = register_variant(args.tracking_uri, args.model, args.out, recorded, name)
        print(f"registered models:/{REGISTERED_MODEL}/{version}")


if __name__ == "__main__":
    main()

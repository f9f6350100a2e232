"""Make a hubness-corrected copy of a trained model (``model.hubness_weight``; no training).

    python experiments/hubness_bank.py --model models:/itemsage/N --out artifacts/hub_model \
        --weight 0.5 --neighbors 1 [--features artifacts/full/shopee] \
        [--register --tracking-uri sqlite:///mlflow.db]

Copies the bundle, records the weight and neighbour count in its config, embeds the features
directory's catalog (catalog features only, no engagement) with the model's item tower and stores
it in the weights as the bank the correction scores against (``itemsage.trained.hubness_bank``).
Evaluation (``experiments/evaluate.py``), the Python API and Serve then score ``q . x - weight *
h(x)``. ``--register`` logs the bundle in a new MLflow run and registers it as a new version.
A training run with ``model.hubness_weight`` > 0 in its config attaches the bank itself.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import itemsage  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from itemsage.trained.registry import REGISTERED_MODEL, resolve_model_dir  # noqa: E402
from itemsage.trained.variant import hubness_variant, register_variant  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="models:/itemsage/N, runs:/<id>/model or a bundle directory")
    p.add_argument("--out", required=True, help="new bundle directory")
    p.add_argument("--weight", type=float, required=True, help="model.hubness_weight (> 0)")
    p.add_argument("--neighbors", type=int, default=1, help="model.hubness_neighbors")
    p.add_argument("--features", default=None, help="catalog to embed (default: the model's training features)")
    p.add_argument("--register", action="store_true")
    p.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    args = p.parse_args()
    if args.register:
        import mlflow

        mlflow.set_tracking_uri(args.tracking_uri)
    src = resolve_model_dir(args.model)
    record = hubness_variant(src, args.out, args.weight, args.neighbors, args.features)
    print(f"bundle {args.out}: hubness weight {args.weight:g}, {args.neighbors} neighbour(s), bank {record}")
    if args.register:
        settings = {"hubness_weight": args.weight, "hubness_neighbors": args.neighbors}
        run_name = f"hubness_w{args.weight:g}_r{args.neighbors}"
        version = register_variant(args.tracking_uri, args.model, args.out, settings, run_name)
        print(f"registered models:/{REGISTERED_MODEL}/{version}")


if __name__ == "__main__":
    main()

"""Choose the hybrid mode's lexical weight and RRF constant by measurement: on the val split, then test.

    python experiments/hybrid_sweep.py --model models:/itemsage/2 --features artifacts/full/shopee \\
        --weights 0.5 1 2 --rrf-k 10 60 --out artifacts/eval/hybrid_sweep.json
    python experiments/hybrid_sweep.py --probe item2item --model models:/itemsage/1 --features artifacts/full/amazon

For each (lexical weight, rrf_k) the probe's Recall@10/@50 of the hybrid mode (the served lexical
index and reciprocal-rank fusion, itemsage.eval.modes) on --choose-split (default val): --probe
search measures /search (a text query); closeup and item2item /similar by item id (an item with a
photo is queried by its photo, a text-only item by its embedding; the item's own text is the
lexical query). The best setting is then measured once on --report-split (default test), next to
dense and lexical alone. The chosen values go into serve.hybrid (platform/itemsage/config.py,
HybridConfig), which both endpoints share.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

try:
    import itemsage  # noqa: F401
except ImportError:  # a plain checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="models:/itemsage/<version>, runs:/<id>/model or a bundle dir")
    p.add_argument("--features", required=True, help="the model's features directory (its pairs and queries)")
    p.add_argument("--weights", type=float, nargs="+", default=[0.5, 1.0, 2.0], help="lexical weights to try")
    p.add_argument("--rrf-k", type=float, nargs="+", default=[10.0, 60.0], help="RRF constants to try")
    p.add_argument(
        "--probe",
        default="search",
        choices=["search", "closeup", "item2item"],
        help="/search, or /similar by id: closeup for a catalog with photos, item2item for text only",
    )
    p.add_argument("--choose-split", default="val", choices=["val", "test"])
    p.add_argument("--report-split", default="test", choices=["val", "test"])
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="write every row as JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from itemsage.eval.fusion_sweep import best, fusion_sweep

    try:
        rows = fusion_sweep(
            args.model, args.features, args.choose_split, args.weights, args.rrf_k, device=args.device, probe=args.probe
        )
        chosen = best(rows)
        report = fusion_sweep(
            args.model,
            args.features,
            args.report_split,
            [chosen["lexical_weight"]],
            [chosen["rrf_k"]],
            device=args.device,
            probe=args.probe,
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("| split | lexical weight | rrf_k | hybrid R@10 | R@50 | dense R@10 | lexical R@10 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in [*rows, *report]:
        print(
            f"| {r['split']} | {r['lexical_weight']:g} | {r['rrf_k']:g} | {r['hybrid_r@10']:.3f} | "
            f"{r['hybrid_r@50']:.3f} | {r['dense_r@10']:.3f} | {r['lexical_r@10']:.3f} |"
        )
    print(f"chosen on {args.choose_split}: lexical_weight={chosen['lexical_weight']:g} rrf_k={chosen['rrf_k']:g}")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"choose": rows, "report": report}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

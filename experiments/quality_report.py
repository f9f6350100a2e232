"""Regenerate the headline tables and bar chart of docs/quality.md from evaluation runs in MLflow.

    python experiments/quality_report.py --tracking-uri sqlite:///mlflow.db
    python experiments/quality_report.py --tracking-uri sqlite:///mlflow.db --tracking-uri sqlite:///other.db
    python experiments/quality_report.py --tracking-uri http://mlflow:5000 --experiment itemsage-eval \\
        --tag itemsage.dataset=amazon --split test --doc docs/quality.md --figure docs/figures/quality_headline.png

Reads the runs that experiments/evaluate.py logged (it never trains or evaluates), keeps the
latest run per (dataset, split, configuration, split seed, seed), and writes, per configuration,
Recall@k of ItemSage and every baseline (char-3gram TF-IDF, BM25, frozen MiniLM, frozen image
features, frozen user features, random) as the mean ± sample standard deviation over seeds, or,
where a configuration was evaluated on several item-disjoint splits (features preprocessed with
`preprocess.engagement.seed=N`), over splits, each split the mean of its seeds. The section
between the `quality_report` markers of --doc is replaced (the rest of the document is kept;
without the markers the section is appended); the chart is a PNG. Seeds: `experiments/seeds.py
--config <config> --seeds 0 1 2` trains and evaluates one configuration per seed (or train with
`train.seed=N train.name=<name>_seed<N>` and run experiments/evaluate.py on each model); runs are
grouped by the configuration without its seed (tag itemsage.config_hash). Several --tracking-uri
(e.g. one store per machine that ran seeds) are read together (nothing is logged to them); registry versions
count from 1 in each store, so with more than one every group names the store its models are in.

Exit status 2 with a one-line `error: ...` when there are no matching runs or experiments.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

try:
    import itemsage  # noqa: F401
except ImportError:  # a plain checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--tracking-uri",
        action="append",
        default=None,
        help="MLflow tracking URI (repeatable: the runs of every store are reported together, each "
        "group naming its store; default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)",
    )
    p.add_argument(
        "--experiment",
        action="append",
        default=None,
        help="MLflow experiment(s) holding the evaluation runs (repeatable; default itemsage-eval)",
    )
    p.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only runs with this tag, e.g. itemsage.dataset=shopee or itemsage.config=shopee (repeatable)",
    )
    p.add_argument("--split", default="test", help="held-out split to report (the runs' itemsage.split tag)")
    p.add_argument("--k", type=int, default=10, help="Recall@k to report (the evaluations log 10 and 50)")
    p.add_argument(
        "--rows",
        nargs="+",
        default=None,
        metavar="ROW",
        help="rows of each probe to report, in order: all (every held-out pair), unseen (pairs of items never "
        "trained on), or an action such as also_view (default: all unseen)",
    )
    p.add_argument("--doc", default="docs/quality.md", help="markdown document whose marked section is replaced")
    p.add_argument("--figure", default="docs/figures/quality_headline.png", help="bar chart PNG to write")
    p.add_argument("--json", default=None, help="also write the aggregated numbers as JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from itemsage.eval.quality.report import write_report
    from itemsage.eval.quality.runs import HEADLINE_ROWS, QualityReportError, group_runs, groups_json, load_runs
    from itemsage.eval.tracking import DEFAULT_EXPERIMENT, parse_tags

    try:
        tags = parse_tags(args.tag)
        tags.setdefault("itemsage.split", args.split)
        runs = load_runs(args.tracking_uri or [None], args.experiment or [DEFAULT_EXPERIMENT], tags)
        groups = group_runs(runs, args.k, args.rows or HEADLINE_ROWS)
        if not groups:
            raise QualityReportError(f"no finished evaluation runs match {tags}")
        command = "python experiments/quality_report.py " + " ".join(
            shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
        )
        today = datetime.now(UTC).strftime("%Y-%m-%d")
        written = write_report(groups, args.doc, args.figure, args.k, command.strip(), today)
    except (QualityReportError, ValueError) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(groups_json(groups, args.k), indent=2) + "\n")
    print(written["markdown"])
    print(f"\nwrote {written['doc']} ({written['groups']} group(s)) and {written['figure']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The pipeline on a 2-node Ray cluster on this machine, through the Jobs API, end to end.

    python -m tests.support.cluster_e2e [--config experiments/configs/cluster.yaml] [--keep] [--report out.json]

Starts PostgreSQL (initdb in a temp dir, a free port; as root it runs as the `postgres` user and
`apt-get install postgresql` provides it when missing), `mlflow server` on it with a local artifact
root, and a Ray cluster of a head and a worker node (`ray start`, token authentication, every port
free-picked, nothing shared with other Ray instances). Then, as a user would:

    ray job submit --working-dir . -- python experiments/preprocess.py --config <config> ...
    ray job submit --working-dir . -- python experiments/train.py --config <config> ...   # 1 worker per node
    ray job submit --working-dir . -- python experiments/embed.py ... ; ... build_index.py ...
    serve deploy <serve config for models:/itemsage/<version> from that MLflow>
    POST /search

and a job with a missing config file, which must fail with one line. Everything started is stopped
again, also on failure or Ctrl-C. Prints a quotable excerpt (node ids, job statuses, HTTP answer).
Exit status: 0 on success, 1 when a stage failed, 3 when PostgreSQL cannot be had here.
`make test-cluster` runs the same through tests/cluster/test_multinode.py. Run it from the repo root.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Also runnable as `python tests/support/cluster_e2e.py`: the repo root (for `tests.support`) and,
# in a plain checkout without `pip install -e .`, platform/ go on the path.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
if importlib.util.find_spec("itemsage") is None:
    sys.path.insert(0, str(REPO / "platform"))

from tests.support.e2e import ClusterE2EConfig, StageFailed, run_cluster_e2e  # noqa: E402
from tests.support.postgres import PostgresUnavailable  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=ClusterE2EConfig.config, help="pipeline YAML the jobs run (relative to the repo)")
    p.add_argument("--run-dir", default=None, help="run directory (default: a fresh /tmp/isc-*)")
    p.add_argument("--keep", action="store_true", help="keep the run directory (logs, data) after a success")
    p.add_argument("--report", default=None, help="also write the report as JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (REPO / args.config).is_file():
        print(f"error: config file not found: {args.config}", file=sys.stderr)
        return 2
    cfg = ClusterE2EConfig(config=args.config, run_dir=args.run_dir, keep_run_dir=args.keep)
    try:
        report = run_cluster_e2e(cfg, REPO)
    except PostgresUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except (StageFailed, TimeoutError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.report:
        Path(args.report).write_text(report.to_json())
    print(report.excerpt(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

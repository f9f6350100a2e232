"""Build the retrieval index over an embeddings directory, save it, and log it with its model version.

    python experiments/build_index.py --embeddings artifacts/embeddings \\
        --model models:/itemsage/3 --out artifacts/index [--spec auto|Flat|HNSW32|IVF{nlist},Flat]

--spec auto (the default of index.spec) runs the recall/QPS sweep over index.candidates and keeps
the fastest index reaching index.recall_target; any FAISS factory spec builds that index directly.
The index is saved atomically with the model version in its metadata. When --model is a registry
URI (models:/...), the index is logged to that model version's MLflow run (tracking URI from
$MLFLOW_TRACKING_URI) unless --no-log. Embeddings made by another model version, NaN rows,
repeated ids or a wrong dimension stop the run with a one-line `error: ...` (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

try:
    import itemsage  # noqa: F401
except ImportError:  # a plain checkout (e.g. a job's working dir) without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from itemsage.config import ConfigError, PipelineConfig, load_config  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--embeddings", required=True, help="output directory of experiments/embed.py")
    p.add_argument("--model", required=True, help="the model that made the embeddings (models:/... or a bundle dir)")
    p.add_argument("--out", required=True, help="index directory (replaced atomically)")
    p.add_argument("--spec", default=None, help="auto, or a FAISS index-factory spec (default: index.spec)")
    p.add_argument("--config", default=None, help="pipeline YAML; its index: section is used")
    p.add_argument("overrides", nargs="*", metavar="index.KEY=VALUE", help="e.g. index.recall_target=0.98")
    p.add_argument("--no-log", action="store_true", help="do not log the index to MLflow")
    p.add_argument("--summary-json", default=None, help="also write the build summary (with the sweep) here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(PipelineConfig, args.config, args.overrides).index
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from itemsage.index.pipeline import build_and_log_index

    try:
        result = build_and_log_index(args.embeddings, args.model, args.out, cfg=cfg, spec=args.spec, log=not args.no_log)
    except (FileNotFoundError, ValueError, LookupError) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    if result.sweep is not None:
        print(result.sweep.to_markdown() + "\n")
    print(f"index:   {result.out}")
    print(f"spec:    {result.spec} {result.search_params or ''} ({result.ntotal:,} items, dim {result.dim}, {result.device})")
    print(f"model:   {result.model_uri} (version {result.model_version})")
    print(f"MLflow:  {result.logged_uri or 'not logged (not a registry model, or --no-log)'}")
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Sync a catalog file against what is served: add new items, update changed ones, delete gone ones.

    # against a running server (serve.live.enabled; write token from $ITEMSAGE_WRITE_TOKEN)
    python experiments/sync_catalog.py data/sample/fashion --url http://127.0.0.1:8000 --dry-run

    # against a local index directory, no server (the change log beside it; a server on that
    # index follows it)
    python experiments/sync_catalog.py data/sample/fashion --index artifacts/index --model models:/itemsage/3

Items are compared by content digest (text fields + image bytes), so unchanged items are not
re-embedded. Rows the catalog reader cannot use are skipped and counted. Prints the counts (and
with --json the report as JSON); exit status 2 on a refused write or bad arguments.
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

from itemsage.api.catalog import WriteError, connect, sync_catalog  # noqa: E402
from itemsage.config import LiveConfig  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("catalog", help="catalog path (fashion / shopee / generic layout)")
    p.add_argument("--layout", default="auto", help="catalog layout (default: detected)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a served deployment (http://host:port)")
    where.add_argument("--index", help="a local index directory")
    p.add_argument("--model", help="with --index: the model whose embeddings the index holds")
    p.add_argument("--features", help="with --index: features directory (default: the model's)")
    p.add_argument("--live-dir", default="", help="with --index: serve.live.dir (default: live/ beside the index)")
    p.add_argument("--changelog", default="", help="with --index: serve.live.changelog_uri (default: SQLite)")
    p.add_argument("--token", default=None, help="write token (default: $ITEMSAGE_WRITE_TOKEN)")
    p.add_argument("--dry-run", action="store_true", help="only count what would change")
    p.add_argument("--keep-missing", action="store_true", help="do not delete served items missing from the file")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    if args.index and not args.model:
        p.error("--index needs --model")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.url:
            target = connect(args.url, token=args.token)
        else:
            live = LiveConfig(dir=args.live_dir, changelog_uri=args.changelog)
            target = connect(args.index, model=args.model, features=args.features, live=live)
        try:
            report = sync_catalog(
                target, args.catalog, args.layout, dry_run=args.dry_run, delete_missing=not args.keep_missing
            )
        finally:
            target.close()
    except (WriteError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

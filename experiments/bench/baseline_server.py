"""The baseline for experiments/bench/serve.py: the same API in one plain process, no Ray.

FastAPI + uvicorn (one worker), torch and FAISS in-process, the very same app and retrieval core as
the Serve deployment graph (itemsage.serve.local), but every request encodes its own query (no
cross-request batching) in a worker thread:

    python experiments/bench/baseline_server.py --model-uri models:/itemsage/latest \\
        --index-uri models:/itemsage/latest --port 8100
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-uri", default="models:/itemsage/latest")
    p.add_argument("--index-uri", default="models:/itemsage/latest")
    p.add_argument("--features", default=None, help="features directory (default: the model manifest's)")
    p.add_argument("--mlflow-tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--torch-threads", type=int, default=0, help="0 = torch's default (all cores)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    import uvicorn

    from itemsage.serve.local import create_local_app

    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    version = {"model_uri": args.model_uri, "index_uri": args.index_uri}
    if args.features:
        version["features"] = args.features
    if args.mlflow_tracking_uri:
        version["mlflow_tracking_uri"] = args.mlflow_tracking_uri
    app = create_local_app(version, device=args.device, base_dir=os.getcwd())
    # access_log off, as in the Serve config: per-request logging is not what is being compared.
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

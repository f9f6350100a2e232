"""Every stage end to end: preprocess -> train -> evaluate -> embed -> index -> serve.

    python experiments/pipeline.py --config experiments/configs/demo.yaml        # what `make demo` runs
    python experiments/pipeline.py --config ... --stages preprocess,train         # a subset
    python experiments/pipeline.py --config ... --no-serve                        # stop before serving

Each stage is the same function its own entry point (preprocess.py, train.py, evaluate.py,
embed.py, build_index.py, deployments/app.py) calls; this script only chains them, so a failure
names the stage and every earlier output stays usable. Training resumes when re-run with the same
config (same storage_path/name). The serve stage keeps the HTTP API and web page running on
127.0.0.1 until Ctrl-C (or SIGTERM, which drains the same way).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

try:
    import itemsage  # noqa: F401
except ImportError:  # a plain checkout (e.g. a job's working dir) without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # deployments/ is a plain directory, imported by path

STAGES = ("preprocess", "train", "evaluate", "embed", "index", "serve")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="experiments/configs/demo.yaml", help="pipeline YAML")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=50")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument("--no-serve", action="store_true", help="stop after the index stage")
    p.add_argument("--num-cpus", type=float, default=None, help="CPUs of the local Ray instance")
    return p.parse_args(argv)


def _banner(title: str) -> float:
    print(f"\n=== {title} " + "=" * max(0, 60 - len(title)), flush=True)
    return time.perf_counter()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.chdir(REPO)  # relative paths in the configs (and mlflow.db) are relative to the repo root
    from itemsage.config import ConfigError, PipelineConfig, load_config

    try:
        cfg = load_config(PipelineConfig, args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        print(f"error: unknown stage(s) {unknown}; known: {', '.join(STAGES)}", file=sys.stderr)
        return 2
    if args.no_serve and "serve" in stages:
        stages.remove("serve")

    import ray

    from itemsage.serve.fast_ingress import use_fast_serving
    from itemsage.train.trainer import start_local_ray

    if not ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
        use_fast_serving()  # the serve stage runs on this Ray: start it in Serve's fast mode
        start_local_ray(args.num_cpus)

    out_root = Path(cfg.train.storage_path).parent
    model_uri = None
    embeddings = str(out_root / "embeddings")
    index_dir = str(out_root / "index")
    done: list[str] = []
    current = ""
    try:
        if "preprocess" in stages:
            current = "preprocess"
            t = _banner("preprocess (Ray Data)")
            from itemsage.data.pipeline import run_preprocess

            summary = run_preprocess(cfg.preprocess)
            print(summary.table())
            done.append(f"features      {cfg.preprocess.output}  ({time.perf_counter() - t:.0f} s)")

        if "train" in stages:
            current = "train"
            t = _banner("train (Ray Train, DDP)")
            from itemsage.train.trainer import run_training

            sys.path.insert(0, str(REPO / "experiments"))
            import ray.data
            from train import summary as train_summary

            # The pairs are read once per worker; live progress bars would bury the training log.
            ray.data.DataContext.get_current().enable_progress_bars = False
            result = run_training(cfg)
            print(train_summary(result))
            model_uri = result.model_uri
            done.append(f"model         {model_uri}  (MLflow run {result.mlflow_run_id}; {time.perf_counter() - t:.0f} s)")
        model_uri = model_uri or "models:/itemsage/latest"

        if "evaluate" in stages:
            current = "evaluate"
            t = _banner("evaluate (Recall@k, exact search, test split)")
            from itemsage.eval.evaluate import evaluate_model

            eval_out = str(out_root / "eval.json")
            res = evaluate_model(model_uri, features=cfg.train.features, out=eval_out)
            print(res.markdown())
            done.append(f"evaluation    {eval_out}  ({time.perf_counter() - t:.0f} s)")

        if "embed" in stages:
            current = "embed"
            t = _banner("embed the catalog (Ray Data actor pool)")
            from itemsage.index.embed import embed_features

            emb = embed_features(model_uri, cfg.train.features, embeddings)
            print(emb.table())
            done.append(f"embeddings    {embeddings}  ({time.perf_counter() - t:.0f} s)")

        if "index" in stages:
            current = "index"
            t = _banner("index (FAISS, recall/QPS sweep)")
            from itemsage.index.pipeline import build_and_log_index

            built = build_and_log_index(embeddings, model_uri, index_dir, cfg=cfg.index)
            print(built)
            done.append(f"index         {index_dir}  ({time.perf_counter() - t:.0f} s)")
    except Exception as e:  # noqa: BLE001 - any stage's error: name it and what is reusable
        # Name the failed stage; everything listed before it is complete and reusable.
        print(f"\nerror in stage {current}: {type(e).__name__}: {e}", file=sys.stderr)
        print("completed:\n" + "\n".join(done), file=sys.stderr)
        return 1

    print("\n=== outputs " + "=" * 53)
    print("\n".join(done))
    print("MLflow UI:    .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db  (http://127.0.0.1:5000)")

    if "serve" in stages:
        _banner("serve (Ray Serve)")
        from deployments.app import run_local, serve_until_stopped

        url = run_local({"model_uri": model_uri, "index_uri": index_dir, "features": cfg.train.features})
        print(f"\nItemSage is serving at {url}  (web page: {url}/ , API docs: {url}/docs)")
        print("Ctrl-C to stop.", flush=True)
        serve_until_stopped()  # SIGTERM drains like Ctrl-C
    return 0


if __name__ == "__main__":
    sys.exit(main())

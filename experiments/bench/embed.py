"""Batch-embedding throughput: the Ray Data actor pool vs a plain PyTorch loop, same model and data.

Both sides embed every item of one features directory with one model, at the same batch size
and the same CPUs (the plain loop as torch threads, Ray as one-thread actors), and write the same
Parquet output:

* plain: read items.parquet into an ``ItemFeatureStore``, loop over batches, ``embed_items``,
  write one Parquet file; one process, no Ray.
* Ray: ``itemsage.index.embed.embed_features`` with one one-thread tower actor per CPU (one actor per GPU on a GPU box):
  Ray Data reads items.parquet, tags rows, runs the actor pool and writes Parquet. Timed from
  the start of the Dataset's execution to the last file written (actor start-up and model
  transfer included; starting the Ray cluster itself is not, a cluster is already there in
  production).

Interleaved rounds (``--repeats``, medians), then items/s, the ratio Ray / plain and PASS when the ratio is >= 0.9 (Ray Data's
orchestration may cost at most 10%). The embeddings of both sides are checked to be equal.

    python experiments/bench/embed.py                       # full fashion features if present
    python experiments/bench/embed.py --features artifacts/features --threads 1 --json out.json

Default features: artifacts/full/fashion when it holds items.parquet, else artifacts/features
(the bundled sample, made by `make demo` or experiments/preprocess.py). Default model: a randomly
initialised model of the default config over the features' vocab (throughput does not depend on
the weight values); --model benchmarks a trained one. --synthetic N generates N fashion-like items
(random values, realistic shapes) where no features exist, e.g. on a GPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

try:
    import itemsage  # noqa: F401
except ImportError:  # a plain checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "platform"))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
FULL = REPO / "artifacts" / "full" / "fashion"
SAMPLE = REPO / "artifacts" / "features"
TARGET_RATIO = 0.9


def default_features() -> Path:
    for candidate in (FULL, SAMPLE):
        if (candidate / "items.parquet").is_file():
            return candidate
    raise SystemExit(
        f"no features at {FULL} or {SAMPLE}; run `python experiments/preprocess.py` (the sample) first, "
        "or pass --features"
    )


def synthetic_features(out: Path, n: int, image_dim: int = 1280, vocab_size: int = 50_000, seed: int = 0) -> Path:
    """A features directory of ``n`` fashion-like items (1 image, ~30 title tokens, ~12 category
    tokens each) with random values, for machines that have no real features (e.g. a GPU box).

    Throughput depends on shapes, not on values, so random features measure the same work.
    """
    from itemsage.config import TEXT_FIELDS, TextConfig
    from itemsage.data.featurize import fixed_list_array, list_array
    from itemsage.data.text import Vocab

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    Vocab([f"w{i}" for i in range(vocab_size)], [], [], TextConfig()).save(out / "vocab.json")
    ids = [f"s{i:08d}" for i in range(n)]
    cols = {
        "item_idx": pa.array(np.arange(n, dtype=np.int64)),
        "item_id": pa.array(ids, pa.string()),
        "n_images": pa.array(np.ones(n, np.int32)),
        "image_feats": fixed_list_array(rng.random((n, image_dim), dtype=np.float32), pa.float32()),
        "title_emb": fixed_list_array(rng.standard_normal((n, 384), dtype=np.float32), pa.float32()),
    }
    lengths = {"title": 30, "category_path": 12, "colors": 3, "size_type": 2}
    for name in TEXT_FIELDS:
        k = lengths.get(name, 0)
        cols[f"tok_{name}"] = list_array([rng.integers(0, vocab_size, k, dtype=np.int32) for _ in range(n)], pa.int32())
    # Row groups of 8k rows let Ray Data read the file in parallel blocks, as a large real file would be.
    pq.write_table(pa.table(cols), out / "items.parquet", row_group_size=8192)
    catalog = {"item_id": pa.array(ids, pa.string()), "image_paths": pa.array([[]] * n, pa.list_(pa.string()))}
    catalog.update({f: pa.array([""] * n, pa.string()) for f in TEXT_FIELDS})
    pq.write_table(pa.table(catalog), out / "catalog.parquet")
    (out / "manifest.json").write_text(json.dumps({
        "format_version": 1, "backbone": "efficientnet-lite0", "image_dim": image_dim, "text_query_dim": 384,
        "text_fields": list(TEXT_FIELDS), "max_images": 20, "counts": {"items": n},
    }))
    return out


def random_bundle(features: Path, out: Path) -> Path:
    """A bundle of a randomly initialised default-config model over ``features``' vocab."""
    from safetensors.torch import save_file

    from itemsage.config import PipelineConfig, load_config
    from itemsage.data.features_read import read_manifest
    from itemsage.model import build_model
    from itemsage.trained.bundle import BundleFiles
    from itemsage.trained.registry import WEIGHTS_FILE

    cfg = load_config(PipelineConfig, None, [f"train.features={features}"])
    manifest = read_manifest(str(features))
    files = BundleFiles(cfg, manifest)
    torch.manual_seed(0)
    model = build_model(cfg.train.model, cfg.train.loss, files.vocab.size, int(manifest["image_dim"]),
                        len(manifest.get("text_fields") or []) or 12)
    files.write(out, step=0)
    save_file({k: v.contiguous().clone() for k, v in model.state_dict().items()}, str(out / WEIGHTS_FILE))
    return out


def plain_loop(tm, features: Path, out: Path, batch_size: int, device: str) -> tuple[float, dict[str, np.ndarray]]:
    """Seconds for read -> embed -> write in one process, and the embeddings by item id."""
    from itemsage.data.featurize import fixed_list_array
    from itemsage.model import ItemFeatureStore

    model = tm.model.to(device)
    start = time.perf_counter()
    store = ItemFeatureStore.load(str(features), max_images=tm.max_images, text_fields=tm.text_fields)
    n = store.num_items
    emb = np.zeros((n, tm.embedding_dim), np.float32)
    with torch.inference_mode():
        for s in range(0, n, batch_size):
            idx = torch.arange(s, min(s + batch_size, n))
            emb[s : s + len(idx)] = model.embed_items(store.gather(idx).to(device)).float().cpu().numpy()
    ids = store.item_ids or []
    pq.write_table(pa.table({
        "item_id": pa.array(ids, pa.string()),
        "embedding": fixed_list_array(emb, pa.float32()),
        "model_version": pa.array([tm.version] * n, pa.string()),
    }), out / "plain.parquet")
    seconds = time.perf_counter() - start
    tm.model.to("cpu")
    return seconds, dict(zip(ids, emb))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--features", type=Path, default=None, help="features directory (default: see below)")
    p.add_argument("--synthetic", type=int, default=0, metavar="N",
                   help="benchmark N synthetic fashion-like items instead of a features directory")
    p.add_argument("--model", default=None, help="trained model URI or dir (default: random init)")
    p.add_argument("--batch-size", type=int, default=None, help="rows per forward (default 1024 GPU / 256 CPU)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads of the plain loop = total over the Ray actors (default: all CPUs; 1 on GPU)")
    p.add_argument("--actors", type=int, default=0,
                   help="Ray tower actors, threads/actors torch threads each (default: one per thread; 1 on GPU)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--num-cpus", type=float, default=None, help="CPUs of the local Ray instance")
    p.add_argument("--repeats", type=int, default=2, help="interleaved plain/Ray rounds; medians decide")
    p.add_argument("--json", default=None, help="write the result here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from itemsage.index.embed import CPU_BATCH_SIZE, GPU_BATCH_SIZE, embed_features
    from itemsage.index.embeddings import read_embeddings
    from itemsage.trained import load_trained

    features = None if args.synthetic else args.features or default_features()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    batch = args.batch_size or (GPU_BATCH_SIZE if device == "cuda" else CPU_BATCH_SIZE)
    # Both sides get the same CPUs: the plain loop as intra-op threads, Ray as that many one-thread
    # actors (how a CPU cluster runs it: one model replica per core).
    threads = args.threads or (1 if device == "cuda" else (os.cpu_count() or 1))
    actors = args.actors or (1 if device == "cuda" else threads)
    actor_threads = max(1, threads // actors)
    torch.set_num_threads(threads)
    scratch = Path(tempfile.mkdtemp(prefix="itemsage-bench-embed-"))
    try:
        if features is None:
            t0 = time.perf_counter()
            features = synthetic_features(scratch / "features", args.synthetic)
            print(f"wrote {args.synthetic:,} synthetic items in {time.perf_counter() - t0:.1f}s", flush=True)
        model_ref = args.model or str(random_bundle(features, scratch / "model"))
        tm = load_trained(model_ref)
        print(f"features {features}; model {model_ref} (version {tm.version}); device {device}; "
              f"batch {batch}; plain: {threads} torch threads; Ray: {actors} actors x {actor_threads} threads", flush=True)

        # Interleaved rounds (plain, Ray, plain, Ray, ...), medians decide: on a shared machine the
        # load drifts by the minute and would otherwise favour whichever side ran in a quiet spell.
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        plain_runs, ray_runs = [], []
        try:
            for r in range(args.repeats):
                plain_s, plain_emb = plain_loop(tm, features, scratch, batch, device)
                plain_runs.append(plain_s)
                n = len(plain_emb)
                shutil.rmtree(scratch / "ray", ignore_errors=True)
                summary = embed_features(tm, str(features), str(scratch / "ray"), batch_size=batch, concurrency=actors,
                                         num_threads=actor_threads, use_gpu="true" if device == "cuda" else "false")
                ray_runs.append(summary.embed_seconds)
                print(f"round {r + 1}/{args.repeats}: plain {n:,} items in {plain_s:.2f}s, "
                      f"Ray {summary.embedded:,} items in {summary.embed_seconds:.2f}s", flush=True)
        finally:
            got = read_embeddings(str(scratch / "ray"))
            ray.shutdown()
        plain_s, ray_s = statistics.median(plain_runs), statistics.median(ray_runs)
        diff = max(float(np.abs(plain_emb[i] - v).max()) for i, v in zip(got.item_ids, got.vectors))
        plain_ips, ray_ips = n / plain_s, summary.embedded / ray_s
        ratio = ray_ips / plain_ips
        verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
        cpu = platform.processor() or platform.machine()
        gpu = torch.cuda.get_device_name(0) if device == "cuda" else "-"
        print(f"\nmedians of {args.repeats} interleaved rounds")
        print("| path | items | seconds | items/s |\n|---|---:|---:|---:|")
        print(f"| plain PyTorch loop | {n:,} | {plain_s:.2f} | {plain_ips:,.0f} |")
        print(f"| Ray Data actor pool | {summary.embedded:,} | {ray_s:.2f} | {ray_ips:,.0f} |")
        print(f"\nratio Ray/plain = {ratio:.2f} (target >= {TARGET_RATIO}): {verdict}; "
              f"max |difference| of the embeddings {diff:.2e}; {cpu}, {os.cpu_count()} CPUs, GPU {gpu}")
        if args.json:
            Path(args.json).write_text(json.dumps({
                "features": str(features), "model": model_ref, "device": device, "gpu": gpu,
                "batch_size": batch, "threads": threads, "actors": actors, "actor_threads": actor_threads, "items": n,
                "plain_seconds": plain_s, "ray_seconds": ray_s, "plain_items_per_s": plain_ips,
                "ray_items_per_s": ray_ips, "ratio": ratio, "target": TARGET_RATIO, "verdict": verdict,
                "max_abs_diff": diff, "plain_runs": plain_runs, "ray_runs": ray_runs,
            }, indent=2) + "\n")
        return 0 if verdict == "PASS" and diff < 1e-3 else 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

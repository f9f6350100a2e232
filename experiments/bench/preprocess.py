"""Image featurization throughput: the Ray Data pipeline stage vs a plain PyTorch DataLoader loop.

Both sides featurize the same images with the same backbone, batch size, decode workers and torch
threads, in one run:

- Ray Data: ``itemsage.data.featurize.image_feature_dataset``, exactly the stage preprocessing runs
  (decode tasks -> backbone actor pool), on a local Ray instance of ``workers + threads`` CPUs.
- DataLoader: ``workers`` loader processes decode, the main process runs the backbone with
  ``threads`` torch threads.

Fairness: both decode with the same function (``featurize.decode_one``) in ``--workers`` processes,
run the model with ``--threads`` torch threads, and the image files are read once beforehand so
neither side pays a cold disk cache. Two throughputs are reported for each side:

- steady state (the verdict): warm-up excluded from both, i.e. images after each side's first
  finished batch over the time from that batch's forward pass to the last one's (timed where the
  model runs: the main process, inside the Ray actor). Warm-up = worker start-up, imports and model
  load; it is
  a fixed cost per run, and it differs in kind (Ray starts fresh worker processes that import torch,
  DataLoader forks a process that has it already), so it would otherwise dominate short runs.
- end to end: warm-up included in both (``ray.init`` itself excluded: it is cluster start-up).

The features of both sides are compared as a correctness check. PASS when Ray Data's steady state
reaches ``--target`` (0.9) x the DataLoader's (medians over ``--repeats`` runs per side, run in
ABBA order so a shared machine's drifting load does not favour either side).

    python experiments/bench/preprocess.py --limit 1000 --repeats 2
    python experiments/bench/preprocess.py --catalog data/sample/fashion --limit 64 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

try:
    import itemsage  # noqa: F401
except ImportError:  # a plain checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "platform"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from itemsage.data.catalog import read_catalog  # noqa: E402
from itemsage.data.featurize import ImageFeaturizer, decode_one, image_rows  # noqa: E402
from itemsage.data.images import get_backbone  # noqa: E402

DEFAULT_CATALOG = str(Path(__file__).resolve().parents[2] / "data" / "fashion")  # the full download (README.md, "Data")


@dataclass
class Result:
    """One side's run. ``warm_*``: after its first batch was out (model loaded, workers up)."""

    name: str
    images: int
    featurized: int
    seconds: float
    warm_images: int
    warm_seconds: float
    # Thread CPU time of the forward passes: on a shared machine wall time depends on the CPU share
    # each process gets, while this shows whether either side does more work per image.
    model_cpu_ms_per_image: float

    @property
    def images_per_s(self) -> float:
        """Steady state: warm-up (start-up, model load, first batch) excluded."""
        return self.warm_images / self.warm_seconds if self.warm_seconds > 0 else 0.0

    @property
    def end_to_end_images_per_s(self) -> float:
        """Warm-up included: model load and worker start-up count."""
        return self.images / self.seconds if self.seconds > 0 else 0.0


class _Clock:
    """Start and end of a run (driver side) plus when each batch finished its forward pass.

    Batch times are taken where the model runs (the main process, or inside the Ray actor), so
    the first-batch boundary is not blurred by how fast results travel back to the driver.
    """

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.batches: list[tuple[float, int]] = []  # (time.time() after the forward, images)
        self.model_cpu_s = 0.0

    def result(self, name: str, images: int, featurized: int) -> Result:
        seconds = time.perf_counter() - self.start
        cpu_ms = 1000 * self.model_cpu_s / featurized if featurized else 0.0
        done = sorted(self.batches)
        if len(done) < 2:
            return Result(name, images, featurized, seconds, 0, 0.0, cpu_ms)
        warm_images = sum(n for _, n in done[1:])
        return Result(name, images, featurized, seconds, warm_images, done[-1][0] - done[0][0], cpu_ms)


class TimedImageFeaturizer(ImageFeaturizer):
    """The pipeline's actor UDF, plus the wall-clock time at which each batch was done."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cpu = time.thread_time()
        out = super().__call__(batch)
        out["done_at"] = np.full(len(out["ok"]), time.time())
        out["model_cpu_s"] = np.full(len(out["ok"]), time.thread_time() - cpu)
        return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--catalog", default=DEFAULT_CATALOG, help="catalog with images (default: data/fashion)")
    p.add_argument("--limit", type=int, default=1000, help="number of images (first N of the catalog)")
    p.add_argument("--backbone", default="efficientnet-lite0")
    p.add_argument("--weights-path", default=None,
                   help="local weights file of the backbone (required for resnet50; default: packaged weights)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=1, help="decode workers: Ray decode tasks = DataLoader workers")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the model on both sides")
    p.add_argument("--max-pixels", type=int, default=40_000_000)
    p.add_argument("--target", type=float, default=0.9, help="PASS when ray/dataloader >= target")
    p.add_argument("--repeats", type=int, default=1,
                   help="runs per side, in ABBA order; the verdict uses the medians")
    p.add_argument("--json", default=None, help="also write the results here")
    return p.parse_args(argv)


def select_images(catalog: str, limit: int) -> pd.DataFrame:
    """The first ``limit`` images of the catalog, as ``image_rows``."""
    result = read_catalog(catalog)
    return image_rows(result.items.assign(item_idx=np.arange(len(result.items)))).head(limit).reset_index(drop=True)


def warm_file_cache(paths: list[str]) -> None:
    for p in paths:
        Path(p).read_bytes()


# --------------------------------------------------------------------------------- DataLoader


class _Images(Dataset):
    def __init__(self, paths: list[str], backbone: str, max_pixels: int) -> None:
        self.paths, self.backbone, self.max_pixels = paths, backbone, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None]:
        pixels, _, _ = decode_one(self.paths[i], self.backbone, self.max_pixels)
        return i, pixels


def _collate(samples: list[tuple[int, np.ndarray | None]]) -> tuple[list[int], torch.Tensor | None]:
    ok = [(i, px) for i, px in samples if px is not None]
    if not ok:
        return [], None
    return [i for i, _ in ok], torch.from_numpy(np.stack([px for _, px in ok]))


def run_dataloader(rows: pd.DataFrame, args: argparse.Namespace, device: str) -> tuple[Result, np.ndarray]:
    torch.set_num_threads(args.threads)
    paths = rows["path"].tolist()
    clock = _Clock()
    model = get_backbone(args.backbone, args.weights_path, device)
    feats = np.zeros((len(paths), model.dim), dtype=np.float32)
    loader = DataLoader(_Images(paths, args.backbone, args.max_pixels), batch_size=args.batch_size,
                        num_workers=args.workers, collate_fn=_collate,
                        persistent_workers=False, prefetch_factor=2 if args.workers else None)
    done = 0
    with torch.inference_mode():
        for idx, x in loader:
            if x is not None:
                cpu = time.thread_time()
                feats[idx] = model(x.to(device)).float().cpu().numpy()
                clock.model_cpu_s += time.thread_time() - cpu
                done += len(idx)
            clock.batches.append((time.time(), len(idx)))
    return clock.result("torch DataLoader", len(paths), done), feats


# ----------------------------------------------------------------------------------- Ray Data


def run_ray(rows: pd.DataFrame, args: argparse.Namespace) -> tuple[Result, np.ndarray, dict]:
    import ray

    from itemsage.data.featurize import cluster_resources, image_feature_dataset, plan_stages
    from itemsage.data.pipeline import enable_progress_bars

    started = not ray.is_initialized()
    if started:
        if os.environ.get("RAY_ADDRESS"):
            ray.init()
        else:
            ray.init(num_cpus=args.workers + args.threads, include_dashboard=False)
    enable_progress_bars()
    plan = plan_stages(cluster_resources(), 1, args.threads, decode_workers=max(1, args.workers))
    ds = image_feature_dataset(rows, backbone=args.backbone, weights_path=args.weights_path, max_pixels=args.max_pixels,
                               batch_size=args.batch_size, plan=plan, rows_per_block=args.batch_size,
                               featurizer=TimedImageFeaturizer)
    clock = _Clock()
    parts = list(ds.iter_batches(batch_format="numpy", batch_size=None))
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else None
    if out is not None:
        times, first, counts = np.unique(out["done_at"], return_index=True, return_counts=True)
        clock.batches = list(zip(times.tolist(), counts.tolist()))
        clock.model_cpu_s = float(out["model_cpu_s"][first].sum())
    result = clock.result("Ray Data stage", len(rows), 0 if out is None else int(out["ok"].sum()))
    if started:
        ray.shutdown()  # so its idle daemons do not share the CPUs with the DataLoader run
    if out is None or len(out["ok"]) != len(rows):
        raise RuntimeError("the Ray Data stage lost rows")
    feats = np.zeros((len(rows), out["feat"].shape[1]), dtype=np.float32)
    # Row order within a Ray Data run is not fixed; img rows are unique per item here.
    position = pd.Series(np.arange(len(rows)), index=pd.MultiIndex.from_frame(rows[["item_idx", "img_pos"]]))
    where = position.loc[list(zip(out["item_idx"], out["img_pos"]))].to_numpy()
    feats[where] = out["feat"]
    return result, feats, asdict(plan)


# ------------------------------------------------------------------------------------- report


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else 0.0


def report(dls: list[Result], rds: list[Result], max_diff: float, plan: dict, args: argparse.Namespace) -> dict:
    """Print every run and the verdict on the ratio of the two sides' median steady throughput."""
    ratio = _median([r.images_per_s for r in rds]) / (_median([r.images_per_s for r in dls]) or float("inf"))
    e2e = (_median([r.end_to_end_images_per_s for r in rds])
           / (_median([r.end_to_end_images_per_s for r in dls]) or float("inf")))
    verdict = "PASS" if ratio >= args.target else "FAIL"
    device = "cuda" if plan.get("actor_gpus") else "cpu"
    print(f"\nimages: {dls[0].images} ({args.catalog}), backbone {args.backbone}, batch {args.batch_size}, "
          f"decode workers {args.workers}, torch threads {args.threads}, device {device}, "
          f"repeats {args.repeats} (ABBA order)")
    print(f"  {'run':<22} {'steady images/s':>16} {'end-to-end images/s':>20} {'model CPU ms/img':>17}"
          "  (featurized, total s, steady window s)")
    for n, (dl, rd) in enumerate(zip(dls, rds), start=1):
        for r in (dl, rd):
            print(f"  {r.name + f' #{n}':<22} {r.images_per_s:16.2f} {r.end_to_end_images_per_s:20.2f} "
                  f"{r.model_cpu_ms_per_image:17.1f}  ({r.featurized}/{r.images}, {r.seconds:.1f}s, {r.warm_seconds:.1f}s)")
    print(f"  ratio ray/dataloader of medians, steady state (warm-up excluded from both): {ratio:.3f}  "
          f"target >= {args.target} -> {verdict}")
    print(f"  ratio ray/dataloader of medians, end to end (warm-up included in both):      {e2e:.3f}")
    print(f"  max |feature difference| between the two: {max_diff:.2e}")

    def rows(results: list[Result]) -> list[dict]:
        return [asdict(r) | {"images_per_s": r.images_per_s, "end_to_end_images_per_s": r.end_to_end_images_per_s}
                for r in results]

    return {"dataloader": rows(dls), "ray_data": rows(rds), "ratio": ratio, "ratio_end_to_end": e2e,
            "target": args.target, "verdict": verdict, "max_feature_diff": max_diff, "plan": plan,
            "args": vars(args)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if min(args.workers, args.threads, args.batch_size, args.limit, args.repeats) < 1:
        print("error: --workers, --threads, --batch-size, --limit and --repeats must be >= 1", file=sys.stderr)
        return 2
    rows = select_images(args.catalog, args.limit)
    if rows.empty:
        print(f"error: no images found in {args.catalog}", file=sys.stderr)
        return 2
    warm_file_cache(rows["path"].tolist())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dls: list[Result] = []
    rds: list[Result] = []
    plan: dict = {}
    # ABBA order (ray, dl, dl, ray, ...): on a shared machine the load drifts, and alternating
    # which side goes first keeps that drift from favouring one side.
    for repeat in range(args.repeats):
        for side in ("ray", "dl") if repeat % 2 == 0 else ("dl", "ray"):
            if side == "ray":
                rd, ray_feats, plan = run_ray(rows, args)
                rds.append(rd)
            else:
                dl, dl_feats = run_dataloader(rows, args, device)
                dls.append(dl)
    max_diff = float(np.abs(ray_feats - dl_feats).max())
    result = report(dls, rds, max_diff, plan, args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if result["verdict"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())

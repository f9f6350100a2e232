"""Item-tower throughput and hash-embedding speed-up, on synthetic items of realistic size.

Measures (1) forward+backward items/s of the ItemSage item tower at the paper's sizes on CPU and,
when available, on CUDA under bf16 autocast with MFU against the card's dense bf16 peak (analytic FLOP
count per item, x3 for forward+backward); and (2) ``HashEmbeddingBag``'s single ``embedding_bag`` call
against its per-token ``naive_forward`` reference, forward only, in items/s, with the ratio.

    python experiments/bench/model.py --steps 5
    python experiments/bench/model.py --device cuda --batch-size 1024 --steps 50 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from itemsage.config import TEXT_FIELDS, ModelConfig
from itemsage.model.batch import ItemBatch
from itemsage.model.hash_embedding import HashEmbeddingBag
from itemsage.model.item_tower import ItemSageTower

# Mean tokens per text field (unigrams + bigrams + char-trigrams after vocab filtering, capped), for
# a fashion-style catalog. Fields are empty with probability EMPTY_FIELD_PROB (catalogs lack them).
TOKENS_PER_FIELD = {
    "title": 30, "description": 80, "merchant_domain": 4, "link_text": 12, "category_path": 10,
    "product_types": 8, "brand": 3, "colors": 3, "materials": 4, "patterns": 3, "size": 2, "size_type": 2,
}
EMPTY_FIELD_PROB = 0.3

# Dense (no sparsity) bf16 tensor-core peaks, TFLOPS, from the vendors' data sheets.
BF16_PEAK_TFLOPS = {
    "H100 SXM": 989.4, "H100 80GB HBM3": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H200": 989.4,
    "A100": 312.0, "L40S": 362.1, "L4": 121.0,
}


def peak_tflops(name: str) -> float | None:
    """Longest table key contained in the device name (so "H100 PCIe" beats "H100")."""
    hits = [k for k in BF16_PEAK_TFLOPS if k.lower() in name.lower()]
    if not hits and "h100" in name.lower():
        hits = ["H100 SXM"]  # plain "NVIDIA H100" is how SXM parts report themselves
    return BF16_PEAK_TFLOPS[max(hits, key=len)] if hits else None


def synthetic_batch(
    batch_size: int, image_dim: int, vocab_size: int, images: tuple[int, int], seed: int
) -> ItemBatch:
    """Items with ``images[0]..images[1]`` images and Poisson token counts per field."""
    rng = np.random.default_rng(seed)
    n_images = rng.integers(images[0], images[1] + 1, batch_size)
    m = int(n_images.max())
    mask = np.arange(m)[None, :] < n_images[:, None]
    feats = rng.random((batch_size, m, image_dim), dtype=np.float32) * mask[..., None]
    means = np.array([TOKENS_PER_FIELD[f] for f in TEXT_FIELDS])
    lens = rng.poisson(means, (batch_size, len(TEXT_FIELDS)))
    lens[rng.random(lens.shape) < EMPTY_FIELD_PROB] = 0
    flat = lens.reshape(-1)
    ids = rng.integers(0, vocab_size, int(flat.sum()))
    offsets = np.cumsum(flat) - flat
    return ItemBatch(
        torch.from_numpy(feats), torch.from_numpy(mask), torch.from_numpy(ids),
        torch.from_numpy(offsets), torch.from_numpy(lens > 0),
        torch.from_numpy(rng.standard_normal((batch_size, 384), dtype=np.float32)),  # MiniLM title
    )


def _timed(fn: Callable[[], object], steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per call, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


@dataclass
class TowerResult:
    device: str
    batch_size: int
    items_per_s: float
    ms_per_step: float
    gflops_per_item_fwd_bwd: float
    achieved_tflops: float
    peak_tflops: float | None
    mfu: float | None


def bench_tower(args: argparse.Namespace, device: torch.device) -> TowerResult:
    torch.manual_seed(0)
    cfg = ModelConfig(dropout=0.0)
    tower = ItemSageTower(cfg, args.vocab_size, args.image_dim).to(device).train()
    batch = synthetic_batch(args.batch_size, args.image_dim, args.vocab_size, (1, 3), seed=0).to(device)
    target = torch.randn(args.batch_size, cfg.embedding_dim, device=device)
    use_bf16 = device.type == "cuda" and not args.fp32

    def step() -> None:
        tower.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = (tower(batch) * target).sum()
        loss.backward()

    sec = _timed(step, args.steps, args.warmup, device)
    images = float(batch.image_mask.sum()) / args.batch_size
    tokens = float(batch.text_ids.numel()) / args.batch_size
    flops = 3.0 * tower.flops_per_item(images, tokens)  # backward ~ 2x forward
    ips = args.batch_size / sec
    achieved = flops * ips / 1e12
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    peak = (args.peak_tflops or peak_tflops(name)) if device.type == "cuda" else None
    return TowerResult(
        device=f"{device.type}: {name}" + (" (bf16 autocast)" if use_bf16 else " (fp32)"),
        batch_size=args.batch_size,
        items_per_s=ips,
        ms_per_step=sec * 1e3,
        gflops_per_item_fwd_bwd=flops / 1e9,
        achieved_tflops=achieved,
        peak_tflops=peak,
        mfu=achieved / peak if peak else None,
    )


@dataclass
class BagResult:
    device: str
    embedding_bag_items_per_s: float
    naive_items_per_s: float
    speedup: float
    max_abs_diff: float


def bench_bag(args: argparse.Namespace, device: torch.device) -> BagResult:
    torch.manual_seed(0)
    cfg = ModelConfig()
    bag = HashEmbeddingBag(args.vocab_size, cfg.hash_buckets, cfg.hash_dim, cfg.hash_seeds).to(device)
    big = synthetic_batch(args.batch_size, 1, args.vocab_size, (0, 0), seed=1).to(device)
    small = synthetic_batch(args.naive_items, 1, args.vocab_size, (0, 0), seed=2).to(device)
    with torch.no_grad():
        fast = _timed(lambda: bag(big.text_ids, big.text_offsets), args.steps, args.warmup, device)
        slow = _timed(lambda: bag.naive_forward(small.text_ids, small.text_offsets), 1, 0, device)
        diff = (bag(small.text_ids, small.text_offsets) - bag.naive_forward(small.text_ids, small.text_offsets))
    fast_ips, slow_ips = args.batch_size / fast, args.naive_items / slow
    return BagResult(f"{device.type}", fast_ips, slow_ips, fast_ips / slow_ips, float(diff.abs().max()))


def main(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: CPU, plus CUDA when available")
    p.add_argument("--batch-size", type=int, default=1024, help="items per step (paper-scale batches)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (allocator, kernels)")
    p.add_argument("--vocab-size", type=int, default=300_000, help="token vocab (sizes W, not E)")
    p.add_argument("--image-dim", type=int, default=1280, help="image feature width (efficientnet-lite0)")
    p.add_argument("--naive-items", type=int, default=16,
                   help="items for the per-token Python reference (it is ~1000x slower)")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the card's bf16 peak")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    devices = [torch.device("cpu")] if args.device in ("auto", "cpu") else []
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        devices.append(torch.device("cuda"))
    results: dict[str, object] = {"torch": torch.__version__, "cpu_threads": torch.get_num_threads(), "runs": []}
    for dev in devices:
        tower, bag = bench_tower(args, dev), bench_bag(args, dev)
        results["runs"].append({"tower": asdict(tower), "hash_bag": asdict(bag)})  # type: ignore[union-attr]
        mfu = f"{tower.mfu:.1%} of {tower.peak_tflops:.0f} TFLOPS" if tower.mfu is not None else "n/a"
        print(f"== {tower.device}")
        print(f"item tower fwd+bwd  batch {tower.batch_size}: {tower.items_per_s:,.0f} items/s "
              f"({tower.ms_per_step:.1f} ms/step), {tower.gflops_per_item_fwd_bwd:.3f} GFLOP/item, "
              f"{tower.achieved_tflops:.2f} TFLOPS, MFU {mfu}")
        print(f"hash bag forward    embedding_bag {bag.embedding_bag_items_per_s:,.0f} items/s | "
              f"naive {bag.naive_items_per_s:,.1f} items/s | speed-up {bag.speedup:,.0f}x "
              f"(max |diff| {bag.max_abs_diff:.1e})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()

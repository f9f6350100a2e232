"""The GPU path, checked and measured in one command (at most 8 minutes on one GPU).

    python experiments/gpu_check.py --out artifacts/gpu_check        # on a GPU machine
    python experiments/gpu_check.py --cpu --out /tmp/gpu_check        # every step on CPU, small sizes

Three independent sections; one failing (say FAISS has no GPU build here) is recorded in the report
and the others still run:

* **train**: 200 bf16 steps of the fashion-size item tower (experiments/configs/fashion.yaml) through
  Ray Train, one worker per visible GPU (DDP when more than one), on synthetic items of realistic
  size (experiments/bench/model.py) with the in-batch softmax loss; steps/s and model FLOPs
  utilisation against the GPU's dense bf16 peak. FLOPs per step are counted by
  ``torch.utils.flop_counter.FlopCounterMode`` over one forward+backward.
* **index**: GPU IVF-Flat, IVF-PQ and CAGRA (cuVS) on 1M x 256 clustered unit vectors, chosen by the
  project's recall/QPS sweep (``itemsage.index.sweep``) on the GPU; recall@10 against exact search,
  QPS against GPU exact search (torch matmul + top-k) and against the CPU indexes (exact, and IVF at
  the GPU's nprobe); a CAGRA save/load round trip.
* **serve**: the Serve app (deployments/serve_config.yaml) with ``num_gpus`` on ItemEncoder,
  QueryEncoder and Retriever, serving a small version (sample items, randomly initialised model:
  latency, not quality), and 1,000 ``POST /search`` requests one at a time: failures, p50, p99.

Writes ``report.json`` and ``report.md`` under ``--out``. Without a GPU (and without ``--cpu``) it
says so and exits 0. Exit status 1 only when a section failed; a section skipped for a missing
package (the reason is in the report) does not fail the run. Targets (issue 21) are reported as met
or not: item-tower MFU >= 30% at batch >= 4096, GPU IVF recall@10 >= 0.95 at >= 50x CPU exact QPS,
/search p50 <= 10 ms at concurrency 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import sys
import time
import traceback
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FASHION_CONFIG = REPO / "experiments/configs/fashion.yaml"
TARGETS = {"mfu": 0.30, "mfu_min_batch": 4096, "ivf_recall": 0.95, "ivf_x_cpu_exact": 50.0, "search_p50_ms": 10.0}
log = logging.getLogger("gpu_check")


class Skip(Exception):
    """A section cannot run here for a stated reason (a package missing); not a failure."""


@dataclass(frozen=True)
class Sizes:
    """Problem sizes: the real check on a GPU, or a small CPU run that proves the script works."""

    cpu: bool
    train_batch: int
    train_steps: int
    train_warmup: int
    index_n: int
    index_queries: int
    sweep_budget_s: float
    requests: int

    @classmethod
    def for_mode(cls, cpu: bool, requests: int | None, train_steps: int | None) -> Sizes:
        if cpu:
            return cls(True, 64, train_steps or 5, 1, 20_000, 500, 0.05, requests or 50)
        return cls(False, 4096, train_steps or 200, 10, 1_000_000, 10_000, 0.5, requests or 1000)


def _bench_model() -> Any:
    """experiments/bench/model.py (synthetic item batches, bf16 peaks), loaded by path."""
    spec = importlib.util.spec_from_file_location("bench_model", REPO / "experiments/bench/model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_model"] = module  # Ray pickles the train loop's closures by module name
    spec.loader.exec_module(module)
    return module


# ---- train ---------------------------------------------------------------------------------------
def fashion_model_config() -> Any:
    from itemsage.config import PipelineConfig, load_config

    # dropout changes no FLOPs; off, steps are deterministic across workers
    return load_config(PipelineConfig, str(FASHION_CONFIG), ["train.model.dropout=0.0"]).train.model


def train_steps(loop_config: dict[str, Any]) -> dict[str, float]:
    """The measured loop, run on every worker: ``warmup`` untimed steps, then ``steps`` timed ones.

    Data is one synthetic batch made on the device up front: the check measures the model step,
    not the input pipeline. Loss: in-batch softmax of item embeddings against random unit query
    vectors (the shape of ItemSage's in-batch negatives).
    """
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from itemsage.model.item_tower import ItemSageTower

    bench = _bench_model()
    world, rank, device = 1, 0, torch.device(loop_config["device"])
    if loop_config["ray"]:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        world, rank = ctx.get_world_size(), ctx.get_world_rank()
        device = ray.train.torch.get_device()
    torch.manual_seed(rank)
    cfg = loop_config["model_cfg"]
    tower = ItemSageTower(cfg, loop_config["vocab_size"], loop_config["image_dim"]).to(device).train()
    if loop_config["ray"]:
        import ray.train.torch

        tower = ray.train.torch.prepare_model(tower)  # DDP when world > 1
    opt = torch.optim.AdamW(tower.parameters(), lr=1e-3, fused=device.type == "cuda")
    batch = bench.synthetic_batch(loop_config["batch"], loop_config["image_dim"], loop_config["vocab_size"],
                                  (1, cfg.max_images), seed=rank).to(device)
    queries = F.normalize(torch.randn(loop_config["batch"], cfg.embedding_dim, device=device), dim=-1)
    labels = torch.arange(loop_config["batch"], device=device)
    bf16 = device.type == "cuda"

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = tower(batch) @ queries.T / 0.05
            loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        opt.step()
        return loss

    with FlopCounterMode(display=False) as counter:
        step()
    flops = float(counter.get_total_flops())
    for _ in range(loop_config["warmup"]):
        step()
    if bf16:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(loop_config["steps"]):
        loss = step()
    final_loss = float(loss)  # waits for the last step
    sec = time.perf_counter() - t0
    out = {"steps": loop_config["steps"], "seconds": sec, "steps_per_s": loop_config["steps"] / sec,
           "flops_per_step": flops, "world_size": world, "final_loss": final_loss,
           "device_name": torch.cuda.get_device_name(device) if bf16 else platform.processor() or "cpu"}
    if loop_config["ray"] and rank == 0:
        # A file, not ray.train.report: Ray Train 2.60 keeps reported metrics only with a checkpoint.
        Path(loop_config["metrics_path"]).write_text(json.dumps(out))
    return out


def run_train(sizes: Sizes, out_dir: Path, use_ray: bool) -> dict[str, Any]:
    import torch

    cfg = fashion_model_config()
    n_gpus = 0 if sizes.cpu else torch.cuda.device_count()
    loop_config = {"model_cfg": cfg, "vocab_size": 300_000, "image_dim": 1280, "batch": sizes.train_batch,
                   "steps": sizes.train_steps, "warmup": sizes.train_warmup, "ray": use_ray,
                   "device": "cpu" if sizes.cpu else "cuda",
                   "metrics_path": str((out_dir / "train_metrics.json").resolve())}
    if use_ray:
        try:
            import ray
            from ray.train import RunConfig, ScalingConfig
            from ray.train.torch import TorchTrainer
        except ImportError as e:
            raise Skip(f"Ray Train is not installed here ({e}); --train-backend torch measures the model alone") from e
        workers = max(n_gpus, 1)
        if not ray.is_initialized():
            ray.init(num_cpus=max(2, workers * 2), include_dashboard=False, log_to_driver=False)
        trainer = TorchTrainer(
            train_steps,
            train_loop_config=loop_config,
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=n_gpus > 0,
                                         resources_per_worker={"CPU": 1, **({"GPU": 1} if n_gpus else {})}),
            run_config=RunConfig(name="gpu_check", storage_path=str((out_dir / "ray_results").resolve())),
        )
        trainer.fit()
        m = json.loads(Path(loop_config["metrics_path"]).read_text())
        backend = f"ray train, {workers} worker(s)" + (", DDP" if workers > 1 else "")
    else:
        m = train_steps(loop_config)
        backend = "plain torch, 1 process (no Ray)"
    bench = _bench_model()
    peak = bench.peak_tflops(m["device_name"]) if not sizes.cpu else None
    achieved = m["flops_per_step"] * m["steps_per_s"] / 1e12  # per worker: each runs its own batch
    return {
        "backend": backend, "device": m["device_name"], "precision": "fp32 (CPU)" if sizes.cpu else "bf16 autocast",
        "batch_per_worker": sizes.train_batch, "world_size": m["world_size"], "steps": m["steps"],
        "steps_per_s": m["steps_per_s"], "items_per_s": m["steps_per_s"] * sizes.train_batch * m["world_size"],
        "gflop_per_step": m["flops_per_step"] / 1e9, "tflops_per_gpu": achieved, "peak_tflops": peak,
        "mfu": achieved / peak if peak else None, "final_loss": m["final_loss"],
        "model": {k: getattr(cfg, k) for k in ("hidden_dim", "num_heads", "ffn_dim", "num_layers", "max_images",
                                               "embedding_dim", "hash_buckets", "hash_dim")},
    }


# ---- index ---------------------------------------------------------------------------------------
def _qps(search: Callable[[np.ndarray], Any], queries: np.ndarray, batch: int, budget_s: float) -> float:
    """Queries per second in batches of ``batch``, over at most ``budget_s`` (at least one batch)."""
    search(queries[:batch])  # warm-up
    done, t0 = 0, time.perf_counter()
    while done < len(queries):
        search(queries[done : done + batch])
        done += batch
        if time.perf_counter() - t0 > budget_s:
            break
    return min(done, len(queries)) / (time.perf_counter() - t0)


def run_index(sizes: Sizes, out_dir: Path) -> dict[str, Any]:
    import faiss
    import torch

    from itemsage.index import build_index, recall_at_k, sweep
    from itemsage.index.devices import DeviceCaps
    from itemsage.index.synthetic import ClusteredSphere, item_ids

    caps = DeviceCaps.detect()
    x = ClusteredSphere(dim=256).sample(sizes.index_n, seed=0)
    q = ClusteredSphere(dim=256).sample(sizes.index_queries, seed=1)
    ids = item_ids(sizes.index_n)
    res: dict[str, Any] = {"n": sizes.index_n, "dim": 256, "queries": sizes.index_queries, "k": 10,
                           "faiss": faiss.__version__, "caps": caps.__dict__, "notes": []}
    budget = 3.0 if not sizes.cpu else 0.3

    # Exact search: torch matmul + top-k on the device (the truth, and the GPU baseline), FAISS CPU.
    exact = build_index(x, ids, "TorchExact", use_gpu=not sizes.cpu)
    truth, _ = exact.search(q, 10)
    res["exact_device"] = exact.device
    res["qps_exact_device_b256"] = _qps(lambda b: exact.search(b, 10), q, 256, budget)
    res["qps_exact_device_b4096"] = _qps(lambda b: exact.search(b, 10), q, 4096, budget)
    cpu_flat = build_index(x, ids, "Flat", use_gpu=False)
    res["cpu_threads"] = faiss.omp_get_max_threads()
    res["qps_cpu_exact_b256"] = _qps(lambda b: cpu_flat.search(b, 10), q, 256, budget)

    # The project's sweep, on the serving device: GPU IVF-Flat, IVF-PQ and CAGRA when FAISS can.
    if not sizes.cpu and not caps.faiss_gpu:
        res["notes"].append(f"FAISS {faiss.__version__} here has no GPU build: GPU IVF and CAGRA not measured "
                            "(install requirements/faiss-gpu.txt)")
    result = sweep(x, ids, q[: min(2000, len(q))], ["IVF{nlist},Flat", "IVF{nlist},PQ32"], k=10, recall_target=0.95,
                   use_gpu=not sizes.cpu, time_budget_s=sizes.sweep_budget_s, keep_index=False, caps=caps)
    res["sweep"] = result.to_dict()
    res["sweep_markdown"] = result.to_markdown()
    best_ivf = {}
    for row in result.rows:  # the last (cheapest target-meeting) setting per spec
        best_ivf[row.spec] = row
    ivf = [r for s, r in best_ivf.items() if s.startswith("IVF") and s.endswith(",Flat") and r.device == result.device]
    if ivf:
        row = ivf[-1]
        index = build_index(x, ids, row.spec, use_gpu=not sizes.cpu)
        index.set_search_params(**row.params)
        found, _ = index.search(q, 10)
        res["ivf"] = {"spec": row.spec, "params": row.params, "device": index.device,
                      "recall_at_10": recall_at_k(found, truth, 10),
                      "qps_b256": _qps(lambda b: index.search(b, 10), q, 256, budget),
                      "qps_b4096": _qps(lambda b: index.search(b, 10), q, 4096, budget)}
        cpu_ivf = build_index(x, ids, row.spec, use_gpu=False)
        cpu_ivf.set_search_params(**row.params)
        res["ivf"]["qps_cpu_same_index_b256"] = _qps(lambda b: cpu_ivf.search(b, 10), q, 256, budget)
        res["ivf"]["x_cpu_exact"] = res["ivf"]["qps_b256"] / res["qps_cpu_exact_b256"]
        res["ivf"]["x_device_exact"] = res["ivf"]["qps_b256"] / res["qps_exact_device_b256"]

    if caps.cuvs and not sizes.cpu:
        res["cagra_roundtrip"] = _cagra_roundtrip(x[:100_000], ids[:100_000], q[:1000], out_dir)
    elif not sizes.cpu:
        res["notes"].append("FAISS here has no cuVS: CAGRA not measured")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return res


def _cagra_roundtrip(x: np.ndarray, ids: list[str], q: np.ndarray, out_dir: Path) -> dict[str, Any]:
    """CAGRA built on the GPU, saved (as its HNSW form), loaded back on the GPU and on the CPU."""
    from itemsage.index import build_index, load_index, recall_at_k

    truth, _ = build_index(x, ids, "TorchExact").search(q, 10)
    gpu = build_index(x, ids, "CAGRA32", use_gpu=True)
    found, _ = gpu.search(q, 10)
    path = gpu.save(out_dir / "cagra_index")
    back_gpu = load_index(path, use_gpu=True)
    back_cpu = load_index(path, use_gpu=False)
    return {"recall_built": recall_at_k(found, truth, 10),
            "loaded_gpu_device": back_gpu.device, "recall_loaded_gpu": recall_at_k(back_gpu.search(q, 10)[0], truth, 10),
            "loaded_cpu_device": back_cpu.device, "recall_loaded_cpu": recall_at_k(back_cpu.search(q, 10)[0], truth, 10)}


# ---- serve ---------------------------------------------------------------------------------------
def _tiny_version(root: Path) -> dict[str, Path]:
    """features + random-weight model + Flat index over the bundled sample (tests/serve/tiny.py)."""
    path = REPO / "tests/serve/tiny.py"
    if not path.exists():
        raise Skip(f"{path} is missing: it builds the served version")
    spec = importlib.util.spec_from_file_location("serve_tiny", path)
    assert spec is not None and spec.loader is not None
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    return tiny.build_tiny_serving(REPO / "data/sample", root)  # type: ignore[no-any-return]


def run_serve(sizes: Sizes, out_dir: Path) -> dict[str, Any]:
    try:
        import ray
        from ray import serve  # noqa: F401
    except ImportError as e:
        raise Skip(f"Ray Serve is not installed here ({e})") from e
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from deployments.app import run_local, shutdown_local

    from itemsage.cluster.ports import free_port

    version = _tiny_version(out_dir / "serving")
    gpu = 0.0 if sizes.cpu else 0.3  # three replicas share the one GPU
    deps = {name: {"ray_actor_options": {"num_gpus": gpu}} for name in ("Retriever", "QueryEncoder", "ItemEncoder")}
    if ray.is_initialized():
        ray.shutdown()
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")
    url = run_local({"model_uri": str(version["model_1"]), "index_uri": str(version["index_1"])},
                    host="127.0.0.1", port=free_port(), deployments=deps, num_cpus=4, timeout_s=600)
    try:
        # url: the 127.0.0.1 Serve app this check started (every urlopen below goes there).
        health = json.loads(urllib.request.urlopen(f"{url}/healthz", timeout=30).read())  # nosec B310
        queries = ["red summer dress", "black leather boots", "men's watch", "cotton t-shirt", "blue jeans"]
        lat, failed = [], 0
        for i in range(sizes.requests):
            body = json.dumps({"query": queries[i % len(queries)], "k": 10}).encode()
            req = urllib.request.Request(f"{url}/search", body, {"Content-Type": "application/json"})
            t0 = time.perf_counter()
            try:
                # the local Serve app (url above)
                with urllib.request.urlopen(req, timeout=30) as r:  # nosec B310
                    ok = r.status == 200 and len(json.loads(r.read())["results"]) > 0
            except OSError:
                ok = False
            lat.append((time.perf_counter() - t0) * 1e3)
            failed += not ok
        # the same local Serve app
        version_info = json.loads(urllib.request.urlopen(f"{url}/version", timeout=30).read())  # nosec B310
    finally:
        # Nothing is in flight (the requests above are sequential) and no load balancer needs to
        # let go of the API replica: stop without Serve's 30 s drain, which would only be waited out.
        shutdown_local(drain=False)
    return {"requests": sizes.requests, "concurrency": 1, "failed": failed,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "num_gpus_per_replica": gpu, "health": health, "index_device": (version_info.get("index") or {}).get("device"),
            "note": "random-weight tiny model over the bundled sample: measures serving latency, not quality"}


# ---- report --------------------------------------------------------------------------------------
def run_section(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        out = {"status": "ok", **fn()}
    except Skip as e:
        out = {"status": "skipped", "reason": str(e)}
    except Exception as e:  # noqa: BLE001 - recorded in the report; the other sections still run
        out = {"status": "failed", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"[{name}] {out['status']} in {out['seconds']}s", flush=True)
    return out


def check_targets(report: dict[str, Any]) -> dict[str, Any]:
    """Issue 21's targets, met or not (None: not measured, or the CPU smoke run)."""
    if report["mode"] == "cpu":
        return {}
    t, i, s = report["sections"]["train"], report["sections"]["index"], report["sections"]["serve"]
    ivf = i.get("ivf") or {}
    return {
        "train_mfu_ge_30pct": None if t.get("mfu") is None else bool(t["mfu"] >= TARGETS["mfu"] and t["batch_per_worker"] >= TARGETS["mfu_min_batch"]),
        "ivf_recall_ge_095_at_50x_cpu_exact": None if not ivf or ivf.get("device", "cpu") == "cpu" else bool(
            ivf["recall_at_10"] >= TARGETS["ivf_recall"] and ivf["x_cpu_exact"] >= TARGETS["ivf_x_cpu_exact"]),
        "search_p50_le_10ms": None if "p50_ms" not in s else bool(s["p50_ms"] <= TARGETS["search_p50_ms"] and s["failed"] == 0),
    }


def _f(v: Any, fmt: str = ",.1f") -> str:
    return "-" if v is None else format(v, fmt)


def to_markdown(r: dict[str, Any]) -> str:
    t, i, s = (r["sections"][k] for k in ("train", "index", "serve"))
    lines = [f"# GPU check ({r['mode']})", "", (f"{r['host']}; torch {r['torch']} (CUDA {r['torch_cuda']}); "
             f"{r['gpus']} GPU(s): {', '.join(r['gpu_names']) or 'none'}"), ""]
    for name, sec in (("train", t), ("index", i), ("serve", s)):
        lines.append(f"- **{name}**: {sec['status']} ({sec['seconds']} s)"
                     + (f": {sec.get('reason') or sec.get('error')}" if sec["status"] != "ok" else ""))
    if t["status"] == "ok":
        lines += ["", "## Train (item tower, fashion size)", "",
                  "| backend | device | batch/worker | workers | steps/s | items/s | GFLOP/step | TFLOP/s/GPU | MFU |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|",
                  (f"| {t['backend']} | {t['device']} ({t['precision']}) | {t['batch_per_worker']} | {t['world_size']} | "
                   f"{t['steps_per_s']:.2f} | {t['items_per_s']:,.0f} | {t['gflop_per_step']:.1f} | "
                   f"{t['tflops_per_gpu']:.2f} | {_f(t['mfu'] and 100 * t['mfu'])}% |")]
    if i["status"] == "ok":
        lines += ["", f"## Index ({i['n']:,} x {i['dim']}, {i['queries']:,} queries, recall@10 vs exact)", "",
                  (f"exact search on {i['exact_device']}: {i['qps_exact_device_b256']:,.0f} QPS (batch 256), "
                   f"{i['qps_exact_device_b4096']:,.0f} QPS (batch 4096); CPU exact (FAISS, {i['cpu_threads']} threads): "
                   f"{i['qps_cpu_exact_b256']:,.0f} QPS (batch 256)"), ""]
        if i.get("ivf"):
            v = i["ivf"]
            lines += [(f"{v['spec']} {v['params']} on {v['device']}: recall@10 {v['recall_at_10']:.4f}, "
                       f"{v['qps_b256']:,.0f} QPS (batch 256), {v['qps_b4096']:,.0f} (batch 4096); "
                       f"x{v['x_cpu_exact']:,.1f} CPU exact, x{v['x_device_exact']:,.2f} exact on {i['exact_device']}, "
                       f"same index on CPU {v['qps_cpu_same_index_b256']:,.0f} QPS"), ""]
        if i.get("cagra_roundtrip"):
            lines += [f"CAGRA32 save/load on 100k: {json.dumps(i['cagra_roundtrip'])}", ""]
        lines += ["### Sweep", "", i["sweep_markdown"], *[f"- {n}" for n in i["notes"]]]
    if s["status"] == "ok":
        lines += ["", "## Serve (`POST /search`, concurrency 1)", "",
                  (f"{s['requests']} requests, {s['failed']} failed, p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms; "
                   f"num_gpus {s['num_gpus_per_replica']} per replica, index on {s['index_device']} ({s['note']})")]
    if r["targets"]:
        lines += ["", "## Targets", ""] + [f"- {k}: {'met' if v else 'not met' if v is not None else 'not measured'}"
                                            for k, v in r["targets"].items()]
    for name, sec in (("train", t), ("index", i), ("serve", s)):
        if sec["status"] == "failed":
            lines += ["", f"## {name} failed", "", "```", sec["traceback"], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="artifacts/gpu_check", help="directory for report.json and report.md")
    p.add_argument("--cpu", action="store_true", help="run every section on CPU at small size (CI smoke run)")
    p.add_argument("--sections", default="train,index,serve", help="comma-separated subset to run")
    p.add_argument("--train-backend", choices=["ray", "torch"], default="ray",
                   help="ray: Ray Train on every GPU (the check); torch: the same loop in-process, one GPU")
    p.add_argument("--train-steps", type=int, default=None, help="timed steps (default 200; 5 with --cpu)")
    p.add_argument("--requests", type=int, default=None, help="/search requests (default 1000; 50 with --cpu)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import torch

    gpus = torch.cuda.device_count()
    if gpus == 0 and not args.cpu:
        print("gpu_check: no GPU visible to torch here; nothing to measure (use --cpu for the CPU smoke run)")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = Sizes.for_mode(args.cpu, args.requests, args.train_steps)
    wanted = {s.strip() for s in args.sections.split(",") if s.strip()}
    unknown = wanted - {"train", "index", "serve"}
    if unknown:
        p.error(f"unknown section(s) {sorted(unknown)}")
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "train": lambda: run_train(sizes, out, args.train_backend == "ray"),
        "index": lambda: run_index(sizes, out),
        "serve": lambda: run_serve(sizes, out),
    }
    report: dict[str, Any] = {
        "mode": "cpu" if args.cpu else "gpu", "host": platform.node(), "python": platform.python_version(),
        "torch": torch.__version__, "torch_cuda": torch.version.cuda, "gpus": gpus,
        "gpu_names": [torch.cuda.get_device_name(d) for d in range(gpus)], "sizes": sizes.__dict__, "sections": {},
    }
    t0 = time.perf_counter()
    for name, fn in runners.items():
        report["sections"][name] = run_section(name, fn) if name in wanted else {"status": "skipped", "reason": "not asked for", "seconds": 0}
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report["targets"] = check_targets(report)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "report.md").write_text(to_markdown(report))
    print(to_markdown(report))
    return 1 if any(s["status"] == "failed" for s in report["sections"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())

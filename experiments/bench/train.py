"""Ray Train overhead: steps/s of a 1-worker Ray Train run vs. a plain single-process PyTorch loop.

Both sides run the same ``Stepper`` (model, loss, optimizer, schedule), on the same features and
the same batch size, with the same number of torch threads; the Ray side adds what Ray Train costs:
the worker actor, Ray Data streaming of the pair shard, ``ray.train`` context and reporting. Both
time steps after the first and exclude start-up, validation and checkpointing. Target: Ray Train
reaches >= 0.87x the plain loop's steps/s.

On a machine shared with other jobs the load drifts by the minute, so the two sides run
interleaved (plain, Ray, plain, Ray, ... ``--repeats`` times) and the verdict compares medians; the
load average before and after is printed with the numbers. Linux shares CPU between *sessions*
(autogroup scheduling) before processes, and Ray starts its workers in sessions of their own, so the
plain loop runs in a child process with its own session too; otherwise, on a busy box, it would
share one session's slice with everything else typed in that terminal and look slower than it is.

    python experiments/bench/train.py --config experiments/configs/demo.yaml --steps 60
    python experiments/bench/train.py --config experiments/configs/fashion.yaml --steps 40 --json out.json

The features directory named by the config must exist (run experiments/preprocess.py first).
Tracking and registration are off: this measures training, not MLflow.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

try:
    import itemsage  # noqa: F401
except ImportError:  # a plain checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "platform"))

from itemsage.config import PipelineConfig, load_config  # noqa: E402

TARGET = 0.87


def bench_config(path: str, overrides: list[str], steps: int, storage: str) -> PipelineConfig:
    """The config under test, made comparable: 1 worker, one checkpoint at the end, no eval."""
    return load_config(
        PipelineConfig,
        path,
        [
            *overrides,
            "train.num_workers=1",
            f"train.max_steps={steps}",
            f"train.checkpoint_every={steps}",
            "train.eval_every=0",
            f"train.storage_path={storage}",
            "train.name=bench",
        ],
    )


def torch_threads(cfg: PipelineConfig) -> int:
    """Threads a Ray worker gets: Ray sets OMP_NUM_THREADS to its whole CPUs (at least 1)."""
    return max(1, int(cfg.train.cpus_per_worker))


def plain_steps_per_s(cfg: PipelineConfig, steps: int) -> float:
    import torch

    from itemsage.train.plain import run_steps, setup_plain

    torch.set_num_threads(torch_threads(cfg))
    run = setup_plain(cfg, device="cuda" if _use_cuda(cfg) else "cpu")
    _, seconds = run_steps(run, steps)
    return (steps - 1) / seconds


def plain_steps_per_s_isolated(args: argparse.Namespace, storage: str) -> float:
    """:func:`plain_steps_per_s` in a child process with its own session (see the module doc)."""
    cmd = [sys.executable, __file__, "--config", args.config, "--steps", str(args.steps), "--plain-only", storage]
    out = subprocess.run([*cmd, *args.overrides], capture_output=True, text=True, start_new_session=True)
    if out.returncode != 0:
        raise RuntimeError(f"plain loop failed:\n{out.stderr[-3000:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["plain_steps_per_s"])


def ray_steps_per_s(cfg: PipelineConfig, num_cpus: float | None) -> float:
    import ray

    from itemsage.train.trainer import run_training, start_local_ray

    if not ray.is_initialized():
        start_local_ray(num_cpus, log_to_driver=False)
    try:
        return run_training(cfg, tracking=False, register=False).steps_per_s
    finally:
        ray.shutdown()


def _use_cuda(cfg: PipelineConfig) -> bool:
    import torch

    return cfg.train.use_gpu != "false" and torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="experiments/configs/demo.yaml")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.batch_size=128")
    p.add_argument("--steps", type=int, default=60, help="training steps per side (the first is not timed)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved plain/Ray rounds; medians decide")
    p.add_argument("--num-cpus", type=float, default=None, help="CPUs of the local Ray cluster")
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    p.add_argument("--plain-only", default=None, metavar="STORAGE", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.plain_only:  # the child process of plain_steps_per_s_isolated
        cfg = bench_config(args.config, args.overrides, args.steps, args.plain_only)
        print(json.dumps({"plain_steps_per_s": plain_steps_per_s(cfg, args.steps)}))
        return 0

    load_before = os.getloadavg()
    plains: list[float] = []
    rays: list[float] = []
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="itemsage-bench-") as storage:
            cfg = bench_config(args.config, args.overrides, args.steps, storage)
            if r == 0:
                print(
                    f"features={cfg.train.features} batch={cfg.train.batch_size} "
                    f"random_negatives={cfg.train.loss.num_random_negatives} steps={args.steps} "
                    f"threads={torch_threads(cfg)} load={load_before[0]:.1f}",
                    flush=True,
                )
            plains.append(plain_steps_per_s_isolated(args, storage))
            print(f"round {r + 1}: plain PyTorch loop   {plains[-1]:.3f} steps/s", flush=True)
            rays.append(ray_steps_per_s(cfg, args.num_cpus))
            print(f"round {r + 1}: Ray Train (1 worker) {rays[-1]:.3f} steps/s", flush=True)
    plain, ray_sps = statistics.median(plains), statistics.median(rays)
    ratio = ray_sps / plain if plain > 0 else 0.0
    verdict = "PASS" if ratio >= TARGET else "FAIL"
    print(f"plain PyTorch loop:      {plain:.3f} steps/s (median of {plains})")
    print(f"Ray Train (1 worker):    {ray_sps:.3f} steps/s (median of {rays})")
    print(f"ratio Ray/plain:         {ratio:.3f}  {verdict} (target >= {TARGET})")
    print(f"load average before/after: {load_before[0]:.1f} / {os.getloadavg()[0]:.1f}")
    if args.json:
        out: dict[str, Any] = {
            "plain_steps_per_s": plain,
            "ray_steps_per_s": ray_sps,
            "plain_rounds": plains,
            "ray_rounds": rays,
            "load_before": load_before[0],
            "load_after": os.getloadavg()[0],
            "ratio": ratio,
            "target": TARGET,
            "pass": ratio >= TARGET,
            "steps": args.steps,
            "batch_size": cfg.train.batch_size,
            "machine": platform.platform(),
        }
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())

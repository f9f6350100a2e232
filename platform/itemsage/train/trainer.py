"""The driver side of training: check inputs, build the ``TorchTrainer``, track, register.

``run_training(cfg)`` is what ``experiments/train.py`` calls. It fails fast on bad configs and
inputs, creates (or resumes) the MLflow run, fits a Ray Train V2 ``TorchTrainer`` whose
``RunConfig(storage_path, name)`` makes a re-run of the same command resume from the latest
checkpoint, and finally registers the best checkpoint (by validation Recall@10) as a new version of
the ``itemsage`` MLflow model.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from itemsage.config import SURFACES, ConfigError, PipelineConfig, flatten, to_dict
from itemsage.data.features_io import resolve
from itemsage.data.features_read import PAIR_COLUMNS, FeaturesError, pairs_path, read_manifest, read_pairs
from itemsage.train.data import TrainInputError, task_counts
from itemsage.train.loop import (
    RUN_FILE,
    SCORE_KEY,
    STATUS_FILE,
    LoopSpec,
    read_side_file,
    side_path,
    train_loop_per_worker,
    write_side_file,
)
from itemsage.train.tracking import Tracker, resolve_tracking_uri
from itemsage.trained.bundle import write_bundle
from itemsage.trained.checkpoint import META_FILE
from itemsage.trained.hubness_bank import attach_hubness_bank
from itemsage.trained.registry import REGISTERED_MODEL, register_bundle


class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss (or gradient) became NaN/inf at ``step``."""

    def __init__(self, step: int, checkpoint: str | None) -> None:
        where = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was written"
        super().__init__(f"loss became non-finite (NaN/inf) at step {step}; training stopped, {where}")
        self.step = step
        self.checkpoint = checkpoint


@dataclass
class TrainResult:
    """What a finished run produced (``model_uri`` is what ``itemsage.trained.load_trained`` takes)."""

    run_dir: str
    step: int
    best_checkpoint: str | None
    latest_checkpoint: str | None
    metrics: dict[str, float]
    mlflow_run_id: str | None
    model_version: str | None
    model_uri: str
    bundle_dir: str
    steps_per_s: float = 0.0
    tasks: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------------------- validation


def check_config(cfg: PipelineConfig) -> None:
    """Value checks the type-checking loader cannot do; the message names the dotted key."""
    tc = cfg.train

    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise ConfigError(f"train.{key}: {msg}")

    need(tc.num_workers >= 1, "num_workers", f"must be >= 1, got {tc.num_workers}")
    need(tc.cpus_per_worker > 0, "cpus_per_worker", f"must be > 0, got {tc.cpus_per_worker}")
    need(tc.batch_size >= 2, "batch_size", f"must be >= 2 (in-batch negatives), got {tc.batch_size}")
    need(tc.max_steps >= 1, "max_steps", f"must be >= 1, got {tc.max_steps}")
    need(tc.lr > 0 and math.isfinite(tc.lr), "lr", f"must be a positive number, got {tc.lr}")
    need(tc.weight_decay >= 0, "weight_decay", f"must be >= 0, got {tc.weight_decay}")
    need(tc.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {tc.warmup_steps}")
    need(tc.grad_clip >= 0, "grad_clip", f"must be >= 0 (0 disables clipping), got {tc.grad_clip}")
    need(tc.checkpoint_every >= 1, "checkpoint_every", f"must be >= 1, got {tc.checkpoint_every}")
    need(tc.eval_every >= 0, "eval_every", f"must be >= 0 (0: only at checkpoints), got {tc.eval_every}")
    need(tc.keep_checkpoints >= 1, "keep_checkpoints", f"must be >= 1, got {tc.keep_checkpoints}")
    need(tc.max_failures >= -1, "max_failures", f"must be >= -1 (-1: retry forever), got {tc.max_failures}")
    need(bool(tc.name) and "/" not in tc.name, "name", f"must be a non-empty name without '/', got {tc.name!r}")
    need(
        0 <= tc.model.finetune_text_layers <= 6,
        "model.finetune_text_layers",
        f"must be in [0, 6] (all-MiniLM-L6-v2 has 6 layers), got {tc.model.finetune_text_layers}",
    )
    bad = [s for s in tc.surfaces if s not in SURFACES]
    need(not bad, "surfaces", f"unknown surface {bad[0] if bad else ''!r}; expected some of {list(SURFACES)}")
    for task, q in tc.task_quotas.items():
        need(q >= 0 and math.isfinite(q), f"task_quotas.{task}", f"must be a non-negative number, got {q}")
    need(tc.loss.num_random_negatives >= 0, "loss.num_random_negatives", "must be >= 0")
    need(
        not tc.loss.random_negatives or tc.loss.num_random_negatives > 0,
        "loss.num_random_negatives",
        "must be > 0 while loss.random_negatives is true",
    )


def check_inputs(cfg: PipelineConfig) -> tuple[dict[str, Any], dict[str, int]]:
    """Features manifest and usable train-task counts, or one clear error about what is missing."""
    tc = cfg.train
    manifest = read_manifest(tc.features)
    train = read_pairs(tc.features, "train", tc.surfaces)
    if tc.validation:
        try:
            read_pairs(tc.features, "val", tc.surfaces)
        except FeaturesError as e:  # validation would have nothing to rank
            raise FeaturesError(f"{e} (train.validation: false trains without validation)") from e
    counts = task_counts(train)
    for task in tc.task_quotas:
        if task not in counts:
            raise ConfigError(f"train.task_quotas.{task}: no such task in the train split; tasks are {sorted(counts)}")
    usable = sum(n for t, n in counts.items() if tc.task_quotas.get(t, 1.0) > 0)
    need = tc.batch_size * tc.num_workers
    if usable < need:
        raise TrainInputError(
            f"the train split has {usable} usable pairs, fewer than train.batch_size x "
            f"train.num_workers = {need}; lower them or preprocess more data"
        )
    return manifest, counts


# ---------------------------------------------------------------------------- run directory


def _absolute(path: str) -> str:
    return path if "://" in path else str(Path(path).expanduser().resolve())


def with_absolute_paths(cfg: PipelineConfig) -> PipelineConfig:
    """``train.features`` and ``train.storage_path`` as absolute paths (URIs unchanged).

    Ray Train workers run in their own working directory, so a path relative to where the command
    was typed would point nowhere once shipped to them.
    """
    tc = cfg.train.replace(features=_absolute(cfg.train.features), storage_path=_absolute(cfg.train.storage_path))
    return cfg.replace(train=tc)


def run_dir_of(cfg: PipelineConfig) -> str:
    storage = cfg.train.storage_path
    if "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())
    return f"{storage.rstrip('/')}/{cfg.train.name}"


def checkpoint_metas(run_dir: str) -> list[tuple[str, dict[str, Any]]]:
    """``(checkpoint path, meta.json)`` of every checkpoint in a run directory, by step."""
    fs, root = resolve(run_dir)
    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        return []
    out = []
    for info in fs.get_file_info(pafs.FileSelector(root)):
        name = info.path.rstrip("/").rsplit("/", 1)[-1]
        if info.type != pafs.FileType.Directory or not name.startswith("checkpoint_"):
            continue
        meta_path = f"{info.path}/{META_FILE}"
        if fs.get_file_info(meta_path).type == pafs.FileType.NotFound:
            continue
        with fs.open_input_stream(meta_path) as f:
            out.append((info.path if "://" not in run_dir else f"{run_dir}/{name}", json.loads(f.read())))
    return sorted(out, key=lambda x: int(x[1].get("step", -1)))


def existing_run_id(run_dir: str) -> str | None:
    """The MLflow run of an earlier attempt at this run directory: latest checkpoint, else run file."""
    metas = checkpoint_metas(run_dir)
    for _, meta in reversed(metas):
        if meta.get("mlflow_run_id"):
            return str(meta["mlflow_run_id"])
    side = read_side_file(run_dir, RUN_FILE)
    return str(side["run_id"]) if side and side.get("run_id") else None


def fallback_path_of(run_dir: str, name: str) -> str:
    if "://" in run_dir:
        return str(Path(tempfile.gettempdir()) / "itemsage" / name / "mlflow_fallback.jsonl")
    return side_path(run_dir, "mlflow_fallback.jsonl")


# ---------------------------------------------------------------------------- trainer


def cluster_gpus() -> tuple[float, float | None]:
    """(GPUs in the connected Ray cluster now, GPUs its autoscaler can bring; None without one).

    A KubeRay GPU worker group may sit at zero replicas until something asks for a GPU, so "no
    GPU now" does not mean "no GPU ever"; the autoscaler's node groups say what can come.
    """
    import ray

    now = float(ray.cluster_resources().get("GPU", 0))
    try:
        from ray._private.state import state as gcs_state

        limits = gcs_state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001 - a private Ray API: without it, only what is there now counts
        limits = None
    return now, (float(limits.get("GPU", 0)) if limits else None)


def use_gpu_for(mode: str, num_workers: int = 1) -> bool:
    """``train.use_gpu`` decided on the connected cluster: does each worker get one GPU?

    - "false": no.
    - "auto": yes when the cluster has, or its autoscaler can add, one GPU per worker.
    - "true": yes; but on a cluster with no GPU that cannot get one, CPU with a warning: a GPU
      request there would wait forever, and the same config must run on a CPU-only cluster. Some
      GPUs but fewer than workers is a ConfigError instead (that wait, and no good fallback).
    """
    if mode == "false":
        return False
    now, reachable = cluster_gpus()
    most = max(now, reachable or 0.0)
    if mode == "auto":
        if 0 < most < num_workers:
            print(
                f"note: train.use_gpu=auto: {num_workers} workers need {num_workers} GPUs, the Ray "
                f"cluster has at most {most:g}; training on CPU",
                file=sys.stderr,
                flush=True,
            )
        return most >= num_workers
    if most == 0:
        print(
            'WARNING: train.use_gpu is "true" but the Ray cluster has no GPU and no autoscaler that '
            "could add one; training on CPU",
            file=sys.stderr,
            flush=True,
        )
        return False
    if most < num_workers:
        raise ConfigError(
            f"train.use_gpu: {num_workers} workers need {num_workers} GPUs but the Ray cluster has at "
            f"most {most:g}; lower train.num_workers or set train.use_gpu=false"
        )
    return True


def check_placement(tc: Any) -> None:
    """STRICT_SPREAD needs a node per worker; on a cluster that cannot grow, say so instead of
    letting the placement group wait forever."""
    if tc.placement_strategy != "STRICT_SPREAD":
        return
    import ray

    try:
        from ray._private.state import state as gcs_state

        if gcs_state.get_max_resources_from_cluster_config():
            return  # an autoscaler can add nodes
    except Exception:  # noqa: BLE001 - private API; fall through to counting the nodes there
        pass
    fits = [
        n for n in ray.nodes() if n.get("Alive") and float(n.get("Resources", {}).get("CPU", 0)) >= tc.cpus_per_worker
    ]
    if len(fits) < tc.num_workers:
        raise ConfigError(
            f"train.placement_strategy: STRICT_SPREAD puts each of the {tc.num_workers} workers on its "
            f"own node, but the Ray cluster has {len(fits)} node(s) with at least {tc.cpus_per_worker:g} "
            f"CPU; add nodes, lower train.num_workers or use PACK/SPREAD"
        )


def build_trainer(cfg: PipelineConfig, spec: LoopSpec, gpu: bool | None = None) -> Any:
    """The ``TorchTrainer`` for ``spec``: train pairs as a Ray Data dataset, split across workers.

    ``gpu``: one GPU per worker; None decides it here (:func:`use_gpu_for`, :func:`check_placement`).
    """
    import ray.data
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    tc = cfg.train
    if gpu is None:
        gpu = use_gpu_for(tc.use_gpu, tc.num_workers)
        check_placement(tc)
    resources: dict[str, float] = {"CPU": tc.cpus_per_worker}
    if gpu:
        resources["GPU"] = 1
    train_ds = ray.data.read_parquet(pairs_path(tc.features, "train"), columns=PAIR_COLUMNS)
    storage = tc.storage_path if "://" in tc.storage_path else str(Path(tc.storage_path).expanduser().resolve())
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=spec.to_dict(),
        scaling_config=ScalingConfig(
            num_workers=tc.num_workers,
            use_gpu=gpu,
            resources_per_worker=resources,
            placement_strategy=tc.placement_strategy,
        ),
        run_config=RunConfig(
            name=tc.name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=tc.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=tc.keep_checkpoints,
                checkpoint_score_attribute=SCORE_KEY,
                checkpoint_score_order="max",
            ),
        ),
        datasets={"train": train_ds},
    )


def _start_tracking(cfg: PipelineConfig, run_dir: str, tracking_uri: str) -> tuple[Tracker, bool]:
    """Resume this run directory's MLflow run or create one (params + config artifact)."""
    tc = cfg.train
    tracker = Tracker(tracking_uri, tc.mlflow_experiment, fallback_path_of(run_dir, tc.name))
    previous = existing_run_id(run_dir)
    run_id = tracker.start(run_id=previous, run_name=tc.name, tags={"itemsage.run_dir": run_dir})
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "config.yaml"
        from itemsage.config import dump_config

        dump_config(cfg, path)
        if previous is None:
            tracker.log_params(flatten(cfg))
            tracker.log_artifact(path)
        else:
            # Params are immutable in MLflow; a resumed run records its (possibly changed) config
            # as a new artifact instead.
            resumed = Path(d) / f"config-resumed-{time.strftime('%Y%m%dT%H%M%S')}.yaml"
            path.rename(resumed)
            tracker.log_artifact(resumed, "config")
    if run_id and run_id != previous:
        write_side_file(run_dir, RUN_FILE, {"run_id": run_id})
    return tracker, previous is not None


@dataclass
class _Ckpt:
    """A registered checkpoint: the Ray ``Checkpoint``, its printable location and its meta.json."""

    checkpoint: Any
    location: str
    meta: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.meta.get("step", -1))

    @property
    def score(self) -> float:
        return float(self.meta.get("metrics", {}).get("val/recall_at_10", -1.0))


def _ckpt(checkpoint: Any, run_dir: str) -> _Ckpt:
    fs, path = checkpoint.filesystem, checkpoint.path
    with fs.open_input_stream(f"{path}/{META_FILE}") as f:
        meta = json.loads(f.read())
    location = path if "://" not in run_dir else f"{run_dir.split('://', 1)[0]}://{path}"
    return _Ckpt(checkpoint, location, meta)


def _result_checkpoints(result: Any, run_dir: str) -> tuple[_Ckpt | None, _Ckpt | None]:
    """(latest, best) among the checkpoints Ray Train registered: best = highest validation
    Recall@10, the later step winning ties. Only registered checkpoints count: a directory written
    by a worker that died before the controller recorded it is not part of the run."""
    latest = _ckpt(result.checkpoint, run_dir) if result.checkpoint is not None else None
    kept = [_ckpt(c, run_dir) for c, _ in (result.best_checkpoints or [])]
    if latest is not None:
        kept.append(latest)
    best = max(kept, key=lambda c: (c.score, c.step)) if kept else None
    return latest, best


def _local_dir(checkpoint: Any, stack: list[Any]) -> str:
    """A local directory with the checkpoint's files (the checkpoint itself when storage is local)."""
    ctx = checkpoint.as_directory()
    stack.append(ctx)
    return ctx.__enter__()


def start_local_ray(num_cpus: float | None = None, **kwargs: Any) -> None:
    """Start a local Ray for a process that trains, with its dashboard on loopback only (token
    auth is on): Ray Train's placement group cleaner asks the State API, which the dashboard
    serves, whether its controller lives. Without it the cleaner logs a warning a second and
    cannot free a dead controller's placement group."""
    import ray

    # Ray annotates num_cpus as int but takes a whole-number float (and rejects others itself).
    ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", **kwargs)  # type: ignore[arg-type]


def run_training(
    cfg: PipelineConfig,
    tracking_uri: str | None = None,
    tracking: bool = True,
    register: bool | None = None,
) -> TrainResult:
    """Train (or resume) ``cfg.train.name`` under ``cfg.train.storage_path``; see the module doc.

    Connects to Ray with ``ray.init()`` if no cluster is connected yet. Raises ``ConfigError`` /
    ``TrainInputError`` before anything starts, :class:`NonFiniteLossError` when the loss diverged,
    and Ray Train's ``TrainingFailedError`` when workers failed more than ``train.max_failures``
    times.
    """
    import ray

    check_config(cfg)
    cfg = with_absolute_paths(cfg)
    manifest, counts = check_inputs(cfg)
    tc = cfg.train
    from itemsage.trained.bundle import BundleFiles

    vocab_size = BundleFiles(cfg, manifest).vocab.size
    run_dir = run_dir_of(cfg)
    if not ray.is_initialized():
        ray.init()
    # Decided on the connected cluster before an MLflow run exists: a refusal here (too few GPUs
    # or nodes) must not leave a run behind that never ends.
    gpu = use_gpu_for(tc.use_gpu, tc.num_workers)
    check_placement(tc)
    uri = resolve_tracking_uri(tracking_uri) if tracking else None
    tracker, resumed = _start_tracking(cfg, run_dir, uri) if uri else (Tracker("", "", "", enabled=False), False)
    tasks = sorted(t for t in counts if not tc.surfaces or t.split("/")[0] in tc.surfaces)
    spec = LoopSpec(
        config=to_dict(cfg),
        run_dir=run_dir,
        tasks=tasks,
        vocab_size=vocab_size,
        features_manifest=manifest,
        tracking_uri=uri,
        fallback_path=fallback_path_of(run_dir, tc.name),
        mlflow_run_id=tracker.run_id,
        tracking_offline=bool(uri) and not tracker.online,
    )
    print(
        f"[itemsage] {'resuming' if resumed else 'starting'} {run_dir} "
        f"(MLflow run {tracker.run_id or 'offline'}); tasks: {counts}",
        flush=True,
    )
    # A status left by an earlier invocation must not be mistaken for this one's.
    write_side_file(run_dir, STATUS_FILE, {"state": "running"})
    trainer = build_trainer(cfg, spec, gpu)
    # fit() installs a Ctrl-C handler that aborts its controller and leaves it installed; a
    # caller that goes on (make demo's serve stage) must get its own Ctrl-C behaviour back.
    caller_sigint = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    try:
        result = trainer.fit()
    except Exception:
        tracker.set_tags({"itemsage.stop_reason": "training failed"})
        tracker.end("FAILED")
        raise
    finally:
        if caller_sigint is not None:
            signal.signal(signal.SIGINT, caller_sigint)
    if result.error is not None:  # fit() normally raises; be explicit if a version returns it
        tracker.end("FAILED")
        raise result.error

    status = read_side_file(run_dir, STATUS_FILE) or {}
    latest, best = _result_checkpoints(result, run_dir)
    if status.get("state") == "nan":
        tracker.set_tags({"itemsage.stop_reason": f"non-finite loss at step {status['step']}"})
        tracker.end("FAILED")
        raise NonFiniteLossError(int(status["step"]), latest.location if latest else None)
    if latest is None or best is None:
        tracker.end("FAILED")
        raise RuntimeError(f"training finished without a checkpoint in {run_dir}")

    run_id = latest.meta.get("mlflow_run_id") or tracker.run_id
    stack: list[Any] = []
    try:
        bundle_dir = side_path(run_dir, "model") if "://" not in run_dir else tempfile.mkdtemp(prefix="itemsage-model-")
        write_bundle(_local_dir(best.checkpoint, stack), bundle_dir)
        if cfg.train.model.hubness_weight > 0:
            # The catalog's embeddings by the best checkpoint, stored with it (model.hubness_weight).
            attach_hubness_bank(bundle_dir, cfg.train.features)
        version = None
        do_register = tc.register_model if register is None else register
        if uri and run_id and do_register:
            version = _register_once(uri, run_id, bundle_dir, best.step, tracker, latest.checkpoint, stack)
    finally:
        for ctx in reversed(stack):
            ctx.__exit__(None, None, None)
    tracker.set_tags({"itemsage.best_step": best.step, "itemsage.best_checkpoint": best.location})
    tracker.end("FINISHED")
    return TrainResult(
        run_dir=run_dir,
        step=latest.step,
        best_checkpoint=best.location,
        latest_checkpoint=latest.location,
        metrics=dict(best.meta.get("metrics", {})),
        mlflow_run_id=run_id,
        model_version=version,
        model_uri=f"models:/{REGISTERED_MODEL}/{version}" if version else bundle_dir,
        bundle_dir=bundle_dir,
        steps_per_s=float(status.get("steps_per_s", 0.0)),
        tasks=counts,
    )


def _register_once(
    uri: str, run_id: str, bundle_dir: str, step: int, tracker: Tracker, latest: Any, stack: list[Any]
) -> str | None:
    """Register the bundle unless this run already registered this very step (a no-op re-run)."""
    try:
        from mlflow.tracking import MlflowClient

        tags = MlflowClient(tracking_uri=uri).get_run(run_id).data.tags
        if tags.get("itemsage.registered_step") == str(step) and tags.get("itemsage.registered_version"):
            return tags["itemsage.registered_version"]
        version = register_bundle(uri, run_id, bundle_dir)
        tracker.set_tags({"itemsage.registered_step": step})
        tracker.log_artifact(_local_dir(latest, stack), "checkpoint")
        return version
    except Exception as e:  # noqa: BLE001 - the trained model is safe on disk either way
        print(
            f"WARNING: could not register the model in MLflow at {uri} ({type(e).__name__}: {e}); "
            f"the bundle is at {bundle_dir}",
            file=sys.stderr,
            flush=True,
        )
        return None

"""``train_loop_per_worker``: one Ray Train worker's training loop (DDP over Ray Data shards).

Per step, on every worker: a quota-mixed batch of (query, engaged item) pairs from this worker's
shard; query embeddings by surface (search: the query's MiniLM embedding, closeup: the viewed item's
first image feature, or its item features through the item tower when it has no image, home: the
user feature); item embeddings for the positives and for
``num_random_negatives`` items drawn uniformly from the training catalog; the count-min sketch
updated with every rank's positives and ``log q`` from it; the sampled-softmax loss, backward
(DDP all-reduces gradients), clipping, optimizer and schedule steps.

Rank 0 alone talks to MLflow and runs validation. Every ``checkpoint_every`` steps (and at the last
step) all ranks call ``ray.train.report``; rank 0 attaches a checkpoint and the validation score
that ``CheckpointConfig`` ranks checkpoints by, the others only their step and loss.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from itemsage.config import SURFACES, PipelineConfig, TrainConfig, from_dict
from itemsage.data.features_io import resolve
from itemsage.data.features_read import QueryFeatures, item_kinds, read_pairs
from itemsage.eval.validation import baseline_recall, build_val_set, model_recall, recall_metrics
from itemsage.files import write_atomic
from itemsage.model import ItemFeatureStore, ItemSageModel, MultiTaskBatcher, build_model
from itemsage.model.text_prior import training_idf
from itemsage.train.data import MixedNegativeSampler, cached_cycle, heldout_items, sample_negatives
from itemsage.train.lamb import Lamb
from itemsage.train.schedule import build_scheduler
from itemsage.train.tracking import Tracker
from itemsage.trained.bundle import BundleFiles, text_encoder_from_state
from itemsage.trained.checkpoint import TrainState, load_checkpoint, save_checkpoint

if TYPE_CHECKING:  # transformers is imported only when fine-tuning is on
    from itemsage.data.text_encoder import TextEncoder

SCORE_KEY = "val_recall_at_10"  # no "/": Ray Train looks checkpoint scores up by plain key
SIDE_DIR = "itemsage"  # our files beside Ray Train's inside <storage_path>/<name>/
STATUS_FILE = "status.json"
RUN_FILE = "mlflow_run.json"


def config_from_dict(data: Mapping[str, Any]) -> PipelineConfig:
    """Rebuild (and re-check) the resolved config shipped to the workers as plain data."""
    return from_dict(PipelineConfig, dict(data))


@dataclass
class LoopSpec:
    """What the driver resolves once and ships to every worker (as a dict: ``train_loop_config``).

    Attributes:
        config: the resolved ``PipelineConfig`` as plain data (``itemsage.config.to_dict``).
        run_dir: ``<storage_path>/<name>``: Ray Train's run directory, ours under ``itemsage/``.
        tasks: the "surface/action" tasks to train on, from the train split and ``train.surfaces``.
        vocab_size: rows of the hash embedding's importance table.
        features_manifest: the features directory's manifest.json (dims, backbone).
        tracking_uri: resolved MLflow URI; None disables tracking (benchmarks).
        fallback_path: local JSONL that receives tracking calls while MLflow is unreachable.
        mlflow_run_id: the run the driver created or resumed (a checkpoint's run id wins).
        tracking_offline: the driver already found MLflow unreachable (and warned about it).
    """

    config: dict[str, Any]
    run_dir: str
    tasks: list[str]
    vocab_size: int
    features_manifest: dict[str, Any]
    tracking_uri: str | None = None
    fallback_path: str = ""
    mlflow_run_id: str | None = None
    tracking_offline: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------- side files


def side_path(run_dir: str, name: str) -> str:
    return f"{run_dir.rstrip('/')}/{SIDE_DIR}/{name}"


def write_side_file(run_dir: str, name: str, obj: Mapping[str, Any]) -> None:
    """Write ``<run_dir>/itemsage/<name>`` (JSON) on a local path or a storage URI, atomically: a
    resumed run reads it back."""
    write_atomic(side_path(run_dir, name), json.dumps(obj, indent=2) + "\n")


def read_side_file(run_dir: str, name: str) -> dict[str, Any] | None:
    import pyarrow.fs as pafs

    fs, path = resolve(side_path(run_dir, name))
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as f:
        return json.loads(f.read().decode())


# ---------------------------------------------------------------------------- building blocks


# Pretrained MiniLM layers being fine-tuned take 10x smaller steps than the freshly initialised
# towers: at the towers' learning rate they would quickly forget what makes them a good encoder.
TEXT_ENCODER_LR_SCALE = 0.1


def make_optimizer(module: nn.Module, tc: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or LAMB over the trainable parameters of ``module`` (a :class:`TrainModule`).

    No weight decay (and no LAMB trust ratio) on biases, norms, the temperature and other 0/1-d
    tensors, which decay would only pull towards meaningless zeros; fine-tuned text-encoder layers
    get their own group at ``TEXT_ENCODER_LR_SCALE`` x the learning rate.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    encoder: list[nn.Parameter] = []
    hashed: list[nn.Parameter] = []
    if tc.hash_lr_scale < 0:
        raise ValueError(f"train.hash_lr_scale must be >= 0, got {tc.hash_lr_scale}")
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith(("text_encoder.", "module.text_encoder.")):
            encoder.append(p)
        elif ".text_embedding." in name and tc.hash_lr_scale != 1.0:
            hashed.append(p)
        else:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups: list[dict[str, Any]] = [
        {"params": decay, "weight_decay": tc.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if encoder:
        groups.append({"params": encoder, "weight_decay": tc.weight_decay, "lr": tc.lr * TEXT_ENCODER_LR_SCALE})
    if hashed:
        # The hash table and per-token weights (train.hash_lr_scale): decay would pull an IDF start
        # towards 0, so the smaller step size alone keeps them near it.
        groups.append({"params": hashed, "weight_decay": 0.0, "lr": tc.lr * tc.hash_lr_scale})
    if tc.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=tc.lr)
    if tc.optimizer == "lamb":
        groups[1]["trust_ratio"] = False
        return Lamb(groups, lr=tc.lr)
    raise ValueError(f"train.optimizer: unknown optimizer {tc.optimizer!r} (expected adamw or lamb)")


class TrainModule(nn.Module):
    """What DDP wraps: the ``ItemSageModel`` plus, for SearchSage-style fine-tuning
    (``model.finetune_text_layers`` > 0), the MiniLM query encoder. The encoder must sit inside the
    wrapped module: DDP only all-reduces gradients of work done in the wrapped ``forward``.
    With the encoder frozen (the default) search queries use the precomputed ``text_emb`` and
    ``text_encoder`` is None.
    """

    def __init__(self, model: ItemSageModel, text_encoder: TextEncoder | None = None) -> None:
        super().__init__()
        self.model = model
        self.text_encoder = text_encoder

    def forward(
        self,
        queries: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
        items: Any,
        item_ids: torch.Tensor,
        item_logq: torch.Tensor | None = None,
        rand_items: Any = None,
        rand_ids: torch.Tensor | None = None,
        search_tokens: Mapping[str, torch.Tensor] | None = None,
        search_token_ids: torch.Tensor | None = None,
        rand_log_weight: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``search_tokens``: MiniLM tokenizer output (fine-tuning); ``search_token_ids``: the
        search rows' vocabulary ids for the pooled text path (``model.text_residual``);
        ``rand_log_weight``: the random negatives' draw correction (``loss.same_type_negatives``)."""
        if self.text_encoder is not None and search_tokens is not None and "search" in queries:
            rows, _ = queries["search"]
            feats = self.text_encoder(search_tokens["input_ids"], search_tokens["attention_mask"])
            queries = {**queries, "search": (rows, feats)}
        return self.model(queries, items, item_ids, item_logq, rand_items, rand_ids, search_token_ids, rand_log_weight)

    def text_encoder_state(self) -> dict[str, torch.Tensor]:
        """The fine-tuned encoder layers' tensors (the frozen rest ships with the pip package)."""
        return trainable_text_state(self.text_encoder) if self.text_encoder is not None else {}


def trainable_text_state(encoder: TextEncoder) -> dict[str, torch.Tensor]:
    """State of the layers a ``TextEncoder`` fine-tunes, keyed as in its ``state_dict``."""
    n = int(getattr(encoder, "trainable_layers", 0))
    layers = len(encoder.model.encoder.layer)
    prefixes = tuple(f"model.encoder.layer.{i}." for i in range(layers - n, layers))
    return {k: v for k, v in encoder.state_dict().items() if n and k.startswith(prefixes)}


def build_train_module(
    tc: TrainConfig,
    vocab_size: int,
    image_dim: int,
    num_text_fields: int,
    text_state: Mapping[str, torch.Tensor] | None = None,
    token_idf: torch.Tensor | None = None,
) -> TrainModule:
    """The model (and, when fine-tuning, the MiniLM encoder with ``text_state`` loaded);
    ``token_idf`` starts the hash embedding at IDF (``model.text_init = "idf"``, a new run)."""
    model = build_model(
        tc.model,
        tc.loss,
        vocab_size=vocab_size,
        image_dim=image_dim,
        num_text_fields=num_text_fields,
        token_idf=token_idf,
    )
    encoder = None
    layers = tc.model.finetune_text_layers
    if layers > 0:
        if text_state:  # resuming: rebuilt exactly as loading a trained model rebuilds it
            encoder = text_encoder_from_state(layers, text_state, "checkpoint")
        else:
            from itemsage.data.text_encoder import TextEncoder

            encoder = TextEncoder(trainable_layers=layers)
    return TrainModule(model, encoder)


def initial_token_idf(tc: TrainConfig, store: ItemFeatureStore, vocab_size: int) -> torch.Tensor | None:
    """IDF over the training items (the random-negative pool: held-out items never count) when a new
    run starts its hash embedding at IDF (``model.text_init = "idf"``), else None."""
    if tc.model.text_init != "idf":
        return None
    pool = negative_pool(store.num_items, heldout_items(tc.features))
    return training_idf(store, pool, vocab_size)


def negative_pool(num_items: int, heldout: np.ndarray) -> torch.Tensor:
    """Items random negatives are drawn from: the catalog minus the validation/test items."""
    keep = np.ones(num_items, dtype=bool)
    keep[heldout[heldout < num_items]] = False
    pool = np.flatnonzero(keep)
    return torch.from_numpy(pool if pool.size else np.arange(num_items))


def unwrap(module: nn.Module) -> TrainModule:
    """The :class:`TrainModule` inside a DDP wrapper (or the module itself)."""
    inner = getattr(module, "module", module)
    if not isinstance(inner, TrainModule):
        raise TypeError(f"expected a TrainModule (or DDP around one), got {type(inner).__name__}")
    return inner


def trained_surfaces(tasks: Sequence[str], tc: TrainConfig) -> tuple[str, ...]:
    """The surfaces this run trains: those with a "surface/action" task of positive quota."""
    active = {t.split("/", 1)[0] for t in tasks if tc.task_quotas.get(t, 1.0) > 0}
    return tuple(s for s in SURFACES if s in active)


def freeze_untrained_towers(module: TrainModule, surfaces: Sequence[str]) -> None:
    """Take the query towers of surfaces the run does not train out of the trainable set.

    No query of theirs ever reaches them, so they would get no gradient anyway (and the optimizer
    would skip them): frozen, they keep their initial weights exactly as before, and DDP does not
    have to look for them in every step's graph. The search (closeup) projection stays trainable
    while the item tower's title (image) skip shares it: every item's title (photo) goes through it.
    """
    towers = module.model.query_towers
    tied = [getattr(module.model.item_tower, name, None) for name in ("title_skip", "image_skip")]
    for surface in SURFACES:
        projection = towers.projection(surface)
        if surface not in surfaces and not any(projection is t for t in tied):
            projection.requires_grad_(False)


def may_leave_parameters_unused(module: TrainModule, surfaces: Sequence[str]) -> bool:
    """Whether a step can leave a trainable parameter without a gradient (DDP's
    ``find_unused_parameters``). Every trained surface's tower runs in every step (on zero rows
    when the batch has none of its queries, see ``QueryFeatures.groups``), so only the fine-tuned
    MiniLM layers can: a transformer cannot run on zero queries, so a batch without a search query
    skips them."""
    return module.text_encoder is not None and "search" in surfaces


@dataclass
class StepOutput:
    loss: float
    in_batch_loss: float
    random_loss: float
    temperature: float
    grad_norm: float
    finite: bool


class Stepper:
    """One optimisation step on a pair batch; shared by the Ray loop and the plain-PyTorch benchmark.

    Args:
        model: the (possibly DDP-wrapped) :class:`TrainModule`; its ``forward`` computes the loss.
        store: item features; ``qf``: frozen query features per surface.
        neg_pool: item indices random negatives are drawn from.
        generator: seeds the negative draws (per rank, so ranks see different negatives).
        surfaces: the trained surfaces (:func:`trained_surfaces`); each one's tower runs in every
            step, on zero rows when the batch lacks its queries, so that no step leaves it unused.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        store: ItemFeatureStore,
        qf: QueryFeatures,
        neg_pool: torch.Tensor,
        tc: TrainConfig,
        device: torch.device,
        generator: torch.Generator,
        surfaces: Sequence[str] = (),
    ) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        # loss.same_type_negatives draws that share of the random negatives from the product types
        # of the batch's positives (the catalog's, read once here).
        self.sampler: MixedNegativeSampler | None = None
        if tc.loss.same_type_negatives > 0:
            kinds = item_kinds(tc.features)
            self.sampler = MixedNegativeSampler(neg_pool, kinds, tc.loss.same_type_negatives)
        self.surfaces = tuple(surfaces)
        self.store, self.qf, self.neg_pool, self.tc = store, qf, neg_pool, tc
        self.device, self.generator = device, generator
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.text_encoder = unwrap(model).text_encoder

    def step(self, batch: Mapping[str, np.ndarray]) -> StepOutput:
        """Forward, backward, clip, update. A non-finite gradient (from a NaN/inf loss on any rank)
        skips the update and returns ``finite=False`` on every rank."""
        dev = self.device
        ids = torch.from_numpy(np.asarray(batch["item_idx"], dtype=np.int64))
        items = self.store.gather(ids).to(dev, non_blocking=True)
        queries = self.qf.groups(np.asarray(batch["surface"]), np.asarray(batch["query_key"]), dev, self.surfaces)
        rand_items = rand_ids = rand_log_weight = None
        if self.tc.loss.random_negatives:
            n = self.tc.loss.num_random_negatives
            if self.sampler is not None:
                rand_ids, log_weight = self.sampler.sample(n, ids, self.generator)
                rand_log_weight = log_weight.to(dev)
            else:
                rand_ids = sample_negatives(self.neg_pool, n, self.generator)
            rand_items = self.store.gather(rand_ids).to(dev, non_blocking=True)
            rand_ids = rand_ids.to(dev)
        search_token_ids = None
        if "search" in queries and unwrap(self.model).model.text_residual is not None:
            keys = np.asarray(batch["query_key"])[np.asarray(batch["surface"]) == "search"]
            search_token_ids = self.qf.tokens(keys).to(dev, non_blocking=True)
        search_tokens = None
        if self.text_encoder is not None and "search" in queries and queries["search"][0].numel():
            keys = np.asarray(batch["query_key"])[np.asarray(batch["surface"]) == "search"]
            tok = self.text_encoder.tokenize(self.qf.texts(keys))
            search_tokens = {k: v.to(dev, non_blocking=True) for k, v in tok.items()}
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda")
        with autocast:
            out = self.model(
                queries,
                items,
                ids.to(dev),
                None,
                rand_items,
                rand_ids,
                search_tokens,
                search_token_ids,
                rand_log_weight,
            )
        loss = out["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = self.tc.grad_clip if self.tc.grad_clip > 0 else math.inf
        norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        loss_value = float(loss.detach())
        # Decided on the gradient norm alone: DDP has all-reduced the gradients, so every rank
        # computes the very same norm and takes the same decision (a rank's own loss is local). A
        # NaN loss anywhere makes every rank's gradients NaN.
        finite = math.isfinite(norm)
        if finite:
            self.optimizer.step()
            self.scheduler.step()
        return StepOutput(
            loss=loss_value,
            in_batch_loss=float(out["in_batch_loss"].detach()),
            random_loss=float(out["random_loss"].detach()),
            temperature=float(out["temperature"]),
            grad_norm=norm,
            finite=finite,
        )


def pair_batches(first_pass: Any, tasks: list[str], tc: TrainConfig, seed: int) -> Iterator[dict[str, np.ndarray]]:
    """Quota-mixed batches forever: the shard streamed once (then cached), through the batcher."""
    active = [t for t in tasks if tc.task_quotas.get(t, 1.0) > 0]
    task_set = np.asarray(active)

    def usable(chunks: Any) -> Iterator[dict[str, np.ndarray]]:
        # Keep only rows the batcher will use, so the cache (and the shard-size check) count them.
        for chunk in chunks:
            keep = np.isin(np.asarray(chunk["task"]).astype(str), task_set)
            yield {k: np.asarray(v)[keep] for k, v in chunk.items()}

    batcher = MultiTaskBatcher(
        active, {t: q for t, q in tc.task_quotas.items() if t in active}, tc.batch_size, seed=seed
    )
    return batcher(cached_cycle(usable(first_pass), seed=seed, min_rows=tc.batch_size))


def step_seeds(seed: int, rank: int, step: int) -> tuple[int, int]:
    """(negative sampling, dropout) seeds of one step on one rank: a function of the step, so that
    a run resumed from a checkpoint continues the random streams an uninterrupted run would have."""
    negatives, dropout = np.random.SeedSequence([seed % 2**63, rank, step]).generate_state(2)
    return int(negatives), int(dropout)


def build_validation(tc: TrainConfig, store: ItemFeatureStore, catalog: str) -> Any:
    pairs = read_pairs(tc.features, "val", tc.surfaces)
    return build_val_set(pairs, store.num_items, catalog)


# ---------------------------------------------------------------------------- the loop


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point; ``loop_config`` is a :class:`LoopSpec` as a dict."""
    import ray.train
    import ray.train.torch

    spec = LoopSpec(**loop_config)
    cfg = config_from_dict(spec.config)
    tc = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    node_id = ray.get_runtime_context().get_node_id()
    # The pid file is how an operator (or the fault-tolerance test) finds a worker to kill; the node
    # id (also printed, so it reaches the job's log) shows where the placement strategy put it.
    write_side_file(
        spec.run_dir,
        f"workers/rank{rank}.json",
        {"pid": os.getpid(), "rank": rank, "node_id": node_id, "time": time.time()},
    )
    print(f"[itemsage] train worker rank {rank}/{world} on node {node_id} (pid {os.getpid()}, {device})", flush=True)

    torch.manual_seed(tc.seed)  # identical initial weights on every rank (DDP also broadcasts them)
    store = ItemFeatureStore.load(tc.features, max_images=tc.model.max_images)
    qf = QueryFeatures.load(
        tc.features, store, with_text=tc.model.finetune_text_layers > 0, with_tokens=tc.model.text_residual
    )

    state: TrainState | None = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = load_checkpoint(d)
    module = build_train_module(
        tc,
        spec.vocab_size,
        store.image_dim,
        store.num_text_fields,
        state.text_encoder if state else None,
        token_idf=None if state is not None else initial_token_idf(tc, store, spec.vocab_size),
    )
    if state is not None:
        module.model.load_state_dict(state.model)
    surfaces = trained_surfaces(spec.tasks, tc)
    freeze_untrained_towers(module, surfaces)
    # Buffers are synced once at start (identical anyway: same seed or same checkpoint) but not
    # before every forward: the sketch stays identical on every rank by construction (all-gathered
    # updates) and the hash bucket table never changes. Unused-parameter search only where a step
    # really can leave parameters unused (see may_leave_parameters_unused).
    ddp_model = ray.train.torch.prepare_model(
        module,
        parallel_strategy_kwargs={
            "forward_sync_buffers": False,
            "find_unused_parameters": may_leave_parameters_unused(module, surfaces),
        },
    )
    optimizer = make_optimizer(module, tc)
    scheduler = build_scheduler(optimizer, tc.warmup_steps, tc.max_steps, tc.lr_decay)
    start_step = 0
    run_id = spec.mlflow_run_id
    if state is not None:
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        start_step = state.step
        run_id = state.mlflow_run_id or run_id

    tracker = Tracker(
        spec.tracking_uri or "",
        tc.mlflow_experiment,
        spec.fallback_path or tempfile.gettempdir() + "/itemsage_mlflow_fallback.jsonl",
        enabled=rank == 0 and spec.tracking_uri is not None,
        # One warning per run, not one per process: the driver has already said MLflow is down.
        warn=not spec.tracking_offline,
    )
    if rank == 0:
        new_id = tracker.start(run_id=run_id, run_name=tc.name)
        if new_id and new_id != spec.mlflow_run_id:
            write_side_file(spec.run_dir, RUN_FILE, {"run_id": new_id})
        run_id = new_id or run_id

    val = build_validation(tc, store, tc.val_catalog) if rank == 0 and tc.validation else None
    baselines: dict[str, float] = {}
    if rank == 0 and val is not None:
        base = baseline_recall(store, qf, val, seed=tc.seed)
        baselines = {**recall_metrics(base, "frozen", "val_frozen"), **recall_metrics(base, "random", "val_random")}
        if start_step == 0:
            tracker.log_metrics(baselines, 0)
        else:
            print(f"[itemsage] resumed from checkpoint at step {start_step}", flush=True)
            tracker.log_metrics({"train/resumed_from_step": start_step}, start_step)

    # Every random stream depends on (seed, rank, step), never on where this process started: a
    # run resumed from the checkpoint at step S (worker restart or re-submitted driver) draws the
    # very batches, negatives and dropout masks an uninterrupted run draws after step S.
    generator = torch.Generator()
    stepper = Stepper(
        ddp_model,
        optimizer,
        scheduler,
        store,
        qf,
        negative_pool(store.num_items, heldout_items(tc.features)),
        tc,
        device,
        generator,
        surfaces,
    )
    shard = ray.train.get_dataset_shard("train")
    data_seed = tc.seed * 7919 + rank * 104_729
    first_pass = shard.iter_batches(
        batch_size=max(tc.batch_size, 1024),
        batch_format="numpy",
        local_shuffle_buffer_size=max(4 * tc.batch_size, 4096),
        local_shuffle_seed=data_seed,
    )
    batches = pair_batches(first_pass, spec.tasks, tc, data_seed)
    for _ in range(start_step):  # the batches steps 1..S used (index draws only: milliseconds)
        next(batches)

    bundle = BundleFiles(cfg, spec.features_manifest) if rank == 0 else None
    last_val: dict[str, float] = {}
    timed_steps, timed_seconds = 0, 0.0
    stop: dict[str, Any] = {"state": "finished", "step": start_step}
    for step in range(start_step + 1, tc.max_steps + 1):
        t0 = time.perf_counter()
        batch = next(batches)
        negatives_seed, dropout_seed = step_seeds(tc.seed, rank, step)
        generator.manual_seed(negatives_seed)
        torch.manual_seed(dropout_seed)
        out = stepper.step(batch)
        dt = time.perf_counter() - t0
        if not out.finite:
            stop = {"state": "nan", "step": step, "loss": out.loss, "grad_norm": out.grad_norm}
            if rank == 0:
                print(f"[itemsage] non-finite loss/gradient at step {step}; stopping", flush=True)
                tracker.log_metrics({"train/nonfinite_step": step}, step)
            break
        if step > start_step + 1:  # the first step pays for lazy initialisation everywhere
            timed_steps, timed_seconds = timed_steps + 1, timed_seconds + dt
        b = len(batch["item_idx"])
        tracker.log_metrics(
            {
                "train/loss": out.loss,
                "train/in_batch_loss": out.in_batch_loss,
                "train/random_loss": out.random_loss,
                "train/temperature": out.temperature,
                "train/grad_norm": out.grad_norm,
                "train/lr": float(scheduler.get_last_lr()[0]),
                "train/pairs_per_s": world * b / dt,
                "train/items_per_s": world * (b + tc.loss.num_random_negatives * tc.loss.random_negatives) / dt,
            },
            step,
        )
        is_ckpt = step % tc.checkpoint_every == 0 or step == tc.max_steps
        is_eval = is_ckpt or (tc.eval_every > 0 and step % tc.eval_every == 0)
        if is_eval and rank == 0 and val is not None:
            table = model_recall(module.model, store, qf, val, device, text_encoder=module.text_encoder)
            last_val = recall_metrics(table, "itemsage", "val")
            tracker.log_metrics(last_val, step)
            tracker.flush()
        if is_ckpt and bundle is None:
            # Every rank must call report (it is a barrier), but only rank 0's metrics go with the
            # checkpoint, and only rank 0 validates: the others report their own step and loss,
            # not a validation score they never computed (Ray logs each rank's report).
            ray.train.report({"step": step, "loss": out.loss}, checkpoint=None)
        elif is_ckpt and bundle is not None:
            steps_per_s = timed_steps / timed_seconds if timed_seconds > 0 else 0.0
            metrics = {
                "step": step,
                "loss": out.loss,
                SCORE_KEY: last_val.get("val/recall_at_10", 0.0),
                "train_steps_per_s": steps_per_s,
                "mlflow_run_id": tracker.run_id or run_id or "",
            }
            with tempfile.TemporaryDirectory() as d:
                save_checkpoint(
                    d,
                    TrainState(
                        step=step,
                        model=module.model.state_dict(),
                        text_encoder=module.text_encoder_state(),
                        optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(),
                        mlflow_run_id=tracker.run_id or run_id,
                        metrics={**last_val, **baselines, "loss": out.loss},
                    ),
                )
                bundle.write(d, step, last_val)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        stop = {"state": "finished", "step": step}
    if rank == 0:
        tracker.flush()
        stop["steps_per_s"] = timed_steps / timed_seconds if timed_seconds > 0 else 0.0
        write_side_file(spec.run_dir, STATUS_FILE, stop)

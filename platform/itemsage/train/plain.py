"""The same training step without Ray: one process, no DDP, pairs read straight from Parquet.

It exists for two reasons: the benchmark compares Ray Train's steps/s against exactly this loop
(same model, data, batch and step code), and tests get a trained model in seconds without starting a
cluster. It is not a second training entry point: checkpoints, tracking and fault tolerance live in
the Ray loop only.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from itemsage.config import PipelineConfig
from itemsage.data.features_read import QueryFeatures, read_manifest, read_pairs
from itemsage.model import ItemFeatureStore, ItemSageModel
from itemsage.train.data import heldout_items, task_counts
from itemsage.train.loop import (
    StepOutput,
    Stepper,
    TrainModule,
    build_train_module,
    freeze_untrained_towers,
    initial_token_idf,
    make_optimizer,
    negative_pool,
    pair_batches,
    trained_surfaces,
)
from itemsage.train.schedule import build_scheduler
from itemsage.trained.bundle import BundleFiles


@dataclass
class PlainRun:
    """Everything one process needs to train: model, optimizer, data, and the shared :class:`Stepper`."""

    cfg: PipelineConfig
    module: TrainModule
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    store: ItemFeatureStore
    qf: QueryFeatures
    stepper: Stepper
    batches: Iterator[dict[str, np.ndarray]]
    bundle: BundleFiles
    step: int = 0

    @property
    def model(self) -> ItemSageModel:
        return self.module.model


def _chunks(pairs: dict[str, np.ndarray], rows: int) -> Iterator[dict[str, Any]]:
    n = len(pairs["task"])
    for start in range(0, n, rows):
        yield {k: v[start : start + rows] for k, v in pairs.items()}


def setup_plain(cfg: PipelineConfig, device: str | torch.device = "cpu") -> PlainRun:
    """Build the model, optimizer, schedule and batch stream the Ray loop would build on rank 0."""
    tc = cfg.train
    dev = torch.device(device)
    manifest = read_manifest(tc.features)
    bundle = BundleFiles(cfg, manifest)
    torch.manual_seed(tc.seed)
    store = ItemFeatureStore.load(tc.features, max_images=tc.model.max_images)
    qf = QueryFeatures.load(
        tc.features, store, with_text=tc.model.finetune_text_layers > 0, with_tokens=tc.model.text_residual
    )
    idf = initial_token_idf(tc, store, bundle.vocab.size)
    module = build_train_module(tc, bundle.vocab.size, store.image_dim, store.num_text_fields, token_idf=idf).to(dev)
    pairs = read_pairs(tc.features, "train", tc.surfaces)
    tasks = sorted(task_counts(pairs))
    surfaces = trained_surfaces(tasks, tc)
    freeze_untrained_towers(module, surfaces)
    optimizer = make_optimizer(module, tc)
    scheduler = build_scheduler(optimizer, tc.warmup_steps, tc.max_steps, tc.lr_decay)
    rng = np.random.default_rng(tc.seed)
    order = rng.permutation(len(pairs["task"]))
    pairs = {k: v[order] for k, v in pairs.items()}
    batches = pair_batches(_chunks(pairs, max(tc.batch_size, 1024)), tasks, tc, tc.seed)
    generator = torch.Generator().manual_seed(tc.seed)
    stepper = Stepper(
        module,
        optimizer,
        scheduler,
        store,
        qf,
        negative_pool(store.num_items, heldout_items(tc.features)),
        tc,
        dev,
        generator,
        surfaces,
    )
    return PlainRun(cfg, module, optimizer, scheduler, store, qf, stepper, batches, bundle)


def run_steps(run: PlainRun, steps: int) -> tuple[list[StepOutput], float]:
    """Train ``steps`` steps; returns the outputs and the seconds spent in steps after the first
    (which pays for lazy initialisation), measured the same way as the Ray loop measures them."""
    outs: list[StepOutput] = []
    seconds = 0.0
    for i in range(steps):
        t0 = time.perf_counter()
        out = run.stepper.step(next(run.batches))
        dt = time.perf_counter() - t0
        if i > 0:
            seconds += dt
        outs.append(out)
        run.step += 1
        if not out.finite:
            break
    return outs, seconds

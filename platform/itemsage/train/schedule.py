"""Learning-rate schedule: linear warm-up, then cosine or linear decay to a floor.

Warm-up matters more than usual here: the loss's temperature is learned and the first steps see a
nearly empty count-min sketch (so logQ corrections are noisy); full-size updates on that signal
destabilise the transformer's attention. Decay keeps late steps from undoing what the early ones
learned.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from itemsage.config import LR_DECAYS as DECAY_KINDS  # the choices of train.lr_decay


def lr_factor(step: int, warmup_steps: int, total_steps: int, kind: str = "cosine", min_factor: float = 0.0) -> float:
    """Multiplier of the base learning rate for optimizer step ``step`` (0-based).

    Warm-up ramps linearly from ``1 / (warmup_steps + 1)`` to 1 over ``warmup_steps`` steps (never 0,
    so the first step already learns something); decay then runs from 1 down to ``min_factor`` at
    ``total_steps``.
    """
    if kind not in DECAY_KINDS:
        raise ValueError(f"unknown lr decay {kind!r}; expected one of {', '.join(DECAY_KINDS)}")
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if kind == "constant":
        return 1.0
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    if kind == "cosine":
        decayed = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        decayed = 1.0 - progress
    return min_factor + (1.0 - min_factor) * decayed


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    kind: str = "cosine",
    min_factor: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` over :func:`lr_factor`; its ``state_dict`` is checkpointable with weights_only."""
    lr_factor(0, warmup_steps, total_steps, kind, min_factor)  # validate ``kind`` now, not at step 0

    fn: Callable[[int], float] = lambda s: lr_factor(s, warmup_steps, total_steps, kind, min_factor)  # noqa: E731
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)

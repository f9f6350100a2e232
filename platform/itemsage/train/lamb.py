"""LAMB (You et al., 2019, "Large Batch Optimization for Deep Learning"), the paper's optimizer.

ItemSage trains with very large batches because in-batch negatives get better with batch size. Adam's
per-parameter step then becomes too large for some layers and too small for others; LAMB rescales
each tensor's Adam update by the *trust ratio* ``||w|| / ||update||`` so every layer moves by a
similar relative amount, which keeps large-batch training stable without per-layer lr tuning.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch


class Lamb(torch.optim.Optimizer):
    """LAMB with decoupled weight decay and bias-corrected Adam moments.

    Per tensor ``w`` with gradient ``g``::

        m = b1*m + (1-b1)*g ;  v = b2*v + (1-b2)*g^2
        u = (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps) + weight_decay * w
        w -= lr * ||w|| / ||u|| * u      (trust ratio; 1 when either norm is 0)

    A param group with ``trust_ratio=False`` skips the rescaling (plain AdamW-style step); biases,
    norms and the temperature use that, as in the LAMB paper's BERT setup, because their norms say
    nothing about a sensible step size.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        trust_ratio: bool = True,
    ) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"lr, eps and weight_decay must be >= 0 (got {lr}, {eps}, {weight_decay})")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, trust_ratio=trust_ratio)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Lamb does not support sparse gradients")
                grad = p.grad.float()
                state = self.state[p]
                if not state:
                    # A tensor step counter keeps the state dict loadable with weights_only=True.
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                t = float(state["step"])
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                update = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt_().add_(group["eps"]))
                weight = p.float()
                if group["weight_decay"]:
                    update.add_(weight, alpha=group["weight_decay"])
                ratio = 1.0
                if group["trust_ratio"]:
                    w_norm = float(weight.norm())
                    u_norm = float(update.norm())
                    if w_norm > 0 and u_norm > 0:
                        ratio = w_norm / u_norm
                p.add_(update.to(p.dtype), alpha=-group["lr"] * ratio)
        return loss

"""SampledSoftmaxLoss: exact values against a brute-force loop reference on tiny tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from itemsage.config import LossConfig
from itemsage.model.loss import LogitContext, LogQCorrection, SameItemMask, SampledSoftmaxLoss

BASE = LossConfig(temperature_init=0.5, temperature_min=0.01)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _reference(q, p, ids, logq, r, rids, scale, in_batch, random, use_logq) -> tuple[float, float]:
    """Per-row Python loops over candidates: the definition, with no vectorised tricks."""
    q, p = _unit(q), _unit(p)
    b = len(q)
    ib = rd = 0.0
    if in_batch:
        for i in range(b):
            cands = []
            for j in range(b):
                if j != i and ids[j] == ids[i]:
                    continue  # the row's own item under another row: not a negative
                logit = scale * float(q[i] @ p[j]) - (logq[j] if use_logq else 0.0)
                cands.append((j == i, logit))
            pos = next(logit for is_pos, logit in cands if is_pos)
            ib += -pos + math.log(sum(math.exp(logit) for _, logit in cands))
        ib /= b
    if random:
        r = _unit(r)
        for i in range(b):
            logits = [scale * float(q[i] @ p[i])]
            logits += [scale * float(q[i] @ r[k]) for k in range(len(r)) if rids[k] != ids[i]]
            rd += -logits[0] + math.log(sum(math.exp(logit) for logit in logits))
        rd /= b
    return ib, rd


def _inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(5, 3))
    p = rng.normal(size=(5, 3))
    ids = np.array([7, 3, 7, 5, 7])  # item 7 is the positive of three rows
    logq = np.log(np.array([0.3, 0.1, 0.3, 0.05, 0.3]))
    r = rng.normal(size=(4, 3))
    rids = np.array([3, 9, 5, 5])  # random draws that collide with rows' positives
    return q, p, ids, logq, r, rids


@pytest.mark.parametrize("in_batch,random", [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("use_logq", [False, True])
def test_matches_brute_force_reference(in_batch: bool, random: bool, use_logq: bool) -> None:
    q, p, ids, logq, r, rids = _inputs()
    cfg = BASE.replace(in_batch_negatives=in_batch, random_negatives=random, logq_correction=use_logq)
    loss = SampledSoftmaxLoss(cfg)
    t = lambda a, dt=torch.float64: torch.tensor(a, dtype=dt)  # noqa: E731
    out = loss.double()(
        t(q), t(p), t(ids, torch.long), t(logq) if use_logq else None, t(r), t(rids, torch.long)
    )
    scale = loss.scale.item()  # 1 / 0.5, up to the float32 rounding of the stored log-temperature
    assert scale == pytest.approx(2.0, rel=1e-6)
    ib, rd = _reference(q, p, ids, logq, r, rids, scale, in_batch, random, use_logq)
    assert out["in_batch_loss"].item() == pytest.approx(ib, abs=1e-12)
    assert out["random_loss"].item() == pytest.approx(rd, abs=1e-12)
    assert out["loss"].item() == pytest.approx(ib + rd, abs=1e-12)
    assert out["temperature"].item() == pytest.approx(0.5)


def test_hand_computed_two_by_two() -> None:
    cfg = BASE.replace(temperature_init=1.0, random_negatives=False, logq_correction=True)
    eye = torch.eye(2, dtype=torch.float64)
    logq = torch.log(torch.tensor([0.5, 0.25], dtype=torch.float64))
    out = SampledSoftmaxLoss(cfg).double()(eye, eye, torch.tensor([0, 1]), logq)
    # row 0 logits: [1 - ln .5, 0 - ln .25]; row 1: [0 - ln .5, 1 - ln .25]
    l0 = [1 + math.log(2), math.log(4)]
    l1 = [math.log(2), 1 + math.log(4)]
    want = 0.5 * ((-l0[0] + math.log(sum(map(math.exp, l0)))) + (-l1[1] + math.log(sum(map(math.exp, l1)))))
    assert out["loss"].item() == pytest.approx(want, abs=1e-12)
    without = SampledSoftmaxLoss(cfg.replace(logq_correction=False)).double()
    assert without(eye, eye, torch.tensor([0, 1]))["loss"].item() == pytest.approx(math.log(1 + math.exp(-1)))


def test_logit_processors_compose() -> None:
    logits = torch.zeros(2, 3)
    ctx = LogitContext(torch.tensor([4, 6]), torch.tensor([4, 6, 4]), torch.tensor([0.0, 1.0, 2.0]), torch.tensor([0, 1]))
    out = SameItemMask()(LogQCorrection()(logits, ctx), ctx)
    assert out.tolist() == [[0.0, -1.0, float("-inf")], [0.0, -1.0, -2.0]]


def test_temperature_is_learned_and_clamped() -> None:
    q, p, ids, _, r, rids = _inputs()
    cfg = BASE.replace(logq_correction=False)
    loss = SampledSoftmaxLoss(cfg)
    out = loss(torch.tensor(q).float(), torch.tensor(p).float(), torch.tensor(ids), None, torch.tensor(r).float(),
               torch.tensor(rids))
    out["loss"].backward()
    assert loss.log_temperature.grad is not None and loss.log_temperature.grad.abs() > 0
    with torch.no_grad():
        loss.log_temperature.fill_(math.log(1e-4))  # below the floor
    assert loss.scale.item() == pytest.approx(100.0)
    assert loss(torch.tensor(q).float(), torch.tensor(p).float(), torch.tensor(ids), None, torch.tensor(r).float(),
                torch.tensor(rids))["temperature"].item() == pytest.approx(0.01)
    fixed = SampledSoftmaxLoss(cfg.replace(learn_temperature=False))
    assert not fixed.log_temperature.requires_grad


def test_gradients_are_finite_with_masked_columns() -> None:
    q, p, ids, logq, r, rids = _inputs()
    qt = torch.tensor(q, requires_grad=True)
    pt = torch.tensor(p, requires_grad=True)
    out = SampledSoftmaxLoss(BASE).double()(qt, pt, torch.tensor(ids), torch.tensor(logq), torch.tensor(r),
                                            torch.tensor(rids))
    out["loss"].backward()
    assert torch.isfinite(qt.grad).all() and torch.isfinite(pt.grad).all()


def test_configuration_errors() -> None:
    with pytest.raises(ValueError, match="at least one"):
        SampledSoftmaxLoss(BASE.replace(in_batch_negatives=False, random_negatives=False))
    x, ids = torch.randn(3, 4), torch.arange(3)
    with pytest.raises(ValueError, match="logQ"):
        SampledSoftmaxLoss(BASE.replace(random_negatives=False))(x, x, ids, None)
    with pytest.raises(ValueError, match="rand_items"):
        SampledSoftmaxLoss(BASE.replace(in_batch_negatives=False))(x, x, ids, None)


def test_bf16_inputs_under_autocast_are_scored_in_float32() -> None:
    q, p, ids, logq, r, rids = _inputs()
    args = [torch.tensor(a, dtype=torch.bfloat16) for a in (q, p)]
    loss = SampledSoftmaxLoss(BASE)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = loss(*args, torch.tensor(ids), torch.tensor(logq, dtype=torch.float32),
                   torch.tensor(r, dtype=torch.bfloat16), torch.tensor(rids))
    ref = loss(*(a.float() for a in args), torch.tensor(ids), torch.tensor(logq, dtype=torch.float32),
               torch.tensor(r, dtype=torch.bfloat16).float(), torch.tensor(rids))
    assert low["loss"].dtype == torch.float32
    assert low["loss"].item() == ref["loss"].item()

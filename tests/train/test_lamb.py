import math

import pytest
import torch

from itemsage.train.lamb import Lamb


def test_first_step_exact_values_with_trust_ratio_and_decay() -> None:
    w0 = torch.tensor([3.0, 4.0])  # ||w|| = 5
    p = torch.nn.Parameter(w0.clone())
    p.grad = torch.tensor([0.5, -2.0])
    opt = Lamb([p], lr=0.1, betas=(0.9, 0.999), eps=0.0, weight_decay=0.1)
    opt.step()
    # First step: bias-corrected m/sqrt(v) = sign(g); u = sign(g) + 0.1 * w.
    u = torch.tensor([1.0, -1.0]) + 0.1 * w0
    ratio = 5.0 / float(u.norm())
    assert torch.allclose(p.detach(), w0 - 0.1 * ratio * u, atol=1e-6)


def test_second_step_follows_the_adam_moments() -> None:
    p = torch.nn.Parameter(torch.tensor([1.0]))
    opt = Lamb([p], lr=0.01, betas=(0.5, 0.75), eps=0.0, weight_decay=0.0, trust_ratio=False)
    for g in (2.0, -1.0):
        p.grad = torch.tensor([g])
        opt.step()
    m = 0.5 * (0.5 * 2.0) + 0.5 * -1.0  # 0
    v = 0.75 * (0.25 * 4.0) + 0.25 * 1.0  # 1.0
    step2 = (m / (1 - 0.5**2)) / math.sqrt(v / (1 - 0.75**2))
    assert p.item() == pytest.approx(1.0 - 0.01 - 0.01 * step2)


def test_zero_weights_fall_back_to_ratio_one() -> None:
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([1.0, -1.0, 2.0])
    Lamb([p], lr=0.5, eps=0.0).step()
    assert torch.allclose(p.detach(), torch.tensor([-0.5, 0.5, -0.5]))


def test_trust_ratio_makes_the_step_relative_to_the_weight_norm() -> None:
    # The same gradient moves a 100x larger tensor 100x further: per-layer relative steps.
    small = torch.nn.Parameter(torch.full((4,), 0.01))
    big = torch.nn.Parameter(torch.full((4,), 1.0))
    for p in (small, big):
        p.grad = torch.tensor([1.0, -1.0, 1.0, -1.0])
    Lamb([small, big], lr=0.1, eps=0.0).step()
    d_small = (small.detach() - 0.01).norm()
    d_big = (big.detach() - 1.0).norm()
    assert float(d_big / d_small) == pytest.approx(100.0, rel=1e-5)


def test_state_dict_loads_with_weights_only(tmp_path) -> None:
    p = torch.nn.Parameter(torch.ones(2))
    opt = Lamb([p], lr=0.1)
    p.grad = torch.ones(2)
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "o.pt")
    opt2 = Lamb([torch.nn.Parameter(torch.ones(2))], lr=0.1)
    opt2.load_state_dict(torch.load(tmp_path / "o.pt", weights_only=True))
    assert float(opt2.state_dict()["state"][0]["step"]) == 1.0


def test_rejects_bad_hyperparameters() -> None:
    with pytest.raises(ValueError, match="betas"):
        Lamb([torch.nn.Parameter(torch.ones(1))], betas=(1.0, 0.9))

import math

import pytest
import torch

from itemsage.train.schedule import build_scheduler, lr_factor


def test_warmup_ramps_linearly_and_never_starts_at_zero() -> None:
    assert lr_factor(0, 4, 100) == pytest.approx(1 / 5)
    assert lr_factor(3, 4, 100) == pytest.approx(4 / 5)
    assert lr_factor(4, 4, 100) == pytest.approx(1.0)


def test_cosine_and_linear_decay_values() -> None:
    # Halfway through the decay span: cosine gives 0.5, linear gives 0.5, both reach the floor at the end.
    assert lr_factor(52, 2, 102, "cosine") == pytest.approx(0.5)
    assert lr_factor(27, 2, 102, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(52, 2, 102, "linear") == pytest.approx(0.5)
    assert lr_factor(102, 2, 102, "cosine", min_factor=0.1) == pytest.approx(0.1)
    assert lr_factor(500, 2, 102, "linear") == pytest.approx(0.0)
    assert lr_factor(50, 2, 102, "constant") == 1.0


def test_unknown_decay_is_rejected_up_front() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="unknown lr decay 'exp'"):
        build_scheduler(opt, 1, 10, "exp")


def test_scheduler_drives_the_optimizer_and_round_trips_with_weights_only(tmp_path) -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = build_scheduler(opt, 2, 10, "linear")
    assert opt.param_groups[0]["lr"] == pytest.approx(2.0 / 3)
    for _ in range(5):
        opt.step()
        sched.step()
    torch.save(sched.state_dict(), tmp_path / "s.pt")
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched2 = build_scheduler(opt2, 2, 10, "linear")
    sched2.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    opt2.load_state_dict(opt.state_dict())
    opt.step(), sched.step(), opt2.step(), sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    assert opt.param_groups[0]["lr"] == pytest.approx(2.0 * (1 - 4 / 8))

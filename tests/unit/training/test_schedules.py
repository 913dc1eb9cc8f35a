"""warmup_cosine: values worked out by hand, and the LambdaLR the trainers build on it."""

import math

import pytest
import torch

from genalign.training.schedules import warmup_cosine


def test_warmup_then_cosine_by_hand():
    kw = {"warmup": 4, "total": 12, "min_ratio": 0.2}
    assert warmup_cosine(0, **kw) == pytest.approx(0.25)  # (0 + 1) / 4: step 0 trains
    assert warmup_cosine(3, **kw) == pytest.approx(1.0)  # the peak on the last warmup step
    assert warmup_cosine(4, **kw) == pytest.approx(1.0)  # cos(0) = 1
    # (8 - 4) / (12 - 4) = 0.5 of the decay: 0.2 + 0.8 * 0.5 * (1 + cos(pi / 2)) = 0.6
    assert warmup_cosine(8, **kw) == pytest.approx(0.6)
    assert warmup_cosine(6, **kw) == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert warmup_cosine(12, **kw) == pytest.approx(0.2)
    assert warmup_cosine(50, **kw) == pytest.approx(0.2)  # held at min_ratio past the end


def test_no_warmup_starts_at_the_peak():
    assert warmup_cosine(0, warmup=0, total=10, min_ratio=0.0) == 1.0
    assert warmup_cosine(10, warmup=0, total=10, min_ratio=0.0) == pytest.approx(0.0)


def test_as_lambda_lr_sets_lr_times_the_multiplier_each_step():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.5)
    kw = {"warmup": 2, "total": 6, "min_ratio": 0.1}
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine(step, **kw))
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == [0.5 * warmup_cosine(s, **kw) for s in range(6)]


def test_warmup_sgdr_restarts_like_torch_cosine_annealing_warm_restarts():
    """After 2 warm-up steps, cycles of 4, 8, 16 steps (T_0 = 4, T_mult = 2): the
    multiplier is 1 at each restart (steps 2, 6, 14) and 0.5 halfway into a cycle with
    min_ratio 0; it matches torch's CosineAnnealingWarmRestarts step for step."""
    import torch

    from genalign.training.schedules import warmup_sgdr

    kw = dict(warmup=2, cycle=4, mult=2, min_ratio=0.0)
    assert warmup_sgdr(0, **kw) == pytest.approx(0.5)
    for restart in (2, 6, 14):
        assert warmup_sgdr(restart, **kw) == pytest.approx(1.0)
    assert warmup_sgdr(4, **kw) == pytest.approx(0.5)  # 2 of 4 steps into the first cycle
    assert warmup_sgdr(10, **kw) == pytest.approx(0.5)  # 4 of 8 into the second
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=4, T_mult=2)
    for t in range(30):
        assert warmup_sgdr(t + 2, **kw) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-9)
        opt.step()
        sched.step()

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

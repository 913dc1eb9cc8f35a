"""Learning-rate schedules as multipliers of the peak rate, for `torch.optim.lr_scheduler.LambdaLR`
or for setting a param group's "lr" by hand.

    scheduler = LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup=100, total=2000,
                                                               min_ratio=0.1))

Linear warmup then a half-cosine decay, as in transformers'
`get_cosine_schedule_with_warmup` (huggingface/transformers@v4.23.1
`src/transformers/optimization.py`), with two differences: the warmup reaches the peak on
its last step ((step + 1) / warmup, so step 0 already trains), and the decay ends at
`min_ratio` of the peak instead of 0.
"""

from __future__ import annotations

import math


def warmup_cosine(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """Learning-rate multiplier: linear 0 -> 1 over `warmup` steps, cosine 1 -> min_ratio after."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def warmup_sgdr(step: int, *, warmup: int, cycle: int, mult: int, min_ratio: float) -> float:
    """Learning-rate multiplier: linear warm-up over `warmup` steps, then cosine annealing
    with warm restarts (SGDR, Loshchilov & Hutter 2017, eq. 5): the first cycle lasts
    `cycle` steps, each next one `mult` times longer; within a cycle the rate falls from
    the peak to `min_ratio` of it, and jumps back to the peak at the restart.

    The same cycles as torch's `CosineAnnealingWarmRestarts(T_0=cycle, T_mult=mult)`,
    counted in steps after the warm-up, as a pure function of the step (nothing to save
    in a checkpoint)."""
    if cycle < 1 or mult < 1:
        raise ValueError(f"warmup_sgdr: expected cycle >= 1 and mult >= 1, got {cycle}, {mult}")
    if step < warmup:
        return (step + 1) / warmup
    t, length = step - warmup, cycle
    while t >= length:
        t -= length
        length *= mult
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t / length))

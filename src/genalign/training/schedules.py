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

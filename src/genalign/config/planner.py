"""Configuration of planner rollouts (`genalign.generators.planner.PlannerSampler`)."""

from __future__ import annotations

import dataclasses
import math

from genalign.config.base import Config, field


@dataclasses.dataclass(frozen=True)
class PlannerSamplingConfig(Config):
    """How many plans are sampled per question, and how."""

    # The planner-dpo issue: K = 8 rollouts per sample, temperature 0.9.
    k: int = field(8, help="Rollouts (sampled plans) per dataset row.")
    temperature: float = field(
        0.9,
        help="Softmax temperature of sampling; 0 decodes greedily (every rollout the same).",
    )
    # A plan is a short thinking part and a few one-line instructions; 256 tokens of a
    # Qwen tokenizer hold that with room to spare (longer outputs are cut, then fail to
    # parse, and count as malformed).
    max_new_tokens: int = field(
        256, help="Most tokens generated per rollout; a plan not closed by then is cut."
    )
    # Rollouts of one row share the prompt, so a batch of them needs no padding; 8 = k.
    batch_size: int = field(
        8, help="Rollouts of one row generated together in one batch (one forward per token)."
    )
    seed: int = field(
        0,
        help="Base seed; rollout j of row `id` uses a seed derived from (seed, id, j), so its "
        "text does not depend on the other rows or on batch_size.",
    )

    def __post_init__(self) -> None:
        for name in ("k", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {getattr(self, name)}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(
                f"temperature: expected a finite number >= 0, got {self.temperature!r}"
            )

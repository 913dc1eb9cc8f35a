"""Configuration of planner rollouts (`genalign.generators.planner.PlannerSampler`)."""

from __future__ import annotations

import dataclasses
import math

from genalign.config.base import Config, check_range, field


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


@dataclasses.dataclass(frozen=True)
class PlannerSFTConfig(Config):
    """Warm start of a planner: supervised fine-tuning on well-formed plans whose
    instructions are drawn at random from the executor's vocabulary
    (`genalign.trainers.planner_sft`). The planner learns the plan format, not which view
    helps: that is left for DPO to find."""

    examples_per_row: int = field(4, help="Random plans written per dataset row.")
    min_instructions: int = field(1, help="Fewest instructions in a warm-start plan.")
    max_instructions: int = field(2, help="Most instructions in a warm-start plan.")
    steps: int = field(300, help="Optimizer steps (full fine-tuning of every weight).")
    batch_size: int = field(16, help="Examples per step.")
    lr: float = field(2e-3, help="Peak AdamW learning rate (linear warmup, cosine decay).")
    warmup_steps: int = field(20, help="Steps of linear learning-rate warmup.")
    weight_decay: float = field(0.0, help="AdamW decoupled weight decay.")
    seed: int = field(0, help="Seed of the plans drawn, the data order and the model's init.")

    def __post_init__(self) -> None:
        for name in ("examples_per_row", "min_instructions", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {getattr(self, name)}")
        if self.max_instructions < self.min_instructions:
            raise ValueError(
                f"max_instructions ({self.max_instructions}) < min_instructions "
                f"({self.min_instructions})"
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr: expected a number > 0, got {self.lr!r}")
        check_range("warmup_steps", self.warmup_steps, ge=0)
        check_range("weight_decay", self.weight_decay, ge=0)

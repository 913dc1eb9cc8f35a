"""Config of the planner DPO trainer (`genalign.trainers.lm_dpo`): trl `DPOTrainer` on a
Qwen-VL model with a LoRA/DoRA adapter or full fine-tuning.

One frozen dataclass; every default names its source. This module imports no torch, so a
pipeline compiler can validate it; the trainer maps it onto trl's `DPOConfig`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from genalign.config.base import Config, field

# The loss types trl 1.16's DPOTrainer implements (trl/trainer/dpo_trainer.py,
# DPOTrainer._compute_loss; the same list is in DPOConfig.loss_type's help).
LOSS_TYPES = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)
ADAPTERS = ("lora", "dora", "full")
DEEPSPEED_CONFIGS = ("zero2", "zero3_offload")
# The three parts of a Qwen-VL model that have their own learning rate and freeze switch.
PARTS = ("llm", "vision", "merger")
ALL_LINEAR = "all-linear"


@dataclasses.dataclass(frozen=True)
class LMDPOConfig(Config):
    """DPO of a Qwen-VL planner with trl, on an adapter or on the full model."""

    # --- loss -------------------------------------------------------------------------
    # Rafailov et al. 2023 (DPO): the sigmoid loss with beta 0.1, trl's defaults and the
    # planner-dpo issue's.
    loss_type: str = field("sigmoid", help=f"trl DPO loss type, one of {list(LOSS_TYPES)}.")
    beta: float = field(
        0.1, help="DPO temperature beta (for ipo: the regulariser tau), as in trl's DPOConfig."
    )
    # trl's default 0; the robust loss needs [0, 0.5) (Chowdhury et al. 2024 suggest 0.1),
    # exo_pair needs > 0 (EXO suggests 1e-3).
    label_smoothing: float = field(
        0.0, help="Label smoothing of the robust and exo_pair losses (trl's label_smoothing)."
    )

    # Iterative RPO (Pang et al. 2024, "Iterative Reasoning Preference Optimization"): DPO
    # plus the NLL of the chosen answer (weight 1 there) keeps the chosen outputs' likelihood
    # from falling with the rejected ones', which on-policy iterations otherwise amplify.
    sft_weight: float = field(
        0.0,
        help="Weight of the negative log-likelihood of the chosen completion added to the DPO "
        "loss (trl's loss_type [<loss_type>, 'sft'] with loss_weights [1, sft_weight]); 0 = "
        "plain DPO, 1 = iterative RPO.",
    )

    # --- what is trained ----------------------------------------------------------------
    adapter: Literal["lora", "dora", "full"] = field(
        "lora",
        help="lora: a fresh peft LoRA from the base model; dora: the same with use_dora "
        "(weight-decomposed LoRA); full: fine-tune the model's weights.",
    )
    # The planner-dpo issue: LoRA rank 64, alpha 16.
    rank: int = field(64, help="LoRA rank r (lora, dora).")
    alpha: float = field(16.0, help="LoRA alpha; the update is scaled by alpha / rank.")
    # 0: trl disables every dropout layer by default so that the policy and the reference
    # see the same network; a value > 0 keeps the LoRA dropout (and the model's own dropout
    # layers, 0 in Qwen-VL configs) active during training.
    dropout: float = field(0.0, help="Dropout on the LoRA branch input (lora, dora).")
    # Every linear layer of the trained parts, as Qwen-VL-Series-Finetune's LoRA scripts
    # (all LLM linears) and peft's "all-linear".
    target_modules: tuple[str, ...] = field(
        (ALL_LINEAR,),
        help="Linear modules that get an adapter, by name or name suffix (q_proj, "
        "mlp.down_proj); 'all-linear' = every nn.Linear of the parts not frozen, lm_head "
        "excepted. Only modules inside parts that are not frozen are adapted.",
    )
    # Qwen-VL-Series-Finetune's DPO script: learning_rate 1e-5, merger_lr 1e-5, vision_lr
    # 2e-6 ("the vision model's learning rate should be 5-10x smaller than the LLM's").
    lr_llm: float = field(1e-5, help="Learning rate of the language model's trained parameters.")
    lr_vision: float = field(2e-6, help="Learning rate of the vision tower's trained parameters.")
    lr_merger: float = field(
        1e-5, help="Learning rate of the merger (vision-to-LLM projector) trained parameters."
    )
    # The planner writes text; its vision features are left as they are unless asked for
    # (Qwen-VL-Series-Finetune's LoRA recipe also trains the LLM only by default).
    freeze_llm: bool = field(False, help="Leave the language model unchanged.")
    freeze_vision: bool = field(True, help="Leave the vision tower unchanged.")
    freeze_merger: bool = field(True, help="Leave the merger (projector) unchanged.")
    # trl DPOConfig's default weight_decay (TrainingArguments: 0).
    weight_decay: float = field(
        0.0, help="AdamW decoupled weight decay (biases and norms excluded, as in transformers)."
    )
    # TrainingArguments' default max_grad_norm.
    max_grad_norm: float = field(1.0, help="Clip the global gradient L2 norm to this (0 = off).")
    # TrainingArguments' default schedule.
    lr_scheduler: Literal["linear", "cosine", "constant"] = field(
        "linear", help="Learning-rate schedule over the run (transformers' lr_scheduler_type)."
    )

    # --- data ---------------------------------------------------------------------------
    # The issue: pairs under the minimum gap are kept as weak signal and "optionally
    # down-weighted"; 1.0 trains on them like any other pair.
    weak_pair_weight: float = field(
        1.0,
        help="Share of the pairs flagged weak that are trained on, in [0, 1]: a seeded subset "
        "of round(weight * n_weak) weak pairs is kept (trl has no per-pair loss weight), so "
        "the weak pairs' total weight in an epoch is scaled by about this factor. 1 keeps all, "
        "0 drops all.",
    )
    # None: a planner prompt with several images can be long, and cutting it drops image
    # tokens (trl then fails) or cuts the plan being scored.
    max_length: int | None = field(
        None, help="Truncate prompt + completion to this many tokens; null = no truncation."
    )

    # --- schedule -----------------------------------------------------------------------
    epochs: float = field(1.0, help="Passes over the pairs; ignored when max_steps is set.")
    max_steps: int | None = field(None, help="Optimizer steps to run; overrides epochs when set.")
    per_device_batch_size: int = field(1, help="Pairs per forward pass on each process.")
    # Global batch = per_device_batch_size * grad_accum * processes.
    grad_accum: int = field(4, help="Micro-batches accumulated per optimizer step.")

    # --- machinery ----------------------------------------------------------------------
    # trl's DPOConfig defaults to gradient checkpointing.
    gradient_checkpointing: bool = field(
        True, help="Recompute activations in the backward pass (less memory, ~30% slower)."
    )
    # trl defaults to bf16; on CPU it changes the trained adapter's outputs by ~4e-3 and is
    # slow, hence "auto".
    bf16: bool | Literal["auto"] = field(
        "auto",
        help="bf16 mixed precision: auto = on when CUDA is available, off on CPU; true "
        "requires CUDA.",
    )
    deepspeed: Literal["zero2", "zero3_offload"] | None = field(
        None,
        help="DeepSpeed ZeRO config from configs/deepspeed/ (zero2, or zero3_offload: "
        "parameters and optimizer state offloaded to CPU). Used only when CUDA GPUs are "
        "present; on a CPU-only machine it is ignored with a log line, so one preset runs "
        "both places.",
    )
    seed: int = field(0, help="Seed of the adapter init, the data order and the weak-pair subset.")
    logging_steps: int = field(1, help="Optimizer steps between logged metrics.")

    def __post_init__(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(
                f"loss_type: {self.loss_type!r} is not a trl DPO loss; valid: {list(LOSS_TYPES)}"
            )
        positive = {
            "beta": self.beta,
            "rank": self.rank,
            "alpha": self.alpha,
            "lr_llm": self.lr_llm,
            "lr_vision": self.lr_vision,
            "lr_merger": self.lr_merger,
            "epochs": self.epochs,
            "per_device_batch_size": self.per_device_batch_size,
            "grad_accum": self.grad_accum,
            "logging_steps": self.logging_steps,
        }
        for name, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: expected a number > 0, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected a number in [0, 1), got {self.dropout!r}")
        if not (math.isfinite(self.sft_weight) and self.sft_weight >= 0):
            raise ValueError(f"sft_weight: expected a number >= 0, got {self.sft_weight!r}")
        if self.sft_weight > 0 and self.loss_type == "sft":
            raise ValueError("sft_weight: loss_type is already 'sft'; set sft_weight to 0")
        if not 0.0 <= self.weak_pair_weight <= 1.0:
            raise ValueError(
                f"weak_pair_weight: expected a number in [0, 1], got {self.weak_pair_weight!r}"
            )
        for name in ("weight_decay", "max_grad_norm"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: expected a number >= 0, got {value!r}")
        if self.loss_type == "robust" and not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(
                f"label_smoothing: the robust loss needs [0, 0.5), got {self.label_smoothing!r}"
            )
        if self.loss_type == "exo_pair" and not self.label_smoothing > 0:
            raise ValueError("label_smoothing: the exo_pair loss needs > 0 (EXO suggests 1e-3)")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(
                f"label_smoothing: expected a number in [0, 1), got {self.label_smoothing!r}"
            )
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps: expected an integer >= 1 or null, got {self.max_steps}")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max_length: expected an integer >= 1 or null, got {self.max_length}")
        if self.freeze_llm and self.freeze_vision and self.freeze_merger:
            raise ValueError(
                "freeze_llm, freeze_vision and freeze_merger are all true: nothing to train"
            )
        if not self.target_modules:
            raise ValueError("target_modules: expected at least one module name")
        if len(set(self.target_modules)) != len(self.target_modules):
            raise ValueError(f"target_modules: duplicates in {list(self.target_modules)}")
        if ALL_LINEAR in self.target_modules and len(self.target_modules) > 1:
            raise ValueError(
                f"target_modules: {ALL_LINEAR!r} stands alone, got {list(self.target_modules)}"
            )
        if "lm_head" in self.target_modules:
            raise ValueError(
                "target_modules: 'lm_head' cannot be adapted (trl computes log-probabilities "
                "from lm_head.weight directly, so its adapter would never train)"
            )

    def learning_rates(self) -> dict[str, float]:
        """Part name -> learning rate."""
        return {"llm": self.lr_llm, "vision": self.lr_vision, "merger": self.lr_merger}

    def trained_parts(self) -> tuple[str, ...]:
        """The parts whose parameters (or adapters) are trained, in PARTS order."""
        frozen = {
            "llm": self.freeze_llm,
            "vision": self.freeze_vision,
            "merger": self.freeze_merger,
        }
        return tuple(p for p in PARTS if not frozen[p])

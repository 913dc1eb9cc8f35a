"""Config of the flow-matching DPO trainer (`genalign.trainers.flow_dpo`).

One frozen dataclass; every default names its source. The loss name is looked up in
`genalign.losses.PREFERENCE_LOSSES` by the trainer; this module imports no torch, so it
declares the valid names itself (`PREFERENCE_LOSSES` below, kept equal to the table's keys
by a unit test) and a bad name fails when the config loads.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from genalign.config.base import Config, check_range, field

# The keys of genalign.losses.PREFERENCE_LOSSES.
PREFERENCE_LOSSES = ("diffusion_dpo", "dspo_sd15", "dspo_sdxl", "dro", "dro_linear")
# The losses with extra inputs in genalign.losses.PREFERENCE_LOSS_EXTRA_INPUTS: they need
# the live reference prediction at every step, so precompute_reference cannot serve them.
LIVE_REFERENCE_LOSSES = ("dspo_sd15", "dspo_sdxl")

# Fields that may change between a run and its resumption: they decide how long to
# train and what to log, not what a step computes.
RESUMABLE_FIELDS = (
    "epochs", "max_steps", "log_every", "drift_every", "checkpoint_every", "keep_checkpoints"
)


@dataclasses.dataclass(frozen=True)
class FlowDPOConfig(Config):
    """Preference tuning of the part DiT with a flow-matching DPO loss and a LoRA/DoRA adapter."""

    # --- loss -------------------------------------------------------------------------
    # Diffusion-DPO (Wallace et al. 2023) is the method this trainer reproduces.
    loss: str = field(
        "diffusion_dpo",
        help=f"Preference loss, a name in genalign.losses' table: {', '.join(PREFERENCE_LOSSES)}.",
    )
    # Convention of genalign.losses.diffusion_dpo_loss: -log sigmoid(-beta * gap) with
    # per-sample MEAN squared errors. Diffusion-DPO's SD1.5 run used beta_dpo = 5000 in
    # its 0.5-scaled form, i.e. 2500 here. On a small part DiT (hidden 32, 16 synthetic
    # pairs, lr 1e-3) a rank-8 LoRA moved the error gap by ~1e-2 in 40 steps, a margin
    # of ~4.5 at beta 500, with the loss falling from log 2 to below 0.1: strong enough
    # to learn, not so strong that the first steps saturate. Tune per model.
    beta: float = field(
        500.0,
        help="DPO temperature on the flow-error gap (see the loss docstring for its convention).",
    )
    # Off by default, as in Diffusion-DPO; DSO and some Diffusion-DPO variants add the
    # chosen sample's flow-matching loss to keep the policy on the data.
    sft_weight: float = field(
        0.0, help="Weight of an extra flow-matching MSE on the chosen samples (0 = off)."
    )

    # --- adapter ----------------------------------------------------------------------
    adapter: Literal["lora", "dora"] = field(
        "lora", help="Adapter type: lora, or dora (peft use_dora: weight-decomposed LoRA)."
    )
    # peft's LoraConfig defaults (r=8); alpha = 2 * rank is the common diffusers LoRA choice.
    rank: int = field(8, help="LoRA rank r.")
    alpha: float = field(16.0, help="LoRA alpha; the update is scaled by alpha / rank.")
    # 0 keeps the policy deterministic given the step, so a resumed run matches exactly;
    # peft's default is also 0.
    dropout: float = field(0.0, help="Dropout on the LoRA branch input.")
    # The part DiT's attention projections (genalign.models.part_dit), the usual LoRA
    # targets in diffusion transformers (diffusers SD3 LoRA scripts).
    target_modules: tuple[str, ...] = field(
        ("to_q", "to_k", "to_v", "to_out"),
        help="Names of the nn.Linear modules that get an adapter.",
    )

    # --- optimisation -----------------------------------------------------------------
    # 1e-4 is the diffusers LoRA training scripts' default learning rate.
    lr: float = field(1e-4, help="AdamW learning rate (constant).")
    # LoRA weights are small and regularised by their rank; trl's DPOConfig default is 0.
    weight_decay: float = field(0.0, help="AdamW decoupled weight decay.")
    # 1.0 is Diffusion-DPO's and the diffusers training scripts' max_grad_norm.
    max_grad_norm: float | None = field(
        1.0, help="Clip the adapter gradient to this global L2 norm; null = no clipping."
    )
    epochs: int = field(1, help="Passes over the pairs; ignored when max_steps is set.")
    max_steps: int | None = field(None, help="Optimizer steps to run; overrides epochs when set.")
    # Small enough for the tiny preset's few dozen pairs; real runs raise it.
    batch_size: int = field(8, help="Pairs per forward pass (micro-batch).")
    grad_accum: int = field(
        1, help="Micro-batches per optimizer step; pairs per step = batch_size * grad_accum."
    )

    # --- timesteps and reference ------------------------------------------------------
    # Diffusion-DPO samples training timesteps uniformly.
    timestep_scheme: Literal["uniform", "logit_normal"] = field(
        "uniform", help="How t in [0, 1] is drawn per pair: uniform or logit_normal."
    )
    # Logit-normal(0, 1): SD3 (Esser et al. 2024, sec. 3.1), used by flow DiTs.
    logit_mean: float = field(0.0, help="Mean of the logit-normal timestep distribution.")
    logit_std: float = field(1.0, help="Std of the logit-normal timestep distribution.")
    precompute_reference: bool = field(
        False,
        help="Compute the reference errors once per pair before training, at seeded (t, noise) "
        "draws, so no reference forward runs during training.",
    )
    # Four draws cycle over four epochs before a draw repeats.
    reference_draws: int = field(
        4,
        help="Seeded (t, noise) draws per pair when precompute_reference is set; epoch e "
        "uses draw e mod reference_draws.",
    )

    # --- run --------------------------------------------------------------------------
    seed: int = field(0, help="Seed of the adapter init, pair order, timesteps and noise.")
    log_every: int = field(
        10, help="Steps between train/drift measurements and progress-bar updates."
    )
    drift_every: int | None = field(
        None,
        help="Steps between drift measurements (policy against reference prediction); "
        "default log_every with a live reference, where it is free, and 10 x log_every "
        "with a precomputed one, where it costs a no-grad forward.",
    )
    checkpoint_every: int = field(
        50, help="Steps between checkpoints under out_dir/checkpoints (0 = none)."
    )
    keep_checkpoints: int = field(2, help="Most recent checkpoints kept on disk.")
    # trl's DPOConfig also defaults to bf16; the trainer ignores it on CPU with a log line.
    bf16: bool = field(True, help="bf16 autocast of forward passes on CUDA (ignored on CPU).")

    def __post_init__(self) -> None:
        positive = {
            "beta": self.beta,
            "rank": self.rank,
            "alpha": self.alpha,
            "lr": self.lr,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "grad_accum": self.grad_accum,
            "logit_std": self.logit_std,
            "reference_draws": self.reference_draws,
            "log_every": self.log_every,
            "keep_checkpoints": self.keep_checkpoints,
        }
        for name, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be > 0 and finite, got {value}")
        if self.drift_every is not None and not self.drift_every >= 1:
            raise ValueError(f"drift_every must be >= 1 or null, got {self.drift_every}")
        if self.loss not in PREFERENCE_LOSSES:
            raise ValueError(
                f"loss: {self.loss!r} is not a preference loss; "
                f"valid names: {list(PREFERENCE_LOSSES)}"
            )
        if self.loss in LIVE_REFERENCE_LOSSES and self.precompute_reference:
            raise ValueError(
                f"loss {self.loss!r} needs the reference prediction at every step; "
                "expected precompute_reference=false"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        check_range("logit_mean", self.logit_mean)
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0 and finite, got {self.weight_decay}")
        if not (math.isfinite(self.sft_weight) and self.sft_weight >= 0):
            raise ValueError(f"sft_weight must be >= 0 and finite, got {self.sft_weight}")
        if self.max_grad_norm is not None and not (
            math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0
        ):
            raise ValueError(
                "max_grad_norm must be > 0 and finite, or null (no clipping), "
                f"got {self.max_grad_norm}"
            )
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or null, got {self.max_steps}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if not self.target_modules:
            raise ValueError("target_modules must name at least one module")
        if len(set(self.target_modules)) != len(self.target_modules):
            raise ValueError(f"target_modules has duplicates: {list(self.target_modules)}")


@dataclasses.dataclass(frozen=True)
class TrainFlowDPOConfig(FlowDPOConfig):
    """The train-flow-dpo stage: the method's settings (`FlowDPOConfig`), nothing more."""

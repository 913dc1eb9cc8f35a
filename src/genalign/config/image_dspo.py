"""Config of the SDXL preference trainer (`genalign.trainers.image_dspo`): DSPO or
Diffusion-DPO of an SDXL U-Net through a DoRA (or LoRA) adapter.

    cfg = TrainImageDSPOConfig.from_dict({"loss": "dspo_sdxl", "steps": 200})

One frozen dataclass; every default names its source. This module imports no torch, so
it declares the loss names it accepts itself (`IMAGE_DSPO_LOSSES`, a subset of the keys
of `genalign.losses.PREFERENCE_LOSSES`, checked by tests/unit/test_image_dspo_beta.py).

The beta convention. genalign's losses (`genalign.losses.diffusion_dpo.diffusion_dpo_loss`)
compute -log sigmoid(-beta * ((pw - rw) - (pl - rl))) on per-sample MEAN squared errors.
Two public SDXL scripts write the same logit with a factor 0.5 in front:

  - diffusers, examples/research_projects/diffusion_dpo/train_diffusion_dpo_sdxl.py:
    `scale_term = -0.5 * args.beta_dpo; inside_term = scale_term * (model_diff -
    ref_diff)`, with `--beta_dpo` default 5000;
  - DSPO (github.com/huaishengzhu/DSPO), train.py, the same `-0.5 * args.beta_dpo`, and
    launchers/sdxl.sh passes `--beta_dpo 5000`.

model_diff - ref_diff = (pw - pl) - (rw - rl) = (pw - rw) - (pl - rl), so their logit is
genalign's with beta = 0.5 * beta_dpo: both 5000s are beta = 2500 here
(`beta_from_half_scaled`). (The diffusers SD 1.5 script, train_diffusion_dpo.py, has no
0.5: `F.logsigmoid(args.beta_dpo * (ref_diff - model_diff))`, so there beta = beta_dpo.)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from genalign.config.base import Config, check_range, field

# The preference losses of genalign.losses.PREFERENCE_LOSSES this trainer runs: the two
# DSPO branches and plain Diffusion-DPO. The DRO losses need no SDXL-specific input but
# have not been tried on images, so they are left out until they are.
IMAGE_DSPO_LOSSES = ("dspo_sdxl", "dspo_sd15", "diffusion_dpo")
ADAPTERS = ("dora", "lora")
MIXED_PRECISIONS = ("no", "bf16")

# The factor the diffusers SDXL DPO script and the DSPO code put before their beta_dpo.
HALF_SCALED_FACTOR = 0.5
# --beta_dpo default of train_diffusion_dpo_sdxl.py and the value in DSPO launchers/sdxl.sh.
DIFFUSERS_SDXL_BETA_DPO = 5000.0
DSPO_SDXL_BETA_DPO = 5000.0

# The diffusers SDXL attention and feed-forward Linears plus each transformer's
# proj_in / proj_out (Linear with use_linear_projection, as in SDXL): the targets of
# diffusers' SDXL LoRA scripts (train_dreambooth_lora_sdxl.py: to_k, to_q, to_v, to_out.0)
# widened to the feed-forward and projections.
SDXL_TARGET_MODULES = (
    "to_k", "to_q", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out"
)

# Fields that may change between a run and its resumption: how long to train and how
# often to save, not what a step computes.
RESUMABLE_FIELDS = ("steps", "checkpoint_every", "keep_checkpoints")


def beta_from_half_scaled(beta_dpo: float) -> float:
    """genalign's beta for a script that computes -logsigmoid(-0.5 * beta_dpo * gap)."""
    return HALF_SCALED_FACTOR * beta_dpo


@dataclasses.dataclass(frozen=True)
class TrainImageDSPOConfig(Config):
    """Preference tuning of an SDXL U-Net on pairs of its own samples: one DSPO or
    Diffusion-DPO loss, a DoRA or LoRA adapter, the reference = the adapter switched off."""

    # --- loss -------------------------------------------------------------------------
    # DSPO's SDXL branch (launchers/sdxl.sh passes --sdxl), the method this trainer is for.
    loss: str = field(
        "dspo_sdxl",
        help=f"Preference loss, a name in genalign.losses' table: {', '.join(IMAGE_DSPO_LOSSES)}.",
    )
    # diffusers train_diffusion_dpo_sdxl.py --beta_dpo 5000 in its 0.5-scaled form (see
    # the module doc): 2500 here. DSPO launchers/sdxl.sh gives the same 2500.
    beta: float = field(
        beta_from_half_scaled(DIFFUSERS_SDXL_BETA_DPO),
        help="Temperature on the error gap, genalign's convention: -logsigmoid(-beta * gap) "
        "with mean squared errors; a script's -0.5 * beta_dpo is beta = beta_dpo / 2.",
    )
    # None = 2 * beta, the coupling of DSPO's train.py (its sd15 branch multiplies by
    # beta_dpo = 2 * beta); genalign.losses.dspo_sd15_loss documents it.
    score_weight: float | None = field(
        None,
        help="dspo_sd15 only: lambda, the weight of the reference-repelling term; null = "
        "2 * beta as in the DSPO code.",
    )
    # 0.1, a constant in DSPO's train.py (genalign.losses.dspo.SDXL_DISTANCE_THRESHOLD).
    distance_threshold: float = field(
        0.1,
        help="dspo_sdxl only: micro-batch mean policy-reference distance on the chosen "
        "samples below which the loss is s^2 alone.",
    )

    # --- adapter ----------------------------------------------------------------------
    # DoRA (Liu et al. 2024, arXiv:2402.09353): the weight-decomposed adapter the
    # image-dspo pipeline trains; "lora" for comparison.
    adapter: Literal["dora", "lora"] = field(
        "dora", help="Adapter type: dora (peft use_dora) or lora."
    )
    # rank 32 with alpha = rank (scale 1), the setting diffusers' loaders assume for a
    # file without alphas (utils/peft_utils.py get_peft_kwargs: lora_alpha = r).
    rank: int = field(32, help="Adapter rank r.")
    alpha: float = field(32.0, help="Adapter alpha; the update is scaled by alpha / rank.")
    # 0.1: peft's documented LoRA example value (LoraConfig docs, lora_dropout=0.1).
    # Resume stays exact: the dropout masks come from torch's RNG, which checkpoints keep.
    dropout: float = field(0.1, help="Dropout on the adapter branch input (training only).")
    target_modules: tuple[str, ...] = field(
        SDXL_TARGET_MODULES,
        help="Names (or dotted suffixes) of the U-Net's nn.Linear modules that get an adapter.",
    )

    # --- optimisation -----------------------------------------------------------------
    # The SDXL command of diffusers' examples/research_projects/diffusion_dpo/README.md:
    # --learning_rate=1e-5, --train_batch_size=8, --gradient_accumulation_steps=2,
    # --max_train_steps=2000, --checkpointing_steps=500, --gradient_checkpointing, --seed 0.
    lr: float = field(1e-5, help="AdamW learning rate (constant).")
    # 0, not the script's 1e-2: decay would pull DoRA's magnitude vectors (the column
    # norms of the adapted weights) towards zero, shrinking the base weights themselves.
    weight_decay: float = field(0.0, help="AdamW decoupled weight decay.")
    # 1.0, --max_grad_norm of train_diffusion_dpo_sdxl.py.
    max_grad_norm: float | None = field(
        1.0, help="Clip the adapter gradient to this global L2 norm; null = no clipping."
    )
    steps: int = field(2000, help="Optimizer steps to run.")
    batch_pairs: int = field(8, help="Pairs per forward pass (micro-batch); 2x images.")
    grad_accumulation: int = field(
        2, help="Micro-batches per optimizer step; pairs per step = batch_pairs * grad_accumulation."
    )
    checkpoint_every: int = field(
        500, help="Steps between checkpoints under out/checkpoints (0 = none)."
    )
    keep_checkpoints: int = field(2, help="Most recent checkpoints kept on disk.")
    seed: int = field(0, help="Seed of the adapter init, pair order, timesteps, noise, dropout.")
    # The README command runs fp16, which this trainer does not offer; bf16 autocast needs
    # CUDA and the config cannot know the device, so the default runs everywhere.
    mixed_precision: Literal["no", "bf16"] = field(
        "no", help="no (float32) or bf16 (autocast of the U-Net forwards; CUDA only)."
    )
    gradient_checkpointing: bool = field(
        True,
        help="Recompute the U-Net's block activations in backward (diffusers' "
        "enable_gradient_checkpointing): less memory, about a third more compute.",
    )

    def __post_init__(self) -> None:
        if self.loss not in IMAGE_DSPO_LOSSES:
            raise ValueError(
                f"loss: {self.loss!r} is not a loss this trainer runs; valid names: "
                f"{list(IMAGE_DSPO_LOSSES)}"
            )
        if self.adapter not in ADAPTERS:
            raise ValueError(f"adapter: {self.adapter!r} is not one of {list(ADAPTERS)}")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(
                f"mixed_precision: {self.mixed_precision!r} is not one of {list(MIXED_PRECISIONS)}"
            )
        check_range("beta", self.beta, gt=0)
        if self.score_weight is not None:
            check_range("score_weight", self.score_weight, ge=0)
            if self.loss != "dspo_sd15":
                raise ValueError(
                    f"score_weight: set to {self.score_weight} but only dspo_sd15 uses it "
                    f"(loss is {self.loss!r}); expected null"
                )
        check_range("distance_threshold", self.distance_threshold, ge=0)
        for name in ("rank", "steps", "batch_pairs", "grad_accumulation", "keep_checkpoints"):
            check_range(name, getattr(self, name), ge=1)
        check_range("checkpoint_every", self.checkpoint_every, ge=0)
        check_range("seed", self.seed, ge=0)
        check_range("alpha", self.alpha, gt=0)
        check_range("dropout", self.dropout, ge=0, lt=1)
        check_range("lr", self.lr, gt=0)
        check_range("weight_decay", self.weight_decay, ge=0)
        if self.max_grad_norm is not None and not (
            math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0
        ):
            raise ValueError(
                f"max_grad_norm: expected a finite number > 0 or null, got {self.max_grad_norm!r}"
            )
        if not self.target_modules:
            raise ValueError("target_modules: expected at least one module name")
        if len(set(self.target_modules)) != len(self.target_modules):
            raise ValueError(f"target_modules: duplicates in {list(self.target_modules)}")

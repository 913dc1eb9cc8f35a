"""Configs of the part-aware flow DiT (`genalign.models.part_dit`) and its flow-matching
pretraining (`genalign.trainers.flow_matching`).

Defaults are sized for the tiny preset: a hidden-64 DiT that learns the procedural
part objects in a few CPU minutes. PartCrafter (Lin et al. 2025, github wgsxm/PartCrafter,
`configs/mp8_nt512.yaml`) is the source of the architecture and the training recipe.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from genalign.config.base import Config, field


@dataclasses.dataclass(frozen=True)
class PartDiTConfig(Config):
    """Architecture of the part DiT; saved as the model's `config.json`."""

    # genalign.models.part_codec: TOKEN_DIM, PART_TOKENS, MAX_PARTS.
    token_dim: int = field(4, help="Numbers per latent token (part_codec.TOKEN_DIM).")
    tokens_per_part: int = field(4, help="Latent tokens per part (part_codec.PART_TOKENS).")
    max_parts: int = field(
        8, help="Size of the learned part-identity table; objects have at most this many parts."
    )
    # Tiny preset: a few CPU minutes of pretraining (PartCrafter's DiT is 2048 wide, 21 deep).
    hidden: int = field(64, help="Transformer width H.")
    # PartCrafter alternates global (all parts) and local (one part) attention, block by block.
    depth: int = field(
        4, help="Transformer blocks; even blocks attend within a part, odd blocks across parts."
    )
    heads: int = field(4, help="Attention heads; hidden must be divisible by heads.")
    # Hidden size of the tiny DINOv2 of genalign.models.vision (1024 for DINOv2-L in PartCrafter).
    cond_dim: int = field(32, help="Width C of the conditioning tokens [B, N, C].")
    # DiT (Peebles & Xie 2023) and PartCrafter both use an MLP ratio of 4.
    mlp_ratio: float = field(4.0, help="MLP hidden width as a multiple of hidden.")

    def __post_init__(self) -> None:
        positive = {
            "token_dim": self.token_dim,
            "tokens_per_part": self.tokens_per_part,
            "max_parts": self.max_parts,
            "hidden": self.hidden,
            "depth": self.depth,
            "heads": self.heads,
            "cond_dim": self.cond_dim,
            "mlp_ratio": self.mlp_ratio,
        }
        for name, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be > 0 and finite, got {value}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        if self.depth < 2:
            raise ValueError(
                f"depth must be >= 2 so there is a local and a global block, got {self.depth}"
            )


@dataclasses.dataclass(frozen=True)
class FlowMatchingConfig(Config):
    """Flow-matching pretraining of the part DiT from scratch."""

    # ~1-2 CPU minutes for the tiny DiT at batch 64 on two cores.
    steps: int = field(2000, help="Optimizer steps.")
    # PartCrafter: 32 objects per GPU; 64 fits the tiny model on a CPU.
    batch_size: int = field(
        64,
        help="Objects per step (without replacement within an epoch; fewer in a count's last batch).",
    )
    # PartCrafter fine-tunes at 1e-4; a hidden-64 DiT trained from scratch takes 1e-3.
    lr: float = field(1e-3, help="Peak AdamW learning rate.")
    # PartCrafter's optimizer: AdamW, weight decay 0.01, betas (0.9, 0.999).
    weight_decay: float = field(0.01, help="AdamW decoupled weight decay.")
    warmup_steps: int = field(100, help="Linear warmup steps before the cosine decay.")
    # Cosine decay to 10% of the peak rather than 0 keeps the last steps useful.
    min_lr_ratio: float = field(0.1, help="Final learning rate as a fraction of lr.")
    # 1.0 is the diffusers training scripts' max_grad_norm.
    max_grad_norm: float = field(1.0, help="Clip the gradient to this global L2 norm.")
    # PartCrafter and SD3 (Esser et al. 2024, sec. 3.1): logit-normal(0, 1) timesteps.
    timestep_scheme: Literal["logit_normal", "uniform"] = field(
        "logit_normal", help="How t in [0, 1] is drawn per object: logit_normal or uniform."
    )
    # PartCrafter train.cfg_dropout_prob.
    cfg_dropout: float = field(
        0.1, help="Probability an object's conditioning is replaced by zeros (for CFG)."
    )
    # PartCrafter shuffles (dataset.shuffle_parts: true) because its parts have no
    # canonical order. The procedural objects do (category-defined, and the condition
    # images colour parts by index), so the tiny preset keeps it.
    shuffle_parts: bool = field(
        False, help="Randomly permute the real parts of each object every step (PartCrafter: true)."
    )
    # Length bucketing, as in sequence models: a third less compute on the procedural data.
    bucket_by_parts: bool = field(
        True, help="Batch objects of equal part count together and trim the padding slots."
    )
    seed: int = field(0, help="Seed of the init, batch order, timesteps, noise and dropout.")
    log_every: int = field(50, help="Steps between pretrain/loss logs (mean over the window).")

    def __post_init__(self) -> None:
        positive = {
            "steps": self.steps,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "max_grad_norm": self.max_grad_norm,
            "log_every": self.log_every,
        }
        for name, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be > 0 and finite, got {value}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0 and finite, got {self.weight_decay}")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(
                f"warmup_steps must be in [0, steps={self.steps}), got {self.warmup_steps}"
            )
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 <= self.cfg_dropout < 1.0:
            raise ValueError(f"cfg_dropout must be in [0, 1), got {self.cfg_dropout}")

"""Config of the hand-pose transformer (`genalign.models.hand_pose.HandPoseModel`).

Defaults are sized for the tiny preset: a 2-layer, hidden-64 DINOv2 on 64-pixel crops and
a hidden-64 pose decoder, a forward of a batch of 8 in a few CPU milliseconds. On a
cluster `backbone` names a pretrained DINOv2 (`hf://facebook/dinov2-small`, patch 14) and
`image_size` a multiple of its patch (224 is DINOv2's training resolution).

The recipe follows the Advanced Manipulation Transformer (AMT) on DexYCB: a transformer
backbone, learned joint queries decoded DETR-style (Carion et al. 2020), an object-pose
branch, and pixel-aligned iterative refinement of the joints.

No torch here: the config loads in the pipeline compiler and in the components' bodies.
"""

from __future__ import annotations

import dataclasses

from genalign.config.base import Config, check_range, field

TINY_BACKBONE = "tiny"


@dataclasses.dataclass(frozen=True)
class HandPoseModelConfig(Config):
    """Architecture of the hand-pose transformer; saved as the model's `config.json`."""

    # --- backbone ---------------------------------------------------------------------
    # "tiny" keeps the CPU tests and the tiny preset free of any hub; DINOv2 (Oquab et al.
    # 2023) is the backbone of the cluster presets.
    backbone: str = field(
        TINY_BACKBONE,
        help="'tiny': a random-init transformers Dinov2Model built from the backbone_* fields; "
        "anything else is a model reference (hf://facebook/dinov2-small, a path, ...) that the "
        "caller resolves to a local directory and passes as backbone_dir.",
    )
    # 64 px: the tiny preset's crops (DexYCB crops are usually 224 or 256 px).
    image_size: int = field(
        64, help="Side S of the square input crops in pixels; a multiple of patch_size."
    )
    # The tiny DINOv2: 2 layers of width 64 with 2 heads (genalign.models.vision uses the
    # same shape at width 32); DINOv2-S is 12 layers of 384 with 6 heads.
    backbone_hidden: int = field(64, help="Width C of the tiny backbone (tiny only).")
    backbone_layers: int = field(2, help="Transformer layers of the tiny backbone (tiny only).")
    backbone_heads: int = field(
        2, help="Attention heads of the tiny backbone; divides backbone_hidden (tiny only)."
    )
    # 8 px patches give an 8x8 token grid on a 64 px crop; DINOv2 checkpoints use 14.
    patch_size: int = field(
        8,
        help="Backbone patch size in pixels; for a pretrained backbone it must equal the "
        "checkpoint's patch_size (checked when the model is built).",
    )

    # --- pose decoder -----------------------------------------------------------------
    # Tiny preset: width 64, 2 layers, 4 heads (AMT's decoder is 256 wide, 6 layers, 8 heads,
    # DETR's defaults).
    width: int = field(64, help="Hidden size W of the pose decoder (joint and object queries).")
    decoder_layers: int = field(
        2, help="Layers of the joint-query decoder, and of the object decoder."
    )
    heads: int = field(4, help="Attention heads of the decoders; divides width.")

    # --- refinement -------------------------------------------------------------------
    # Two steps: AMT refines the joints twice with pixel-aligned features.
    refine_steps: int = field(
        2,
        help="Pixel-aligned refinement steps (a shared MLP on features sampled at the 2D "
        "joints); 0 disables refinement.",
    )
    # 1.0, halved each step: later steps make smaller corrections, as in coarse-to-fine
    # iterative regression (HMR's iterative error feedback, Kanazawa et al. 2018).
    refine_step_size: float = field(
        1.0,
        help="Scale of the first refinement step's deltas; step k uses refine_step_size * 0.5**k.",
    )

    # --- options ----------------------------------------------------------------------
    # Off by default: the deterministic head is the baseline recipe.
    stochastic_head: bool = field(
        False,
        help="A Gaussian latent (a VAE-style stochastic head) on the pooled joint features, "
        "sampled in training and at its mean in eval, with its KL to N(0, I) in the output.",
    )
    # 16 latent dims: small beside the width, enough for grasp-level pose ambiguity.
    latent_dim: int = field(16, help="Dimensions of the stochastic head's latent.")
    # Off by default; Zhai et al. 2023 turn it on to stabilise transformer training.
    sigma_reparam: bool = field(
        False,
        help="Reparametrise every nn.Linear (backbone, decoders, heads) with sigmaReparam "
        "(Zhai et al. 2023), keeping the built or pretrained weights.",
    )
    # On: DexYCB frames show a grasped YCB object, whose pose is labelled.
    object_branch: bool = field(
        True,
        help="Predict the grasped object's pose (translation from the wrist, rotation) from "
        "a learned object query.",
    )
    # Off: the tiny backbone's activations are small; on for DINOv2-B/L at 224 px and up.
    gradient_checkpointing: bool = field(
        False, help="Recompute the backbone's layer activations in the backward pass."
    )
    seed: int = field(0, help="Seed of the weight initialisation (a private RNG stream).")

    def __post_init__(self) -> None:
        if not self.backbone or self.backbone != self.backbone.strip():
            raise ValueError(
                f"backbone: expected 'tiny' or a model reference, got {self.backbone!r}"
            )
        for name in (
            "image_size",
            "backbone_hidden",
            "backbone_layers",
            "backbone_heads",
            "patch_size",
            "width",
            "decoder_layers",
            "heads",
            "latent_dim",
        ):
            check_range(name, getattr(self, name), ge=1)
        check_range("refine_steps", self.refine_steps, ge=0)
        check_range("refine_step_size", self.refine_step_size, gt=0.0)
        check_range("seed", self.seed, ge=0)
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})"
            )
        if self.backbone_hidden % self.backbone_heads:
            raise ValueError(
                f"backbone_hidden ({self.backbone_hidden}) must be divisible by "
                f"backbone_heads ({self.backbone_heads})"
            )
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be divisible by heads ({self.heads})")

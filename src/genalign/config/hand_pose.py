"""Configs of the hand-pose stages (the pipeline in `pipelines/hand_pose.py`).

    prepare-hands       DexYCB (a directory in the toolkit's layout) or the project's synthetic
                        hands in the same layout -> hand-centred crops of one official split
    train-hand-pose     one training phase of the hand-pose transformer (one task per phase)
    evaluate-hand-pose  the phase's model (EMA and raw) on the held-out split, appended to the
                        run's history; mean-pose baseline, plots, the DexYCB results file
    register-hand-pose  the final model in the MLflow registry; champion when it beats the
                        previous champion's held-out MPJPE

The recipe's defaults (Advanced Manipulation Transformer on DexYCB): three phases of
20 / 50 / 30 epochs at 1e-3 / 5e-4 / 1e-4, backbone learning rate x0.01; loss weights
3D joints 1, refined joints 1.2, reprojection 0.3, diversity 0.01.

No torch here: the configs load in the pipeline compiler and in the components' bodies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from genalign.config.base import Config, check_range, field
from genalign.config.hand_pose_model import HandPoseModelConfig

SETUPS = ("s0", "s1", "s2", "s3")
SPLITS = ("train", "val", "test")
PARAMETER_GROUPS = ("backbone", "hand", "object", "refine")


@dataclass(frozen=True)
class SyntheticHandsConfig(Config):
    """The project's synthetic hands, written in DexYCB's layout (genalign.data.synthetic_hands)."""

    subjects: int = field(10, help="Subjects (<= 10, named as the toolkit's); each has its own hand size.")
    sequences_per_subject: int = field(5, help="Grasp sequences per subject.")
    serials: int = field(8, help="Cameras (<= 8, named as the toolkit's serials) seeing every sequence.")
    frames_per_sequence: int = field(6, help="Frames per sequence and camera (a grasp closing).")
    left_share: float = field(0.2, help="Share of sequences with a left hand (mirrored to right for training).")
    empty_share: float = field(0.02, help="Share of frames without a hand (joint_3d all -1; skipped and counted).")
    object_share: float = field(0.8, help="Share of sequences with a grasped box or cylinder.")
    occluder_share: float = field(0.3, help="Share of frames with a random occluder in front of the hand.")
    seed: int = field(0, help="Seed of the whole synthetic dataset.")

    def __post_init__(self) -> None:
        check_range("subjects", self.subjects, ge=1, le=10)
        check_range("serials", self.serials, ge=1, le=8)
        check_range("sequences_per_subject", self.sequences_per_subject, ge=1, le=100)  # the toolkit indexes 0-99
        check_range("frames_per_sequence", self.frames_per_sequence, ge=1)
        for name in ("left_share", "empty_share", "object_share", "occluder_share"):
            check_range(name, getattr(self, name), ge=0.0, le=1.0)


@dataclass(frozen=True)
class PrepareHandsConfig(Config):
    """Frames of one official DexYCB split setup, as hand-centred crops."""

    source: Literal["synthetic", "dexycb"] = field(
        "synthetic",
        help="synthetic: the project's synthetic hands (the tiny preset), generated in DexYCB's "
        "layout and cached by this config; dexycb: the directory `root` in the DexYCB "
        "toolkit's layout (DEX_YCB_DIR).",
    )
    root: str | None = field(None, help="dexycb: the dataset directory (a path or a mounted volume).")
    synthetic: SyntheticHandsConfig = field(
        default_factory=SyntheticHandsConfig, help="The synthetic dataset (source: synthetic)."
    )
    setup: Literal["s0", "s1", "s2", "s3"] = field(
        "s0", help="Official split setup: s0 seen, s1 unseen subjects, s2 unseen cameras, s3 unseen objects."
    )
    crop_size: int = field(64, help="Side of the square hand-centred crop, pixels (the model's image_size).")
    # A 20 % margin each side keeps the fingertips and some of the object in the crop.
    crop_margin: float = field(0.2, help="Margin around the 2D joints' bounding box, as a share of its side.")
    max_frames: dict[str, int] = field(
        default_factory=dict,
        help="Per split (train/val/test), at most this many frames, drawn with `seed` "
        "(absent: every frame).",
    )
    seed: int = field(0, help="Seed of the max_frames subsampling.")
    workers: int = field(2, help="synthetic: processes writing the frames side by side (the same bytes as one).")

    def __post_init__(self) -> None:
        check_range("workers", self.workers, ge=1)
        if self.source == "dexycb" and not self.root:
            raise ValueError("root: source 'dexycb' needs the dataset directory")
        check_range("crop_size", self.crop_size, ge=16)
        check_range("crop_margin", self.crop_margin, ge=0.0, le=2.0)
        for split, n in self.max_frames.items():
            if split not in SPLITS:
                raise ValueError(f"max_frames: unknown split {split!r}, expected some of {list(SPLITS)}")
            check_range(f"max_frames.{split}", n, ge=1)


@dataclass(frozen=True)
class LossWeights(Config):
    """Weights of the loss terms of one phase (0 switches a term off)."""

    joints3d: float = field(1.0, help="Root-relative 3D joints before refinement (mm).")
    refined: float = field(1.2, help="Root-relative 3D joints after refinement (mm).")
    reprojection: float = field(0.3, help="2D reprojection of the camera-frame joints (px).")
    root_depth: float = field(0.1, help="Camera-frame depth of the wrist (mm, L1).")
    diversity: float = field(0.01, help="Penalty on a batch whose predictions collapsed toward one pose.")
    object: float = field(0.0, help="Grasped object's pose: translation (mm) + rotation (rad x rotation_weight).")
    penetration: float = field(0.0, help="Joints and bone capsules inside the grasped object (mm); phase 3.")
    kl: float = field(0.001, help="KL term of the stochastic head (ignored without it).")

    def __post_init__(self) -> None:
        for name, value in self.to_dict().items():
            check_range(name, value, ge=0.0)


@dataclass(frozen=True)
class PhaseConfig(Config):
    """One training phase: what trains, how long, how fast, and with which losses."""

    name: str = field(help="The phase's name, used in metrics, the report and checkpoints.")
    epochs: int = field(help="Epochs over the training split.")
    lr: float = field(help="Peak learning rate of the pose decoder and heads.")
    backbone_lr_scale: float = field(0.01, help="The backbone's learning rate as a multiple of lr.")
    trainable: list[str] = field(
        default_factory=lambda: list(PARAMETER_GROUPS),
        help=f"Parameter groups that train ({', '.join(PARAMETER_GROUPS)}); the others are frozen.",
    )
    one_group_at_a_time: bool = field(
        False,
        help="Train the `trainable` groups one after another, an equal share of the epochs each "
        "(component pretraining: the hand encoder/decoder, then the object branch).",
    )
    weights: LossWeights = field(default_factory=LossWeights, help="Loss weights of this phase.")

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"name: expected letters, digits, '_' or '-', got {self.name!r}")
        check_range("epochs", self.epochs, ge=1)
        check_range("lr", self.lr, gt=0.0)
        check_range("backbone_lr_scale", self.backbone_lr_scale, ge=0.0)
        if not self.trainable:
            raise ValueError(
                f"phase {self.name}: trainable is empty, so the phase would freeze everything; "
                f"expected some of {list(PARAMETER_GROUPS)}"
            )
        unknown = sorted(set(self.trainable) - set(PARAMETER_GROUPS))
        if unknown:
            raise ValueError(f"phase {self.name}: trainable names unknown group(s) {unknown}, "
                             f"expected some of {list(PARAMETER_GROUPS)}")
        if len(set(self.trainable)) != len(self.trainable):
            raise ValueError(f"phase {self.name}: trainable names a group twice: {self.trainable}")
        if self.one_group_at_a_time and self.epochs < len(self.trainable):
            raise ValueError(f"phase {self.name}: one_group_at_a_time needs epochs >= {len(self.trainable)} "
                             f"(one per group), got {self.epochs}")


def _default_phases() -> list[PhaseConfig]:
    # The recipe: 20 / 50 / 30 epochs at 1e-3 / 5e-4 / 1e-4.
    return [
        PhaseConfig(name="components", epochs=20, lr=1e-3, trainable=["hand", "object"], one_group_at_a_time=True,
                    weights=LossWeights(object=1.0)),
        PhaseConfig(name="joint", epochs=50, lr=5e-4, weights=LossWeights(object=1.0)),
        PhaseConfig(name="physics", epochs=30, lr=1e-4, weights=LossWeights(object=1.0, penetration=0.1)),
    ]


@dataclass(frozen=True)
class TrainHandPoseConfig(Config):
    """Training of the hand-pose transformer, phase by phase (one pipeline task per phase)."""

    model: HandPoseModelConfig = field(default_factory=HandPoseModelConfig, help="The model.")
    phases: list[PhaseConfig] = field(default_factory=_default_phases, help="The training phases, in order.")
    batch_size: int = field(32, help="Crops per forward pass, all processes together (split across them).")
    grad_accum: int = field(1, help="Micro-batches accumulated per optimizer step.")
    # Cosine annealing with warm restarts (Loshchilov & Hutter 2017, SGDR): the first cycle
    # lasts restart_epochs, each next one restart_mult times longer.
    restart_epochs: int = field(10, help="SGDR T_0: epochs of the first cosine cycle of each phase.")
    restart_mult: int = field(2, help="SGDR T_mult: each cycle is this many times longer than the last.")
    warmup_steps: int = field(20, help="Linear warm-up steps at the start of each phase.")
    min_lr_ratio: float = field(0.01, help="The cosine's floor as a share of the peak rate.")
    weight_decay: float = field(0.01, help="AdamW weight decay.")
    grad_clip: float = field(1.0, help="Clip the gradient norm to this (0: no clipping).")
    ema_decay: float = field(0.99, help="Decay of the EMA weights used for evaluation (warmed up).")
    # 0: off (the recipe has no augmentation); hand pose training commonly rolls crops by
    # up to 180 degrees
    rotation_augment_deg: float = field(0.0, help="Roll each training crop's camera by a random angle of at most "
                                        "this many degrees about the crop centre's ray (labels stay exact).")
    object_rotation_weight: float = field(10.0, help="Radians of rotation error count as this many mm.")
    diversity_margin_mm: float = field(5.0, help="Per-joint batch spread (mm) below which diversity is penalised.")
    # The source design's threshold: 0.001 m = 1 mm of per-joint spread across a batch.
    collapse_threshold_m: float = field(0.001, help="Mean per-joint batch std (metres) below which the batch "
                                        "counts as collapsed.")
    stop_on_collapse: bool = field(False, help="Stop with an error at a collapsed batch (else warn and count).")
    penetration_radius_mm: float = field(8.0, help="Radius of the joint/bone capsules in the penetration term.")
    backbone_adapter: Literal["none", "lora", "dora"] = field(
        "none", help="Train the backbone through a peft LoRA/DoRA adapter instead of its weights.")
    adapter_rank: int = field(8, help="Rank of the backbone adapter.")
    adapter_alpha: float = field(8.0, help="Alpha of the backbone adapter.")
    adapter_dropout: float = field(0.0, help="Dropout of the backbone adapter.")
    compile: bool = field(False, help="torch.compile the model (GPU; a few minutes of compilation).")
    bf16: bool = field(True, help="bf16 autocast on CUDA (ignored on CPU).")
    checkpoint_every: int = field(50, help="Optimizer steps between checkpoints.")
    keep_checkpoints: int = field(2, help="Checkpoints kept.")
    log_every: int = field(10, help="Optimizer steps between logged metrics.")
    seed: int = field(0, help="Seed of the model's initialisation, the data order and augmentation.")

    def __post_init__(self) -> None:
        if not self.phases:
            raise ValueError("phases: expected at least one training phase")
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError(f"phases: names must be distinct, got {names}")
        for p in self.phases:
            if "object" in p.trainable and not self.model.object_branch:
                raise ValueError(f"phase {p.name}: trains 'object' but model.object_branch is false")
            if "refine" in p.trainable and self.model.refine_steps == 0 and p.trainable == ["refine"]:
                raise ValueError(f"phase {p.name}: trains only 'refine' but model.refine_steps is 0")
            if "backbone" in p.trainable and p.backbone_lr_scale == 0.0:
                raise ValueError(f"phase {p.name}: trains 'backbone' with backbone_lr_scale 0")
        if self.backbone_adapter != "none" and self.model.sigma_reparam:
            raise ValueError(f"backbone_adapter {self.backbone_adapter!r} with model.sigma_reparam: sigmaReparam "
                             "replaces the backbone's linear layers, leaving none for a peft adapter; choose one")
        if self.backbone_adapter != "none" and not any("backbone" in p.trainable for p in self.phases):
            raise ValueError(f"backbone_adapter {self.backbone_adapter!r}: no phase trains the backbone")
        for name in ("batch_size", "grad_accum", "restart_epochs", "restart_mult", "checkpoint_every",
                     "keep_checkpoints", "log_every", "adapter_rank"):
            check_range(name, getattr(self, name), ge=1)
        check_range("warmup_steps", self.warmup_steps, ge=0)
        check_range("min_lr_ratio", self.min_lr_ratio, ge=0.0, le=1.0)
        check_range("rotation_augment_deg", self.rotation_augment_deg, ge=0.0, le=180.0)
        for name in ("weight_decay", "grad_clip", "object_rotation_weight", "diversity_margin_mm",
                     "collapse_threshold_m", "penetration_radius_mm", "adapter_dropout"):
            check_range(name, getattr(self, name), ge=0.0)
        check_range("ema_decay", self.ema_decay, ge=0.0, lt=1.0)
        check_range("adapter_alpha", self.adapter_alpha, gt=0.0)
        if self.adapter_dropout >= 1.0:
            raise ValueError(f"adapter_dropout: expected < 1, got {self.adapter_dropout}")


@dataclass(frozen=True)
class EvaluateHandPoseConfig(Config):
    """One phase's model (EMA and raw weights) on the held-out split."""

    split: Literal["val", "test"] = field("test", help="The held-out split evaluated.")
    batch_size: int = field(64, help="Crops per forward pass.")
    # The acceptance bar: a model that is not twice as good as always answering the
    # training set's mean pose has not learned hands.
    max_baseline_ratio: float = field(0.5, help="The gate: final MPJPE at most this share of the mean-pose "
                                      "baseline's.")
    gallery: int = field(4, help="Held-out crops drawn with predicted and true skeletons.")

    def __post_init__(self) -> None:
        check_range("batch_size", self.batch_size, ge=1)
        check_range("gallery", self.gallery, ge=0)
        check_range("max_baseline_ratio", self.max_baseline_ratio, gt=0.0, le=1.0)


@dataclass(frozen=True)
class RegisterHandPoseConfig(Config):
    """The final hand-pose model as an MLflow model version."""

    model_name: str = field("genalign-hand-pose", help="Registered model name.")
    aliases: list[str] = field(default_factory=lambda: ["candidate"], help="Aliases always moved to the new version.")
    champion_alias: str = field("champion", help="Alias moved when the gate passed and the held-out MPJPE "
                                "beats the previous champion's.")
    require_gate: bool = field(True, help="Move the champion alias only when the evaluation gate passed.")

    def __post_init__(self) -> None:
        from genalign.config.register import RegisterModelConfig

        # the same name and alias rules as register-model
        RegisterModelConfig(model_name=self.model_name, aliases=list(self.aliases),
                            champion_alias=self.champion_alias, require_gate=self.require_gate)

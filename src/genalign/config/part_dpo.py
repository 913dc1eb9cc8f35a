"""Configs of the part-dpo stages that are specific to part generation."""

from __future__ import annotations

from dataclasses import dataclass

from genalign.config.base import Config, check_range, field
from genalign.config.part_dit import FlowMatchingConfig, PartDiTConfig
from genalign.config.refs import check_model_ref


@dataclass(frozen=True)
class PretrainPartsConfig(Config):
    """Flow-matching pretraining of the tiny generator (`genalign.trainers.part_base`): inside
    `prepare` with `base_model: pretrain`, or by the release command that built
    `tiny://part-generator-pretrained` from the tiny preset's section."""

    objects: int = field(2000, help="procedural objects in the pretraining set (disjoint seed from the conditions)")
    hidden: int = field(64, help="DiT width")
    depth: int = field(4, help="DiT blocks, alternating within-part and across-part attention")
    heads: int = field(4, help="attention heads")
    training: FlowMatchingConfig = field(default_factory=FlowMatchingConfig, help="the flow-matching recipe")
    # 512 x 4: the tiny base's pretrain/heldout_loss in about 5 s, most of it rendering the
    # images; the draws' standard error is about 3% of the loss, and it is the same for
    # every model measured (they share the draws).
    heldout_objects: int = field(
        512, help="procedural objects of pretrain/heldout_loss (a seed disjoint from the pretraining objects "
        "and the conditions)",
    )
    heldout_draws: int = field(4, help="seeded (t, noise) draws per held-out object")

    def __post_init__(self) -> None:
        check_range("objects", self.objects, ge=1)
        check_range("heldout_objects", self.heldout_objects, ge=1)
        check_range("heldout_draws", self.heldout_draws, ge=1)
        # The DiT's own rules (hidden divisible by heads, depth >= 2), checked before the
        # pretraining data is made rather than when the model is built.
        PartDiTConfig(hidden=self.hidden, depth=self.depth, heads=self.heads)


@dataclass(frozen=True)
class PreparePartsConfig(Config):
    """Conditions for rollout and held-out evaluation, and the base generator."""

    train_conditions: int = field(48, help="conditions sampled by the rollout stage")
    eval_conditions: int = field(32, help="held-out conditions for base-vs-tuned evaluation")
    seed: int = field(1234, help="seed of the procedural conditions (train and eval drawn disjointly)")
    image_size: int = field(32, help="rendered condition image size, pixels (tiny DINOv2 patch 8 -> 16 tokens)")
    base_model: str = field(
        "pretrain",
        help="'pretrain' pretrains the tiny generator here as the `pretrain` section says; otherwise a model "
        "reference (path, s3://, mlflow://models/<name>@<alias>, hf://, tiny://part-generator, "
        "tiny://part-generator-pretrained: the committed build of the tiny preset's `pretrain`) of a generator, "
        "a registered base (mlflow://models/<name>-base/<version>) or a registered adapter. An adapter "
        "(e.g. the champion, mlflow://models/<name>@champion) is merged into its base here, as peft's "
        "merge_and_unload does, and a fresh adapter is trained on the merged model: the DPO reference "
        "and the evaluation's baseline are then the champion itself, and the new version is an adapter "
        "over that merged base (registered as <name>-base). An alias is pinned to the version it names "
        "when this stage runs",
    )
    pretrain: PretrainPartsConfig = field(default_factory=PretrainPartsConfig, help="pretraining of the tiny base")

    def __post_init__(self) -> None:
        if self.train_conditions < 1 or self.eval_conditions < 1:
            raise ValueError("train_conditions and eval_conditions must be >= 1")
        check_range("image_size", self.image_size, ge=1)
        check_model_ref(self.base_model, where="base_model", extra=("pretrain",))


@dataclass(frozen=True)
class RolloutPartsConfig(Config):
    """Sampling K candidates per condition from the current policy."""

    samples_per_condition: int = field(4, help="K samples per condition, each with its own seed (issue default 4)")
    steps: int = field(20, help="Euler steps from t=1 to t=0")
    guidance: float = field(2.0, help="classifier-free guidance scale")
    batch_size: int = field(32, help="samples per forward pass")
    seed: int = field(0, help="base seed; sample k of condition c uses a seed derived from (seed, c, k)")
    iteration: int = field(0, help="on-policy iteration recorded in the sample rows")

    def __post_init__(self) -> None:
        if self.samples_per_condition < 2:
            raise ValueError("samples_per_condition must be >= 2 to form pairs")
        if self.steps < 1:
            raise ValueError("steps must be >= 1")
        # g = 0 samples unconditionally, g = 1 without guidance (generators/parts.py).
        check_range("guidance", self.guidance, ge=0)
        check_range("batch_size", self.batch_size, ge=1)
        check_range("iteration", self.iteration, ge=0)


@dataclass(frozen=True)
class EvaluatePartsConfig(Config):
    """Base vs tuned on held-out conditions with the same seeds for both."""

    samples_per_condition: int = field(2, help="samples per held-out condition (same seeds for base and tuned)")
    steps: int = field(20, help="Euler steps")
    guidance: float = field(2.0, help="classifier-free guidance scale")
    batch_size: int = field(32, help="samples per forward pass")
    seed: int = field(10_000, help="base seed of the evaluation samples, disjoint from rollout seeds")
    threshold: float = field(0.05, help="an object 'penetrates' when its score exceeds this")
    guard_tolerance: float = field(0.10, help="tuned guard metrics may be at most this much worse than base (10%)")
    voxel_resolution: int = field(32, help="grid for the volume-IoU guard")
    gallery: int = field(8, help="objects shown base-vs-tuned in the gallery PNG")

    def __post_init__(self) -> None:
        for name in ("samples_per_condition", "steps", "batch_size", "voxel_resolution"):
            check_range(name, getattr(self, name), ge=1)
        for name in ("guidance", "threshold", "guard_tolerance"):
            check_range(name, getattr(self, name), ge=0)
        check_range("gallery", self.gallery, ge=0)

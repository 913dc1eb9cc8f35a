"""Configs of the reward-model stages: a multi-head image reward model scoring
(image, prompt) on five heads.

    RewardModelConfig        the model (`genalign.models.reward_model.RewardModel`): a CLIP
                             backbone and how it trains, the fusion block, the heads;
                             saved as the `config` of its reward_model.json
    LinearProbeConfig        the baseline: logistic regression per head on the frozen
                             backbone's image embedding
    TrainRewardModelConfig   training (`genalign.trainers.reward_model`): focal loss,
                             Bradley-Terry on pairs, MixUp, per-part learning rates, EMA,
                             early stopping, checkpoints

    cfg = TrainRewardModelConfig.from_dict({"steps": 300, "model": {"backbone_mode": "lora"}})

No torch here: the configs load in the pipeline compiler and in the components' bodies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from genalign.config.base import Config, check_range, field

# The five rating heads, in the order of every [N, 5] ratings tensor and CSV column.
HEADS = ("spatial", "iconographic", "style", "fidelity", "material")

# "tiny": the backbone is built in code (genalign.models.reward_model.build_tiny_clip).
TINY_BACKBONE = "tiny"
# How the CLIP backbone trains: not at all, through a peft LoRA / DoRA adapter on its
# attention projections, or every weight.
BACKBONE_MODES = ("frozen", "lora", "dora", "full")
# The parts of the model that get their own learning rate (AdamW parameter groups).
PARTS = ("backbone", "fusion", "heads")
# Fields that may change between a killed run and its resumption without changing what it
# computes.
RESUMABLE_FIELDS = ("log_every", "checkpoint_every", "keep_checkpoints")


@dataclass(frozen=True)
class RewardModelConfig(Config):
    """Architecture of the reward model; saved as the `config` of its reward_model.json."""

    # "tiny" keeps the tests and the tiny preset free of any hub; the cluster presets use
    # CLIP ViT-L/14 at 336 px (Radford et al. 2021), the backbone of ImageReward-style models.
    backbone: str = field(
        TINY_BACKBONE,
        help="'tiny': a random-init CLIPModel built in code (build_tiny_clip(seed, image_size)); "
        "anything else is a model reference (hf://openai/clip-vit-large-patch14-336, a path, ...) "
        "that the caller resolves to a local directory and passes as backbone_dir.",
    )
    backbone_mode: Literal["frozen", "lora", "dora", "full"] = field(
        "lora",
        help="frozen: the backbone does not train; lora / dora: a peft adapter on its attention "
        "projections (q_proj, k_proj, v_proj, out_proj) trains; full: every backbone weight trains.",
    )
    # 32 px: the tiny preset's images; CLIP ViT-L/14-336 sees 336 px.
    image_size: int = field(
        32,
        help="Side of the square image the vision tower sees (inputs of another size are resized); "
        "for a pretrained backbone it must equal the checkpoint's vision_config.image_size.",
    )
    # 64: wide enough for five heads on the tiny backbone (width 32); a CLIP-L backbone
    # (vision 1024, text 768) is usually projected to 512 or 768.
    fusion_width: int = field(64, help="Width d the image and prompt tokens are projected to.")
    # d / 4 = 16 channels per head at the default width.
    fusion_heads: int = field(4, help="Attention heads of the cross-attention; divides fusion_width.")
    # 2 x d: the MLP of the fusion block (transformers use 4 x d; 2 x keeps the tiny one light).
    fusion_mlp_ratio: int = field(2, help="Hidden width of the fusion MLP as a multiple of fusion_width.")
    heads: tuple[str, ...] = field(HEADS, help="The rating heads, in the order of the ratings columns.")
    # peft's LoraConfig default r = 8; alpha = 2 x rank, the common choice of diffusers' LoRA scripts.
    lora_rank: int = field(8, help="LoRA rank r of the backbone adapter (lora / dora).")
    lora_alpha: float = field(16.0, help="LoRA alpha; the adapter's update is scaled by alpha / rank.")
    # 0, peft's default: the forward pass draws no random numbers, so a resumed run matches.
    lora_dropout: float = field(0.0, help="Dropout on the LoRA branch input.")
    seed: int = field(
        0, help="Seed of the tiny backbone's weights, the fusion block and heads, and the adapter."
    )

    def __post_init__(self) -> None:
        if not self.backbone:
            raise ValueError("backbone: expected 'tiny' or a model reference, got an empty string")
        check_range("image_size", self.image_size, ge=8)
        for name in ("fusion_width", "fusion_heads", "fusion_mlp_ratio", "lora_rank"):
            check_range(name, getattr(self, name), ge=1)
        if self.fusion_width % self.fusion_heads:
            raise ValueError(
                f"fusion_heads: {self.fusion_heads} does not divide fusion_width {self.fusion_width}"
            )
        check_range("lora_alpha", self.lora_alpha, gt=0.0)
        check_range("lora_dropout", self.lora_dropout, ge=0.0, lt=1.0)
        if not self.heads:
            raise ValueError("heads: expected at least one head name")
        if len(set(self.heads)) != len(self.heads):
            raise ValueError(f"heads: names must be distinct, got {list(self.heads)}")


@dataclass(frozen=True)
class LinearProbeConfig(Config):
    """The baseline: one logistic regression per head on the frozen backbone's projected image
    embedding (the LAION aesthetic predictor's recipe, github.com/LAION-AI/aesthetic-predictor),
    trained full-batch on the same ratings with the same objective as the reward model."""

    # Full-batch AdamW on a few hundred embeddings converges in a few hundred steps.
    steps: int = field(500, help="Full-batch optimizer steps.")
    # 1e-2: a linear model on normalised embeddings tolerates a large rate.
    lr: float = field(1e-2, help="AdamW learning rate.")
    # torch's AdamW default weight decay.
    weight_decay: float = field(0.01, help="AdamW decoupled weight decay.")

    def __post_init__(self) -> None:
        check_range("steps", self.steps, ge=1)
        check_range("lr", self.lr, gt=0.0)
        check_range("weight_decay", self.weight_decay, ge=0.0)


@dataclass(frozen=True)
class TrainRewardModelConfig(Config):
    """Training of the reward model on rated images (and, optionally, preference pairs)."""

    model: RewardModelConfig = field(default_factory=RewardModelConfig, help="The model.")
    steps: int = field(1000, help="Optimizer steps at most (early stopping may end sooner).")
    # 32: ImageReward trains with 64 pairs a step on 4 GPUs; 32 fits the tiny preset on CPU.
    batch_size: int = field(32, help="Rated images per step.")
    pair_batch_size: int = field(
        16, help="Preference pairs per step, when pairs are given (all of them when there are fewer).")
    # Lin et al. 2017, "Focal Loss for Dense Object Detection", section 5.1 / Table 1a:
    # gamma = 2 with alpha = 0.25 worked best.
    focal_gamma: float = field(2.0, help="Focal loss focusing parameter gamma (0: cross-entropy).")
    focal_alpha: float | None = field(
        0.25, help="Focal loss weight of the positive class (the negatives get 1 - alpha); null: none."
    )
    # 1: the pairwise term as strong as the rating term; ImageReward trains on pairs alone.
    lambda_pairwise: float = field(
        1.0, help="Weight of the Bradley-Terry loss on the overall score of preference pairs."
    )
    overall_weights: tuple[float, ...] | None = field(
        None, help="Weights of the heads in the overall score (null: equal weights)."
    )
    # Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization": alpha in [0.1, 0.4]
    # helped on ImageNet; 0.2 is the usual choice.
    mixup_alpha: float = field(0.2, help="MixUp's Beta(alpha, alpha) parameter.")
    mixup_prob: float = field(0.5, help="Share of steps whose rated batch is mixed (0: no MixUp).")
    # Per-part rates: ImageReward fine-tunes its backbone at 1e-5; a LoRA adapter is usually
    # trained at 1e-4 (diffusers' LoRA scripts), fresh layers faster still.
    lr_backbone: float = field(1e-4, help="AdamW learning rate of the backbone (its adapter in lora / dora).")
    lr_fusion: float = field(1e-3, help="AdamW learning rate of the projections and the fusion block.")
    lr_heads: float = field(1e-3, help="AdamW learning rate of the five linear heads.")
    # torch's AdamW default.
    weight_decay: float = field(0.01, help="AdamW decoupled weight decay.")
    # 1.0 is the transformers Trainer's max_grad_norm.
    grad_clip: float = field(1.0, help="Clip the gradient norm to this (0: no clipping).")
    warmup_steps: int = field(20, help="Linear learning-rate warm-up steps, then constant.")
    # 0.999, the EMA decay of timm's and diffusers' training scripts (warmed up, genalign.training.ema).
    ema_decay: float = field(0.999, help="Decay of the EMA of the trainable weights used for evaluation.")
    eval_every: int = field(50, help="Steps between evaluations on the validation set (and at the end).")
    # 5 evaluations without improvement: a common early-stopping patience.
    patience: int = field(5, help="Evaluations without a better validation macro F1 before training stops.")
    eval_batch_size: int = field(64, help="Images per forward pass in evaluation.")
    probe: LinearProbeConfig = field(default_factory=LinearProbeConfig, help="The linear-probe baseline.")
    checkpoint_every: int = field(100, help="Steps between checkpoints under out/checkpoints.")
    keep_checkpoints: int = field(2, help="Checkpoints kept.")
    log_every: int = field(10, help="Steps between logged train/* metrics.")
    seed: int = field(0, help="Seed of the data order, MixUp draws and pair batches.")

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "pair_batch_size", "eval_every", "patience",
                     "eval_batch_size", "checkpoint_every", "keep_checkpoints", "log_every"):
            check_range(name, getattr(self, name), ge=1)
        check_range("warmup_steps", self.warmup_steps, ge=0)
        check_range("focal_gamma", self.focal_gamma, ge=0.0)
        if self.focal_alpha is not None:
            check_range("focal_alpha", self.focal_alpha, ge=0.0, le=1.0)
        check_range("lambda_pairwise", self.lambda_pairwise, ge=0.0)
        check_range("mixup_alpha", self.mixup_alpha, gt=0.0)
        check_range("mixup_prob", self.mixup_prob, ge=0.0, le=1.0)
        for name in ("lr_backbone", "lr_fusion", "lr_heads"):
            check_range(name, getattr(self, name), ge=0.0)
        if self.lr_fusion == 0.0 and self.lr_heads == 0.0:
            raise ValueError("lr_fusion and lr_heads: both 0, so nothing but the backbone would train")
        if self.model.backbone_mode != "frozen" and self.lr_backbone == 0.0:
            raise ValueError(
                f"lr_backbone: 0 with model.backbone_mode {self.model.backbone_mode!r}; "
                "use backbone_mode 'frozen' for a backbone that does not train"
            )
        check_range("weight_decay", self.weight_decay, ge=0.0)
        check_range("grad_clip", self.grad_clip, ge=0.0)
        check_range("ema_decay", self.ema_decay, ge=0.0, lt=1.0)
        if self.overall_weights is not None:
            if len(self.overall_weights) != len(self.model.heads):
                raise ValueError(
                    f"overall_weights: {len(self.overall_weights)} weights for the "
                    f"{len(self.model.heads)} heads {list(self.model.heads)}"
                )
            for i, w in enumerate(self.overall_weights):
                check_range(f"overall_weights[{i}]", w, ge=0.0)
            if sum(self.overall_weights) <= 0.0:
                raise ValueError(f"overall_weights: expected a positive sum, got {list(self.overall_weights)}")

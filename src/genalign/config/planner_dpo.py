"""Configs of the planner-dpo stages (the pipeline in `pipelines/planner_dpo.py`).

    prepare-planner  dataset + held-out dataset + base planner (warm-started on the tiny preset)
    shard-planner    seeded split of the dataset ids into one shard per iteration
    rollout-planner  K plans per question of one sub-shard of the iteration's shard
    execute-plans    every instruction of every plan turned into an image
    label-plans      the critic's score of every plan
    pairs            best vs worst plan per question (`genalign.config.pairs.MinePairsConfig`)
    accumulate-pairs the pairs of iterations 0..i
    train-planner    DPO of a fresh adapter from the base, then the merged planner
    evaluate-planner held-out score of a planner, appended to the run's history and plots
    register         the final adapter in the MLflow registry (`RegisterModelConfig`)

No torch here: the configs load in the pipeline compiler and in the components' bodies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from genalign.config.base import Config, check_range, field
from genalign.config.diffusers_edit import DiffusersEditConfig
from genalign.config.judge import JudgeConfig
from genalign.config.lm_dpo import LMDPOConfig
from genalign.config.planner import PlannerSamplingConfig, PlannerSFTConfig
from genalign.config.planner_world import ExecutorConfig, OracleConfig, SpatialDataConfig
from genalign.config.refs import check_model_ref

TINY_PLANNER = "tiny://tiny-qwen2-vl"


@dataclass(frozen=True)
class PreparePlannerConfig(Config):
    """The questions (train and held-out) and the base planner."""

    source: Literal["synthetic", "mmsi"] = field(
        "synthetic",
        help="synthetic: procedural spatial-QA scenes rendered by the project (the tiny "
        "preset; the scene oracle can score them); mmsi: an MMSI-Bench-format file (`data`).",
    )
    data: str | None = field(
        None,
        help="mmsi: the data file (.jsonl or .json list), a path or s3:// reference; images "
        "are relative to its folder. Ignored for synthetic data.",
    )
    train_samples: int = field(240, help="Questions for rollouts (split over the iterations).")
    eval_samples: int = field(64, help="Held-out questions, never rolled out for training.")
    seed: int = field(0, help="Seed of the synthetic scenes, or of the mmsi train/eval split.")
    world: SpatialDataConfig = field(
        default_factory=SpatialDataConfig, help="The synthetic scenes (source: synthetic)."
    )
    base_model: str = field(
        TINY_PLANNER,
        help="The planner: a model reference (path, s3://, mlflow://models/<name>@<alias>, "
        "hf://, tiny://tiny-qwen2-vl) of a Qwen2-VL, Qwen2.5-VL, Qwen3-VL or Qwen3-VL-MoE. A "
        "registered adapter (e.g. mlflow://models/<name>@champion, without warm_start) is merged "
        "into its base here and a fresh adapter trains on the merged planner (the reference and "
        "the baseline are the champion); an alias is pinned to the version it names now.",
    )
    warm_start: PlannerSFTConfig | None = field(
        None,
        help="Supervised warm start on well-formed plans with random views before DPO (a "
        "random-init tiny planner needs it; a real planner does not): null skips it.",
    )

    def __post_init__(self) -> None:
        if self.train_samples < 1 or self.eval_samples < 1:
            raise ValueError("train_samples and eval_samples must be >= 1")
        if self.source == "mmsi" and not self.data:
            raise ValueError("source 'mmsi' needs data: the MMSI-Bench-format file")
        check_model_ref(self.base_model, where="base_model")


@dataclass(frozen=True)
class ShardPlannerConfig(Config):
    """Shuffle the dataset ids with a seed and split them into one shard per iteration."""

    num_shards: int = field(5, help="Shards = on-policy iterations (the issue's N, default 5).")
    seed: int = field(0, help="Seed of the shuffle.")

    def __post_init__(self) -> None:
        if self.num_shards < 1:
            raise ValueError(f"num_shards: expected an integer >= 1, got {self.num_shards}")


@dataclass(frozen=True)
class RolloutPlannerConfig(Config):
    """Sampling K plans per question from the current planner."""

    sampling: PlannerSamplingConfig = field(
        default_factory=PlannerSamplingConfig, help="K, temperature, max_new_tokens, seed."
    )


@dataclass(frozen=True)
class ExecutePlansConfig(Config):
    """Turning every instruction into an image."""

    executor: Literal["render-view", "diffusers-edit"] = field(
        "render-view",
        help="Executor by name (`genalign.executors.EXECUTORS`): render-view renders the "
        "synthetic scene from the named viewpoint (CPU); diffusers-edit edits the question's "
        "first image as the instruction asks with a diffusers pipeline (Flux.2 Klein, GPU).",
    )
    render_view: ExecutorConfig = field(
        default_factory=ExecutorConfig, help="render-view's settings (size, timeout)."
    )
    diffusers_edit: DiffusersEditConfig = field(
        default_factory=DiffusersEditConfig,
        help="diffusers-edit's settings (model reference, steps, guidance, size, timeout).",
    )

    def options(self) -> Config:
        """The settings of the chosen executor."""
        return self.render_view if self.executor == "render-view" else self.diffusers_edit


@dataclass(frozen=True)
class CriticConfig(Config):
    """Who scores a plan's images: the ground truth of the synthetic scenes, or an MLLM."""

    critic: Literal["scene-oracle", "mllm-judge"] = field(
        "scene-oracle",
        help="scene-oracle: whether each instruction's view reveals the answer (synthetic "
        "data only); mllm-judge: a Qwen-VL critic's confidence, explicit 1-10 score, or both.",
    )
    oracle: OracleConfig = field(default_factory=OracleConfig, help="The scene oracle's rule.")
    judge: JudgeConfig = field(default_factory=JudgeConfig, help="The MLLM critic's method.")
    judge_model: str = field(
        TINY_PLANNER, help="Model reference of the MLLM critic (mllm-judge)."
    )

    def __post_init__(self) -> None:
        check_model_ref(self.judge_model, where="judge_model")


@dataclass(frozen=True)
class LabelPlansConfig(Config):
    """Scoring every plan of a sub-shard."""

    critic: CriticConfig = field(default_factory=CriticConfig, help="The critic.")



@dataclass(frozen=True)
class TrainPlannerConfig(Config):
    """DPO of a fresh adapter from the base planner on the accumulated pairs."""

    dpo: LMDPOConfig = field(default_factory=LMDPOConfig, help="trl DPOTrainer settings.")


@dataclass(frozen=True)
class EvaluatePlannerConfig(Config):
    """A planner on the held-out questions: same seeds for every model of the run."""

    sampling: PlannerSamplingConfig = field(
        default_factory=lambda: PlannerSamplingConfig(k=4, temperature=0.7, seed=10_000),
        help="Plans per held-out question and how they are sampled (the same for every model).",
    )
    execute: ExecutePlansConfig = field(default_factory=ExecutePlansConfig, help="The executor.")
    critic: CriticConfig = field(default_factory=CriticConfig, help="The critic.")
    answerer: Literal["oracle", "critic"] = field(
        "oracle",
        help="Who answers the question from the original and generated images for the "
        "downstream accuracy: oracle = right when a view reveals the answer, else a seeded "
        "guess among the options (synthetic data); critic = the MLLM critic's most likely "
        "option letter.",
    )
    min_improvement: float = field(
        0.05,
        help="Gate: the final planner's reveal share must beat the base's by at least this.",
    )
    gallery: int = field(6, help="Held-out questions shown with their plans and views.")

    def __post_init__(self) -> None:
        if self.gallery < 0:
            raise ValueError(f"gallery: expected an integer >= 0, got {self.gallery}")
        # A difference of two reveal shares, each in [0, 1].
        check_range("min_improvement", self.min_improvement, ge=-1, le=1)

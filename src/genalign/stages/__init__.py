"""Pipeline stages: `run(cfg, *, <inputs>, <outputs>, tracker) -> StageResult` on local paths.

Each stage is reachable three ways: `genalign stage <name> ...` from a shell, a KFP
component in `components/`, and plain Python. `run_stage` is the one entry point the
first two share: it validates the config before any work, opens the MLflow child run,
calls the stage, and closes the run with its status.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genalign.config.base import Config, ConfigError, flatten


@dataclass(frozen=True)
class StageSpec:
    module: str  # genalign.stages.<module>
    config: str  # "<module path>:<ClassName>" so that listing stages imports no torch
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: tuple[str, ...] = ()
    help: str = ""
    list_inputs: tuple[str, ...] = ()  # inputs that take several artifacts (fan-in)
    optional: tuple[str, ...] = ()  # inputs that may be left out (None)


# The stages, by the name used on the command line and in MLflow child runs.
STAGES: dict[str, StageSpec] = {
    "prepare-parts": StageSpec(
        "part_dpo.prepare_parts", "genalign.config.part_dpo:PreparePartsConfig",
        inputs=(), outputs=("conditions", "eval_conditions", "model"),
        help="procedural conditions (train + held-out) and the base generator",
    ),
    "rollout-parts": StageSpec(
        "part_dpo.rollout_parts", "genalign.config.part_dpo:RolloutPartsConfig",
        inputs=("conditions", "model"), outputs=("samples",), params=("shard", "num_shards"),
        help="K samples per condition of one shard: meshes (GLB), latents and conditioning",
    ),
    "score-samples": StageSpec(
        "shared.score_samples", "genalign.config.score:ScoreSamplesConfig",
        inputs=("samples",), outputs=("scored",),
        help="inter-part penetration of every sample",
    ),
    "mine-pairs": StageSpec(
        "shared.mine_pairs", "genalign.config.pairs:MinePairsConfig",
        inputs=("scored",), outputs=("pairs",), list_inputs=("scored",),
        help="win/loss pairs from one or more scored shards",
    ),
    "train-flow-dpo": StageSpec(
        "part_dpo.train_flow_dpo", "genalign.config.flow_dpo:TrainFlowDPOConfig",
        inputs=("model", "pairs"), outputs=("adapter",),
        help="flow-matching DPO of a LoRA/DoRA adapter on the pairs",
    ),
    "evaluate-parts": StageSpec(
        "part_dpo.evaluate_parts", "genalign.config.part_dpo:EvaluatePartsConfig",
        inputs=("model", "adapter", "conditions"), outputs=("report",),
        help="base vs tuned on held-out conditions, same seeds; report with plots",
    ),
    "register-model": StageSpec(
        "shared.register_model", "genalign.config.register:RegisterModelConfig",
        inputs=("adapter", "report", "pairs"), outputs=("registration",),
        help="the adapter as an MLflow model version with lineage and aliases",
    ),
    # planner-dpo
    "prepare-planner": StageSpec(
        "planner_dpo.prepare_planner", "genalign.config.planner_dpo:PreparePlannerConfig",
        inputs=(), outputs=("dataset", "eval_dataset", "model"),
        help="spatial questions (train + held-out) and the base planner (warm-started)",
    ),
    "shard-planner": StageSpec(
        "planner_dpo.shard_planner", "genalign.config.planner_dpo:ShardPlannerConfig",
        inputs=("dataset",), outputs=("shards",),
        help="seeded split of the questions into one shard per iteration",
    ),
    "rollout-planner": StageSpec(
        "planner_dpo.rollout_planner", "genalign.config.planner_dpo:RolloutPlannerConfig",
        inputs=("dataset", "shards", "model"), outputs=("samples",),
        params=("iteration", "subshard", "num_subshards"),
        help="K plans per question of one sub-shard of the iteration's shard",
    ),
    "execute-plans": StageSpec(
        "planner_dpo.execute_plans", "genalign.config.planner_dpo:ExecutePlansConfig",
        inputs=("samples", "dataset"), outputs=("executed",),
        help="every instruction of every plan turned into an image",
    ),
    "label-plans": StageSpec(
        "planner_dpo.label_plans", "genalign.config.planner_dpo:LabelPlansConfig",
        inputs=("executed", "dataset"), outputs=("scored",),
        help="the critic's score of every plan",
    ),
    "accumulate-pairs": StageSpec(
        "shared.accumulate_pairs", "genalign.config.pairs:AccumulatePairsConfig",
        inputs=("pairs", "previous"), outputs=("accumulated",), optional=("previous",),
        help="the pairs of iterations 0..i",
    ),
    "train-planner": StageSpec(
        "planner_dpo.train_planner", "genalign.config.planner_dpo:TrainPlannerConfig",
        inputs=("model", "pairs"), outputs=("adapter", "merged"),
        help="trl DPO of a fresh adapter from the base, and the merged planner",
    ),
    "evaluate-planner": StageSpec(
        "planner_dpo.evaluate_planner", "genalign.config.planner_dpo:EvaluatePlannerConfig",
        inputs=("model", "eval_dataset", "history", "pairs", "adapter"), outputs=("report",),
        params=("iteration",), optional=("history", "pairs", "adapter"),
        help="held-out score of a planner vs the base; cumulative report with plots",
    ),
}


STAGE_TAG = "genalign.stage_name"  # the stage ("rollout-planner"); genalign.stage is the run label
ITERATION_TAG = "genalign.iteration"
SHARD_TAG = "genalign.shard"
OUTPUT_TAG = "genalign.output."


@dataclass
class StageResult:
    metrics: dict[str, float]
    summary: dict[str, Any]


def stage_spec(name: str) -> StageSpec:
    if name not in STAGES:
        raise ConfigError(f"unknown stage {name!r}; valid stages: {sorted(STAGES)}")
    return STAGES[name]


def config_class(spec: StageSpec) -> type[Config]:
    module, _, cls = spec.config.partition(":")
    return getattr(importlib.import_module(module), cls)


# Fault injection for recovery tests and drills: "<stage>" or "<stage>:<iteration>" makes
# that stage fail before it starts, as a crashed or stopped task would.
FAIL_ENV = "GENALIGN_FAIL_STAGE"


class InjectedFailure(RuntimeError):
    """The failure GENALIGN_FAIL_STAGE asked for."""


def _fail_if_asked(name: str, params: dict[str, Any], tags: dict[str, str] | None) -> None:
    import os

    want = os.environ.get(FAIL_ENV)
    if not want:
        return
    stage, _, iteration = want.partition(":")
    found = params.get("iteration", (tags or {}).get(ITERATION_TAG))
    if stage == name and (not iteration or str(found) == iteration):
        raise InjectedFailure(f"{FAIL_ENV}={want}: stage {name} fails on purpose")


def run_stage(
    name: str,
    config: dict[str, Any],
    *,
    inputs: dict[str, Any],
    outputs: dict[str, str],
    params: dict[str, Any] | None = None,
    tracking: dict[str, str] | None = None,
    metrics_output: Any = None,
    output_uris: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
) -> StageResult:
    """Validate, track and run one stage. `tracking` = {experiment, pipeline_run, pipeline}
    opens an MLflow child run under the pipeline's parent; None logs nowhere.
    `metrics_output` (a KFP `Output[Metrics]`) receives the stage's metrics too;
    `output_uris` (the outputs' artifact URIs) and `tags` are set on the child run when it
    succeeds."""
    from genalign.tracking import MlflowTracker, NullTracker

    spec = stage_spec(name)
    cfg = config_class(spec).from_dict(config, where=f"{name} config")
    params = params or {}
    inputs = {k: v for k, v in inputs.items() if v is not None}
    for group, names, given, optional in (
        ("input", spec.inputs, inputs, spec.optional), ("output", spec.outputs, outputs, ()),
        ("parameter", spec.params, params, ()),
    ):
        if not set(names) - set(optional) <= set(given) <= set(names):
            raise ConfigError(f"stage {name}: {group}s {sorted(given)} given, expected {sorted(names)}")
    if tracking:
        # The child run's name: the stage, its iteration and shard ("rollout-planner-2-0").
        suffix = [tags[ITERATION_TAG]] if tags and ITERATION_TAG in tags else []
        suffix += [str(params[k]) for k in ("iteration", "shard", "subshard") if k in params]
        suffix += [tags[SHARD_TAG]] if tags and SHARD_TAG in tags else []
        tracker = MlflowTracker.for_stage(
            experiment=tracking["experiment"],
            pipeline_run=tracking["pipeline_run"],
            stage=name + "".join(f"-{v}" for v in suffix),
            tags={"genalign.pipeline": tracking.get("pipeline", "")},
        )
    else:
        tracker = NullTracker()
    tracker.log_params(flatten(cfg.to_dict()))
    _fail_if_asked(name, params, tags)
    module = importlib.import_module(f"genalign.stages.{spec.module}")
    kwargs: dict[str, Any] = {k: None for k in spec.optional}
    kwargs.update({k: ([Path(p) for p in v] if isinstance(v, list) else Path(v)) for k, v in inputs.items()})
    kwargs.update({k: Path(v) for k, v in outputs.items()})
    kwargs.update(params)
    try:
        result = module.run(cfg, **kwargs, tracker=tracker)
    except BaseException:
        if tracking:
            tracker.end("FAILED")
        raise
    tracker.log_metrics(result.metrics)
    if tracking:
        # What a later run resumes from (`genalign run ... --resume-from`): the stage, its
        # iteration and where its outputs are, recorded only once they are complete.
        done = {STAGE_TAG: name, **(tags or {}), **{f"{OUTPUT_TAG}{k}": v for k, v in (output_uris or {}).items()}}
        if "iteration" in params:
            done[ITERATION_TAG] = str(params["iteration"])
        tracker.set_tags(done)
        tracker.end("FINISHED")
    if metrics_output is not None:
        for key, value in result.metrics.items():
            metrics_output.log_metric(key, value)
    return result

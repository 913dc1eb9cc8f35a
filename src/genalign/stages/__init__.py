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


# The stages, by the name used on the command line and in MLflow child runs.
STAGES: dict[str, StageSpec] = {
    "prepare-parts": StageSpec(
        "prepare_parts", "genalign.config.part_dpo:PreparePartsConfig",
        inputs=(), outputs=("conditions", "eval_conditions", "model"),
        help="procedural conditions (train + held-out) and the base generator",
    ),
    "rollout-parts": StageSpec(
        "rollout_parts", "genalign.config.part_dpo:RolloutPartsConfig",
        inputs=("conditions", "model"), outputs=("samples",), params=("shard", "num_shards"),
        help="K samples per condition of one shard: meshes (GLB), latents and conditioning",
    ),
    "score": StageSpec(
        "score", "genalign.config.score:PenetrationConfig",
        inputs=("samples",), outputs=("scored",),
        help="inter-part penetration of every sample",
    ),
    "pairs": StageSpec(
        "pairs", "genalign.config.pairs:PairsConfig",
        inputs=("scored",), outputs=("pairs",), list_inputs=("scored",),
        help="win/loss pairs from one or more scored shards",
    ),
    "train-flow-dpo": StageSpec(
        "train_flow_dpo", "genalign.config.flow_dpo:FlowDPOConfig",
        inputs=("model", "pairs"), outputs=("adapter",),
        help="flow-matching DPO of a LoRA/DoRA adapter on the pairs",
    ),
    "evaluate-parts": StageSpec(
        "evaluate_parts", "genalign.config.part_dpo:EvaluatePartsConfig",
        inputs=("model", "adapter", "conditions"), outputs=("report",),
        help="base vs tuned on held-out conditions, same seeds; report with plots",
    ),
    "register": StageSpec(
        "register", "genalign.config.part_dpo:RegisterConfig",
        inputs=("adapter", "report", "pairs"), outputs=("registration",),
        help="the adapter as an MLflow model version with lineage and aliases",
    ),
}


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


def run_stage(
    name: str,
    config: dict[str, Any],
    *,
    inputs: dict[str, Any],
    outputs: dict[str, str],
    params: dict[str, Any] | None = None,
    tracking: dict[str, str] | None = None,
    metrics_output: Any = None,
) -> StageResult:
    """Validate, track and run one stage. `tracking` = {experiment, pipeline_run, pipeline}
    opens an MLflow child run under the pipeline's parent; None logs nowhere.
    `metrics_output` (a KFP `Output[Metrics]`) receives the stage's metrics too."""
    from genalign.tracking import MlflowTracker, NullTracker

    spec = stage_spec(name)
    cfg = config_class(spec).from_dict(config, where=f"{name} config")
    params = params or {}
    for group, names, given in (
        ("input", spec.inputs, inputs), ("output", spec.outputs, outputs), ("parameter", spec.params, params)
    ):
        if set(given) != set(names):
            raise ConfigError(f"stage {name}: {group}s {sorted(given)} given, expected {sorted(names)}")
    if tracking:
        tracker = MlflowTracker.for_stage(
            experiment=tracking["experiment"],
            pipeline_run=tracking["pipeline_run"],
            stage=name + (f"-{params['shard']}" if "shard" in params else ""),
            tags={"genalign.pipeline": tracking.get("pipeline", "")},
        )
    else:
        tracker = NullTracker()
    tracker.log_params(flatten(cfg.to_dict()))
    module = importlib.import_module(f"genalign.stages.{spec.module}")
    kwargs = {k: ([Path(p) for p in v] if isinstance(v, list) else Path(v)) for k, v in inputs.items()}
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
        tracker.end("FINISHED")
    if metrics_output is not None:
        for key, value in result.metrics.items():
            metrics_output.log_metric(key, value)
    return result

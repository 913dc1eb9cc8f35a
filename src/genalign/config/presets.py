"""Pipeline presets: `configs/<pipeline>/<preset>.yaml`, one config mapping per stage.

`load_preset` applies `--set section.key=value` overrides, then validates every section
against its dataclass before anything runs, so a typo fails in a second, naming the
file and the key, not an hour into a run.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from genalign.config.base import ConfigError

# pipeline -> stage section -> config class; and the pipeline's top-level scalars.
PIPELINE_SECTIONS: dict[str, dict[str, str]] = {
    "part-dpo": {
        "prepare": "genalign.config.part_dpo:PreparePartsConfig",
        "rollout": "genalign.config.part_dpo:RolloutPartsConfig",
        "score": "genalign.config.score:ScoreSamplesConfig",
        "pairs": "genalign.config.pairs:MinePairsConfig",
        "train": "genalign.config.flow_dpo:TrainFlowDPOConfig",
        "evaluate": "genalign.config.part_dpo:EvaluatePartsConfig",
        "register": "genalign.config.register:RegisterModelConfig",
    },
    "planner-dpo": {
        "prepare": "genalign.config.planner_dpo:PreparePlannerConfig",
        "shard": "genalign.config.planner_dpo:ShardPlannerConfig",
        "rollout": "genalign.config.planner_dpo:RolloutPlannerConfig",
        "execute": "genalign.config.planner_dpo:ExecutePlansConfig",
        "label": "genalign.config.planner_dpo:LabelPlansConfig",
        "pairs": "genalign.config.pairs:MinePairsConfig",
        "accumulate": "genalign.config.pairs:AccumulatePairsConfig",
        "train": "genalign.config.planner_dpo:TrainPlannerConfig",
        "evaluate": "genalign.config.planner_dpo:EvaluatePlannerConfig",
        "register": "genalign.config.register:RegisterModelConfig",
    },
}
PIPELINE_SCALARS: dict[str, dict[str, type]] = {
    "part-dpo": {"experiment": str, "num_shards": int},
    "planner-dpo": {"experiment": str, "subshards": int},
}


def pipeline_structure(pipeline: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """What the pipeline's shape depends on, fixed when it is compiled: planner-dpo unrolls
    one round per shard (`shard.num_shards` iterations)."""
    if pipeline == "planner-dpo":
        return {"iterations": int(arguments["shard"].get("num_shards", 5))}
    return {}


def configs_dir() -> Path:
    env = os.environ.get("GENALIGN_CONFIGS")
    if env:
        return Path(env)
    for root in (Path.cwd(), Path(__file__).resolve().parents[3]):
        if (root / "configs").is_dir():
            return root / "configs"
    raise ConfigError("no configs/ directory found; run from the repository root or set GENALIGN_CONFIGS")


def _class(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def pipeline_names() -> list[str]:
    return sorted(PIPELINE_SECTIONS)


def preset_path(pipeline: str, preset: str) -> Path:
    if preset.endswith((".yaml", ".yml")):
        return Path(preset)
    return configs_dir() / pipeline / f"{preset}.yaml"


def parse_override(text: str) -> tuple[list[str], Any]:
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. train.beta=500")
    return key.split("."), yaml.safe_load(raw)


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply `section.key=value` overrides to a nested mapping in place (and return it)."""
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: {k} is not a mapping")
        node[keys[-1]] = value
    return data


def load_preset(pipeline: str, preset: str = "tiny", overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The validated, fully explicit arguments of `pipeline` for `preset` (+ overrides)."""
    import yaml

    if pipeline not in PIPELINE_SECTIONS:
        raise ConfigError(f"unknown pipeline {pipeline!r}; valid pipelines: {pipeline_names()}")
    path = preset_path(pipeline, preset)
    if not path.is_file():
        available = sorted(p.stem for p in (configs_dir() / pipeline).glob("*.yaml"))
        raise ConfigError(f"{path}: no such preset; presets of {pipeline}: {available}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    apply_overrides(data, overrides)
    sections, scalars = PIPELINE_SECTIONS[pipeline], PIPELINE_SCALARS[pipeline]
    unknown = sorted(set(data) - set(sections) - set(scalars))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; valid keys are {sorted(sections) + sorted(scalars)}")
    args: dict[str, Any] = {}
    for name, cls_path in sections.items():
        args[name] = _class(cls_path).from_dict(data.get(name) or {}, where=f"{path}: {name}").to_args()
    for name, tp in scalars.items():
        if name in data:
            if not isinstance(data[name], tp) or isinstance(data[name], bool):
                raise ConfigError(f"{path}: {name}: expected {tp.__name__}, got {data[name]!r}")
            args[name] = data[name]
    return args

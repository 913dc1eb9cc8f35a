"""The pipelines, each declared once, and the one list every consumer reads.

`genalign stages | run | compile | submit`, the run summary, presets, cluster-profile
validation, resume, `make pipelines` and the contract tests all read `PIPELINES` and
`STAGES`. Adding a pipeline: its declaration module here plus one line in `PIPELINES`
(docs/architecture.md lists every file a new pipeline brings).
"""

from __future__ import annotations

from genalign.config.base import ConfigError
from genalign.config.pipelines import hand_pose, part_dpo, planner_dpo, voxel_sds
from genalign.config.pipelines.spec import Pipeline, Resume, Scalar, Stage

PIPELINES: dict[str, Pipeline] = {
    p.name: p
    for p in (
        part_dpo.PIPELINE,
        planner_dpo.PIPELINE,
        hand_pose.PIPELINE,
        voxel_sds.PIPELINE,
    )
}


def _all_stages() -> dict[str, Stage]:
    stages: dict[str, Stage] = {}
    for p in PIPELINES.values():
        for stage in p.sections.values():
            if stages.setdefault(stage.name, stage) is not stage:
                raise RuntimeError(f"stage {stage.name!r} is declared twice, differently ({p.name})")
    return dict(sorted(stages.items()))


# Every stage of every pipeline, by its one name.
STAGES: dict[str, Stage] = _all_stages()


def get_pipeline(name: str) -> Pipeline:
    if name not in PIPELINES:
        raise ConfigError(f"unknown pipeline {name!r}; valid pipelines: {sorted(PIPELINES)}")
    return PIPELINES[name]


def get_stage(name: str) -> Stage:
    if name not in STAGES:
        raise ConfigError(f"unknown stage {name!r}; valid stages: {sorted(STAGES)}")
    return STAGES[name]


__all__ = ["PIPELINES", "STAGES", "Pipeline", "Resume", "Scalar", "Stage", "get_pipeline", "get_stage"]

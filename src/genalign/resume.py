"""Resuming a pipeline run with the outputs of the stages an earlier run finished.

Every stage's MLflow child run records, once the stage has succeeded, its stage name
(`genalign.stage_name`), its iteration (`genalign.iteration`) and the URI of each output
(`genalign.output.<name>`). `resume_plan` reads them back for the run being resumed
(by its KFP run id, the parent run's `genalign.pipeline_run` tag) and returns what the
pipeline's factory imports (`dsl.importer`) instead of recomputing: the outputs its
declaration lists under `resume` (`genalign.config.pipelines`), keyed "<stage>.<output>".

    genalign run planner-dpo --preset tiny --resume-from <run id> --resume-iter 2
    genalign run part-dpo --preset tiny --resume-from <run id>
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from genalign.config.base import ConfigError
from genalign.tracking import ITERATION_TAG, OUTPUT_TAG, PIPELINE_RUN_TAG, STAGE_TAG


def finished_outputs(experiment: str, pipeline_run: str) -> list[dict[str, Any]]:
    """[{stage, iteration, outputs: {name: uri}}] of the run's succeeded stages."""
    from genalign.tracking import _client

    client = _client()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ConfigError(f"--resume-from {pipeline_run}: no MLflow experiment {experiment!r}")
    children = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{PIPELINE_RUN_TAG}.child` = '{pipeline_run}' and attributes.status = 'FINISHED'",
        max_results=5000,
    )
    if not children:
        raise ConfigError(f"--resume-from {pipeline_run}: no finished stage of that pipeline run in experiment "
                          f"{experiment!r} (the run id is the parent MLflow run's {PIPELINE_RUN_TAG} tag)")
    out = []
    for child in children:
        tags = child.data.tags
        outputs = {k[len(OUTPUT_TAG):]: v for k, v in tags.items() if k.startswith(OUTPUT_TAG)}
        if STAGE_TAG in tags and outputs:
            it = tags.get(ITERATION_TAG)
            out.append({"stage": tags[STAGE_TAG], "iteration": int(it) if it is not None else None,
                        "outputs": outputs})
    return out


def resume_plan(pipeline: str, experiment: str, pipeline_run: str, iteration: int | None) -> dict[str, Any]:
    """{"iteration": k or None, "run": id, "uris": {"<stage>.<output>": uri}} to continue
    `pipeline_run`: at iteration k for a pipeline with iterations, else after the last
    resume point it finished."""
    from genalign.config.pipelines import get_pipeline

    decl = get_pipeline(pipeline)
    if decl.iterations is not None and iteration is None:
        raise ConfigError(f"--resume-from: {pipeline} runs in iterations; add --resume-iter K (K >= 1)")
    if decl.iterations is None and iteration is not None:
        raise ConfigError(f"--resume-iter: {pipeline} has no iterations; --resume-from alone resumes it")
    if iteration is not None and iteration < 1:
        raise ConfigError(f"--resume-iter {iteration}: expected k >= 1 (k = 0 is a new run)")
    done = finished_outputs(experiment, pipeline_run)
    uris: dict[str, str] = {}
    for point in decl.resume:
        want = None if point.offset is None else iteration + point.offset
        found = [d for d in done if d["stage"] == point.stage and (want is None or d["iteration"] == want)]
        if not found and point.optional:
            continue
        if not found:
            finished = sorted({d["stage"] + ("" if d["iteration"] is None else f" {d['iteration']}") for d in done})
            raise ConfigError(
                f"--resume-from {pipeline_run}: the run has no finished {point.stage}"
                + (f" of iteration {want}" if want is not None else "")
                + f", which a resumed run starts from; its finished stages: {finished or 'none'}"
            )
        for name in point.outputs:
            uri = found[-1]["outputs"][name]
            if "://" not in uri and not Path(uri).exists():
                raise ConfigError(f"--resume-from {pipeline_run}: {point.stage} output {name} is gone: {uri}")
            uris[f"{point.stage}.{name}"] = uri
    return {"iteration": iteration, "run": pipeline_run, "uris": uris}

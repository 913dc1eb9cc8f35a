"""Resuming an iterative pipeline run from iteration k with the artifacts of iterations < k.

Every stage's MLflow child run records, once the stage has succeeded, its stage name
(`genalign.stage_name`), its iteration (`genalign.iteration`) and the URI of each output
(`genalign.output.<name>`). `resume_plan` reads them back for the run being resumed
(by its KFP run id, the parent run's `genalign.pipeline_run` tag) and returns what
`pipelines.planner_dpo.make_planner_dpo(resume=...)` imports instead of recomputing:

    prepare-planner       dataset, eval_dataset, model (the base planner)
    shard-planner         shards
    train-planner k-1     merged (the planner iteration k rolls out with)
    accumulate-pairs k-1  accumulated (the pairs iteration k adds to)
    evaluate-planner k-1  report (the history the next evaluations append to)

    genalign run planner-dpo --preset tiny --resume-from <run id> --resume-iter 2
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from genalign.config.base import ConfigError
from genalign.stages import ITERATION_TAG, OUTPUT_TAG, STAGE_TAG
from genalign.tracking import PIPELINE_RUN_TAG

NEEDED = (
    ("prepare-planner", None, ("dataset", "eval_dataset", "model")),
    ("shard-planner", None, ("shards",)),
    ("train-planner", -1, ("merged",)),
    ("accumulate-pairs", -1, ("accumulated",)),
    ("evaluate-planner", -1, ("report",)),
)


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


def resume_plan(experiment: str, pipeline_run: str, iteration: int) -> dict[str, Any]:
    """{"iteration": k, "run": id, "uris": {name: uri}} to continue `pipeline_run` at k."""
    if iteration < 1:
        raise ConfigError(f"--resume-iter {iteration}: expected k >= 1 (k = 0 is a new run)")
    done = finished_outputs(experiment, pipeline_run)
    uris: dict[str, str] = {}
    for stage, offset, names in NEEDED:
        want = None if offset is None else iteration + offset
        found = [d for d in done if d["stage"] == stage and (want is None or d["iteration"] == want)]
        if not found:
            finished = sorted({d["iteration"] for d in done if d["stage"] == "evaluate-planner"} - {-1})
            raise ConfigError(
                f"--resume-from {pipeline_run} --resume-iter {iteration}: the run has no finished {stage}"
                + (f" of iteration {want}" if want is not None else "")
                + f"; its finished iterations: {finished or 'none'}"
            )
        for name in names:
            uri = found[-1]["outputs"][name]
            if "://" not in uri and not Path(uri).exists():
                raise ConfigError(f"--resume-from {pipeline_run}: {stage} output {name} is gone: {uri}")
            uris[name] = uri
    return {"iteration": iteration, "run": pipeline_run, "uris": uris}

"""Components every pipeline shares: scoring, pair mining, pair accumulation, registering
a model, and closing the pipeline's MLflow run. Each body is one `run_stage` call given
the KFP artifacts themselves: the stage's metrics go into the KFP `Metrics` output and
its outputs' URIs onto the MLflow child run, so a later run can resume from them.

KFP ships only a component's function source, so `pipeline` (the MLflow tag of the
run) arrives as a parameter rather than a module constant.
"""

from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from components import images


@dsl.component(base_image=images.CPU, install_kfp_package=False)
def score_samples(
    config: dict,
    experiment: str,
    pipeline_run: str,
    pipeline: str,
    samples: Input[Artifact],
    scored: Output[Artifact],
    metrics: Output[Metrics],
    shard: int = -1,
):
    """Every sample scored by the configured scorer (inter-part penetration in part-dpo)."""
    from genalign.stages import run_stage

    run_stage(
        "score-samples", config, inputs={"samples": samples}, outputs={"scored": scored},
        tracking={"experiment": experiment, "pipeline_run": pipeline_run, "pipeline": pipeline},
        metrics_output=metrics,
        tags={"genalign.shard": str(shard)} if shard >= 0 else None,
    )


@dsl.component(base_image=images.CPU, install_kfp_package=False)
def mine_pairs(
    config: dict,
    experiment: str,
    pipeline_run: str,
    pipeline: str,
    scored: Input[List[Artifact]],
    pairs: Output[Artifact],
    metrics: Output[Metrics],
    iteration: int = -1,
):
    """Win/loss pairs from all scored shards, with counts of everything dropped and why
    (for text policies also in trl and Qwen-VL-Series-Finetune formats). `iteration`
    (-1: a pipeline without iterations) names the MLflow child run and tags it for resume."""
    from genalign.stages import run_stage

    run_stage(
        "mine-pairs", config, inputs={"scored": list(scored)}, outputs={"pairs": pairs},
        tracking={"experiment": experiment, "pipeline_run": pipeline_run, "pipeline": pipeline},
        metrics_output=metrics,
        tags={"genalign.iteration": str(iteration)} if iteration >= 0 else None,
    )


@dsl.component(base_image=images.CPU, install_kfp_package=False)
def accumulate_pairs(
    config: dict,
    experiment: str,
    pipeline_run: str,
    pipeline: str,
    iteration: int,
    pairs: Input[Artifact],
    accumulated: Output[Artifact],
    metrics: Output[Metrics],
    previous: Input[Artifact] = None,
):
    """The pairs of iterations 0..i (this iteration's and the previous accumulation)."""
    from genalign.stages import run_stage

    run_stage(
        "accumulate-pairs", config,
        inputs={"pairs": pairs, "previous": previous},
        outputs={"accumulated": accumulated},
        tracking={"experiment": experiment, "pipeline_run": pipeline_run, "pipeline": pipeline},
        metrics_output=metrics,
        tags={"genalign.iteration": str(iteration)},
    )


@dsl.component(base_image=images.CPU, install_kfp_package=False)
def register_model(
    config: dict,
    experiment: str,
    pipeline_run: str,
    pipeline: str,
    adapter: Input[Model],
    report: Input[Artifact],
    pairs: Input[Artifact],
    model: Input[Model],
    registration: Output[Artifact],
) -> str:
    """Registers the trained adapter and its base (`model`) as MLflow model versions;
    returns "<name>/<version>"."""
    from genalign.stages import run_stage

    result = run_stage(
        "register-model", config, inputs={"adapter": adapter, "report": report, "pairs": pairs, "model": model},
        outputs={"registration": registration},
        tracking={"experiment": experiment, "pipeline_run": pipeline_run, "pipeline": pipeline},
    )
    registration.metadata.update(result.summary)
    return f"{result.summary['model_name']}/{result.summary['version']}"


@dsl.component(base_image=images.CPU, install_kfp_package=False)
def close_tracking(
    experiment: str, pipeline_run: str, pipeline: str, preset: str, status: dsl.PipelineTaskFinalStatus
):
    """Exit handler: gives the pipeline's MLflow parent run its preset, the stages' configs
    and the final evaluation metrics, and marks it finished or failed."""
    from genalign.config.pipelines import get_pipeline
    from genalign.tracking import end_pipeline_run

    end_pipeline_run(experiment, pipeline_run, "FINISHED" if status.state == "SUCCEEDED" else "FAILED",
                     preset=preset, report_stage=get_pipeline(pipeline).report)

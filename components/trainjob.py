"""Launchers: a training stage run on several nodes as a Kubeflow Trainer TrainJob.

Each launcher has the inputs, outputs and parameters of its stage's own component, plus
`trainjob` (the TrainJob's cluster-side settings, compiled in: `trainjob_settings`),
`run_id` and `task` (pass `dsl.PIPELINE_JOB_ID_PLACEHOLDER` and
`dsl.PIPELINE_TASK_NAME_PLACEHOLDER`), and the output `trainjob_name`, a file holding the
TrainJob's name from the moment it exists. The body is one `genalign.trainjobs` call,
which deletes the TrainJob however the task ends; `close_tracking_and_sweep` is the exit handler of a pipeline that has a launcher.

The launcher itself is a small CPU pod. Its component is named `<stage>-trainjob`, not
after the stage, so that `pipelines.cluster.apply_profile`, which finds a task's resources
in the profile's `stages` by its component's name, gives it none of the stage's GPUs;
the resources of the nodes are in `trainjob`. Apply the profile to a launcher as to a
stage (`stage=True`): it needs the object-store Secret (it copies the outputs into its KFP
artifacts), the MLflow settings and label, and the model cache (for outputs kept there).

    settings = trainjob_settings(profile, "train-flow-dpo", images.CUDA)
    adapter = apply_profile(train_flow_dpo_trainjob(
        config=train, model=model, pairs=pairs, trainjob=settings,
        run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, task=dsl.PIPELINE_TASK_NAME_PLACEHOLDER, **track,
    ), profile).outputs["adapter"]
"""

from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from components import images


def trainjob_settings(profile: dict, stage: str, image: str = images.CUDA) -> dict:
    """The `trainjob` argument of `stage`'s launcher on the cluster of `profile` (a
    `ClusterProfile.to_dict()`), without nulls, which KFP parameters cannot hold."""
    from genalign.trainjobs import TrainJobSettings

    return TrainJobSettings.from_profile(profile, stage, image=image).to_args()


@dsl.component(base_image=images.CPU, install_kfp_package=False)
def train_flow_dpo_trainjob(
    config: dict,
    experiment: str,
    pipeline_run: str,
    model: Input[Model],
    pairs: Input[Artifact],
    adapter: Output[Model],
    metrics: Output[Metrics],
    trainjob: dict,
    run_id: str,
    task: str,
    trainjob_name: Output[Artifact],
):
    """train-flow-dpo as a TrainJob over `trainjob`'s nodes."""
    from genalign.trainjobs import launch_trainjob

    launch_trainjob(
        "train-flow-dpo", config, inputs={"model": model, "pairs": pairs}, outputs={"adapter": adapter},
        tracking={"experiment": experiment, "pipeline_run": pipeline_run, "pipeline": "part-dpo"},
        job=trainjob, run_id=run_id, task=task, name_output=trainjob_name, metrics_output=metrics,
    )


@dsl.component(base_image=images.CPU, install_kfp_package=False)
def train_planner_trainjob(
    config: dict,
    experiment: str,
    pipeline_run: str,
    iteration: int,
    model: Input[Model],
    pairs: Input[Artifact],
    adapter: Output[Model],
    merged: Output[Model],
    metrics: Output[Metrics],
    trainjob: dict,
    run_id: str,
    task: str,
    trainjob_name: Output[Artifact],
):
    """train-planner as a TrainJob over `trainjob`'s nodes; the iteration tag goes on the
    stage's MLflow run once it finished."""
    from genalign.trainjobs import launch_trainjob

    launch_trainjob(
        "train-planner", config, inputs={"model": model, "pairs": pairs},
        outputs={"adapter": adapter, "merged": merged},
        tracking={"experiment": experiment, "pipeline_run": pipeline_run, "pipeline": "planner-dpo"},
        job=trainjob, run_id=run_id, task=task, name_output=trainjob_name, metrics_output=metrics,
        tags={"genalign.iteration": str(iteration)},
    )


@dsl.component(base_image=images.CPU, install_kfp_package=False)
def train_hand_pose_trainjob(
    config: dict,
    experiment: str,
    pipeline_run: str,
    phase: int,
    dataset: Input[Artifact],
    model: Output[Model],
    metrics: Output[Metrics],
    trainjob: dict,
    run_id: str,
    task: str,
    trainjob_name: Output[Artifact],
    previous: Input[Model] = None,
):
    """train-hand-pose (one phase) as a TrainJob over `trainjob`'s nodes."""
    from genalign.trainjobs import launch_trainjob

    launch_trainjob(
        "train-hand-pose", config, inputs={"dataset": dataset, "previous": previous},
        outputs={"model": model}, params={"phase": phase},
        tracking={"experiment": experiment, "pipeline_run": pipeline_run, "pipeline": "hand-pose"},
        job=trainjob, run_id=run_id, task=task, name_output=trainjob_name, metrics_output=metrics,
    )


@dsl.component(base_image=images.CPU, install_kfp_package=False)
def close_tracking_and_sweep(
    experiment: str, pipeline_run: str, pipeline: str, preset: str, status: dsl.PipelineTaskFinalStatus,
    run_id: str, namespace: str = "",
) -> List[str]:
    """Exit handler of a pipeline with a multi-node stage: deletes every TrainJob of
    pipeline run `run_id` (empty namespace: this pod's), should a launcher have been killed
    before its own cleanup, then closes the MLflow parent run as `close_tracking` does.
    KFP allows one exit handler per pipeline, so the two are one task."""
    from genalign.config.pipelines import get_pipeline
    from genalign.tracking import end_pipeline_run
    from genalign.trainjobs import sweep_trainjobs

    try:
        deleted = sweep_trainjobs(run_id, namespace or None)
    finally:
        end_pipeline_run(experiment, pipeline_run, "FINISHED" if status.state == "SUCCEEDED" else "FAILED",
                         preset=preset, report_stage=get_pipeline(pipeline).report)
    return deleted

"""Components of the planner-dpo pipeline. Each body is one `genalign.stages.run_stage`
call, given the KFP artifacts themselves: run_stage reads their local paths, records
their URIs on the MLflow child run (what `--resume-from` imports), and copies the stage
metrics into the KFP `Metrics` output."""

from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from components import images


@dsl.component(base_image=images.CUDA, install_kfp_package=False)
def prepare_planner(
    config: dict,
    experiment: str,
    pipeline_run: str,
    dataset: Output[Artifact],
    eval_dataset: Output[Artifact],
    model: Output[Model],
    metrics: Output[Metrics],
):
    """Spatial questions (train and held-out) and the base planner, warm-started if asked."""
    from genalign.stages import run_stage

    outs = {"dataset": dataset, "eval_dataset": eval_dataset, "model": model}
    run_stage(
        "prepare-planner", config, inputs={}, outputs=outs,
        tracking={"experiment": experiment, "pipeline_run": pipeline_run, "pipeline": "planner-dpo"},
        metrics_output=metrics,
    )


@dsl.component(base_image=images.CPU, install_kfp_package=False)
def shard_planner(
    config: dict,
    experiment: str,
    pipeline_run: str,
    num_subshards: int,
    dataset: Input[Artifact],
    shards: Output[Artifact],
) -> List[int]:
    """Seeded split of the questions into one shard per iteration; returns the sub-shard ids."""
    from genalign.stages import run_stage

    run_stage(
        "shard-planner", config, inputs={"dataset": dataset}, outputs={"shards": shards},
        tracking={"experiment": experiment, "pipeline_run": pipeline_run, "pipeline": "planner-dpo"},
    )
    return list(range(num_subshards))


@dsl.component(base_image=images.CUDA, install_kfp_package=False)
def rollout_planner(
    config: dict,
    experiment: str,
    pipeline_run: str,
    iteration: int,
    subshard: int,
    num_subshards: int,
    dataset: Input[Artifact],
    shards: Input[Artifact],
    model: Input[Model],
    samples: Output[Artifact],
    metrics: Output[Metrics],
):
    """K plans per question of one sub-shard of the iteration's shard."""
    from genalign.stages import run_stage

    run_stage(
        "rollout-planner", config, inputs={"dataset": dataset, "shards": shards, "model": model},
        outputs={"samples": samples},
        params={"iteration": iteration, "subshard": subshard, "num_subshards": num_subshards},
        tracking={"experiment": experiment, "pipeline_run": pipeline_run, "pipeline": "planner-dpo"},
        metrics_output=metrics,
    )


@dsl.component(base_image=images.CUDA, install_kfp_package=False)
def execute_plans(
    config: dict,
    experiment: str,
    pipeline_run: str,
    samples: Input[Artifact],
    dataset: Input[Artifact],
    executed: Output[Artifact],
    metrics: Output[Metrics],
):
    """Every instruction of every plan turned into an image by the executor."""
    from genalign.stages import run_stage

    run_stage(
        "execute-plans", config, inputs={"samples": samples, "dataset": dataset},
        outputs={"executed": executed},
        tracking={"experiment": experiment, "pipeline_run": pipeline_run, "pipeline": "planner-dpo"},
        metrics_output=metrics,
    )


@dsl.component(base_image=images.CUDA, install_kfp_package=False)
def label_plans(
    config: dict,
    experiment: str,
    pipeline_run: str,
    executed: Input[Artifact],
    dataset: Input[Artifact],
    scored: Output[Artifact],
    metrics: Output[Metrics],
):
    """The critic's score of every plan (scene oracle or MLLM judge)."""
    from genalign.stages import run_stage

    run_stage(
        "label-plans", config, inputs={"executed": executed, "dataset": dataset},
        outputs={"scored": scored},
        tracking={"experiment": experiment, "pipeline_run": pipeline_run, "pipeline": "planner-dpo"},
        metrics_output=metrics,
    )




@dsl.component(base_image=images.CUDA, install_kfp_package=False)
def train_planner(
    config: dict,
    experiment: str,
    pipeline_run: str,
    iteration: int,
    model: Input[Model],
    pairs: Input[Artifact],
    adapter: Output[Model],
    merged: Output[Model],
    metrics: Output[Metrics],
):
    """trl DPO of a fresh adapter from the base planner, and the merged planner."""
    from genalign.stages import run_stage

    run_stage(
        "train-planner", config, inputs={"model": model, "pairs": pairs},
        outputs={"adapter": adapter, "merged": merged},
        tracking={"experiment": experiment, "pipeline_run": pipeline_run, "pipeline": "planner-dpo"},
        metrics_output=metrics,
        tags={"genalign.iteration": str(iteration)},
    )


@dsl.component(base_image=images.CUDA, install_kfp_package=False)
def evaluate_planner(
    config: dict,
    experiment: str,
    pipeline_run: str,
    iteration: int,
    model: Input[Model],
    eval_dataset: Input[Artifact],
    report: Output[Artifact],
    html: Output[dsl.HTML],
    summary: Output[dsl.Markdown],
    metrics: Output[Metrics],
    history: Input[Artifact] = None,
    pairs: Input[Artifact] = None,
    adapter: Input[Model] = None,
):
    """Held-out score of a planner (iteration -1: the base) appended to the run's history;
    `html` (plots, gallery) and `summary` (the table) show in the Kubeflow UI."""
    import shutil

    from genalign.stages import run_stage

    run_stage(
        "evaluate-planner", config,
        inputs={"model": model, "eval_dataset": eval_dataset, "history": history, "pairs": pairs, "adapter": adapter},
        outputs={"report": report}, params={"iteration": iteration},
        tracking={"experiment": experiment, "pipeline_run": pipeline_run, "pipeline": "planner-dpo"},
        metrics_output=metrics,
    )
    shutil.copyfile(f"{report.path}/report.html", html.path)
    shutil.copyfile(f"{report.path}/report.md", summary.path)

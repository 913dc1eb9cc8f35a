"""Components of the planner-dpo pipeline. Each body calls `genalign.stages.run_stage`
(config check, MLflow child run, the stage on local paths) and passes the outputs' URIs,
which the child run records so a later run can resume from them."""

from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from components import images

PIPELINE = "planner-dpo"


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
        "prepare-planner", config, inputs={}, outputs={k: a.path for k, a in outs.items()},
        tracking={"experiment": experiment, "pipeline_run": pipeline_run, "pipeline": "planner-dpo"},
        metrics_output=metrics, output_uris={k: a.uri for k, a in outs.items()},
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
        "shard-planner", config, inputs={"dataset": dataset.path}, outputs={"shards": shards.path},
        tracking={"experiment": experiment, "pipeline_run": pipeline_run, "pipeline": "planner-dpo"},
        output_uris={"shards": shards.uri},
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
        "rollout-planner", config, inputs={"dataset": dataset.path, "shards": shards.path, "model": model.path},
        outputs={"samples": samples.path},
        params={"iteration": iteration, "subshard": subshard, "num_subshards": num_subshards},
        tracking={"experiment": experiment, "pipeline_run": pipeline_run, "pipeline": "planner-dpo"},
        metrics_output=metrics, output_uris={"samples": samples.uri},
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
        "execute-plans", config, inputs={"samples": samples.path, "dataset": dataset.path},
        outputs={"executed": executed.path},
        tracking={"experiment": experiment, "pipeline_run": pipeline_run, "pipeline": "planner-dpo"},
        metrics_output=metrics, output_uris={"executed": executed.uri},
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
        "label-plans", config, inputs={"executed": executed.path, "dataset": dataset.path},
        outputs={"scored": scored.path},
        tracking={"experiment": experiment, "pipeline_run": pipeline_run, "pipeline": "planner-dpo"},
        metrics_output=metrics, output_uris={"scored": scored.uri},
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
        "train-planner", config, inputs={"model": model.path, "pairs": pairs.path},
        outputs={"adapter": adapter.path, "merged": merged.path},
        tracking={"experiment": experiment, "pipeline_run": pipeline_run, "pipeline": "planner-dpo"},
        metrics_output=metrics, output_uris={"adapter": adapter.uri, "merged": merged.uri},
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

    def path(a):
        return a.path if a is not None else None

    result = run_stage(
        "evaluate-planner", config,
        inputs={"model": model.path, "eval_dataset": eval_dataset.path, "history": path(history),
                "pairs": path(pairs), "adapter": path(adapter)},
        outputs={"report": report.path}, params={"iteration": iteration},
        tracking={"experiment": experiment, "pipeline_run": pipeline_run, "pipeline": "planner-dpo"},
        metrics_output=metrics, output_uris={"report": report.uri},
    )
    shutil.copyfile(result.summary.get("html") or f"{report.path}/report.html", html.path)
    shutil.copyfile(result.summary.get("markdown") or f"{report.path}/report.md", summary.path)

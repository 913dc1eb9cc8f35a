"""Components of the part-dpo pipeline. Each body rebuilds nothing itself: it calls
`genalign.stages.run_stage`, which validates the config, opens the MLflow child run and
runs the stage on the artifacts' local paths, then copies the stage metrics into the
KFP `Metrics` output."""

from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from components import images


@dsl.component(base_image=images.CPU, install_kfp_package=False)
def prepare_parts(
    config: dict,
    experiment: str,
    pipeline_run: str,
    num_shards: int,
    conditions: Output[Artifact],
    eval_conditions: Output[Artifact],
    model: Output[Model],
    metrics: Output[Metrics],
) -> List[int]:
    """Procedural conditions (train and held-out) and the base generator; returns the shard ids."""
    from genalign.stages import run_stage

    run_stage(
        "prepare-parts", config, inputs={},
        outputs={"conditions": conditions.path, "eval_conditions": eval_conditions.path, "model": model.path},
        tracking={"experiment": experiment, "pipeline_run": pipeline_run, "pipeline": "part-dpo"},
        metrics_output=metrics,
    )
    return list(range(num_shards))


@dsl.component(base_image=images.CUDA, install_kfp_package=False)
def rollout_parts(
    config: dict,
    experiment: str,
    pipeline_run: str,
    shard: int,
    num_shards: int,
    conditions: Input[Artifact],
    model: Input[Model],
    samples: Output[Artifact],
    metrics: Output[Metrics],
):
    """K samples per condition of one shard: part meshes (GLB), latents and conditioning."""
    from genalign.stages import run_stage

    run_stage(
        "rollout-parts", config, inputs={"conditions": conditions.path, "model": model.path},
        outputs={"samples": samples.path}, params={"shard": shard, "num_shards": num_shards},
        tracking={"experiment": experiment, "pipeline_run": pipeline_run, "pipeline": "part-dpo"},
        metrics_output=metrics,
    )




@dsl.component(base_image=images.CUDA, install_kfp_package=False)
def train_flow_dpo(
    config: dict,
    experiment: str,
    pipeline_run: str,
    model: Input[Model],
    pairs: Input[Artifact],
    adapter: Output[Model],
    metrics: Output[Metrics],
):
    """Flow-matching DPO of a LoRA/DoRA adapter over the base generator."""
    from genalign.stages import run_stage

    run_stage(
        "train-flow-dpo", config, inputs={"model": model.path, "pairs": pairs.path},
        outputs={"adapter": adapter.path},
        tracking={"experiment": experiment, "pipeline_run": pipeline_run, "pipeline": "part-dpo"},
        metrics_output=metrics,
    )


@dsl.component(base_image=images.CUDA, install_kfp_package=False)
def evaluate_parts(
    config: dict,
    experiment: str,
    pipeline_run: str,
    model: Input[Model],
    adapter: Input[Model],
    conditions: Input[Artifact],
    report: Output[Artifact],
    html: Output[dsl.HTML],
    summary: Output[dsl.Markdown],
    metrics: Output[Metrics],
):
    """Base vs tuned on held-out conditions with the same seeds; report, plots, gate.

    `html` (plots and gallery embedded) and `summary` (the before/after table) show in
    the Kubeflow UI's visualization tab."""
    import shutil

    from genalign.stages import run_stage

    result = run_stage(
        "evaluate-parts", config,
        inputs={"model": model.path, "adapter": adapter.path, "conditions": conditions.path},
        outputs={"report": report.path},
        tracking={"experiment": experiment, "pipeline_run": pipeline_run, "pipeline": "part-dpo"},
        metrics_output=metrics,
    )
    shutil.copyfile(result.summary["html"], html.path)
    shutil.copyfile(result.summary["markdown"], summary.path)

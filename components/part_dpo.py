"""Components of the part-dpo pipeline. Each body is one `genalign.stages.run_stage`
call, given the KFP artifacts themselves: run_stage reads their local paths, records
their URIs on the MLflow child run (what `--resume-from` imports), and copies the stage
metrics into the KFP `Metrics` output."""

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
        outputs={"conditions": conditions, "eval_conditions": eval_conditions, "model": model},
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
        "rollout-parts", config, inputs={"conditions": conditions, "model": model},
        outputs={"samples": samples}, params={"shard": shard, "num_shards": num_shards},
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
        "train-flow-dpo", config, inputs={"model": model, "pairs": pairs}, outputs={"adapter": adapter},
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

    run_stage(
        "evaluate-parts", config, inputs={"model": model, "adapter": adapter, "conditions": conditions},
        outputs={"report": report},
        tracking={"experiment": experiment, "pipeline_run": pipeline_run, "pipeline": "part-dpo"},
        metrics_output=metrics,
    )
    shutil.copyfile(f"{report.path}/report.html", html.path)
    shutil.copyfile(f"{report.path}/report.md", summary.path)

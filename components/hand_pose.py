"""Components of the hand-pose pipeline. Each body is one `genalign.stages.run_stage`
call, given the KFP artifacts themselves: run_stage reads their local paths, records
their URIs on the MLflow child run (what `--resume-from` imports), and copies the stage
metrics into the KFP `Metrics` output. A training phase is a task of its own: `phase`
indexes `train.phases`."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from components import images


@dsl.component(base_image=images.CPU, install_kfp_package=False)
def prepare_hands(
    config: dict,
    experiment: str,
    pipeline_run: str,
    dataset: Output[Artifact],
    metrics: Output[Metrics],
):
    """Hand-centred crops of one official DexYCB split setup (or the synthetic hands in its layout)."""
    from genalign.stages import run_stage

    run_stage(
        "prepare-hands", config, inputs={}, outputs={"dataset": dataset},
        tracking={"experiment": experiment, "pipeline_run": pipeline_run, "pipeline": "hand-pose"},
        metrics_output=metrics,
    )


@dsl.component(base_image=images.CUDA, install_kfp_package=False)
def train_hand_pose(
    config: dict,
    experiment: str,
    pipeline_run: str,
    phase: int,
    dataset: Input[Artifact],
    model: Output[Model],
    metrics: Output[Metrics],
    previous: Input[Model] = None,
):
    """One training phase of the hand-pose transformer, from the previous phase's weights
    (`previous`, absent for the first phase)."""
    from genalign.stages import run_stage

    run_stage(
        "train-hand-pose", config, inputs={"dataset": dataset, "previous": previous},
        outputs={"model": model}, params={"phase": phase},
        tracking={"experiment": experiment, "pipeline_run": pipeline_run, "pipeline": "hand-pose"},
        metrics_output=metrics,
    )


@dsl.component(base_image=images.CUDA, install_kfp_package=False)
def evaluate_hand_pose(
    config: dict,
    experiment: str,
    pipeline_run: str,
    phase: int,
    dataset: Input[Artifact],
    model: Input[Model],
    report: Output[Artifact],
    html: Output[dsl.HTML],
    summary: Output[dsl.Markdown],
    metrics: Output[Metrics],
    history: Input[Artifact] = None,
):
    """The phase's model (EMA and raw weights) on the held-out split vs the mean-pose
    baseline, appended to the earlier phases' report (`history`).

    `html` (plots and gallery embedded) and `summary` (the per-phase table) show in the
    Kubeflow UI's visualization tab."""
    import shutil

    from genalign.stages import run_stage

    run_stage(
        "evaluate-hand-pose", config, inputs={"dataset": dataset, "model": model, "history": history},
        outputs={"report": report}, params={"phase": phase},
        tracking={"experiment": experiment, "pipeline_run": pipeline_run, "pipeline": "hand-pose"},
        metrics_output=metrics,
    )
    shutil.copyfile(f"{report.path}/report.html", html.path)
    shutil.copyfile(f"{report.path}/report.md", summary.path)


@dsl.component(base_image=images.CPU, install_kfp_package=False)
def register_hand_pose(
    config: dict,
    experiment: str,
    pipeline_run: str,
    model: Input[Model],
    report: Input[Artifact],
    registration: Output[Artifact],
    metrics: Output[Metrics],
):
    """The final model as an MLflow model version; champion when it beats the previous champion's MPJPE."""
    from genalign.stages import run_stage

    run_stage(
        "register-hand-pose", config, inputs={"model": model, "report": report},
        outputs={"registration": registration},
        tracking={"experiment": experiment, "pipeline_run": pipeline_run, "pipeline": "hand-pose"},
        metrics_output=metrics,
    )

"""Components of the voxel-sds pipeline. Each body is one `genalign.stages.run_stage`
call, given the KFP artifacts themselves: run_stage reads their local paths, records
their URIs on the MLflow child run (what `--resume-from` imports), and copies the stage
metrics into the KFP `Metrics` output. The prompt and the control prompt are two tasks of
`optimise_voxels`: `variant` 0 and 1.

Images: preparing the world and registering the map need no GPU (CPU image); the prior
trains on the CUDA image; optimisation and evaluation render voxels, on the render image
(CUDA + nvdiffrast, for `optimise.renderer: nvdiffrast`; the torch renderer runs there too).
"""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from components import images


@dsl.component(base_image=images.CPU, install_kfp_package=False)
def prepare_voxels(
    config: dict,
    experiment: str,
    pipeline_run: str,
    world: Output[Artifact],
    metrics: Output[Metrics],
):
    """The initial world (a map.json, or a ground plane, cube or empty world) and its
    training and held-out cameras."""
    from genalign.stages import run_stage

    run_stage(
        "prepare-voxels", config, inputs={}, outputs={"world": world},
        tracking={"experiment": experiment, "pipeline_run": pipeline_run, "pipeline": "voxel-sds"},
        metrics_output=metrics,
    )


@dsl.component(base_image=images.CUDA, install_kfp_package=False)
def train_voxel_prior(
    config: dict,
    experiment: str,
    pipeline_run: str,
    world: Input[Artifact],
    prior: Output[Model],
    metrics: Output[Metrics],
):
    """The text-to-image prior: an SDXL pipeline by reference, or the tiny prior trained on
    renders of procedural structures from the world's cameras."""
    from genalign.stages import run_stage

    run_stage(
        "train-voxel-prior", config, inputs={"world": world}, outputs={"prior": prior},
        tracking={"experiment": experiment, "pipeline_run": pipeline_run, "pipeline": "voxel-sds"},
        metrics_output=metrics,
    )


@dsl.component(base_image=images.RENDER, install_kfp_package=False)
def optimise_voxels(
    config: dict,
    experiment: str,
    pipeline_run: str,
    variant: int,
    world: Input[Artifact],
    prior: Input[Model],
    map: Output[Model],
    metrics: Output[Metrics],
):
    """Score distillation of the world, coarse to fine, for the prompt (`variant` 0) or the
    control prompt (`variant` 1)."""
    from genalign.stages import run_stage

    run_stage(
        "optimise-voxels", config, inputs={"world": world, "prior": prior}, outputs={"map": map},
        params={"variant": variant},
        tracking={"experiment": experiment, "pipeline_run": pipeline_run, "pipeline": "voxel-sds"},
        metrics_output=metrics,
    )


@dsl.component(base_image=images.RENDER, install_kfp_package=False)
def evaluate_voxels(
    config: dict,
    experiment: str,
    pipeline_run: str,
    world: Input[Artifact],
    prior: Input[Model],
    map: Input[Model],
    control: Input[Model],
    report: Output[Artifact],
    html: Output[dsl.HTML],
    summary: Output[dsl.Markdown],
    metrics: Output[Metrics],
):
    """The prompted world against the start and the control run on held-out views.

    `html` (renders embedded) and `summary` (the table) show in the Kubeflow UI's
    visualization tab."""
    import shutil

    from genalign.stages import run_stage

    run_stage(
        "evaluate-voxels", config,
        inputs={"world": world, "prior": prior, "map": map, "control": control},
        outputs={"report": report},
        tracking={"experiment": experiment, "pipeline_run": pipeline_run, "pipeline": "voxel-sds"},
        metrics_output=metrics,
    )
    shutil.copyfile(f"{report.path}/report.html", html.path)
    shutil.copyfile(f"{report.path}/report.md", summary.path)


@dsl.component(base_image=images.CPU, install_kfp_package=False)
def register_voxels(
    config: dict,
    experiment: str,
    pipeline_run: str,
    world: Input[Artifact],
    map: Input[Model],
    report: Input[Artifact],
    registration: Output[Artifact],
    metrics: Output[Metrics],
):
    """maps/trained_map_<source>_<n>/map.json, maps/registry.json and an MLflow model
    version; champion when the prompted class wins against the control."""
    from genalign.stages import run_stage

    run_stage(
        "register-voxels", config, inputs={"world": world, "map": map, "report": report},
        outputs={"registration": registration},
        tracking={"experiment": experiment, "pipeline_run": pipeline_run, "pipeline": "voxel-sds"},
        metrics_output=metrics,
    )

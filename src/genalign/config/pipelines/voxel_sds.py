"""voxel-sds: score distillation of a voxel world with a text-conditioned diffusion prior."""

from __future__ import annotations

from genalign.config.pipelines.spec import PRESET, Pipeline, Resume, Scalar, Stage

PREPARE_VOXELS = Stage(
    "prepare-voxels", "genalign.stages.voxel_sds.prepare_voxels", "genalign.config.voxel_sds:PrepareVoxelsConfig",
    inputs={}, outputs={"world": "dataset"},
    help="the initial world (a map.json or a ground plane, cube or empty world) and its training and "
         "held-out cameras",
)
TRAIN_VOXEL_PRIOR = Stage(
    "train-voxel-prior", "genalign.stages.voxel_sds.train_voxel_prior",
    "genalign.config.voxel_sds:TrainVoxelPriorConfig",
    inputs={"world": "dataset"}, outputs={"prior": "model"},
    help="the text-to-image prior: an SDXL pipeline by reference, or the tiny prior trained on renders "
         "of procedural structures from the world's cameras",
    numerics=True,
)
OPTIMISE_VOXELS = Stage(
    "optimise-voxels", "genalign.stages.voxel_sds.optimise_voxels", "genalign.config.voxel_sds:OptimiseVoxelsConfig",
    inputs={"world": "dataset", "prior": "model"}, outputs={"map": "model"},
    params=("variant",),
    help="score distillation of the world, coarse to fine: variant 0 for the prompt, 1 for the control prompt",
    numerics=True,
)
EVALUATE_VOXELS = Stage(
    "evaluate-voxels", "genalign.stages.voxel_sds.evaluate_voxels", "genalign.config.voxel_sds:EvaluateVoxelsConfig",
    inputs={"world": "dataset", "prior": "model", "map": "model", "control": "model"}, outputs={"report": "report"},
    help="held-out views before and after, the prior's denoising loss, the prompt-class evidence against "
         "the control run, validity checks",
)
REGISTER_VOXELS = Stage(
    "register-voxels", "genalign.stages.voxel_sds.register_voxels", "genalign.config.voxel_sds:RegisterVoxelsConfig",
    inputs={"world": "dataset", "map": "model", "report": "report"}, outputs={"registration": "registration"},
    help="maps/trained_map_<source>_<n>/map.json, maps/registry.json and an MLflow model version; champion "
         "when the prompted class wins against the control",
)

PIPELINE = Pipeline(
    name="voxel-sds",
    description="Score distillation of a voxel world with a text-conditioned diffusion prior, against a control prompt",
    factory="pipelines.voxel_sds:make_voxel_sds",
    sections={
        "prepare": PREPARE_VOXELS,
        "prior": TRAIN_VOXEL_PRIOR,
        "optimise": OPTIMISE_VOXELS,
        "evaluate": EVALUATE_VOXELS,
        "register": REGISTER_VOXELS,
    },
    scalars={
        "preset": PRESET,
        "experiment": Scalar(str, "genalign-voxel-sds", "MLflow experiment of the run and its stages"),
    },
    report="evaluate-voxels",
    register="register-voxels",
    # A resumed run starts from the prepared world, and from the prior when the earlier
    # run finished training it (the expensive part of the tiny preset); the two
    # optimisations resume from their own checkpoints when their tasks run again.
    resume=(
        Resume("prepare-voxels", ("world",)),
        Resume("train-voxel-prior", ("prior",), optional=True),
    ),
)

"""voxel-sds: score distillation of a voxel world with a text-conditioned diffusion prior.

prepare (the initial world and its cameras) -> prior (trained on the world's cameras, or
an SDXL pipeline by reference) -> optimise twice side by side, for the prompt (variant 0)
and the control prompt (variant 1) -> evaluate (held-out views, the prompted world
against the control) -> register (maps/ export, MLflow model version; champion when the
prompted class wins). One MLflow parent run per pipeline run, closed by the exit handler
with the run's final status. Each stage takes one config dict; the preset
(configs/voxel-sds/<preset>.yaml) fills them.

`make_voxel_sds(profile, resume=...)` builds it; with `resume` the prepared world (and the
prior, when the earlier run finished it) is imported (`dsl.importer`) instead of made again.
"""

from kfp import dsl
from kfp.dsl import Artifact, Model

from components.voxel_sds import (
    evaluate_voxels,
    optimise_voxels,
    prepare_voxels,
    register_voxels,
    train_voxel_prior,
)

from .cluster import apply_profile, exit_task, imported

PIPELINE = "voxel-sds"


def make_voxel_sds(profile: dict | None = None, *, doc: str = "", resume: dict | None = None):
    """The voxel-sds pipeline; `profile` is a checked cluster profile as a dict, or None;
    `doc` the docstring whose Args describe the parameters (from the declaration);
    `resume` = {"uris": {"<stage>.<output>": uri}} continues an earlier run."""
    uris = resume["uris"] if resume else {}

    def voxel_sds(
        prepare: dict,
        prior: dict,
        optimise: dict,
        evaluate: dict,
        register: dict,
        preset: str = "tiny",
        experiment: str = "genalign-voxel-sds",
    ):
        track = {"experiment": experiment, "pipeline_run": dsl.PIPELINE_JOB_ID_PLACEHOLDER}
        # no stage of voxel-sds is distributed, so none runs as a TrainJob to sweep
        closer = exit_task(profile, [], pipeline=PIPELINE, preset=preset, **track)
        with dsl.ExitHandler(closer, name="tracked-run"):
            if "prepare-voxels.world" in uris:
                world = imported(uris, "prepare-voxels.world", Artifact)
            else:
                world = apply_profile(prepare_voxels(config=prepare, **track), profile).outputs["world"]
            if "train-voxel-prior.prior" in uris:
                model = imported(uris, "train-voxel-prior.prior", Model)
            else:
                model = apply_profile(train_voxel_prior(config=prior, world=world, **track), profile).outputs["prior"]
            maps = {}
            for variant, label in ((0, "prompt"), (1, "control")):
                task = apply_profile(optimise_voxels(config=optimise, variant=variant, world=world, prior=model,
                                                     **track), profile)
                task.set_display_name(f"optimise-voxels-{label}")
                maps[label] = task.outputs["map"]
            report = apply_profile(evaluate_voxels(config=evaluate, world=world, prior=model, map=maps["prompt"],
                                                   control=maps["control"], **track), profile).outputs["report"]
            apply_profile(register_voxels(config=register, world=world, map=maps["prompt"], report=report,
                                          **track), profile)

    voxel_sds.__doc__ = doc
    return dsl.pipeline(name=PIPELINE, description=doc.split("\n")[0] if doc else None)(voxel_sds)

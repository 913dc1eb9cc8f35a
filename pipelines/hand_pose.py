"""hand-pose: staged supervised training of a hand-pose transformer, DexYCB's metrics.

prepare (crops of one split setup) -> for each phase of `train.phases`: train (from the
previous phase's weights) -> evaluate (held-out split, EMA and raw, cumulative report)
-> register the last phase's model (MLflow model version; champion when it beats the
previous champion's MPJPE). One MLflow parent run per pipeline run, closed by the exit
handler with the run's final status. Each stage takes one config dict; the preset
(configs/hand-pose/<preset>.yaml) fills them.

`make_hand_pose(profile, phases=N, resume=...)` builds it with N phase tasks (the length
of the preset's `train.phases`, fixed at compile time); with `resume` the prepared
dataset of an earlier run is imported (`dsl.importer`) instead of made again.
"""

from kfp import dsl
from kfp.dsl import Artifact

from components.hand_pose import (
    evaluate_hand_pose,
    prepare_hands,
    register_hand_pose,
    train_hand_pose,
)
from components.trainjob import train_hand_pose_trainjob

from .cluster import apply_profile, exit_task, imported, training_task

PIPELINE = "hand-pose"


def make_hand_pose(profile: dict | None = None, *, phases: int = 3, doc: str = "", resume: dict | None = None):
    """The hand-pose pipeline with `phases` training tasks; `profile` is a checked cluster
    profile as a dict, or None; `doc` the docstring whose Args describe the parameters
    (from the declaration); `resume` = {"uris": {"<stage>.<output>": uri}} continues an
    earlier run."""
    if phases < 1:
        raise ValueError(f"phases {phases}: expected at least one training phase")
    uris = resume["uris"] if resume else {}

    def hand_pose(
        prepare: dict,
        train: dict,
        evaluate: dict,
        register: dict,
        preset: str = "tiny",
        experiment: str = "genalign-hand-pose",
    ):
        track = {"experiment": experiment, "pipeline_run": dsl.PIPELINE_JOB_ID_PLACEHOLDER}
        closer = exit_task(profile, ["train-hand-pose"], pipeline=PIPELINE, preset=preset, **track)
        with dsl.ExitHandler(closer, name="tracked-run"):
            if "prepare-hands.dataset" in uris:
                dataset = imported(uris, "prepare-hands.dataset", Artifact)
            else:
                dataset = apply_profile(prepare_hands(config=prepare, **track), profile).outputs["dataset"]
            model = history = None
            for phase in range(phases):
                previous = {} if model is None else {"previous": model}
                trained = training_task(train_hand_pose, train_hand_pose_trainjob, profile,
                                        config=train, phase=phase, dataset=dataset, **previous, **track)
                trained.set_display_name(f"train-hand-pose-{phase}")
                model = trained.outputs["model"]
                earlier = {} if history is None else {"history": history}
                evaluated = apply_profile(evaluate_hand_pose(config=evaluate, phase=phase, dataset=dataset,
                                                             model=model, **earlier, **track), profile)
                evaluated.set_display_name(f"evaluate-hand-pose-{phase}")
                history = evaluated.outputs["report"]
            apply_profile(register_hand_pose(config=register, model=model, report=history, **track), profile)

    hand_pose.__doc__ = doc
    return dsl.pipeline(name=PIPELINE, description=doc.split("\n")[0] if doc else None)(hand_pose)

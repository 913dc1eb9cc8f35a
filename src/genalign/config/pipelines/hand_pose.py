"""hand-pose: staged supervised training of a hand-pose transformer on DexYCB-layout data."""

from __future__ import annotations

from genalign.config.pipelines.spec import PRESET, Pipeline, Resume, Scalar, Stage

PREPARE_HANDS = Stage(
    "prepare-hands", "genalign.stages.hand_pose.prepare_hands", "genalign.config.hand_pose:PrepareHandsConfig",
    inputs={}, outputs={"dataset": "dataset"},
    help="hand-centred crops of one official DexYCB split setup (or the synthetic hands in its layout)",
)
TRAIN_HAND_POSE = Stage(
    "train-hand-pose", "genalign.stages.hand_pose.train_hand_pose", "genalign.config.hand_pose:TrainHandPoseConfig",
    inputs={"dataset": "dataset", "previous": "model"}, outputs={"model": "model"},
    params=("phase",), optional=("previous",),
    help="one training phase of the hand-pose transformer, from the previous phase's weights",
    numerics=True,
    distributed=True,
)
EVALUATE_HAND_POSE = Stage(
    "evaluate-hand-pose", "genalign.stages.hand_pose.evaluate_hand_pose",
    "genalign.config.hand_pose:EvaluateHandPoseConfig",
    inputs={"dataset": "dataset", "model": "model", "history": "report"}, outputs={"report": "report"},
    params=("phase",), optional=("history",),
    help="the phase's model (EMA and raw) on the held-out split vs the mean-pose baseline; cumulative report",
)
REGISTER_HAND_POSE = Stage(
    "register-hand-pose", "genalign.stages.hand_pose.register_hand_pose",
    "genalign.config.hand_pose:RegisterHandPoseConfig",
    inputs={"model": "model", "report": "report"}, outputs={"registration": "registration"},
    help="the final model as an MLflow model version; champion when it beats the previous champion's MPJPE",
)

PIPELINE = Pipeline(
    name="hand-pose",
    description="Staged training of a hand-pose transformer on DexYCB-layout data, with DexYCB's metrics",
    factory="pipelines.hand_pose:make_hand_pose",
    sections={
        "prepare": PREPARE_HANDS,
        "train": TRAIN_HAND_POSE,
        "evaluate": EVALUATE_HAND_POSE,
        "register": REGISTER_HAND_POSE,
    },
    scalars={
        "preset": PRESET,
        "experiment": Scalar(str, "genalign-hand-pose", "MLflow experiment of the run and its stages"),
    },
    report="evaluate-hand-pose",
    register="register-hand-pose",
    phases=("train", "phases"),
    # A resumed run starts from the prepared crops; each training phase resumes from its
    # own checkpoints when its task runs again with the same inputs.
    resume=(Resume("prepare-hands", ("dataset",)),),
)

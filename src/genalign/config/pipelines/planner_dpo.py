"""planner-dpo: iterative on-policy ("snowball") DPO of a vision-language planner."""

from __future__ import annotations

from genalign.config.pipelines.shared import ACCUMULATE_PAIRS, MINE_PAIRS, REGISTER_MODEL
from genalign.config.pipelines.spec import PRESET, Pipeline, Resume, Scalar, Stage

PREPARE_PLANNER = Stage(
    "prepare-planner", "genalign.stages.planner_dpo.prepare_planner",
    "genalign.config.planner_dpo:PreparePlannerConfig",
    inputs={}, outputs={"dataset": "dataset", "eval_dataset": "dataset", "model": "model"},
    help="spatial questions (train + held-out) and the base planner (warm-started)",
    numerics=True,
)
SHARD_PLANNER = Stage(
    "shard-planner", "genalign.stages.planner_dpo.shard_planner", "genalign.config.planner_dpo:ShardPlannerConfig",
    inputs={"dataset": "dataset"}, outputs={"shards": "shards"},
    help="seeded split of the questions into one shard per iteration",
)
ROLLOUT_PLANNER = Stage(
    "rollout-planner", "genalign.stages.planner_dpo.rollout_planner",
    "genalign.config.planner_dpo:RolloutPlannerConfig",
    inputs={"dataset": "dataset", "shards": "shards", "model": "model"}, outputs={"samples": "samples"},
    params=("iteration", "subshard", "num_subshards"),
    help="K plans per question of one sub-shard of the iteration's shard",
)
EXECUTE_PLANS = Stage(
    "execute-plans", "genalign.stages.planner_dpo.execute_plans", "genalign.config.planner_dpo:ExecutePlansConfig",
    inputs={"samples": "samples", "dataset": "dataset"}, outputs={"executed": "executed"},
    help="every instruction of every plan turned into an image",
)
LABEL_PLANS = Stage(
    "label-plans", "genalign.stages.planner_dpo.label_plans", "genalign.config.planner_dpo:LabelPlansConfig",
    inputs={"executed": "executed", "dataset": "dataset"}, outputs={"scored": "scored"},
    help="the critic's score of every plan (scene oracle or MLLM judge)",
)
TRAIN_PLANNER = Stage(
    "train-planner", "genalign.stages.planner_dpo.train_planner", "genalign.config.planner_dpo:TrainPlannerConfig",
    inputs={"model": "model", "pairs": "pairs"}, outputs={"adapter": "adapter", "merged": "model"},
    help="trl DPO of a fresh adapter from the base, and the merged planner",
    numerics=True,
    distributed=True,
)
EVALUATE_PLANNER = Stage(
    "evaluate-planner", "genalign.stages.planner_dpo.evaluate_planner",
    "genalign.config.planner_dpo:EvaluatePlannerConfig",
    inputs={"model": "model", "eval_dataset": "dataset", "history": "report", "pairs": "pairs", "adapter": "adapter"},
    outputs={"report": "report"}, params=("iteration",), optional=("history", "pairs", "adapter"),
    help="held-out score of a planner vs the base; cumulative report with plots",
)

PIPELINE = Pipeline(
    name="planner-dpo",
    description="Iterative on-policy DPO of a vision-language planner",
    factory="pipelines.planner_dpo:make_planner_dpo",
    sections={
        "prepare": PREPARE_PLANNER,
        "shard": SHARD_PLANNER,
        "rollout": ROLLOUT_PLANNER,
        "execute": EXECUTE_PLANS,
        "label": LABEL_PLANS,
        "pairs": MINE_PAIRS,
        "accumulate": ACCUMULATE_PAIRS,
        "train": TRAIN_PLANNER,
        "evaluate": EVALUATE_PLANNER,
        "register": REGISTER_MODEL,
    },
    scalars={
        "preset": PRESET,
        "experiment": Scalar(str, "genalign-planner-dpo", "MLflow experiment of the run and its stages"),
        "subshards": Scalar(int, 1, "rollout/execute/label tasks per iteration (ParallelFor)", minimum=1),
    },
    report="evaluate-planner",
    register="register-model",
    iterations=("shard", "num_shards"),
    # Iteration k of a resumed run starts from the planner, the accumulated pairs and the
    # evaluation history of iteration k-1.
    resume=(
        Resume("prepare-planner", ("dataset", "eval_dataset", "model")),
        Resume("shard-planner", ("shards",)),
        Resume("train-planner", ("merged",), offset=-1),
        Resume("accumulate-pairs", ("accumulated",), offset=-1),
        Resume("evaluate-planner", ("report",), offset=-1),
    ),
)

"""part-dpo: flow-DPO of a part-aware 3D generator against inter-part penetration."""

from __future__ import annotations

from genalign.config.pipelines.shared import MINE_PAIRS, REGISTER_MODEL, SCORE_SAMPLES
from genalign.config.pipelines.spec import PRESET, Pipeline, Resume, Scalar, Stage

PREPARE_PARTS = Stage(
    "prepare-parts", "genalign.stages.part_dpo.prepare_parts", "genalign.config.part_dpo:PreparePartsConfig",
    inputs={}, outputs={"conditions": "conditions", "eval_conditions": "conditions", "model": "model"},
    help="procedural conditions (train + held-out) and the base generator",
    numerics=True,
)
ROLLOUT_PARTS = Stage(
    "rollout-parts", "genalign.stages.part_dpo.rollout_parts", "genalign.config.part_dpo:RolloutPartsConfig",
    inputs={"conditions": "conditions", "model": "model"}, outputs={"samples": "samples"},
    params=("shard", "num_shards"),
    help="K samples per condition of one shard: meshes (GLB), latents and conditioning",
)
TRAIN_FLOW_DPO = Stage(
    "train-flow-dpo", "genalign.stages.part_dpo.train_flow_dpo", "genalign.config.flow_dpo:TrainFlowDPOConfig",
    inputs={"model": "model", "pairs": "pairs"}, outputs={"adapter": "adapter"},
    help="flow-matching DPO of a LoRA/DoRA adapter on the pairs",
    numerics=True,
    distributed=True,
)
EVALUATE_PARTS = Stage(
    "evaluate-parts", "genalign.stages.part_dpo.evaluate_parts", "genalign.config.part_dpo:EvaluatePartsConfig",
    inputs={"model": "model", "adapter": "adapter", "conditions": "conditions"}, outputs={"report": "report"},
    help="base vs tuned on held-out conditions, same seeds; report with plots and the gate",
)

PIPELINE = Pipeline(
    name="part-dpo",
    description="Flow-DPO of a part-aware 3D generator against inter-part penetration",
    factory="pipelines.part_dpo:make_part_dpo",
    sections={
        "prepare": PREPARE_PARTS,
        "rollout": ROLLOUT_PARTS,
        "score": SCORE_SAMPLES,
        "pairs": MINE_PAIRS,
        "train": TRAIN_FLOW_DPO,
        "evaluate": EVALUATE_PARTS,
        "register": REGISTER_MODEL,
    },
    scalars={
        "preset": PRESET,
        "experiment": Scalar(str, "genalign-part-dpo", "MLflow experiment of the run and its stages"),
        "num_shards": Scalar(int, 2, "rollout and score tasks that run side by side (ParallelFor)", minimum=1),
    },
    report="evaluate-parts",
    register="register-model",
    # A resumed run starts after the pairs: the sampling and scoring before them fan out
    # over shards and are the cheap, deterministic part; training and evaluation are
    # imported too when the earlier run finished them.
    resume=(
        Resume("prepare-parts", ("conditions", "eval_conditions", "model")),
        Resume("mine-pairs", ("pairs",)),
        Resume("train-flow-dpo", ("adapter",), optional=True),
        Resume("evaluate-parts", ("report",), optional=True),
    ),
)

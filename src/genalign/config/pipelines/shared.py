"""Stages that several pipelines share, declared once (their code: genalign.stages.shared)."""

from __future__ import annotations

from genalign.config.pipelines.spec import Stage

SCORE_SAMPLES = Stage(
    "score-samples", "genalign.stages.shared.score_samples", "genalign.config.score:ScoreSamplesConfig",
    inputs={"samples": "samples"}, outputs={"scored": "scored"},
    help="every sample scored by the configured scorer (genalign.scorers.SCORERS)",
)
MINE_PAIRS = Stage(
    "mine-pairs", "genalign.stages.shared.mine_pairs", "genalign.config.pairs:MinePairsConfig",
    inputs={"scored": "scored"}, outputs={"pairs": "pairs"}, fan_in=("scored",),
    help="win/loss pairs from one or more scored shards, every drop counted with its reason",
)
ACCUMULATE_PAIRS = Stage(
    "accumulate-pairs", "genalign.stages.shared.accumulate_pairs", "genalign.config.pairs:AccumulatePairsConfig",
    inputs={"pairs": "pairs", "previous": "pairs"}, outputs={"accumulated": "pairs"}, optional=("previous",),
    help="the pairs of iterations 0..i",
)
REGISTER_MODEL = Stage(
    "register-model", "genalign.stages.shared.register_model", "genalign.config.register:RegisterModelConfig",
    inputs={"adapter": "adapter", "report": "report", "pairs": "pairs", "model": "model"},
    outputs={"registration": "registration"}, optional=("model",),
    help="the trained adapter as an MLflow model version with lineage; candidate, and champion past the gate",
)

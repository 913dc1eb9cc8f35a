"""part-dpo: preference tuning of a part-aware 3D generator against inter-part penetration.

prepare -> rollout (ParallelFor over shards) -> score -> pairs -> train (flow-DPO) ->
evaluate (base vs tuned) -> register (MLflow model version + aliases). One MLflow
parent run per pipeline run, closed by the exit handler with the run's final status.
Each stage takes one config dict; the preset (configs/part-dpo/<preset>.yaml) fills them.

`make_part_dpo(profile, resume=...)` builds the pipeline with a cluster profile's
settings on every task (`pipelines/cluster.py`); with `resume` (`genalign.resume`) the
stages an earlier run finished are imported (`dsl.importer`) instead of run again.
"""

from kfp import dsl
from kfp.dsl import Artifact, Model

from components.part_dpo import evaluate_parts, prepare_parts, rollout_parts, train_flow_dpo
from components.shared import mine_pairs, register_model, score_samples
from components.trainjob import train_flow_dpo_trainjob

from .cluster import apply_profile, exit_task, imported, training_task

PIPELINE = "part-dpo"


def make_part_dpo(profile: dict | None = None, *, doc: str = "", resume: dict | None = None):
    """The part-dpo pipeline; `profile` is a checked cluster profile as a dict, or None;
    `doc` the docstring whose Args describe the parameters (from the declaration);
    `resume` = {"uris": {"<stage>.<output>": uri}} continues an earlier run."""
    uris = resume["uris"] if resume else {}

    def part_dpo(
        prepare: dict,
        rollout: dict,
        score: dict,
        pairs: dict,
        train: dict,
        evaluate: dict,
        register: dict,
        preset: str = "tiny",
        experiment: str = "genalign-part-dpo",
        num_shards: int = 2,
    ):
        track = {"experiment": experiment, "pipeline_run": dsl.PIPELINE_JOB_ID_PLACEHOLDER}
        closer = exit_task(profile, ["train-flow-dpo"], pipeline=PIPELINE, preset=preset, **track)
        with dsl.ExitHandler(closer, name="tracked-run"):
            if "mine-pairs.pairs" in uris:
                eval_conditions = imported(uris, "prepare-parts.eval_conditions", Artifact)
                model = imported(uris, "prepare-parts.model", Model)
                mined = imported(uris, "mine-pairs.pairs", Artifact)
            else:
                prep = apply_profile(prepare_parts(config=prepare, num_shards=num_shards, **track), profile)
                eval_conditions, model = prep.outputs["eval_conditions"], prep.outputs["model"]
                with dsl.ParallelFor(prep.outputs["Output"], name="shards") as shard:
                    roll = apply_profile(rollout_parts(
                        config=rollout, shard=shard, num_shards=num_shards,
                        conditions=prep.outputs["conditions"], model=model, **track,
                    ), profile)
                    scored = apply_profile(score_samples(
                        config=score, pipeline=PIPELINE, samples=roll.outputs["samples"], shard=shard, **track,
                    ), profile)
                mined = apply_profile(mine_pairs(
                    config=pairs, pipeline=PIPELINE, scored=dsl.Collected(scored.outputs["scored"]), **track,
                ), profile).outputs["pairs"]
            if "train-flow-dpo.adapter" in uris:
                adapter = imported(uris, "train-flow-dpo.adapter", Model)
            else:
                adapter = training_task(train_flow_dpo, train_flow_dpo_trainjob, profile,
                                        config=train, model=model, pairs=mined, **track).outputs["adapter"]
            if "evaluate-parts.report" in uris:
                report = imported(uris, "evaluate-parts.report", Artifact)
            else:
                report = apply_profile(evaluate_parts(
                    config=evaluate, model=model, adapter=adapter, conditions=eval_conditions, **track,
                ), profile).outputs["report"]
            apply_profile(register_model(
                config=register, pipeline=PIPELINE, adapter=adapter, report=report, pairs=mined, model=model, **track,
            ), profile)

    part_dpo.__doc__ = doc
    return dsl.pipeline(name=PIPELINE, description=doc.split("\n")[0] if doc else None)(part_dpo)

"""part-dpo: preference tuning of a part-aware 3D generator against inter-part penetration.

prepare -> rollout (ParallelFor over shards) -> score -> pairs -> train (flow-DPO) ->
evaluate (base vs tuned) -> register (MLflow model version + aliases). One MLflow
parent run per pipeline run, closed by the exit handler with the run's final status.
Each stage takes one config dict; the preset (configs/part-dpo/<preset>.yaml) fills them.

`make_part_dpo(profile)` builds the pipeline with a cluster profile's settings on every
task (`pipelines/cluster.py`); `part_dpo` is the pipeline without one.
"""

from kfp import dsl

from components.part_dpo import evaluate_parts, prepare_parts, rollout_parts, train_flow_dpo
from components.shared import close_tracking, mine_pairs, register_model, score_samples

from .cluster import apply_profile


def make_part_dpo(profile: dict | None = None):
    """The part-dpo pipeline; `profile` is a checked cluster profile as a dict, or None."""

    @dsl.pipeline(name="part-dpo", description="Flow-DPO of a part-aware 3D generator against inter-part penetration")
    def part_dpo(
        prepare: dict,
        rollout: dict,
        score: dict,
        pairs: dict,
        train: dict,
        evaluate: dict,
        register: dict,
        experiment: str = "genalign-part-dpo",
        num_shards: int = 2,
    ):
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        closer = close_tracking(experiment=experiment, pipeline_run=run_id)
        apply_profile(closer, None, profile)
        with dsl.ExitHandler(closer, name="tracked-run"):
            prep = prepare_parts(config=prepare, experiment=experiment, pipeline_run=run_id, num_shards=num_shards)
            apply_profile(prep, "prepare-parts", profile)
            with dsl.ParallelFor(prep.outputs["Output"], name="shards") as shard:
                roll = rollout_parts(
                    config=rollout, experiment=experiment, pipeline_run=run_id, shard=shard,
                    num_shards=num_shards, conditions=prep.outputs["conditions"], model=prep.outputs["model"],
                )
                apply_profile(roll, "rollout-parts", profile)
                scored = score_samples(
                    config=score, experiment=experiment, pipeline_run=run_id, pipeline="part-dpo",
                    samples=roll.outputs["samples"], shard=shard,
                )
                apply_profile(scored, "score-samples", profile)
            mined = mine_pairs(
                config=pairs, experiment=experiment, pipeline_run=run_id, pipeline="part-dpo",
                scored=dsl.Collected(scored.outputs["scored"]),
            )
            apply_profile(mined, "mine-pairs", profile)
            trained = train_flow_dpo(
                config=train, experiment=experiment, pipeline_run=run_id,
                model=prep.outputs["model"], pairs=mined.outputs["pairs"],
            )
            apply_profile(trained, "train-flow-dpo", profile)
            evaluated = evaluate_parts(
                config=evaluate, experiment=experiment, pipeline_run=run_id, model=prep.outputs["model"],
                adapter=trained.outputs["adapter"], conditions=prep.outputs["eval_conditions"],
            )
            apply_profile(evaluated, "evaluate-parts", profile)
            registered = register_model(
                config=register, experiment=experiment, pipeline_run=run_id, pipeline="part-dpo",
                adapter=trained.outputs["adapter"], report=evaluated.outputs["report"], pairs=mined.outputs["pairs"],
            )
            apply_profile(registered, "register-model", profile)

    return part_dpo


part_dpo = make_part_dpo()

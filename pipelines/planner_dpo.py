"""planner-dpo: iterative on-policy ("snowball") DPO of a vision-language planner.

prepare -> shard -> evaluate the base, then for each iteration i (unrolled at compile time):
rollout (ParallelFor over sub-shards of shard i) -> execute -> label -> pairs ->
accumulate pairs 0..i -> train a fresh adapter from the base (DPO, trl) + merge ->
evaluate (history of all iterations so far); finally register the last adapter. N = 1 is
the single-round mode. One MLflow parent run per pipeline run, closed by the exit handler.

`make_planner_dpo(profile, iterations=N, resume=...)` builds it; with `resume` (see
`genalign.resume`) iterations < `resume["iteration"]` are not run: their artifacts are
imported from the earlier run (`dsl.importer`), and the run goes on from there.
"""

from kfp import dsl
from kfp.dsl import Artifact, Model

from components.planner_dpo import (
    evaluate_planner,
    execute_plans,
    label_plans,
    prepare_planner,
    rollout_planner,
    shard_planner,
    train_planner,
)
from components.shared import accumulate_pairs, mine_pairs, register_model
from components.trainjob import train_planner_trainjob

from .cluster import apply_profile, exit_task, imported, training_task

PIPELINE = "planner-dpo"


def make_planner_dpo(profile: dict | None = None, *, iterations: int = 5, doc: str = "",
                     resume: dict | None = None):
    """The planner-dpo pipeline with `iterations` on-policy rounds; `profile` is a checked
    cluster profile as a dict or None; `doc` the docstring whose Args describe the
    parameters (from the declaration); `resume` = {"iteration": k, "uris": {...}}
    continues an earlier run from iteration k."""
    start = resume["iteration"] if resume else 0
    if not 0 <= start < iterations:
        raise ValueError(f"resume iteration {start}: expected 0 <= k < iterations ({iterations})")

    def planner_dpo(
        prepare: dict,
        shard: dict,
        rollout: dict,
        execute: dict,
        label: dict,
        pairs: dict,
        accumulate: dict,
        train: dict,
        evaluate: dict,
        register: dict,
        preset: str = "tiny",
        experiment: str = "genalign-planner-dpo",
        subshards: int = 1,
    ):
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        track = {"experiment": experiment, "pipeline_run": run_id}
        closer = exit_task(profile, ["train-planner"], pipeline=PIPELINE, preset=preset, **track)
        with dsl.ExitHandler(closer, name="tracked-run"):
            if resume:
                uris = resume["uris"]
                dataset = imported(uris, "prepare-planner.dataset", Artifact)
                eval_dataset = imported(uris, "prepare-planner.eval_dataset", Artifact)
                base, shards = imported(uris, "prepare-planner.model", Model), imported(uris, "shard-planner.shards", Artifact)
                model = imported(uris, "train-planner.merged", Model)
                acc = imported(uris, "accumulate-pairs.accumulated", Artifact)
                history = imported(uris, "evaluate-planner.report", Artifact)
                sub = shard_planner(config=shard, num_subshards=subshards, dataset=dataset, **track)
            else:
                prep = prepare_planner(config=prepare, **track)
                apply_profile(prep, profile)
                dataset, eval_dataset = prep.outputs["dataset"], prep.outputs["eval_dataset"]
                base = model = prep.outputs["model"]
                sub = shard_planner(config=shard, num_subshards=subshards, dataset=dataset, **track)
                shards, acc = sub.outputs["shards"], None
                ev = evaluate_planner(config=evaluate, iteration=-1, model=base, eval_dataset=eval_dataset, **track)
                apply_profile(ev, profile)
                history = ev.outputs["report"]
            apply_profile(sub, profile)
            for i in range(start, iterations):
                with dsl.ParallelFor(sub.outputs["Output"], name=f"rollouts-{i}") as part:
                    roll = rollout_planner(config=rollout, iteration=i, subshard=part, num_subshards=subshards,
                                           dataset=dataset, shards=shards, model=model, **track)
                    apply_profile(roll, profile)
                    exe = execute_plans(config=execute, samples=roll.outputs["samples"], dataset=dataset, **track)
                    apply_profile(exe, profile)
                    lab = label_plans(config=label, executed=exe.outputs["executed"], dataset=dataset, **track)
                    apply_profile(lab, profile)
                mined = mine_pairs(config=pairs, iteration=i, scored=dsl.Collected(lab.outputs["scored"]),
                                   pipeline=PIPELINE, **track)
                apply_profile(mined, profile)
                previous = {} if acc is None else {"previous": acc}
                accumulated = accumulate_pairs(config=accumulate, iteration=i, pairs=mined.outputs["pairs"],
                                               pipeline=PIPELINE, **previous, **track)
                apply_profile(accumulated, profile)
                acc = accumulated.outputs["accumulated"]
                trained = training_task(train_planner, train_planner_trainjob, profile,
                                        config=train, iteration=i, model=base, pairs=acc, **track)
                model = trained.outputs["merged"]
                ev = evaluate_planner(config=evaluate, iteration=i, model=model, eval_dataset=eval_dataset,
                                      history=history, pairs=mined.outputs["pairs"],
                                      adapter=trained.outputs["adapter"], **track)
                apply_profile(ev, profile)
                history = ev.outputs["report"]
            registered = register_model(config=register, adapter=trained.outputs["adapter"], report=history,
                                        pairs=acc, model=base, pipeline=PIPELINE, **track)
            apply_profile(registered, profile)

    planner_dpo.__doc__ = doc
    return dsl.pipeline(name=PIPELINE, description=doc.split("\n")[0] if doc else None)(planner_dpo)

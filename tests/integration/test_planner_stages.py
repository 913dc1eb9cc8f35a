"""The planner-dpo stages end to end on a tiny Qwen2-VL planner and the synthetic world:
prepare, shard, rollout, execute, label, pairs, accumulate, train, evaluate (base and
iteration 0), each artifact checked; then bad input, each counted and reported rather
than crashing: malformed plans, executor failures and timeouts, tied questions, MMSI rows
with missing images or malformed fields, an unsupported model type, and the MLLM critic.

The warm start here is 100 steps at lr 5e-3 (about 10 s on one core): fewer leave every
plan of the random-init planner malformed, so every question ties and there is no pair.
"""

import json
import math
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from genalign.artifacts import link_or_copy
from genalign.data.mmsi import MMSIError, read_dataset
from genalign.data.planner_pairs import read_qwen_json, read_trl_jsonl, trl_dataset
from genalign.data.planner_prompt import planner_prompt
from genalign.data.scene_views import instruction_for
from genalign.data.spatial_scenes import load_scene
from genalign.generators.plan_format import format_plan
from genalign.models.refs import model_dir
from genalign.models.vlm import VLMConfigError, load_vlm
from genalign.pairs import NoPairsError
from genalign.records import Pair, Sample, ScoredSample, read_jsonl, write_jsonl
from genalign.stages import run_stage
from genalign.storage import read_manifest, write_manifest

pytestmark = pytest.mark.integration

K = 4
PREPARE = {
    "source": "synthetic", "train_samples": 8, "eval_samples": 4, "base_model": "tiny://tiny-qwen2-vl",
    "warm_start": {"steps": 100, "batch_size": 4, "examples_per_row": 2, "lr": 0.005, "warmup_steps": 5},
}
ROLLOUT = {"sampling": {"k": K, "max_new_tokens": 48}}
PAIRS = {"higher_is_better": True, "min_gap": 0.3, "keep_weak": True}
TRAIN = {"dpo": {"rank": 4, "alpha": 8, "max_steps": 2, "per_device_batch_size": 2, "grad_accum": 1,
                 "gradient_checkpointing": False, "sft_weight": 1.0}}
EVALUATE = {"sampling": {"k": 2, "max_new_tokens": 48}, "gallery": 2}
ORACLE = {"critic": {"critic": "scene-oracle"}}


def rollout_round(d: Path, iteration: int) -> dict:
    """rollout -> execute -> label -> pairs of one iteration's shard; the stages' results."""
    out = {"rollout": run_stage("rollout-planner", ROLLOUT,
                                inputs={"dataset": d / "dataset", "shards": d / "shards", "model": d / "model"},
                                outputs={"samples": d / f"samples{iteration}"},
                                params={"iteration": iteration, "subshard": 0, "num_subshards": 1})}
    out["execute"] = run_stage("execute-plans", {}, inputs={"samples": d / f"samples{iteration}", "dataset": d / "dataset"},
                               outputs={"executed": d / f"executed{iteration}"})
    out["label"] = run_stage("label-plans", ORACLE, inputs={"executed": d / f"executed{iteration}", "dataset": d / "dataset"},
                             outputs={"scored": d / f"scored{iteration}"})
    out["pairs"] = run_stage("mine-pairs", PAIRS, inputs={"scored": [d / f"scored{iteration}"]},
                             outputs={"pairs": d / f"pairs{iteration}"})
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One pass of the pipeline (two rollout rounds, one training round) on 8 + 4 questions."""
    d = tmp_path_factory.mktemp("planner")
    results = {"prepare": run_stage("prepare-planner", PREPARE, inputs={},
                                    outputs={"dataset": d / "dataset", "eval_dataset": d / "eval", "model": d / "model"})}
    results["shard"] = run_stage("shard-planner", {"num_shards": 2}, inputs={"dataset": d / "dataset"},
                                 outputs={"shards": d / "shards"})
    results[0] = rollout_round(d, 0)
    results[1] = rollout_round(d, 1)
    results["accumulate0"] = run_stage("accumulate-pairs", {}, inputs={"pairs": d / "pairs0"},
                                       outputs={"accumulated": d / "acc0"})
    results["accumulate1"] = run_stage("accumulate-pairs", {}, inputs={"pairs": d / "pairs1", "previous": d / "acc0"},
                                       outputs={"accumulated": d / "acc1"})
    results["train"] = run_stage("train-planner", TRAIN, inputs={"model": d / "model", "pairs": d / "acc0"},
                                 outputs={"adapter": d / "adapter", "merged": d / "merged"})
    results["eval_base"] = run_stage("evaluate-planner", EVALUATE, inputs={"model": d / "model", "eval_dataset": d / "eval"},
                                     outputs={"report": d / "report-base"}, params={"iteration": -1})
    results["eval_0"] = run_stage(
        "evaluate-planner", EVALUATE,
        inputs={"model": d / "merged", "eval_dataset": d / "eval", "history": d / "report-base",
                "pairs": d / "acc0", "adapter": d / "adapter"},
        outputs={"report": d / "report-0"}, params={"iteration": 0})
    return d, results


# ------------------------------------------------------------------ the pipeline's artifacts


def test_artifacts_have_manifests_of_their_kind(run):
    d, _ = run
    kinds = {"dataset": "dataset", "eval": "dataset", "model": "model", "shards": "shards", "samples0": "samples",
             "executed0": "executed", "scored0": "scored", "pairs0": "pairs", "acc0": "pairs", "acc1": "pairs",
             "adapter": "adapter", "merged": "model", "report-base": "report", "report-0": "report"}
    for name, kind in kinds.items():
        assert read_manifest(d / name, kind)["kind"] == kind


def test_prepare_writes_disjoint_datasets_and_a_warm_started_planner(run):
    d, results = run
    train, held = read_dataset(d / "dataset"), read_dataset(d / "eval")
    assert (len(train), len(held)) == (8, 4)
    assert not {r["id"] for r in train} & {r["id"] for r in held}
    for row in train + held:
        assert all((d / ("dataset" if row in train else "eval") / rel).is_file() for rel in row["images"])
    assert results["prepare"].summary == {"train": 8, "eval": 4, "skipped": 0}
    metrics = results["prepare"].metrics
    assert metrics["sft/steps"] == 100 and metrics["sft/loss"] < metrics["sft/loss_first"]
    assert model_dir(d / "model") == d / "model" and (d / "model" / "config.json").is_file()


def test_shards_partition_the_question_ids(run):
    d, _ = run
    shards = json.loads((d / "shards" / "shards.json").read_text())["shards"]
    flat = [i for s in shards for i in s]
    assert len(flat) == len(set(flat)) and set(flat) == {r["id"] for r in read_dataset(d / "dataset")}
    assert sorted(len(s) for s in shards) == [4, 4]


def test_rollout_has_k_plans_per_question_with_the_prompt(run):
    d, results = run
    shard = json.loads((d / "shards" / "shards.json").read_text())["shards"][0]
    by_id = {r["id"]: r for r in read_dataset(d / "dataset")}
    rows = read_jsonl(d / "samples0" / "samples.jsonl", Sample)
    assert results[0]["rollout"].metrics["rollout/samples"] == len(rows) == K * len(shard)
    for cond_id in shard:
        mine = [r for r in rows if r.cond_id == cond_id]
        assert sorted(r.seed for r in mine) == list(range(K))
        for r in mine:
            assert r.meta["prompt"] == planner_prompt(by_id[cond_id]) and isinstance(r.output, str)
            assert r.iteration == 0 and all((d / "samples0" / f).is_file() for f in r.files.values())
    again = run_stage("rollout-planner", ROLLOUT,
                      inputs={"dataset": d / "dataset", "shards": d / "shards", "model": d / "model"},
                      outputs={"samples": d / "samples0"}, params={"iteration": 0, "subshard": 0, "num_subshards": 1})
    assert again.reused and again.metrics == results[0]["rollout"].metrics


def test_executed_rows_carry_the_plan_and_its_views(run):
    d, results = run
    rows = read_jsonl(d / "executed0" / "samples.jsonl", Sample)
    counts = results[0]["execute"].summary
    assert counts["plans"] == len(rows) and counts["malformed"] == sum(r.meta["plan"]["status"] == "failed" for r in rows)
    assert counts["instructions"] == sum(len(r.meta["executions"]) for r in rows) > 0
    assert counts["ok"] == sum(e["status"] == "ok" for r in rows for e in r.meta["executions"]) > 0
    for r in rows:
        plan, executions = r.meta["plan"], r.meta["executions"]
        assert plan["status"] in ("ok", "failed", "empty") and (plan["error"] is None) == (plan["status"] != "failed")
        assert [e["instruction"] for e in executions] == plan["instructions"]
        for e in executions:
            assert (e["image"] is not None) == (e["status"] == "ok")
            if e["image"]:
                assert (d / "executed0" / e["image"]).is_file() and e["image"] in r.files.values()


def test_scores_follow_the_plan_rules(run):
    d, results = run
    rows = read_jsonl(d / "scored0" / "scored.jsonl", ScoredSample)
    assert results[0]["label"].summary["scored"] == len(rows) and results[0]["label"].summary["unscored"] == 0
    for r in rows:
        status = r.meta["plan"]["status"]
        if status == "failed":
            assert r.score == -1.0
        elif status == "empty":
            assert r.score == 0.0
        else:
            assert 0.0 <= r.score <= 1.0 and r.detail["instructions"] == len(r.meta["plan"]["instructions"])
        assert all((d / "scored0" / f).is_file() for f in r.files.values())


def test_pairs_are_written_in_trl_and_qwen_formats(run):
    d, results = run
    pairs_dir = d / "pairs0"
    pairs = read_jsonl(pairs_dir / "pairs.jsonl", Pair)
    samples = {s.sample_id: s for s in read_jsonl(pairs_dir / "samples.jsonl", ScoredSample)}
    assert len(pairs) == results[0]["pairs"].metrics["pairs/pairs"] > 0
    for p in pairs:
        assert p.chosen_score - p.rejected_score == pytest.approx(p.gap) and p.gap > 0
        assert p.weak == (p.gap < PAIRS["min_gap"])
        assert samples[p.chosen].score == p.chosen_score and samples[p.rejected].score == p.rejected_score
    trl, qwen = read_trl_jsonl(pairs_dir / "pairs.trl.jsonl"), read_qwen_json(pairs_dir / "pairs.qwen.json")
    assert [x.pair_id for x in trl] == [x.pair_id for x in qwen] == [p.pair_id for p in pairs]
    for x, y, p in zip(trl, qwen, pairs):
        assert x == y
        assert (x.chosen, x.rejected) == (samples[p.chosen].output, samples[p.rejected].output)
        assert x.prompt == samples[p.chosen].meta["prompt"]
        assert x.images and all((pairs_dir / rel).is_file() for rel in x.images)
    from trl.data_utils import is_conversational

    ds = trl_dataset(trl, pairs_dir)
    assert len(ds) == len(pairs) and {"prompt", "chosen", "rejected", "images"} <= set(ds.column_names)
    assert is_conversational(ds[0]) and ds[0]["images"][0].mode == "RGB"


def test_accumulate_unions_the_iterations(run, tmp_path):
    d, results = run
    first = {p.pair_id for p in read_jsonl(d / "pairs0" / "pairs.jsonl", Pair)}
    second = {p.pair_id for p in read_jsonl(d / "pairs1" / "pairs.jsonl", Pair)}
    assert first and second and not first & second
    merged = read_jsonl(d / "acc1" / "pairs.jsonl", Pair)
    assert {p.pair_id for p in merged} == first | second
    assert {p.iteration for p in merged if p.pair_id in second} == {1}
    assert read_manifest(d / "acc1", "pairs")["counts"]["by_iteration"] == {"0": len(first), "1": len(second)}
    assert results["accumulate1"].metrics["accumulate/pairs"] == len(first | second)
    trl = read_trl_jsonl(d / "acc1" / "pairs.trl.jsonl")
    assert {x.pair_id for x in trl} == first | second
    assert all((d / "acc1" / rel).is_file() for x in trl for rel in x.images)
    kept = {s.sample_id for s in read_jsonl(d / "acc1" / "samples.jsonl", ScoredSample)}
    assert kept == {s for p in merged for s in (p.chosen, p.rejected)}
    windowed = run_stage("accumulate-pairs", {"window": 1}, inputs={"pairs": d / "pairs1", "previous": d / "acc0"},
                         outputs={"accumulated": tmp_path / "acc"})
    assert windowed.summary["by_iteration"] == {"1": len(second)}


def test_train_writes_an_adapter_and_a_loadable_merged_planner(run):
    d, results = run
    adapter = d / "adapter"
    assert (adapter / "adapter_config.json").is_file()
    weights = load_file(adapter / "adapter_model.safetensors")
    assert weights and all("lora_" in k for k in weights)
    assert any(float(v.abs().max()) > 0 for k, v in weights.items() if "lora_B" in k)  # zero-initialised, trained
    meta = json.loads((adapter / "genalign.json").read_text())
    assert meta["iteration"] == 0 and meta["pairs"]["iterations"] == [0]
    metrics = results["train"].metrics
    assert metrics["train/steps"] == 2 and math.isfinite(metrics["train/loss"])
    model, processor = load_vlm(d / "merged")
    assert not any("lora_" in name for name, _ in model.named_parameters())
    assert processor.tokenizer is not None


def test_evaluate_keeps_the_history_and_writes_the_report(run):
    d, results = run
    report = json.loads((d / "report-0" / "report.json").read_text())
    assert [e["label"] for e in report["history"]] == ["base", "iter 0"]
    assert [e["iteration"] for e in report["history"]] == [-1, 0]
    assert report["history"][0] == json.loads((d / "report-base" / "report.json").read_text())["history"][0]
    for name in ("report.html", "report.md", "history.png", "types.png", "table.txt", "rows.jsonl"):
        assert (d / "report-0" / name).is_file(), name
    rows = [json.loads(line) for line in (d / "report-0" / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 4 * EVALUATE["sampling"]["k"] and report["metrics"]["eval/n"] == len(rows)
    summary = json.loads((d / "report-0" / "summary.json").read_text())
    assert summary["pairs"]["counts"]["pairs"] == len(read_jsonl(d / "acc0" / "pairs.jsonl", Pair))
    assert summary["train"]["train/steps"] == 2
    assert "pairs" not in json.loads((d / "report-base" / "summary.json").read_text())
    assert "gate" in results["eval_0"].summary


def test_evaluate_refuses_an_iteration_without_history(run, tmp_path):
    d, _ = run
    with pytest.raises(ValueError, match="needs the previous report as history"):
        run_stage("evaluate-planner", EVALUATE, inputs={"model": d / "merged", "eval_dataset": d / "eval"},
                  outputs={"report": tmp_path / "r"}, params={"iteration": 0})
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------ bad input: counted, never a crash


def make_samples(directory: Path, dataset: Path, plans: dict[str, list[str]]) -> None:
    """A samples artifact of hand-written plans: {question id: [plan text, ...]}."""
    by_id = {r["id"]: r for r in read_dataset(dataset)}
    rows = []
    for cond_id, texts in plans.items():
        row = by_id[cond_id]
        for rel in row["images"]:
            link_or_copy(dataset / rel, directory / rel)
        rows += [Sample(sample_id=f"{cond_id}/k{j}", cond_id=cond_id, seed=j, iteration=0, output=text, status="ok",
                        files={f"image_{n}": rel for n, rel in enumerate(row["images"])},
                        meta={"prompt": planner_prompt(row), "images": list(row["images"])})
                 for j, text in enumerate(texts)]
    write_jsonl(directory / "samples.jsonl", rows)
    write_manifest(directory, kind="samples", counts={"samples": len(rows)})


def revealing(dataset: Path, row: dict) -> str:
    """An instruction whose view reveals the answer (the scene is built so that it does)."""
    return instruction_for(load_scene(dataset / row["meta"]["scene"]).reveal_views[0])


THINK = "Another view may show it."
FRONT = "view from the front"  # the front views never reveal (genalign.data.spatial_scenes)
OUTSIDE = "fly around the scene"


@pytest.fixture(scope="module")
def handmade(run):
    """Plans with known outcomes for four train questions: q0 mixed, q1 all malformed (a tie),
    q2 a weak pair (0.25 vs 0.0), q3 with an instruction outside the executor's vocabulary."""
    d, _ = run
    rows = read_dataset(d / "dataset")[:4]
    ids = [r["id"] for r in rows]
    plans = {
        ids[0]: ["<thinking>I would look from the back.</thinking>",  # no <instructions>
                 "<instructions><instruction>view from the back</instructions>",  # unbalanced
                 format_plan(THINK, [revealing(d / "dataset", rows[0])]),
                 "<instructions></instructions>"],
        ids[1]: ["<thinking>no plan", "<instructions><instruction>view from the left</instruction>"],
        ids[2]: [format_plan(THINK, [revealing(d / "dataset", rows[2]), FRONT, "view from the front at a low angle", FRONT]),
                 format_plan(THINK, [])],
        ids[3]: [format_plan(THINK, [OUTSIDE, revealing(d / "dataset", rows[3])]),
                 format_plan(THINK, [FRONT]),
                 format_plan(THINK, [OUTSIDE])],
    }
    out = d / "handmade"
    make_samples(out / "samples", d / "dataset", plans)
    executed = run_stage("execute-plans", {}, inputs={"samples": out / "samples", "dataset": d / "dataset"},
                         outputs={"executed": out / "executed"})
    labelled = run_stage("label-plans", ORACLE, inputs={"executed": out / "executed", "dataset": d / "dataset"},
                         outputs={"scored": out / "scored"})
    return d, out, ids, executed, labelled


def test_malformed_plans_are_counted_and_score_minus_one(handmade):
    _, out, ids, executed, labelled = handmade
    assert executed.summary == {"plans": 11, "malformed": 4, "empty": 2, "instructions": 9, "ok": 7, "failed": 2,
                                "timeout": 0}
    rows = {r.sample_id: r for r in read_jsonl(out / "executed" / "samples.jsonl", Sample)}
    assert "no <instructions> block" in rows[f"{ids[0]}/k0"].meta["plan"]["error"]
    assert "unbalanced tags" in rows[f"{ids[0]}/k1"].meta["plan"]["error"]
    assert rows[f"{ids[0]}/k0"].meta["executions"] == []
    failed = rows[f"{ids[3]}/k2"].meta["executions"][0]
    assert failed["status"] == "failed" and failed["image"] is None and "not in the vocabulary" in failed["error"]
    assert labelled.summary == {"scored": 11, "malformed": 4, "empty": 2, "unscored": 0}
    scores = {r.sample_id: r.score for r in read_jsonl(out / "scored" / "scored.jsonl", ScoredSample)}
    assert scores == {
        f"{ids[0]}/k0": -1.0, f"{ids[0]}/k1": -1.0, f"{ids[0]}/k2": 1.0, f"{ids[0]}/k3": 0.0,
        f"{ids[1]}/k0": -1.0, f"{ids[1]}/k1": -1.0,
        f"{ids[2]}/k0": 0.25, f"{ids[2]}/k1": 0.0,
        f"{ids[3]}/k0": 0.5, f"{ids[3]}/k1": 0.0, f"{ids[3]}/k2": 0.0,  # the failed instruction reveals nothing
    }


def test_ties_are_counted_and_weak_pairs_flagged(handmade):
    _, out, ids, _, _ = handmade
    result = run_stage("mine-pairs", PAIRS, inputs={"scored": [out / "scored"]}, outputs={"pairs": out / "pairs"})
    assert result.summary["ties"] == 1 and result.summary["pairs"] == 3 and result.summary["weak"] == 1
    pairs = {p.cond_id: p for p in read_jsonl(out / "pairs" / "pairs.jsonl", Pair)}
    assert set(pairs) == {ids[0], ids[2], ids[3]}
    assert pairs[ids[2]].weak and pairs[ids[2]].gap == pytest.approx(0.25)
    assert (pairs[ids[0]].chosen, pairs[ids[0]].rejected_score) == (f"{ids[0]}/k2", -1.0)
    assert not pairs[ids[0]].weak and not pairs[ids[3]].weak


def test_a_round_of_ties_is_counted_and_trains_nothing_wrong(handmade, tmp_path):
    d, _, ids, _, _ = handmade
    make_samples(tmp_path / "samples", d / "dataset", {
        ids[1]: ["not a plan", "<instructions>"],  # both -1.0
        ids[2]: [format_plan(THINK, [FRONT]), format_plan(THINK, [])],  # both 0.0
    })
    run_stage("execute-plans", {}, inputs={"samples": tmp_path / "samples", "dataset": d / "dataset"},
              outputs={"executed": tmp_path / "executed"})
    run_stage("label-plans", ORACLE, inputs={"executed": tmp_path / "executed", "dataset": d / "dataset"},
              outputs={"scored": tmp_path / "scored"})
    with pytest.raises(NoPairsError, match=r"no pairs from 1 scored shard.*'ties': 2"):
        run_stage("mine-pairs", PAIRS, inputs={"scored": [tmp_path / "scored"]}, outputs={"pairs": tmp_path / "pairs"})
    assert not (tmp_path / "pairs").exists()
    # Iterative runs go on: an empty, counted pairs artifact; the round trains an untrained
    # adapter that leaves the base planner as it is.
    result = run_stage("mine-pairs", {**PAIRS, "allow_empty": True}, inputs={"scored": [tmp_path / "scored"]},
                       outputs={"pairs": tmp_path / "pairs"})
    assert result.metrics["pairs/pairs"] == 0 and result.metrics["pairs/ties"] == 2
    assert (tmp_path / "pairs" / "pairs.jsonl").read_text() == ""
    run_stage("accumulate-pairs", {}, inputs={"pairs": tmp_path / "pairs"}, outputs={"accumulated": tmp_path / "acc"})
    trained = run_stage("train-planner", TRAIN, inputs={"model": d / "model", "pairs": tmp_path / "acc"},
                        outputs={"adapter": tmp_path / "adapter", "merged": tmp_path / "merged"})
    assert trained.metrics["train/steps"] == 0
    meta = json.loads((tmp_path / "adapter" / "genalign.json").read_text())
    assert "no pairs" in meta["extra"]["note"]
    base, _ = load_vlm(model_dir(d / "model"))
    merged, _ = load_vlm(tmp_path / "merged")
    for (name, a), (_, b) in zip(base.state_dict().items(), merged.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)


def test_executor_timeouts_are_counted_and_reveal_nothing(handmade, tmp_path, monkeypatch):
    d, out, ids, _, _ = handmade
    from genalign.executors import render_view

    def slow(*args, **kwargs):  # a stuck render: the executor stops waiting after timeout_s
        time.sleep(0.5)
        return real(*args, **kwargs)

    real = render_view.render_scene
    monkeypatch.setattr(render_view, "render_scene", slow)
    cfg = {"render_view": {"timeout_s": 0.01}}
    executed = run_stage("execute-plans", cfg, inputs={"samples": out / "samples", "dataset": d / "dataset"},
                         outputs={"executed": tmp_path / "executed"})
    assert executed.summary["timeout"] == 7 and executed.summary["failed"] == 2 and executed.summary["ok"] == 0
    assert executed.metrics["execute/timeout"] == 7.0
    rows = read_jsonl(tmp_path / "executed" / "samples.jsonl", Sample)
    for r in rows:
        for e in r.meta["executions"]:
            assert e["image"] is None and e["status"] in ("timeout", "failed")
            assert ("longer than" in e["error"]) == (e["status"] == "timeout")
        assert not any(k.startswith("generated_") for k in r.files)
    run_stage("label-plans", ORACLE, inputs={"executed": tmp_path / "executed", "dataset": d / "dataset"},
              outputs={"scored": tmp_path / "scored"})
    scored = {r.sample_id: r for r in read_jsonl(tmp_path / "scored" / "scored.jsonl", ScoredSample)}
    assert scored[f"{ids[0]}/k2"].score == 0.0  # the revealing view timed out
    assert scored[f"{ids[0]}/k2"].detail["outcome"] == "scored"
    assert all(r.score in (-1.0, 0.0) for r in scored.values())


@pytest.mark.parametrize("method", ["explicit", "confidence"])
def test_mllm_critic_scores_or_counts_unscored(handmade, method):
    """The random-init critic's 1-10 answers do not parse (counted, score None); its
    confidence always gives a score on [0, 1]."""
    d, out, _, _, _ = handmade
    cfg = {"critic": {"critic": "mllm-judge", "judge_model": "tiny://tiny-qwen2-vl", "judge": {"method": method}}}
    result = run_stage("label-plans", cfg, inputs={"executed": out / "executed", "dataset": d / "dataset"},
                       outputs={"scored": out / f"judged-{method}"})
    rows = read_jsonl(out / f"judged-{method}" / "scored.jsonl", ScoredSample)
    assert len(rows) == 11 and all(r.scorer == "mllm-judge" for r in rows)
    judged = unscored = 0
    for r in rows:
        status = r.meta["plan"]["status"]
        if status == "failed":
            assert r.score == -1.0
        elif status == "empty" or not any(e["image"] for e in r.meta["executions"]):
            assert r.score == 0.0 and r.detail["outcome"] == "empty"  # nothing to judge
        else:
            judged += 1
            assert r.detail["method"] == method
            if r.score is None:
                unscored += 1
                assert r.detail["explicit_error"].startswith(("unparseable: ", "out of range: "))
            else:
                assert 0.0 <= r.score <= 1.0
    assert judged == 4  # ids[0]/k2, ids[2]/k0, ids[3]/k0, ids[3]/k1 have views
    assert result.summary["unscored"] == unscored and result.summary["scored"] == 11 - unscored
    assert result.metrics["label/unscored"] == unscored
    if method == "confidence":
        assert unscored == 0


# ------------------------------------------------------------------ bad input: data and models


def mmsi_row(i: int, image: str, **changes) -> dict:
    row = {"id": f"m{i}", "images": [image], "question": f"Which object is behind object {i}?",
           "options": ["A. red cube", "B. blue sphere"], "answer": "AB"[i % 2], "question_type": "behind"}
    return {**row, **changes}


def write_mmsi(tmp_path: Path, rows: list[dict]) -> Path:
    from PIL import Image

    (tmp_path / "imgs").mkdir(exist_ok=True)
    for i in range(len(rows)):
        Image.new("RGB", (56, 56), (40 * i, 100, 200)).save(tmp_path / "imgs" / f"m{i}.png")
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def prepare_mmsi(data: Path, out: Path):
    cfg = {"source": "mmsi", "data": str(data), "train_samples": 8, "eval_samples": 1, "warm_start": None,
           "base_model": "tiny://tiny-qwen2-vl"}
    return run_stage("prepare-planner", cfg, inputs={},
                     outputs={"dataset": out / "dataset", "eval_dataset": out / "eval", "model": out / "model"})


def test_mmsi_rows_with_missing_images_are_left_out_and_recorded(tmp_path):
    rows = [mmsi_row(i, f"imgs/m{i}.png") for i in range(5)]
    rows[2]["images"] = ["imgs/gone.png"]
    rows[4]["images"] = [str(tmp_path / "imgs" / "m4.png")]  # an absolute path is copied in too
    result = prepare_mmsi(write_mmsi(tmp_path, rows), tmp_path / "out")
    assert result.summary == {"train": 3, "eval": 1, "skipped": 1} and result.metrics["data/skipped"] == 1.0
    assert read_manifest(tmp_path / "out" / "dataset", "dataset")["counts"]["skipped"] == 1
    skipped = json.loads((tmp_path / "out" / "dataset" / "skipped.json").read_text())
    assert [(s["id"], s["line"]) for s in skipped] == [("m2", 3)] and "gone.png" in skipped[0]["reason"]
    kept = read_dataset(tmp_path / "out" / "dataset") + read_dataset(tmp_path / "out" / "eval")
    assert sorted(r["id"] for r in kept) == ["m0", "m1", "m3", "m4"]
    for r in kept:  # self-contained: every image inside its artifact
        assert not any(Path(rel).is_absolute() for rel in r["images"])
    from genalign.models.refs import resolve

    assert model_dir(tmp_path / "out" / "model") == resolve("tiny://tiny-qwen2-vl")


def test_malformed_mmsi_row_fails_before_any_work(tmp_path):
    rows = [mmsi_row(i, f"imgs/m{i}.png") for i in range(4)]
    rows[3]["answer"] = "yes"
    data = write_mmsi(tmp_path, rows)
    with pytest.raises(MMSIError, match=rf"{data}:4: answer: expected one of \['A', 'B'\], got 'yes'"):
        prepare_mmsi(data, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unknown_model_type_is_named_by_rollout(run, tmp_path):
    d, _ = run
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(VLMConfigError, match=rf"{model / 'config.json'}: model_type 'llama' is not a supported"):
        run_stage("rollout-planner", ROLLOUT, inputs={"dataset": d / "dataset", "shards": d / "shards", "model": model},
                  outputs={"samples": tmp_path / "samples"}, params={"iteration": 0, "subshard": 0, "num_subshards": 1})
    assert not (tmp_path / "samples").exists()

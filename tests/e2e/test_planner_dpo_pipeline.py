"""planner-dpo end to end through kfp.local on its e2e preset (the tiny preset scaled down), three iterations.

Two runs go side by side, each in its own genalign home (MLflow store, caches): one
uninterrupted, and one that fails at the rollout of iteration 2 (GENALIGN_FAIL_STAGE),
is then resumed with `--resume-from <run> --resume-iter 2`. The resumed run must give
the same pairs and the same final adapter as the uninterrupted one. The uninterrupted
run's artifacts are checked too: per-iteration reports and summaries, the pairs formats,
the registered version and its lineage tags.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from genalign.config.presets import load_preset
from genalign.data.planner_pairs import read_qwen_json, read_trl_jsonl
from genalign.stages import run_stage

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = "genalign-planner-dpo-test"


def genalign(home: Path, cache: Path, *args: str, fail: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "GENALIGN_HOME": str(home), "GENALIGN_CACHE": str(cache), "OMP_NUM_THREADS": "1",
           "TQDM_DISABLE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("GENALIGN_FAIL_STAGE", None)
    if fail:
        env["GENALIGN_FAIL_STAGE"] = fail
    cmd = [sys.executable, "-m", "genalign.cli", "run", "planner-dpo", "--preset", "e2e",
           "--pipeline-root", str(home / "kfp"), *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def outputs(home: Path) -> dict:
    """{(stage, iteration): {output: uri}} of the finished stages in `home`'s MLflow store,
    and the pipeline run ids (parents) found there."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home / 'mlflow.db'}"
    try:
        from mlflow.tracking import MlflowClient

        from genalign.resume import finished_outputs
        from genalign.tracking import PIPELINE_RUN_TAG

        client = MlflowClient()
        exp = client.get_experiment_by_name(EXPERIMENT)
        parents = [r for r in client.search_runs([exp.experiment_id]) if PIPELINE_RUN_TAG in r.data.tags]
        found = {}
        for parent in sorted(parents, key=lambda r: r.info.start_time):
            for d in finished_outputs(EXPERIMENT, parent.data.tags[PIPELINE_RUN_TAG]):
                found[(d["stage"], d["iteration"])] = d["outputs"]
        return {"outputs": found, "runs": [p.data.tags[PIPELINE_RUN_TAG] for p in parents], "client": client,
                "parents": parents}
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    full_home, cut_home = tmp_path_factory.mktemp("full"), tmp_path_factory.mktemp("cut")
    # The warm-started base once, in a cache both runs share (it is cached by config).
    cache = tmp_path_factory.mktemp("cache")
    warm = tmp_path_factory.mktemp("warm")
    os.environ["GENALIGN_CACHE"] = str(cache)
    try:
        run_stage("prepare-planner", load_preset("planner-dpo", "e2e")["prepare"], inputs={},
                  outputs={"dataset": warm / "d", "eval_dataset": warm / "e", "model": warm / "m"})
    finally:
        os.environ.pop("GENALIGN_CACHE", None)
    full = genalign(full_home, cache)
    cut = genalign(cut_home, cache, fail="rollout-planner:2")
    cut_log, _ = cut.communicate(timeout=900)
    assert cut.returncode != 0, cut_log[-3000:]
    assert "rollout-planner fails on purpose" in cut_log
    assert "--resume-from" in cut_log  # the failed run says how to resume it
    (run_id,) = outputs(cut_home)["runs"]
    resumed = genalign(cut_home, cache, "--resume-from", run_id, "--resume-iter", "2")
    resumed_log, _ = resumed.communicate(timeout=900)
    full_log, _ = full.communicate(timeout=900)
    assert full.returncode == 0, full_log[-5000:]
    assert resumed.returncode == 0, resumed_log[-5000:]
    return {"full": outputs(full_home), "cut": outputs(cut_home), "full_log": full_log,
            "resumed_log": resumed_log, "cut_run": run_id}


def path(uri: str) -> Path:
    return Path(uri)


def test_the_resumed_run_did_not_redo_earlier_iterations(runs):
    cut = runs["cut"]["outputs"]
    assert len(runs["cut"]["runs"]) == 2  # the failed run and the resumed one
    # iterations 0 and 1 ran once, in the failed run; iteration 2 once, in the resumed run
    for it in (0, 1, 2):
        assert ("train-planner", it) in cut and ("evaluate-planner", it) in cut
    assert ("prepare-planner", None) in cut
    assert f"resuming run {runs['cut_run']} at iteration 2" in runs["resumed_log"]
    assert "Task 'prepare-planner'" not in runs["resumed_log"].replace("\x1b[96m", "").replace("\x1b[0m", "")


def test_resumed_run_gives_the_same_pairs_and_adapter(runs):
    full, cut = runs["full"]["outputs"], runs["cut"]["outputs"]
    for stage, key in (("mine-pairs", "pairs"), ("accumulate-pairs", "accumulated")):
        a = (path(full[(stage, 2)][key]) / "pairs.jsonl").read_text()
        b = (path(cut[(stage, 2)][key]) / "pairs.jsonl").read_text()
        assert a == b and a.strip(), stage
    a = load_file(path(full[("train-planner", 2)]["adapter"]) / "adapter_model.safetensors")
    b = load_file(path(cut[("train-planner", 2)]["adapter"]) / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    ra = json.loads((path(full[("evaluate-planner", 2)]["report"]) / "report.json").read_text())
    rb = json.loads((path(cut[("evaluate-planner", 2)]["report"]) / "report.json").read_text())
    assert [e["metrics"] for e in ra["history"]] == [e["metrics"] for e in rb["history"]]


def test_reports_and_summaries_cover_every_iteration(runs):
    full = runs["full"]["outputs"]
    report = path(full[("evaluate-planner", 2)]["report"])
    data = json.loads((report / "report.json").read_text())
    assert [e["label"] for e in data["history"]] == ["base", "iter 0", "iter 1", "iter 2"]
    assert set(data["comparison"]["gate"]) >= {"passed", "checks", "reason"}
    for name in ("history.png", "types.png", "report.html", "report.md", "table.txt", "rows.jsonl"):
        assert (report / name).stat().st_size > 100, name
    for it in range(3):
        summary = json.loads((path(full[("evaluate-planner", it)]["report"]) / "summary.json").read_text())
        assert summary["iteration"] == it
        assert summary["pairs"]["counts"]["pairs"] >= 1
        assert summary["train"]["train/steps"] >= 1
        assert 0.0 <= summary["evaluation"]["reveal_share"] <= 1.0
    assert "iter 2 vs base" in runs["full_log"]  # the terminal table


def test_pairs_accumulate_and_load_in_both_formats(runs):
    full = runs["full"]["outputs"]
    sizes = []
    for it in range(3):
        acc = path(full[("accumulate-pairs", it)]["accumulated"])
        trl, qwen = read_trl_jsonl(acc / "pairs.trl.jsonl"), read_qwen_json(acc / "pairs.qwen.json")
        assert [p.pair_id for p in trl] == [p.pair_id for p in qwen]
        assert all((acc / img).is_file() for p in trl for img in p.images)
        rows = [json.loads(line) for line in (acc / "pairs.jsonl").read_text().splitlines()]
        assert {r["iteration"] for r in rows} <= set(range(it + 1))
        sizes.append(len(rows))
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0]  # 0..i grows


def test_final_adapter_is_registered_with_lineage(runs):
    client = runs["full"]["client"]
    os.environ["MLFLOW_TRACKING_URI"] = client.tracking_uri
    try:
        version = client.get_model_version_by_alias("genalign-planner-dpo-test", "candidate")
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    assert version.tags["genalign.iteration"] == "2"
    assert version.tags["genalign.method"] == "lm_dpo"
    assert int(version.tags["genalign.pairs_count"]) >= 1
    assert "eval.reveal_share" in version.tags

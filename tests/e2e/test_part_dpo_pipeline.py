"""part-dpo end to end on its e2e preset (the tiny preset scaled down): the same stages called directly and
run as a pipeline through kfp.local give the same outputs; MLflow holds the parent run,
the stage runs and the registered adapter, which reproduces the evaluation when loaded
back with `PeftModel.from_pretrained` over the base."""

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from genalign.config.presets import load_preset
from genalign.stages import run_stage

pytestmark = pytest.mark.e2e



def run_direct(args: dict, out: Path) -> dict[str, Path]:
    paths = {name: out / name for name in ("cond", "eval", "model", "pairs", "adapter", "report", "reg")}
    run_stage("prepare-parts", args["prepare"], inputs={},
              outputs={"conditions": paths["cond"], "eval_conditions": paths["eval"], "model": paths["model"]})
    scored = []
    for shard in range(args["num_shards"]):
        run_stage("rollout-parts", args["rollout"], inputs={"conditions": paths["cond"], "model": paths["model"]},
                  outputs={"samples": out / f"samples{shard}"}, params={"shard": shard, "num_shards": args["num_shards"]})
        run_stage("score-samples", args["score"], inputs={"samples": out / f"samples{shard}"}, outputs={"scored": out / f"scored{shard}"})
        scored.append(out / f"scored{shard}")
    run_stage("mine-pairs", args["pairs"], inputs={"scored": scored}, outputs={"pairs": paths["pairs"]})
    run_stage("train-flow-dpo", args["train"], inputs={"model": paths["model"], "pairs": paths["pairs"]},
              outputs={"adapter": paths["adapter"]})
    run_stage("evaluate-parts", args["evaluate"],
              inputs={"model": paths["model"], "adapter": paths["adapter"], "conditions": paths["eval"]},
              outputs={"report": paths["report"]})
    return paths


@pytest.fixture(scope="module")
def runs(tmp_path_factory, part_dpo_run):
    """The stages run directly, and the pipeline run (tests/e2e/conftest.py)."""
    args = load_preset("part-dpo", "e2e")
    direct = run_direct(args, tmp_path_factory.mktemp("part-dpo-direct"))
    return args, direct, part_dpo_run


def one(run_dir: Path, pattern: str) -> Path:
    found = sorted(run_dir.glob(pattern))
    assert len(found) == 1, (pattern, found)
    return found[0]


def test_pipeline_and_direct_stages_agree(runs):
    args, direct, run_dir = runs
    kfp_pairs = one(run_dir, "mine-pairs/pairs/pairs.jsonl").read_text()
    assert kfp_pairs == (direct["pairs"] / "pairs.jsonl").read_text()
    assert kfp_pairs.strip(), "the pipeline mined no pairs"
    direct_report = json.loads((direct["report"] / "report.json").read_text())
    kfp_report = json.loads(one(run_dir, "evaluate-parts/report/report.json").read_text())
    for key, value in direct_report["metrics"].items():
        assert kfp_report["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert len(list(run_dir.glob("*/rollout-parts/samples/samples.jsonl"))) == args["num_shards"]
    assert "data:image/png;base64" in one(run_dir, "evaluate-parts/html").read_text()
    assert "penetration_mean" in one(run_dir, "evaluate-parts/summary").read_text()


def test_mlflow_parent_child_runs_and_registry(runs):
    from mlflow.tracking import MlflowClient

    from genalign.tracking import PIPELINE_RUN_TAG, tracking_uri

    _, _, run_dir = runs
    client = MlflowClient(tracking_uri())
    exp = client.get_experiment_by_name("genalign-part-dpo")
    parents = client.search_runs([exp.experiment_id], filter_string=f"tags.`{PIPELINE_RUN_TAG}` != ''")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    # the parent compares at the top level: preset, every stage's config, the final metrics
    assert parents[0].data.tags["genalign.preset"] == "e2e"
    assert parents[0].data.params["train-flow-dpo.beta"] == "2000.0"
    assert "eval/penetration_mean" in parents[0].data.metrics
    children = client.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    stages = sorted(r.data.tags["genalign.stage"] for r in children)
    assert all(r.data.tags["genalign.reused"] == "false" for r in children if "genalign.reused" in r.data.tags)
    assert stages == sorted(["prepare-parts", "rollout-parts-0", "rollout-parts-1", "score-samples-0", "score-samples-1", "mine-pairs",
                             "train-flow-dpo", "evaluate-parts", "register-model"])
    train_run = next(r for r in children if r.data.tags["genalign.stage"] == "train-flow-dpo")
    assert "train/loss" in train_run.data.metrics and "train/drift" in train_run.data.metrics
    assert train_run.data.params["beta"]

    registration = json.loads(one(run_dir, "register-model/registration/registration.json").read_text())
    mv = client.get_model_version_by_alias("genalign-part-dpo-test", "candidate")
    assert str(mv.version) == registration["version"]
    assert mv.tags["genalign.pipeline_run"] and mv.tags["genalign.base_model_sha256"]
    assert "eval.penetration_ratio" in mv.tags


def test_registered_adapter_reproduces_the_evaluation(runs, tmp_path):
    """Download the adapter from the registry, load it with PeftModel.from_pretrained over the
    base PartDiT, sample the held-out conditions again: the same penetration per sample."""
    from peft import PeftModel

    from genalign.artifacts import read_conditions
    from genalign.config.part_dpo import EvaluatePartsConfig
    from genalign.generators.parts import PartGenerator
    from genalign.models.part_dit import PartDiT
    from genalign.models.refs import resolve
    from genalign.models.vision import VisionEncoder
    from genalign.stages.part_dpo.evaluate_parts import measure

    args, _, run_dir = runs
    model = one(run_dir, "prepare-parts/model")
    adapter = resolve("mlflow://models/genalign-part-dpo-test@candidate", cache=tmp_path)
    assert (adapter / "adapter_config.json").is_file()
    dit = PeftModel.from_pretrained(PartDiT.from_pretrained(model / "dit"), adapter)
    gen = PartGenerator(dit, VisionEncoder.from_pretrained(model / "vision"))
    cond_dir = one(run_dir, "prepare-parts/eval_conditions")
    rows = measure(gen, read_conditions(cond_dir), cond_dir, EvaluatePartsConfig.from_dict(args["evaluate"]))
    report = json.loads(one(run_dir, "evaluate-parts/report/report.json").read_text())
    expected = [r["penetration"] for r in report["samples"]["tuned"]]
    assert [r["penetration"] for r in rows] == pytest.approx(expected, abs=1e-6)


ROOT = Path(__file__).resolve().parents[2]


def test_a_failed_run_resumes_after_its_pairs_with_the_same_result(runs, tmp_path):
    """A run that fails at evaluate-parts says how to resume; `--resume-from <run id>`
    imports prepare, pairs and adapter (MLflow records their URIs) and gives the
    uninterrupted run's evaluation."""
    _, _, run_dir = runs
    env = {**os.environ, "GENALIGN_HOME": str(tmp_path / "home"), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1",
           "GENALIGN_CACHE": os.environ.get("GENALIGN_CACHE") or str(Path(os.environ["GENALIGN_HOME"]) / "cache")}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "genalign.cli", "run", "part-dpo", "--preset", "e2e",
           "--pipeline-root", str(tmp_path / "kfp")]
    cut = subprocess.run(cmd, cwd=ROOT, env={**env, "GENALIGN_FAIL_STAGE": "evaluate-parts"},
                         capture_output=True, text=True, timeout=900)
    assert cut.returncode == 1, cut.stderr[-3000:]
    last = cut.stderr.strip().splitlines()[-1]
    assert last.startswith("genalign: stage evaluate-parts failed: InjectedFailure"), last
    hint = next(line for line in cut.stderr.splitlines() if "--resume-from" in line)
    run_id = hint.split("--resume-from ")[1].split()[0]
    resumed = subprocess.run([*cmd, "--resume-from", run_id], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming run {run_id}" in resumed.stdout
    new_run = max((tmp_path / "kfp").iterdir(), key=lambda p: p.stat().st_mtime)
    assert not list(new_run.glob("*rollout-parts*")) and not list(new_run.glob("train-flow-dpo"))
    expected = json.loads(one(run_dir, "evaluate-parts/report/report.json").read_text())["metrics"]
    got = json.loads(one(new_run, "evaluate-parts/report/report.json").read_text())["metrics"]
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)



def test_sigterm_closes_the_runs_mlflow_parent_as_killed(tmp_path):
    """`genalign run` stopped with SIGTERM (as a terminal closing or a supervisor does)
    closes the pipeline's MLflow parent run KILLED instead of leaving it RUNNING."""
    import signal
    import sqlite3
    import time

    from genalign.tracking import PIPELINE_RUN_TAG

    home = tmp_path / "home"
    env = {**os.environ, "GENALIGN_HOME": str(home), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1",
           "GENALIGN_CACHE": str(tmp_path / "cache")}
    env.pop("MLFLOW_TRACKING_URI", None)

    def parent_status() -> str | None:
        """Read from the store's tables directly: an MLflow client opened while the run
        creates the store would race its schema migration."""
        try:
            with contextlib.closing(sqlite3.connect(f"file:{home / 'mlflow.db'}?mode=ro", uri=True)) as db:
                row = db.execute("select r.status from runs r join tags t on t.run_uuid = r.run_uuid "
                                 "where t.key = ?", (PIPELINE_RUN_TAG,)).fetchone()
        except sqlite3.Error:
            return None
        return row[0] if row else None

    log = open(tmp_path / "run.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "genalign.cli", "run", "part-dpo", "--preset", "e2e",
                             "--pipeline-root", str(tmp_path / "kfp")], cwd=ROOT, env=env, start_new_session=True,
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while parent_status() is None and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            time.sleep(0.2)
        assert parent_status() == "RUNNING"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the stage subprocess kfp.local had started
        log.close()
    out = (tmp_path / "run.log").read_text()
    assert proc.returncode == 130, out[-2000:]
    assert "the run was stopped" in out
    assert parent_status() == "KILLED"

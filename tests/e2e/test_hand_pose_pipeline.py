"""hand-pose end to end through kfp.local on its e2e preset (the tiny preset scaled down):
one task per training phase, each phase's evaluation appended to the report, the final
model registered; the MLflow parent run holds one child run per phase."""

import json
from pathlib import Path

import pytest

from genalign.cli import main
from genalign.config.presets import load_preset

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hand-pose")
    assert main(["run", "hand-pose", "--preset", "e2e", "--pipeline-root", str(root / "kfp")]) == 0
    (run,) = list((root / "kfp").iterdir())
    return run


def test_every_phase_is_a_task_and_the_last_report_holds_them_all(run_dir):
    phases = load_preset("hand-pose", "e2e")["train"]["phases"]
    # kfp.local names the tasks train-hand-pose, train-hand-pose-2, ... (the UI shows the
    # display names train-hand-pose-0, -1, ...)
    models = sorted(run_dir.glob("train-hand-pose*/model/genalign.json"))
    assert len(models) == len(phases)
    assert sorted(json.loads(m.read_text())["extra"]["phase"] for m in models) == sorted(p["name"] for p in phases)
    reports = sorted(run_dir.glob("evaluate-hand-pose*/report/report.json"))
    assert len(reports) == len(phases)
    last = max((json.loads(r.read_text()) for r in reports), key=lambda r: r["phase"])
    assert [h["name"] for h in last["history"]] == [p["name"] for p in phases]
    for key in ("mpjpe", "pa_mpjpe", "pck_5px", "auc_0_50mm", "baseline_mpjpe"):
        assert f"eval/{key}" in last["metrics"], key


def test_mlflow_has_a_child_run_per_phase_and_the_registered_model(run_dir):
    from mlflow.tracking import MlflowClient

    from genalign.tracking import PIPELINE_RUN_TAG, tracking_uri

    client = MlflowClient(tracking_uri())
    exp = client.get_experiment_by_name("genalign-hand-pose")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if PIPELINE_RUN_TAG in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert "eval/mpjpe" in parents[0].data.metrics
    names = {r.info.run_name for r in runs}
    assert {"train-hand-pose-0", "train-hand-pose-1", "train-hand-pose-2", "evaluate-hand-pose-2"} <= names
    (version,) = client.search_model_versions("name = 'genalign-hand-pose-test'")
    assert version.tags["genalign.phases"] == "components,joint,physics"
    assert float(version.tags["eval.mpjpe"]) > 0

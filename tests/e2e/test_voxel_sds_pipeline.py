"""voxel-sds end to end through kfp.local on its e2e preset (the tiny preset scaled down):
the world prepared, the prior trained, two optimisations (the prompt and the control),
the evaluation's verdict, the map registered and exported to maps/; the MLflow parent
run holds one child run per task."""

import json
from pathlib import Path

import pytest

from genalign.cli import main
from genalign.data.voxel_map import read_map

pytestmark = pytest.mark.e2e

MODEL_NAME = "genalign-voxel-map-test"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("voxel-sds")
    assert main(["run", "voxel-sds", "--preset", "e2e", "--pipeline-root", str(root / "kfp")]) == 0
    (run,) = list((root / "kfp").iterdir())
    return run


def test_both_optimisations_and_the_verdict(run_dir):
    maps = sorted(run_dir.glob("optimise-voxels*/map/map.json"))
    assert len(maps) == 2
    prompts = {read_map(m).metadata["prompt"] for m in maps}
    assert prompts == {"a stone tower", "a sand pyramid"}
    (report,) = run_dir.glob("evaluate-voxels*/report/report.json")
    metrics = json.loads(report.read_text())["metrics"]
    assert metrics["eval/prompted_class_wins"] in (0.0, 1.0)
    # the verdict's evidence ("a stone tower" is a procedural class): the prompted class's
    # score of the prompted world, of the start and of the control run's world
    for key in ("eval/prompted_class_score", "eval/base_prompted_class_score", "eval/control_prompted_class_score"):
        assert 0.0 <= metrics[key] <= 1.0, (key, sorted(metrics))
    for name in ("report.html", "report.md"):
        assert (report.parent / name).stat().st_size > 0


def test_the_map_is_exported_and_registered(run_dir):
    from mlflow.tracking import MlflowClient

    from genalign.tracking import PIPELINE_RUN_TAG, tracking_uri

    (registration,) = run_dir.glob("register-voxels*/registration")
    summary = json.loads((registration / "registration.json").read_text())
    (entry,) = json.loads((registration / "maps" / "registry.json").read_text())["maps"]
    assert entry["name"] == summary["map"] == "trained_map_ground_1" and entry["prompt"] == "a stone tower"
    exported = read_map(registration / "maps" / entry["path"])
    assert exported.metadata["name"] == entry["name"] and exported.metadata["lineage"]["pipeline_run"]

    client = MlflowClient(tracking_uri())
    version = client.get_model_version(MODEL_NAME, summary["version"])
    assert version.tags["genalign.map_name"] == entry["name"]
    assert "candidate" in summary["aliases"]
    assert ("champion" in summary["aliases"]) == (entry["metrics"]["eval/prompted_class_wins"] == 1.0)

    exp = client.get_experiment_by_name("genalign-voxel-sds")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if PIPELINE_RUN_TAG in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert "eval/prompted_class_wins" in parents[0].data.metrics
    stages = sorted(r.data.tags["genalign.stage"] for r in runs if "genalign.stage" in r.data.tags)
    # the two optimise runs are told apart by their variant (0: the prompt, 1: the control)
    assert stages == ["evaluate-voxels", "optimise-voxels-0", "optimise-voxels-1", "prepare-voxels",
                      "register-voxels", "train-voxel-prior"]
    assert all(r.info.status == "FINISHED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]

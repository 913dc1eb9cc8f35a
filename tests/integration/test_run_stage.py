"""What run_stage owns around a stage: reuse by content, seals, s3:// artifacts, ranks,
a killed stage's leftovers, and the record of a failure."""

from __future__ import annotations

import json
import shutil

import pytest

from genalign.stages import InjectedFailure, run_stage

PREPARE = {"train_conditions": 4, "eval_conditions": 2, "base_model": "tiny://part-generator"}
ROLLOUT = {"samples_per_condition": 2, "steps": 2, "batch_size": 8}
SCORE = {"penetration": {"workers": 1}}


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    d = tmp_path_factory.mktemp("stages")
    run_stage("prepare-parts", PREPARE, inputs={},
              outputs={"conditions": d / "cond", "eval_conditions": d / "eval", "model": d / "model"})
    run_stage("rollout-parts", ROLLOUT, inputs={"conditions": d / "cond", "model": d / "model"},
              outputs={"samples": d / "samples"}, params={"shard": 0, "num_shards": 1})
    return d / "samples"


def test_a_sealed_output_is_reused_until_an_input_file_changes(samples, tmp_path):
    src = tmp_path / "samples"
    shutil.copytree(samples, src)
    first = run_stage("score-samples", SCORE, inputs={"samples": src}, outputs={"scored": tmp_path / "scored"})
    manifest = json.loads((tmp_path / "scored" / "manifest.json").read_text())
    assert manifest["stage"] == "score-samples" and manifest["payload"] and manifest["fingerprint"]
    again = run_stage("score-samples", SCORE, inputs={"samples": src}, outputs={"scored": tmp_path / "scored"})
    assert (first.reused, again.reused) == (False, True) and again.metrics == first.metrics

    # a swapped mesh: the same rows, other content -> scored again
    meshes = sorted(src.rglob("*.glb"))
    assert len(meshes) >= 2
    a, b = meshes[0].read_bytes(), meshes[1].read_bytes()
    meshes[0].write_bytes(b), meshes[1].write_bytes(a)
    swapped = run_stage("score-samples", SCORE, inputs={"samples": src}, outputs={"scored": tmp_path / "scored"})
    assert not swapped.reused

    # an output edited by hand no longer matches its seal -> recomputed
    rows = tmp_path / "scored" / "scored.jsonl"
    rows.write_text(rows.read_text().replace('"scorer"', '"scorer" ', 1))
    assert not run_stage("score-samples", SCORE, inputs={"samples": src}, outputs={"scored": tmp_path / "scored"}).reused


def test_another_config_is_not_reused(samples, tmp_path):
    out = {"scored": tmp_path / "scored"}
    run_stage("score-samples", SCORE, inputs={"samples": samples}, outputs=out)
    other = run_stage("score-samples", {"penetration": {"workers": 1, "reduce": "mean"}},
                      inputs={"samples": samples}, outputs=out)
    assert not other.reused


def test_a_killed_stages_temporaries_are_removed(samples, tmp_path):
    stale = tmp_path / ".scored.x1y2.tmp"
    stale.mkdir()
    (stale / "half.jsonl").write_text("{")
    run_stage("score-samples", SCORE, inputs={"samples": samples}, outputs={"scored": tmp_path / "scored"})
    assert not stale.exists() and (tmp_path / "scored" / "scored.jsonl").is_file()


def test_only_rank_0_writes_outputs(samples, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    result = run_stage("score-samples", SCORE, inputs={"samples": samples}, outputs={"scored": tmp_path / "scored"})
    assert result.metrics["score/samples"] > 0 and not (tmp_path / "scored").exists()


def test_inputs_and_outputs_on_s3(samples, tmp_path, moto_s3):
    s3 = moto_s3
    s3.create_bucket(Bucket="runs")
    for path in samples.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), "runs", f"r1/samples/{path.relative_to(samples).as_posix()}")
    local = run_stage("score-samples", SCORE, inputs={"samples": samples}, outputs={"scored": tmp_path / "scored"})
    remote = run_stage("score-samples", SCORE, inputs={"samples": "s3://runs/r1/samples"},
                       outputs={"scored": "s3://runs/r1/scored"})
    assert remote.metrics == local.metrics
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="runs", Prefix="r1/scored/")["Contents"]}
    assert {"r1/scored/manifest.json", "r1/scored/scored.jsonl"} <= keys
    with pytest.raises(Exception, match="no such artifact"):
        run_stage("score-samples", SCORE, inputs={"samples": "s3://runs/r1/nothing"},
                  outputs={"scored": tmp_path / "x"})


def test_a_failure_is_recorded_on_the_stage_run(samples, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from genalign.tracking import ERROR_TAG, tracking_uri

    monkeypatch.setenv("GENALIGN_FAIL_STAGE", "score-samples")
    tracking = {"experiment": "genalign-run-stage-test", "pipeline_run": "run-fail-1", "pipeline": "test"}
    with pytest.raises(InjectedFailure):
        run_stage("score-samples", SCORE, inputs={"samples": samples}, outputs={"scored": tmp_path / "s"},
                  tracking=tracking)
    client = MlflowClient(tracking_uri())
    exp = client.get_experiment_by_name("genalign-run-stage-test")
    (child,) = client.search_runs([exp.experiment_id], filter_string="tags.`genalign.stage` = 'score-samples'")
    assert child.info.status == "FAILED"
    assert child.data.tags[ERROR_TAG].startswith("InjectedFailure: GENALIGN_FAIL_STAGE=score-samples")


def test_a_training_stages_outputs_are_reused_only_at_the_same_thread_count(tmp_path):
    import torch

    outputs = {"conditions": tmp_path / "c", "eval_conditions": tmp_path / "e", "model": tmp_path / "m"}
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert not run_stage("prepare-parts", PREPARE, inputs={}, outputs=outputs).reused
        assert run_stage("prepare-parts", PREPARE, inputs={}, outputs=outputs).reused
        torch.set_num_threads(2)
        assert not run_stage("prepare-parts", PREPARE, inputs={}, outputs=outputs).reused
    finally:
        torch.set_num_threads(threads)

"""Secrets never reach the MLflow store: params, tags, metrics, the parent run and a
registered version, and the failure a stage records (a SQLite store is opened: seconds)."""

from __future__ import annotations

import json
import socket
import traceback

import pytest
from secret_sentinels import URL_PASSWORD, secret_sentinels  # tests/secret_sentinels.py

from genalign.config.refs import ModelRefError
from genalign.stages import run_stage
from genalign.tracking import (
    ERROR_TAG,
    MlflowTracker,
    end_pipeline_run,
    register_model_version,
    tracking_uri,
)

SENTINELS = secret_sentinels()


def stored(client, run_id: str) -> str:
    """Everything MLflow keeps of a run's data, as one text."""
    data = client.get_run(run_id).data
    return json.dumps({"params": data.params, "tags": data.tags, "metrics": data.metrics})


def assert_clean(text: str) -> None:
    leaked = [v for v in (*SENTINELS.values(), URL_PASSWORD) if v in text]
    assert not leaked, f"secrets stored: {leaked}\n{text}"


def test_the_mlflow_tracker_stores_no_secret(sentinels, tmp_path):
    key = sentinels["AWS_SECRET_ACCESS_KEY"]
    tracker = MlflowTracker.for_stage(experiment="genalign-secrets-test", pipeline_run="run-secrets-1",
                                      stage="score-samples", tags={"genalign.pipeline": f"p {key}"})
    tracker.log_params({"store": f"s3://id:{URL_PASSWORD}@minio:9000/b", "note": f"key {key}",
                        "hub.api_key": "plain-but-named", "steps": 4})
    tracker.set_tags({ERROR_TAG: f"ClientError: signature mismatch for {key}", "endpoint": f"key={key}"})
    tracker.log_metrics({f"eval/{key}": 1.0, "train/loss": 0.5})
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.txt").write_text("w")
    tracker.log_artifact(tmp_path / "model", "model")
    version = register_model_version(
        tracker, name="genalign-secrets-test", artifact_path="model",
        tags={"genalign.base_model": f"s3://id:{URL_PASSWORD}@bucket/base"}, aliases=[],
        description=f"trained with token {sentinels['HF_TOKEN']}",
    )
    tracker.end()
    end_pipeline_run("genalign-secrets-test", "run-secrets-1", preset=f"tiny-{sentinels['KFP_TOKEN']}")

    client = tracker.client
    child = json.loads(stored(client, tracker.run_id))
    assert child["params"] == {"store": "s3://***@minio:9000/b", "note": "key ***", "hub.api_key": "***", "steps": "4"}
    assert child["tags"][ERROR_TAG] == "ClientError: signature mismatch for ***"
    assert set(child["metrics"]) == {"eval/redacted", "train/loss"}
    mv = client.get_model_version("genalign-secrets-test", version)
    assert mv.tags["genalign.base_model"] == "s3://***@bucket/base"
    assert_clean(stored(client, tracker.run_id) + stored(client, tracker.parent_run_id)
                 + json.dumps(mv.tags) + mv.description + client.get_registered_model("genalign-secrets-test").description)


def test_a_stage_failing_on_the_registry_records_and_raises_it_without_the_password(sentinels, monkeypatch, tmp_path):
    """The model registry (a tracking server with a password in its URI) is down while the
    tracking store is up: the stage's MLflow run is closed FAILED with the reason masked,
    and the error keeps its type."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"http://alice:{URL_PASSWORD}@127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    tracking = {"experiment": "genalign-secrets-test", "pipeline_run": "run-secrets-2", "pipeline": "test"}
    config = {"train_conditions": 2, "eval_conditions": 1, "base_model": "mlflow://models/m@champion"}
    with pytest.raises(ModelRefError) as caught:
        run_stage("prepare-parts", config, inputs={},
                  outputs={k: tmp_path / k for k in ("conditions", "eval_conditions", "model")}, tracking=tracking)
    assert f"http://***@127.0.0.1:{port}/" in str(caught.value)
    assert_clean("".join(traceback.format_exception(caught.value)))

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri())
    exp = client.get_experiment_by_name("genalign-secrets-test")
    (child,) = client.search_runs([exp.experiment_id], filter_string="tags.`genalign.pipeline_run.child` = 'run-secrets-2'")
    assert child.info.status == "FAILED"
    assert child.data.tags[ERROR_TAG].startswith("ModelRefError: mlflow://models/m@champion: not in the registry")
    assert f"http://***@127.0.0.1:{port}/" in child.data.tags[ERROR_TAG]
    assert_clean(stored(client, child.info.run_id))

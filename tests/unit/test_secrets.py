"""Secrets never leak: what `genalign.secrets` masks, and the choke points that use it
(the trackers, run_stage, the CLI's printed errors, compiled pipelines)."""

from __future__ import annotations

import dataclasses
import socket
import traceback

import pytest
from secret_sentinels import URL_PASSWORD, secret_sentinels  # tests/secret_sentinels.py

from genalign import secrets
from genalign.cli import TOKEN_ENV, main
from genalign.config.pipelines import PIPELINES, STAGES
from genalign.config.refs import ModelRefError
from genalign.secrets import (
    MASK,
    RedactedError,
    is_secret_name,
    masked_errors,
    redact,
    redact_mapping,
)
from genalign.tracking import ERROR_TAG, MlflowTracker, NullTracker

SENTINELS = secret_sentinels()


def assert_clean(text: str) -> None:
    leaked = [v for v in (*SENTINELS.values(), URL_PASSWORD) if v in text]
    assert not leaked, f"secrets in the text: {leaked}\n{text}"


# ------------------------------------------------------------------------- redact


def test_the_value_of_every_secret_variable_is_masked_inside_a_longer_message(sentinels):
    for name, value in sentinels.items():
        assert redact(f"upload failed (key {value}, retrying)") == f"upload failed (key {MASK}, retrying)", name


def test_url_userinfo_is_masked_keeping_scheme_host_and_path():
    assert redact(f"API request to https://alice:{URL_PASSWORD}@mlflow.example.com:5000/api/2.0/x failed") == (
        "API request to https://***@mlflow.example.com:5000/api/2.0/x failed"
    )
    assert redact(f"'postgresql://mlflow:{URL_PASSWORD}@db/mlflow'") == "'postgresql://***@db/mlflow'"
    assert redact("s3://key:p@ss@bucket/prefix") == "s3://***@bucket/prefix"  # an unescaped @ in the password


def test_model_references_and_plain_urls_are_left_alone():
    for text in ("mlflow://models/part-dpo@champion", "hf://org/repo@main", "s3://bucket/key",
                 "https://kubeflow.example.com/pipeline/#/runs/details/run-1", "tiny://part-generator"):
        assert redact(text) == text


def test_authorization_credentials_and_secret_pairs_are_masked():
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJtZSJ9.c2lnbmF0dXJl"
    assert redact(f"headers: {{'Authorization': 'Bearer {jwt}'}}") == "headers: {'Authorization': 'Bearer ***'}"
    assert redact("host=db user=mlflow password=hunter2 dbname=mlflow") == "host=db user=mlflow password=*** dbname=mlflow"
    assert redact("GET /o?X-Amz-Security-Token=abc&x=1") == "GET /o?X-Amz-Security-Token=***&x=1"
    # what the CLI says about the token it sends is no secret
    assert redact("sent: bearer token from $KF_PIPELINES_TOKEN") == "sent: bearer token from $KF_PIPELINES_TOKEN"


def test_overlapping_secrets_are_masked_as_one(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "abcdefgh1234")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "1234wxyz99")  # its first four characters end the other
    monkeypatch.setenv("KFP_TOKEN", "defgh123")  # inside the first
    assert redact("x abcdefgh1234wxyz99 y") == f"x {MASK} y"
    assert redact("abcdefgh1234", also=["abcdefgh1234-longer"]) == MASK
    assert redact("abcdefgh1234-longer", also=["abcdefgh1234-longer"]) == MASK


def test_empty_and_short_values_are_not_masked(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")  # moto's: a word, not a secret
    monkeypatch.setenv("PGPASSWORD", "")
    assert secrets.secret_values() == []
    assert redact("/tmp/pytest/test_run0/out") == "/tmp/pytest/test_run0/out"
    assert redact("text", also=[None, "", "text"]) == "text"


def test_every_token_variable_of_the_cli_is_a_secret():
    assert set(TOKEN_ENV) <= set(secrets.SECRET_ENV)


def test_names_that_say_they_hold_a_secret():
    for name in ("MLFLOW_TRACKING_PASSWORD", "PGPASSWORD", "db.password", "api_key", "hub.api-key",
                 "X-Amz-Security-Token", "AWS_SECRET_ACCESS_KEY", "client_secret", "Authorization"):
        assert is_secret_name(name), name
    for name in ("max_new_tokens", "token_dim", "match_key", "similar_key", "AWS_ACCESS_KEY_ID", "genalign.error"):
        assert not is_secret_name(name), name


def _field_names(cls: type, prefix: str = "") -> list[str]:
    names = []
    for f in dataclasses.fields(cls):
        default = (f.default if f.default is not dataclasses.MISSING
                   else f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        names.append(prefix + f.name)
        if dataclasses.is_dataclass(default):
            names += _field_names(type(default), f"{prefix}{f.name}.")
    return names


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_no_stage_config_field_holds_a_secret(stage):
    """Configs are logged as MLflow params and passed as KFP parameters: credentials reach
    a task as environment from a Kubernetes Secret, never as a config field."""
    assert [n for n in _field_names(STAGES[stage].config_class()) if is_secret_name(n)] == []


def test_redact_mapping_masks_names_values_and_secret_named_entries(sentinels):
    key = sentinels["AWS_SECRET_ACCESS_KEY"]
    masked = redact_mapping({
        "db.password": "hunter2", "empty_token": "", "steps": 3, "beta": 0.1, "tags": ["a", key],
        "endpoint": f"https://alice:{URL_PASSWORD}@minio:9000", f"eval/{key}": 1.0, "plain": "kept",
    })
    assert masked == {
        "db.password": MASK, "empty_token": "", "steps": 3, "beta": 0.1, "tags": f"['a', '{MASK}']",
        "endpoint": "https://***@minio:9000", "eval/redacted": 1.0, "plain": "kept",
    }


# ------------------------------------------------------------------------ errors


def test_masked_errors_masks_the_message_and_its_chain_keeping_the_type(sentinels):
    token = sentinels["MLFLOW_TRACKING_TOKEN"]
    with pytest.raises(ModelRefError) as caught, masked_errors():
        try:
            raise ConnectionError(f"GET https://bob:{URL_PASSWORD}@mlflow/api with {token}")
        except ConnectionError as e:
            raise ModelRefError(f"mlflow://models/m@champion: not in the registry ({e})") from e
    assert str(caught.value) == "mlflow://models/m@champion: not in the registry (GET https://***@mlflow/api with ***)"
    assert_clean("".join(traceback.format_exception(caught.value)))


def test_an_error_whose_text_is_not_its_args_is_raised_as_a_redacted_error(sentinels):
    with pytest.raises(RedactedError) as caught, masked_errors():
        raise OSError(13, f"refused for {sentinels['PGPASSWORD']}")
    assert "PermissionError: [Errno 13] refused for ***" in str(caught.value)
    assert_clean("".join(traceback.format_exception(caught.value)))


def test_an_error_without_a_secret_is_untouched():
    error = ValueError("plain")
    with pytest.raises(ValueError) as caught, masked_errors():
        raise error
    assert caught.value is error and caught.value.args == ("plain",)


# ---------------------------------------------------------------------- trackers


def test_the_null_tracker_stores_no_secret(sentinels):
    tracker = NullTracker()
    key = sentinels["AWS_SECRET_ACCESS_KEY"]
    tracker.log_params({"store": f"s3://id:{URL_PASSWORD}@minio/b", "note": f"key {key}", "hf_token": "x" * 12,
                        "steps": 4})
    tracker.set_tags({ERROR_TAG: f"ClientError: signature mismatch for {key}"})
    tracker.log_metrics({f"eval/{key}": 1.0, "train/loss": 0.5})
    assert tracker.params == {"store": "s3://***@minio/b", "note": f"key {MASK}", "hf_token": MASK, "steps": 4}
    assert tracker.tags == {ERROR_TAG: f"ClientError: signature mismatch for {MASK}"}
    assert tracker.metrics == [(None, {"eval/redacted": 1.0, "train/loss": 0.5})]


class RecordingTracker(NullTracker):
    """A NullTracker that is also closed, as an MLflow child run is."""

    status: str | None = None

    def end(self, status: str = "FINISHED") -> None:
        self.status = status


def test_run_stage_records_and_raises_a_failure_with_its_secrets_masked(sentinels, monkeypatch, tmp_path):
    from genalign.stages import run_stage
    from genalign.stages.shared import mine_pairs

    key = sentinels["AWS_SECRET_ACCESS_KEY"]

    def leaky_run(cfg, **kwargs):
        raise RuntimeError(f"upload to https://id:{URL_PASSWORD}@s3.example.com/b refused (key {key})")

    tracker = RecordingTracker()
    monkeypatch.setattr(mine_pairs, "run", leaky_run)
    monkeypatch.setattr(MlflowTracker, "for_stage", classmethod(lambda cls, **kwargs: tracker))
    with pytest.raises(RuntimeError) as caught:
        run_stage("mine-pairs", {}, inputs={"scored": [tmp_path / "scored"]}, outputs={"pairs": tmp_path / "pairs"},
                  tracking={"experiment": "e", "pipeline_run": "r", "pipeline": "test"})
    assert tracker.status == "FAILED"
    assert tracker.tags[ERROR_TAG] == f"RuntimeError: upload to https://***@s3.example.com/b refused (key {MASK})"
    assert str(caught.value) == f"upload to https://***@s3.example.com/b refused (key {MASK})"
    assert_clean("".join(traceback.format_exception(caught.value)))


# --------------------------------------------------------------------------- CLI


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_cli_prints_a_registry_error_without_the_tracking_uri_password(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:{URL_PASSWORD}@127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    code = main(["stage", "prepare-parts", "--set", "base_model=mlflow://models/m@champion",
                 *(f"--out={k}={tmp_path / k}" for k in ("conditions", "eval_conditions", "model"))])
    out, err = capsys.readouterr()
    assert code == 2
    assert "genalign: error: mlflow://models/m@champion: not in the registry (API request to http://***@127.0.0.1:" in err
    assert_clean(out + err)


def test_an_unexpected_error_leaves_the_cli_with_the_tracking_uri_password_masked(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"nosuchscheme://alice:{URL_PASSWORD}@tracking.example.com/x")
    with pytest.raises(Exception) as caught:
        main(["stage", "prepare-parts", "--pipeline-run", "run-1",
              *(f"--out={k}={tmp_path / k}" for k in ("conditions", "eval_conditions", "model"))])
    text = "".join(traceback.format_exception(caught.value))
    assert "nosuchscheme://***@tracking.example.com/x" in text
    assert_clean(text + "".join(capsys.readouterr()))


PROFILE = """\
namespace: team-a
service_account: pipeline-runner
model_cache_pvc: model-cache
stages:
  train-flow-dpo: {gpus: 1, cpu: 8, memory: 64Gi}
  train-planner: {gpus: 1, cpu: 8, memory: 64Gi}
"""


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_a_compiled_pipeline_holds_no_secret_of_the_environment(pipeline, sentinels, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"https://alice:{URL_PASSWORD}@mlflow.example.com")
    (tmp_path / "cluster.yaml").write_text(PROFILE)
    out = tmp_path / f"{pipeline}.yaml"
    assert main(["compile", pipeline, "--profile", str(tmp_path / "cluster.yaml"), "-o", str(out)]) == 0
    assert_clean(out.read_text() + "".join(capsys.readouterr()))
    assert "secretAsEnv" in out.read_text()  # the credentials come from the Secret, by name

"""part-dpo against a real MLflow tracking server: PostgreSQL for runs and the registry,
moto's S3 server as the artifact store, both on loopback, artifacts proxied by the server.

The scaled-down pipeline runs through kfp.local with the embedded default store (SQLite;
the session's run of tests/e2e/conftest.py) and with MLFLOW_TRACKING_URI pointing at the
server: the evaluation
numbers agree, the server holds the parent run and its stage runs, the registered
version's bytes are in the bucket, and `mlflow://models/<name>@candidate` downloads the
adapter back through the server and loads over the base model with the same outputs as
the adapter the pipeline wrote.

Pitfalls met on the way (kept here so nobody meets them twice):
- `postgresql://` makes SQLAlchemy 2.1 load psycopg 3 ("No module named 'psycopg'");
  with psycopg2-binary the URI names the driver: `postgresql+psycopg2://`.
- PostgreSQL refuses to run as root: as root the server runs as the `postgres` user the
  Debian package creates (`runuser -u postgres --`), in a temp dir that user owns;
  pytest's tmp dirs are 0700 root and cannot be used for its data.
- `mlflow server` creates its tables in a fresh PostgreSQL database itself (alembic
  migrations at startup); with imports that takes ~20 s on 2 cores before /health
  answers. Its default of 4 uvicorn workers is pointless here: `--workers 1`.
- Only the server needs the S3 settings (MLFLOW_S3_ENDPOINT_URL=<moto>, any AWS keys):
  with `--serve-artifacts` runs get `mlflow-artifacts:/` URIs and clients upload and
  download over HTTP. The server run below removes every AWS/S3 variable to prove it.
- moto keeps objects under the `--artifacts-destination` prefix
  (s3://<bucket>/mlflow/<experiment>/<run>/artifacts/...), listable with boto3 against
  the moto endpoint.
- `genalign run` leaves MLFLOW_TRACKING_URI set in the calling process; each run here
  sets it (or deletes it) through monkeypatch so it is restored afterwards.
"""

import json
import os
from pathlib import Path
from urllib.parse import urlparse

import pytest
from services import tracking_stack  # tests/services.py
from test_part_dpo_pipeline import one

from genalign.cli import main

pytestmark = pytest.mark.e2e

MODEL_NAME = "genalign-part-dpo-test"  # register.model_name in configs/part-dpo/e2e.yaml
STAGES = sorted(["prepare-parts", "rollout-parts-0", "rollout-parts-1", "score-samples-0", "score-samples-1",
                 "mine-pairs", "train-flow-dpo", "evaluate-parts", "register-model"])
CLIENT_S3_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
                  "AWS_PROFILE", "MLFLOW_S3_ENDPOINT_URL")


@pytest.fixture(scope="session")
def tracking_server():
    """(MlflowServer, S3, Postgres), started once per session, stopped at its end."""
    with tracking_stack() as stack:
        yield stack


def run_pipeline(root: Path, env: dict[str, str | None]) -> Path:
    """One `genalign run part-dpo` with `env` applied (None deletes), restored afterwards."""
    cache = os.environ.get("GENALIGN_CACHE") or str(Path(os.environ["GENALIGN_HOME"]) / "cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENALIGN_HOME", str(root / "home"))
        mp.setenv("GENALIGN_CACHE", cache)  # both runs reuse one pretrained tiny model
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)  # restored after `run` sets it
        for key, value in env.items():
            if value is None:
                mp.delenv(key, raising=False)
            else:
                mp.setenv(key, value)
        assert main(["run", "part-dpo", "--preset", "e2e", "--pipeline-root", str(root / "kfp")]) == 0
    (run_dir,) = list((root / "kfp").iterdir())
    return run_dir


@pytest.fixture(scope="module")
def runs(tracking_server, tmp_path_factory, part_dpo_run):
    """The run with the embedded store (tests/e2e/conftest.py) and one on the server."""
    server, _, _ = tracking_server
    embedded = part_dpo_run
    remote = run_pipeline(
        tmp_path_factory.mktemp("remote"),
        {"MLFLOW_TRACKING_URI": server.uri, **{k: None for k in CLIENT_S3_VARS}},
    )
    return embedded, remote


@pytest.fixture
def server_env(tracking_server, monkeypatch):
    """This process as a client of the server, with no S3 settings of its own."""
    server, _, _ = tracking_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    for key in CLIENT_S3_VARS:
        monkeypatch.delenv(key, raising=False)
    return server


def test_same_evaluation_with_the_embedded_store_and_the_server(runs):
    embedded, remote = runs
    a = json.loads(one(embedded, "evaluate-parts/report/report.json").read_text())["metrics"]
    b = json.loads(one(remote, "evaluate-parts/report/report.json").read_text())["metrics"]
    assert a, "the evaluation reported no metrics"
    assert sorted(a) == sorted(b)
    for key, value in a.items():
        assert b[key] == pytest.approx(value, rel=1e-6, abs=1e-6), key
    assert one(embedded, "mine-pairs/pairs/pairs.jsonl").read_text() == one(remote, "mine-pairs/pairs/pairs.jsonl").read_text()


def test_server_holds_runs_and_registered_version_in_s3(runs, tracking_server, server_env):
    from mlflow.tracking import MlflowClient

    from genalign.tracking import PIPELINE_RUN_TAG

    _, remote = runs
    _, s3, _ = tracking_server
    client = MlflowClient(server_env.uri)
    exp = client.get_experiment_by_name("genalign-part-dpo")
    assert exp is not None and exp.artifact_location.startswith("mlflow-artifacts:"), exp
    parents = client.search_runs([exp.experiment_id], filter_string=f"tags.`{PIPELINE_RUN_TAG}` != ''")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", parents
    children = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'"
    )
    assert sorted(r.data.tags["genalign.stage"] for r in children) == STAGES
    assert all(r.info.status == "FINISHED" for r in children), [(r.info.run_name, r.info.status) for r in children]
    train = next(r for r in children if r.data.tags["genalign.stage"] == "train-flow-dpo")
    assert "train/loss" in train.data.metrics

    registration = json.loads(one(remote, "register-model/registration/registration.json").read_text())
    mv = client.get_model_version_by_alias(MODEL_NAME, "candidate")
    assert str(mv.version) == registration["version"] and mv.status == "READY"
    source = urlparse(mv.source)
    assert source.scheme == "mlflow-artifacts", mv.source
    # the version's source is the pyfunc model, which holds the peft directory as its artifact
    key = f"mlflow/{source.path.strip('/')}/artifacts/adapter/adapter_model.safetensors"
    assert key in s3.keys("mlflow/"), (key, s3.keys("mlflow/"))
    stored = s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read()
    assert stored == one(remote, "train-flow-dpo/adapter/adapter_model.safetensors").read_bytes()


def test_registered_adapter_downloads_through_the_server_and_loads(runs, server_env, tmp_path):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file

    from genalign.models.part_dit import PartDiT
    from genalign.models.refs import resolve

    _, remote = runs
    model = one(remote, "prepare-parts/model")
    written = one(remote, "train-flow-dpo/adapter")
    adapter = resolve(f"mlflow://models/{MODEL_NAME}@candidate", cache=tmp_path)
    assert tmp_path in adapter.parents and (adapter / "adapter_config.json").is_file()
    a, b = load_file(str(adapter / "adapter_model.safetensors")), load_file(str(written / "adapter_model.safetensors"))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)

    downloaded = PeftModel.from_pretrained(PartDiT.from_pretrained(model / "dit"), adapter).eval()
    local = PeftModel.from_pretrained(PartDiT.from_pretrained(model / "dit"), written).eval()
    cfg = downloaded.base_model.model.dit_config
    g = torch.Generator().manual_seed(0)
    parts = min(3, cfg.max_parts)
    x = torch.randn(2, parts, cfg.tokens_per_part, cfg.token_dim, generator=g)
    t = torch.rand(2, generator=g)
    cond = torch.randn(2, 5, cfg.cond_dim, generator=g)
    mask = torch.ones(2, parts, dtype=torch.bool)
    with torch.no_grad():
        out = downloaded(x, t, cond, mask)
        assert torch.equal(out, local(x, t, cond, mask))
        with downloaded.disable_adapter():
            base = downloaded(x, t, cond, mask)
    assert not torch.equal(out, base), "the adapter changes nothing: did training update it?"

"""part-dpo against an MLflow server that authenticates: the basic-auth app
(`mlflow server --app-name basic-auth`) on PostgreSQL, moto's S3 server as its artifact
store, all on loopback (tests/services.py).

Requests without credentials are refused; the admin creates a pipeline user with EDIT on
the registered models it publishes and a read-only person (genalign.registry_access); the pipeline, with its user's
credentials coming only from MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, logs its
runs and registers its adapter; the reader can read the version behind the alias but
cannot add a version or move the alias. No password reaches the output, the run's files,
the runs' params and tags, the model versions' tags or the stored artifacts.

What the auth app does here (MLflow 3.17):
- `default_permission = READ` lets every authenticated user read everything; writing to
  an existing experiment or registered model needs EDIT on it (403 without).
- Without workspaces every authenticated user may *create* experiments and registered
  models, and becomes their MANAGE owner; only names that already exist are protected.
  So the admin creates the registered models first and grants the pipeline user EDIT.
- The admin is created from the ini's admin_username/admin_password on the first start,
  in the `mlflow server` process, before uvicorn starts its worker.
- Clients read credentials per request (`get_default_host_creds`), so one process can act
  as several users by changing MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.
"""

import base64
import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from services import tracking_stack  # tests/services.py
from test_part_dpo_pipeline import one
from test_tracking_server import CLIENT_S3_VARS, MODEL_NAME, STAGES, run_pipeline

pytestmark = pytest.mark.e2e

ADMIN = "genalign-admin"
PIPELINE_USER = "genalign-pipeline"
READER = "reader"
EXPERIMENT = "genalign-part-dpo"  # experiment in configs/part-dpo/e2e.yaml
SMOKE = "genalign-auth-smoke"  # experiment and registered model of the small client check
PREFIX = "genalign-"  # the pipeline user gets EDIT on the registered models named so


def new_password() -> str:
    # URL-safe: unchanged when quoted into a URI, so a plain substring search finds it there too
    return secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def passwords() -> dict[str, str]:
    """username -> password, fresh for this module; `users` returns them once the users exist."""
    return {ADMIN: new_password(), PIPELINE_USER: new_password(), READER: new_password()}


@pytest.fixture(scope="module")
def auth_server(passwords):
    """(MlflowServer, S3, Postgres) with the basic-auth app, started once for this module."""
    with tracking_stack(admin=(ADMIN, passwords[ADMIN])) as stack:
        yield stack


@contextmanager
def as_user(uri: str, username: str, password: str) -> Iterator[None]:
    """This process as a client of `uri` with `username`'s credentials in the environment and
    no S3 settings of its own; restored afterwards."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("MLFLOW_TRACKING_USERNAME", username)
        mp.setenv("MLFLOW_TRACKING_PASSWORD", password)
        for key in CLIENT_S3_VARS:
            mp.delenv(key, raising=False)
        yield


@pytest.fixture(scope="module")
def users(auth_server, passwords):
    """The admin creates the pipeline user and the reader, and the registered models the
    pipeline publishes; `grant_edit` then gives the pipeline user EDIT on them."""
    from mlflow.server import get_app_client
    from mlflow.tracking import MlflowClient

    from genalign.registry_access import ensure_user, grant_edit

    server, _, _ = auth_server
    with as_user(server.uri, ADMIN, passwords[ADMIN]):
        admin = get_app_client("basic-auth", tracking_uri=server.uri)
        for name in (PIPELINE_USER, READER):
            assert ensure_user(admin, name, passwords[name]) == "created"
        for model in (SMOKE, MODEL_NAME):
            MlflowClient().create_registered_model(model)
        grants = grant_edit(admin, PIPELINE_USER, PREFIX)
        assert sorted((g.name, g.before, g.outcome) for g in grants) == sorted([
            (MODEL_NAME, "READ", "granted"), (SMOKE, "READ", "granted")])
        assert admin.get_user_permission(READER, "registered_model", MODEL_NAME).permission == "READ"
    return passwords


def status_of(excinfo) -> int:
    return excinfo.value.get_http_status_code()


def test_writes_without_credentials_are_refused(auth_server):
    server, _, _ = auth_server
    http = requests.Session()
    http.trust_env = False  # loopback, never through a proxy from the environment
    api = f"{server.uri}/api/2.0/mlflow"
    created = http.post(f"{api}/experiments/create", json={"name": "anonymous"}, timeout=30)
    assert created.status_code == 401, created.text
    run = http.post(f"{api}/runs/create", json={"experiment_id": "0"}, timeout=30)
    assert run.status_code == 401, run.text
    assert http.get(f"{server.uri}/health", timeout=30).status_code == 200


@pytest.fixture(scope="module")
def smoke_run(auth_server, users):
    """The pipeline user, through MlflowClient with credentials from the environment only:
    a run with a param and an artifact, registered as a version of SMOKE with an alias."""
    from mlflow.tracking import MlflowClient

    server, _, _ = auth_server
    with as_user(server.uri, PIPELINE_USER, users[PIPELINE_USER]):
        client = MlflowClient()  # the URI from the environment as well
        experiment_id = client.create_experiment(SMOKE)
        run = client.create_run(experiment_id, run_name="smoke")
        client.log_param(run.info.run_id, "beta", "2000")
        client.log_text(run.info.run_id, "weights", "adapter/weights.txt")
        client.set_terminated(run.info.run_id)
        version = client.create_model_version(SMOKE, source=f"{run.info.artifact_uri}/adapter",
                                              run_id=run.info.run_id)
        client.set_registered_model_alias(SMOKE, "candidate", version.version)
    return experiment_id, run.info.run_id, version.version


def test_the_pipeline_user_logs_a_run_and_registers_a_version(auth_server, smoke_run, users):
    from mlflow.tracking import MlflowClient

    server, _, _ = auth_server
    experiment_id, run_id, version = smoke_run
    with as_user(server.uri, ADMIN, users[ADMIN]):
        client = MlflowClient()
        assert client.get_run(run_id).data.params == {"beta": "2000"}
        assert client.get_experiment(experiment_id).name == SMOKE
        assert client.get_model_version_by_alias(SMOKE, "candidate").version == version
        assert [f.path for f in client.list_artifacts(run_id, "adapter")] == ["adapter/weights.txt"]


def test_the_reader_reads_but_cannot_add_a_version_or_move_an_alias(auth_server, smoke_run, users):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    server, _, _ = auth_server
    experiment_id, run_id, version = smoke_run
    with as_user(server.uri, READER, users[READER]):
        client = MlflowClient()
        assert client.get_registered_model(SMOKE).aliases == {"candidate": version}
        assert [r.info.run_id for r in client.search_runs([experiment_id])] == [run_id]
        with pytest.raises(MlflowException) as denied:
            client.create_model_version(SMOKE, source=f"{client.get_run(run_id).info.artifact_uri}/adapter",
                                        run_id=run_id)
        assert status_of(denied) == 403, denied.value
        with pytest.raises(MlflowException) as denied:
            client.set_registered_model_alias(SMOKE, "production", version)
        assert status_of(denied) == 403, denied.value
    with as_user(server.uri, ADMIN, users[ADMIN]):
        assert len(MlflowClient().search_model_versions(f"name = '{SMOKE}'")) == 1


# --------------------------------------------------------------------------- the pipeline


def mask(secret: str) -> str:
    return f"{secret[:2]}{'*' * 8} ({len(secret)} chars)"


def needles(users: dict[str, str]) -> dict[str, str]:
    """What a leaked password looks like: itself, and inside a basic Authorization header."""
    found = {}
    for user in (ADMIN, PIPELINE_USER):
        password = users[user]
        found[f"{user}'s password {mask(password)}"] = password
        found[f"{user}'s Authorization header"] = base64.b64encode(f"{user}:{password}".encode()).decode()
    return found


def text_files(root: Path) -> Iterator[tuple[Path, str]]:
    """Every file under `root` that decodes as UTF-8 (safetensors, PNG, GLB do not)."""
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        try:
            yield path, path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            continue


def mlflow_texts(client, s3) -> Iterator[tuple[str, str]]:
    """(where, text) for everything MLflow holds: experiments, every run's params and
    tags, the registered models and their versions, and every stored artifact."""
    for exp in client.search_experiments():
        yield f"experiment {exp.name} tags", json.dumps(exp.tags)
        for run in client.search_runs([exp.experiment_id], max_results=5000):
            where = f"run {run.info.run_name} ({run.info.run_id})"
            yield f"{where} params", json.dumps(run.data.params)
            yield f"{where} tags", json.dumps(run.data.tags)
    for model in client.search_registered_models():
        yield f"registered model {model.name}", json.dumps([model.tags, model.description])
        for mv in client.search_model_versions(f"name = '{model.name}'"):
            yield f"model version {model.name}/{mv.version}", json.dumps([mv.tags, mv.description, mv.source])
    bucket, stored = s3.client(), s3.keys()
    for key in stored:
        try:
            yield f"s3://{s3.bucket}/{key}", bucket.get_object(Bucket=s3.bucket, Key=key)["Body"].read().decode()
        except UnicodeDecodeError:
            continue


def test_part_dpo_runs_with_the_pipeline_users_credentials_and_leaks_no_password(
    auth_server, users, smoke_run, tmp_path_factory, capfd
):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    server, s3, _ = auth_server
    root = tmp_path_factory.mktemp("auth")
    run_dir = run_pipeline(root, {
        "MLFLOW_TRACKING_URI": server.uri,
        "MLFLOW_TRACKING_USERNAME": PIPELINE_USER,
        "MLFLOW_TRACKING_PASSWORD": users[PIPELINE_USER],
        **{k: None for k in CLIENT_S3_VARS},
    })
    out, err = capfd.readouterr()
    registration = json.loads(one(run_dir, "register-model/registration/registration.json").read_text())

    with as_user(server.uri, READER, users[READER]):
        client = MlflowClient()
        mv = client.get_model_version_by_alias(MODEL_NAME, "candidate")
        assert str(mv.version) == registration["version"] and mv.status == "READY"
        assert mv.tags["genalign.pipeline_run"]
        aliases = client.get_registered_model(MODEL_NAME).aliases
        assert aliases["candidate"] == mv.version, aliases
        for move in (lambda: client.set_registered_model_alias(MODEL_NAME, "candidate", mv.version),
                     lambda: client.delete_registered_model_alias(MODEL_NAME, "candidate"),
                     lambda: client.set_registered_model_alias(MODEL_NAME, "production", mv.version)):
            with pytest.raises(MlflowException) as denied:
                move()
            assert status_of(denied) == 403, denied.value

    with as_user(server.uri, ADMIN, users[ADMIN]):
        client = MlflowClient()
        assert client.get_registered_model(MODEL_NAME).aliases == aliases  # nothing moved
        exp = client.get_experiment_by_name(EXPERIMENT)
        runs = client.search_runs([exp.experiment_id])
        stages = sorted(r.data.tags["genalign.stage"] for r in runs if "genalign.stage" in r.data.tags)
        assert stages == STAGES and len(runs) == len(STAGES) + 1, [r.info.run_name for r in runs]  # and the parent
        assert all(r.info.status == "FINISHED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
        assert {r.info.user_id for r in runs} == {PIPELINE_USER}  # who wrote them (mlflow.user)
        places = [("captured stdout", out), ("captured stderr", err)]
        places += [(str(path), text) for path, text in text_files(root)]
        places += [("the MLflow server's log", Path(server.log).read_text(errors="replace"))]
        places += list(mlflow_texts(client, s3))

    scanned = {where for where, _ in places}
    assert str(one(run_dir, "register-model/registration/registration.json")) in scanned
    assert f"model version {MODEL_NAME}/{mv.version}" in scanned
    assert sum(where.endswith(" params") for where in scanned) == len(runs) + 1  # and the smoke run
    leaks = [f"{what} in {where}" for where, text in places for what, needle in needles(users).items()
             if needle in text]
    assert not leaks, "a password leaked:\n  " + "\n  ".join(leaks)

"""The pipelines' MLflow user and its grants (`genalign.registry_access`), against a fake of
MLflow's AuthServiceClient that keeps users and grants as the basic-auth app does: a user
without a grant on a resource has default_permission (READ), the creator of a resource
holds MANAGE, and a second grant on one resource is refused with RESOURCE_ALREADY_EXISTS
(mlflow/server/auth/sqlalchemy_store.py, grant_user_resource_permission)."""

from __future__ import annotations

import re

import pytest
from mlflow.entities import Experiment
from mlflow.entities.model_registry import RegisteredModel
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST
from mlflow.store.entities.paged_list import PagedList

from genalign import registry_access
from genalign.registry_access import Grant, RegistryAccessError, ensure_user, grant_edit

PASSWORD = "correct-horse-battery-staple"


class Permission:
    def __init__(self, permission: str):
        self.permission = permission


class FakeAuth:
    tracking_uri = "http://mlflow.test:5000"

    def __init__(self, users=(), grants=None, default="READ"):
        self.passwords = {u: "an-old-password-1" for u in users}
        self.grants = dict(grants or {})  # (user, resource_type, resource_id) -> permission
        self.default = default
        self.calls = []

    def get_user(self, username):
        if username not in self.passwords:
            raise MlflowException(f"User with username={username} not found", RESOURCE_DOES_NOT_EXIST)
        return username

    def create_user(self, username, password):
        self.calls.append(("create_user", username))
        self.passwords[username] = password

    def update_user_password(self, username, password):
        self.calls.append(("update_user_password", username))
        self.passwords[username] = password

    def get_user_permission(self, username, resource_type, resource_id):
        return Permission(self.grants.get((username, resource_type, resource_id), self.default))

    def grant_user_permission(self, username, resource_type, resource_id, permission):
        self.calls.append(("grant", resource_type, resource_id, permission))
        if (username, resource_type, resource_id) in self.grants:
            raise MlflowException("Permission ... already exists.", RESOURCE_ALREADY_EXISTS)
        self.grants[(username, resource_type, resource_id)] = permission


class FakeTracking:
    """search_experiments / search_registered_models as MlflowClient pages them, the LIKE
    filter as the server reads it ('_' any one character, '%' any run)."""

    def __init__(self, experiments=(), models=(), page=2):
        self.experiments = [Experiment(str(i), n, f"s3://b/{i}", "active") for i, n in enumerate(experiments)]
        self.models = [RegisteredModel(n) for n in models]
        self.page = page
        self.filters = []

    def _search(self, items, filter_string, max_results, page_token):
        self.filters.append(filter_string)
        assert max_results == registry_access.PAGE_SIZE
        like = filter_string.removeprefix("name LIKE '").removesuffix("'")
        pattern = re.compile("".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in like))
        hits = [x for x in items if pattern.fullmatch(x.name)]
        start = int(page_token or 0)
        end = start + self.page
        return PagedList(hits[start:end], str(end) if end < len(hits) else None)

    def search_experiments(self, filter_string, max_results, page_token):
        return self._search(self.experiments, filter_string, max_results, page_token)

    def search_registered_models(self, filter_string, max_results, page_token):
        return self._search(self.models, filter_string, max_results, page_token)


# --- ensure_user -------------------------------------------------------------------


def test_ensure_user_creates_a_missing_user_with_the_password():
    client = FakeAuth()
    assert ensure_user(client, "genalign-pipeline", PASSWORD) == "created"
    assert client.passwords == {"genalign-pipeline": PASSWORD}
    assert client.calls == [("create_user", "genalign-pipeline")]


def test_ensure_user_sets_the_password_of_an_existing_user_and_is_idempotent():
    client = FakeAuth(users=["genalign-pipeline", "alice"])
    assert ensure_user(client, "genalign-pipeline", PASSWORD) == "updated"
    assert ensure_user(client, "genalign-pipeline", PASSWORD) == "updated"
    assert client.passwords["genalign-pipeline"] == PASSWORD
    assert client.passwords["alice"] == "an-old-password-1"
    assert ("create_user", "genalign-pipeline") not in client.calls


def test_ensure_user_refuses_a_short_password_without_showing_it():
    client = FakeAuth()
    with pytest.raises(RegistryAccessError, match="'genalign-pipeline' is shorter than 12 characters") as info:
        ensure_user(client, "genalign-pipeline", "hunter2")
    assert "hunter2" not in str(info.value)
    assert client.calls == []


def test_ensure_user_passes_on_other_server_errors():
    class Broken(FakeAuth):
        def get_user(self, username):
            raise MlflowException("API request failed with error code 401 != 200")

    with pytest.raises(MlflowException, match="401"):
        ensure_user(Broken(), "genalign-pipeline", PASSWORD)


# --- grant_edit --------------------------------------------------------------------


def test_grant_edit_grants_on_every_matching_experiment_and_model_across_pages():
    tracking = FakeTracking(
        experiments=["Default", "genalign-part-dpo", "genalign-planner-dpo", "genalign-stages", "other"],
        models=["genalign-part-dpo", "someone-else", "genalign-planner"],
    )
    client = FakeAuth(users=["genalign-pipeline"])
    grants = grant_edit(client, "genalign-pipeline", "genalign-", tracking=tracking)
    assert [(g.resource_type, g.resource_id, g.name, g.outcome) for g in grants] == [
        ("experiment", "1", "genalign-part-dpo", "granted"),
        ("experiment", "2", "genalign-planner-dpo", "granted"),
        ("experiment", "3", "genalign-stages", "granted"),
        ("registered_model", "genalign-part-dpo", "genalign-part-dpo", "granted"),
        ("registered_model", "genalign-planner", "genalign-planner", "granted"),
    ]
    assert all(g.before == "READ" for g in grants)
    # experiments by id, registered models by name, as the auth app keys its grants
    assert client.grants == {
        ("genalign-pipeline", "experiment", "1"): "EDIT",
        ("genalign-pipeline", "experiment", "2"): "EDIT",
        ("genalign-pipeline", "experiment", "3"): "EDIT",
        ("genalign-pipeline", "registered_model", "genalign-part-dpo"): "EDIT",
        ("genalign-pipeline", "registered_model", "genalign-planner"): "EDIT",
    }
    assert set(tracking.filters) == {"name LIKE 'genalign-%'"}
    assert len(tracking.filters) == 3, "experiments over two pages, models in one"


def test_grant_edit_never_lowers_manage_and_leaves_an_admins_grant_alone():
    tracking = FakeTracking(experiments=["genalign-a", "genalign-b", "genalign-c", "genalign-d"])
    client = FakeAuth(users=["p"], grants={
        ("p", "experiment", "0"): "MANAGE",  # p created it: the owner
        ("p", "experiment", "1"): "EDIT",  # granted by an earlier run
        ("p", "experiment", "2"): "DENY",  # an admin shut p out
        ("p", "experiment", "3"): "READ",  # an admin's explicit READ
    })
    grants = grant_edit(client, "p", "genalign-", tracking=tracking)
    assert [(g.name, g.before, g.outcome) for g in grants] == [
        ("genalign-a", "MANAGE", "unchanged"),
        ("genalign-b", "EDIT", "unchanged"),
        ("genalign-c", "DENY", "explicit"),
        ("genalign-d", "READ", "explicit"),
    ]
    assert client.grants[("p", "experiment", "0")] == "MANAGE"
    assert client.grants[("p", "experiment", "2")] == "DENY"


def test_grant_edit_twice_grants_nothing_the_second_time():
    tracking = FakeTracking(experiments=["genalign-x"], models=["genalign-x"])
    client = FakeAuth(users=["p"])
    first = grant_edit(client, "p", "genalign-", tracking=tracking)
    second = grant_edit(client, "p", "genalign-", tracking=tracking)
    assert [g.outcome for g in first] == ["granted", "granted"]
    assert [g.outcome for g in second] == ["unchanged", "unchanged"]
    assert [c for c in client.calls if c[0] == "grant"] == [
        ("grant", "experiment", "0", "EDIT"), ("grant", "registered_model", "genalign-x", "EDIT"),
    ]


def test_grant_edit_keeps_only_names_that_really_start_with_the_prefix():
    """'_' in LIKE matches any character: genalignXpart matches 'genalign_%' but is not ours."""
    tracking = FakeTracking(experiments=["genalign_part", "genalignXpart"])
    grants = grant_edit(FakeAuth(users=["p"]), "p", "genalign_", tracking=tracking)
    assert [g.name for g in grants] == ["genalign_part"]


@pytest.mark.parametrize("prefix", ["", "x' OR name LIKE '", "genalign-%"])
def test_grant_edit_rejects_a_prefix_that_is_not_a_plain_name(prefix):
    with pytest.raises(RegistryAccessError, match="prefix"):
        grant_edit(FakeAuth(), "p", prefix, tracking=FakeTracking())


def test_grant_edit_passes_on_other_grant_errors():
    class Refusing(FakeAuth):
        def grant_user_permission(self, *args):
            raise MlflowException("API request failed with error code 403 != 200")

    with pytest.raises(MlflowException, match="403"):
        grant_edit(Refusing(users=["p"]), "p", "genalign-", tracking=FakeTracking(experiments=["genalign-a"]))


def test_grant_is_a_plain_record():
    assert Grant("experiment", "1", "genalign-a", "READ", "granted")._fields == (
        "resource_type", "resource_id", "name", "before", "outcome",
    )


# --- main (the bootstrap Job) ------------------------------------------------------


ENV = {
    "MLFLOW_TRACKING_URI": "http://mlflow.test:5000",
    "MLFLOW_TRACKING_USERNAME": "admin",
    "MLFLOW_TRACKING_PASSWORD": "the-admins-password",
    "GENALIGN_PIPELINE_USERNAME": "genalign-pipeline",
    "GENALIGN_PIPELINE_PASSWORD": PASSWORD,
}


@pytest.fixture
def job(monkeypatch):
    """main() with the Job's environment, the fake client in place of the server's, and the
    fake tracking client in place of MlflowClient."""
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("GENALIGN_PIPELINE_PREFIX", raising=False)
    made = {}

    def get_app_client(app_name, tracking_uri):
        assert (app_name, tracking_uri) == ("basic-auth", ENV["MLFLOW_TRACKING_URI"])
        made["client"] = FakeAuth(users=["admin"])
        return made["client"]

    tracking = FakeTracking(experiments=["genalign-part-dpo"], models=["genalign-part-dpo"])
    monkeypatch.setattr("mlflow.server.get_app_client", get_app_client)
    monkeypatch.setattr("mlflow.MlflowClient", lambda tracking_uri: tracking)
    return made


def test_main_sets_up_the_user_and_its_grants_and_prints_no_password(job, capsys):
    assert registry_access.main([]) == 0
    client = job["client"]
    assert client.passwords["genalign-pipeline"] == PASSWORD
    assert client.grants == {
        ("genalign-pipeline", "experiment", "0"): "EDIT",
        ("genalign-pipeline", "registered_model", "genalign-part-dpo"): "EDIT",
    }
    out = capsys.readouterr()
    assert "MLflow user 'genalign-pipeline': created" in out.out
    assert "experiment 'genalign-part-dpo' (0): granted EDIT" in out.out
    assert "2 grant(s) made" in out.out
    for secret in (PASSWORD, ENV["MLFLOW_TRACKING_PASSWORD"]):
        assert secret not in out.out + out.err


@pytest.mark.parametrize("unset, secret", [
    ("GENALIGN_PIPELINE_PASSWORD", "key password of the Secret genalign-mlflow-pipeline"),
    ("GENALIGN_PIPELINE_USERNAME", "key username of the Secret genalign-mlflow-pipeline"),
    ("MLFLOW_TRACKING_PASSWORD", "key password of the Secret genalign-mlflow-admin"),
    ("MLFLOW_TRACKING_URI", "the ConfigMap genalign-tracking"),
])
def test_main_names_the_missing_setting_and_its_secret(job, capsys, monkeypatch, unset, secret):
    monkeypatch.delenv(unset)
    assert registry_access.main([]) == 1
    err = capsys.readouterr().err
    assert f"{unset} is not set: it comes from {secret}" in err


def test_main_names_the_user_and_the_secret_of_a_short_password_not_the_password(job, capsys, monkeypatch):
    monkeypatch.setenv("GENALIGN_PIPELINE_PASSWORD", "short-one")
    assert registry_access.main([]) == 1
    out = capsys.readouterr()
    assert "'genalign-pipeline'" in out.err and "Secret genalign-mlflow-pipeline" in out.err
    assert "short-one" not in out.out + out.err


def test_main_reports_a_refusing_server_as_the_admins_problem(job, capsys, monkeypatch):
    def refused(app_name, tracking_uri):
        class Unauthenticated(FakeAuth):
            def get_user(self, username):
                raise MlflowException("API request to endpoint /api/2.0/mlflow/users/get failed "
                                      "with error code 401 != 200. Response body: 'You are not authenticated.'")
        return Unauthenticated()

    monkeypatch.setattr("mlflow.server.get_app_client", refused)
    assert registry_access.main([]) == 1
    err = capsys.readouterr().err
    assert "as the admin of the Secret genalign-mlflow-admin" in err and "401" in err
    assert "'genalign-pipeline'" in err and ENV["MLFLOW_TRACKING_PASSWORD"] not in err

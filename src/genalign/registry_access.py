"""Who may write to the MLflow registry: the pipelines' MLflow user and its grants, on a
tracking server that runs MLflow's basic-auth app (`mlflow server --app-name basic-auth`).

The bootstrap Job of k8s/ (k8s/base/mlflow-users-job.yaml) runs it as an MLflow admin, once
the server is up, in the project's CPU image:

    python -m genalign.registry_access

It creates the pipelines' user with the password of its Secret (or sets the password of the
existing user to it), then grants that user EDIT on every experiment and registered model
whose name starts with `genalign-`. Whatever the pipeline user creates itself it owns
already: the auth app grants the creator MANAGE after CreateExperiment and
CreateRegisteredModel (mlflow/server/auth/__init__.py, set_can_manage_experiment_permission
and set_can_manage_registered_model_permission). Running it again changes nothing.

`client` below is MLflow's `mlflow.server.auth.client.AuthServiceClient`, as
`mlflow.server.get_app_client("basic-auth", tracking_uri=...)` returns it, signed in as an
admin through MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD. Importing that client
needs Flask-WTF (`mlflow[auth]`); this module imports it only in `main`. No password is
printed or put into a message.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from typing import NamedTuple

# The names k8s/ uses: the Secrets the operator creates (k8s/README.md), named in messages.
PIPELINE_SECRET = "genalign-mlflow-pipeline"
ADMIN_SECRET = "genalign-mlflow-admin"
# Experiments and registered models of genalign's pipelines are named genalign-<...>
# (configs/*/tiny.yaml `experiment`, RegisterConfig.model_name).
DEFAULT_PREFIX = "genalign-"
# mlflow.utils.validation._validate_password: the auth app refuses shorter passwords.
MIN_PASSWORD_LENGTH = 12
# What the pipelines need on what they did not create: log runs, add model versions, set
# aliases; not delete and not grant (MANAGE). mlflow/server/auth/permissions.py.
PERMISSION = "EDIT"
SUFFICIENT = ("EDIT", "MANAGE")
# One page of each search; the server's limits are higher (SEARCH_MAX_RESULTS_THRESHOLD).
PAGE_SIZE = 1000

EXPERIMENT = "experiment"
REGISTERED_MODEL = "registered_model"


class RegistryAccessError(RuntimeError):
    """A setting that keeps the pipelines' user from being set up; names what to fix."""


class Grant(NamedTuple):
    """What `grant_edit` did on one resource.

    outcome: "granted" (EDIT granted now), "unchanged" (the user had EDIT or MANAGE), or
    "explicit" (an admin set a lower grant or a DENY for the user there; left as it is).
    """

    resource_type: str  # "experiment" or "registered_model"
    resource_id: str  # the experiment's id; the registered model's name
    name: str
    before: str  # the user's effective permission before: READ, EDIT, MANAGE, DENY, ...
    outcome: str


def ensure_user(client, username: str, password: str) -> str:
    """Creates the MLflow user `username` with `password`, or sets the password of the
    existing user to `password`. Returns "created" or "updated".

    `client`: an admin's `AuthServiceClient`. Raises `RegistryAccessError` when the password
    is too short for the auth app, and MLflow's `MlflowException` when the server refuses.
    """
    from mlflow.exceptions import MlflowException

    if not username:
        raise RegistryAccessError("the MLflow username is empty")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise RegistryAccessError(
            f"the password of MLflow user {username!r} is shorter than {MIN_PASSWORD_LENGTH} "
            "characters, which MLflow's basic-auth app refuses"
        )
    try:
        client.get_user(username)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_user(username, password)
        return "created"
    client.update_user_password(username, password)
    return "updated"


def grant_edit(client, username: str, prefix: str = DEFAULT_PREFIX, *, tracking=None) -> list[Grant]:
    """Grants `username` EDIT on every active experiment and registered model whose name
    starts with `prefix`, where its permission is lower; returns one `Grant` per resource.

    A permission of EDIT or MANAGE is left alone (never lowered), and so is a grant an admin
    made for the user on the resource (a READ or a DENY): the auth app refuses a second grant
    on one resource, and an explicit one is a decision this function does not override.
    `tracking`: the `MlflowClient` that lists the resources; default: one for
    `client.tracking_uri`, signed in the same way.
    """
    from mlflow.exceptions import MlflowException

    if not re.fullmatch(r"[A-Za-z0-9._-]+", prefix):
        raise RegistryAccessError(f"prefix {prefix!r}: expected letters, digits, '.', '_' or '-'")
    if tracking is None:
        from mlflow import MlflowClient

        tracking = MlflowClient(tracking_uri=client.tracking_uri)
    targets = [(EXPERIMENT, e.experiment_id, e.name) for e in _named(tracking.search_experiments, prefix)]
    targets += [(REGISTERED_MODEL, m.name, m.name) for m in _named(tracking.search_registered_models, prefix)]
    done = []
    for resource_type, resource_id, name in targets:
        before = client.get_user_permission(username, resource_type, resource_id).permission
        if before in SUFFICIENT:
            done.append(Grant(resource_type, resource_id, name, before, "unchanged"))
            continue
        try:
            client.grant_user_permission(username, resource_type, resource_id, PERMISSION)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            done.append(Grant(resource_type, resource_id, name, before, "explicit"))
            continue
        done.append(Grant(resource_type, resource_id, name, before, "granted"))
    return done


def _named(search, prefix: str) -> Iterator:
    """Every experiment or registered model `search` (an MlflowClient search method) finds
    whose name starts with `prefix`, page by page."""
    token = None
    while True:
        page = search(filter_string=f"name LIKE '{prefix}%'", max_results=PAGE_SIZE, page_token=token)
        # LIKE reads '_' as any one character: keep the names that really start with prefix
        yield from (found for found in page if found.name.startswith(prefix))
        token = page.token
        if not token:
            return


def _required(name: str, where: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise RegistryAccessError(f"{name} is not set: it comes from {where}")
    return value


def main(argv: list[str] | None = None) -> int:
    """The bootstrap Job's entry point; every setting comes from the environment:

    MLFLOW_TRACKING_URI                                  the server
    MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD   an admin (Secret genalign-mlflow-admin)
    GENALIGN_PIPELINE_USERNAME, GENALIGN_PIPELINE_PASSWORD
                                                         the pipelines' user (Secret genalign-mlflow-pipeline)
    GENALIGN_PIPELINE_PREFIX                             optional; default genalign-
    """
    if argv:
        print(f"usage: python -m genalign.registry_access (settings from the environment; got {argv})",
              file=sys.stderr)
        return 2
    from mlflow.exceptions import MlflowException

    uri = username = None
    try:
        uri = _required("MLFLOW_TRACKING_URI", "the ConfigMap genalign-tracking")
        _required("MLFLOW_TRACKING_USERNAME", f"key username of the Secret {ADMIN_SECRET}")
        _required("MLFLOW_TRACKING_PASSWORD", f"key password of the Secret {ADMIN_SECRET}")
        username = _required("GENALIGN_PIPELINE_USERNAME", f"key username of the Secret {PIPELINE_SECRET}")
        password = _required("GENALIGN_PIPELINE_PASSWORD", f"key password of the Secret {PIPELINE_SECRET}")
        prefix = os.environ.get("GENALIGN_PIPELINE_PREFIX") or DEFAULT_PREFIX

        from mlflow.server import get_app_client

        client = get_app_client("basic-auth", tracking_uri=uri)
        try:
            print(f"MLflow user {username!r}: {ensure_user(client, username, password)}")
        except RegistryAccessError as e:
            raise RegistryAccessError(f"{e}; set key password of the Secret {PIPELINE_SECRET}") from None
        grants = grant_edit(client, username, prefix)
    except RegistryAccessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except MlflowException as e:
        # The server's answer (401: the admin's credentials; 403: that user is no admin).
        print(f"error: as the admin of the Secret {ADMIN_SECRET}, setting up MLflow user "
              f"{username!r} at {uri} failed: {e.message}", file=sys.stderr)
        return 1
    for g in grants:
        what = {"granted": f"granted {PERMISSION}", "unchanged": f"has {g.before}",
                "explicit": f"left at the admin's grant ({g.before})"}[g.outcome]
        print(f"{g.resource_type} {g.name!r} ({g.resource_id}): {what}")
    print(f"{sum(g.outcome == 'granted' for g in grants)} grant(s) made, "
          f"{len(grants)} resource(s) named {prefix}*")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

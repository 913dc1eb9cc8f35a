"""Experiment tracking: a small Tracker interface; MLflow behind it (see `MlflowTracker`).

Library code logs through `Tracker` and never imports mlflow itself. `NullTracker`
keeps everything in memory, for tests and for stages called from plain Python.

Every tracker masks secrets (`genalign.secrets`) in what it is given: param, tag and
metric names, param and tag values, and a registered version's tags and description.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

from genalign.secrets import KEY_MASK, redact, redact_mapping


class Tracker:
    """What a stage may log. Metric keys follow `train/loss`, `eval/penetration_mean`."""

    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None:
        raise NotImplementedError

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        raise NotImplementedError

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        raise NotImplementedError

    def log_figure(self, figure: Any, name: str) -> None:
        """Log a matplotlib figure as a PNG named `name` (e.g. "plots/penetration.png")."""
        raise NotImplementedError

    def set_tags(self, tags: dict[str, str]) -> None:
        raise NotImplementedError


class NullTracker(Tracker):
    """Keeps what was logged in memory, secrets masked."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.metrics: list[tuple[int | None, dict[str, float]]] = []
        self.artifacts: list[tuple[Path, str | None]] = []
        self.figures: list[str] = []
        self.tags: dict[str, str] = {}

    def log_params(self, params: dict[str, Any]) -> None:
        self.params.update(redact_mapping(params))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append((step, _metric_names(metrics)))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.artifacts.append((Path(path), artifact_path))

    def log_figure(self, figure: Any, name: str) -> None:
        self.figures.append(name)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.tags.update(redact_mapping(tags))

    def history(self, key: str) -> list[float]:
        return [m[key] for _, m in self.metrics if key in m]


def _metric_names(metrics: dict[str, float]) -> dict[str, float]:
    """`metrics` with secrets masked in their names (values are numbers)."""
    return {redact(k, mask=KEY_MASK): v for k, v in metrics.items()}


# --------------------------------------------------------------------------- MLflow

DEFAULT_DIR = ".genalign"
PIPELINE_RUN_TAG = "genalign.pipeline_run"
STAGE_TAG = "genalign.stage_name"  # the stage ("rollout-planner"); genalign.stage is the run label
ITERATION_TAG = "genalign.iteration"
SHARD_TAG = "genalign.shard"
OUTPUT_TAG = "genalign.output."
ERROR_TAG = "genalign.error"
REUSED_TAG = "genalign.reused"


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` (the cluster's ConfigMap) or the embedded default.

    The default is a SQLite store under `.genalign/` of the working directory, with
    artifacts beside it; the path is made absolute so that pipeline tasks started in
    other directories reach the same store.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    root = Path(os.environ.get("GENALIGN_HOME", DEFAULT_DIR)).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def _client():
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri())


def _experiment_id(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):  # a local store: artifacts beside the database file
        location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by a sibling task
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def pipeline_run_id(experiment: str, pipeline_run: str, *, tags: dict[str, str] | None = None) -> str:
    """The MLflow parent run of one pipeline run, created on first use.

    Every stage calls this with the KFP run id, so whichever stage comes first opens the
    parent and the others find it by tag; nothing has to pass a run id between tasks.
    """
    client = _client()
    exp_id = _experiment_id(client, experiment)
    found = client.search_runs(
        [exp_id], filter_string=f"tags.`{PIPELINE_RUN_TAG}` = '{pipeline_run}'", max_results=1
    )
    if found:
        return found[0].info.run_id
    tags = redact_mapping({PIPELINE_RUN_TAG: pipeline_run, **_user_tag(), **(tags or {})})
    run = client.create_run(
        exp_id, run_name=f"{tags.get('genalign.pipeline', 'pipeline')}-{pipeline_run}"[:250], tags=tags
    )
    return run.info.run_id


def _user_tag() -> dict[str, str]:
    """`mlflow.user`, who wrote the run: the tracking server's user when one is set
    (MLFLOW_TRACKING_USERNAME), else the local account. `MlflowClient.create_run` records
    "unknown" without it."""
    import getpass

    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if not user:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # a numeric uid with no account, as in the images
            user = "unknown"
    return {"mlflow.user": user}


class MlflowTracker(Tracker):
    """Logs to one MLflow run through `MlflowClient` (no fluent global run state)."""

    def __init__(self, run_id: str, parent_run_id: str | None = None) -> None:
        self.client = _client()
        self.run_id = run_id
        self.parent_run_id = parent_run_id

    @classmethod
    def for_stage(
        cls, *, experiment: str, pipeline_run: str, stage: str, tags: dict[str, str] | None = None
    ) -> "MlflowTracker":
        """A child run named after the stage under the pipeline's parent run."""
        parent = pipeline_run_id(experiment, pipeline_run, tags=tags)
        client = _client()
        exp_id = client.get_run(parent).info.experiment_id
        run = client.create_run(
            exp_id,
            run_name=redact(stage),
            tags=redact_mapping({
                "mlflow.parentRunId": parent,
                PIPELINE_RUN_TAG + ".child": pipeline_run,
                "genalign.stage": stage,
                **_user_tag(),
                **(tags or {}),
            }),
        )
        return cls(run.info.run_id, parent_run_id=parent)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in redact_mapping(params).items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in _metric_names(metrics).items()]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_figure(self, figure: Any, name: str) -> None:
        self.client.log_figure(self.run_id, figure, name)

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in redact_mapping(tags).items():
            self.client.set_tag(self.run_id, k, str(v))

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)

    def artifact_uri(self, artifact_path: str) -> str:
        return f"{self.client.get_run(self.run_id).info.artifact_uri}/{artifact_path}"


def end_pipeline_run(
    experiment: str, pipeline_run: str, status: str = "FINISHED", *, preset: str = "", report_stage: str = ""
) -> None:
    """Close the pipeline's parent run with `status`, after giving it what makes pipeline
    runs comparable at the top level of the MLflow UI: the preset's name, every stage's
    config as `<stage>.<key>` params, and the final evaluation metrics (those of the last
    `report_stage` run, the last iteration's in an iterative pipeline)."""
    from mlflow.entities import Metric, Param

    client = _client()
    run_id = pipeline_run_id(experiment, pipeline_run)
    parent = client.get_run(run_id)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`{PIPELINE_RUN_TAG}.child` = '{pipeline_run}'",
        order_by=["attributes.start_time ASC"], max_results=5000,
    )
    params: dict[str, str] = {}
    report = None
    for child in children:
        stage = child.data.tags.get(STAGE_TAG) or child.data.tags.get("genalign.stage", "")
        for key, value in child.data.params.items():
            params.setdefault(f"{stage}.{key}", value)
        if stage == report_stage and child.info.status == "FINISHED":
            report = child
    params = redact_mapping({k: v for k, v in params.items() if k not in parent.data.params})
    items = [Param(k[:250], v) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])
    if preset:
        client.set_tag(run_id, "genalign.preset", redact(preset))
    if report is not None:
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in _metric_names(report.data.metrics).items() if k.startswith("eval/")]
        if metrics:
            client.log_batch(run_id, metrics=metrics)
    client.set_terminated(run_id, status)


def registry_tracker(tracker: Tracker) -> tuple[MlflowTracker, str]:
    """The MLflow run a register stage logs to, and the KFP run id of its pipeline ("" when
    none): the stage's own child run, or, for a stage called from plain Python with no
    tracking, a run of its own in the "genalign-register" experiment."""
    if not isinstance(tracker, MlflowTracker):
        tracker = MlflowTracker.for_stage(experiment="genalign-register", pipeline_run=f"manual-{uuid.uuid4().hex[:8]}",
                                          stage="register")
    parent = tracker.client.get_run(tracker.parent_run_id) if tracker.parent_run_id else None
    return tracker, parent.data.tags.get(PIPELINE_RUN_TAG, "") if parent else ""


def register_model_version(
    tracker: MlflowTracker,
    *,
    name: str,
    artifact_path: str,
    tags: dict[str, str],
    aliases: list[str],
    description: str = "",
) -> str:
    """Register `<run artifacts>/<artifact_path>` as a new version of model `name`.

    `mlflow.register_model("runs:/...")` rejects a plain logged folder and leaves an
    empty registered model behind, so the version is created from the artifact URI.
    Returns the version number.
    """
    from mlflow.exceptions import MlflowException

    client = tracker.client
    description = redact(description)
    try:
        client.create_registered_model(name, description=description or None)
    except MlflowException as e:
        if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
            raise
    version = client.create_model_version(
        name,
        source=tracker.artifact_uri(artifact_path),
        run_id=tracker.run_id,
        tags={k: str(v) for k, v in redact_mapping(tags).items()},
        description=description or None,
    )
    for alias in aliases:
        client.set_registered_model_alias(name, alias, version.version)
    return str(version.version)

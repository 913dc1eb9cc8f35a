"""Run one training stage as a Kubeflow Trainer TrainJob, wait for it, and never leave it running.

    result = launch_trainjob(
        "train-flow-dpo", config,
        inputs={"model": model, "pairs": pairs}, outputs={"adapter": adapter},
        tracking={"experiment": experiment, "pipeline_run": pipeline_run, "pipeline": "part-dpo"},
        job=settings, run_id=run_id, task=task, name_output=trainjob_name, metrics_output=metrics,
    )

What it does, in order:

1. checks the stage, its config, names and that every input and output is reachable from
   the nodes (an `s3://` URI, as KFP artifacts have under an s3:// pipeline root, or a path
   on the shared model cache);
2. creates the TrainJob (`genalign.trainjobs.manifest`). Its name is fixed by the run and
   the task, so a retried task meets the TrainJob of its earlier attempt: 409 AlreadyExists
   adopts that TrainJob when its labels name this run and task and it is not being deleted
   (the retry waits for the training under way instead of starting a second one), and is
   an error naming the other owner otherwise, which is left untouched;
3. writes the name at once (`name_output`, and the MLflow tag `genalign.trainjob.<task>`
   on the pipeline's parent run);
4. reads the TrainJob every `poll_s` (a GET of the object itself: no watch, nothing
   cluster-scoped) until its condition Complete or Failed is True (Trainer
   pkg/apis/trainer/v1alpha1/trainjob_types.go at v2.3.0), printing node 0's new log lines
   as it goes; Failed raises with the failing pod's last lines, and so does the timeout;
5. deletes the TrainJob in a `finally`, also on SIGTERM (what KFP's terminate sends the
   launcher's pod), which the wait turns into `TrainJobTerminated`;
6. after success, copies the outputs into the KFP output artifacts' local paths (so KFP's
   own upload writes the same bytes back), checks that each is sealed by the stage, and
   returns the stage's metrics, which it also logs to `metrics_output`; the stage's
   MLflow child run gets the tag `genalign.trainjob`.

Deletion is `propagationPolicy: Foreground`: the TrainJob stays visible, with a
deletionTimestamp, until the garbage collector has removed its JobSet, Jobs and pods
(https://kubernetes.io/docs/concepts/architecture/garbage-collection/#foreground-deletion).
A TrainJob that can still be listed therefore means pods that may still run, and a retry
that creates the same name is refused until the old pods are gone instead of racing them
on the same outputs; the launcher waits up to DELETE_WAIT_S for it to vanish.
`sweep_trainjobs(run_id)` deletes every TrainJob of a run, for a pipeline's exit handler.

The Role that allows all this is k8s/base/rbac.yaml's genalign-pipeline; a 403 names the
rule that is missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from genalign.config.base import ConfigError
from genalign.config.pipelines import STAGES, Stage, get_stage
from genalign.secrets import masked_errors, redact
from genalign.storage import ArtifactError
from genalign.trainjobs.manifest import (
    API_GROUP,
    API_VERSION,
    NODE_CONTAINER,
    NODE_JOB,
    PART_OF,
    PLURAL,
    RUN_LABEL,
    TASK_LABEL,
    check_label_value,
    trainjob_manifest,
)
from genalign.trainjobs.settings import TrainJobSettings

# Labels JobSet puts on the pods it makes (kubernetes-sigs/jobset docs, "JobSet labels"),
# and the Job controller's completion index (Kubernetes >= 1.28) — the node's rank; the
# kubeflow SDK's TrainerClient finds a TrainJob's pods by the same labels.
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
REPLICATED_JOB_LABEL = "jobset.sigs.k8s.io/replicatedjob-name"
COMPLETION_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"

# The TrainJob's terminal conditions (Trainer v2.3.0 trainjob_types.go).
COMPLETE = "Complete"
FAILED = "Failed"

# The MLflow tag that names the TrainJob (`<namespace>/<name>`): `genalign.trainjob.<task>`
# on the pipeline's parent run at once, `genalign.trainjob` on the stage's child run.
TRAINJOB_TAG = "genalign.trainjob"

# Lines of the failing pod quoted in an error: enough for a worker's traceback and
# torchrun's failure summary after it (the same as genalign.training.launch).
TAIL_LINES = 80
# Each incremental log read asks for the seconds since the previous read plus this much,
# so that no line falls between two reads; the lines seen already are skipped by timestamp.
LOG_SLACK_S = 5
# How long a deletion waits for the TrainJob to be gone (Foreground: its pods first). KFP's
# pods get Kubernetes' default 30 s between SIGTERM and SIGKILL; this leaves room for the rest.
DELETE_WAIT_S = 20.0
# Failed reads in a row (the API server restarting, a dropped connection) that the wait
# rides out before it gives up: with poll_s = 10, about two minutes.
TRANSIENT_TRIES = 12
TRANSIENT_STATUS = {429, 500, 502, 503, 504}
# One API request gives up after this long, so that a lost connection cannot hang the wait.
REQUEST_TIMEOUT_S = 60
# Where a pod finds its own namespace (the service account's projected token volume).
NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

# The rules of Role genalign-pipeline (k8s/base/rbac.yaml) the launcher uses, by resource.
RBAC_RULES = {
    "trainjobs": "apiGroups: [trainer.kubeflow.org], resources: [trainjobs], verbs: [create, get, list, watch, delete]",
    "pods": 'apiGroups: [""], resources: [pods], verbs: [get, list]',
    "pods/log": 'apiGroups: [""], resources: [pods/log], verbs: [get]',
}


class TrainJobError(RuntimeError):
    """A TrainJob that could not be created, failed, or was cut short."""


class TrainJobForbidden(TrainJobError):
    """The API refused the launcher's service account (HTTP 403)."""


class TrainJobConflict(TrainJobError):
    """A TrainJob of the same name exists and is not this run's and task's to adopt."""


class TrainJobFailed(TrainJobError):
    """The TrainJob's condition Failed became True."""


class TrainJobTimeout(TrainJobError, TimeoutError):
    """The TrainJob did not end within the launcher's timeout."""


class TrainJobTerminated(TrainJobError):
    """The launcher got SIGTERM (the pipeline run was terminated) while it waited."""


@dataclasses.dataclass
class TrainJobResult:
    name: str
    namespace: str
    metrics: dict[str, float]
    summary: dict[str, Any]
    outputs: dict[str, str]  # output name -> the URI the nodes wrote it to


# --------------------------------------------------------------------------- the API


def _forbidden(verb: str, resource: str, namespace: str, reason: str) -> TrainJobForbidden:
    return TrainJobForbidden(
        f"forbidden: the launcher's service account may not {verb} {resource} in namespace {namespace} "
        f"(HTTP 403 {reason}). The launcher needs this rule of Role genalign-pipeline "
        f"in k8s/base/rbac.yaml: {{{RBAC_RULES[resource]}}}; apply k8s/ and run the pipeline with service "
        "account genalign-pipeline (cluster profile: service_account)."
    )


class _Cluster:
    """The few calls the launcher makes, in one namespace; a 403 says which rule is missing."""

    def __init__(self, api: Any, namespace: str) -> None:
        from kubernetes import client

        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.namespace = namespace

    @contextlib.contextmanager
    def _call(self, verb: str, resource: str) -> Iterator[None]:
        from kubernetes.client.exceptions import ApiException

        try:
            yield
        except ApiException as e:
            if e.status == 403:
                raise _forbidden(verb, resource, self.namespace, e.reason) from None
            raise

    def _job_args(self) -> tuple[str, str, str, str]:
        return API_GROUP, API_VERSION, self.namespace, PLURAL

    def create(self, manifest: dict[str, Any]) -> None:
        with self._call("create", "trainjobs"):
            self.custom.create_namespaced_custom_object(*self._job_args(), manifest, _request_timeout=REQUEST_TIMEOUT_S)

    def get(self, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        with self._call("get", "trainjobs"):
            try:
                return self.custom.get_namespaced_custom_object(*self._job_args(), name, _request_timeout=REQUEST_TIMEOUT_S)
            except ApiException as e:
                if e.status == 404:
                    return None
                raise

    def names(self, selector: str) -> list[str]:
        with self._call("list", "trainjobs"):
            found = self.custom.list_namespaced_custom_object(
                *self._job_args(), label_selector=selector, _request_timeout=REQUEST_TIMEOUT_S)
        return sorted(item["metadata"]["name"] for item in found["items"])

    def delete(self, name: str) -> bool:
        """Delete `name` (its pods first); False when it was gone already."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        with self._call("delete", "trainjobs"):
            try:
                self.custom.delete_namespaced_custom_object(
                    *self._job_args(), name, body=client.V1DeleteOptions(propagation_policy="Foreground"),
                    _request_timeout=REQUEST_TIMEOUT_S)
            except ApiException as e:
                if e.status == 404:
                    return False
                raise
        return True

    def pods(self, selector: str) -> list[Any]:
        with self._call("list", "pods"):
            return self.core.list_namespaced_pod(
                self.namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT_S).items

    def log(self, pod: str, **kwargs: Any) -> str | None:
        """The log of the node container of `pod`, timestamped; None while it has none to
        give (the pod is pending, or gone)."""
        from kubernetes.client.exceptions import ApiException

        with self._call("get", "pods/log"):
            try:
                # unparsed: the client would otherwise read a log that happens to be JSON as JSON
                response = self.core.read_namespaced_pod_log(
                    pod, self.namespace, container=NODE_CONTAINER, timestamps=True,
                    _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S, **kwargs)
            except ApiException as e:
                if e.status in (400, 404):  # ContainerCreating / waiting to start, or no such pod
                    return None
                raise
        return response.data.decode("utf-8", errors="replace")


def _api_client() -> Any:
    """A client for the cluster this runs in (its service account), else the kube config's."""
    from kubernetes import client, config

    configuration = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        config.load_kube_config(client_configuration=configuration, persist_config=False)
    return client.ApiClient(configuration)


def _namespace(settings_namespace: str | None) -> str:
    if settings_namespace:
        return settings_namespace
    path = Path(NAMESPACE_FILE)
    if not path.is_file():
        raise ConfigError(
            f"trainjob settings: namespace is empty and {NAMESPACE_FILE} does not exist (not in a pod); "
            "set the namespace (cluster profile: namespace)"
        )
    return path.read_text().strip()


# --------------------------------------------------------------------------- node 0's log


def _stamp(text: str) -> tuple[int, int] | None:
    """(seconds, nanoseconds) of an RFC 3339 timestamp as the kubelet writes them
    ("2025-01-02T03:04:05.123456789Z"); None for anything else."""
    whole, _, fraction = text.rstrip("Z").partition(".")
    try:
        seconds = datetime.datetime.fromisoformat(whole).replace(tzinfo=datetime.timezone.utc).timestamp()
    except ValueError:
        return None
    if fraction and not fraction.isdigit():
        return None
    return int(seconds), int((fraction or "0")[:9].ljust(9, "0"))


def _unstamped(line: str) -> str:
    stamp, _, message = line.partition(" ")
    return message if _stamp(stamp) else line


def _node_index(pod: Any) -> int:
    return int((pod.metadata.labels or {}).get(COMPLETION_INDEX_LABEL, "0"))


class _NodeLog:
    """Node 0's log, read a little at a time: what is new since the last read is printed
    (secrets masked) and the last TAIL_LINES are kept for an error message. No pod yet, a
    pod not started, a pod replaced by a new one: each is a normal state, not an error."""

    def __init__(self, cluster: _Cluster, name: str) -> None:
        self.cluster = cluster
        self.selector = f"{JOBSET_NAME_LABEL}={name},{REPLICATED_JOB_LABEL}={NODE_JOB},{COMPLETION_INDEX_LABEL}=0"
        self.pod: str | None = None
        self.last: tuple[int, int] | None = None
        self.at_last: set[str] = set()
        self.read_at: float | None = None
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)

    def pump(self) -> None:
        pods = self.cluster.pods(self.selector)
        if not pods:
            return
        pod = max(pods, key=lambda p: p.metadata.creation_timestamp).metadata.name  # a replaced pod: the new one
        if pod != self.pod:
            print(f"[trainjob] node 0: pod {pod}", flush=True)
            self.pod, self.last, self.at_last, self.read_at = pod, None, set(), None
        since = None if self.read_at is None else math.ceil(time.monotonic() - self.read_at) + LOG_SLACK_S
        started = time.monotonic()
        text = self.cluster.log(pod, **({"since_seconds": since} if since else {}))
        if text is None:
            return
        self.read_at = started
        for line in text.splitlines():
            stamp_text, _, message = line.partition(" ")
            stamp = _stamp(stamp_text)
            if stamp is None:  # no timestamp: print as it is
                stamp, message = self.last, line
            elif self.last is not None and (stamp < self.last or (stamp == self.last and message in self.at_last)):
                continue
            if stamp != self.last:
                self.last, self.at_last = stamp, set()
            self.at_last.add(message)
            message = redact(message)
            self.tail.append(message)
            print(message, flush=True)


def _failing_pod(cluster: _Cluster, name: str, node0: _NodeLog) -> tuple[str, str]:
    """(pod, its last lines) of the first node whose container failed; node 0's last lines
    when none is found (the pods may be gone already)."""
    pods = sorted(cluster.pods(f"{JOBSET_NAME_LABEL}={name}"), key=_node_index)
    for pod in pods:
        for status in pod.status.container_statuses or []:
            if status.name != NODE_CONTAINER:
                continue
            now = status.state.terminated if status.state else None
            before = status.last_state.terminated if status.last_state else None
            failed_now, failed_before = bool(now and now.exit_code), bool(before and before.exit_code)
            if failed_now or failed_before or pod.status.phase == "Failed":
                # a container restarted in place keeps its failed run's log as the previous one
                text = cluster.log(pod.metadata.name, tail_lines=TAIL_LINES, previous=failed_before and not failed_now)
                if text:
                    lines = [_unstamped(line) for line in text.splitlines()][-TAIL_LINES:]
                    return pod.metadata.name, redact("\n".join(lines))
    return node0.pod or "(no pod)", "\n".join(node0.tail)


# --------------------------------------------------------------------------- the wait


class _Sigterm:
    """While armed, SIGTERM raises TrainJobTerminated where the main thread is; disarmed
    (once it fired, or once the cleanup began) it is only reported, so that it cannot cut
    the deletion short."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.armed = True

    def __call__(self, signum: int, frame: Any) -> None:
        if not self.armed:
            print("[trainjob] SIGTERM during the cleanup: the TrainJob is deleted first", flush=True)
            return
        self.armed = False
        raise TrainJobTerminated(f"SIGTERM (the run was terminated) while waiting for {self.what}")


@contextlib.contextmanager
def _sigterm_raises(what: str) -> Iterator[_Sigterm]:
    """A `_Sigterm` as SIGTERM's handler, the previous handler restored on the way out.
    Off the main thread (where Python delivers no signal) the handler is left alone."""
    guard = _Sigterm(what)
    if threading.current_thread() is not threading.main_thread():
        yield guard
        return
    previous = signal.signal(signal.SIGTERM, guard)
    try:
        yield guard
    finally:
        signal.signal(signal.SIGTERM, previous)


def _condition(job: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return condition
    return None


def _wait(cluster: _Cluster, name: str, *, timeout_s: float, poll_s: float) -> None:
    """Until the TrainJob completes; raises when it fails, vanishes or outlasts `timeout_s`."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    where = f"TrainJob {cluster.namespace}/{name}"
    node0 = _NodeLog(cluster, name)
    give_up = time.monotonic() + timeout_s
    failures = 0
    while True:
        try:
            job = cluster.get(name)
            node0.pump()
        except (ApiException, HTTPError) as e:
            if (isinstance(e, ApiException) and e.status not in TRANSIENT_STATUS) or failures == TRANSIENT_TRIES:
                raise
            failures += 1
            print(f"[trainjob] reading {where} failed ({type(e).__name__}: {e}); retry {failures} of "
                  f"{TRANSIENT_TRIES}", flush=True)
            time.sleep(poll_s)
            continue
        failures = 0
        if job is None:
            raise TrainJobError(f"{where} disappeared while the launcher waited for it (deleted by someone else?)")
        if _condition(job, COMPLETE):
            return
        failed = _condition(job, FAILED)
        if failed:
            pod, lines = _failing_pod(cluster, name, node0)
            raise TrainJobFailed(
                f"{where} failed ({failed.get('reason', '')}: {failed.get('message', '')}); "
                f"last lines of pod {pod}:\n{lines}"
            )
        if time.monotonic() > give_up:
            raise TrainJobTimeout(
                f"{where} did not finish within {timeout_s:g} s (trainjob settings: timeout_s); "
                f"last lines of node 0 (pod {node0.pod or 'not started'}):\n" + "\n".join(node0.tail)
            )
        time.sleep(poll_s)


def _delete(cluster: _Cluster, name: str, *, poll_s: float) -> None:
    """Delete the TrainJob and wait, briefly, until it and its pods are gone."""
    if not cluster.delete(name):
        return
    print(f"[trainjob] deleting TrainJob {cluster.namespace}/{name}", flush=True)
    gone_by = time.monotonic() + DELETE_WAIT_S
    while cluster.get(name) is not None:
        if time.monotonic() > gone_by:
            print(f"[trainjob] {cluster.namespace}/{name} is still being deleted after {DELETE_WAIT_S:g} s; "
                  "the garbage collector finishes it", flush=True)
            return
        time.sleep(min(poll_s, 1.0))


def _create_or_adopt(cluster: _Cluster, manifest: dict[str, Any], run_id: str, task: str) -> None:
    from kubernetes.client.exceptions import ApiException

    name = manifest["metadata"]["name"]
    try:
        cluster.create(manifest)
        print(f"[trainjob] created TrainJob {cluster.namespace}/{name}", flush=True)
        return
    except ApiException as e:
        if e.status != 409:
            raise
    existing = cluster.get(name)
    if existing is None:
        raise TrainJobConflict(f"TrainJob {cluster.namespace}/{name}: create answered AlreadyExists, then it was gone; "
                               "it was being deleted: retry the task")
    meta = existing["metadata"]
    labels = meta.get("labels") or {}
    ours = labels.get(RUN_LABEL) == run_id and labels.get(TASK_LABEL) == task
    if ours and not meta.get("deletionTimestamp"):
        print(f"[trainjob] adopted TrainJob {cluster.namespace}/{name} of an earlier attempt of this task", flush=True)
        return
    why = ("it is this task's, from an earlier attempt, and is being deleted: retry once it is gone" if ours else
           f"it is not this run's and task's (labels {RUN_LABEL}={labels.get(RUN_LABEL)!r}, "
           f"{TASK_LABEL}={labels.get(TASK_LABEL)!r}); it was left as it is")
    raise TrainJobConflict(f"TrainJob {cluster.namespace}/{name} exists already: {why}")


# --------------------------------------------------------------------------- inputs, outputs


def _uri(value: Any) -> str:
    """The location of a path, a URI or a KFP artifact (its object-store URI)."""
    return str(value) if isinstance(value, (str, Path)) else value.uri


def _reachable(uri: str, what: str, settings: TrainJobSettings) -> str:
    """`uri` when every node can reach it: s3://, or a path on the shared model cache."""
    if uri.startswith("s3://"):
        return uri
    mount = settings.model_cache_mount.rstrip("/") + "/"
    if settings.model_cache_pvc and uri.startswith(mount):
        return uri
    cache = f"a path under the model cache {mount}" if settings.model_cache_pvc else "(no model cache is mounted)"
    raise ConfigError(
        f"{what}: {uri!r} cannot be reached from the TrainJob's nodes; expected an s3:// URI (a KFP artifact "
        f"under an s3:// pipeline root, k8s/base/kfp-launcher.yaml) or {cache}"
    )


def _fetch(uri: str, local: Path) -> Path:
    """The output at `uri`, copied to `local` unless it is there already."""
    from genalign import artifacts

    if artifacts.is_remote(uri):
        return artifacts.materialise(uri, local)
    if Path(uri).resolve() != local.resolve():
        shutil.copytree(uri, local, dirs_exist_ok=True)
    return local


def _sealed(directory: Path, stage: Stage, key: str) -> dict[str, Any]:
    """The result `run_stage` sealed into output `key` (its manifest's `result`), checked
    against the payload the seal lists."""
    from genalign import artifacts
    from genalign.storage import read_manifest

    manifest = read_manifest(directory, stage.outputs[key])
    if manifest.get("stage") != stage.name or "result" not in manifest:
        raise ArtifactError(
            f"{directory}: output {key} of the TrainJob is not sealed by stage {stage.name} (its manifest.json "
            "has no result): rank 0 did not finish publishing it"
        )
    if manifest.get("payload") != artifacts.payload_hashes(directory):
        raise ArtifactError(f"{directory}: output {key} does not match its seal (files changed or missing)")
    return manifest["result"]


def _write_name(name_output: Any, namespace: str, name: str) -> None:
    """The TrainJob's name into `name_output`: a path, or a KFP artifact (its file, and
    its metadata)."""
    if isinstance(name_output, (str, Path)):
        path = Path(name_output)
    else:
        path = Path(name_output.path)
        name_output.metadata.update({"name": name, "namespace": namespace})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(name + "\n")


def _tag_parent(tracking: dict[str, str], task: str, ref: str) -> None:
    from genalign.tracking import MlflowTracker, pipeline_run_id

    parent = pipeline_run_id(tracking["experiment"], tracking["pipeline_run"],
                             tags={"genalign.pipeline": tracking.get("pipeline", "")})
    MlflowTracker(parent).set_tags({f"{TRAINJOB_TAG}.{task}": ref})


def _tag_stage_run(tracking: dict[str, str], outputs: dict[str, str], tags: dict[str, str]) -> None:
    """Tag the stage's child run, the one that recorded this TrainJob's first output
    (run_stage's `genalign.output.<name>` tag)."""
    from genalign.tracking import OUTPUT_TAG, PIPELINE_RUN_TAG, MlflowTracker, pipeline_run_id

    parent = MlflowTracker(pipeline_run_id(tracking["experiment"], tracking["pipeline_run"]))
    key, uri = next(iter(outputs.items()))
    experiment = parent.client.get_run(parent.run_id).info.experiment_id
    found = parent.client.search_runs(
        [experiment],
        filter_string=f"tags.`{PIPELINE_RUN_TAG}.child` = '{tracking['pipeline_run']}' and tags.`{OUTPUT_TAG}{key}` = '{uri}'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    if not found:
        print(f"[trainjob] warning: no MLflow child run of {tracking['pipeline_run']} recorded {key}={uri}; "
              f"tags {sorted(tags)} were not set", flush=True)
        return
    MlflowTracker(found[0].info.run_id).set_tags(tags)


# --------------------------------------------------------------------------- entry points


@masked_errors()
def launch_trainjob(
    stage: str,
    config: dict[str, Any],
    *,
    inputs: dict[str, Any],
    outputs: dict[str, Any],
    params: dict[str, int] | None = None,
    tracking: dict[str, str] | None = None,
    job: TrainJobSettings | dict[str, Any],
    run_id: str,
    task: str,
    timeout_s: float | None = None,
    poll_s: float | None = None,
    api: Any = None,
    name_output: Any = None,
    metrics_output: Any = None,
    tags: dict[str, str] | None = None,
) -> TrainJobResult:
    """Run `stage` as a TrainJob with `config` and wait for it; see the module docstring.

    `inputs` / `outputs`: name -> `s3://` URI, path on the model cache, or KFP artifact (a
    list of them for a fan-in input; None for a missing optional one). `job`: the
    cluster-side settings (`TrainJobSettings` or its dict). `run_id` / `task`: the KFP run
    and task, which name and label the TrainJob. `timeout_s` / `poll_s`: None for the
    settings' values. `api`: a `kubernetes.client.ApiClient`; None for the cluster this
    runs in. `name_output`: a path or KFP artifact that gets the TrainJob's name once it
    exists. `tracking` = {experiment, pipeline_run, pipeline}: the nodes log to MLflow as
    a child of that run. `metrics_output`: a KFP `Output[Metrics]`. `tags`: set on the
    stage's MLflow child run after success (with `genalign.trainjob`)."""
    settings = job if isinstance(job, TrainJobSettings) else TrainJobSettings.from_dict(job, where="trainjob settings")
    timeout_s = settings.timeout_s if timeout_s is None else timeout_s
    poll_s = settings.poll_s if poll_s is None else poll_s
    decl = get_stage(stage)
    if not decl.distributed:
        several = sorted(name for name, s in STAGES.items() if s.distributed)
        raise ConfigError(f"stage {stage} runs in one process and cannot run as a TrainJob; stages that can: {several}")
    decl.config_class().from_dict(config, where=f"{stage} config")
    params = dict(params or {})
    inputs = {k: v for k, v in inputs.items() if v is not None}
    decl.check_names(inputs, outputs, params)
    check_label_value("run id", run_id)
    remote_in: dict[str, str | list[str]] = {}
    for key, value in inputs.items():
        if key in decl.fan_in:
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"stage {stage}: input {key} takes a list of artifacts")
            remote_in[key] = [_reachable(_uri(v), f"input {key}[{i}]", settings) for i, v in enumerate(value)]
        else:
            remote_in[key] = _reachable(_uri(value), f"input {key}", settings)
    remote_out = {key: _reachable(_uri(value), f"output {key}", settings) for key, value in outputs.items()}

    namespace = _namespace(settings.namespace)
    manifest = trainjob_manifest(stage, config, inputs=remote_in, outputs=remote_out, params=params,
                                 tracking=tracking, settings=settings, run_id=run_id, task=task, namespace=namespace)
    name = manifest["metadata"]["name"]
    cluster = _Cluster(api if api is not None else _api_client(), namespace)

    with _sigterm_raises(f"TrainJob {namespace}/{name}") as sigterm:
        ours = True  # until create says that nothing of ours exists
        try:
            try:
                _create_or_adopt(cluster, manifest, run_id, task)
            except (TrainJobConflict, TrainJobForbidden):
                ours = False
                raise
            if name_output is not None:
                _write_name(name_output, namespace, name)
            if tracking is not None:
                _tag_parent(tracking, task, f"{namespace}/{name}")
            _wait(cluster, name, timeout_s=timeout_s, poll_s=poll_s)
        finally:
            sigterm.armed = False
            if ours:
                _delete(cluster, name, poll_s=poll_s)

    result = None
    with tempfile.TemporaryDirectory(prefix=f"genalign-{stage}-") as scratch:
        for key, value in outputs.items():
            uri = remote_out[key]
            if not isinstance(value, (str, Path)):
                local = _fetch(uri, Path(value.path))  # the KFP artifact, which KFP uploads back to uri
            elif uri.startswith("s3://"):
                local = _fetch(uri, Path(scratch) / key)  # only to read its seal
            else:
                local = Path(uri)  # on the model cache: read where it is
            result = _sealed(local, decl, key)
    metrics = {k: float(v) for k, v in result["metrics"].items()}
    if tracking is not None:
        _tag_stage_run(tracking, remote_out, {TRAINJOB_TAG: f"{namespace}/{name}", **(tags or {})})
    if metrics_output is not None:
        for key, value in metrics.items():
            metrics_output.log_metric(key, value)
    return TrainJobResult(name=name, namespace=namespace, metrics=metrics, summary=result["summary"], outputs=remote_out)


@masked_errors()
def sweep_trainjobs(run_id: str, namespace: str | None = None, api: Any = None) -> list[str]:
    """Delete every TrainJob of pipeline run `run_id` in `namespace` (None: this pod's),
    and only those (label genalign.io/pipeline-run); returns their names."""
    cluster = _Cluster(api if api is not None else _api_client(), _namespace(namespace))
    names = cluster.names(f"{RUN_LABEL}={check_label_value('run id', run_id)},{PART_OF[0]}={PART_OF[1]}")
    for name in names:
        cluster.delete(name)
        print(f"[trainjob] deleted TrainJob {cluster.namespace}/{name} of run {run_id}", flush=True)
    return names


__all__ = [
    "TrainJobConflict", "TrainJobError", "TrainJobFailed", "TrainJobForbidden", "TrainJobResult",
    "TrainJobTerminated", "TrainJobTimeout", "launch_trainjob", "sweep_trainjobs",
]

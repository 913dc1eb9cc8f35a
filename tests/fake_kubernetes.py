"""A fake Kubernetes API on loopback: the few endpoints genalign.trainjobs calls, enough to
drive a TrainJob through its life without a cluster.

    with FakeKubernetes() as kube:
        kube.script = Script(["Created", "Running", "Complete"], lines=["step 1", "step 2"])
        launch_trainjob(..., api=kube.api_client())
        assert kube.jobs == {}

Served, in any namespace:

    POST/GET/DELETE /apis/trainer.kubeflow.org/v1alpha1/namespaces/{ns}/trainjobs[/{name}]
                    (GET of the collection with an equality labelSelector)
    GET             /api/v1/namespaces/{ns}/pods?labelSelector=...
    GET             /api/v1/namespaces/{ns}/pods/{name}/log?timestamps&sinceSeconds&tailLines&previous

A created TrainJob is validated against the vendored CRD schema with unknown fields refused
(422 otherwise, as `kubectl --validate=strict` would). Each GET of a TrainJob moves it one
phase along `script`: "Running" makes its node pods (with the labels JobSet and the Job
controller put on them) and appends one of `lines` to node 0's log, "Complete" calls
`on_complete(job)` (which writes what the stage would have published) and sets the
Complete condition, "Failed" fails node `failing_node` with `failure_lines` in its log.
`forbid` holds (verb, resource) pairs answered 403. Nothing here imports pytest.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import re
import threading
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

TRAINJOBS = re.compile(r"^/apis/trainer\.kubeflow\.org/v1alpha1/namespaces/([^/]+)/trainjobs(?:/([^/]+))?$")
PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods$")
POD_LOG = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log$")


def strict(schema: Any) -> Any:
    """`schema` with unknown properties refused wherever it lists the known ones."""
    if isinstance(schema, dict):
        # `properties` maps names to schemas: its keys are field names, not keywords
        out = {k: ({name: strict(v) for name, v in value.items()} if k == "properties" else strict(value))
               for k, value in schema.items()}
        if "properties" in schema:
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def stage_outputs(job: dict[str, Any]) -> dict[str, str]:
    """{output name: location} from the TrainJob's `--out name=location` arguments."""
    args = job["spec"]["trainer"]["args"]
    return dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--out")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


@dataclasses.dataclass
class Script:
    """What a TrainJob goes through, one phase per GET; the last phase repeats."""

    phases: list[str]
    lines: list[str] = dataclasses.field(default_factory=list)
    failing_node: int = 0
    failure_lines: list[str] = dataclasses.field(default_factory=list)


class FakeKubernetes:
    def __init__(self) -> None:
        import jsonschema

        from genalign.trainjobs import load_crd_schema

        self.validator = jsonschema.Draft7Validator(strict(load_crd_schema()))
        self.lock = threading.Lock()
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.logs: dict[tuple[str, str], list[tuple[datetime.datetime, str]]] = {}
        self.script = Script(["Created"])
        self.progress: dict[tuple[str, str], int] = {}
        self.logged: dict[tuple[str, str], int] = {}
        self.on_complete: Callable[[dict[str, Any]], None] | None = None
        self.forbid: set[tuple[str, str]] = set()
        self.deleted: list[tuple[str, str | None]] = []  # (name, propagationPolicy)
        self.running = threading.Event()  # set once a TrainJob is Running
        self.server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> FakeKubernetes:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, code: int, body: Any) -> None:
                text = isinstance(body, str)  # a log; everything else is JSON
                data = body.encode() if text else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain" if text else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                url = urlparse(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                self._answer(*fake.handle(method, url.path, query, body))

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # a short poll interval: shutdown() waits up to one of them
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def api_client(self):
        from kubernetes import client

        return client.ApiClient(client.Configuration(host=self.url))

    # ------------------------------------------------------------------ state

    def add_job(self, job: dict[str, Any], namespace: str = "genalign") -> None:
        """A TrainJob that exists already (another run's, or an earlier attempt's)."""
        job = copy.deepcopy(job)
        job["metadata"].setdefault("uid", str(uuid.uuid4()))
        self.jobs[(namespace, job["metadata"]["name"])] = job

    def job_names(self, namespace: str = "genalign") -> list[str]:
        return sorted(name for ns, name in self.jobs if ns == namespace)

    def _log(self, namespace: str, pod: str, line: str) -> None:
        self.logs.setdefault((namespace, pod), []).append((datetime.datetime.now(datetime.timezone.utc), line))

    def _node_pods(self, namespace: str, job: dict[str, Any]) -> list[str]:
        name = job["metadata"]["name"]
        pods = []
        for node in range(job["spec"]["trainer"].get("numNodes", 1)):
            pod = f"{name}-node-0-{node}-abcde"
            pods.append(pod)
            self.pods.setdefault((namespace, pod), {
                "metadata": {"name": pod, "namespace": namespace, "creationTimestamp": _now(), "labels": {
                    "jobset.sigs.k8s.io/jobset-name": name,
                    "jobset.sigs.k8s.io/replicatedjob-name": "node",
                    "jobset.sigs.k8s.io/job-index": "0",
                    "batch.kubernetes.io/job-completion-index": str(node),
                }},
                "spec": {"containers": [{"name": "node", "image": job["spec"]["trainer"]["image"]}]},
                "status": {"phase": "Running", "containerStatuses": [self._container({"running": {"startedAt": _now()}})]},
            })
        return pods

    def _log_next(self, namespace: str, key: tuple[str, str], pod: str) -> bool:
        """Node 0 writes the next of `script.lines`; False when all are written."""
        done = self.logged.get(key, 0)
        if done == len(self.script.lines):
            return False
        self._log(namespace, pod, self.script.lines[done])
        self.logged[key] = done + 1
        return True

    @staticmethod
    def _container(state: dict[str, Any]) -> dict[str, Any]:
        return {"name": "node", "image": "img", "imageID": "img@sha256:0", "ready": "running" in state,
                "restartCount": 0, "state": state}

    def _advance(self, namespace: str, job: dict[str, Any]) -> None:
        key = (namespace, job["metadata"]["name"])
        step = self.progress.get(key, 0)
        self.progress[key] = step + 1
        phase = self.script.phases[min(step, len(self.script.phases) - 1)]
        if phase == "Created":
            return
        pods = self._node_pods(namespace, job)
        if phase == "Running":
            self._log_next(namespace, key, pods[0])
            self.running.set()
            return
        if phase == "Complete" and not _condition(job, "Complete"):
            while self._log_next(namespace, key, pods[0]):
                pass
            if self.on_complete is not None:
                self.on_complete(job)
            for pod in pods:
                self.pods[(namespace, pod)]["status"] = {
                    "phase": "Succeeded", "containerStatuses": [self._container({"terminated": {"exitCode": 0}})]}
            job["status"] = {"conditions": [{"type": "Complete", "status": "True", "reason": "JobsCompleted",
                                             "message": "jobs completed", "lastTransitionTime": _now()}]}
        if phase == "Failed" and not _condition(job, "Failed"):
            pod = pods[self.script.failing_node]
            for line in self.script.failure_lines:
                self._log(namespace, pod, line)
            self.pods[(namespace, pod)]["status"] = {
                "phase": "Failed", "containerStatuses": [self._container({"terminated": {"exitCode": 1}})]}
            job["status"] = {"conditions": [{"type": "Failed", "status": "True", "reason": "JobsFailed",
                                             "message": "jobset failed", "lastTransitionTime": _now()}]}

    # ------------------------------------------------------------------ requests

    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        with self.lock:
            found = TRAINJOBS.match(path)
            if found:
                return self._trainjobs(method, found.group(1), found.group(2), query, body)
            found = PODS.match(path)
            if found and method == "GET":
                if ("list", "pods") in self.forbid:
                    return 403, _status(403, "Forbidden", 'pods is forbidden: cannot list resource "pods"')
                items = [p for (ns, _), p in self.pods.items()
                         if ns == found.group(1) and _matches(p["metadata"]["labels"], query.get("labelSelector", ""))]
                return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": copy.deepcopy(items)}
            found = POD_LOG.match(path)
            if found and method == "GET":
                return self._log_request(found.group(1), found.group(2), query)
            return 404, _status(404, "NotFound", f"no route {method} {path}")

    def _trainjobs(self, method: str, namespace: str, name: str | None, query: dict[str, str],
                   body: Any) -> tuple[int, Any]:
        verb = {"POST": "create", "DELETE": "delete"}.get(method, "get" if name else "list")
        if (verb, "trainjobs") in self.forbid:
            return 403, _status(403, "Forbidden", f'trainjobs.trainer.kubeflow.org is forbidden: cannot {verb} '
                                f'resource "trainjobs" in API group "trainer.kubeflow.org" in the namespace "{namespace}"')
        if verb == "create":
            errors = sorted(self.validator.iter_errors(body), key=lambda e: list(e.path))
            if errors:
                return 422, _status(422, "Invalid", "; ".join(f"{list(e.path)}: {e.message}" for e in errors))
            name = body["metadata"]["name"]
            if (namespace, name) in self.jobs:
                return 409, _status(409, "AlreadyExists", f'trainjobs.trainer.kubeflow.org "{name}" already exists')
            job = copy.deepcopy(body)
            job["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=_now())
            self.jobs[(namespace, name)] = job
            return 201, job
        if verb == "list":
            items = [j for (ns, _), j in self.jobs.items()
                     if ns == namespace and _matches(j["metadata"].get("labels") or {}, query.get("labelSelector", ""))]
            return 200, {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJobList", "metadata": {},
                         "items": copy.deepcopy(items)}
        job = self.jobs.get((namespace, name))
        if job is None:
            return 404, _status(404, "NotFound", f'trainjobs.trainer.kubeflow.org "{name}" not found')
        if verb == "delete":
            self.deleted.append((name, (body or {}).get("propagationPolicy")))
            del self.jobs[(namespace, name)]
            for key in [k for k, p in self.pods.items()
                        if k[0] == namespace and p["metadata"]["labels"]["jobset.sigs.k8s.io/jobset-name"] == name]:
                del self.pods[key]
            return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 200}
        self._advance(namespace, job)
        return 200, copy.deepcopy(job)

    def _log_request(self, namespace: str, pod: str, query: dict[str, str]) -> tuple[int, Any]:
        if ("get", "pods/log") in self.forbid:
            return 403, _status(403, "Forbidden", 'pods "x" is forbidden: cannot get resource "pods/log"')
        if (namespace, pod) not in self.pods:
            return 404, _status(404, "NotFound", f'pods "{pod}" not found')
        lines = self.logs.get((namespace, pod), [])
        if "sinceSeconds" in query:
            cut = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=int(query["sinceSeconds"]))
            lines = [(t, line) for t, line in lines if t >= cut]
        if "tailLines" in query:
            lines = lines[-int(query["tailLines"]):]
        stamped = query.get("timestamps", "").lower() == "true"  # the client sends "True", as Go's ParseBool reads
        text = "".join((f"{t.strftime('%Y-%m-%dT%H:%M:%S.%f')}000Z " if stamped else "") + line + "\n"
                       for t, line in lines)
        return 200, text


def _condition(job: dict[str, Any], kind: str) -> bool:
    return any(c["type"] == kind and c["status"] == "True" for c in (job.get("status") or {}).get("conditions", []))

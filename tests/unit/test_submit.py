"""`genalign submit` against a fake Kubeflow Pipelines API on loopback.

The fake speaks the part of the v2beta1 REST API that kfp.Client 2.17 uses for
`create_run_from_pipeline_package` (kfp/client/client.py, kfp_server_api/api/*):
GET healthz, GET experiments (find by display_name), POST experiments, POST runs with
the pipeline spec inlined, and GET runs/{id} while waiting. It records every request.
No secret of the environment or the kube config reaches a printed line, a pipeline
parameter or the pipeline spec.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from genalign.cli import main
from genalign.config.presets import load_preset
from genalign.secrets import SECRET_ENV

TOKEN = "s3cret-t0ken-value"
SENTINELS = {name: f"sentinel-{name.lower().replace('_', '-')}-7f3a" for name in SECRET_ENV}


class FakeKFP:
    """A Kubeflow Pipelines API with one namespace; `token` set: other bearers get 401.
    `run_error`: POST runs answers that HTTP status with a body that echoes the request's
    Authorization header, as some gateways do."""

    def __init__(self, token: str | None = TOKEN, states: list[str] | None = None, run_error: int | None = None):
        self.token = token
        self.states = list(states or ["RUNNING"])
        self.run_error = run_error
        self.requests: list[dict] = []
        self.experiments: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                fake.handle(self, "GET")

            def do_POST(self):
                fake.handle(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def calls(self, method: str, path: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == method and r["path"] == path]

    def handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        body = json.loads(h.rfile.read(length)) if length else None
        self.requests.append({
            "method": method, "path": url.path, "query": parse_qs(url.query),
            "authorization": h.headers.get("Authorization"), "body": body,
        })
        if self.token and h.headers.get("Authorization") != f"Bearer {self.token}":
            return self.reply(h, 401, {"error": "Unauthorized", "code": 16})
        route = (method, url.path)
        if route == ("GET", "/apis/v2beta1/healthz"):
            return self.reply(h, 200, {"commit_sha": "fake", "tag_name": "2.5.0", "multi_user": False})
        if route == ("GET", "/apis/v2beta1/experiments"):
            wanted = json.loads(parse_qs(url.query)["filter"][0])["predicates"][0]["stringValue"]
            found = [e for e in self.experiments if e["display_name"] == wanted]
            return self.reply(h, 200, {"experiments": found, "total_size": len(found)} if found else {})
        if route == ("POST", "/apis/v2beta1/experiments"):
            experiment = {**body, "experiment_id": f"exp-{len(self.experiments) + 1}"}
            self.experiments.append(experiment)
            return self.reply(h, 200, experiment)
        if route == ("POST", "/apis/v2beta1/runs"):
            if self.run_error:
                return self.reply(h, self.run_error, {"error": f"upstream refused {h.headers.get('Authorization')}"})
            return self.reply(h, 200, {**body, "run_id": "run-1", "state": "PENDING"})
        if route == ("GET", "/apis/v2beta1/runs/run-1"):
            state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
            return self.reply(h, 200, {"run_id": "run-1", "state": state})
        return self.reply(h, 404, {"error": f"no route {method} {url.path}"})

    @staticmethod
    def reply(h: BaseHTTPRequestHandler, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)


@pytest.fixture(autouse=True)
def _no_credentials(monkeypatch, tmp_path):
    """No token or kube config from the machine running the tests."""
    for name in ("KF_PIPELINES_TOKEN", "KFP_TOKEN", "KF_PIPELINES_DEFAULT_EXPERIMENT_NAME",
                 "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME", "KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kube-config"))


def submit(url: str, *extra: str) -> int:
    return main(["submit", "part-dpo", "--host", url, "--preset", "tiny", *extra])


def test_submit_sends_the_compiled_spec_with_the_preset_parameters(monkeypatch, capsys):
    monkeypatch.setenv("KF_PIPELINES_TOKEN", TOKEN)
    with FakeKFP() as fake:
        code = submit(fake.url, "--set", "train.beta=2000", "--experiment", "exp-a", "--run-name", "run-a")
    out, err = capsys.readouterr()
    assert code == 0, err
    assert all(r["authorization"] == f"Bearer {TOKEN}" for r in fake.requests)
    assert TOKEN not in out + err

    listed = fake.calls("GET", "/apis/v2beta1/experiments")
    assert json.loads(listed[0]["query"]["filter"][0])["predicates"][0]["stringValue"] == "exp-a"
    (created,) = fake.calls("POST", "/apis/v2beta1/experiments")
    assert created["body"]["display_name"] == "exp-a"

    (run,) = fake.calls("POST", "/apis/v2beta1/runs")
    body = run["body"]
    assert body["display_name"] == "run-a"
    assert body["experiment_id"] == "exp-1"
    spec = body["pipeline_spec"]  # no profile: the pipeline spec itself, no platform spec
    assert spec["pipelineInfo"]["name"] == "part-dpo"
    assert "exec-train-flow-dpo" in spec["deploymentSpec"]["executors"]
    expected = load_preset("part-dpo", "tiny", ["train.beta=2000"])
    assert body["runtime_config"]["parameters"] == json.loads(json.dumps(expected))
    assert body["runtime_config"]["parameters"]["train"]["beta"] == 2000
    assert f"{fake.url}/#/runs/details/run-1" in out
    assert not fake.calls("GET", "/apis/v2beta1/runs/run-1")  # no --wait: no polling


def test_submit_with_a_profile_sends_the_platform_spec_namespace_and_service_account(monkeypatch, tmp_path, capsys):
    profile = tmp_path / "cluster.yaml"
    profile.write_text(
        "namespace: team-a\nservice_account: pipeline-runner\n"
        "stages:\n  train-flow-dpo: {gpus: 2, cpu: 16, memory: 128Gi}\n"
    )
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    with FakeKFP() as fake:
        assert submit(fake.url, "--profile", str(profile)) == 0, capsys.readouterr().err
    listed = fake.calls("GET", "/apis/v2beta1/experiments")[0]
    assert listed["query"]["namespace"] == ["team-a"]
    (created,) = fake.calls("POST", "/apis/v2beta1/experiments")
    assert created["body"] == {"display_name": "genalign-part-dpo", "namespace": "team-a"}
    (run,) = fake.calls("POST", "/apis/v2beta1/runs")
    assert run["body"]["service_account"] == "pipeline-runner"
    assert run["body"]["display_name"].startswith("part-dpo tiny ")
    kubernetes = run["body"]["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]
    train = kubernetes["deploymentSpec"]["executors"]["exec-train-flow-dpo"]
    assert train["secretAsEnv"][0]["secretName"] == "genalign-s3"
    resources = run["body"]["pipeline_spec"]["pipeline_spec"]["deploymentSpec"]["executors"][
        "exec-train-flow-dpo"]["container"]["resources"]
    assert resources["accelerator"]["resourceCount"] == "2"


@pytest.mark.parametrize("states, code, final", [
    (["PENDING", "RUNNING", "SUCCEEDED"], 0, "SUCCEEDED"),
    (["RUNNING", "FAILED"], 1, "FAILED"),
])
def test_wait_follows_the_run_to_its_end(monkeypatch, capsys, states, code, final):
    monkeypatch.setenv("KF_PIPELINES_TOKEN", TOKEN)
    with FakeKFP(states=states) as fake:
        assert submit(fake.url, "--wait", "--poll", "0.01", "--timeout", "30") == code
    out, err = capsys.readouterr()
    assert len(fake.calls("GET", "/apis/v2beta1/runs/run-1")) == len(states)
    assert f"run run-1: {final}" in out
    if code:
        assert f"ended FAILED: {fake.url}/#/runs/details/run-1" in err


def test_wait_gives_up_after_the_timeout(monkeypatch, capsys):
    monkeypatch.setenv("KF_PIPELINES_TOKEN", TOKEN)
    with FakeKFP(states=["RUNNING"]) as fake:
        assert submit(fake.url, "--wait", "--poll", "0.01", "--timeout", "0.05") == 1
    assert "still RUNNING after 0.05 s" in capsys.readouterr().err


def test_a_rejected_token_is_a_clear_error_that_does_not_show_it(monkeypatch, capsys):
    monkeypatch.setenv("KF_PIPELINES_TOKEN", "wrong-token-value")
    with FakeKFP() as fake:
        assert submit(fake.url) == 2
    err = capsys.readouterr().err
    assert f"Kubeflow Pipelines at {fake.url} refused the request (HTTP 401" in err
    assert "bearer token from $KF_PIPELINES_TOKEN" in err
    assert "wrong-token-value" not in err
    assert not fake.calls("POST", "/apis/v2beta1/runs")


def test_no_token_at_all_says_so(capsys):
    with FakeKFP() as fake:
        assert submit(fake.url) == 2
    err = capsys.readouterr().err
    assert "HTTP 401" in err and "no token" in err
    assert fake.requests[0]["authorization"] is None


def test_the_kube_config_token_is_used_when_no_variable_is_set(monkeypatch, tmp_path, capsys):
    kube_config = tmp_path / "kube-config"
    kube_config.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "lab",
        "clusters": [{"name": "lab", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "me", "user": {"token": TOKEN}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "me"}}],
    }))
    monkeypatch.setenv("KUBECONFIG", str(kube_config))
    with FakeKFP() as fake:
        assert submit(fake.url) == 0, capsys.readouterr().err
    assert {r["authorization"] for r in fake.requests} == {f"Bearer {TOKEN}"}


def test_an_unreachable_host_is_a_clear_error(capsys):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert submit(f"http://127.0.0.1:{port}") == 2
    err = capsys.readouterr().err
    assert f"cannot reach Kubeflow Pipelines at http://127.0.0.1:{port}: connection refused" in err


def test_a_host_that_is_not_the_pipelines_api_is_a_clear_error(capsys):
    with FakeKFP(token=None) as fake:
        assert submit(fake.url + "/not-pipelines") == 2
    assert "answered HTTP 404" in capsys.readouterr().err


def test_dry_run_prints_the_plan_and_sends_nothing(monkeypatch, capsys):
    monkeypatch.setenv("KF_PIPELINES_TOKEN", TOKEN)
    with FakeKFP() as fake:
        code = submit(fake.url, "--dry-run", "--run-name", "r", "--namespace", "ns", "--set", "num_shards=3")
    out, err = capsys.readouterr()
    assert code == 0, err
    assert fake.requests == []
    assert TOKEN not in out + err
    plan = json.loads(out)
    assert plan["host"] == fake.url
    assert plan["auth"] == "bearer token from $KF_PIPELINES_TOKEN"
    assert (plan["experiment"], plan["run_name"], plan["namespace"]) == ("genalign-part-dpo", "r", "ns")
    assert plan["parameters"] == json.loads(json.dumps(load_preset("part-dpo", "tiny", ["num_shards=3"])))
    assert plan["tasks"] == [
        "close-tracking", "evaluate-parts", "mine-pairs", "prepare-parts",
        "register-model", "rollout-parts", "score-samples", "train-flow-dpo",
    ]


@pytest.mark.parametrize("command", [
    ["submit", "part-dop", "--host", "http://127.0.0.1:1", "--preset", "tiny"],
    ["compile", "part-dop"],
])
def test_an_unknown_pipeline_lists_the_valid_ones(capsys, command):
    assert main(command) == 2
    assert "unknown pipeline 'part-dop'; valid pipelines: ['hand-pose', 'part-dpo', 'planner-dpo', 'voxel-sds']" in capsys.readouterr().err


def test_a_host_without_a_scheme_is_refused_before_anything_else(capsys):
    assert main(["submit", "part-dpo", "--host", "kubeflow.example.com", "--preset", "tiny"]) == 2
    assert "expected http://... or https://..." in capsys.readouterr().err


def test_no_secret_of_the_environment_is_printed_or_sent_as_a_parameter(monkeypatch, tmp_path, capsys):
    for name, value in SENTINELS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("KF_PIPELINES_TOKEN", TOKEN)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://alice:url-password-5c1e@mlflow.example.com")
    profile = tmp_path / "cluster.yaml"
    profile.write_text("namespace: team-a\nstages:\n  train-flow-dpo: {gpus: 1}\n")
    with FakeKFP(states=["RUNNING", "FAILED"]) as fake:
        code = submit(fake.url, "--profile", str(profile), "--wait", "--poll", "0.01", "--timeout", "30")
    out, err = capsys.readouterr()
    assert code == 1, err
    assert "ended FAILED" in err
    hidden = [TOKEN, "url-password-5c1e", *SENTINELS.values()]
    (run,) = fake.calls("POST", "/apis/v2beta1/runs")
    parameters = run["body"]["runtime_config"]["parameters"]
    assert parameters == json.loads(json.dumps(load_preset("part-dpo", "tiny")))
    sent = json.dumps([r["body"] for r in fake.requests]) + json.dumps([r["query"] for r in fake.requests])
    assert [s for s in hidden if s in out + err + sent] == []
    assert all(r["authorization"] == f"Bearer {TOKEN}" for r in fake.requests)  # the header only


def test_a_server_error_that_echoes_the_kube_config_token_does_not_show_it(monkeypatch, tmp_path, capsys):
    kube_config = tmp_path / "kube-config"
    kube_config.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "lab",
        "clusters": [{"name": "lab", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "me", "user": {"token": TOKEN}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "me"}}],
    }))
    monkeypatch.setenv("KUBECONFIG", str(kube_config))
    with FakeKFP(run_error=500) as fake:
        assert submit(fake.url) == 2
    err = capsys.readouterr().err
    assert f"Kubeflow Pipelines at {fake.url} answered HTTP 500" in err
    assert "upstream refused Bearer ***" in err and TOKEN not in err


def test_a_host_with_a_password_is_printed_without_it(capsys):
    assert submit("https://alice:host-password-91d2@kubeflow.example.com/pipeline", "--dry-run") == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["host"] == "https://***@kubeflow.example.com/pipeline"
    assert "host-password-91d2" not in out + err

"""The `genalign` command.

    genalign run part-dpo --preset tiny [--set train.beta=500 ...]   run a pipeline locally (kfp.local)
    genalign compile part-dpo [--preset tiny] [--profile cluster.yaml] [-o part-dpo.yaml]
                                                                     IR YAML for the Kubeflow UI
    genalign submit part-dpo --host URL --preset tiny [--profile cluster.yaml] [--wait]
                                                                     run it on a Kubeflow cluster
    genalign stage score --config c.yaml --in samples=DIR --out scored=DIR   run one stage
    genalign stages                                                  list the stages
    genalign pipelines                                               list the pipelines
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genalign.config.base import ConfigError
from genalign.secrets import masked_errors, redact

if TYPE_CHECKING:
    from genalign.config.cluster import ClusterProfile


def _pipeline_function(name: str, profile: dict | None = None, arguments: dict | None = None,
                       resume: dict | None = None):
    """The pipeline `name`, built by its declared factory with `profile` (a checked
    ClusterProfile as a dict) or none, in the shape `arguments` ask for (its iterations),
    resuming an earlier run if asked."""
    from genalign.config.pipelines import get_pipeline

    decl = get_pipeline(name)
    module, _, attr = decl.factory.partition(":")
    structure = decl.structure(arguments or {})
    structure["doc"] = decl.docstring()
    if resume is not None:
        structure["resume"] = resume
    return getattr(importlib.import_module(module), attr)(profile, **structure)


def _pairs(items: list[str], flag: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"{flag} {item!r}: expected name=path")
        out.setdefault(key, []).append(value)
    return out


def cmd_stage(args: argparse.Namespace) -> int:
    from genalign.config.base import load_yaml
    from genalign.config.presets import apply_overrides
    from genalign.stages import get_stage, run_stage, stage_help

    if args.name is None:
        if args.help:
            print("usage: genalign stage NAME [--config C.yaml] [--set K=V] --in NAME=DIR --out NAME=DIR "
                  "[--param NAME=N]\n`genalign stages` lists the stages; `genalign stage NAME --help` shows one.")
            return 0
        raise ConfigError("genalign stage NAME: a stage is needed; `genalign stages` lists them")
    spec = get_stage(args.name)
    if args.help:
        print(stage_help(args.name))
        return 0
    config: dict[str, Any] = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        config = load_yaml(path)
    apply_overrides(config, args.set)
    ins = _pairs(args.inputs, "--in")
    inputs = {k: (v if k in spec.fan_in else v[-1]) for k, v in ins.items()}
    outputs = {k: v[-1] for k, v in _pairs(args.outputs, "--out").items()}
    params = {k: int(v[-1]) for k, v in _pairs(args.params, "--param").items()}
    tracking = None
    if args.pipeline_run:
        tracking = {"experiment": args.experiment, "pipeline_run": args.pipeline_run, "pipeline": args.pipeline}
    tags = {k: v[-1] for k, v in _pairs(args.tags, "--tag").items()}
    result = run_stage(args.name, config, inputs=inputs, outputs=outputs, params=params, tracking=tracking,
                       tags=tags or None)
    print(json.dumps({"metrics": result.metrics, "summary": result.summary}, indent=2, default=str))
    return 0


def cmd_stages(args: argparse.Namespace) -> int:
    from genalign.config.pipelines import PIPELINES

    shown: set[str] = set()
    for pipeline in PIPELINES.values():
        print(f"{pipeline.name}: {pipeline.description}")
        for section, spec in pipeline.sections.items():
            ins = ", ".join(f"{k}[]" if k in spec.fan_in else f"{k}?" if k in spec.optional else k
                            for k in spec.inputs) or "-"
            params = f"  params: {', '.join(spec.params)}" if spec.params else ""
            again = " (shared, above)" if spec.name in shown else ""
            print(f"  {spec.name:17s} [{section}] in: {ins}  out: {', '.join(spec.outputs)}{params}{again}")
            if not again:
                print(f"  {'':17s} {spec.help}")
            shown.add(spec.name)
    print("\n`genalign stage NAME --help` shows a stage's inputs, outputs, params and config fields.")
    return 0


def cmd_pipelines(args: argparse.Namespace) -> int:
    from genalign.config.pipelines import PIPELINES

    print("\n".join(PIPELINES))
    return 0


def _leaf_tasks(spec: dict) -> dict[str, str]:
    """{task name: executor label} of every task that runs a container, at any depth of the IR."""
    components = spec["components"]
    dags = [spec["root"]["dag"]] + [c["dag"] for c in components.values() if "dag" in c]
    tasks = {}
    for dag in dags:
        for name, task in dag["tasks"].items():
            component = components[task["componentRef"]["name"]]
            if "executorLabel" in component:
                tasks[name] = component["executorLabel"]
    return dict(sorted(tasks.items()))


def _load_profile(path: str | None, pipeline: str) -> ClusterProfile | None:
    """The checked cluster profile, if one is given, for compiling `pipeline`."""
    if path is None:
        return None
    from genalign.config.cluster import load_profile

    profile = load_profile(path)
    from genalign.config.pipelines import STAGES

    single = sorted(name for name, s in profile.stages.items() if s.nodes > 1 and not STAGES[name].distributed)
    if single:
        raise ConfigError(
            f"{path}: stages: {', '.join(f'{n}.nodes: {profile.stages[n].nodes}' for n in single)}: "
            f"{', '.join(single)} run(s) in one process (the stage's declaration is not distributed); "
            f"set nodes: 1. Stages that run on several nodes: "
            f"{sorted(n for n, s in STAGES.items() if s.distributed)}"
        )
    return profile


def _compile(pipeline: str, arguments: dict[str, Any], profile: ClusterProfile | None, out: Path,
             resume: dict | None = None) -> None:
    """Writes the IR YAML of `pipeline` with `arguments` as parameter defaults, reproducibly.

    kfp writes a header comment listing the parameters with their defaults in protobuf
    map order, which changes from one process to the next; the header is written again
    from the key-sorted spec so the same inputs give the same bytes (pipelines/compiled/
    is checked against a fresh compile).
    """
    import yaml
    from kfp import compiler
    from kfp.compiler import pipeline_spec_builder

    func = _pipeline_function(pipeline, profile.to_dict() if profile else None, arguments, resume)
    compiler.Compiler().compile(func, str(out), pipeline_parameters=arguments)
    lines = out.read_text().splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    body = "".join(lines[first:])
    spec = next(yaml.safe_load_all(body))
    header = pipeline_spec_builder.extract_comments_from_pipeline_spec(spec, spec["pipelineInfo"].get("description"))
    out.write_text(header + body)


def cmd_compile(args: argparse.Namespace) -> int:
    from genalign.config.presets import load_preset

    arguments = load_preset(args.pipeline, args.preset, args.set)
    profile = _load_profile(args.profile, args.pipeline)
    out = Path(args.output or f"{args.pipeline}.yaml")
    _compile(args.pipeline, arguments, profile, out)
    print(f"wrote {out} (upload it in the Kubeflow Pipelines UI: Pipelines > Upload pipeline)")
    return 0


# The token the pipelines API gets: the first of these variables that is set, else the
# bearer token of the current kube config context (kfp.Client only reads the kube config
# when it is given no host, so it is read here), else none (a port-forward needs none).
TOKEN_ENV = ("KF_PIPELINES_TOKEN", "KFP_TOKEN")
TERMINAL_STATES = {"SUCCEEDED": 0, "SKIPPED": 0, "FAILED": 1, "CANCELED": 1}


def _token() -> tuple[str | None, str]:
    """(token, where it came from); the token itself is never printed."""
    for name in TOKEN_ENV:
        if os.environ.get(name):
            return os.environ[name], f"bearer token from ${name}"
    kube_config = os.environ.get("KUBECONFIG") or "~/.kube/config"
    if not any(Path(p).expanduser().is_file() for p in kube_config.split(os.pathsep) if p):
        return None, f"no token (${' / $'.join(TOKEN_ENV)} unset, no kube config)"
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config

    configuration = k8s_client.Configuration()
    try:
        _, context = k8s_config.list_kube_config_contexts(config_file=kube_config)
        k8s_config.load_kube_config(config_file=kube_config, client_configuration=configuration, persist_config=False)
    except k8s_config.ConfigException as e:
        return None, f"no token (${' / $'.join(TOKEN_ENV)} unset; the kube config gave none: {e})"
    bearer = configuration.api_key.get("authorization")
    if not bearer:
        return None, f"no token (${' / $'.join(TOKEN_ENV)} unset; kube context {context['name']!r} has no bearer token)"
    return bearer.removeprefix("Bearer ").strip(), f"bearer token of kube context {context['name']!r}"


def _check_host(host: str, token: str | None, auth: str) -> None:
    """One GET of the API's healthz, so that a wrong host or token fails fast and clearly.

    kfp.Client retries a failing healthz five times, five seconds apart, and then says
    only that it timed out. Like the SDK, this ignores the *_proxy environment.
    """
    import urllib.error
    import urllib.request

    url = f"{host}/apis/v2beta1/healthz"
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as response:
            body, landed = response.read(), response.geturl()
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise ConfigError(_auth_message(host, e.code, auth)) from None
        raise ConfigError(
            f"{host}: GET /apis/v2beta1/healthz answered HTTP {e.code} {e.reason}; is --host the "
            "Kubeflow Pipelines endpoint (e.g. https://kubeflow.example.com/pipeline or a port-forward "
            "http://127.0.0.1:8888)?"
        ) from None
    except (urllib.error.URLError, OSError) as e:
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        if isinstance(reason, ConnectionRefusedError):
            reason = "connection refused"
        raise ConfigError(
            f"cannot reach Kubeflow Pipelines at {host}: {reason} (is the host right, and the "
            "port-forward or ingress up?)"
        ) from None
    try:
        json.loads(body)
    except ValueError:
        raise ConfigError(
            f"{host}: GET /apis/v2beta1/healthz did not answer JSON (it landed on {landed}, perhaps a "
            f"login page; sent: {auth}); set ${TOKEN_ENV[0]} to a token the cluster accepts"
        ) from None


def _auth_message(host: str, status: int, auth: str) -> str:
    return (
        f"Kubeflow Pipelines at {host} refused the request (HTTP {status}; sent: {auth}); set "
        f"${TOKEN_ENV[0]} to a token that may create runs there"
    )


def _submit_error(host: str, error: Exception, auth: str, token: str | None) -> ConfigError:
    """An API error (kfp_server_api.ApiException) or a connection error (urllib3), said
    plainly, with the token (from the environment or the kube config) masked in what the
    server or the connection said."""
    import kfp_server_api

    if not isinstance(error, kfp_server_api.ApiException):
        return ConfigError(f"cannot reach Kubeflow Pipelines at {host}: {redact(str(error), also=[token])}")
    if error.status in (401, 403):
        return ConfigError(_auth_message(host, error.status, auth))
    detail = redact((error.body or "").strip(), also=[token])[:500]
    return ConfigError(f"Kubeflow Pipelines at {host} answered HTTP {error.status} {error.reason}: {detail}")


def _wait(client, run_id: str, url: str, timeout: float | None, poll: float) -> int:
    """Polls the run until it ends; 0 if it succeeded, 1 if it failed, was cancelled or timed out.

    Not kfp's `wait_for_run_completion`: that one does not stop on CANCELED.
    """
    started, last = time.monotonic(), None
    while True:
        state = client.get_run(run_id).state
        if state != last:
            print(f"run {run_id}: {state}", flush=True)
            last = state
        if state in TERMINAL_STATES:
            if TERMINAL_STATES[state]:
                print(f"genalign: run {run_id} ended {state}: {url}", file=sys.stderr)
            return TERMINAL_STATES[state]
        if timeout is not None and time.monotonic() - started > timeout:
            print(f"genalign: run {run_id} still {state} after {timeout:g} s (it goes on): {url}", file=sys.stderr)
            return 1
        time.sleep(poll)


def cmd_submit(args: argparse.Namespace) -> int:
    import yaml

    from genalign.config.presets import load_preset

    host = args.host.rstrip("/")
    if not host.startswith(("http://", "https://")):
        raise ConfigError(f"--host {args.host!r}: expected http://... or https://...")
    if args.timeout is not None and not args.wait:
        raise ConfigError("--timeout applies to --wait; add --wait")
    arguments = load_preset(args.pipeline, args.preset, args.set)
    profile = _load_profile(args.profile, args.pipeline)
    resume = _resume(args, arguments)
    namespace = args.namespace or (profile.namespace if profile else None)
    service_account = profile.service_account if profile else None
    experiment = args.experiment or arguments.get("experiment") or args.pipeline
    preset = Path(args.preset).stem if args.preset.endswith((".yaml", ".yml")) else args.preset
    run_name = args.run_name or f"{args.pipeline} {preset} {time.strftime('%Y-%m-%d %H-%M-%S')}"
    token, auth = _token()

    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / f"{args.pipeline}.yaml"
        _compile(args.pipeline, arguments, profile, package, resume)
        if args.dry_run:
            spec = next(yaml.safe_load_all(package.read_text()))
            plan = {
                "host": redact(host), "auth": auth, "experiment": experiment, "run_name": run_name,
                "namespace": namespace, "service_account": service_account,
                "profile": args.profile, "parameters": arguments, "tasks": list(_leaf_tasks(spec)),
            }
            print(json.dumps(plan, indent=2))
            print("dry run: nothing was sent", file=sys.stderr)
            return 0
        _check_host(host, token, auth)

        import warnings

        import kfp
        import kfp_server_api
        import urllib3

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # "works with KFP 2.0.0-beta.2 and later"
                client = kfp.Client(host=host, existing_token=token)
            run = client.create_run_from_pipeline_package(
                str(package), arguments=arguments, run_name=run_name, experiment_name=experiment,
                namespace=namespace, service_account=service_account,
            )
            url = redact(f"{host}/#/runs/details/{run.run_id}")
            print(f"submitted {args.pipeline} ({preset}) as run {run.run_id!r} in experiment {experiment!r}")
            print(f"run: {url}", flush=True)
            if not args.wait:
                return 0
            return _wait(client, run.run_id, url, args.timeout, args.poll)
        except (kfp_server_api.ApiException, urllib3.exceptions.HTTPError) as e:
            raise _submit_error(host, e, auth, token) from None


def cmd_run(args: argparse.Namespace) -> int:
    from genalign.config.presets import load_preset
    from genalign.tracking import tracking_uri

    arguments = load_preset(args.pipeline, args.preset, args.set)
    uri = tracking_uri()
    resume = _resume(args, arguments)
    os.environ["MLFLOW_TRACKING_URI"] = uri  # every task of the local run logs to the same store
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # kfp.local runs the shards of a ParallelFor side by side; one thread each avoids
    # oversubscribing the cores (set OMP_NUM_THREADS to change it)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    root = Path(args.pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)

    from kfp import local

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    before = set(root.iterdir())
    started = time.time()
    pipeline = _pipeline_function(args.pipeline, None, arguments, resume)
    experiment = arguments["experiment"]
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        pipeline(**arguments)
    except (RuntimeError, KeyboardInterrupt) as e:
        killed = isinstance(e, KeyboardInterrupt)
        reason = _close_after_failure(experiment, started, "KILLED" if killed else "FAILED")
        _print_resume_hint(args, reason)
        if killed:
            print("genalign: the run was stopped", file=sys.stderr)
            return 130
        if reason is None or "stage" not in reason:
            raise
        print(redact(f"genalign: stage {reason['stage']} failed: {reason['error']}"), file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    new = sorted(set(root.iterdir()) - before, key=lambda p: p.stat().st_mtime)
    if not new:
        raise RuntimeError(f"the local run left nothing under {root}")
    run_dir = new[-1]
    print_run_summary(args.pipeline, run_dir, uri, time.time() - started)
    return 0


def _raise_interrupt(signum, frame) -> None:
    """SIGTERM ends a local run as Ctrl-C does, so that its MLflow runs are closed."""
    raise KeyboardInterrupt


def _close_after_failure(experiment: str, started: float, status: str) -> dict[str, str] | None:
    """After a local run failed or was stopped: close its MLflow parent run (and any stage
    run still open) with `status`, and return {run} plus {stage, error} of the stage that failed, if one did."""
    from genalign.tracking import ERROR_TAG, PIPELINE_RUN_TAG, STAGE_TAG, _client

    client = _client()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], filter_string=f"attributes.start_time >= {int(started * 1000)}",
                              order_by=["attributes.start_time ASC"], max_results=5000)
    parents = [r for r in runs if PIPELINE_RUN_TAG in r.data.tags]
    if not parents:
        return None
    parent = parents[0]
    failed = None
    for run in runs:
        if run.data.tags.get(PIPELINE_RUN_TAG + ".child") != parent.data.tags[PIPELINE_RUN_TAG]:
            continue
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status)
        if ERROR_TAG in run.data.tags and failed is None:
            failed = {"stage": run.data.tags.get(STAGE_TAG) or run.info.run_name, "error": run.data.tags[ERROR_TAG]}
    if parent.info.status == "RUNNING":
        client.set_terminated(parent.info.run_id, status)
    return {"run": parent.data.tags[PIPELINE_RUN_TAG], **(failed or {})}


def _resume(args: argparse.Namespace, arguments: dict[str, Any]) -> dict | None:
    """The resume plan of --resume-from (and --resume-iter for a pipeline with
    iterations), read from MLflow, which must be the store the earlier run logged to
    (MLFLOW_TRACKING_URI); None without --resume-from."""
    if args.resume_from is None:
        if args.resume_iter is not None:
            raise ConfigError("--resume-iter goes with --resume-from")
        return None
    from genalign.resume import resume_plan

    plan = resume_plan(args.pipeline, arguments["experiment"], args.resume_from, args.resume_iter)
    at = f" at iteration {args.resume_iter}" if args.resume_iter is not None else ""
    print(f"resuming run {args.resume_from}{at}; imported: {sorted(plan['uris'])}")
    return plan


def _print_resume_hint(args: argparse.Namespace, reason: dict[str, str] | None) -> None:
    """After a failed local run: its run id and the command that resumes it."""
    from genalign.config.pipelines import get_pipeline

    if not reason:
        return
    decl = get_pipeline(args.pipeline)
    command = f"genalign run {args.pipeline} --preset {args.preset} --resume-from {reason['run']}"
    if decl.iterations is not None:
        command += " --resume-iter k"
        print(f"genalign: pipeline run id {reason['run']}. Resume from the first unfinished iteration k with: "
              f"{command}", file=sys.stderr)
    else:
        print(f"genalign: pipeline run id {reason['run']}. Resume after its last finished stage with: {command}",
              file=sys.stderr)


def print_run_summary(pipeline: str, run_dir: Path, uri: str, seconds: float) -> None:
    """The before/after table, the registered version, where the report is, how to look."""
    from genalign.config.pipelines import get_pipeline

    decl = get_pipeline(pipeline)
    # An iterative pipeline has one report task per iteration; the last is cumulative.
    reports = sorted(run_dir.glob(f"{decl.report}*/report/report.json"), key=lambda p: p.stat().st_mtime)
    report = reports[-1].parent if reports else run_dir / decl.report / "report"
    registrations = sorted(run_dir.glob(f"{decl.register}*/registration/registration.json"))
    print()
    print(f"== {pipeline}: finished in {seconds / 60:.1f} min; artifacts under {run_dir}")
    if (report / "table.txt").is_file():
        print((report / "table.txt").read_text())
    if registrations:
        reg = json.loads(registrations[-1].read_text())
        aliases = ", ".join(reg.get("aliases", []))
        print(f"registered model: {reg['model_name']} version {reg['version']} (aliases: {aliases})")
        print(f"  load it:          model reference mlflow://models/{reg['model_name']}/{reg['version']}")
    print(f"evaluation report:  {report / 'report.json'}")
    print(f"                    {report / 'report.html'}")
    if uri.startswith("sqlite:///"):
        print(f"MLflow UI:          mlflow ui --backend-store-uri {uri}  (then open http://127.0.0.1:5000)")
    else:
        print(f"MLflow:             {redact(uri)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genalign", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a pipeline locally through kfp.local")
    p.add_argument("pipeline")
    p.add_argument("--preset", default="tiny", help="configs/<pipeline>/<preset>.yaml or a YAML path")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.beta=500")
    p.add_argument("--pipeline-root", default=".genalign/kfp", help="where kfp.local keeps artifacts")
    p.add_argument("--resume-from", metavar="RUN", help="the pipeline run id to continue (its finished stages are imported)")
    p.add_argument("--resume-iter", metavar="K", type=int,
                   help="with --resume-from: start at iteration K, importing iterations < K")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("compile", help="compile a pipeline to IR YAML")
    p.add_argument("pipeline")
    p.add_argument("--preset", default="tiny", help="preset whose values become the parameter defaults")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--profile", help="cluster profile YAML (secrets, volumes, GPUs, resources per task)")
    p.add_argument("-o", "--output", help="output file (default <pipeline>.yaml)")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser(
        "submit", help="compile a pipeline and start a run on Kubeflow Pipelines",
        description="Compiles the pipeline and starts a run with the kfp SDK. The token is taken "
        f"from ${TOKEN_ENV[0]} or ${TOKEN_ENV[1]}, else from the current kube config context, "
        "else none is sent.",
    )
    p.add_argument("pipeline")
    p.add_argument("--host", required=True, help="the pipelines API, e.g. https://kubeflow.example.com/pipeline")
    p.add_argument("--preset", required=True, help="configs/<pipeline>/<preset>.yaml or a YAML path")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.beta=500")
    p.add_argument("--profile", help="cluster profile YAML (secrets, volumes, GPUs, resources per task)")
    p.add_argument("--experiment", help="KFP experiment (default: the preset's experiment)")
    p.add_argument("--run-name", help="run name (default: '<pipeline> <preset> <time>')")
    p.add_argument("--namespace", help="namespace of the run (default: the profile's)")
    p.add_argument("--wait", action="store_true", help="wait for the run to end; exit 1 unless it succeeded")
    p.add_argument("--timeout", type=float, help="with --wait: give up waiting after this many seconds")
    p.add_argument("--poll", type=float, default=10.0, help="with --wait: seconds between status checks")
    p.add_argument("--dry-run", action="store_true", help="print what would be sent and send nothing")
    p.add_argument("--resume-from", metavar="RUN", help="the KFP run id to continue (its finished stages are imported)")
    p.add_argument("--resume-iter", metavar="K", type=int,
                   help="with --resume-from: start at iteration K, importing iterations < K")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("stage", help="run one stage on local paths or s3:// URIs", add_help=False,
                       description="Run one stage. `genalign stage NAME --help` lists its inputs, outputs, params "
                       "and config fields.")
    p.add_argument("name", nargs="?")
    p.add_argument("-h", "--help", action="store_true", help="the stage's inputs, outputs, params and config fields")
    p.add_argument("--config", help="YAML/JSON mapping of the stage's config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--in", dest="inputs", action="append", default=[], metavar="NAME=PATH")
    p.add_argument("--out", dest="outputs", action="append", default=[], metavar="NAME=PATH")
    p.add_argument("--param", dest="params", action="append", default=[], metavar="NAME=INT")
    p.add_argument("--experiment", default="genalign-stages", help="MLflow experiment (with --pipeline-run)")
    p.add_argument("--pipeline-run", help="log to MLflow as a child of this pipeline run id")
    p.add_argument("--tag", dest="tags", action="append", default=[], metavar="KEY=VALUE",
                   help="a tag of the stage's MLflow run (genalign.iteration=N names it as in a pipeline)")
    p.add_argument("--pipeline", default="cli", help="the pipeline tag of the stage's MLflow run (with --pipeline-run)")
    p.set_defaults(func=cmd_stage)

    p = sub.add_parser("stages", help="list the pipelines' stages with their inputs, outputs and params")
    p.set_defaults(func=cmd_stages)

    p = sub.add_parser("pipelines", help="list the pipelines' names, one a line")
    p.set_defaults(func=cmd_pipelines)
    return parser


def _input_errors() -> tuple[type[Exception], ...]:
    """Errors that are about the input (a config, a reference, an artifact, a row), each of
    whose messages names the file, line or field: said in one paragraph, exit code 2."""
    from genalign.config.refs import ModelRefError
    from genalign.records import RecordError
    from genalign.storage import ArtifactError

    return ConfigError, ModelRefError, ArtifactError, RecordError


def main(argv: list[str] | None = None) -> int:
    """Runs one command; an error that carries a secret (a tracking URI with a password, a
    token) is printed or raised with the secret masked (`genalign.secrets`)."""
    args = build_parser().parse_args(argv)
    with masked_errors():
        try:
            return args.func(args)
        except _input_errors() as e:
            print(f"genalign: error: {redact(str(e))}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())

"""The `genalign` command.

    genalign run part-dpo --preset tiny [--set train.beta=500 ...]   run a pipeline locally (kfp.local)
    genalign compile part-dpo [--preset tiny] [-o part-dpo.yaml]     IR YAML for the Kubeflow UI
    genalign stage score --config c.yaml --in samples=DIR --out scored=DIR   run one stage
    genalign stages                                                  list the stages
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from genalign.config.base import ConfigError


def _pipeline_function(name: str):
    from pipelines import PIPELINE_MODULES

    if name not in PIPELINE_MODULES:
        raise ConfigError(f"unknown pipeline {name!r}; valid pipelines: {sorted(PIPELINE_MODULES)}")
    module, _, attr = PIPELINE_MODULES[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def _pairs(items: list[str], flag: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"{flag} {item!r}: expected name=path")
        out.setdefault(key, []).append(value)
    return out


def cmd_stage(args: argparse.Namespace) -> int:
    import yaml

    from genalign.config.presets import parse_override
    from genalign.stages import run_stage, stage_spec

    spec = stage_spec(args.name)
    config: dict[str, Any] = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        config = yaml.safe_load(path.read_text()) or {}
        if not isinstance(config, dict):
            raise ConfigError(f"{path}: expected a mapping")
    for text in args.set:
        keys, value = parse_override(text)
        node = config
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    ins = _pairs(args.inputs, "--in")
    inputs = {k: (v if k in spec.list_inputs else v[-1]) for k, v in ins.items()}
    outputs = {k: v[-1] for k, v in _pairs(args.outputs, "--out").items()}
    params = {k: int(v[-1]) for k, v in _pairs(args.params, "--param").items()}
    tracking = None
    if args.pipeline_run:
        tracking = {"experiment": args.experiment, "pipeline_run": args.pipeline_run, "pipeline": "cli"}
    result = run_stage(args.name, config, inputs=inputs, outputs=outputs, params=params, tracking=tracking)
    print(json.dumps({"metrics": result.metrics, "summary": result.summary}, indent=2, default=str))
    return 0


def cmd_stages(args: argparse.Namespace) -> int:
    from genalign.stages import STAGES

    for name, spec in STAGES.items():
        ins = ", ".join(spec.inputs) or "-"
        print(f"{name:16s} in: {ins:28s} out: {', '.join(spec.outputs):34s} {spec.help}")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from kfp import compiler

    from genalign.config.presets import load_preset

    arguments = load_preset(args.pipeline, args.preset, args.set)
    out = Path(args.output or f"{args.pipeline}.yaml")
    compiler.Compiler().compile(_pipeline_function(args.pipeline), str(out), pipeline_parameters=arguments)
    print(f"wrote {out} (upload it in the Kubeflow Pipelines UI: Pipelines > Upload pipeline)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from genalign.config.presets import load_preset
    from genalign.tracking import tracking_uri

    arguments = load_preset(args.pipeline, args.preset, args.set)
    uri = tracking_uri()
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
    _pipeline_function(args.pipeline)(**arguments)
    new = sorted(set(root.iterdir()) - before, key=lambda p: p.stat().st_mtime)
    if not new:
        raise RuntimeError(f"the local run left nothing under {root}")
    run_dir = new[-1]
    print_run_summary(args.pipeline, run_dir, uri, time.time() - started)
    return 0


def print_run_summary(pipeline: str, run_dir: Path, uri: str, seconds: float) -> None:
    """The before/after table, the registered version, where the report is, how to look."""
    report = run_dir / "evaluate-parts" / "report"
    registration = run_dir / "register-adapter" / "registration" / "registration.json"
    print()
    print(f"== {pipeline}: finished in {seconds / 60:.1f} min; artifacts under {run_dir}")
    if (report / "table.txt").is_file():
        print((report / "table.txt").read_text())
    if registration.is_file():
        reg = json.loads(registration.read_text())
        aliases = ", ".join(reg.get("aliases", []))
        print(f"registered model: {reg['model_name']} version {reg['version']} (aliases: {aliases})")
        print(f"  load it:          model reference mlflow://models/{reg['model_name']}/{reg['version']}")
    print(f"evaluation report:  {report / 'report.json'}")
    print(f"                    {report / 'report.html'}")
    if uri.startswith("sqlite:///"):
        print(f"MLflow UI:          mlflow ui --backend-store-uri {uri}  (then open http://127.0.0.1:5000)")
    else:
        print(f"MLflow:             {uri}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genalign", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a pipeline locally through kfp.local")
    p.add_argument("pipeline")
    p.add_argument("--preset", default="tiny", help="configs/<pipeline>/<preset>.yaml or a YAML path")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.beta=500")
    p.add_argument("--pipeline-root", default=".genalign/kfp", help="where kfp.local keeps artifacts")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("compile", help="compile a pipeline to IR YAML")
    p.add_argument("pipeline")
    p.add_argument("--preset", default="tiny", help="preset whose values become the parameter defaults")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("-o", "--output", help="output file (default <pipeline>.yaml)")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("stage", help="run one stage on local paths")
    p.add_argument("name")
    p.add_argument("--config", help="YAML/JSON mapping of the stage's config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--in", dest="inputs", action="append", default=[], metavar="NAME=PATH")
    p.add_argument("--out", dest="outputs", action="append", default=[], metavar="NAME=PATH")
    p.add_argument("--param", dest="params", action="append", default=[], metavar="NAME=INT")
    p.add_argument("--experiment", default="genalign-stages", help="MLflow experiment (with --pipeline-run)")
    p.add_argument("--pipeline-run", help="log to MLflow as a child of this pipeline run id")
    p.set_defaults(func=cmd_stage)

    p = sub.add_parser("stages", help="list the stages")
    p.set_defaults(func=cmd_stages)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"genalign: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Pipeline stages: `run(cfg, *, <inputs>, <outputs>, <params>, tracker) -> StageResult` on local paths.

Each stage is reachable three ways: `genalign stage <name> ...` from a shell, a KFP
component in `components/`, and plain Python. `run_stage` is the one entry point the
first two share, and it owns everything around the stage's own work:

- the config is checked against its dataclass before any work;
- inputs and outputs may be local paths, `s3://` URIs (materialised in a scratch
  directory, outputs uploaded at the end) or KFP artifacts (their `.path` and `.uri`);
- reuse: an output already sealed with the same fingerprint (stage, config, params and
  the *content* of every input file) and untouched since is not recomputed; the stored
  result comes back with `reused=True` and the same metrics;
- every output is sealed when the stage returns: its manifest gets the sha256 of every
  payload file, the fingerprint and the stage's result;
- tracking: one MLflow child run per stage under the pipeline's parent, with the config
  as params, the metrics, and (once it succeeded) the stage name, iteration and output
  URIs that `--resume-from` reads back; a failure is tagged with its reason;
- secrets never leave it (`genalign.secrets`): the tracker masks what it logs, the failure
  reason is masked, and an error that carries a secret is raised with it masked;
- processes: a distributed stage (`Stage.distributed`) whose task has N > 1 GPUs
  (GENALIGN_PROCESSES, from the cluster profile) runs its `run()` in N torchrun workers on
  this node (`genalign.stages.worker`); under torchrun already (a TrainJob's pods)
  every rank runs it here, and only rank 0 tracks, seals and publishes outputs while the
  other ranks write to scratch directories that are dropped;
- `.NAME.*.tmp` directories that a killed stage left beside an output are removed.

The stage table is the pipelines' declaration (`genalign.config.pipelines.STAGES`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from genalign.config.base import ConfigError, flatten
from genalign.config.pipelines import STAGES, Stage, get_stage
from genalign.secrets import masked_errors, redact
from genalign.tracking import ERROR_TAG, ITERATION_TAG, OUTPUT_TAG, REUSED_TAG, SHARD_TAG, STAGE_TAG
from genalign.training.launch import stage_processes

__all__ = ["STAGES", "Stage", "StageResult", "get_stage", "run_stage"]


@dataclasses.dataclass
class StageResult:
    metrics: dict[str, float]
    summary: dict[str, Any]
    reused: bool = False


# Fault injection for recovery tests and drills: "<stage>" or "<stage>:<iteration>" makes
# that stage fail before it starts, as a crashed or stopped task would.
FAIL_ENV = "GENALIGN_FAIL_STAGE"


class InjectedFailure(RuntimeError):
    """The failure GENALIGN_FAIL_STAGE asked for."""


def _fail_if_asked(name: str, params: dict[str, Any], tags: dict[str, str]) -> None:
    want = os.environ.get(FAIL_ENV)
    if not want:
        return
    stage, _, iteration = want.partition(":")
    found = params.get("iteration", tags.get(ITERATION_TAG))
    if stage == name and (not iteration or str(found) == iteration):
        raise InjectedFailure(f"{FAIL_ENV}={want}: stage {name} fails on purpose")


def _rank() -> int:
    """This process's rank under torchrun (RANK), 0 otherwise."""
    return int(os.environ.get("RANK", "0"))


def _where(value: Any) -> tuple[str, str]:
    """(local path or URI, URI to record) of a path, an `s3://` URI or a KFP artifact."""
    if isinstance(value, (str, Path)):
        text = str(value)
        return text, text if "://" in text else str(Path(text).resolve())
    return value.path, value.uri  # a KFP artifact: its local path and its object-store URI


def _encode(result: StageResult) -> dict[str, Any]:
    """The result as strict JSON: a non-finite number is stored as its name ("nan",
    "inf"), which `float` reads back for the metrics."""
    def finite(obj: Any) -> Any:
        if isinstance(obj, float) and not math.isfinite(obj):
            return str(obj)
        if isinstance(obj, dict):
            return {str(k): finite(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [finite(v) for v in obj]
        return obj

    summary = finite(json.loads(json.dumps(result.summary, default=str)))
    return {"metrics": finite(dict(result.metrics)), "summary": summary}


def _decode(stored: dict[str, Any]) -> StageResult:
    return StageResult(metrics={k: float(v) for k, v in stored["metrics"].items()},
                       summary=stored["summary"], reused=True)


@masked_errors()
def run_stage(
    name: str,
    config: dict[str, Any],
    *,
    inputs: dict[str, Any],
    outputs: dict[str, Any],
    params: dict[str, Any] | None = None,
    tracking: dict[str, str] | None = None,
    metrics_output: Any = None,
    tags: dict[str, str] | None = None,
) -> StageResult:
    """Check, reuse or run, seal, track and publish one stage.

    `inputs` / `outputs`: name -> local path, `s3://` URI or KFP artifact (a list of
    them for a fan-in input). `tracking` = {experiment, pipeline_run, pipeline} opens an
    MLflow child run under the pipeline's parent; None logs nowhere. `metrics_output` (a
    KFP `Output[Metrics]`) receives the stage's metrics too; `tags` (iteration, shard)
    name the child run and are set on it."""
    from genalign import artifacts
    from genalign.tracking import MlflowTracker, NullTracker

    stage = get_stage(name)
    cfg = stage.config_class().from_dict(config, where=f"{name} config")
    params, tags = dict(params or {}), dict(tags or {})
    inputs = {k: v for k, v in inputs.items() if v is not None}
    stage.check_names(inputs, outputs, params)
    rank = _rank()

    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"genalign-{name}-")))
        local_in, uris_in = {}, {}
        for key, value in inputs.items():
            items = value if key in stage.fan_in else [value]
            if key in stage.fan_in and not isinstance(value, (list, tuple)):
                raise ConfigError(f"stage {name}: input {key} takes a list of artifacts")
            paths = []
            for i, item in enumerate(items):
                where, uri = _where(item)
                paths.append(artifacts.materialise(where, scratch / "in" / f"{key}-{i}"))
                uris_in.setdefault(key, []).append(uri)
            local_in[key] = paths if key in stage.fan_in else paths[0]
        local_out, uris_out, upload = {}, {}, {}
        for key, value in outputs.items():
            where, uri = _where(value)
            uris_out[key] = uri
            if rank != 0:  # only rank 0 publishes; the others' outputs are dropped
                local_out[key] = scratch / "rank-out" / key
            elif artifacts.is_remote(where):
                local_out[key] = scratch / "out" / key
                upload[key] = where
            else:
                local_out[key] = Path(where)
                artifacts.remove_stale_temporaries(local_out[key])
            if local_out[key].is_relative_to(scratch):  # a stage may stage its work beside its output
                local_out[key].parent.mkdir(parents=True, exist_ok=True)

        tracker = NullTracker()
        if tracking and rank == 0:
            suffix = [tags[ITERATION_TAG]] if ITERATION_TAG in tags else []
            suffix += [str(params[k]) for k in ("iteration", "phase", "shard", "subshard", "variant") if k in params]
            suffix += [tags[SHARD_TAG]] if SHARD_TAG in tags else []
            tracker = MlflowTracker.for_stage(
                experiment=tracking["experiment"],
                pipeline_run=tracking["pipeline_run"],
                stage=name + "".join(f"-{v}" for v in suffix),
                tags={"genalign.pipeline": tracking.get("pipeline", "")},
            )
        tracker.log_params(flatten(cfg.to_dict()))
        try:
            _fail_if_asked(name, params, tags)
            fingerprint = artifacts.fingerprint(name, _pinned(cfg.to_dict()), {**params, **_numerics(stage)}, local_in)
            # One of several torchrun processes recomputes (with the others) rather than
            # reuse alone: rank 0 returning early would leave the others waiting for it.
            several = int(os.environ.get("WORLD_SIZE", "1")) > 1
            stored = artifacts.sealed_result(local_out, fingerprint) if rank == 0 and not several else None
            if stored is not None:
                result = _decode(stored)
            else:
                kwargs: dict[str, Any] = {k: None for k in stage.optional}
                kwargs.update(local_in)
                kwargs.update(local_out)
                kwargs.update(params)
                processes = stage_processes(stage.distributed)
                if processes > 1:
                    result = _run_processes(stage, cfg, kwargs, params, processes, tracker, scratch)
                else:
                    result = importlib.import_module(stage.module).run(cfg, **kwargs, tracker=tracker)
                if rank == 0:
                    for path in local_out.values():
                        artifacts.seal(path, stage=name, fingerprint=fingerprint, result=_encode(result))
            for key, uri in upload.items():
                artifacts.publish(local_out[key], uri)
        except BaseException as e:
            if tracking and rank == 0:
                # masked before it is cut, so that no part of a secret is left
                tracker.set_tags({ERROR_TAG: redact(f"{type(e).__name__}: {e}")[:5000]})
                tracker.end("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
            raise
    tracker.log_metrics(result.metrics)
    if tracking and rank == 0:
        # What a later run resumes from (`genalign run ... --resume-from`): the stage, its
        # iteration and where its outputs are, recorded only once they are complete.
        done = {STAGE_TAG: name, REUSED_TAG: str(result.reused).lower(), **tags,
                **{f"{OUTPUT_TAG}{k}": v for k, v in uris_out.items()}}
        if "iteration" in params:
            done[ITERATION_TAG] = str(params["iteration"])
        tracker.set_tags(done)
        tracker.end("FINISHED")
    if metrics_output is not None:
        for key, value in result.metrics.items():
            metrics_output.log_metric(key, value)
    return result


def _run_processes(stage: Stage, cfg: Any, kwargs: dict[str, Any], params: dict[str, Any], processes: int,
                   tracker: Any, scratch: Path) -> StageResult:
    """The stage's `run()` in `processes` torchrun workers on this node
    (`genalign.stages.worker`); rank 0 writes the outputs and the result read back here."""
    from genalign.storage import atomic_write_json
    from genalign.training.launch import run_relayed, torchrun_command, worker_env

    def text(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [str(v) for v in value]
        return None if value is None else str(value)

    result_file = scratch / "worker-result.json"
    spec_file = scratch / "worker-spec.json"
    atomic_write_json(spec_file, {
        "stage": stage.name, "config": cfg.to_dict(),
        "paths": {k: text(v) for k, v in kwargs.items() if k not in params},
        "params": params, "result": str(result_file), "run_id": getattr(tracker, "run_id", None),
    })
    cmd = torchrun_command("genalign.stages.worker", ["--spec", str(spec_file)], processes)
    run_relayed(cmd, worker_env(), None, name=f"{stage.name} ({processes} processes)")
    stored = json.loads(result_file.read_text())
    return StageResult(metrics={k: float(v) for k, v in stored["metrics"].items()}, summary=stored["summary"])


def _numerics(stage: Stage) -> dict[str, Any]:
    """What else a training stage's outputs depend on: torch's thread count."""
    if not stage.numerics:
        return {}
    from genalign.training.numerics import numerics_key

    return {"numerics": numerics_key()}


def _pinned(config: Any) -> Any:
    """The config as the fingerprint sees it: an MLflow alias (`mlflow://models/m@champion`)
    is replaced by the version it names now, so outputs made from the old champion are not
    reused after the alias moved."""
    if isinstance(config, dict):
        return {k: _pinned(v) for k, v in config.items()}
    if isinstance(config, list):
        return [_pinned(v) for v in config]
    if isinstance(config, str) and config.startswith("mlflow://models/") and "@" in config:
        from genalign.models.refs import pin

        return pin(config)
    return config


def stage_help(name: str) -> str:
    """What `genalign stage <name> --help` prints: inputs, outputs, params, config fields."""
    stage = get_stage(name)
    cls = stage.config_class()
    lines = [f"genalign stage {name}: {stage.help}", "",
             f"    genalign stage {name} --config C.yaml "
             + " ".join(f"--in {k}=DIR" for k in stage.inputs) + " "
             + " ".join(f"--out {k}=DIR" for k in stage.outputs)
             + "".join(f" --param {k}=N" for k in stage.params), ""]
    lines.append("inputs:")
    for key, kind in stage.inputs.items():
        notes = [n for n, on in (("optional", key in stage.optional), ("several", key in stage.fan_in)) if on]
        lines.append(f"  {key:16s} {kind} artifact" + (f" ({', '.join(notes)})" if notes else ""))
    if not stage.inputs:
        lines.append("  (none)")
    lines.append("outputs:")
    lines += [f"  {key:16s} {kind} artifact" for key, kind in stage.outputs.items()]
    if stage.params:
        lines.append("params (integers, --param NAME=N):")
        lines += [f"  {key}" for key in stage.params]
    lines.append(f"config ({cls.__name__}; --config YAML/JSON, --set key=value):")
    lines += _field_help(cls, "  ")
    return "\n".join(lines)


def _field_help(cls: type, indent: str, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(cls):
        default = (f.default if f.default is not dataclasses.MISSING
                   else f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
        nested = dataclasses.is_dataclass(default)
        shown = "" if nested else f" [default: {default!r}]"
        out.append(f"{indent}{prefix}{f.name}: {f.metadata.get('help', '')}{shown}")
        if nested:
            out += _field_help(type(default), indent, prefix=f"{prefix}{f.name}.")
    return out

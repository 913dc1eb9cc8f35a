"""register: the adapter and its base as MLflow model versions a person can use elsewhere.

What the registry holds after this stage (`<name>` = `model_name`):

- the base. An adapter is only usable on its base, so the base is recorded as a reference
  that resolves on any machine: a `tiny://`, `hf://`, `s3://` or `mlflow://` reference
  stays as it is (an MLflow alias pinned to the version it names now); a directory made
  inside the run (the tiny preset's pretrained generator, the planner's warm start, a
  merged champion) is logged to this run as `base/` and registered as a version of
  `<name>-base`, one version per distinct content (tag `genalign.content_sha256`: an
  existing version with the same content is reused), and named
  `mlflow://models/<name>-base/<version>`.
- in this run: `adapter/` (the peft files + the model card, whose `base_model` is that
  reference), `model/` (an MLflow pyfunc model, `genalign.generators.pyfunc`, holding the
  same adapter directory as its artifact: it loads base + adapter and generates) and
  `evaluation/report.json`.
- a version of `<name>` whose tags name its lineage (base model, pairs, pipeline run,
  evaluation metrics) and whose description says what it is; the `candidate` aliases move
  to it, `champion` only when the evaluation gate passed (or `require_gate` is off).

The version's source is `model/`, the pyfunc model: `mlflow.pyfunc.load_model(
"models:/<name>@champion")` works only on a version whose source is an MLflow model, and
`genalign.models.refs.resolve("mlflow://models/<name>@champion")` reads the pyfunc
model's MLmodel metadata to return the adapter directory inside it (fetching the base
its card names), so both ways of loading work from one version. Registering the plain
`adapter/` folder instead would leave pyfunc loading broken; registering both would make
two versions of one model.

The pipelines give the stage the base model artifact (`model`), so a base made inside the
run is read from the artifact wherever the task runs; called without it, the base the
adapter's card names must be readable here, or the stage fails before registering
anything, naming the directory.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

from genalign.artifacts import (
    ADAPTER,
    PAIRS,
    REGISTRATION,
    REPORT,
    ModelCard,
    content_digest,
    link_or_copy,
    payload_hashes,
    read_model_card,
    write_model_card,
)
from genalign.config.register import RegisterModelConfig
from genalign.stages import StageResult
from genalign.storage import (
    MANIFEST,
    ArtifactError,
    atomic_dir,
    atomic_write_json,
    read_manifest,
    write_manifest,
)
from genalign.tracking import MlflowTracker, Tracker, register_model_version, registry_tracker

CONTENT_TAG = "genalign.content_sha256"


def run(cfg: RegisterModelConfig, *, adapter: Path, report: Path, pairs: Path, model: Path | None,
        registration: Path, tracker: Tracker) -> StageResult:
    from genalign.generators.pyfunc import save_pyfunc
    from genalign.models.refs import is_portable, pin

    read_manifest(adapter, ADAPTER)
    report_manifest = read_manifest(report, REPORT)
    pairs_manifest = read_manifest(pairs, PAIRS)
    card = read_model_card(adapter)
    if card.kind != "adapter":
        raise ArtifactError(f"{adapter}: model card kind {card.kind!r}; register-model registers an adapter")
    evaluation = json.loads((report / "report.json").read_text())
    gate = evaluation["comparison"]["gate"]
    # The base the adapter was trained on: the pipeline's model artifact when it is given
    # (a task on another node sees the artifact, not a path inside an earlier task).
    base_model = card.base_model if model is None or is_portable(card.base_model) else str(model)
    base, base_ref = _base(base_model, adapter)  # checked before anything is registered

    tracker, pipeline_run = registry_tracker(tracker)
    base_ref = _register_base(cfg, tracker, base) if base is not None else pin(base_ref)
    card = dataclasses.replace(card, base_model=base_ref)
    with tempfile.TemporaryDirectory(prefix="genalign-register-") as scratch:
        portable = _copy_payload(adapter, Path(scratch) / "adapter")
        write_model_card(portable, card)
        tracker.log_artifact(portable, "adapter")
        # the pyfunc model generates as the evaluation did (part-dpo: its steps and guidance)
        settings = {k: v for k, v in evaluation.get("config", {}).items() if k in ("steps", "guidance")}
        tracker.log_artifact(save_pyfunc(Path(scratch) / "model", portable, config=settings), "model")
    tracker.log_artifact(report / "report.json", "evaluation")
    tags = {
        "genalign.base_model": base_ref,
        "genalign.base_model_sha256": card.base_model_sha256,
        "genalign.method": card.method,
        "genalign.loss": card.loss,
        "genalign.adapter_type": card.adapter_type,
        "genalign.arch": card.arch,
        "genalign.pairs": str(pairs),
        "genalign.pairs_sha256": pairs_manifest["hashes"].get("pairs.jsonl", ""),
        "genalign.pairs_count": str(pairs_manifest["counts"].get("pairs", "")),
        "genalign.report_sha256": report_manifest["hashes"].get("report.json", ""),
        "genalign.pipeline_run": pipeline_run,
        "genalign.gate_passed": str(gate["passed"]).lower(),
    }
    if card.iteration is not None:  # iterative pipelines: the iteration that trained it
        tags["genalign.iteration"] = str(card.iteration)
    tags.update({k.replace("/", "."): f"{v:.6g}" for k, v in evaluation["metrics"].items()})
    aliases = list(cfg.aliases)
    if gate["passed"] or not cfg.require_gate:
        aliases.append(cfg.champion_alias)
    version = register_model_version(
        tracker, name=cfg.model_name, artifact_path="model", tags=tags, aliases=aliases,
        description=_description(card, pairs_manifest, gate, evaluation),
    )
    summary = {"model_name": cfg.model_name, "version": version, "aliases": aliases,
               "reference": f"mlflow://models/{cfg.model_name}/{version}", "base_model": base_ref,
               "run_id": tracker.run_id, "gate_passed": gate["passed"]}
    with atomic_dir(registration) as tmp:
        atomic_write_json(tmp / "registration.json", summary)
        write_manifest(tmp, kind=REGISTRATION, config=cfg.to_dict(),
                       inputs={"adapter": str(adapter), "report": str(report), "pairs": str(pairs)})
    return StageResult(metrics={"register/version": float(version)}, summary=summary)


def _base(base_model: str, adapter: Path) -> tuple[Path | None, str]:
    """(the base directory to register, None) when the adapter's base is a directory;
    (None, its reference) when it is a reference that resolves elsewhere (a directory
    holding a "ref" card counts as that reference)."""
    from genalign.models.refs import is_portable

    if is_portable(base_model):
        return None, base_model
    directory = Path(base_model)
    if not directory.is_dir():
        raise ArtifactError(
            f"{adapter}: its base model {base_model} is a directory that is not here, so it cannot be "
            "registered beside the adapter; run register-model where the run's artifacts are, or give "
            "prepare.base_model as a reference (tiny://, hf://, s3://, mlflow://)"
        )
    card = read_model_card(directory)
    if card.kind == "ref":
        return _base(card.ref, adapter)
    if card.kind == "adapter":
        raise ArtifactError(f"{adapter}: its base model {base_model} is an adapter; expected a model")
    return directory, base_model


def _register_base(cfg: RegisterModelConfig, tracker: MlflowTracker, directory: Path) -> str:
    """Register the base directory as a version of `<model_name>-base` (reused when one
    holds the same content) and return its `mlflow://models/<name>-base/<version>`."""
    name = f"{cfg.model_name}-base"
    digest = content_digest(directory)
    client = tracker.client
    same = [mv for mv in client.search_model_versions(f"name = '{name}'") if mv.tags.get(CONTENT_TAG) == digest]
    if same:
        version = str(min(int(mv.version) for mv in same))
    else:
        card = read_model_card(directory)
        with tempfile.TemporaryDirectory(prefix="genalign-register-") as scratch:
            tracker.log_artifact(_copy_payload(directory, Path(scratch) / "base"), "base")
        what = " ".join(w for w in (card.arch, card.method) if w) or "model"
        made_from = f", made from {card.base_model}" if card.base_model else ""
        version = register_model_version(
            tracker, name=name, artifact_path="base", aliases=[],
            tags={CONTENT_TAG: digest, "genalign.arch": card.arch, "genalign.method": card.method,
                  "genalign.base_model": card.base_model},
            description=f"base model of {cfg.model_name}: {what}{made_from} (content sha256 {digest})",
        )
    return f"mlflow://models/{name}/{version}"


def _copy_payload(directory: Path, out: Path) -> Path:
    """The files of an artifact without its manifest (which names this run's paths)."""
    for rel in payload_hashes(directory):
        if rel != MANIFEST:
            link_or_copy(directory / rel, out / rel)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _description(card: ModelCard, pairs_manifest: dict, gate: dict, evaluation: dict) -> str:
    """What a version is, in a line a person reads in the registry."""
    kind = " ".join(w for w in (card.method, card.adapter_type, "adapter") if w)
    loss = f" ({card.loss} loss)" if card.loss else ""
    pairs = pairs_manifest.get("counts", {}).get("pairs", card.pairs.get("trained", "?"))
    verdict = "passed" if gate["passed"] else "failed"
    shown = ", ".join(f"{k} {v:.4g}" for k, v in list(evaluation.get("metrics", {}).items())[:3])
    iteration = f", iteration {card.iteration}" if card.iteration is not None else ""
    return (f"{kind}{loss} over {card.base_model}; trained on {pairs} preference pairs{iteration}; "
            f"evaluation gate {verdict}" + (f" ({shown})" if shown else ""))

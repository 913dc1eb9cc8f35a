"""register: the adapter as an MLflow model version with lineage, and aliases.

Logs the adapter directory (peft files + genalign.json) and the evaluation report to the
stage's MLflow run, creates a version of the registered model whose tags name its
lineage (base model, pairs artifact, pipeline run, evaluation metrics), moves the
`candidate` alias to it, and `champion` only when the evaluation gate passed.

Load it back with the model reference `mlflow://models/<name>@<alias>`.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from genalign.config.register import RegisterModelConfig
from genalign.stages import StageResult
from genalign.storage import atomic_dir, atomic_write_json, read_manifest, write_manifest
from genalign.tracking import PIPELINE_RUN_TAG, MlflowTracker, Tracker, register_model_version


def run(cfg: RegisterModelConfig, *, adapter: Path, report: Path, pairs: Path, registration: Path,
        tracker: Tracker) -> StageResult:
    read_manifest(adapter, "adapter")
    report_manifest = read_manifest(report, "report")
    pairs_manifest = read_manifest(pairs, "pairs")
    meta = json.loads((adapter / "genalign.json").read_text())
    evaluation = json.loads((report / "report.json").read_text())
    gate = evaluation["comparison"]["gate"]

    if not isinstance(tracker, MlflowTracker):  # called from plain Python: a run of its own
        tracker = MlflowTracker.for_stage(experiment="genalign-register", pipeline_run=f"manual-{uuid.uuid4().hex[:8]}",
                                          stage="register")
    parent = tracker.client.get_run(tracker.parent_run_id) if tracker.parent_run_id else None
    pipeline_run = parent.data.tags.get(PIPELINE_RUN_TAG, "") if parent else ""
    tracker.log_artifact(adapter, "adapter")
    tracker.log_artifact(report / "report.json", "evaluation")
    tags = {
        "genalign.base_model": meta.get("base_model", ""),
        "genalign.base_model_sha256": meta.get("base_model_sha256", ""),
        "genalign.method": meta.get("method", ""),
        "genalign.loss": meta.get("loss", meta.get("loss_type", "")),
        "genalign.adapter_type": meta.get("adapter_type", ""),
        "genalign.pairs": str(pairs),
        "genalign.pairs_sha256": pairs_manifest["hashes"].get("pairs.jsonl", ""),
        "genalign.pairs_count": str(pairs_manifest["counts"].get("pairs", "")),
        "genalign.report_sha256": report_manifest["hashes"].get("report.json", ""),
        "genalign.pipeline_run": pipeline_run,
        "genalign.gate_passed": str(gate["passed"]).lower(),
    }
    if "iteration" in meta:  # iterative pipelines: the iteration that trained it
        tags["genalign.iteration"] = str(meta["iteration"])
    tags.update({k.replace("/", "."): f"{v:.6g}" for k, v in evaluation["metrics"].items()})
    aliases = list(cfg.aliases)
    if gate["passed"] or not cfg.require_gate:
        aliases.append(cfg.champion_alias)
    version = register_model_version(
        tracker, name=cfg.model_name, artifact_path="adapter", tags=tags, aliases=aliases,
        description=f"{meta.get('method', '')} adapter over {meta.get('base_model', '')}",
    )
    summary = {"model_name": cfg.model_name, "version": version, "aliases": aliases,
               "reference": f"mlflow://models/{cfg.model_name}/{version}", "run_id": tracker.run_id,
               "gate_passed": gate["passed"]}
    with atomic_dir(registration) as tmp:
        atomic_write_json(tmp / "registration.json", summary)
        write_manifest(tmp, kind="registration", config=cfg.to_dict(),
                       inputs={"adapter": str(adapter), "report": str(report), "pairs": str(pairs)})
    return StageResult(metrics={"register/version": float(version)}, summary=summary)

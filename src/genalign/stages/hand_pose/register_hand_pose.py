"""register-hand-pose: the final hand-pose model as an MLflow model version.

What the registry holds after this stage (`<name>` = `model_name`):

- in this run: `hand-pose/` (the EMA weights as `model.safetensors`, `config.json` and
  the model card `genalign.json`: the model the evaluation measured; with a LoRA/DoRA on
  the backbone, merged into those weights, its peft directory `backbone_adapter/` too),
  `model/` (an MLflow pyfunc model holding the same directory,
  `genalign.generators.pyfunc`: rows of {image, K} in, camera-frame joints in mm out)
  and `evaluation/report.json`;
- a version of `<name>` whose tags hold its lineage (dataset, setup, phases, pipeline run)
  and the held-out metrics (`eval.mpjpe`, ...), and whose description says what it is.
  The `candidate` aliases move to it; `champion` moves only when the evaluation gate
  passed (or `require_gate` is off) and its held-out MPJPE is lower than the current
  champion's (read from that version's `eval.mpjpe` tag) — a champion evaluated on
  another split setup is compared all the same, so keep one registered name per setup.

`genalign.models.refs.resolve("mlflow://models/<name>@champion")` returns the model
directory, and `mlflow.pyfunc.load_model("models:/<name>@champion")` predicts.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from genalign.artifacts import (
    MODEL,
    REGISTRATION,
    REPORT,
    ModelCard,
    read_model_card,
    write_model_card,
)
from genalign.config.hand_pose import RegisterHandPoseConfig
from genalign.stages import StageResult
from genalign.storage import (
    ArtifactError,
    atomic_dir,
    atomic_write_json,
    read_manifest,
    write_manifest,
)
from genalign.tracking import MlflowTracker, Tracker, register_model_version, registry_tracker

MPJPE_TAG = "eval.mpjpe"


def run(cfg: RegisterHandPoseConfig, *, model: Path, report: Path, registration: Path,
        tracker: Tracker) -> StageResult:
    from genalign.generators.pyfunc import save_pyfunc
    from genalign.trainers.hand_pose import ADAPTER_DIR, EMA_FILE

    model_manifest = read_manifest(model, MODEL)
    report_manifest = read_manifest(report, REPORT)
    card = read_model_card(model)
    if card.arch != "hand-pose":
        raise ArtifactError(f"{model}: model card arch {card.arch!r}; register-hand-pose registers a hand-pose model")
    evaluation = json.loads((report / "report.json").read_text())
    gate = evaluation["comparison"]["gate"]
    mpjpe = float(evaluation["metrics"]["eval/mpjpe"])

    tracker, pipeline_run = registry_tracker(tracker)
    champion = _champion_mpjpe(tracker, cfg)
    beats = champion is None or mpjpe < champion
    with tempfile.TemporaryDirectory(prefix="genalign-register-") as scratch:
        portable = Path(scratch) / "hand-pose"
        portable.mkdir()
        # the registered weights are the EMA ones: what the evaluation measured
        shutil.copy2(model / EMA_FILE, portable / "model.safetensors")
        shutil.copy2(model / "config.json", portable / "config.json")
        if (model / ADAPTER_DIR).is_dir():  # the last phase's adapter, as trained (merged in above)
            shutil.copytree(model / ADAPTER_DIR, portable / ADAPTER_DIR)
        write_model_card(portable, ModelCard(
            kind="model", method=card.method, arch=card.arch, base_model=card.base_model, config=card.config,
            metrics={k.removeprefix("eval/"): float(v) for k, v in evaluation["metrics"].items()},
            extra={**card.extra, "weights": "ema"},
        ))
        tracker.log_artifact(portable, "hand-pose")
        tracker.log_artifact(save_pyfunc(Path(scratch) / "model", portable), "model")
    tracker.log_artifact(report / "report.json", "evaluation")
    tags = {
        "genalign.method": card.method,
        "genalign.arch": card.arch,
        "genalign.backbone": card.base_model,
        "genalign.phases": ",".join(card.extra.get("phases", [])),
        "genalign.dataset": str(model_manifest["inputs"].get("dataset", "")),
        "genalign.report_sha256": report_manifest["hashes"].get("report.json", ""),
        "genalign.pipeline_run": pipeline_run,
        "genalign.gate_passed": str(gate["passed"]).lower(),
        "genalign.split": str(evaluation.get("split", "")),
    }
    tags.update({k.replace("/", "."): f"{v:.6g}" for k, v in evaluation["metrics"].items()})
    aliases = list(cfg.aliases)
    if (gate["passed"] or not cfg.require_gate) and beats:
        aliases.append(cfg.champion_alias)
    shown = ", ".join(f"{k} {evaluation['metrics'][f'eval/{k}']:.4g}"
                      for k in ("mpjpe", "pa_mpjpe", "auc_0_50mm") if f"eval/{k}" in evaluation["metrics"])
    version = register_model_version(
        tracker, name=cfg.model_name, artifact_path="model", tags=tags, aliases=aliases,
        description=(f"hand-pose transformer ({card.base_model} backbone, EMA weights) after phases "
                     f"{', '.join(card.extra.get('phases', []))}; held-out {evaluation.get('split', '')}: {shown} "
                     f"(mm); evaluation gate {'passed' if gate['passed'] else 'failed'}"),
    )
    summary = {"model_name": cfg.model_name, "version": version, "aliases": aliases,
               "reference": f"mlflow://models/{cfg.model_name}/{version}", "run_id": tracker.run_id,
               "gate_passed": gate["passed"], "mpjpe": mpjpe, "previous_champion_mpjpe": champion}
    with atomic_dir(registration) as tmp:
        atomic_write_json(tmp / "registration.json", summary)
        write_manifest(tmp, kind=REGISTRATION, config=cfg.to_dict(),
                       inputs={"model": str(model), "report": str(report)})
    return StageResult(metrics={"register/version": float(version)}, summary=summary)


def _champion_mpjpe(tracker: MlflowTracker, cfg: RegisterHandPoseConfig) -> float | None:
    """The held-out MPJPE of the version the champion alias names now; None when there is none."""
    from mlflow.exceptions import MlflowException

    try:
        version = tracker.client.get_model_version_by_alias(cfg.model_name, cfg.champion_alias)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    if MPJPE_TAG not in version.tags:
        raise ArtifactError(f"models:/{cfg.model_name}@{cfg.champion_alias} (version {version.version}) has no "
                            f"{MPJPE_TAG} tag, so it cannot be compared; move the alias to a hand-pose version")
    return float(version.tags[MPJPE_TAG])

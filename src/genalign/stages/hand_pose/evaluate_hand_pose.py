"""evaluate-hand-pose: one phase's model on the held-out split, appended to the run's history.

The model of phase `phase` is evaluated twice, with its EMA weights (the model the
pipeline registers) and its raw weights, on the dataset artifact's held-out split, with
the DexYCB evaluator's metrics (`genalign.evaluation.hand_pose`, all in millimetres):
root-relative MPJPE, absolute MPJPE, PA-MPJPE (similarity Procrustes), 2D PCK at 5 px,
and the area under the 3D PCK curve over 0-50 mm, per joint and per finger too.

The baseline every phase is gated against predicts the training split's mean
root-relative pose for every crop (placed at the true wrist, for the absolute and 2D
numbers): a model that does not beat it by `max_baseline_ratio` has not learned hands.
The gate also asks that the held-out MPJPE fell after every phase so far.

    report/
      report.json   {phase, history: [{phase, name, ema: {...}, raw: {...}}], baseline, metrics,
                     comparison: {base: baseline, tuned: EMA model, gate}}
      dexycb_results.txt   the EMA model's camera-frame joints in mm, in the toolkit's format
      phases.png  joints.png  gallery.png  table.txt  report.md  report.html
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np

from genalign.artifacts import DATASET, MODEL, REPORT
from genalign.config.hand_pose import EvaluateHandPoseConfig
from genalign.evaluation.contract import MetricSpec, Section, gate, write_report
from genalign.evaluation.report import fixed_width_table, save_figure
from genalign.stages import StageResult
from genalign.storage import atomic_dir, read_manifest, write_manifest
from genalign.tracking import Tracker

HEADLINE = ("mpjpe", "pa_mpjpe", "mpjpe_absolute", "pck_5px", "auc_0_50mm")
RESULTS_FILE = "dexycb_results.txt"


def metric_specs(cfg: EvaluateHandPoseConfig) -> list[MetricSpec]:
    return [
        MetricSpec("mpjpe", "target", "lower", help="root-relative MPJPE, mm"),
        MetricSpec("pa_mpjpe", "target", "lower", help="Procrustes-aligned MPJPE, mm"),
        MetricSpec("pck_5px", "target", "higher", help="share of 2D joints within 5 px"),
        MetricSpec("auc_0_50mm", "target", "higher", help="area under the 3D PCK curve, 0-50 mm"),
        MetricSpec("mpjpe_absolute", "info", None, help="camera-frame MPJPE, mm"),
        # base 1 (the baseline itself), tuned = MPJPE / baseline MPJPE; it must fall by
        # at least 1 - max_baseline_ratio
        MetricSpec("baseline_ratio", "target", "lower", min_improvement=1.0 - cfg.max_baseline_ratio,
                   help=f"MPJPE as a share of the mean-pose baseline's (at most {cfg.max_baseline_ratio})"),
        MetricSpec("phases_improved", "target", "higher",
                   help="1 when the held-out MPJPE fell after every phase so far (the first vs the baseline)"),
    ]


def predict(model: Any, data: dict, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Camera-frame joints (mm) and crop-pixel joints of every crop, in eval mode."""
    import torch

    cams, pxs = [], []
    with torch.no_grad():
        for at in range(0, int(data["images"].shape[0]), batch_size):
            images = data["images"][at:at + batch_size].float() / 255.0
            out = model(images, data["K"][at:at + batch_size].float())
            cams.append(out.joints_cam.double().numpy())
            pxs.append(out.joints2d.double().numpy())
    return np.concatenate(cams), np.concatenate(pxs)


def _project(joints_mm: np.ndarray, K: np.ndarray) -> np.ndarray:
    uvw = np.einsum("nij,nkj->nki", K, joints_mm)
    return uvw[..., :2] / np.maximum(uvw[..., 2:], 1.0)


def run(cfg: EvaluateHandPoseConfig, *, dataset: Path, model: Path, history: Path | None, report: Path,
        phase: int, tracker: Tracker) -> StageResult:
    from safetensors.torch import load_file

    from genalign.data.dexycb import unmirror_joints
    from genalign.data.hand_skeleton import FINGERS
    from genalign.evaluation.hand_pose import hand_pose_metrics, write_dexycb_results
    from genalign.trainers.hand_pose import load_phase_model

    read_manifest(dataset, DATASET)
    manifest = read_manifest(model, MODEL)
    previous = _history(history)
    info = json.loads((dataset / "dataset.json").read_text())
    data = load_file(str(dataset / f"{cfg.split}.safetensors"))
    gt_cam = data["joints3d"].double().numpy() * 1000.0  # metres -> mm
    gt_px = data["joints2d"].double().numpy()
    K = data["K"].double().numpy()

    results: dict[str, dict] = {}
    predictions: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for weights in ("ema", "raw"):
        net, _ = load_phase_model(model, weights=weights)
        predictions[weights] = predict(net, data, cfg.batch_size)
        results[weights] = hand_pose_metrics(*predictions[weights][:1], gt_cam, predictions[weights][1], gt_px,
                                             FINGERS)
    mean_pose = np.asarray(info["mean_pose_mm"], dtype=np.float64)
    base_cam = gt_cam[:, :1] + mean_pose[None]
    baseline = hand_pose_metrics(base_cam, gt_cam, _project(base_cam, K), gt_px, FINGERS)

    name = manifest.get("phase_name", str(phase))
    entry = {"phase": phase, "name": name, "ema": _scalars(results["ema"]), "raw": _scalars(results["raw"])}
    rows = [h for h in previous if h["phase"] < phase] + [entry]
    mpjpes = [baseline["mpjpe"]] + [h["ema"]["mpjpe"] for h in rows]
    improved = float(all(b < a for a, b in itertools.pairwise(mpjpes)))
    tuned = {**_scalars(results["ema"]), "baseline_ratio": results["ema"]["mpjpe"] / baseline["mpjpe"],
             "phases_improved": improved}
    base = {**_scalars(baseline), "baseline_ratio": 1.0, "phases_improved": 0.0}
    specs = metric_specs(cfg)
    decision = gate(specs, base, tuned)

    with atomic_dir(report) as tmp:
        import torch

        cam = unmirror_joints(torch.from_numpy(predictions["ema"][0]), data["mirrored"]).numpy()
        write_dexycb_results(tmp / RESULTS_FILE, data["index"].numpy(), cam)
        images = _plots(tmp, rows, baseline, results["ema"], data, predictions["ema"][1], cfg.gallery)
        extra = {"eval/baseline_mpjpe": baseline["mpjpe"], "eval/phase": float(phase),
                 **{f"eval/raw_{k}": results["raw"][k] for k in HEADLINE},
                 "eval/pck_rising": float(rows[-1]["ema"]["pck_5px"] > rows[0]["ema"]["pck_5px"])
                 if len(rows) > 1 else float(rows[-1]["ema"]["pck_5px"] > baseline["pck_5px"])}
        metrics = write_report(
            tmp, title=f"hand-pose: phase {phase} ({name}) on the held-out {cfg.split} split", specs=specs,
            gate=decision, images=images, metrics=extra, sections=_sections(rows, baseline, results["ema"]),
            notes=[(f"base = the mean-pose baseline (the training split's mean root-relative pose at the true "
                    f"wrist); tuned = the EMA model after phase {phase}. All lengths in mm."),
                   (f"{len(gt_cam)} held-out crops ({info['setup']} {cfg.split}); skipped frames: "
                    f"{info['skipped'].get(cfg.split, {})}.")],
            data={"phase": phase, "history": rows, "baseline": _scalars(baseline),
                  "per_joint": {"ema": results["ema"]["per_joint"], "raw": results["raw"]["per_joint"],
                                "baseline": baseline["per_joint"]},
                  "per_finger": {"ema": results["ema"]["per_finger"], "raw": results["raw"]["per_finger"],
                                 "baseline": baseline["per_finger"]},
                  "config": cfg.to_dict(), "split": cfg.split, "crops": len(gt_cam)},
        )
        write_manifest(tmp, kind=REPORT, config=cfg.to_dict(),
                       inputs={"dataset": str(dataset), "model": str(model)}, hash_files=["report.json"],
                       extra={"phase": phase})
    for file in images.values():
        tracker.log_artifact(report / file, "plots")
    print((report / "table.txt").read_text())
    return StageResult(metrics=metrics, summary={"phase": phase, "gate_passed": decision.passed,
                                                 "mpjpe": tuned["mpjpe"], "baseline_mpjpe": baseline["mpjpe"]})


def _history(history: Path | None) -> list[dict]:
    if history is None:
        return []
    read_manifest(history, REPORT)
    return json.loads((history / "report.json").read_text())["history"]


def _scalars(metrics: dict) -> dict[str, float]:
    return {k: float(metrics[k]) for k in HEADLINE}


def _sections(rows: list[dict], baseline: dict, final: dict) -> list[Section]:
    header = ["phase", "MPJPE", "PA-MPJPE", "abs MPJPE", "PCK@5px", "AUC 0-50", "raw MPJPE"]
    cells = [["baseline", *(f"{baseline[k]:.4g}" for k in HEADLINE[:5]), "-"]]
    for h in rows:
        e = h["ema"]
        cells.append([f"{h['phase']} {h['name']}", f"{e['mpjpe']:.4g}", f"{e['pa_mpjpe']:.4g}",
                      f"{e['mpjpe_absolute']:.4g}", f"{e['pck_5px']:.4g}", f"{e['auc_0_50mm']:.4g}",
                      f"{h['raw']['mpjpe']:.4g}"])
    phases = fixed_width_table(header, cells)
    fingers = fixed_width_table(["finger", "baseline mm", "model mm"], [
        [f, f"{baseline['per_finger'][f]:.4g}", f"{final['per_finger'][f]:.4g}"] for f in final["per_finger"]])
    return [Section("Per phase (EMA weights; MPJPE in mm)", markdown=f"```\n{phases}\n```", text=phases),
            Section("Per finger (root-relative, mm)", markdown=f"```\n{fingers}\n```", text=fingers)]


def _plots(out: Path, rows: list[dict], baseline: dict, final: dict, data: dict, pred_px: np.ndarray,
           gallery: int) -> dict[str, str]:
    from genalign.data.hand_skeleton import BONES, JOINT_NAMES
    from genalign.evaluation.report import _new_figure

    fig = _new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    x = [h["phase"] for h in rows]
    for key, label in (("mpjpe", "MPJPE"), ("pa_mpjpe", "PA-MPJPE")):
        ax.plot(x, [h["ema"][key] for h in rows], marker="o", label=f"{label} (EMA)")
        ax.plot(x, [h["raw"][key] for h in rows], marker="x", linestyle=":", label=f"{label} (raw)")
    ax.axhline(baseline["mpjpe"], color="grey", linestyle="--", label="mean-pose baseline MPJPE")
    ax.set_xticks(x, [f"{h['phase']} {h['name']}" for h in rows])
    ax.set_ylabel("mm")
    ax.set_title("held-out error after each phase")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "phases.png")

    fig = _new_figure(8.0, 3.5)
    ax = fig.add_subplot()
    idx = np.arange(len(JOINT_NAMES))
    ax.bar(idx - 0.2, baseline["per_joint"], width=0.4, label="baseline", color="#bbbbbb")
    ax.bar(idx + 0.2, final["per_joint"], width=0.4, label="model (EMA)")
    ax.set_xticks(idx, JOINT_NAMES, rotation=90, fontsize=7)
    ax.set_ylabel("root-relative error, mm")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, out / "joints.png")
    images = {"held-out error per phase": "phases.png", "error per joint": "joints.png"}

    if gallery:
        fig = _new_figure(2.2 * gallery, 2.4)
        n = int(data["images"].shape[0])
        for i, row in enumerate(np.linspace(0, n - 1, num=min(gallery, n)).astype(int)):
            ax = fig.add_subplot(1, gallery, i + 1)
            ax.imshow(data["images"][row].permute(1, 2, 0).numpy())
            for joints, color in ((data["joints2d"][row].numpy(), "#2ca02c"), (pred_px[row], "#d62728")):
                for a, b in BONES:
                    ax.plot(joints[[a, b], 0], joints[[a, b], 1], color=color, linewidth=1)
            ax.set_title(f"crop {row}", fontsize=8)
            ax.axis("off")
        fig.suptitle("green: true, red: predicted", fontsize=8)
        fig.tight_layout()
        save_figure(fig, out / "gallery.png")
        images["held-out crops"] = "gallery.png"
    return images

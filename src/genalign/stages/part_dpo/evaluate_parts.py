"""evaluate-parts: base vs tuned generator on held-out conditions, the same seeds for both.

For each held-out condition and seed, both models sample; the decoded objects are
scored for penetration and compared with the ground truth (the reward-hacking guard:
the easiest way to stop penetrating is to shrink or scatter parts, which volume IoU,
Chamfer distance and the volume ratio expose). `metric_specs` says what each number
means to the shared gate (genalign.evaluation.contract): it passes when mean penetration
goes down and the guard holds within `guard_tolerance` of the base.

The report directory holds report.json, table.txt, PNG plots, a gallery, report.md and
a self-contained report.html (shown in the Kubeflow UI).
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import fmean

from genalign.artifacts import REPORT
from genalign.config.part_dpo import EvaluatePartsConfig
from genalign.evaluation.contract import Gate, MetricSpec, gate, write_report
from genalign.records import Condition
from genalign.stages import StageResult
from genalign.storage import atomic_dir, write_manifest
from genalign.tracking import Tracker


def metric_specs(cfg: EvaluatePartsConfig) -> list[MetricSpec]:
    """The metrics of `compare`, in table order, as the gate and the report read them.

    The gate: mean penetration goes down, and volume IoU, Chamfer distance and the volume
    ratio stay within `guard_tolerance` of the base (a fraction of the base value; the
    volume ratio may move toward 1 freely). The penetrating share and the part-count
    match are checked and shown but do not decide it.
    """
    tol = cfg.guard_tolerance
    guard = {"tolerance": tol, "relative": True}
    return [
        MetricSpec("penetration_mean", "target", "lower", help="mean over objects of the penetration score"),
        MetricSpec("penetration_max", "info", "lower", help="the worst object's penetration score"),
        MetricSpec("penetrating_share", "target", "lower", gated=False,
                   help=f"share of objects whose penetration exceeds {cfg.threshold}"),
        MetricSpec("volume_iou", "guard", "higher", **guard, help="occupancy IoU with the ground-truth object"),
        MetricSpec("chamfer", "guard", "lower", **guard, help="symmetric Chamfer distance to the ground truth"),
        MetricSpec("volume_ratio", "guard", "closer", reference=1.0, **guard,
                   help="total part volume / ground-truth volume: shrunk parts fall below 1"),
        MetricSpec("part_count_match", "guard", "higher", gated=False, **guard,
                   help="share of objects with as many parts as their ground truth"),
        MetricSpec("penetration_ratio", "info", "lower", help="tuned / base mean penetration"),
        MetricSpec("win_rate", "info", "higher",
                   help="share of same-seed samples where the tuned object penetrates less (ties count half)"),
    ]


def measure(gen, conditions: list[Condition], cond_dir: Path, cfg: EvaluatePartsConfig, out: Path | None = None,
            tag: str = "") -> list[dict]:
    """Sample, decode, score and compare one generator on `conditions`; one row per sample."""
    from genalign.config.score import PenetrationConfig
    from genalign.data.parts import object_from_dict
    from genalign.evaluation.geometry import guard_metrics
    from genalign.generators.parts import generate
    from genalign.models.part_codec import decode_parts, part_mesh, save_glb
    from genalign.scorers.penetration import score_object

    results, _ = generate(
        gen, conditions, cond_dir, k=cfg.samples_per_condition, seed=cfg.seed, steps=cfg.steps,
        guidance=cfg.guidance, batch_size=cfg.batch_size, adapter_tag=f" ({tag})" if tag else "",
    )
    score_cfg = PenetrationConfig(workers=1)
    rows = []
    for c, k, seed, latent in results:
        gt = object_from_dict(json.loads((cond_dir / c.meta["gt"]).read_text()))
        gt_meshes = [part_mesh(p) for p in gt.parts]
        parts = decode_parts(latent.numpy())
        meshes = [part_mesh(p) for p in parts]
        if out is not None:
            save_glb(meshes, out / "samples" / tag / f"{c.id}-k{k}.glb")
        pen = score_object(meshes, score_cfg)
        guard = guard_metrics(meshes, gt_meshes, resolution=cfg.voxel_resolution, seed=seed % 1000)
        rows.append({
            "cond_id": c.id, "k": k, "seed": seed, "category": c.class_, "penetration": pen.score,
            "penetration_mean_pairs": pen.detail["penetration_mean"], **guard,
            "parts": [p.to_dict() for p in parts],
        })
    return rows


def summarize(rows: list[dict], threshold: float) -> dict[str, float]:
    pen = [r["penetration"] for r in rows]
    return {
        "penetration_mean": fmean(pen),
        "penetration_max": max(pen),
        "penetrating_share": sum(p > threshold for p in pen) / len(pen),
        "volume_iou": fmean(r["volume_iou"] for r in rows),
        "chamfer": fmean(r["chamfer"] for r in rows),
        "volume_ratio": fmean(r["volume_ratio"] for r in rows),
        "part_count_match": fmean(float(r["part_count"] == r["part_count_gt"]) for r in rows),
    }


def compare(base_rows: list[dict], tuned_rows: list[dict], cfg: EvaluatePartsConfig) -> tuple[dict, dict]:
    """Metrics of both models; the tuned model's add its win rate and penetration ratio over the base."""
    base, tuned = summarize(base_rows, cfg.threshold), summarize(tuned_rows, cfg.threshold)
    wins = [
        1.0 if t["penetration"] < b["penetration"] else 0.5 if t["penetration"] == b["penetration"] else 0.0
        for b, t in zip(base_rows, tuned_rows, strict=True)
    ]
    ratio = tuned["penetration_mean"] / base["penetration_mean"] if base["penetration_mean"] > 0 else float("inf")
    return base, {**tuned, "penetration_ratio": ratio, "win_rate": fmean(wins)}


def run(cfg: EvaluatePartsConfig, *, model: Path, adapter: Path, conditions: Path, report: Path,
        tracker: Tracker) -> StageResult:
    from genalign.artifacts import read_conditions
    from genalign.generators.parts import load_generator
    from genalign.models.refs import model_dir
    from genalign.trainers.flow_dpo import check_adapter_base

    conds = read_conditions(conditions)
    check_adapter_base(adapter, model_dir(model) / "dit")  # the model artifact may be a reference

    with atomic_dir(report) as tmp:
        base_rows = measure(load_generator(model), conds, conditions, cfg, tmp, "base")
        tuned_rows = measure(load_generator(model, adapter_dir=adapter), conds, conditions, cfg, tmp, "tuned")
        specs = metric_specs(cfg)
        decision = gate(specs, *compare(base_rows, tuned_rows, cfg))
        metrics = _write_report(tmp, cfg, specs, decision, base_rows, tuned_rows, tracker)
        write_manifest(tmp, kind=REPORT, config=cfg.to_dict(),
                       inputs={"model": str(model), "adapter": str(adapter), "conditions": str(conditions)},
                       counts={"conditions": len(conds), "samples": len(base_rows)},
                       hash_files=["report.json"])
    tracker.log_artifact(report, "report")
    return StageResult(metrics=metrics, summary={"html": str(report / "report.html"), "markdown": str(report / "report.md"),
                                                 **decision.to_dict()})


def _write_report(out: Path, cfg, specs: list[MetricSpec], decision: Gate, base_rows, tuned_rows,
                  tracker: Tracker) -> dict[str, float]:
    from genalign.evaluation.report import (
        histogram_figure,
        paired_scatter_figure,
        render_gallery,
        save_figure,
    )
    from genalign.models.part_codec import PartParams

    figures = {
        "penetration_hist.png": histogram_figure(
            [r["penetration"] for r in base_rows], [r["penetration"] for r in tuned_rows],
            title="Penetration per object (held-out)", xlabel="max pairwise overlap / smaller part volume"),
        "penetration_paired.png": paired_scatter_figure(
            [r["penetration"] for r in base_rows], [r["penetration"] for r in tuned_rows],
            title="Same seed: base vs tuned penetration"),
        "volume_iou_hist.png": histogram_figure(
            [r["volume_iou"] for r in base_rows], [r["volume_iou"] for r in tuned_rows],
            title="Guard: volume IoU to ground truth", xlabel="volume IoU"),
    }
    for name, fig in figures.items():
        save_figure(fig, out / name)
        tracker.log_figure(fig, f"plots/{name}")
    n = min(cfg.gallery, len(base_rows))
    objects = [[PartParams.from_dict(p) for p in r["parts"]] for pair in zip(base_rows[:n], tuned_rows[:n]) for r in pair]
    labels = [f"{tag} {r['penetration']:.2f}"
              for pair in zip(base_rows[:n], tuned_rows[:n]) for r, tag in zip(pair, ("base", "tuned"))]
    render_gallery(objects, labels, out / "gallery.png", columns=4)
    images = {"penetration": "penetration_hist.png", "paired": "penetration_paired.png",
              "guard": "volume_iou_hist.png", "gallery (base | tuned)": "gallery.png"}
    return write_report(
        out, title="part-dpo evaluation: base vs tuned on held-out conditions", specs=specs, gate=decision,
        images=images, notes=[f"{len(base_rows)} held-out samples, seeds shared by base and tuned"],
        data={"config": cfg.to_dict(), "samples": {"base": base_rows, "tuned": tuned_rows}},
    )

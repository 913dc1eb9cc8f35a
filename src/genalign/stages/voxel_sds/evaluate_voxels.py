"""evaluate-voxels: the optimised world against the start and the control run.

Three worlds, seen from the held-out views only: the start (the prepared map), the
world optimised for the prompt (`map`) and the one optimised for the control prompt
(`control`). For each:

- prompt-class evidence the optimisation never saw: `genalign.data.voxel_scenes.
  class_scores`, a nearest-prototype classifier over shape features and material
  shares of the map itself (for prompts that are procedural classes), and the distance
  of the material histogram to the prompted class's;
- the prior's own denoising loss on the held-out renders, under every class prompt,
  with the same (timestep, noise) draws for every world and prompt: lower is what the
  prior finds more likely, and the prompt with the lowest loss is the prior's reading of
  the world (this is close to what SDS optimised, so it is shown, not gated on);
- validity: blocks within the grid, the share of floating blocks, the block count.

`metrics/eval/prompted_class_wins` is 1 when the prompted class ranks first among the
classes for the optimised world and scores higher there than for the control run's
world, else 0. The gate (base = start, tuned = the optimised world) asks the prompted
class's score to rise, the histogram distance to fall, and the floating share to stay
within `max_floating_share`.

    report/
      report.json  report.md  report.html  table.txt
      gallery.png           held-out views, one column each; rows: start, prompted, control
      trajectory.png        class scores of both runs over the optimisation steps
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from genalign.artifacts import DATASET, MODEL, REPORT
from genalign.config.voxel_sds import EvaluateVoxelsConfig
from genalign.evaluation.contract import MetricSpec, Section, gate, write_report
from genalign.evaluation.report import fixed_width_table, save_figure
from genalign.stages import StageResult
from genalign.storage import atomic_dir, read_manifest, write_manifest
from genalign.tracking import Tracker

WORLDS = ("start", "prompted", "control")


def metric_specs(cfg: EvaluateVoxelsConfig) -> list[MetricSpec]:
    return [
        MetricSpec("prompted_class_score", "target", "higher",
                   help="the prompted class's score from the map's shape and materials (nearest prototype)"),
        MetricSpec("histogram_distance", "target", "lower",
                   help="L1 distance of the material shares to the prompted class's"),
        MetricSpec("floating_share", "guard", "lower", tolerance=cfg.max_floating_share,
                   help="share of blocks not connected to the ground"),
        MetricSpec("denoise_loss", "info", None, help="the prior's denoising loss on held-out renders, prompted"),
        MetricSpec("blocks", "info", None, help="solid blocks"),
    ]


def _class_of(prompt: str) -> str | None:
    from genalign.data.voxel_scenes import PROMPT_CLASSES

    for name, c in PROMPT_CLASSES.items():
        if prompt in (name, c.prompt):
            return name
    return None


def _trajectory_plot(out: Path, trajectories: dict[str, list[dict]], classes: dict[str, str | None]) -> None:
    from genalign.evaluation.report import _new_figure

    fig = _new_figure(7.0, 3.5)
    for i, (world, rows) in enumerate(trajectories.items()):
        ax = fig.add_subplot(1, 2, i + 1)
        steps = [r["step"] for r in rows]
        for key in sorted(k for k in (rows[0] if rows else {}) if k.startswith("class/")):
            name = key.split("/", 1)[1]
            ax.plot(steps, [r[key] for r in rows], label=name, linewidth=2.5 if name == classes[world] else 1.0)
        ax.set_title(f"{world} run: class scores", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out / "trajectory.png")


def run(cfg: EvaluateVoxelsConfig, *, world: Path, prior: Path, map: Path, control: Path, report: Path,
        tracker: Tracker) -> StageResult:
    import torch

    from genalign.data.voxel_map import floating_share, read_map
    from genalign.data.voxel_scenes import PROMPT_CLASSES, class_scores, histogram_distance
    from genalign.render.cameras import read_cameras
    from genalign.trainers.voxel_prior import denoise_losses
    from genalign.trainers.voxel_sds import final_renders, images_to_png, load_prior

    read_manifest(world, DATASET)
    read_manifest(prior, MODEL)
    read_manifest(map, MODEL)
    read_manifest(control, MODEL)
    maps = {"start": read_map(world / "map.json"), "prompted": read_map(map / "map.json"),
            "control": read_map(control / "map.json")}
    for name, m in maps.items():
        if m.dims != maps["start"].dims:
            raise ValueError(f"{name} map: dims {m.dims} differ from the start world's {maps['start'].dims}")
    prompt = maps["prompted"].metadata["prompt"]
    control_prompt = maps["control"].metadata["prompt"]
    classes = {"prompted": _class_of(prompt), "control": _class_of(control_prompt)}
    cls = classes["prompted"]
    heldout = read_cameras(world / "heldout_cameras.json")
    pipe = load_prior(prior).pipe
    n = pipe.scheduler.config.num_train_timesteps
    t_low, t_high = round(cfg.t_range[0] * (n - 1)), round(cfg.t_range[1] * (n - 1))
    class_prompts = [c.prompt for c in PROMPT_CLASSES.values()]
    prompts = list(dict.fromkeys(class_prompts + [prompt, control_prompt]))

    renders, rows = {}, {}
    for name, m in maps.items():
        renders[name] = final_renders(m, heldout)
        losses = dict(zip(prompts, denoise_losses(pipe, renders[name], prompts, repeats=cfg.denoise_repeats,
                                                  t_low=t_low, t_high=t_high + 1,
                                                  generator=torch.Generator().manual_seed(cfg.seed))))
        scores = class_scores(m)
        rows[name] = {
            "blocks": float(m.count),
            "floating_share": floating_share(m),
            "within_bounds": float(m.blocks.shape == maps["start"].dims),
            "class_scores": scores,
            # a world without a block above the ground shows no class (all scores equal)
            "top_class": max(scores, key=scores.get) if len(set(scores.values())) > 1 else "none",
            "prompted_class_score": scores[cls] if cls else float("nan"),
            "histogram_distance": histogram_distance(m, cls) if cls else float("nan"),
            "denoise_loss": losses[prompt],
            "denoise_loss_control_prompt": losses[control_prompt],
            "denoise_losses": losses,
            "prior_reading": min((p for p in class_prompts), key=losses.get),
        }
    p, c = rows["prompted"], rows["control"]
    if cls is None:
        # not a procedural class: the prior's denoising loss is the only evidence
        wins = float(p["denoise_loss"] < p["denoise_loss_control_prompt"]
                     and p["denoise_loss"] < c["denoise_loss"])
        evidence = "the prior's denoising loss (the prompt is not a procedural class)"
    else:
        wins = float(p["top_class"] == cls and p["prompted_class_score"] > c["prompted_class_score"])
        evidence = "class_scores of the maps (shape features and material shares, nearest prototype)"
    specs = metric_specs(cfg)
    keys = [s.name for s in specs]
    decision = gate(specs, {k: rows["start"][k] for k in keys}, {k: p[k] for k in keys})

    with atomic_dir(report) as tmp:
        images_to_png(torch.cat([renders[w] for w in WORLDS], dim=2), tmp / "gallery.png")
        trajectories = {w: json.loads(((map if w == "prompted" else control) / "trajectory.json").read_text())
                        for w in ("prompted", "control")}
        _trajectory_plot(tmp, trajectories, classes)
        images = {"held-out views (rows: start, prompted, control)": "gallery.png",
                  "class scores during optimisation": "trajectory.png"}
        header = ["world", "prompt", "top class", f"score {cls}", "hist dist", "denoise", "blocks", "floating"]
        cells = [[w, maps[w].metadata.get("prompt", "-") if w != "start" else "-", rows[w]["top_class"],
                  f"{rows[w]['prompted_class_score']:.3f}", f"{rows[w]['histogram_distance']:.3f}",
                  f"{rows[w]['denoise_loss']:.4f}", f"{rows[w]['blocks']:.0f}", f"{rows[w]['floating_share']:.3f}"]
                 for w in WORLDS]
        table = fixed_width_table(header, cells)
        extra = {"eval/prompted_class_wins": wins,
                 "eval/control_prompted_class_score": c["prompted_class_score"],
                 "eval/control_histogram_distance": c["histogram_distance"],
                 "eval/control_class_score": c["class_scores"][classes["control"]] if classes["control"] else
                 float("nan"),
                 "eval/prior_reading_correct": float(p["prior_reading"] == prompt),
                 "eval/within_bounds": min(r["within_bounds"] for r in rows.values())}
        extra = {k: v for k, v in extra.items() if np.isfinite(v)}
        metrics = write_report(
            tmp, title=f"voxel-sds: {prompt!r} against the control {control_prompt!r}", specs=specs,
            gate=decision, images=images, metrics=extra,
            sections=[Section("Worlds on the held-out views", markdown=f"```\n{table}\n```", text=table)],
            notes=[(f"base = the start world, tuned = the world optimised for {prompt!r}; the control run was "
                    f"optimised for {control_prompt!r} with the same seed and settings."),
                   f"prompted_class_wins = {wins:.0f}, from {evidence}.",
                   f"{len(heldout)} held-out views, {cfg.denoise_repeats} (t, noise) draws each."],
            data={"prompt": prompt, "control_prompt": control_prompt, "prompted_class": cls,
                  "control_class": classes["control"], "worlds": rows, "evidence": evidence,
                  "config": cfg.to_dict()},
        )
        write_manifest(tmp, kind=REPORT, config=cfg.to_dict(),
                       inputs={"world": str(world), "prior": str(prior), "map": str(map), "control": str(control)},
                       hash_files=["report.json"])
    for file in images.values():
        tracker.log_artifact(report / file, "plots")
    print((report / "table.txt").read_text())
    return StageResult(metrics=metrics, summary={"prompted_class_wins": wins, "gate_passed": decision.passed,
                                                 "top_class": p["top_class"], "prompt": prompt})

"""optimise-voxels: score distillation of the prepared world for one prompt.

Variant 0 optimises for `prompt`, variant 1 for `control_prompt` (the control run that
evaluation compares against); everything else is the same, the seed included
(`genalign.trainers.voxel_sds.optimise_world`). Checkpoints live in a work directory
keyed by the stage's fingerprint (config, variant, inputs, thread count), so a task
killed mid-run and run again resumes from its last checkpoint and ends where an
uninterrupted run ends; the map artifact appears only when the run is done.

    map/
      map.json            the optimised world (metadata: prompt, variant, steps,
                          guidance_scale, seed, source, renderer, prior)
      logits.safetensors  occupancy [X, Y, Z] and material scores [X, Y, Z, 7] at the end
      trajectory.json     the logged metrics, every log_every steps
      renders.png         the world from four training views

    genalign stage optimise-voxels --config cfg.yaml --in world=w --in prior=p --out map=m --param variant=0
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from genalign.artifacts import DATASET, MODEL, fingerprint
from genalign.config.voxel_sds import OptimiseVoxelsConfig
from genalign.stages import StageResult
from genalign.storage import atomic_dir, atomic_write_json, read_manifest, write_manifest
from genalign.tracking import Tracker

VARIANTS = ("prompt", "control")


def run(cfg: OptimiseVoxelsConfig, *, world: Path, prior: Path, map: Path, variant: int,
        tracker: Tracker) -> StageResult:
    from genalign.data.voxel_map import VoxelMap, read_map, write_map
    from genalign.models.refs import cache_dir
    from genalign.render.cameras import read_cameras
    from genalign.trainers.voxel_sds import (
        final_renders,
        images_to_png,
        load_prior,
        optimise_world,
        save_logits,
    )
    from genalign.training.numerics import numerics_key

    if variant not in (0, 1):
        raise ValueError(f"variant {variant}: expected 0 (prompt) or 1 (control_prompt)")
    read_manifest(world, DATASET)
    read_manifest(prior, MODEL)
    start = read_map(world / "map.json")
    if cfg.resolutions[-1] != start.dims[0]:
        raise ValueError(f"resolutions: the last level {cfg.resolutions[-1]} must be the world's x size "
                         f"{start.dims[0]} ({world / 'map.json'})")
    cameras = read_cameras(world / "cameras.json")
    info = json.loads((world / "world.json").read_text())
    prior_info = json.loads((prior / "prior.json").read_text())
    prompt = cfg.prompt if variant == 0 else cfg.control_prompt
    fp = fingerprint("optimise-voxels", cfg.to_dict(), {"variant": variant, **numerics_key()},
                     {"world": world, "prior": prior})
    work = cache_dir() / "optimise-voxels" / fp
    prior_model = load_prior(prior, dtype=cfg.dtype)
    result = optimise_world(cfg, prior=prior_model, start=start, cameras=cameras, prompt=prompt, work=work,
                            tracker=tracker)
    metadata = {"prompt": prompt, "variant": VARIANTS[variant], "steps": cfg.steps,
                "guidance_scale": cfg.guidance_scale, "seed": cfg.seed, "source": info["source"],
                "renderer": cfg.renderer, "prior": prior_info["model"], "resolutions": list(cfg.resolutions)}
    final = VoxelMap(result.map.blocks, world_scale=result.map.world_scale, sequence=cfg.steps, metadata=metadata)
    with atomic_dir(map) as tmp:
        write_map(final, tmp / "map.json")
        save_logits(result.occupancy, result.materials, tmp / "logits.safetensors")
        atomic_write_json(tmp / "trajectory.json", result.trajectory)
        images_to_png(final_renders(final, cameras.select(list(range(0, len(cameras), max(1, len(cameras) // 4)))[:4])),
                      tmp / "renders.png")
        write_manifest(tmp, kind=MODEL, config=cfg.to_dict(), inputs={"world": str(world), "prior": str(prior)},
                       counts={"blocks": final.count}, extra={"variant": variant, "prompt": prompt})
    tracker.log_artifact(map / "renders.png", "renders")
    shutil.rmtree(work, ignore_errors=True)
    return StageResult(metrics={f"optimise/{k}": float(v) for k, v in result.metrics.items()},
                       summary={"prompt": prompt, "variant": variant, "blocks": final.count})

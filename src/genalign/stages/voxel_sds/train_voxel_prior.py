"""train-voxel-prior: the text-to-image prior that score distillation asks.

`model: tiny` trains the tiny SDXL-architecture prior (`genalign.trainers.voxel_prior`)
on renders of procedural structures from the world's training cameras, at their image
size; the trained pipeline is cached under `genalign.models.refs.cache_dir()` by the
stage's fingerprint (config, world, thread count), so a second run with the same
inputs copies it instead of training again. Any other `model` is an SDXL pipeline
reference (hf://stabilityai/stable-diffusion-xl-base-1.0, a path, s3://, mlflow://):
the artifact records it in prior.json and optimise-voxels resolves it where it runs.

    prior/
      prior.json          {model, prompts?, image_size?, dims?, world_scale?, metrics?}
      model_index.json, unet/, vae/, text_encoder/, text_encoder_2/, tokenizer*/, scheduler/
                          (model: tiny only; the diffusers layout, safetensors)

    genalign stage train-voxel-prior --config cfg.yaml --in world=w --out prior=p
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from genalign.artifacts import DATASET, MODEL, fingerprint
from genalign.config.voxel_sds import TrainVoxelPriorConfig
from genalign.stages import StageResult
from genalign.storage import atomic_dir, atomic_write_json, read_manifest, write_manifest
from genalign.tracking import Tracker


def run(cfg: TrainVoxelPriorConfig, *, world: Path, prior: Path, tracker: Tracker) -> StageResult:
    from genalign.data.voxel_map import read_map
    from genalign.models.refs import cache_dir
    from genalign.render.cameras import read_cameras
    from genalign.trainers.voxel_prior import PRIOR_FILE, train_tiny_prior
    from genalign.training.numerics import numerics_key

    read_manifest(world, DATASET)
    if cfg.model != "tiny":
        with atomic_dir(prior) as tmp:
            atomic_write_json(tmp / PRIOR_FILE, {"model": cfg.model})
            write_manifest(tmp, kind=MODEL, config=cfg.to_dict(), inputs={"world": str(world)},
                           extra={"base_model": cfg.model})
        return StageResult(metrics={}, summary={"model": cfg.model})
    start = read_map(world / "map.json")
    cameras = read_cameras(world / "cameras.json")
    fp = fingerprint("train-voxel-prior", cfg.to_dict(), numerics_key(), {"world": world})
    cached = cache_dir() / "voxel-prior" / fp
    if not (cached / PRIOR_FILE).is_file():
        with atomic_dir(cached) as tmp:
            train_tiny_prior(cfg.tiny, dims=start.dims, world_scale=start.world_scale, cameras=cameras,
                             out=tmp, tracker=tracker)
    info = json.loads((cached / PRIOR_FILE).read_text())
    with atomic_dir(prior) as tmp:
        shutil.copytree(cached, tmp, dirs_exist_ok=True)
        write_manifest(tmp, kind=MODEL, config=cfg.to_dict(), inputs={"world": str(world)},
                       counts={"images": int(info["metrics"]["images"])}, extra={"base_model": "tiny"})
    metrics = {f"prior/{k}": float(v) for k, v in info["metrics"].items()}
    return StageResult(metrics=metrics, summary={"model": "tiny", **info["metrics"]})

"""rollout-parts: K samples per condition of one shard from the current part generator.

Per sample it stores the decoded part meshes (GLB), the final latent (safetensors) and,
per condition, the conditioning features (safetensors) and the input image:

    samples/
      manifest.json  samples.jsonl
      cond/<cond_id>.safetensors   features [N, C], num_parts
      images/<cond_id>.png
      latents/<sample_id>.safetensors   latent [P, T, D]
      meshes/<sample_id>.glb           one node per part: part_00, part_01, ...

Conditions are dealt to shards round-robin by their position in conditions.jsonl.
Sample k of condition c draws its noise from a seed derived from (seed, c, k), so a
sample does not depend on the shard or batch it lands in.
"""

from __future__ import annotations

from pathlib import Path

from genalign.artifacts import SAMPLES, link_or_copy, read_conditions
from genalign.config.part_dpo import RolloutPartsConfig
from genalign.records import Sample, write_jsonl
from genalign.stages import StageResult
from genalign.storage import atomic_dir, write_manifest
from genalign.tracking import Tracker


def run(
    cfg: RolloutPartsConfig, *, conditions: Path, model: Path, samples: Path, shard: int, num_shards: int,
    tracker: Tracker,
) -> StageResult:
    import torch
    from safetensors.torch import save_file

    from genalign.generators.parts import generate, load_generator
    from genalign.models.part_codec import decode_object, save_glb

    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} is outside 0..{num_shards - 1}")
    all_conditions = read_conditions(conditions)
    mine = all_conditions[shard::num_shards]

    rows: list[Sample] = []
    failed = 0
    with atomic_dir(samples) as tmp:
        if mine:
            gen = load_generator(model)
            results, features = generate(
                gen, mine, conditions, k=cfg.samples_per_condition, seed=cfg.seed, steps=cfg.steps,
                guidance=cfg.guidance, batch_size=cfg.batch_size,
            )
            for i, c in enumerate(mine):
                save_file(
                    {"features": features[i].contiguous(), "num_parts": torch.tensor(int(c.meta["num_parts"]))},
                    str(_mkparent(tmp / "cond" / f"{c.id}.safetensors")),
                )
                link_or_copy(conditions / c.image, tmp / "images" / f"{c.id}.png")
            for c, k, seed, latent in results:
                sid = f"{c.id}-i{cfg.iteration}-k{k}"
                files = {
                    "latent": f"latents/{sid}.safetensors", "meshes": f"meshes/{sid}.glb",
                    "cond": f"cond/{c.id}.safetensors", "image": f"images/{c.id}.png",
                }
                status, error = "ok", None
                save_file({"latent": latent.contiguous()}, str(_mkparent(tmp / files["latent"])))
                try:
                    save_glb(decode_object(latent.numpy()), tmp / files["meshes"])
                except Exception as e:  # a latent that does not decode is a failed sample, not a crash
                    status, error, failed = "failed", f"decode: {e}", failed + 1
                    del files["meshes"]
                rows.append(Sample(
                    sample_id=sid, cond_id=c.id, seed=seed, iteration=cfg.iteration,
                    output={"num_parts": int(latent.shape[0])}, files=files, status=status, error=error,
                ))
        write_jsonl(tmp / "samples.jsonl", rows)
        write_manifest(
            tmp, kind=SAMPLES, config=cfg.to_dict(), inputs={"conditions": str(conditions), "model": str(model)},
            counts={"conditions": len(mine), "samples": len(rows), "failed": failed},
            hash_files=["samples.jsonl"], extra={"shard": shard, "num_shards": num_shards},
        )
    metrics = {"rollout/conditions": float(len(mine)), "rollout/samples": float(len(rows)), "rollout/failed": float(failed)}
    return StageResult(metrics=metrics, summary={"samples": len(rows), "failed": failed})


def _mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path

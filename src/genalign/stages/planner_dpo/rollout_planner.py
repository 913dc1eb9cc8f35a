"""rollout-planner: K plans per question of one sub-shard of this iteration's shard.

    samples/
      manifest.json  samples.jsonl     Sample rows: output = the plan text (raw, unparsed),
                                       meta = {prompt, images}, files = the prompt images
      images/...                       the question's images (linked from the dataset)

The shard's questions are dealt to `num_subshards` sub-shards round-robin. Rollout j of
question `id` samples with a seed derived from (sampling.seed + iteration, id, j), so a
plan does not depend on the sub-shard it lands in. Malformed plans are kept as they are
(status ok): the critic scores them -1 and DPO learns to avoid them.
"""

from __future__ import annotations

import time
from pathlib import Path

from genalign.artifacts import SAMPLES, link_or_copy, read_shard
from genalign.config.planner_dpo import RolloutPlannerConfig
from genalign.data.mmsi import read_dataset
from genalign.models.refs import model_dir
from genalign.records import Sample, write_jsonl
from genalign.stages import StageResult
from genalign.storage import atomic_dir, write_manifest
from genalign.tracking import Tracker


def run(cfg: RolloutPlannerConfig, *, dataset: Path, shards: Path, model: Path, samples: Path,
        iteration: int, subshard: int, num_subshards: int, tracker: Tracker) -> StageResult:
    from genalign.data.planner_prompt import planner_prompt
    from genalign.generators.planner import PlannerSampler
    from genalign.models.vlm import load_vlm

    if not 0 <= subshard < num_subshards:
        raise ValueError(f"subshard {subshard}: expected 0 <= subshard < num_subshards ({num_subshards})")
    wanted = read_shard(shards, iteration)[subshard::num_subshards]
    by_id = {r["id"]: r for r in read_dataset(dataset)}
    missing = [i for i in wanted if i not in by_id]
    if missing:
        raise ValueError(f"{shards}: shard {iteration} names questions missing from {dataset}: {missing[:5]}")
    rows = [by_id[i] for i in wanted]
    start = time.perf_counter()
    model_obj, processor = load_vlm(model_dir(model))
    sampling = cfg.sampling
    plans = PlannerSampler(model_obj, processor, sampling).sample(
        rows, seed=sampling.seed + iteration, root=dataset
    )
    seconds = time.perf_counter() - start
    out_rows = []
    with atomic_dir(samples) as tmp:
        for row, texts in zip(rows, plans):
            for rel in row["images"]:
                link_or_copy(dataset / rel, tmp / rel)
            for j, text in enumerate(texts):
                out_rows.append(Sample(
                    sample_id=f"{row['id']}/i{iteration}/k{j}", cond_id=row["id"], seed=j, iteration=iteration,
                    output=text, status="ok", files={f"image_{n}": rel for n, rel in enumerate(row["images"])},
                    meta={"prompt": planner_prompt(row), "images": list(row["images"])},
                ))
        write_jsonl(tmp / "samples.jsonl", out_rows)
        counts = {"questions": len(rows), "samples": len(out_rows)}
        write_manifest(tmp, kind=SAMPLES, config=cfg.to_dict(), counts=counts, hash_files=["samples.jsonl"],
                       inputs={"dataset": str(dataset), "shards": str(shards), "model": str(model)},
                       extra={"iteration": iteration, "seconds": seconds})
    return StageResult(metrics={"rollout/questions": float(len(rows)), "rollout/samples": float(len(out_rows)),
                                "rollout/seconds": seconds}, summary=counts)

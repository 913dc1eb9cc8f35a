"""shard-planner: a seeded split of the dataset's question ids, one shard per iteration.

    shards/
      manifest.json  shards.json   {seed, num_shards, shards: [[id, ...], ...]}

Every question is in exactly one shard; shard sizes differ by at most one. Iteration i
rolls out on shard i, so each iteration sees questions no earlier iteration trained on.
"""

from __future__ import annotations

import random
from pathlib import Path

from genalign.artifacts import SHARDS
from genalign.config.planner_dpo import ShardPlannerConfig
from genalign.data.mmsi import read_dataset
from genalign.stages import StageResult
from genalign.storage import (
    atomic_dir,
    atomic_write_json,
    write_manifest,
)
from genalign.tracking import Tracker


def split(ids: list[str], num_shards: int, seed: int) -> list[list[str]]:
    """Shuffle `ids` with `seed` and deal them into `num_shards` contiguous shards."""
    order = list(ids)
    random.Random(seed).shuffle(order)
    bounds = [round(i * len(order) / num_shards) for i in range(num_shards + 1)]
    return [order[bounds[i] : bounds[i + 1]] for i in range(num_shards)]




def run(cfg: ShardPlannerConfig, *, dataset: Path, shards: Path, tracker: Tracker) -> StageResult:
    ids = [r["id"] for r in read_dataset(dataset)]
    if len(ids) < cfg.num_shards:
        raise ValueError(f"{dataset}: {len(ids)} question(s) cannot fill {cfg.num_shards} shards")
    parts = split(ids, cfg.num_shards, cfg.seed)
    with atomic_dir(shards) as tmp:
        atomic_write_json(tmp / "shards.json", {"seed": cfg.seed, "num_shards": cfg.num_shards, "shards": parts})
        write_manifest(tmp, kind=SHARDS, config=cfg.to_dict(), inputs={"dataset": str(dataset)},
                       counts={"questions": len(ids), "shards": cfg.num_shards}, hash_files=["shards.json"])
    sizes = [len(p) for p in parts]
    return StageResult(metrics={"shards/min_size": float(min(sizes)), "shards/max_size": float(max(sizes))},
                       summary={"sizes": sizes})

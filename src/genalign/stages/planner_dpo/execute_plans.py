"""execute-plans: every instruction of every plan turned into an image by the executor.

    executed/
      manifest.json  samples.jsonl    the rollout rows, with meta.plan = {status: ok | failed |
                                      empty, error, instructions} and meta.executions = one
                                      {instruction, status: ok | failed | timeout, view, error,
                                      elapsed_s, image} per instruction
      images/...  generated/<question>/<i>_<k>_<n>.png

A plan that does not parse (no <instructions>, unbalanced tags) is counted as malformed
and executes nothing; an instruction the executor fails on or times out on is counted and
has no image. Neither stops the stage.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from genalign.artifacts import link_or_copy
from genalign.config.planner_dpo import ExecutePlansConfig
from genalign.data.mmsi import read_dataset
from genalign.records import Sample, read_jsonl, write_jsonl
from genalign.stages import StageResult
from genalign.storage import atomic_dir, read_manifest, write_manifest
from genalign.tracking import Tracker


def scene_of(row: dict[str, Any], dataset: Path, executor: str) -> Any:
    """What the executor edits: the synthetic scene (render-view), else the row with its
    images' paths (`image_paths`, for an image-editing executor)."""
    from genalign.data.spatial_scenes import load_scene

    if executor == "render-view":
        if "scene" not in row.get("meta", {}):
            raise ValueError(f"{dataset}: question {row['id']!r} has no meta.scene; the render-view executor "
                             "needs the synthetic scenes (prepare.source: synthetic)")
        return load_scene(dataset / row["meta"]["scene"])
    return {**row, "image_paths": [dataset / rel for rel in row["images"]]}


def plan_of(text: Any) -> dict[str, Any]:
    """{status, error, instructions} of a plan's text."""
    from genalign.generators.plan_format import PlanFormatError, parse_plan

    try:
        plan = parse_plan(text)
    except PlanFormatError as e:
        return {"status": "failed", "error": str(e), "instructions": []}
    return {"status": "ok" if plan.instructions else "empty", "error": None, "instructions": plan.instructions}


def execute_rows(rows: list[Sample], by_id: dict[str, dict], dataset: Path, cfg: ExecutePlansConfig, out: Path,
                 ) -> tuple[list[Sample], dict[str, int]]:
    """Execute every plan of `rows`; images go under `out`. Returns the rows and counts."""
    from genalign.executors import get_executor
    from genalign.render.parts_image import save_png

    executor = get_executor(cfg.executor, cfg.options())
    scenes: dict[str, Any] = {}
    counts = {"plans": 0, "malformed": 0, "empty": 0, "instructions": 0, "ok": 0, "failed": 0, "timeout": 0}
    done = []
    for s in rows:
        row = by_id[s.cond_id]
        if s.cond_id not in scenes:
            scenes[s.cond_id] = scene_of(row, dataset, cfg.executor)
        plan = plan_of(s.output)
        counts["plans"] += 1
        counts["malformed"] += plan["status"] == "failed"
        counts["empty"] += plan["status"] == "empty"
        executions, files = [], dict(s.files)
        for n, instruction in enumerate(plan["instructions"]):
            result = executor.execute(scenes[s.cond_id], instruction)
            counts["instructions"] += 1
            counts[result.status] += 1
            image = None
            if result.status == "ok":
                image = f"generated/{s.sample_id.replace('/', '_')}_{n}.png"
                save_png(result.image, out / image)
                files[f"generated_{n}"] = image
            executions.append({"instruction": instruction, "status": result.status, "view": result.view,
                               "error": result.error, "elapsed_s": round(result.elapsed_s, 4), "image": image})
        done.append(dataclasses.replace(s, files=files, meta={**s.meta, "plan": plan, "executions": executions}))
    return done, counts


def run(cfg: ExecutePlansConfig, *, samples: Path, dataset: Path, executed: Path, tracker: Tracker) -> StageResult:
    read_manifest(samples, "samples")
    rows = read_jsonl(samples / "samples.jsonl", Sample)
    by_id = {r["id"]: r for r in read_dataset(dataset)}
    start = time.perf_counter()
    with atomic_dir(executed) as tmp:
        done, counts = execute_rows(rows, by_id, dataset, cfg, tmp)
        for s in done:
            for key, rel in s.files.items():
                if not key.startswith("generated_"):
                    link_or_copy(samples / rel, tmp / rel)
        write_jsonl(tmp / "samples.jsonl", done)
        seconds = time.perf_counter() - start
        write_manifest(tmp, kind="executed", config=cfg.to_dict(), counts=counts, hash_files=["samples.jsonl"],
                       inputs={"samples": str(samples), "dataset": str(dataset)},
                       extra={"seconds": seconds})
    metrics = {f"execute/{k}": float(v) for k, v in counts.items()}
    metrics["execute/seconds"] = seconds
    return StageResult(metrics=metrics, summary=counts)

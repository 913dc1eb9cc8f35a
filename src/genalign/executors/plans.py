"""Executing plans: every instruction of a planner's plan through an executor
(`genalign.executors.EXECUTORS`), with each failure counted, never raised.

    rows, counts = execute_rows(samples, questions_by_id, dataset_dir, cfg, out_dir)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from genalign.config.planner_dpo import ExecutePlansConfig
from genalign.records import Sample


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

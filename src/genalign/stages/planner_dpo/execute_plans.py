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

import time
from pathlib import Path

from genalign.artifacts import EXECUTED, SAMPLES, link_or_copy
from genalign.config.planner_dpo import ExecutePlansConfig
from genalign.data.mmsi import read_dataset
from genalign.executors.plans import execute_rows
from genalign.records import Sample, read_jsonl, write_jsonl
from genalign.stages import StageResult
from genalign.storage import atomic_dir, read_manifest, write_manifest
from genalign.tracking import Tracker


def run(cfg: ExecutePlansConfig, *, samples: Path, dataset: Path, executed: Path, tracker: Tracker) -> StageResult:
    read_manifest(samples, SAMPLES)
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
        write_manifest(tmp, kind=EXECUTED, config=cfg.to_dict(), counts=counts, hash_files=["samples.jsonl"],
                       inputs={"samples": str(samples), "dataset": str(dataset)},
                       extra={"seconds": seconds})
    metrics = {f"execute/{k}": float(v) for k, v in counts.items()}
    metrics["execute/seconds"] = seconds
    return StageResult(metrics=metrics, summary=counts)

"""label-plans: the critic's score of every executed plan.

    scored/
      manifest.json  scored.jsonl   ScoredSample rows (higher is better): a malformed plan
                                    -1.0, an empty instruction list 0.0, else the critic's
                                    score on [0, 1]; detail says how it was reached
      images/...  generated/...

Critics (`CriticConfig.critic`):
- scene-oracle: the share of the plan's instructions whose view reveals the answer
  (`genalign.scorers.scene_oracle`); an instruction that failed or timed out reveals nothing.
- mllm-judge: a Qwen-VL critic sees the question's images, the generated ones and the
  question (`genalign.scorers.mllm_judge`: confidence, explicit 1-10, or both). An
  unparseable 1-10 answer leaves the score empty (None) and is counted: the question then
  makes no pair, rather than a wrong one.
"""

from __future__ import annotations

import time
from pathlib import Path

from genalign.artifacts import EXECUTED, SCORED, link_or_copy
from genalign.config.planner_dpo import LabelPlansConfig
from genalign.data.mmsi import read_dataset
from genalign.records import Sample, read_jsonl, write_jsonl
from genalign.scorers.critic import score_rows
from genalign.stages import StageResult
from genalign.storage import atomic_dir, read_manifest, write_manifest
from genalign.tracking import Tracker


def run(cfg: LabelPlansConfig, *, executed: Path, dataset: Path, scored: Path, tracker: Tracker) -> StageResult:
    read_manifest(executed, EXECUTED)
    rows = read_jsonl(executed / "samples.jsonl", Sample)
    by_id = {r["id"]: r for r in read_dataset(dataset)}
    start = time.perf_counter()
    out, counts = score_rows(rows, by_id, dataset, executed, cfg.critic)
    seconds = time.perf_counter() - start
    with atomic_dir(scored) as tmp:
        for s in out:
            for rel in s.files.values():
                link_or_copy(executed / rel, tmp / rel)
        write_jsonl(tmp / "scored.jsonl", out)
        write_manifest(tmp, kind=SCORED, config=cfg.to_dict(), counts=counts, hash_files=["scored.jsonl"],
                       inputs={"executed": str(executed), "dataset": str(dataset)},
                       extra={"seconds": seconds})
    values = [s.score for s in out if s.score is not None]
    metrics = {f"label/{k}": float(v) for k, v in counts.items()}
    metrics.update({"label/score_mean": sum(values) / len(values) if values else 0.0, "label/seconds": seconds})
    return StageResult(metrics=metrics, summary=counts)

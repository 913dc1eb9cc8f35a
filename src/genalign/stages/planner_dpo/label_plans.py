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
from typing import Any

from genalign.artifacts import link_or_copy
from genalign.config.planner_dpo import CriticConfig, LabelPlansConfig
from genalign.data.mmsi import read_dataset
from genalign.records import Sample, ScoredSample, read_jsonl, write_jsonl
from genalign.stages import StageResult
from genalign.stages.planner_dpo.execute_plans import scene_of
from genalign.storage import atomic_dir, read_manifest, write_manifest
from genalign.tracking import Tracker


def score_rows(rows: list[Sample], by_id: dict[str, dict], dataset: Path, files_root: Path,
               cfg: CriticConfig) -> tuple[list[ScoredSample], dict[str, int]]:
    """Score executed rows (their images under `files_root`). Returns rows and counts."""
    counts = {"scored": 0, "malformed": 0, "empty": 0, "unscored": 0}
    for s in rows:
        status = s.meta.get("plan", {}).get("status")
        if status not in ("ok", "failed", "empty"):
            raise ValueError(f"sample {s.sample_id}: no meta.plan status; run execute-plans first")
    if cfg.critic == "scene-oracle":
        scores = _oracle(rows, by_id, dataset, cfg)
    else:
        scores = _judge(rows, by_id, dataset, files_root, cfg)
    out = []
    for s, (score, detail) in zip(rows, scores):
        plan = s.meta["plan"]["status"]
        counts["malformed"] += plan == "failed"
        counts["empty"] += plan == "empty"
        counts["scored" if score is not None else "unscored"] += 1
        out.append(ScoredSample.of(s, score=score, scorer=cfg.critic, detail=detail))
    return out, counts


def _oracle(rows, by_id, dataset, cfg: CriticConfig) -> list[tuple[float, dict[str, Any]]]:
    from genalign.scorers.scene_oracle import SceneOracle

    oracle, scenes, out = SceneOracle(cfg.oracle), {}, []
    for s in rows:
        if s.cond_id not in scenes:
            scenes[s.cond_id] = scene_of(by_id[s.cond_id], dataset, "render-view")
        statuses = [e["status"] for e in s.meta["executions"]] if s.meta["plan"]["status"] == "ok" else None
        out.append(oracle.score_plan(scenes[s.cond_id], s.output, executions=statuses))
    return out


def _judge(rows, by_id, dataset, files_root, cfg: CriticConfig) -> list[tuple[float | None, dict[str, Any]]]:
    from genalign.models.refs import resolve
    from genalign.scorers.mllm_judge import JudgeSample, MLLMJudge

    judge = MLLMJudge(resolve(cfg.judge_model), cfg.judge)
    samples = [
        JudgeSample.from_row(by_id[s.cond_id], [files_root / e["image"] for e in s.meta["executions"] if e["image"]],
                             root=dataset)
        for s in rows
    ]
    statuses = [s.meta["plan"]["status"] for s in rows]
    # A plan whose every instruction failed in the executor has nothing to judge: it helped
    # no more than an empty plan.
    statuses = [st if st != "ok" or smp.generated_images else "empty" for st, smp in zip(statuses, samples)]
    return judge.score_plans(samples, statuses)


def run(cfg: LabelPlansConfig, *, executed: Path, dataset: Path, scored: Path, tracker: Tracker) -> StageResult:
    read_manifest(executed, "executed")
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
        write_manifest(tmp, kind="scored", config=cfg.to_dict(), counts=counts, hash_files=["scored.jsonl"],
                       inputs={"executed": str(executed), "dataset": str(dataset)},
                       extra={"seconds": seconds})
    values = [s.score for s in out if s.score is not None]
    metrics = {f"label/{k}": float(v) for k, v in counts.items()}
    metrics.update({"label/score_mean": sum(values) / len(values) if values else 0.0, "label/seconds": seconds})
    return StageResult(metrics=metrics, summary=counts)

"""The planner's critic: every executed plan scored by the scene oracle or an MLLM judge.

A malformed plan scores -1.0 and an empty one 0.0 (`genalign.scorers.scene_oracle`,
`genalign.scorers.mllm_judge`); an unparseable judge answer leaves the score empty and
is counted.

    scored, counts = score_rows(executed_rows, questions_by_id, dataset_dir, files_root, cfg.critic)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from genalign.config.planner_dpo import CriticConfig
from genalign.executors.plans import scene_of
from genalign.records import Sample, ScoredSample


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

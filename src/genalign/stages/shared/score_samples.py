"""score-samples: every sample of a samples artifact scored by the configured scorer
(`genalign.scorers.SCORERS`; inter-part penetration in part-dpo).

The scored artifact holds the sample files (hard links where the file system allows)
and `scored.jsonl`: the sample rows plus {score, detail, scorer}. A sample whose
generation failed, whose meshes cannot be read or scored, or whose score or detail is
not a finite number, keeps score null and is counted; pair mining then leaves its
condition out.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING

from genalign.artifacts import SAMPLES, SCORED, link_or_copy
from genalign.config.score import ScoreSamplesConfig
from genalign.records import Sample, ScoredSample, read_jsonl, write_jsonl
from genalign.stages import StageResult
from genalign.storage import MANIFEST, atomic_dir, read_manifest, write_manifest
from genalign.tracking import Tracker

if TYPE_CHECKING:
    from genalign.scorers.base import ObjectScore


def run(cfg: ScoreSamplesConfig, *, samples: Path, scored: Path, tracker: Tracker) -> StageResult:
    from genalign.scorers import get_scorer

    read_manifest(samples, SAMPLES)
    rows = read_jsonl(samples / "samples.jsonl", Sample)

    scorer = get_scorer(cfg.scorer, cfg.scorer_config())
    ok = [r for r in rows if r.status == "ok"]
    results = dict(zip((r.sample_id for r in ok), scorer.score_files([samples / r.files["meshes"] for r in ok])))
    out_rows = []
    for r in rows:
        res = results.get(r.sample_id)
        unusable = _not_finite(res) if res is not None and res.score is not None else None
        if res is None or res.score is None or unusable:
            detail = {"error": unusable or (res.error if res is not None else r.error) or "generation failed"}
            status = "failed"
            out_rows.append(ScoredSample.of(dataclasses.replace(r, status=status),
                                            score=None, scorer=scorer.name, detail=detail))
        else:
            out_rows.append(ScoredSample.of(r, score=float(res.score), scorer=scorer.name, detail=res.detail))
    with atomic_dir(scored) as tmp:
        for path in samples.rglob("*"):
            rel = path.relative_to(samples)
            if path.is_file() and rel.name not in (MANIFEST, "samples.jsonl"):
                link_or_copy(path, tmp / rel)
        write_jsonl(tmp / "scored.jsonl", out_rows)
        metrics = _metrics(out_rows)
        write_manifest(
            tmp, kind=SCORED, config=cfg.to_dict(), inputs={"samples": str(samples)},
            counts={"samples": len(out_rows), "failed": int(metrics["score/failed"])},
            hash_files=["scored.jsonl"], extra={"scorer": scorer.name},
        )
    tracker.log_metrics(metrics)
    return StageResult(metrics=metrics, summary={"samples": len(out_rows)})


def _not_finite(res: ObjectScore) -> str | None:
    """Why a scorer's result cannot be recorded (its score or a detail number is NaN or
    infinite), or None: such a sample is counted as failed, never written as a number."""
    bad = [f"{k}={v}" for k, v in {"score": res.score, **res.detail}.items()
           if isinstance(v, float) and not math.isfinite(v)]
    return f"scorer returned a value that is not a finite number: {', '.join(bad)}" if bad else None


def _metrics(rows: list[ScoredSample]) -> dict[str, float]:
    valid = [r.score for r in rows if r.valid]
    detail_sum = lambda key: float(sum(r.detail.get(key, 0) for r in rows if r.valid))
    return {
        "score/samples": float(len(rows)),
        "score/failed": float(len(rows) - len(valid)),
        "score/mean": float(sum(valid) / len(valid)) if valid else float("nan"),
        "score/max": float(max(valid)) if valid else float("nan"),
        "score/fallback_pairs": detail_sum("fallback_pairs"),
        "score/non_watertight_parts": detail_sum("non_watertight_parts"),
    }

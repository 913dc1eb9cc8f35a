"""The scorer protocol, the per-output result, and the table of scorers by name.

Every scorer has one call signature, `score_files(paths) -> list[ObjectScore]`, one
result per path in order. A scorer never raises for one bad output: it returns a
`failed` result with the reason, and the caller counts it. Heavy imports happen inside
the scorer's functions, so looking a scorer up is cheap.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol


@dataclasses.dataclass(frozen=True)
class ObjectScore:
    """The score of one output. `score` is None exactly when `status` is "failed"."""

    score: float | None
    detail: dict[str, float | int] = dataclasses.field(default_factory=dict)
    status: Literal["ok", "failed"] = "ok"
    error: str | None = None

    def __post_init__(self) -> None:
        if (self.status == "ok") != (self.score is not None):
            raise ValueError(f"ObjectScore: status {self.status!r} with score {self.score!r}")

    @classmethod
    def failed(cls, error: str) -> ObjectScore:
        return cls(score=None, status="failed", error=error)


class Scorer(Protocol):
    """What a stage needs from a scorer."""

    name: str
    higher_is_better: bool

    def score_files(self, paths: list[Path]) -> list[ObjectScore]: ...


def _penetration(cfg: dict[str, Any]) -> Scorer:
    from genalign.config.score import PenetrationConfig
    from genalign.scorers.penetration import PenetrationScorer

    return PenetrationScorer(PenetrationConfig.from_dict(cfg))


def _mllm_judge(cfg: dict[str, Any]) -> Scorer:
    from genalign.scorers.mllm_judge import MLLMJudge

    return MLLMJudge.from_dict(cfg)


SCORERS: dict[str, Callable[[dict[str, Any]], Scorer]] = {
    "penetration": _penetration,
    "mllm-judge": _mllm_judge,
}


def get_scorer(name: str, cfg: dict[str, Any] | None = None) -> Scorer:
    """Build the scorer called `name` from its config dict (strict: unknown keys raise)."""
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; valid scorers are {sorted(SCORERS)}")
    return SCORERS[name](cfg or {})

"""The scorer protocol and the per-output result (the table of scorers by name is
`SCORERS` in `genalign.scorers`).

Every scorer has one call signature, `score_files(paths) -> list[ObjectScore]`, one
result per path in order. A scorer never raises for one bad output: it returns a
`failed` result with the reason, and the caller counts it. Heavy imports happen inside
the scorer's functions, so looking a scorer up is cheap.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, Protocol


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

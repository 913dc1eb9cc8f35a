"""Scorers: turn a generated output into a number (and a JSON detail) for preference mining.

Look one up by name with `get_scorer(name, cfg_dict)` in the table `SCORERS`. The
protocol and the result type are in `genalign.scorers.base`, which the scorer modules
import; the table imports them only inside its builders, so there is no cycle and
looking a scorer up imports no scorer's dependencies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from genalign.scorers.base import ObjectScore, Scorer


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


__all__ = ["SCORERS", "ObjectScore", "Scorer", "get_scorer"]

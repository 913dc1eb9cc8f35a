"""Configuration of pair mining (`genalign.pairs.mine_pairs`): which two samples make a pair."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from genalign.config.base import Config, check_range, field

STRATEGIES = ("best_vs_worst", "threshold")


@dataclasses.dataclass(frozen=True)
class MinePairsConfig(Config):
    """How preference pairs are mined from the scored samples of each condition."""

    # Self-Rewarding LMs (Yuan et al., 2024, §2.3) and iterative on-policy DPO pick the
    # highest- and lowest-scored of the N samples of a prompt: one pair per condition.
    strategy: Literal["best_vs_worst", "threshold"] = field(
        "best_vs_worst",
        help="best_vs_worst: one pair per condition, best sample vs worst. threshold: "
        "every (good, bad) combination, good = score past tau_good, bad = past tau_bad.",
    )
    # The first pipeline's feedback, inter-part penetration volume, is lower-is-better.
    higher_is_better: bool = field(
        False, help="Direction of the score: true for rewards, false for costs (penetration)."
    )
    # DSO (Li et al., 2025) labels a generation by which side of a physical-soundness
    # threshold its simulation metric falls and pairs a good one with a bad one of the same
    # image; the thresholds depend on the scorer, so there is no default.
    tau_good: float | None = field(
        None,
        help="threshold strategy: a winner scores <= tau_good (lower is better) or >= "
        "tau_good (higher is better).",
    )
    tau_bad: float | None = field(
        None,
        help="threshold strategy: a loser scores >= tau_bad (lower is better) or <= "
        "tau_bad (higher is better).",
    )
    # None = every (good, bad) combination, as DSO uses all of them.
    max_pairs_per_condition: int | None = field(
        None,
        help="threshold strategy: at most this many pairs per condition (a seeded random "
        "subset of the combinations); null keeps all.",
    )
    # 0: only exact ties are dropped, as in Self-Rewarding LMs.
    min_gap: float = field(
        0.0, help="Pairs whose |chosen_score - rejected_score| < min_gap are dropped (or weak)."
    )
    keep_weak: bool = field(
        False, help="Keep pairs below min_gap, flagged weak=true, instead of dropping them."
    )
    # Ranking only part of the N samples would make "worst" mean "worst survivor"; dropping
    # the condition keeps every pair's meaning the same (failures are counted separately).
    require_all_valid: bool = field(
        True,
        help="Use only conditions whose every sample is ok and scored; false ranks the "
        "valid samples of each condition and skips the rest.",
    )
    # e.g. "num_parts" for part-dpo: a pair of objects with different part counts pairs
    # latents of different shapes.
    match_key: str | None = field(
        None,
        help="Key of sample.output that must be equal inside a pair; a mismatch drops the "
        "pair and is counted as mismatched_<key>.",
    )
    similar_key: str | None = field(
        None,
        help="Optional numeric key of the score detail (e.g. 'total_volume') on which chosen and "
        "rejected must agree within similar_tolerance, so that a pair prefers what the score "
        "measures rather than a side effect the score rewards (smaller parts penetrate less).",
    )
    # 0.1: within 10%, the tolerance the evaluation guard allows (EvaluatePartsConfig).
    similar_tolerance: float = field(
        0.1, help="Relative tolerance |a - b| / max(|a|, |b|) on similar_key inside a pair."
    )
    seed: int = field(0, help="Seed of the subset drawn when max_pairs_per_condition caps.")
    # Iterative pipelines: a round whose questions all tie adds no pairs and the run goes
    # on with the pairs of earlier rounds; a single round with no pairs has nothing to train.
    allow_empty: bool = field(
        False,
        help="When no condition yields a pair, write an empty pairs artifact (counted, with "
        "the reasons) instead of failing with NoPairsError.",
    )

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy: {self.strategy!r} is not one of {list(STRATEGIES)}")
        if not math.isfinite(self.min_gap) or self.min_gap < 0:
            raise ValueError(f"min_gap: expected a finite number >= 0, got {self.min_gap!r}")
        if self.match_key is not None and not self.match_key:
            raise ValueError("match_key: expected a non-empty key name or null")
        if self.similar_key is not None and not self.similar_key:
            raise ValueError("similar_key: expected a non-empty key name or null")
        check_range("similar_tolerance", self.similar_tolerance, ge=0)
        if self.strategy == "threshold":
            if self.tau_good is None or self.tau_bad is None:
                raise ValueError("strategy 'threshold' needs both tau_good and tau_bad")
            for name in ("tau_good", "tau_bad"):
                if not math.isfinite(getattr(self, name)):
                    raise ValueError(f"{name}: expected a finite number, got {getattr(self, name)}")
            if self.higher_is_better and not self.tau_good > self.tau_bad:
                raise ValueError(
                    f"higher_is_better=true needs tau_good > tau_bad, got tau_good="
                    f"{self.tau_good} and tau_bad={self.tau_bad}"
                )
            if not self.higher_is_better and not self.tau_good < self.tau_bad:
                raise ValueError(
                    f"higher_is_better=false needs tau_good < tau_bad, got tau_good="
                    f"{self.tau_good} and tau_bad={self.tau_bad}"
                )
            if self.max_pairs_per_condition is not None and self.max_pairs_per_condition < 1:
                raise ValueError(
                    f"max_pairs_per_condition: expected an integer >= 1 or null, got "
                    f"{self.max_pairs_per_condition}"
                )
        else:
            given = [
                name
                for name in ("tau_good", "tau_bad", "max_pairs_per_condition")
                if getattr(self, name) is not None
            ]
            if given:
                raise ValueError(f"{given} apply to strategy 'threshold' only; set them to null")


@dataclasses.dataclass(frozen=True)
class AccumulatePairsConfig(Config):
    """The training pairs of iteration i: the pairs of iterations 0..i."""

    window: int | None = field(
        None,
        help="Keep the pairs of the last `window` iterations only; null keeps all of 0..i.",
    )

    def __post_init__(self) -> None:
        if self.window is not None and self.window < 1:
            raise ValueError(f"window: expected an integer >= 1 or null, got {self.window}")

"""Pair mining: turn the scored samples of each condition into preference pairs.

Samples are grouped by condition (in order of first appearance). A condition yields
pairs when its samples can be ranked; every reason it or a candidate pair is dropped is
counted, so a run that mines nothing says why:

    conditions dropped (each counted once, in this order of checks)
      invalid_score     require_all_valid and some sample failed or has score None
      too_few_samples   fewer than 2 valid samples
      ties              all valid samples have the same score
      no_winner         threshold: no sample scores past tau_good
      no_loser          threshold: no sample scores past tau_bad
    candidate pairs dropped
      mismatched_<key>  sample.output[match_key] differs between the two samples
      below_min_gap     |gap| < min_gap and keep_weak is false
      capped            beyond max_pairs_per_condition
    totals
      conditions, samples, invalid_samples (not ok or unscored), conditions_with_pairs,
      pairs (all kept), weak (kept pairs below min_gap)

Strategies:
- best_vs_worst (Self-Rewarding LMs, Yuan et al. 2024; iterative on-policy DPO): one pair
  per condition, the best sample against the worst; ties between equal scores go to the
  lowest sample_id, so the result does not depend on the input order.
- threshold (DSO, Li et al. 2025): winners are samples past tau_good, losers past tau_bad;
  every (winner, loser) combination, optionally capped per condition by a seeded subset.

A sample with status "failed" never enters a pair: it has no output to train on. A policy
whose bad outputs should be trained against (a malformed plan) records them as "ok" with a
low score instead.

A shard that yields no pairs is not an error here; the caller decides.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import statistics
from pathlib import Path
from typing import Any

from genalign.artifacts import link_or_copy
from genalign.config.pairs import MinePairsConfig
from genalign.records import Pair, ScoredSample, write_jsonl

CONDITION_REASONS = ("invalid_score", "too_few_samples", "ties", "no_winner", "no_loser")


@dataclasses.dataclass(frozen=True)
class MiningResult:
    """The mined pairs and the counts that explain them (see the module docstring)."""

    pairs: list[Pair]
    counts: dict[str, int]


def pair_id(cond_id: str, chosen: str, rejected: str) -> str:
    """The deterministic id of a pair: the same two samples give the same id in every run."""
    return f"{cond_id}:{chosen}>{rejected}"


def mine_pairs(scored: list[ScoredSample], cfg: MinePairsConfig, *, iteration: int = 0) -> MiningResult:
    """Mine preference pairs from `scored`; pairs carry `iteration` (on-policy round)."""
    groups: dict[str, list[ScoredSample]] = {}
    seen: set[str] = set()
    for s in scored:
        if s.sample_id in seen:
            raise ValueError(f"sample_id {s.sample_id!r} appears twice in the scored samples")
        seen.add(s.sample_id)
        groups.setdefault(s.cond_id, []).append(s)
    if cfg.similar_key is not None:
        for s in scored:
            if s.valid and not isinstance(s.detail.get(cfg.similar_key), (int, float)):
                raise ValueError(
                    f"sample {s.sample_id!r}: detail has no number {cfg.similar_key!r} "
                    f"(MinePairsConfig.similar_key); detail keys are {sorted(s.detail)}"
                )
    if cfg.match_key is not None:
        for s in scored:
            if s.valid and not (isinstance(s.output, dict) and cfg.match_key in s.output):
                raise ValueError(
                    f"sample {s.sample_id!r}: output has no key {cfg.match_key!r} "
                    f"(MinePairsConfig.match_key); output is {s.output!r}"
                )

    counts = {
        "conditions": len(groups),
        "samples": len(scored),
        "invalid_samples": sum(not s.valid for s in scored),
        **{reason: 0 for reason in CONDITION_REASONS},
        **({f"mismatched_{cfg.match_key}": 0} if cfg.match_key is not None else {}),
        **({f"dissimilar_{cfg.similar_key}": 0} if cfg.similar_key is not None else {}),
        "below_min_gap": 0,
        "capped": 0,
        "conditions_with_pairs": 0,
        "pairs": 0,
        "weak": 0,
    }
    pairs: list[Pair] = []
    for cond_id, group in groups.items():
        valid = [s for s in group if s.valid]
        if cfg.require_all_valid and len(valid) < len(group):
            counts["invalid_score"] += 1
            continue
        if len(valid) < 2:
            counts["too_few_samples"] += 1
            continue
        if len({s.score for s in valid}) == 1:
            counts["ties"] += 1
            continue
        if cfg.strategy == "best_vs_worst" and cfg.similar_key is not None:
            # the largest gap among the pairs that agree on similar_key
            ranked = sorted(
                ((a, b) for a in valid for b in valid if _badness(a, cfg) < _badness(b, cfg)),
                key=lambda ab: (-abs(ab[0].score - ab[1].score), ab[0].sample_id, ab[1].sample_id),
            )
            similar = [ab for ab in ranked if _similar(*ab, cfg)]
            if not similar:
                counts[f"dissimilar_{cfg.similar_key}"] += 1
                continue
            candidates = similar[:1]
        elif cfg.strategy == "best_vs_worst":
            candidates = [_best_vs_worst(valid, cfg)]
        else:
            winners = [s for s in valid if _is_good(s, cfg)]
            losers = [s for s in valid if _is_bad(s, cfg)]
            if not winners:
                counts["no_winner"] += 1
                continue
            if not losers:
                counts["no_loser"] += 1
                continue
            # Best winner and worst loser first; ids break ties (determinism).
            winners.sort(key=lambda s: (_badness(s, cfg), s.sample_id))
            losers.sort(key=lambda s: (-_badness(s, cfg), s.sample_id))
            candidates = list(itertools.product(winners, losers))
            if cfg.similar_key is not None:
                similar = [ab for ab in candidates if _similar(*ab, cfg)]
                counts[f"dissimilar_{cfg.similar_key}"] += len(candidates) - len(similar)
                candidates = similar

        kept = []
        for chosen, rejected in candidates:
            if cfg.match_key is not None and (
                chosen.output[cfg.match_key] != rejected.output[cfg.match_key]
            ):
                counts[f"mismatched_{cfg.match_key}"] += 1
                continue
            gap = abs(chosen.score - rejected.score)
            weak = gap < cfg.min_gap
            if weak and not cfg.keep_weak:
                counts["below_min_gap"] += 1
                continue
            kept.append(
                Pair(
                    pair_id=pair_id(cond_id, chosen.sample_id, rejected.sample_id),
                    cond_id=cond_id,
                    chosen=chosen.sample_id,
                    rejected=rejected.sample_id,
                    chosen_score=chosen.score,
                    rejected_score=rejected.score,
                    gap=gap,
                    iteration=iteration,
                    weak=weak,
                )
            )
        cap = cfg.max_pairs_per_condition
        if cap is not None and len(kept) > cap:
            # A random subset rather than the largest gaps: the largest gaps all reuse the
            # single best and worst samples. Seeded per condition (a str seed hashes
            # stably), so a condition's pairs do not depend on which shard it is in.
            rng = random.Random(f"{cfg.seed}:{cond_id}")
            keep = sorted(rng.sample(range(len(kept)), cap))
            counts["capped"] += len(kept) - cap
            kept = [kept[i] for i in keep]
        if kept:
            counts["conditions_with_pairs"] += 1
        counts["weak"] += sum(p.weak for p in kept)
        pairs.extend(kept)
    counts["pairs"] = len(pairs)
    return MiningResult(pairs=pairs, counts=counts)


def _badness(s: ScoredSample, cfg: MinePairsConfig) -> float:
    """The score oriented so that smaller is better."""
    return -s.score if cfg.higher_is_better else s.score


def _best_vs_worst(
    valid: list[ScoredSample], cfg: MinePairsConfig
) -> tuple[ScoredSample, ScoredSample]:
    best = min(valid, key=lambda s: (_badness(s, cfg), s.sample_id))
    worst = min(valid, key=lambda s: (-_badness(s, cfg), s.sample_id))
    return best, worst


def _similar(a: ScoredSample, b: ScoredSample, cfg: MinePairsConfig) -> bool:
    x, y = a.detail[cfg.similar_key], b.detail[cfg.similar_key]
    scale = max(abs(x), abs(y))
    return scale == 0 or abs(x - y) / scale <= cfg.similar_tolerance


def _is_good(s: ScoredSample, cfg: MinePairsConfig) -> bool:
    return s.score >= cfg.tau_good if cfg.higher_is_better else s.score <= cfg.tau_good


def _is_bad(s: ScoredSample, cfg: MinePairsConfig) -> bool:
    return s.score <= cfg.tau_bad if cfg.higher_is_better else s.score >= cfg.tau_bad


def accumulate(pair_sets: list[list[Pair]]) -> list[Pair]:
    """Union of the pairs of iterations 0..i for iterative on-policy training.

    Each pair keeps its `iteration`. A pair_id seen again is replaced by the later one,
    which takes the later position; otherwise the order is that of `pair_sets`.
    """
    merged: dict[str, Pair] = {}
    for pairs in pair_sets:
        for p in pairs:
            merged.pop(p.pair_id, None)
            merged[p.pair_id] = p
    return list(merged.values())


def summarize(result: MiningResult) -> dict[str, Any]:
    """Counts and the gap distribution of a mining result, for reports and tracking.

    {"counts": {...}, "gap": {"min", "median", "mean", "max"} or None when there are no
    pairs, "weak_fraction": float or None}.
    """
    gaps = [p.gap for p in result.pairs]
    return {
        "counts": dict(result.counts),
        "gap": (
            {
                "min": min(gaps),
                "median": statistics.median(gaps),
                "mean": statistics.fmean(gaps),
                "max": max(gaps),
            }
            if gaps
            else None
        ),
        "weak_fraction": (sum(p.weak for p in result.pairs) / len(gaps)) if gaps else None,
    }


class NoPairsError(ValueError):
    """No condition produced a pair."""


# ------------------------------------------------------------ pairs artifacts
# A pairs artifact is self-contained for training: `pairs.jsonl`, the rows of the
# samples it names (`samples.jsonl`) and the files those rows name; for text policies
# also trl's and Qwen-VL-Series-Finetune's formats.


def with_texts(pair: Pair, chosen: ScoredSample, rejected: ScoredSample) -> Pair:
    """A text policy's pair with trl's fields in `extra` (prompt, texts, images)."""
    if "prompt" not in chosen.meta:
        raise ValueError(f"sample {chosen.sample_id}: a text sample without meta.prompt cannot make a trl pair")
    return dataclasses.replace(pair, extra={
        "prompt": chosen.meta["prompt"], "images": list(chosen.meta.get("images", [])),
        "chosen_text": chosen.output, "rejected_text": rejected.output,
    })


def copy_samples(pairs: list[Pair], source: dict[str, tuple[Path, ScoredSample]], out: Path) -> list[ScoredSample]:
    """The sample rows the pairs name, in order of first use, with their files linked into
    `out` from the artifact each came from (`source`: sample id -> (directory, row))."""
    used = []
    for sid in dict.fromkeys(s for p in pairs for s in (p.chosen, p.rejected)):
        directory, row = source[sid]
        used.append(row)
        for rel in row.files.values():
            link_or_copy(directory / rel, out / rel)
    return used


def write_pair_files(out: Path, pairs: list[Pair], samples: list[ScoredSample]) -> None:
    """pairs.jsonl and samples.jsonl; for text pairs also pairs.trl.jsonl (trl's DPO rows)
    and pairs.qwen.json (Qwen-VL-Series-Finetune's DPO format), images relative to `out`."""
    from genalign.data.planner_pairs import planner_pairs, write_qwen_json, write_trl_jsonl

    write_jsonl(out / "pairs.jsonl", pairs)
    write_jsonl(out / "samples.jsonl", samples)
    if pairs and all("chosen_text" in p.extra for p in pairs):
        resolved = planner_pairs(pairs)
        write_trl_jsonl(out / "pairs.trl.jsonl", resolved)
        write_qwen_json(out / "pairs.qwen.json", resolved)


def score_stats(shards: list[tuple[Path, list[ScoredSample]]]) -> dict[str, float] | None:
    """The distribution of the valid scores the pairs were mined from (for reports)."""
    values = [r.score for _, rows in shards for r in rows if r.score is not None]
    if not values:
        return None
    return {"n": len(values), "mean": statistics.fmean(values), "median": statistics.median(values),
            "min": min(values), "max": max(values)}


def pair_file_names(out: Path) -> list[str]:
    names = ["pairs.jsonl", "samples.jsonl", "pairs.trl.jsonl", "pairs.qwen.json"]
    return [n for n in names if (out / n).is_file()]

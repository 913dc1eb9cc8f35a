"""Pair mining worked by hand: both strategies, both directions, every drop reason."""

from __future__ import annotations

import dataclasses
import random

import pytest

from genalign.config.base import ConfigError
from genalign.config.pairs import MinePairsConfig
from genalign.pairs import MiningResult, accumulate, mine_pairs, summarize
from genalign.records import Pair, ScoredSample


def s(
    sid: str, score: float | None, cond: str = "c0", *, status: str = "ok", parts: int = 3
) -> ScoredSample:
    return ScoredSample(
        sample_id=sid,
        cond_id=cond,
        seed=0,
        iteration=0,
        output={"num_parts": parts},
        status=status,
        score=score,
        scorer="penetration",
    )


def ids(result: MiningResult) -> list[tuple[str, str]]:
    return [(p.chosen, p.rejected) for p in result.pairs]


LOW = MinePairsConfig()  # best_vs_worst, lower is better
HIGH = MinePairsConfig(higher_is_better=True)


# ---------------------------------------------------------------- best vs worst


def test_best_vs_worst_lower_is_better():
    r = mine_pairs([s("a", 0.3), s("b", 0.1), s("c", 0.7)], LOW, iteration=2)
    (p,) = r.pairs
    # best = lowest penetration b (0.1), worst = c (0.7); gap = 0.7 - 0.1 = 0.6
    assert (p.pair_id, p.chosen, p.rejected) == ("c0:b>c", "b", "c")
    assert (p.chosen_score, p.rejected_score, p.iteration, p.weak) == (0.1, 0.7, 2, False)
    assert p.gap == pytest.approx(0.6)
    assert r.counts["pairs"] == 1 and r.counts["conditions_with_pairs"] == 1


def test_best_vs_worst_higher_is_better():
    r = mine_pairs([s("a", 3.0), s("b", 1.0), s("c", 7.0)], HIGH)
    assert ids(r) == [("c", "b")]
    assert r.pairs[0].gap == 6.0  # positive whichever direction


def test_ties_broken_by_lowest_sample_id_whatever_the_input_order():
    rows = [s("d", 0.5), s("b", 0.1), s("c", 0.5), s("a", 0.1)]
    for perm in (rows, rows[::-1], [rows[2], rows[0], rows[3], rows[1]]):
        assert ids(mine_pairs(perm, LOW)) == [("a", "c")]
        assert ids(mine_pairs(perm, HIGH)) == [("c", "a")]


def test_all_tied_condition():
    r = mine_pairs([s("a", 0.2), s("b", 0.2), s("c", 0.2)], LOW)
    assert r.pairs == [] and r.counts["ties"] == 1


def test_too_few_samples():
    r = mine_pairs([s("a", 0.2)], LOW)
    assert r.pairs == [] and r.counts["too_few_samples"] == 1


def test_invalid_score_drops_the_condition_by_default():
    rows = [s("a", 0.0), s("b", None, status="failed"), s("c", 0.4)]
    r = mine_pairs(rows, LOW)
    assert r.pairs == []
    assert r.counts["invalid_score"] == 1 and r.counts["invalid_samples"] == 1


def test_failed_status_with_a_score_is_invalid_too():
    rows = [s("a", 5.0), s("b", -1.0, status="failed"), s("c", 8.0)]
    assert mine_pairs(rows, HIGH).counts["invalid_score"] == 1


def test_require_all_valid_false_ranks_the_valid_samples():
    rows = [s("a", 0.0), s("b", None, status="failed"), s("c", 0.4), s("d", None)]
    r = mine_pairs(rows, MinePairsConfig(require_all_valid=False))
    assert ids(r) == [("a", "c")]
    assert r.counts["invalid_score"] == 0 and r.counts["invalid_samples"] == 2
    # Only one valid sample left -> too few.
    r = mine_pairs([s("a", 0.0), s("b", None)], MinePairsConfig(require_all_valid=False))
    assert r.counts["too_few_samples"] == 1


def test_min_gap_drops_or_flags_weak():
    rows = [s("a", 0.25), s("b", 0.5)]  # gap 0.25, exact in binary
    r = mine_pairs(rows, MinePairsConfig(min_gap=0.3))
    assert r.pairs == [] and r.counts["below_min_gap"] == 1 and r.counts["weak"] == 0
    r = mine_pairs(rows, MinePairsConfig(min_gap=0.3, keep_weak=True))
    assert ids(r) == [("a", "b")] and r.pairs[0].weak
    assert r.counts["weak"] == 1 and r.counts["below_min_gap"] == 0 and r.counts["pairs"] == 1
    r = mine_pairs(rows, MinePairsConfig(min_gap=0.25))  # gap == min_gap is not below it
    assert ids(r) == [("a", "b")] and not r.pairs[0].weak


def test_match_key_mismatch_drops_the_pair():
    cfg = MinePairsConfig(match_key="num_parts")
    r = mine_pairs([s("a", 0.0, parts=3), s("b", 0.5, parts=4)], cfg)
    assert r.pairs == [] and r.counts["mismatched_num_parts"] == 1
    r = mine_pairs([s("a", 0.0, parts=3), s("b", 0.5, parts=3)], cfg)
    assert ids(r) == [("a", "b")] and r.counts["mismatched_num_parts"] == 0
    assert "mismatched_num_parts" not in mine_pairs([], LOW).counts


def test_match_key_missing_from_output_is_an_error():
    row = ScoredSample(
        sample_id="x",
        cond_id="c0",
        seed=0,
        iteration=0,
        output="text",
        status="ok",
        score=1.0,
        scorer="judge",
    )
    with pytest.raises(ValueError, match=r"sample 'x': output has no key 'num_parts'"):
        mine_pairs([row, s("a", 0.0)], MinePairsConfig(match_key="num_parts"))


def test_duplicate_sample_ids_are_an_error():
    with pytest.raises(ValueError, match="'a' appears twice"):
        mine_pairs([s("a", 0.0), s("a", 0.1, cond="c1")], LOW)


# ---------------------------------------------------------------- threshold (DSO-style)


THR_LOW = MinePairsConfig(strategy="threshold", tau_good=0.0, tau_bad=0.1)


def test_threshold_lower_is_better_all_combinations():
    rows = [s("a", 0.0), s("c", 0.05), s("d", 0.2), s("b", 0.0), s("e", 0.3)]
    r = mine_pairs(rows, THR_LOW)
    # winners (<= 0.0): a, b; losers (>= 0.1), worst first: e (0.3), d (0.2); c is neither.
    assert ids(r) == [("a", "e"), ("a", "d"), ("b", "e"), ("b", "d")]
    assert [p.gap for p in r.pairs] == pytest.approx([0.3, 0.2, 0.3, 0.2])
    assert r.counts["pairs"] == 4 and r.counts["conditions_with_pairs"] == 1


def test_threshold_higher_is_better():
    cfg = MinePairsConfig(strategy="threshold", higher_is_better=True, tau_good=8.0, tau_bad=3.0)
    rows = [s("a", 9.0), s("b", 5.0), s("c", 2.0), s("d", 8.0), s("e", 3.0)]
    # winners (>= 8), best first: a (9), d (8); losers (<= 3), worst first: c (2), e (3)
    assert ids(mine_pairs(rows, cfg)) == [("a", "c"), ("a", "e"), ("d", "c"), ("d", "e")]


def test_threshold_no_winner_and_no_loser():
    r = mine_pairs([s("a", 0.05), s("b", 0.2)], THR_LOW)
    assert r.pairs == [] and r.counts["no_winner"] == 1
    r = mine_pairs([s("a", 0.0), s("b", 0.05)], THR_LOW)
    assert r.pairs == [] and r.counts["no_loser"] == 1
    # Neither side: counted once, as no_winner (conditions are counted under one reason).
    r = mine_pairs([s("a", 0.05), s("b", 0.06)], THR_LOW)
    assert (r.counts["no_winner"], r.counts["no_loser"]) == (1, 0)


def test_threshold_cap_is_a_seeded_deterministic_subset():
    rows = [s(f"w{i}", 0.0 - i * 0.01) for i in range(3)] + [s(f"l{i}", 0.5 + i) for i in range(3)]
    full = mine_pairs(rows, THR_LOW)
    assert len(full.pairs) == 9
    cfg = MinePairsConfig(
        strategy="threshold", tau_good=0.0, tau_bad=0.1, max_pairs_per_condition=4, seed=3
    )
    a, b = mine_pairs(rows, cfg), mine_pairs(list(reversed(rows)), cfg)
    assert a.pairs == b.pairs and len(a.pairs) == 4
    assert all(p in full.pairs for p in a.pairs)
    assert a.counts["capped"] == 5 and a.counts["pairs"] == 4


def test_threshold_with_weak_and_mismatch():
    cfg = MinePairsConfig(
        strategy="threshold",
        tau_good=0.0,
        tau_bad=0.1,
        min_gap=0.25,
        keep_weak=True,
        match_key="num_parts",
    )
    rows = [s("a", 0.0), s("x", 0.2, parts=5), s("y", 0.2), s("z", 0.4)]
    r = mine_pairs(rows, cfg)
    assert ids(r) == [("a", "z"), ("a", "y")]
    assert [p.weak for p in r.pairs] == [False, True]
    assert r.counts["mismatched_num_parts"] == 1 and r.counts["weak"] == 1


# ---------------------------------------------------------------- counts and determinism


def test_counts_over_a_mixed_shard():
    rows = [
        s("a0", 0.0, "A"),
        s("a1", 0.5, "A"),  # pair
        s("b0", 0.0, "B"),
        s("b1", None, "B", status="failed"),  # invalid_score
        s("c0", 0.1, "C"),  # too_few_samples
        s("d0", 0.2, "D"),
        s("d1", 0.2, "D"),  # ties
        s("e0", 0.0, "E", parts=2),
        s("e1", 0.3, "E"),  # mismatched
        s("f0", 0.0, "F"),
        s("f1", 0.01, "F"),  # below_min_gap
    ]
    r = mine_pairs(rows, MinePairsConfig(min_gap=0.05, match_key="num_parts"))
    assert r.counts == {
        "conditions": 6,
        "samples": 11,
        "invalid_samples": 1,
        "invalid_score": 1,
        "too_few_samples": 1,
        "ties": 1,
        "no_winner": 0,
        "no_loser": 0,
        "mismatched_num_parts": 1,
        "below_min_gap": 1,
        "capped": 0,
        "conditions_with_pairs": 1,
        "pairs": 1,
        "weak": 0,
    }
    assert [p.pair_id for p in r.pairs] == ["A:a0>a1"]


def test_condition_order_is_first_appearance_and_results_repeat():
    rows = [s("z1", 0.4, "Z"), s("a1", 0.1, "A"), s("z2", 0.0, "Z"), s("a2", 0.9, "A")]
    r1, r2 = mine_pairs(rows, LOW), mine_pairs(rows, LOW)
    assert r1 == r2
    assert [p.pair_id for p in r1.pairs] == ["Z:z2>z1", "A:a1>a2"]


def test_within_condition_permutation_does_not_change_pairs():
    rng = random.Random(0)
    rows = [s(f"s{i}", round(rng.random(), 3)) for i in range(8)]
    ref = mine_pairs(rows, THR_LOW.replace(tau_good=0.3, tau_bad=0.6))
    for _ in range(5):
        rng.shuffle(rows)
        assert mine_pairs(rows, THR_LOW.replace(tau_good=0.3, tau_bad=0.6)) == ref


def test_no_pairs_is_not_an_error():
    r = mine_pairs([], LOW)
    assert r.pairs == [] and r.counts["conditions"] == 0 and r.counts["pairs"] == 0
    assert summarize(r)["gap"] is None


# ---------------------------------------------------------------- accumulate, summarize


def _p(pid: str, it: int, gap: float = 1.0, weak: bool = False) -> Pair:
    chosen, rejected = pid.split(":")[1].split(">")
    return Pair(
        pair_id=pid,
        cond_id=pid.split(":")[0],
        chosen=chosen,
        rejected=rejected,
        chosen_score=0.0,
        rejected_score=gap,
        gap=gap,
        iteration=it,
        weak=weak,
    )


def test_accumulate_keeps_iterations_and_later_wins():
    it0 = [_p("c:a>b", 0), _p("c:x>y", 0)]
    it1 = [_p("c:x>y", 1, gap=2.0), _p("d:a>b", 1)]
    out = accumulate([it0, it1])
    assert [(p.pair_id, p.iteration) for p in out] == [("c:a>b", 0), ("c:x>y", 1), ("d:a>b", 1)]
    assert out[1].gap == 2.0
    assert accumulate([]) == [] and accumulate([it0]) == it0


def test_summarize_gap_distribution():
    pairs = [_p("c:a>b", 0, 0.6), _p("c:x>y", 0, 0.2, weak=True), _p("d:a>b", 0, 0.4)]
    out = summarize(MiningResult(pairs=pairs, counts={"pairs": 3}))
    assert out["counts"] == {"pairs": 3}
    assert out["gap"] == pytest.approx({"min": 0.2, "median": 0.4, "mean": 0.4, "max": 0.6})
    assert out["weak_fraction"] == pytest.approx(1 / 3)


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    "d, message",
    [
        ({"strategy": "threshold"}, "needs both tau_good and tau_bad"),
        ({"strategy": "threshold", "tau_good": 0.5, "tau_bad": 0.1}, "needs tau_good < tau_bad"),
        (
            {"strategy": "threshold", "higher_is_better": True, "tau_good": 3, "tau_bad": 8},
            "needs tau_good > tau_bad",
        ),
        (
            {"strategy": "threshold", "tau_good": 0, "tau_bad": 1, "max_pairs_per_condition": 0},
            "max_pairs_per_condition",
        ),
        ({"tau_good": 0.1}, "apply to strategy 'threshold' only"),
        ({"min_gap": -0.1}, "min_gap"),
        ({"strategy": "random"}, "is not one of"),
        ({"match_key": ""}, "match_key"),
        ({"min_gaps": 0.1}, "unknown key"),
    ],
)
def test_config_checks(d, message):
    with pytest.raises(ConfigError, match=message):
        MinePairsConfig.from_dict(d)


def test_config_defaults_and_help():
    cfg = MinePairsConfig()
    assert (cfg.strategy, cfg.higher_is_better, cfg.require_all_valid, cfg.min_gap) == (
        "best_vs_worst",
        False,
        True,
        0.0,
    )
    assert all(f.metadata["help"] for f in dataclasses.fields(MinePairsConfig))


# ---------------------------------------------------------------- similar_key


def v(sid: str, score: float, volume: float, cond: str = "c0") -> ScoredSample:
    return dataclasses.replace(s(sid, score, cond), detail={"total_volume": volume})


def test_similar_key_picks_the_largest_gap_among_like_sized_samples():
    # best-vs-worst would pair a (0.0, volume 0.5: shrunk) with d (0.9, volume 1.0).
    # Within 10% of each other: (b, d) gap 0.7 [1.0 vs 1.0], (c, d) gap 0.4, (b, c) gap 0.3.
    rows = [v("a", 0.0, 0.5), v("b", 0.2, 1.0), v("c", 0.5, 0.95), v("d", 0.9, 1.0)]
    cfg = MinePairsConfig(similar_key="total_volume", similar_tolerance=0.1)
    assert ids(mine_pairs(rows, cfg)) == [("b", "d")]
    assert ids(mine_pairs(rows, MinePairsConfig())) == [("a", "d")]


def test_similar_key_counts_conditions_without_a_similar_pair():
    rows = [v("a", 0.0, 0.5), v("b", 0.9, 1.0), v("c", 0.1, 1.0, cond="c1"), v("d", 0.4, 1.05, cond="c1")]
    r = mine_pairs(rows, MinePairsConfig(similar_key="total_volume"))
    assert ids(r) == [("c", "d")]
    assert r.counts["dissimilar_total_volume"] == 1


def test_similar_key_with_thresholds_drops_dissimilar_combinations():
    rows = [v("a", 0.0, 0.5), v("b", 0.05, 1.0), v("c", 0.8, 1.0), v("d", 0.9, 1.02)]
    cfg = MinePairsConfig(strategy="threshold", tau_good=0.1, tau_bad=0.5, similar_key="total_volume")
    r = mine_pairs(rows, cfg)
    assert sorted(ids(r)) == [("b", "c"), ("b", "d")]
    assert r.counts["dissimilar_total_volume"] == 2


def test_similar_key_missing_from_detail_is_an_error():
    with pytest.raises(ValueError, match="detail has no number 'total_volume'"):
        mine_pairs([s("a", 0.1), s("b", 0.2)], MinePairsConfig(similar_key="total_volume"))

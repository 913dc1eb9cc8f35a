"""Planner evaluation: Wilson intervals, accuracy and plan metrics, figures, tables.

The planner's gate is the shared contract over the evaluate stage's specs
(tests/unit/test_evaluation_contract.py)."""

from __future__ import annotations

import pytest

from genalign.evaluation.planner import (
    accuracy_breakdown,
    iteration_figure,
    iteration_table,
    iterations_markdown,
    summarize_rows,
    type_figure,
    types_markdown,
    wilson_interval,
)
from genalign.evaluation.report import save_figure

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# An MMSI-Bench-like type name next to the synthetic ones: nothing may assume the set.
MMSI_TYPE = "Positional Relationship (Cam.-Obj.)"


def row(qtype, correct, *, score=1.0, revealed=True, malformed=False, instructions=2, i=0):
    return {
        "id": f"{qtype}-{i}",
        "question_type": qtype,
        "score": score,
        "revealed": revealed,
        "malformed": malformed,
        "instructions": instructions,
        "correct": correct,
    }


def rows_for(counts, *, revealed, malformed):
    """Rows with counts {type: (n, correct)}; the first `revealed` rows reveal, the last
    `malformed` rows are malformed (score -1, no instructions)."""
    out = []
    for qtype, (n, k) in counts.items():
        out += [row(qtype, j < k, i=j) for j in range(n)]
    for j, r in enumerate(out):
        r["revealed"] = j < revealed
        r["score"] = 1.0 if r["revealed"] else 0.5
        if j >= len(out) - malformed:
            r.update(score=-1.0, revealed=False, malformed=True, instructions=0)
    return out


def entry(label, iteration, rows):
    return {
        "label": label,
        "iteration": iteration,
        "metrics": summarize_rows(rows),
        "accuracy": accuracy_breakdown(rows),
    }


@pytest.fixture
def history():
    base = rows_for({"behind": (10, 5), MMSI_TYPE: (10, 4)}, revealed=6, malformed=2)
    it0 = rows_for({"behind": (10, 6), MMSI_TYPE: (10, 6)}, revealed=9, malformed=1)
    it1 = rows_for({"behind": (10, 8), MMSI_TYPE: (10, 7)}, revealed=12, malformed=1)
    return [entry("base", -1, base), entry("iter 0", 0, it0), entry("iter 1", 1, it1)]


# --- Wilson interval -------------------------------------------------------------------


def test_wilson_interval_hand_values():
    """8/10, z = 1.96 (z^2 = 3.8415): center = (0.8 + 0.19207) / 1.38415 = 0.71674,
    half = 1.96 / 1.38415 * sqrt(0.016 + 0.0096037) = 0.22658 -> (0.4902, 0.9433)."""
    lo, hi = wilson_interval(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)


def test_wilson_interval_edges():
    """At p = 0 the center equals the half width, so the interval is [0, z^2 / (n + z^2)];
    at p = 1 it is [n / (n + z^2), 1]: 3.8415 / 13.8415 = 0.2775, 10 / 13.8415 = 0.7225."""
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and round(hi, 4) == 0.2775
    lo, hi = wilson_interval(10, 10)
    # Exactly 1, not 1 - 1e-16: the estimate 1.0 stays inside its interval.
    assert round(lo, 4) == 0.7225 and hi == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_interval_rejects_impossible_counts():
    with pytest.raises(ValueError, match="11/10"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError):
        wilson_interval(-1, 10)


# --- accuracy and plan metrics ---------------------------------------------------------


def test_accuracy_breakdown_hand_table():
    """behind 2/3, left_of 0/2, MMSI type 1/1; overall 3/6 = 0.5 with Wilson interval
    center 0.5, half = 1.96 / 1.64025 * sqrt(0.25 / 6 + 3.8415 / 144) = 0.3124."""
    rows = [
        row("behind", True),
        row("left_of", False),
        row("behind", False),
        row(MMSI_TYPE, True),
        row("behind", True),
        row("left_of", False),
    ]
    acc = accuracy_breakdown(rows)
    overall = acc["overall"]
    assert (overall["n"], overall["correct"], overall["accuracy"]) == (6, 3, 0.5)
    assert [round(x, 4) for x in overall["ci95"]] == [0.1876, 0.8124]
    assert list(acc["by_type"]) == sorted(["behind", "left_of", MMSI_TYPE])
    assert acc["by_type"]["behind"]["correct"] == 2 and acc["by_type"]["behind"]["n"] == 3
    assert acc["by_type"]["behind"]["accuracy"] == pytest.approx(2 / 3)
    assert acc["by_type"]["left_of"]["accuracy"] == 0.0
    assert acc["by_type"][MMSI_TYPE]["ci95"] == list(wilson_interval(1, 1))


def test_summarize_rows_counts_malformed_and_empty():
    """Scores (1 + 0.5 - 1 + 0) / 4 = 0.125; the malformed plan's 0 instructions make it
    neither empty nor part of instructions_mean = (2 + 4 + 0) / 3 = 2."""
    rows = [
        row("behind", True, score=1.0, instructions=2),
        row("behind", False, score=0.5, instructions=4),
        row("above", False, score=-1.0, revealed=False, malformed=True, instructions=0),
        row("above", True, score=0.0, revealed=False, instructions=0),
    ]
    assert summarize_rows(rows) == {
        "score_mean": 0.125,
        "reveal_share": 0.5,
        "malformed_share": 0.25,
        "empty_share": 0.25,
        "instructions_mean": 2.0,
        "accuracy": 0.5,
        "n": 4.0,
    }


def test_summarize_rows_rejects_empty():
    with pytest.raises(ValueError, match="no rows"):
        summarize_rows([])


# --- figures ---------------------------------------------------------------------------


def test_iteration_figure(history, tmp_path):
    fig = iteration_figure(history)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["base", "0", "1"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["reveal share", "mean plan score", "answer accuracy (95% CI)"]
    # One dashed base line per series, at the base value (reveal share 6/20 = 0.3).
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 3 and dashed[0].get_ydata()[0] == pytest.approx(0.3)
    save_figure(fig, tmp_path / "iterations.png")
    data = (tmp_path / "iterations.png").read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_type_figure(history, tmp_path):
    fig = type_figure(history)
    ax = fig.axes[0]
    # Types sorted as strings, the capitalised MMSI name first; long names wrapped.
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert [t.replace("\n", " ") for t in ticks] == [MMSI_TYPE, "behind"]
    # The base's bars, then the last entry's; heights are the accuracies.
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([0.4, 0.5, 0.7, 0.8])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["base (n=20)", "iter 1 (n=20)"]
    save_figure(fig, tmp_path / "types.png")
    data = (tmp_path / "types.png").read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_type_figure_with_perfect_and_failed_types():
    """At 10/10 and 0/10 the CI ends exactly at the estimate: error bars of length 0, not
    -1e-16, which matplotlib would reject. A type only the last entry has gets one bar."""
    base = rows_for({"behind": (10, 0)}, revealed=0, malformed=0)
    last = rows_for({"behind": (10, 10), "above": (4, 2)}, revealed=0, malformed=0)
    fig = type_figure([entry("base", -1, base), entry("iter 0", 0, last)])
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights == pytest.approx([0.0, 0.5, 1.0])


def test_figures_need_a_base(history):
    with pytest.raises(ValueError, match="base entry"):
        iteration_figure(history[1:])


# --- tables ----------------------------------------------------------------------------


def test_iteration_table(history):
    lines = iteration_table(history).splitlines()
    assert lines[0].split()[:5] == ["model", "n", "score_mean", "reveal_share", "malformed_share"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    # base: 6 revealing (score 1), 12 at 0.5, 2 malformed (-1): (6 + 6 - 2) / 20 = 0.5;
    # accuracy 9/20 = 0.45 with Wilson interval [0.26, 0.66].
    assert lines[2].split() == ["base", "20", "0.500", "0.300", "0.100", "0.45", "[0.26,", "0.66]"]
    assert lines[3].startswith("iter 0") and lines[4].startswith("iter 1")
    # iter 1: (12 + 3.5 - 1) / 20 = 0.725; accuracy 15/20 = 0.75.
    assert lines[5] == (
        "iter 1 vs base: score_mean +0.225, reveal_share +0.300, "
        "malformed_share -0.050, accuracy +0.300"
    )
    assert len(lines) == 6


def test_markdown_tables(history):
    md = iterations_markdown(history)
    assert md.startswith("| model | n | score_mean | reveal_share | malformed_share | accuracy [95% CI] |\n")
    assert "| base | 20 | 0.500 | 0.300 | 0.100 | 0.45 [0.26, 0.66] |" in md
    assert "| iter 1 | 20 | 0.725 | 0.600 | 0.050 | 0.75 [0.53, 0.89] |" in md
    assert md.rstrip().endswith("iter 1 vs base: score_mean +0.225, reveal_share +0.300, "
                                "malformed_share -0.050, accuracy +0.300")
    md = types_markdown(history)
    assert md.startswith("| question type | base | iter 1 |\n")
    lo, hi = wilson_interval(7, 10)
    assert f"| {MMSI_TYPE} | 0.40 [" in md and f"0.70 [{lo:.2f}, {hi:.2f}] (n=10) |" in md

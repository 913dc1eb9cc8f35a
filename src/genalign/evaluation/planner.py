"""Evaluation of a planner across on-policy iterations: accuracy with confidence
intervals, plan metrics, the iteration curve, the per-type bars and tables. The gate
is the shared one (genalign.evaluation.contract) over the evaluate stage's metric specs.

Each held-out question gives one row
`{"id", "question_type", "score", "revealed", "malformed", "instructions", "correct"}`
(`score` is -1.0 for a malformed plan and 0.0 for an empty one). An evaluation of one
model is `summarize_rows(rows)` and `accuracy_breakdown(rows)`; a run's history is a
list of `{"label", "iteration", "metrics", "accuracy"}` with iteration -1 for the base.
Question types come from the rows (synthetic scenes and MMSI-Bench name them apart).

    >>> history = [{"label": "base", "iteration": -1, "metrics": summarize_rows(rows0),
    ...             "accuracy": accuracy_breakdown(rows0)}, ...]
    >>> print(iteration_table(history))
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from genalign.evaluation.report import BASE_COLOR, TUNED_COLOR, _new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Rows = Sequence[Mapping[str, Any]]
History = Sequence[Mapping[str, Any]]

# z of a two-sided 95% normal interval: Phi^-1(0.975).
Z95 = 1.959964

# Series of the iteration figure: metric key, legend label, colour (tab10).
_SERIES = (
    ("reveal_share", "reveal share", "#2ca02c"),
    ("score_mean", "mean plan score", "#9467bd"),
    ("accuracy", "answer accuracy (95% CI)", "#d62728"),
)


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927, "Probable inference,
    the law of succession, and statistical inference", JASA 22:209-212):

        center = (p + z^2 / 2n) / (1 + z^2 / n)
        half   = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2),   p = correct / n

    Unlike the normal approximation it stays inside [0, 1] and is not empty at 0/n or
    n/n. With no trials nothing is known: (0.0, 1.0).
    """
    if not 0 <= correct <= n:
        raise ValueError(f"wilson_interval: expected 0 <= correct <= n, got {correct}/{n}")
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n))
    # The bounds at 0/n and n/n are exactly 0 and 1; rounding must not put the estimate
    # outside its interval (matplotlib rejects negative error bars).
    lo = 0.0 if correct == 0 else max(0.0, center - half)
    hi = 1.0 if correct == n else min(1.0, center + half)
    return lo, hi


def _accuracy(correct: Sequence[bool]) -> dict[str, Any]:
    n, k = len(correct), int(sum(bool(c) for c in correct))
    return {
        "n": n,
        "correct": k,
        "accuracy": k / n,
        "ci95": list(wilson_interval(k, n)),
    }


def accuracy_breakdown(rows: Rows) -> dict[str, Any]:
    """Answer accuracy with its 95% Wilson interval, overall and per question type.

    Returns `{"overall": {"n", "correct", "accuracy", "ci95": [lo, hi]}, "by_type":
    {type: the same}}` with the types sorted.
    """
    if not rows:
        raise ValueError("accuracy_breakdown: no rows")
    by_type: dict[str, list[bool]] = {}
    for r in rows:
        by_type.setdefault(str(r["question_type"]), []).append(bool(r["correct"]))
    return {
        "overall": _accuracy([bool(r["correct"]) for r in rows]),
        "by_type": {t: _accuracy(by_type[t]) for t in sorted(by_type)},
    }


def summarize_rows(rows: Rows) -> dict[str, float]:
    """Plan metrics of one evaluation.

    score_mean: mean plan score, malformed plans counted at their -1; reveal_share,
    malformed_share, accuracy: shares of all rows; empty_share: well-formed plans with no
    instruction; instructions_mean: over well-formed plans (nan when there are none).
    """
    if not rows:
        raise ValueError("summarize_rows: no rows to summarize")
    n = len(rows)
    well_formed = [int(r["instructions"]) for r in rows if not r["malformed"]]
    return {
        "score_mean": sum(float(r["score"]) for r in rows) / n,
        "reveal_share": sum(bool(r["revealed"]) for r in rows) / n,
        "malformed_share": (n - len(well_formed)) / n,
        "empty_share": sum(k == 0 for k in well_formed) / n,
        "instructions_mean": float(np.mean(well_formed)) if well_formed else math.nan,
        "accuracy": sum(bool(r["correct"]) for r in rows) / n,
        "n": float(n),
    }


def _base_and_last(history: History) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """The base entry (iteration -1) and the last entry of a history."""
    bases = [h for h in history if h["iteration"] == -1]
    if len(bases) != 1:
        labels = [h["label"] for h in history]
        raise ValueError(
            f"history: expected exactly one base entry (iteration -1), got {len(bases)} "
            f"among {labels}"
        )
    return bases[0], history[-1]


def _with_error(stats: Sequence[Mapping[str, Any]]) -> tuple[list[float], list[list[float]]]:
    """Accuracies and their CIs as matplotlib's asymmetric yerr: [[below...], [above...]]."""
    y = [s["accuracy"] for s in stats]
    below = [a - s["ci95"][0] for a, s in zip(y, stats)]
    above = [s["ci95"][1] - a for a, s in zip(y, stats)]
    return y, [below, above]


def _tick(entry: Mapping[str, Any]) -> str:
    return "base" if entry["iteration"] == -1 else str(entry["iteration"])


def iteration_figure(history: History) -> Figure:
    """Reveal share, mean plan score and accuracy (with 95% CI) per iteration; each
    base value repeated as a dashed line so a step above or below it reads at once."""
    base, _ = _base_and_last(history)
    x = [h["iteration"] for h in history]
    fig = _new_figure(6.0, 3.5)
    ax = fig.add_subplot()
    for key, label, color in _SERIES:
        if key == "accuracy":
            y, yerr = _with_error([h["accuracy"]["overall"] for h in history])
            ax.errorbar(x, y, yerr=yerr, color=color, marker="o", capsize=3, label=label)
            base_y = base["accuracy"]["overall"]["accuracy"]
        else:
            y = [h["metrics"][key] for h in history]
            ax.plot(x, y, color=color, marker="o", label=label)
            base_y = base["metrics"][key]
        ax.axhline(base_y, color=color, linestyle="--", linewidth=1, alpha=0.6)
    ax.set_xticks(x, [_tick(h) for h in history])
    ax.set_title("Planner over on-policy iterations (dashed: base)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("share / mean score")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def type_figure(history: History) -> Figure:
    """Accuracy per question type, base and last entry side by side, with 95% CIs."""
    base, last = _base_and_last(history)
    types = sorted(set(base["accuracy"]["by_type"]) | set(last["accuracy"]["by_type"]))
    fig = _new_figure(max(6.0, 1.5 + 0.9 * len(types)), 3.5)
    ax = fig.add_subplot()
    width = 0.38
    for offset, entry, color in ((-width / 2, base, BASE_COLOR), (width / 2, last, TUNED_COLOR)):
        by_type = entry["accuracy"]["by_type"]
        pos = [i + offset for i, t in enumerate(types) if t in by_type]
        stats = [by_type[t] for t in types if t in by_type]
        n = entry["accuracy"]["overall"]["n"]
        label = f"{entry['label']} (n={n})"
        y, yerr = _with_error(stats)
        ax.bar(pos, y, width, yerr=yerr, capsize=3, color=color, label=label)
    # MMSI-Bench type names are long: wrap them rather than rotate.
    ax.set_xticks(range(len(types)), [textwrap.fill(t, 16) for t in types])
    # Headroom above 1 for the legend, so it never covers a bar.
    ax.set_ylim(0.0, 1.3)
    ax.set_yticks(np.linspace(0.0, 1.0, 6))
    ax.set_title("Answer accuracy per question type (95% CI)")
    ax.set_xlabel("question type")
    ax.set_ylabel("accuracy")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="upper center", ncol=2)
    fig.tight_layout()
    return fig


_COLUMNS = ["model", "n", "score_mean", "reveal_share", "malformed_share", "accuracy [95% CI]"]


def _acc_cell(acc: Mapping[str, Any]) -> str:
    lo, hi = acc["ci95"]
    return f"{acc['accuracy']:.2f} [{lo:.2f}, {hi:.2f}]"


def _rows(history: History) -> list[list[str]]:
    """The cells of the iteration table, one list per history entry."""
    return [
        [
            str(h["label"]),
            str(h["accuracy"]["overall"]["n"]),
            f"{h['metrics']['score_mean']:.3f}",
            f"{h['metrics']['reveal_share']:.3f}",
            f"{h['metrics']['malformed_share']:.3f}",
            _acc_cell(h["accuracy"]["overall"]),
        ]
        for h in history
    ]


def _change_line(history: History) -> str:
    """The last entry minus the base, absolute: "iter 2 vs base: score_mean +0.120, ..."."""
    base, last = _base_and_last(history)
    keys = ("score_mean", "reveal_share", "malformed_share", "accuracy")
    parts = [f"{k} {last['metrics'][k] - base['metrics'][k]:+.3f}" for k in keys]
    return f"{last['label']} vs {base['label']}: " + ", ".join(parts)


def iteration_table(history: History) -> str:
    """A fixed-width terminal table, one row per history entry, and the change of the
    last entry vs the base underneath."""
    cells = [_COLUMNS, *_rows(history)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(_COLUMNS))]

    def line(r: list[str]) -> str:
        # The label left-aligned, numbers right-aligned.
        parts = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:]), _change_line(history)])


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    align = "|---|" + "---:|" * (len(header) - 1)
    return ["| " + " | ".join(header) + " |", align, *("| " + " | ".join(r) + " |" for r in rows)]


def iterations_markdown(history: History) -> str:
    """The iteration table as Markdown, and the change of the last entry vs the base."""
    return "\n".join([*_md_table(_COLUMNS, _rows(history)), "", _change_line(history)]) + "\n"


def types_markdown(history: History) -> str:
    """Accuracy per question type of the base vs the last entry, as a Markdown table."""
    base, last = _base_and_last(history)
    types = sorted(set(base["accuracy"]["by_type"]) | set(last["accuracy"]["by_type"]))

    def cell(entry: Mapping[str, Any], t: str) -> str:
        by_type = entry["accuracy"]["by_type"]
        return f"{_acc_cell(by_type[t])} (n={by_type[t]['n']})" if t in by_type else "-"

    lines = _md_table(
        ["question type", str(base["label"]), str(last["label"])],
        [[t, cell(base, t), cell(last, t)] for t in types],
    )
    return "\n".join(lines) + "\n"

"""The evaluation contract: metric specs, the gate, and the report writer.

Expected values are worked out by hand in the comments; the tolerance edges are chosen
so that the bound is exact in binary floating point (0.5 * 0.9 == 0.45).
"""

from __future__ import annotations

import base64
import json
import math
import random

import pytest

from genalign.config.part_dpo import EvaluatePartsConfig
from genalign.config.planner_dpo import EvaluatePlannerConfig
from genalign.evaluation.contract import MetricSpec, Section, gate, report_metrics, write_report
from genalign.evaluation.report import save_figure
from genalign.stages.part_dpo import evaluate_parts
from genalign.stages.planner_dpo import evaluate_planner

TARGET = MetricSpec("loss", "target", "lower")


def verdict(spec, base, tuned, *, slack=0.0):
    """The verdict of `spec` alone (next to a target that always passes)."""
    specs = [spec] if spec.role == "target" else [MetricSpec("t", "target", "lower"), spec]
    values_b, values_t = {"t": 1.0, spec.name: base}, {"t": 0.0, spec.name: tuned}
    return gate(specs, values_b, values_t, slack=slack).verdicts[-1]


# --- directions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("direction", "base", "tuned", "change"),
    [
        ("lower", 0.021, 0.012, "better"),
        ("lower", 0.012, 0.021, "worse"),
        ("higher", 0.5, 0.61, "better"),
        ("higher", 0.61, 0.5, "worse"),
        ("higher", 0.5, 0.5, "same"),
    ],
)
def test_lower_and_higher(direction, base, tuned, change):
    assert verdict(MetricSpec("m", "info", direction), base, tuned).change == change


@pytest.mark.parametrize(
    ("base", "tuned", "change"),
    [
        # |1.066 - 1| = 0.066 -> |1.006 - 1| = 0.006: closer, although the value went down.
        (1.066, 1.006, "better"),
        # 0.95 -> 1.10: the distance grows from 0.05 to 0.10, although the value went up.
        (0.95, 1.10, "worse"),
        # 0.75 -> 1.25: 0.25 away on either side.
        (0.75, 1.25, "same"),
        (0.90, 0.95, "better"),
    ],
)
def test_closer_compares_distances_to_the_reference(base, tuned, change):
    spec = MetricSpec("volume_ratio", "info", "closer", reference=1.0)
    assert verdict(spec, base, tuned).change == change


def test_volume_ratio_toward_one_prints_better(tmp_path):
    """README numbers: 1.066 -> 1.006 printed "-6% worse" under lower_is_better=False."""
    specs = evaluate_parts.metric_specs(EvaluatePartsConfig())
    g = gate(specs, PART_BASE, PART_TUNED)
    write_report(tmp_path, title="t", specs=specs, gate=g)
    table = (tmp_path / "table.txt").read_text().splitlines()
    row = next(line for line in table if line.startswith("volume_ratio"))
    # (1.006 - 1.066) / 1.066 = -5.6% -> "-6%"
    assert row.split() == ["volume_ratio", "1.066", "1.006", "-6%", "better"]
    assert g.verdicts[[s.name for s in specs].index("volume_ratio")].passed


# --- checks and tolerance edges ----------------------------------------------------------


def test_target_must_improve_strictly_by_default():
    assert verdict(TARGET, 0.2, 0.1).passed
    assert not verdict(TARGET, 0.2, 0.2).passed
    assert "must improve" in verdict(TARGET, 0.2, 0.3).reason


def test_target_min_improvement_is_inclusive():
    spec = MetricSpec("reveal_share", "target", "higher", min_improvement=0.25)
    # 0.5 -> 0.75 improves by exactly 0.25 (exact in binary).
    assert verdict(spec, 0.5, 0.75).passed
    assert not verdict(spec, 0.5, 0.74).passed
    # min_improvement 0: "no worse" passes on equality, unlike the strict default.
    assert verdict(MetricSpec("r", "target", "higher", min_improvement=0.0), 0.5, 0.5).passed


def test_slack_absorbs_float_rounding_of_shares():
    spec = MetricSpec("reveal_share", "target", "higher", min_improvement=0.05)
    # 0.35 - 0.30 == 0.04999999999999999 < 0.05 in floats, although 7/20 - 6/20 = 1/20.
    assert not verdict(spec, 0.30, 0.35).passed
    assert verdict(spec, 0.30, 0.35, slack=1e-9).passed


@pytest.mark.parametrize(
    ("direction", "tuned", "passed"),
    [
        # higher, base 0.5, 10%: must stay >= 0.5 * 0.9 = 0.45
        ("higher", 0.45, True),
        ("higher", 0.4499, False),
        ("higher", 0.9, True),
        # lower, base 0.5, 10%: must stay <= 0.5 * 1.1 = 0.55
        ("lower", 0.55, True),
        ("lower", 0.5501, False),
        ("lower", 0.1, True),
    ],
)
def test_relative_guard_edges(direction, tuned, passed):
    spec = MetricSpec("m", "guard", direction, tolerance=0.1, relative=True)
    assert verdict(spec, 0.5, tuned).passed is passed


def test_relative_guard_reason_names_the_bound():
    spec = MetricSpec("volume_iou", "guard", "higher", tolerance=0.1, relative=True)
    assert verdict(spec, 0.5, 0.44).reason == "volume_iou 0.5 -> 0.44, worse; must stay >= 0.45 (base - 10%)"


def test_absolute_guard_edges():
    spec = MetricSpec("malformed_share", "guard", "lower", tolerance=0.05)
    # 0.05 -> 0.10: worse by 0.05, exactly the tolerance.
    assert verdict(spec, 0.05, 0.10).passed
    assert not verdict(spec, 0.05, 0.11).passed
    # higher: 0.5 -> 0.45 is worse by 0.05.
    assert verdict(MetricSpec("m", "guard", "higher", tolerance=0.05), 0.5, 0.45, slack=1e-9).passed


@pytest.mark.parametrize(
    ("tuned", "passed"),
    [
        # base 1.066, 10% of it: the distance to 1 may grow from 0.066 by 0.1066 to 0.1726.
        (1.006, True),
        (1.17, True),  # distance 0.17
        (1.18, False),  # distance 0.18
        (0.85, True),  # distance 0.15, on the other side of 1
        (0.82, False),  # distance 0.18
    ],
)
def test_closer_guard_edges(tuned, passed):
    spec = MetricSpec("volume_ratio", "guard", "closer", tolerance=0.1, relative=True, reference=1.0)
    assert verdict(spec, 1.066, tuned).passed is passed


def test_closer_guard_absolute():
    spec = MetricSpec("v", "guard", "closer", tolerance=0.25, reference=1.0)
    # distance 0.25 -> 0.5: grew by 0.25, the tolerance.
    assert verdict(spec, 1.25, 0.5).passed
    assert not verdict(spec, 1.25, 0.25).passed


@pytest.mark.parametrize("bad", [math.nan, math.inf, None])
def test_nan_inf_or_missing_fails_its_check(bad):
    spec = MetricSpec("chamfer", "guard", "lower", tolerance=0.1, relative=True)
    tuned = {"t": 0.0} if bad is None else {"t": 0.0, "chamfer": bad}
    g = gate([MetricSpec("t", "target", "lower"), spec], {"t": 1.0, "chamfer": 0.06}, tuned)
    v = g.verdicts[1]
    assert not g.passed and v.passed is False and v.change == "n/a"
    word = "missing" if bad is None else str(bad)
    assert v.reason == f"chamfer: the tuned value is {word}"
    assert g.reason == f"failed: chamfer: the tuned value is {word}"


def test_nan_target_fails_and_nan_info_does_not():
    specs = [TARGET, MetricSpec("x", "info", None)]
    assert not gate(specs, {"loss": math.nan}, {"loss": 0.1}).passed
    g = gate(specs, {"loss": 0.2, "x": math.nan}, {"loss": 0.1})
    assert g.passed and g.verdicts[1].passed is None and g.verdicts[1].change == ""


def test_ungated_checks_are_reported_but_do_not_decide():
    share = MetricSpec("share", "target", "lower", gated=False)
    g = gate([TARGET, share], {"loss": 0.2, "share": 0.1}, {"loss": 0.1, "share": 0.3})
    assert g.passed and g.checks == {"loss": True} and g.verdicts[1].passed is False


# --- specs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"role": "goal", "direction": "lower"}, "role 'goal'"),
        ({"role": "target", "direction": "up"}, "direction 'up'"),
        ({"role": "target", "direction": None}, "direction None"),
        ({"role": "guard", "direction": "closer"}, "reference"),
        ({"role": "guard", "direction": "lower", "reference": 1.0}, "reference"),
        ({"role": "guard", "direction": "lower", "tolerance": -0.1}, "tolerance -0.1"),
        ({"role": "target", "direction": "lower", "tolerance": 0.1}, "guards only"),
        ({"role": "guard", "direction": "lower", "min_improvement": 0.1}, "targets only"),
    ],
)
def test_spec_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MetricSpec("m", **kwargs)


def test_gate_rejects_duplicates_and_no_target():
    with pytest.raises(ValueError, match="named twice"):
        gate([TARGET, TARGET], {}, {})
    with pytest.raises(ValueError, match="no gated target"):
        gate([MetricSpec("g", "guard", "lower"), MetricSpec("t", "target", "lower", gated=False)], {}, {})


# --- the part-dpo gate ---------------------------------------------------------------------

# The tiny preset's numbers (README); win rate and penetration ratio are the tuned model's.
PART_BASE = {"penetration_mean": 0.1101, "penetration_max": 1.0, "penetrating_share": 0.4297, "volume_iou": 0.3142,
             "chamfer": 0.06565, "volume_ratio": 1.066, "part_count_match": 1.0}
PART_TUNED = {"penetration_mean": 0.06049, "penetration_max": 1.0, "penetrating_share": 0.2383, "volume_iou": 0.2905,
              "chamfer": 0.07078, "volume_ratio": 1.006, "part_count_match": 1.0, "penetration_ratio": 0.5494,
              "win_rate": 0.83}


def old_part_gate(base, tuned, tol):
    """The gate evaluate-parts had before the contract, verbatim."""
    guard_ok = (
        tuned["volume_iou"] >= base["volume_iou"] * (1 - tol)
        and tuned["chamfer"] <= base["chamfer"] * (1 + tol)
        and abs(tuned["volume_ratio"] - base["volume_ratio"]) <= tol * base["volume_ratio"]
    )
    return tuned["penetration_mean"] < base["penetration_mean"] and guard_ok


def test_part_gate_on_the_readme_numbers():
    specs = evaluate_parts.metric_specs(EvaluatePartsConfig())
    g = gate(specs, PART_BASE, PART_TUNED)
    assert g.passed
    assert g.checks == {"penetration_mean": True, "volume_iou": True, "chamfer": True, "volume_ratio": True}
    # volume_iou 0.2905 >= 0.3142 * 0.9 = 0.2828; chamfer 0.07078 <= 0.06565 * 1.1 = 0.07222
    assert "must stay >= 0.2828 (base - 10%)" in g.reason and "must stay <= 0.07222 (base + 10%)" in g.reason


@pytest.mark.parametrize(
    ("change", "failed"),
    [
        ({"penetration_mean": 0.1101}, "penetration_mean"),
        ({"volume_iou": 0.28}, "volume_iou"),
        ({"chamfer": 0.073}, "chamfer"),
        ({"volume_ratio": 0.8}, "volume_ratio"),  # distance 0.066 -> 0.2, grew by 0.134 > 0.1066
    ],
)
def test_part_gate_fails_each_check(change, failed):
    specs = evaluate_parts.metric_specs(EvaluatePartsConfig())
    g = gate(specs, PART_BASE, {**PART_TUNED, **change})
    assert not g.passed
    assert [k for k, ok in g.checks.items() if not ok] == [failed]
    assert g.reason.startswith(f"failed: {failed} ")


def test_part_gate_ignores_share_and_part_count():
    specs = evaluate_parts.metric_specs(EvaluatePartsConfig())
    g = gate(specs, PART_BASE, {**PART_TUNED, "penetrating_share": 0.9, "part_count_match": 0.5})
    assert g.passed
    by_name = {v.spec.name: v for v in g.verdicts}
    assert by_name["penetrating_share"].passed is False and by_name["part_count_match"].passed is False


def test_part_gate_agrees_with_the_old_gate_except_toward_volume_ratio_one():
    """On random numbers the old and the new gate decide alike when the volume ratio does
    not move; otherwise the new one passes whenever the old one did (|t - 1| - |b - 1| <=
    |t - b| by the triangle inequality) and also when the ratio moves toward 1."""
    rng = random.Random(0)
    tol = 0.1
    specs = evaluate_parts.metric_specs(EvaluatePartsConfig(guard_tolerance=tol))
    flipped = 0
    for _ in range(3000):
        base = {k: rng.uniform(0.05, 1.5) for k in PART_BASE}
        tuned = {k: v * rng.uniform(0.8, 1.2) for k, v in base.items()}
        if rng.random() < 0.3:
            tuned["volume_ratio"] = base["volume_ratio"]
        old, new = old_part_gate(base, tuned, tol), gate(specs, base, tuned).passed
        if tuned["volume_ratio"] == base["volume_ratio"]:
            assert old == new, (base, tuned)
        else:
            assert new or not old, (base, tuned)
            flipped += new != old
    assert flipped > 0  # the volume_ratio fix does change some decisions
    # By hand: 1.3 -> 1.0 moved by 0.3 > 0.13 and failed; it is closer to 1.
    base, tuned = dict(PART_BASE, volume_ratio=1.3), dict(PART_TUNED, volume_ratio=1.0)
    assert not old_part_gate(base, tuned, tol) and gate(specs, base, tuned).passed
    # 1.066 -> 0.9 moved by 0.166 > 0.1066 and failed; the distance to 1 grew by
    # 0.1 - 0.066 = 0.034 <= 0.1066.
    tuned = dict(PART_TUNED, volume_ratio=0.9)
    assert not old_part_gate(PART_BASE, tuned, tol) and gate(specs, PART_BASE, tuned).passed


# --- the planner-dpo gate ------------------------------------------------------------------

PLAN_BASE = {"score_mean": 0.10, "reveal_share": 0.30, "malformed_share": 0.05, "empty_share": 0.0,
             "instructions_mean": 2.0, "accuracy": 0.4, "n": 100.0}


def planner_gate(tuned, min_improvement=0.05):
    specs = evaluate_planner.metric_specs(EvaluatePlannerConfig(min_improvement=min_improvement))
    return gate(specs, PLAN_BASE, tuned, slack=evaluate_planner.SHARE_SLACK)


def test_planner_gate_passes_at_the_boundaries():
    # 0.35 >= 0.30 + 0.05 and 0.10 <= 0.05 + 0.05 hold exactly, despite float rounding.
    g = planner_gate({**PLAN_BASE, "score_mean": 0.20, "reveal_share": 0.35, "malformed_share": 0.10})
    assert g.passed
    assert g.checks == {"score_mean": True, "reveal_share": True, "malformed_share": True}
    assert g.reason.startswith("passed: score_mean 0.1 -> 0.2, better")


@pytest.mark.parametrize(
    ("change", "failed"),
    [
        ({"reveal_share": 0.34}, "reveal_share"),
        ({"score_mean": 0.10}, "score_mean"),
        ({"malformed_share": 0.11}, "malformed_share"),
    ],
)
def test_planner_gate_fails_each_check(change, failed):
    tuned = {**PLAN_BASE, "score_mean": 0.20, "reveal_share": 0.40, "malformed_share": 0.05}
    g = planner_gate({**tuned, **change})
    assert not g.passed
    assert [k for k, ok in g.checks.items() if not ok] == [failed]
    assert g.reason.startswith(f"failed: {failed} ")


def test_planner_accuracy_and_nan_instructions_do_not_decide():
    tuned = {**PLAN_BASE, "score_mean": 0.2, "reveal_share": 0.4, "accuracy": 0.1, "instructions_mean": math.nan}
    assert planner_gate(tuned).passed


# --- the report ------------------------------------------------------------------------------


def small_gate():
    specs = [
        MetricSpec("penetration_mean", "target", "lower", help="mean penetration"),
        MetricSpec("volume_ratio", "guard", "closer", tolerance=0.1, relative=True, reference=1.0),
        MetricSpec("instructions_mean", "info", None),
        MetricSpec("win_rate", "info", "higher"),
    ]
    base = {"penetration_mean": 0.021, "volume_ratio": 1.066, "instructions_mean": math.nan}
    tuned = {"penetration_mean": 0.012, "volume_ratio": 1.006, "instructions_mean": 2.0, "win_rate": 0.625}
    return specs, gate(specs, base, tuned)


def test_write_report_files(tmp_path):
    from genalign.evaluation.report import histogram_figure

    specs, g = small_gate()
    save_figure(histogram_figure([0.1, 0.2], [0.1, 0.05], title="pen", xlabel="x"), tmp_path / "h.png")
    metrics = write_report(
        tmp_path, title="part-dpo <tiny>", specs=specs, gate=g, images={"hist": "h.png"},
        sections=[Section("History", markdown="| a |\n|---|\n| 1 |", text="a\n-\n1", html="<p>hi</p>"),
                  Section("Only markdown", markdown="x & y")],
        notes=["n = 4"], metrics={"eval/n": 4.0, "eval/ratio": math.inf}, data={"config": {"k": 1}},
    )
    report = json.loads((tmp_path / "report.json").read_text())
    # eval/<name> is the tuned value, eval/base_<name> the base's; non-finite values left out.
    assert metrics == report["metrics"] == {
        "eval/penetration_mean": 0.012, "eval/base_penetration_mean": 0.021,
        "eval/volume_ratio": 1.006, "eval/base_volume_ratio": 1.066,
        "eval/instructions_mean": 2.0, "eval/win_rate": 0.625,
        "eval/gate_passed": 1.0, "eval/n": 4.0,
    }
    assert report["comparison"]["gate"]["passed"] is True
    assert report["comparison"]["gate"]["checks"] == {"penetration_mean": True, "volume_ratio": True}
    assert report["comparison"]["base"]["instructions_mean"] is None  # NaN is null in strict JSON
    assert report["comparison"]["deltas"]["penetration_mean"] == pytest.approx(-0.009)
    assert report["config"] == {"k": 1} and [s["name"] for s in report["specs"]] == [s.name for s in specs]
    assert report["specs"][0]["help"] == "mean penetration"

    table = (tmp_path / "table.txt").read_text().splitlines()
    assert table[0].split() == ["metric", "base", "tuned", "change"]
    # (0.012 - 0.021) / 0.021 = -42.9%
    assert table[2].split() == ["penetration_mean", "0.021", "0.012", "-43%", "better"]
    assert table[3].split() == ["volume_ratio", "1.066", "1.006", "-6%", "better"]
    assert table[4].split() == ["instructions_mean", "nan", "2", "n/a"]
    assert table[5] == "win_rate 0.625"
    assert table[6] == "gate PASSED"
    assert table[7].startswith("  target ok: penetration_mean 0.021 -> 0.012, better; must improve")
    assert table[-3:] == ["a", "-", "1"]

    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# part-dpo <tiny>\n")
    assert "| volume_ratio | 1.066 | 1.006 | -6% better |" in md
    assert "## Gate: passed" in md and "- volume_ratio (guard): ok - volume_ratio 1.066 -> 1.006" in md
    assert "## History\n\n| a |" in md and "## Only markdown\n\nx & y" in md and "- n = 4" in md
    assert "h.png" not in md  # the Kubeflow Markdown viewer cannot follow relative links

    page = (tmp_path / "report.html").read_text()
    uri = page.split('src="data:image/png;base64,')[1].split('"')[0]
    assert base64.b64decode(uri) == (tmp_path / "h.png").read_bytes()
    assert "part-dpo &lt;tiny&gt;" in page and "<td>-6% better</td>" in page
    assert "<p>hi</p>" in page and "<pre>x &amp; y</pre>" in page and "<h2>Gate: passed</h2>" in page


def test_write_report_failed_gate(tmp_path):
    specs = [TARGET]
    write_report(tmp_path, title="t", specs=specs, gate=gate(specs, {"loss": 0.1}, {"loss": 0.2}))
    assert json.loads((tmp_path / "report.json").read_text())["metrics"]["eval/gate_passed"] == 0.0
    assert "gate FAILED\n  target FAILED: loss 0.1 -> 0.2, worse; must improve" in (tmp_path / "table.txt").read_text()
    assert "## Gate: failed" in (tmp_path / "report.md").read_text()


def test_write_report_refuses_inconsistent_input(tmp_path):
    specs, g = small_gate()
    with pytest.raises(ValueError, match="computed from specs"):
        write_report(tmp_path, title="t", specs=specs[:1], gate=g)
    with pytest.raises(ValueError, match="already written from the specs"):
        report_metrics(g, {"eval/win_rate": 0.5})
    with pytest.raises(ValueError, match="written by the report itself"):
        write_report(tmp_path, title="t", specs=specs, gate=g, data={"metrics": {}})
    with pytest.raises(ValueError, match="missing.png"):
        write_report(tmp_path, title="t", specs=specs, gate=g, images={"x": "missing.png"})
    assert list(tmp_path.iterdir()) == []  # nothing written before the images were read


def test_table_cells_zero_base_and_alignment(tmp_path):
    specs = [TARGET, MetricSpec("zero_base", "info", "lower"), MetricSpec("unchanged", "info", "higher")]
    g = gate(specs, {"loss": 0.021, "zero_base": 0.0, "unchanged": 1.0}, {"loss": 0.012, "zero_base": 0.2, "unchanged": 1.0})
    write_report(tmp_path, title="t", specs=specs, gate=g)
    lines = (tmp_path / "table.txt").read_text().splitlines()
    assert set(lines[1].replace(" ", "")) == {"-"}
    # A zero base has no relative change: the absolute difference is shown.
    assert lines[3].split() == ["zero_base", "0", "0.2", "+0.2", "worse"]
    assert lines[4].split() == ["unchanged", "1", "1", "0%"]
    # Fixed width: numbers right-aligned, so the base column ends at the same place.
    base_end = lines[0].index("base") + len("base")
    assert [line[:base_end].split()[-1] for line in lines[2:5]] == ["0.021", "0", "1"]

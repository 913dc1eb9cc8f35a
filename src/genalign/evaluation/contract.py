"""The evaluation contract every evaluate stage follows: metric specs, the gate, the report.

An evaluate stage measures the base and the tuned model, declares what each metric
means as a `MetricSpec`, and leaves the rest here:

- `gate(specs, base, tuned)` decides promotion from the specs alone. A *target* is what
  the tuning should improve; a *guard* is what the reward never saw and must not get
  worse by more than its tolerance (reward hacking shows up there); an *info* metric is
  shown and never decides anything.
- `write_report(out, ...)` writes report.json, table.txt, report.md (the Kubeflow
  Markdown visualization) and report.html (the Kubeflow HTML visualization, its PNGs
  embedded), each file atomically. report.json's `metrics` holds `eval/<name>` (the
  tuned value) and `eval/base_<name>` for every spec, and `eval/gate_passed`; its
  `comparison.gate` holds the decision with a reason per check.

    >>> specs = [MetricSpec("penetration_mean", "target", "lower"),
    ...          MetricSpec("volume_ratio", "guard", "closer", tolerance=0.1, relative=True, reference=1.0)]
    >>> g = gate(specs, {"penetration_mean": 0.11, "volume_ratio": 1.066},
    ...          {"penetration_mean": 0.06, "volume_ratio": 1.006})
    >>> g.passed, g.verdicts[1].change
    (True, 'better')

Direction "closer" compares distances to `reference`: volume_ratio 1.066 -> 1.006 moves
from 0.066 to 0.006 away from 1, which is better although the value went down.
"""

from __future__ import annotations

import dataclasses
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genalign.evaluation.report import _STYLE, _change, _fmt, fixed_width_table
from genalign.storage import atomic_write_json, atomic_write_text

ROLES = ("target", "guard", "info")
DIRECTIONS = ("lower", "higher", "closer")


@dataclass(frozen=True)
class MetricSpec:
    """What one metric means to the gate and the report.

    A target passes when it improves: strictly when `min_improvement` is None, else by
    at least `min_improvement` (absolute; 0 means "no worse"). A guard passes when it got
    worse by at most `tolerance`: an absolute amount, or with `relative` a fraction of
    the base value (the tuned value must stay within base * (1 +- tolerance); for
    "closer", the distance to `reference` may grow by tolerance * |base|). A target or
    guard with `gated=False` is checked and reported but does not decide the gate.
    """

    name: str
    role: str  # "target" | "guard" | "info"
    direction: str | None  # "lower" | "higher" | "closer"; None only for an info metric
    tolerance: float = 0.0
    reference: float | None = None
    help: str = ""
    relative: bool = False
    min_improvement: float | None = None
    gated: bool = True

    def __post_init__(self) -> None:
        where = f"metric spec {self.name!r}"
        if not self.name:
            raise ValueError("metric spec: empty name")
        if self.role not in ROLES:
            raise ValueError(f"{where}: role {self.role!r}, expected one of {list(ROLES)}")
        if self.direction not in DIRECTIONS and not (self.direction is None and self.role == "info"):
            allowed = list(DIRECTIONS) + ([None] if self.role == "info" else [])
            raise ValueError(f"{where}: direction {self.direction!r}, expected one of {allowed}")
        if (self.direction == "closer") != (self.reference is not None):
            raise ValueError(f"{where}: a reference value is needed with direction 'closer' and only there")
        if self.reference is not None and not math.isfinite(self.reference):
            raise ValueError(f"{where}: reference {self.reference} is not finite")
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0.0):
            raise ValueError(f"{where}: tolerance {self.tolerance}, expected a finite value >= 0")
        if self.role != "guard" and (self.tolerance != 0.0 or self.relative):
            raise ValueError(f"{where}: tolerance and relative apply to guards only (role {self.role!r})")
        if self.min_improvement is not None and (self.role != "target" or not math.isfinite(self.min_improvement)):
            raise ValueError(f"{where}: min_improvement is a finite number and applies to targets only")

    @property
    def decides(self) -> bool:
        """Whether this spec's check is part of the gate decision."""
        return self.role != "info" and self.gated

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Verdict:
    """One spec's outcome: the two values, the change wording, and its check.

    `change` is "better", "worse" or "same" by the spec's direction ("n/a" when a value
    is missing or not finite, "" for an info metric without a direction); `passed` is
    None for an info metric.
    """

    spec: MetricSpec
    base: float | None
    tuned: float | None
    change: str
    passed: bool | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.spec.name, "role": self.spec.role, "direction": self.spec.direction,
                "gated": self.spec.decides, "base": self.base, "tuned": self.tuned, "change": self.change,
                "passed": self.passed, "reason": self.reason}


@dataclass(frozen=True)
class Gate:
    """The promotion decision: passed when every gated check passed."""

    passed: bool
    verdicts: tuple[Verdict, ...]

    @property
    def specs(self) -> tuple[MetricSpec, ...]:
        return tuple(v.spec for v in self.verdicts)

    @property
    def checks(self) -> dict[str, bool]:
        """Gated spec name -> whether its check passed, in spec order."""
        return {v.spec.name: bool(v.passed) for v in self.verdicts if v.spec.decides}

    @property
    def reason(self) -> str:
        """"passed: <every check>" or "failed: <the failed checks>"."""
        gated = [v for v in self.verdicts if v.spec.decides]
        shown = gated if self.passed else [v for v in gated if not v.passed]
        return ("passed: " if self.passed else "failed: ") + "; ".join(v.reason for v in shown)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "checks": self.checks, "reason": self.reason,
                "verdicts": [v.to_dict() for v in self.verdicts]}


def _value(values: Mapping[str, float], name: str) -> float | None:
    return None if values.get(name) is None else float(values[name])


def _improvement(spec: MetricSpec, base: float, tuned: float) -> float:
    """How much better the tuned value is (> 0 better, < 0 worse)."""
    if spec.direction == "lower":
        return base - tuned
    if spec.direction == "higher":
        return tuned - base
    assert spec.reference is not None
    return abs(base - spec.reference) - abs(tuned - spec.reference)


def _change_word(spec: MetricSpec, base: float | None, tuned: float | None) -> str:
    if spec.direction is None:
        return ""
    if base is None or tuned is None or not (math.isfinite(base) and math.isfinite(tuned)):
        return "n/a"
    d = _improvement(spec, base, tuned)
    return "better" if d > 0 else "worse" if d < 0 else "same"


def _n(x: float) -> str:
    return f"{x:.4g}"


def _pct(x: float) -> str:
    return f"{100.0 * x:.4g}%"


def _check(spec: MetricSpec, base: float, tuned: float, change: str, slack: float) -> tuple[bool, str]:
    """The check of a target or guard on finite values, and its reason."""
    head = f"{spec.name} {_n(base)} -> {_n(tuned)}"
    if spec.direction == "closer":
        r = spec.reference
        assert r is not None
        head += f" (distance to {_n(r)}: {_n(abs(base - r))} -> {_n(abs(tuned - r))})"
    head += f", {change}"
    improvement = _improvement(spec, base, tuned)
    if spec.role == "target":
        if spec.min_improvement is None:
            return improvement > slack, f"{head}; must improve"
        m = spec.min_improvement
        return improvement >= m - slack, f"{head}; must improve by at least {_n(m)} (improved by {_n(improvement)})"
    tol = spec.tolerance
    if spec.direction == "closer":
        allowed = tol * abs(base) if spec.relative else tol
        how = f"{_pct(tol)} of base" if spec.relative else "absolute"
        return -improvement <= allowed + slack, f"{head}; the distance may grow by at most {_n(allowed)} ({how})"
    if not spec.relative:
        # On the difference, as "worse by at most `tolerance`" reads.
        worse = tuned - base if spec.direction == "lower" else base - tuned
        return worse <= tol + slack, f"{head}; may get worse by at most {_n(tol)}"
    # base * (1 +- tolerance), the bound as a person writes it; the sign keeps "worse"
    # pointing the right way for a negative base.
    up = base * (1 + tol) if base >= 0 else base * (1 - tol)
    down = base * (1 - tol) if base >= 0 else base * (1 + tol)
    if spec.direction == "lower":
        return tuned <= up + slack, f"{head}; must stay <= {_n(up)} (base + {_pct(tol)})"
    return tuned >= down - slack, f"{head}; must stay >= {_n(down)} (base - {_pct(tol)})"


def _verdict(spec: MetricSpec, base: float | None, tuned: float | None, slack: float) -> Verdict:
    change = _change_word(spec, base, tuned)
    if spec.role == "info":
        return Verdict(spec, base, tuned, change, None, f"{spec.name}: shown, not checked")
    bad = [f"{which} value is {'missing' if v is None else _n(v)}"
           for which, v in (("base", base), ("tuned", tuned)) if v is None or not math.isfinite(v)]
    if bad:
        return Verdict(spec, base, tuned, change, False, f"{spec.name}: the {' and the '.join(bad)}")
    assert base is not None and tuned is not None
    passed, reason = _check(spec, base, tuned, change, slack)
    return Verdict(spec, base, tuned, change, passed, reason)


def gate(specs: Sequence[MetricSpec], base: Mapping[str, float], tuned: Mapping[str, float], *,
         slack: float = 0.0) -> Gate:
    """Check every spec on the base and tuned values; passed when every gated check holds.

    A missing, NaN or infinite value fails its check with the reason. `slack` is an
    absolute allowance on every comparison, for metrics that are ratios k/n whose float
    sums can round across a boundary that holds exactly (0.3 + 0.05 != 0.35).
    """
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"gate: metric specs named twice: {sorted({n for n in names if names.count(n) > 1})}")
    if not any(s.role == "target" and s.decides for s in specs):
        raise ValueError(f"gate: no gated target among {names}; a model that only holds its guards has not improved")
    if slack < 0.0:
        raise ValueError(f"gate: slack {slack}, expected >= 0")
    verdicts = tuple(_verdict(s, _value(base, s.name), _value(tuned, s.name), slack) for s in specs)
    return Gate(passed=all(v.passed for v in verdicts if v.spec.decides), verdicts=verdicts)


# --- the report ------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """A part of a report beyond the metric table and the gate.

    `markdown` goes into report.md under "## title", `text` into table.txt, `html` into
    report.html (the Markdown preformatted when there is no `html`); each is left out of
    its file when it is None.
    """

    title: str
    markdown: str | None = None
    text: str | None = None
    html: str | None = None


_HEADER = ["metric", "base", "tuned", "change"]


def _in_table(v: Verdict) -> bool:
    # A tuned-only info metric (a win rate, a tuned/base ratio) has no base to sit beside.
    return not (v.spec.role == "info" and v.base is None)


def _cells(g: Gate) -> list[list[str]]:
    cells = []
    for v in g.verdicts:
        if not _in_table(v):
            continue
        b = math.nan if v.base is None else v.base
        t = math.nan if v.tuned is None else v.tuned
        word = "" if v.change in ("same", "n/a") else v.change
        cells.append([v.spec.name, "-" if v.base is None else _fmt(b), "-" if v.tuned is None else _fmt(t),
                      f"{_change(b, t)} {word}".strip()])
    return cells


def _comparative_line(g: Gate) -> str:
    shown = [v for v in g.verdicts if not _in_table(v) and v.tuned is not None]
    return ", ".join(f"{v.spec.name} {_fmt(v.tuned)}" for v in shown)


def _check_lines(g: Gate) -> list[tuple[str, Verdict]]:
    """(status, verdict) of every target and guard: ok / FAILED, and "not gated" ones."""
    out = []
    for v in g.verdicts:
        if v.spec.role == "info":
            continue
        status = "ok" if v.passed else "FAILED"
        out.append((status if v.spec.decides else f"{status}, not gated", v))
    return out


def _text(g: Gate, sections: Sequence[Section]) -> str:
    lines = [fixed_width_table(_HEADER, _cells(g))]
    if comparative := _comparative_line(g):
        lines.append(comparative)
    lines.append(f"gate {'PASSED' if g.passed else 'FAILED'}")
    lines += [f"  {v.spec.role} {status}: {v.reason}" for status, v in _check_lines(g)]
    for s in sections:
        if s.text is not None:
            lines += ["", s.text]
    return "\n".join(lines) + "\n"


def _markdown(title: str, g: Gate, sections: Sequence[Section], notes: Sequence[str]) -> str:
    lines = [f"# {title}", "", "| " + " | ".join(_HEADER) + " |", "|---|---:|---:|---:|"]
    lines += ["| " + " | ".join(r) + " |" for r in _cells(g)]
    if comparative := _comparative_line(g):
        lines += ["", comparative]
    lines += ["", f"## Gate: {'passed' if g.passed else 'failed'}", ""]
    lines += [f"- {v.spec.name} ({v.spec.role}): {status} - {v.reason}" for status, v in _check_lines(g)]
    for s in sections:
        if s.markdown is not None:
            lines += ["", f"## {s.title}", "", s.markdown.rstrip("\n")]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _html(title: str, g: Gate, sections: Sequence[Section], images: Mapping[str, str], notes: Sequence[str],
          root: Path) -> str:
    import base64

    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in _HEADER)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in _cells(g))
    parts = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8">', f"<title>{esc(title)}</title>", _STYLE,
             "</head><body>", f"<h1>{esc(title)}</h1>",
             f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"]
    if comparative := _comparative_line(g):
        parts.append(f"<p>{esc(comparative)}</p>")
    parts += [f"<h2>Gate: {'passed' if g.passed else 'failed'}</h2>", "<ul>"]
    parts += [f"<li><b>{esc(v.spec.name)}</b> ({esc(v.spec.role)}): {esc(status)} - {esc(v.reason)}</li>"
              for status, v in _check_lines(g)]
    parts.append("</ul>")
    for s in sections:
        if s.html is not None:
            parts += [f"<h2>{esc(s.title)}</h2>", s.html]
        elif s.markdown is not None:
            parts += [f"<h2>{esc(s.title)}</h2>", f"<pre>{esc(s.markdown)}</pre>"]
    for name, rel in images.items():
        path = root / rel
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ValueError(f"write_report: image {name!r} at {path}: {e}") from e
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        parts += [f"<h2>{esc(name)}</h2>", f'<img alt="{esc(name)}" src="{uri}">']
    if notes:
        parts += ["<h2>Notes</h2>", "<ul>", *(f"<li>{esc(n)}</li>" for n in notes), "</ul>"]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _json_ready(obj: Any) -> Any:
    """NaN and infinities as null: report.json is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    return obj


def report_metrics(g: Gate, extra: Mapping[str, float] | None = None) -> dict[str, float]:
    """`eval/<name>` (tuned) and `eval/base_<name>` of every spec, `eval/gate_passed`, and
    `extra`. Non-finite values are left out: MLflow, KFP and the registry read numbers."""
    metrics: dict[str, float] = {}
    for v in g.verdicts:
        for key, value in ((f"eval/{v.spec.name}", v.tuned), (f"eval/base_{v.spec.name}", v.base)):
            if value is not None and math.isfinite(value):
                metrics[key] = float(value)
    metrics["eval/gate_passed"] = float(g.passed)
    clash = sorted(set(metrics) & set(extra or {}))
    if clash:
        raise ValueError(f"report_metrics: extra metrics {clash} are already written from the specs")
    metrics.update({k: float(v) for k, v in (extra or {}).items() if math.isfinite(v)})
    return metrics


def write_report(
    out: Path,
    *,
    title: str,
    specs: Sequence[MetricSpec],
    gate: Gate,
    images: Mapping[str, str] | None = None,
    sections: Sequence[Section] = (),
    notes: Sequence[str] = (),
    metrics: Mapping[str, float] | None = None,
    data: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Write report.json, table.txt, report.md and report.html into `out`; return the metrics.

    `gate` is `gate(specs, base, tuned)`; `images` maps a caption to a PNG under `out`
    (embedded in report.html; report.md names none, the Kubeflow Markdown viewer cannot
    follow relative links); `metrics` are written beside the specs' (`report_metrics`);
    `data` adds top-level keys to report.json (config, per-sample rows, history).

    report.json: {title, specs, metrics, comparison: {base, tuned, deltas, gate}, **data}.
    """
    out = Path(out)
    if tuple(specs) != gate.specs:
        raise ValueError(f"write_report: the gate was computed from specs {[s.name for s in gate.specs]}, "
                         f"not {[s.name for s in specs]}")
    reserved = {"title", "specs", "metrics", "comparison"}
    if clash := sorted(reserved & set(data or {})):
        raise ValueError(f"write_report: data keys {clash} are written by the report itself")
    images = dict(images or {})
    values = {"base": {}, "tuned": {}, "deltas": {}}
    for v in gate.verdicts:
        if v.base is not None:
            values["base"][v.spec.name] = v.base
        if v.tuned is not None:
            values["tuned"][v.spec.name] = v.tuned
        if v.base is not None and v.tuned is not None:
            values["deltas"][v.spec.name] = v.tuned - v.base
    result = report_metrics(gate, metrics)
    html_page = _html(title, gate, sections, images, notes, out)  # reads the PNGs before anything is written
    atomic_write_json(out / "report.json", _json_ready({
        "title": title, "specs": [s.to_dict() for s in specs], "metrics": result,
        "comparison": {**values, "gate": gate.to_dict()}, **(data or {}),
    }))
    atomic_write_text(out / "table.txt", _text(gate, sections))
    atomic_write_text(out / "report.md", _markdown(title, gate, sections, notes))
    atomic_write_text(out / "report.html", html_page)
    return result

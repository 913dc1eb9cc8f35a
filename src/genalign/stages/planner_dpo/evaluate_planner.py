"""evaluate-planner: one planner on the held-out questions, appended to the run's history.

Every model of a run (the base, then each iteration's merged planner) samples its plans
for the same held-out questions with the same seeds (`sampling`); the plans are executed
and scored as in training, and a downstream answerer answers each question from the
original and the generated images (`answerer`). Per question (and plan) a row
{id, question_type, score, revealed, malformed, instructions, correct}: `revealed` is
whether the plan's best instruction reveals the answer (scene oracle) or, with an MLLM
critic, whether its score is at least 0.5.

The report artifact is cumulative: `history` in report.json holds the base and every
iteration so far, so the last iteration's report has them all. This model is gated
against the base by the shared contract (genalign.evaluation.contract) over
`metric_specs`.

    report/
      report.json    {iteration, history: [{label, iteration, metrics, accuracy}], metrics,
                      comparison: {base, tuned, deltas, gate}}   (this model vs base)
      summary.json   this iteration: pairs (counts, score gaps), training, evaluation, timings
      rows.jsonl     the per-question rows of this model
      history.png    reveal share, score and accuracy (95% CI) per iteration
      types.png      accuracy per question type, base vs this model
      table.txt  report.md  report.html  gallery/ (plans and their views)
"""

from __future__ import annotations

import html
import json
import random
import time
import zlib
from pathlib import Path
from typing import Any

from genalign.artifacts import PAIRS, REPORT
from genalign.config.planner_dpo import EvaluatePlannerConfig
from genalign.data.mmsi import read_dataset
from genalign.evaluation.contract import MetricSpec, Section, gate, write_report
from genalign.executors.plans import execute_rows
from genalign.models.refs import model_dir
from genalign.records import Sample
from genalign.scorers.critic import score_rows
from genalign.stages import StageResult
from genalign.storage import (
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    read_manifest,
    write_manifest,
)
from genalign.tracking import Tracker

BASE_ITERATION = -1
# The gate allows the malformed share to grow by 5 points: a few more cut-off plans are
# noise at a few hundred held-out questions, a format collapse is not.
MALFORMED_TOLERANCE = 0.05
# Shares are ratios k/n; the gate compares them with this slack so that float rounding
# of a sum (0.3 + 0.05) cannot flip a comparison that holds exactly.
SHARE_SLACK = 1e-9


def metric_specs(cfg: EvaluatePlannerConfig) -> list[MetricSpec]:
    """The metrics of `summarize_rows`, in table order, as the gate and the report read them.

    The gate: the mean plan score goes up, the reveal share goes up by at least
    `min_improvement`, and the malformed share grows by at most MALFORMED_TOLERANCE.
    """
    return [
        MetricSpec("score_mean", "target", "higher", help="mean plan score, malformed plans counted at -1"),
        MetricSpec("reveal_share", "target", "higher", min_improvement=cfg.min_improvement,
                   help="share of plans whose best instruction reveals the answer"),
        MetricSpec("malformed_share", "guard", "lower", tolerance=MALFORMED_TOLERANCE,
                   help="share of plans that do not parse (the format the reward never scores)"),
        MetricSpec("empty_share", "info", "lower", help="share of well-formed plans with no instruction"),
        MetricSpec("instructions_mean", "info", None, help="instructions per well-formed plan"),
        MetricSpec("accuracy", "info", "higher", help="downstream answer accuracy with the plan's images"),
    ]


def label_of(iteration: int) -> str:
    return "base" if iteration == BASE_ITERATION else f"iter {iteration}"


def plan_rows(questions: list[dict], model_dir: Path, dataset: Path, cfg: EvaluatePlannerConfig,
              work: Path) -> tuple[list[dict], list[Any], dict[str, int]]:
    """Sample, execute, score and answer: the per-plan rows, the scored samples, counts."""
    from genalign.data.planner_prompt import planner_prompt
    from genalign.generators.planner import PlannerSampler
    from genalign.models.vlm import load_vlm

    model, processor = load_vlm(model_dir)
    plans = PlannerSampler(model, processor, cfg.sampling).sample(questions, root=dataset)
    del model
    samples = [
        Sample(sample_id=f"{row['id']}/eval/k{j}", cond_id=row["id"], seed=j, iteration=0, output=text,
               status="ok", meta={"prompt": planner_prompt(row), "images": list(row["images"])})
        for row, texts in zip(questions, plans) for j, text in enumerate(texts)
    ]
    by_id = {r["id"]: r for r in questions}
    executed, counts = execute_rows(samples, by_id, dataset, cfg.execute, work)
    scored, label_counts = score_rows(executed, by_id, dataset, work, cfg.critic)
    counts.update({f"label_{k}": v for k, v in label_counts.items()})
    answers = _answers(scored, by_id, dataset, work, cfg)
    rows = []
    for s, correct in zip(scored, answers):
        plan = s.meta["plan"]
        revealed = bool(s.detail.get("max", 0.0) >= 1.0) if cfg.critic.critic == "scene-oracle" else (
            s.score is not None and s.score >= 0.5)
        rows.append({"id": s.cond_id, "sample_id": s.sample_id, "question_type": by_id[s.cond_id]["question_type"],
                     "score": s.score if s.score is not None else 0.0, "revealed": revealed,
                     "malformed": plan["status"] == "failed", "instructions": len(plan["instructions"]),
                     "correct": correct, "plan": s.output,
                     "views": [{"instruction": e["instruction"], "image": e["image"], "status": e["status"]}
                               for e in s.meta["executions"]]})
    return rows, scored, counts


def _answers(scored, by_id, dataset: Path, work: Path, cfg: EvaluatePlannerConfig) -> list[bool]:
    """Whether the downstream answerer gets each question right with the plan's images."""
    from genalign.data.mmsi import LETTERS

    if cfg.answerer == "oracle":
        out = []
        for s in scored:
            if s.detail.get("max", 0.0) >= 1.0:
                out.append(True)
                continue
            row = by_id[s.cond_id]  # nothing revealed: a seeded guess among the options
            rng = random.Random(zlib.crc32(s.sample_id.encode()))
            out.append(rng.choice(LETTERS[: len(row["options"])]) == row["answer"])
        return out
    from genalign.models.refs import resolve
    from genalign.scorers.mllm_judge import JudgeSample, MLLMJudge

    judge = MLLMJudge(resolve(cfg.critic.judge_model), cfg.critic.judge)
    samples = [JudgeSample.from_row(by_id[s.cond_id], [work / e["image"] for e in s.meta["executions"] if e["image"]],
                                    root=dataset) for s in scored]
    return [a == by_id[s.cond_id]["answer"] for a, s in zip(judge.answer(samples), scored)]


def run(cfg: EvaluatePlannerConfig, *, model: Path, eval_dataset: Path, history: Path | None, pairs: Path | None,
        adapter: Path | None, report: Path, iteration: int, tracker: Tracker) -> StageResult:
    from genalign.evaluation.planner import (
        accuracy_breakdown,
        iteration_figure,
        iteration_table,
        iterations_markdown,
        summarize_rows,
        type_figure,
        types_markdown,
    )
    from genalign.evaluation.report import save_figure

    if (iteration == BASE_ITERATION) != (history is None):
        raise ValueError(f"evaluate-planner: iteration {iteration} needs "
                         f"{'no history (it is the base)' if history is not None else 'the previous report as history'}")
    previous = []
    if history is not None:
        read_manifest(history, REPORT)
        previous = json.loads((history / "report.json").read_text())["history"]
    questions = read_dataset(eval_dataset)
    start = time.perf_counter()
    with atomic_dir(report) as tmp:
        rows, _, counts = plan_rows(questions, model_dir(model), eval_dataset, cfg, tmp / "gallery")
        seconds = time.perf_counter() - start
        entry = {"label": label_of(iteration), "iteration": iteration, "metrics": summarize_rows(rows),
                 "accuracy": accuracy_breakdown(rows), "counts": counts}
        full = [*previous, entry]
        base = next(e for e in full if e["iteration"] == BASE_ITERATION)
        specs = metric_specs(cfg)
        decision = gate(specs, base["metrics"], entry["metrics"], slack=SHARE_SLACK)
        summary = _summary(iteration, entry, pairs, adapter, seconds)
        atomic_write_json(tmp / "summary.json", summary)
        atomic_write_text(tmp / "rows.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        figures = {"history.png": iteration_figure(full), "types.png": type_figure(full)}
        for name, fig in figures.items():
            save_figure(fig, tmp / name)
            tracker.log_artifact(tmp / name, "plots")
        sections = [Section("Iterations", markdown=iterations_markdown(full), text=iteration_table(full)),
                    Section("Accuracy per question type", markdown=types_markdown(full))]
        if rows[: cfg.gallery]:
            sections.append(Section("Held-out questions: the question's image, then each instruction's view",
                                    html=_gallery(tmp, rows[: cfg.gallery], eval_dataset, {q["id"]: q for q in questions})))
        ci_low, ci_high = entry["accuracy"]["overall"]["ci95"]
        metrics = write_report(
            tmp, title=f"planner-dpo evaluation: {entry['label']} vs base on held-out questions", specs=specs,
            gate=decision, images={"history": "history.png", "types": "types.png"}, sections=sections,
            metrics={"eval/n": entry["metrics"]["n"], "eval/base_n": base["metrics"]["n"],
                     "eval/accuracy_ci_low": ci_low, "eval/accuracy_ci_high": ci_high},
            data={"iteration": iteration, "history": full, "summary": summary},
        )
        table = (tmp / "table.txt").read_text().rstrip("\n")
        write_manifest(tmp, kind=REPORT, config=cfg.to_dict(), counts=counts, hash_files=["report.json", "rows.jsonl"],
                       inputs={"model": str(model), "eval_dataset": str(eval_dataset)},
                       extra={"iteration": iteration})
    print(table)
    tracker.log_metrics(metrics, step=iteration + 1)
    return StageResult(metrics=metrics, summary={"html": str(report / "report.html"),
                                                 "markdown": str(report / "report.md"), "gate": decision.to_dict()})


def _summary(iteration: int, entry: dict, pairs: Path | None, adapter: Path | None, seconds: float) -> dict:
    """The iteration's summary.json: pairs, training, evaluation and timings."""
    out: dict[str, Any] = {"iteration": iteration, "evaluation": entry["metrics"],
                           "timings": {"evaluate_s": round(seconds, 2)}}
    if pairs is not None:
        manifest = read_manifest(pairs, PAIRS)
        out["pairs"] = {"counts": manifest["counts"], "gap": manifest.get("gap"), "scores": manifest.get("scores")}
    if adapter is not None:
        from genalign.artifacts import read_model_card

        trained = read_model_card(adapter).metrics
        out["train"] = dict(trained)
        out["timings"]["train_s"] = round(trained.get("train/seconds", 0.0), 2)
    return out


def _gallery(root: Path, rows: list[dict], dataset: Path, questions: dict[str, dict]) -> str:
    """An HTML table of held-out questions: the question's images, the plan, each view; images embedded."""
    import base64

    def img(path: Path, alt: str) -> str:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}" width="112">'

    # Text cells read left-aligned, unlike the report's number tables.
    parts = ["<style>.gallery td{vertical-align:top;text-align:left;font-family:sans-serif}</style>",
             '<table class="gallery">']
    for r in rows:
        cells = [img(dataset / rel, "question") for rel in questions[r["id"]]["images"]]
        for v in r["views"]:
            cells.append(img(root / "gallery" / v["image"], v["instruction"]) if v["image"] else html.escape(v["status"]))
        verdict = "reveals" if r["revealed"] else ("malformed" if r["malformed"] else "does not reveal")
        parts.append(f"<tr><td>{html.escape(r['id'])}<br>{html.escape(r['question_type'])}<br><b>{verdict}</b>"
                     f"</td><td>{html.escape(r['plan'])}</td><td>{''.join(cells)}</td></tr>")
    parts.append("</table>")
    return "\n".join(parts)


"""evaluate-planner: one planner on the held-out questions, appended to the run's history.

Every model of a run (the base, then each iteration's merged planner) samples its plans
for the same held-out questions with the same seeds (`sampling`); the plans are executed
and scored as in training, and a downstream answerer answers each question from the
original and the generated images (`answerer`). Per question (and plan) a row
{id, question_type, score, revealed, malformed, instructions, correct}: `revealed` is
whether the plan's best instruction reveals the answer (scene oracle) or, with an MLLM
critic, whether its score is at least 0.5.

The report artifact is cumulative: `history` in report.json holds the base and every
iteration so far, so the last iteration's report has them all.

    report/
      report.json    {iteration, history: [{label, iteration, metrics, accuracy}], metrics,
                      comparison: {deltas, gate}}   (metrics and gate of this model vs base)
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

from genalign.config.planner_dpo import EvaluatePlannerConfig
from genalign.records import Sample
from genalign.stages import StageResult
from genalign.stages.planner_dpo.execute_plans import execute_rows
from genalign.stages.planner_dpo.label_plans import score_rows
from genalign.stages.planner_dpo.prepare_planner import planner_dir, read_rows
from genalign.storage import (
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    read_manifest,
    write_manifest,
)
from genalign.tracking import Tracker

BASE_ITERATION = -1


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
        comparison,
        iteration_figure,
        iteration_table,
        markdown_summary,
        summarize_rows,
        type_figure,
    )
    from genalign.evaluation.report import save_figure

    if (iteration == BASE_ITERATION) != (history is None):
        raise ValueError(f"evaluate-planner: iteration {iteration} needs "
                         f"{'no history (it is the base)' if history is not None else 'the previous report as history'}")
    previous = []
    if history is not None:
        read_manifest(history, "report")
        previous = json.loads((history / "report.json").read_text())["history"]
    questions = read_rows(eval_dataset)
    start = time.perf_counter()
    with atomic_dir(report) as tmp:
        rows, _, counts = plan_rows(questions, planner_dir(model), eval_dataset, cfg, tmp / "gallery")
        seconds = time.perf_counter() - start
        entry = {"label": label_of(iteration), "iteration": iteration, "metrics": summarize_rows(rows),
                 "accuracy": accuracy_breakdown(rows), "counts": counts}
        full = [*previous, entry]
        base = next(e for e in full if e["iteration"] == BASE_ITERATION)
        comp = comparison(base["metrics"], entry["metrics"], min_improvement=cfg.min_improvement)
        metrics = {f"eval/{k}": float(v) for k, v in entry["metrics"].items()}
        metrics.update({f"eval/base_{k}": float(v) for k, v in base["metrics"].items()})
        metrics["eval/accuracy_ci_low"], metrics["eval/accuracy_ci_high"] = entry["accuracy"]["overall"]["ci95"]
        summary = _summary(iteration, entry, pairs, adapter, seconds)
        atomic_write_json(tmp / "summary.json", summary)
        atomic_write_json(tmp / "report.json", {"iteration": iteration, "history": full, "metrics": metrics,
                                                 "comparison": comp, "summary": summary})
        atomic_write_text(tmp / "rows.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        figures = {"history.png": iteration_figure(full), "types.png": type_figure(full)}
        for name, fig in figures.items():
            save_figure(fig, tmp / name)
            tracker.log_artifact(tmp / name, "plots")
        table = iteration_table(full)
        atomic_write_text(tmp / "table.txt", table + "\n")
        markdown = markdown_summary(full, comp["gate"])
        atomic_write_text(tmp / "report.md", markdown)
        atomic_write_text(tmp / "report.html", _html(markdown, tmp, rows[: cfg.gallery], eval_dataset,
                                                           {q["id"]: q for q in questions}))
        write_manifest(tmp, kind="report", config=cfg.to_dict(), counts=counts, hash_files=["report.json", "rows.jsonl"],
                       inputs={"model": str(model), "eval_dataset": str(eval_dataset)},
                       extra={"iteration": iteration})
    print(table)
    tracker.log_metrics(metrics, step=iteration + 1)
    return StageResult(metrics=metrics, summary={"html": str(report / "report.html"),
                                                 "markdown": str(report / "report.md"), "gate": comp["gate"]})


def _summary(iteration: int, entry: dict, pairs: Path | None, adapter: Path | None, seconds: float) -> dict:
    """The iteration's summary.json: pairs, training, evaluation and timings."""
    out: dict[str, Any] = {"iteration": iteration, "evaluation": entry["metrics"],
                           "timings": {"evaluate_s": round(seconds, 2)}}
    if pairs is not None:
        manifest = read_manifest(pairs, "pairs")
        out["pairs"] = {"counts": manifest["counts"], "gap": manifest.get("gap"), "scores": manifest.get("scores")}
    if adapter is not None:
        meta = json.loads((adapter / "genalign.json").read_text())
        out["train"] = {k: v for k, v in meta["metrics"].items()}
        out["timings"]["train_s"] = round(meta["metrics"].get("train/seconds", 0.0), 2)
    return out


def _html(markdown: str, root: Path, rows: list[dict], dataset: Path, questions: dict[str, dict]) -> str:
    """A standalone page: the summary (as preformatted Markdown), the plots and a gallery of
    held-out questions with the plan's views, all images embedded."""
    import base64

    def img(path: Path, alt: str) -> str:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}" width="112">'

    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>planner-dpo evaluation</title>",
             "<style>body{font-family:sans-serif;margin:2em}td{vertical-align:top;padding:4px 8px}</style>",
             "</head><body>", f"<pre>{html.escape(markdown)}</pre>"]
    for name in ("history.png", "types.png"):
        data = base64.b64encode((root / name).read_bytes()).decode("ascii")
        parts.append(f'<p><img alt="{name}" src="data:image/png;base64,{data}"></p>')
    if rows:
        parts.append("<h2>Held-out questions: the question's image, then each instruction's view</h2><table>")
        for r in rows:
            cells = [img(dataset / rel, "question") for rel in questions[r["id"]]["images"]]
            for v in r["views"]:
                cells.append(img(root / "gallery" / v["image"], v["instruction"]) if v["image"] else html.escape(v["status"]))
            verdict = "reveals" if r["revealed"] else ("malformed" if r["malformed"] else "does not reveal")
            parts.append(f"<tr><td>{html.escape(r['id'])}<br>{html.escape(r['question_type'])}<br><b>{verdict}</b>"
                         f"</td><td>{html.escape(r['plan'])}</td><td>{''.join(cells)}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


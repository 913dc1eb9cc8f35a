"""The tiny preset's critic: does an instruction's view reveal the answer? Geometric ground truth.

For a synthetic spatial question ("What is directly behind the red cube?") a view
reveals the answer when, in an object-id buffer of the view (`render.scenes.visibility`
at `resolution` pixels):

- the answer object is visible: at least `min_visible_fraction` of the pixels it would
  cover on its own are not hidden by another object, and at least `min_visible_pixels`;
- the relation is observable: the reference object is visible too (at least
  `min_reference_fraction` of its own pixels), and for "on top of" questions the view
  looks down on the answer by at least `min_above_elevation_deg` (an eye-level view
  sees a box's top edge-on, so what lies on it is not shown).

The rule itself (`view_evidence`, `decide`) is in `genalign.data.scene_views`, because
the scene generator checks its designs with it too.

A plan's score (higher is better, 0..1): each instruction gives 1 when it executed and
its view reveals the answer, else 0 (an instruction the executor failed on or timed out
on counts as not revealing and is counted in `detail`); `reduce` = mean takes the share
of revealing instructions, max whether any reveals. Following DESIGN.md, a plan that
does not parse (a failed generation) scores -1.0 and an empty instruction list 0.0.

    >>> from genalign.scorers.scene_oracle import SceneOracle
    >>> score, detail = SceneOracle(OracleConfig()).score_plan(scene, plan_text)

On the generated scenes (200, seed 11) a uniformly random instruction of the vocabulary
reveals the answer 15% of the time, and no view reveals more than 50% of the answers
when the question is not read: which views reveal depends on the question type (the
table in `genalign.data.spatial_scenes`). The designed views of each question always
reveal, so choosing by the question (behind: back, left_of: left, right_of: right,
above: top) scores 1.0 (tests/unit/test_executor_oracle.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from genalign.config.planner_world import OracleConfig
from genalign.data.scene_views import (
    InstructionError,
    ViewEvidence,
    decide,
    parse_instruction,
    view_evidence,
)
from genalign.data.spatial_scenes import SpatialScene
from genalign.executors.base import ExecutionResult
from genalign.generators.plan_format import Plan, PlanFormatError, parse_plan

# A plan that failed to parse, and a plan with nothing to execute (DESIGN.md, scored).
FAILED_SCORE = -1.0
EMPTY_SCORE = 0.0


class SceneOracle:
    """Scores plans for synthetic scenes by whether their views reveal the answer."""

    name = "scene-oracle"
    higher_is_better = True

    def __init__(self, cfg: OracleConfig | None = None):
        self.cfg = cfg or OracleConfig()
        self._cache: dict[tuple[SpatialScene, str], ViewEvidence] = {}

    def evidence(self, scene: SpatialScene, view: str) -> ViewEvidence:
        key = (scene, view)
        if key not in self._cache:
            self._cache[key] = view_evidence(scene, view, self.cfg.resolution)
        return self._cache[key]

    def view_reveals(self, scene: SpatialScene, view: str) -> bool:
        """Whether the view key (e.g. "back-high") reveals the answer of `scene`."""
        return decide(self.evidence(scene, view), scene.question.type, self.cfg)

    def check_instruction(self, scene: SpatialScene, instruction: str) -> dict[str, Any]:
        """One instruction's outcome as a JSON-able dict: view, reveals, and the evidence.

        An instruction outside the vocabulary does not reveal (`error` says why).
        """
        try:
            view = parse_instruction(instruction, scene.object_names)
        except InstructionError as e:
            return {"instruction": instruction, "view": None, "reveals": False, "error": str(e)}
        ev = self.evidence(scene, view)
        return {
            "instruction": instruction,
            "reveals": decide(ev, scene.question.type, self.cfg),
            **ev.to_dict(),
        }

    def score_plan(
        self,
        scene: SpatialScene,
        plan: str | Plan,
        executions: Sequence[ExecutionResult | str] | None = None,
    ) -> tuple[float, dict[str, Any]]:
        """(score, detail) of a plan for `scene`; detail is JSON-serialisable.

        `plan` is the planner's text (parsed here; a PlanFormatError scores -1.0) or a
        parsed Plan. `executions` holds the executor's result (or just its status) for each
        instruction, in order; without it an instruction counts as executed exactly when it
        is in the vocabulary, as the render-view executor would have it.
        """
        if isinstance(plan, str):
            try:
                plan = parse_plan(plan)
            except PlanFormatError as e:
                return FAILED_SCORE, {"outcome": "unparseable", "error": str(e)}
        n = len(plan.instructions)
        if n == 0:
            return EMPTY_SCORE, {"outcome": "empty", "instructions": 0}
        if executions is not None and len(executions) != n:
            raise ValueError(f"score_plan: {len(executions)} executions for {n} instructions")
        per: list[dict[str, Any]] = []
        counts = {"ok": 0, "failed": 0, "timeout": 0}
        for i, instruction in enumerate(plan.instructions):
            row = self.check_instruction(scene, instruction)
            if executions is None:
                status = "failed" if row["view"] is None else "ok"
            else:
                ex = executions[i]
                status = ex.status if isinstance(ex, ExecutionResult) else ex
                if status not in counts:
                    raise ValueError(
                        f"score_plan: execution {i}: unknown status {status!r}; "
                        f"valid: {sorted(counts)}"
                    )
                if status != "ok" and isinstance(ex, ExecutionResult) and "error" not in row:
                    row["error"] = ex.error
            counts[status] += 1
            row["status"] = status
            row["reveals"] = bool(row["reveals"] and status == "ok")
            per.append(row)
        outcomes = [1.0 if r["reveals"] else 0.0 for r in per]
        mean, best = sum(outcomes) / n, max(outcomes)
        score = mean if self.cfg.reduce == "mean" else best
        detail = {
            "outcome": "scored",
            "instructions": n,
            "executed": counts["ok"],
            "failed": counts["failed"],
            "timeouts": counts["timeout"],
            "revealing": int(sum(outcomes)),
            "mean": mean,
            "max": best,
            "question_type": scene.question.type,
            "per_instruction": per,
        }
        return score, detail

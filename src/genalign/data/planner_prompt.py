"""The planner's user text for a spatial-QA row: the question, its options, and the plan
format it must answer in (`<thinking>` + `<instructions>`, see
`genalign.generators.plan_format`).

Rollouts (`genalign.generators.planner`), the warm start, the preference pairs
(`genalign.data.planner_pairs`) and the evaluation all build the prompt here, so a
pair's prompt is the one its plans were sampled with.

    >>> from genalign.data.planner_prompt import planner_prompt
    >>> planner_prompt({"question": "What is behind the red cube?", "options": ["A. ..."]})
"""

from __future__ import annotations

INSTRUCTION_EXAMPLES = (
    "view from the left",
    "view from the front at a high angle",
    "zoom in on the red cube",
)


def planner_prompt(row: dict) -> str:
    """The planner's user text for a spatial-QA row (the images come before it)."""
    options = "\n".join(row.get("options") or [])
    examples = "; ".join(INSTRUCTION_EXAMPLES)
    return (
        f"Question: {row['question']}\n"
        + (f"Options:\n{options}\n" if options else "")
        + "\nThe images show a scene. Ask for new images of it that would help answer the "
        "question: another viewpoint, angle or distance. Write your reasoning in "
        "<thinking></thinking>, then each request in <instruction></instruction> inside "
        f"<instructions></instructions>. Requests look like: {examples}."
    )

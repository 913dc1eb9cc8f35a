"""Configuration of the MLLM judge (`genalign.scorers.mllm_judge.MLLMJudge`): the critic of
planner-dpo that scores how much generated images help answer a spatial question."""

from __future__ import annotations

import dataclasses
import string
from typing import Literal

from genalign.config.base import Config, field

# What a prompt template may name; `MLLMJudge` fills them in per sample.
#   {question}    the question text
#   {options}     "Options:" and one option per line, ending in a newline; "" without options
#   {answer}      the reference answer text
#   {n_original}  how many original images come first
#   {n_generated} how many generated images follow them
PLACEHOLDERS = ("question", "options", "answer", "n_original", "n_generated")

_VIEWS = (
    "The first {n_original} image(s) show a scene; the last {n_generated} image(s) are new "
    "views of the same scene.\n"
)
# The reference answer of an MMSI-format row is an option letter, so the critic is asked for
# the letter and the letter's log-probability is read.
CONFIDENCE_PROMPT = _VIEWS + "Question: {question}\n{options}Answer with the option letter."
EXPLICIT_PROMPT = (
    _VIEWS + "Question: {question}\n{options}How much do the new images help answer the "
    "spatial question? Reply with a number from 1 to 10."
)


@dataclasses.dataclass(frozen=True)
class JudgeConfig(Config):
    """How the critic MLLM turns (images, generated images, question) into a score.

    Every method's score is on one common scale, [0, 1], higher is better:
    confidence -> exp(mean token log-probability of the reference answer) (the geometric
    mean of its token probabilities); explicit 1..10 -> (s - 1) / 9. The planner-dpo rules
    then rank as intended: a failed generation (-1.0) below every valid score, an empty
    instruction list (0.0) at the bottom of the valid range.
    """

    # The planner-dpo issue: confidence, explicit, or both (a weighted average).
    method: Literal["confidence", "explicit", "both"] = field(
        "confidence",
        help="confidence: the mean log-probability of the reference answer's tokens given the "
        "original images, the generated images and the question (teacher forcing), mapped by "
        "exp to [0, 1]; explicit: the critic's greedy 1-10 answer to how much the generated "
        "images help, mapped by (s - 1) / 9; both: weight * confidence + (1 - weight) * "
        "explicit on that scale (the planner-dpo issue).",
    )
    # The issue asks for a weighted average and names no weight: equal weights.
    weight: float = field(
        0.5,
        help="For method 'both': the weight of confidence on the common [0, 1] scale; "
        "explicit gets 1 - weight.",
    )
    confidence_prompt: str = field(
        CONFIDENCE_PROMPT,
        help="User text after the images for the confidence method; the reference answer is "
        f"teacher-forced after it. Placeholders: {', '.join(PLACEHOLDERS)}.",
    )
    explicit_prompt: str = field(
        EXPLICIT_PROMPT,
        help="User text after the images for the explicit method: asks for a 1-10 rating of "
        f"how much the generated images help (the planner-dpo issue). Placeholders: "
        f"{', '.join(PLACEHOLDERS)}.",
    )
    # "Score: 7/10" is ~5 tokens of a Qwen tokenizer; 16 leave room for a short preamble
    # and keep a rambling critic cheap (its first valid integer still counts).
    max_new_tokens: int = field(
        16, help="Most tokens the critic generates (greedily) for its explicit 1-10 answer."
    )
    # Two cores on the tiny preset; a real critic on a GPU takes more.
    batch_size: int = field(
        4,
        help="Samples per forward pass (confidence, right-padded) or per generate call "
        "(explicit, left-padded).",
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"weight: expected a number in [0, 1], got {self.weight!r}")
        for name in ("max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {getattr(self, name)}")
        for name in ("confidence_prompt", "explicit_prompt"):
            template = getattr(self, name)
            try:
                used = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
            except ValueError as e:
                raise ValueError(f"{name}: not a format template ({e})") from e
            unknown = sorted(used - set(PLACEHOLDERS))
            if unknown:
                raise ValueError(
                    f"{name}: unknown placeholder(s) {unknown}; valid: {list(PLACEHOLDERS)}"
                )
            if "question" not in used:
                raise ValueError(f"{name}: must contain {{question}}")

"""The planner's output format: a `<thinking>` block, then `<instructions>` of `<instruction>`s.

    <thinking>…</thinking><instructions><instruction>…</instruction>…</instructions>

`parse_plan` turns a planner's text into a `Plan` or raises `PlanFormatError` with the
reason; `format_plan` writes one (the planner's warm-start targets, the tests), and
`parse_plan(format_plan(t, xs)) == Plan(t, xs)` for stripped strings without tags.

Rules: at most one `<thinking>` block, first, optional; exactly one `<instructions>`
block, last, holding only `<instruction>` elements and whitespace; no tag inside
another of the same or a higher level (`<instruction>` inside `<instruction>`,
`<instructions>` inside `<thinking>`, ...); no text outside the blocks except
whitespace; every instruction non-empty. An empty `<instructions></instructions>` is a
valid plan with no instructions (scored 0, not as a failure).

    >>> from genalign.generators.plan_format import parse_plan, format_plan
    >>> parse_plan("<thinking>hidden</thinking><instructions><instruction>view from the "
    ...            "back</instruction></instructions>").instructions
    ['view from the back']
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

TAGS = ("thinking", "instructions", "instruction")
_TAG_RE = re.compile(r"</?(thinking|instructions|instruction)>")


class PlanFormatError(ValueError):
    """Planner output that does not follow the plan format; the message says where."""


@dataclass(frozen=True)
class Plan:
    """A parsed plan: the free-text reasoning and the image requests, stripped, in order."""

    thinking: str
    instructions: list[str] = field(default_factory=list)


def _excerpt(text: str, pos: int) -> str:
    snippet = text[pos : pos + 30].replace("\n", "\\n")
    return f"at character {pos} ({snippet!r})"


def parse_plan(text: str) -> Plan:
    """Parse planner output. Raises PlanFormatError naming the first problem."""
    if not isinstance(text, str):
        raise PlanFormatError(f"expected the plan as a string, got {type(text).__name__}")
    thinking: str | None = None
    instructions: list[str] | None = None
    stack: list[tuple[str, int]] = []  # open tags with the position after them
    current: list[str] = []  # the instructions of the open <instructions> block
    pos = 0
    for m in _TAG_RE.finditer(text):
        tag, closing = m.group(1), m.group(0).startswith("</")
        between = text[pos : m.start()]
        pos = m.end()
        parent = stack[-1][0] if stack else None
        # Text is allowed only inside <thinking> and <instruction>.
        if between.strip() and parent not in ("thinking", "instruction"):
            if parent == "instructions":
                where = "inside <instructions>"
            else:
                where = "after </instructions>" if instructions is not None else "outside the tags"
            raise PlanFormatError(
                f"unexpected text {where} {_excerpt(text, m.start() - len(between))}"
            )
        if not closing:
            if parent in ("thinking", "instruction"):
                raise PlanFormatError(
                    f"<{tag}> nested inside <{parent}> {_excerpt(text, m.start())}"
                )
            if parent == "instructions" and tag != "instruction":
                raise PlanFormatError(
                    f"<{tag}> nested inside <instructions> {_excerpt(text, m.start())}"
                )
            if parent is None and tag == "instruction":
                raise PlanFormatError(
                    f"<instruction> outside <instructions> {_excerpt(text, m.start())}"
                )
            if tag == "thinking" and (thinking is not None or instructions is not None):
                what = (
                    "a second <thinking>"
                    if thinking is not None
                    else "<thinking> after <instructions>"
                )
                raise PlanFormatError(f"{what} {_excerpt(text, m.start())}")
            if tag == "instructions" and instructions is not None:
                raise PlanFormatError(f"a second <instructions> {_excerpt(text, m.start())}")
            stack.append((tag, m.end()))
            continue
        if parent != tag:
            expected = f"</{parent}>" if parent else "no closing tag"
            raise PlanFormatError(
                f"unbalanced tags: </{tag}> where {expected} was expected "
                f"{_excerpt(text, m.start())}"
            )
        _, start = stack.pop()
        body = text[start : m.start()]
        if tag == "thinking":
            thinking = body.strip()
        elif tag == "instruction":
            if not body.strip():
                raise PlanFormatError(f"empty <instruction> {_excerpt(text, start)}")
            current.append(body.strip())
        else:
            instructions, current = current, []
    if stack:
        tag, start = stack[-1]
        raise PlanFormatError(
            f"unbalanced tags: <{tag}> is never closed {_excerpt(text, start - len(tag) - 2)}"
        )
    if text[pos:].strip():
        where = "after </instructions>" if instructions is not None else "outside the tags"
        raise PlanFormatError(f"unexpected text {where} {_excerpt(text, pos)}")
    if instructions is None:
        raise PlanFormatError("no <instructions> block")
    return Plan(thinking=thinking or "", instructions=instructions)


def format_plan(thinking: str, instructions: list[str] | tuple[str, ...]) -> str:
    """Write a plan in the planner's format (the inverse of `parse_plan` on stripped text)."""
    named = [
        ("thinking", thinking),
        *((f"instructions[{i}]", s) for i, s in enumerate(instructions)),
    ]
    for where, value in named:
        if not isinstance(value, str):
            raise TypeError(f"{where}: expected a string, got {type(value).__name__}")
        if _TAG_RE.search(value):
            raise ValueError(f"{where}: contains a plan tag, which would not parse back: {value!r}")
    empty = [i for i, s in enumerate(instructions) if not s.strip()]
    if empty:
        raise ValueError(f"instructions{empty}: empty instruction text")
    body = "".join(f"<instruction>{s.strip()}</instruction>" for s in instructions)
    return f"<thinking>{thinking.strip()}</thinking><instructions>{body}</instructions>"

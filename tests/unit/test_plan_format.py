"""The planner's plan format: parse, format, round trip, and every malformed case named."""

import re

import pytest

from genalign.generators.plan_format import Plan, PlanFormatError, format_plan, parse_plan


def test_parses_thinking_and_instructions_in_order():
    text = (
        "<thinking>The cube hides what is behind it.</thinking>\n"
        "<instructions>\n  <instruction> view from the back </instruction>\n"
        "  <instruction>view from the top</instruction>\n</instructions>\n"
    )
    plan = parse_plan(text)
    assert plan == Plan(
        "The cube hides what is behind it.", ["view from the back", "view from the top"]
    )


@pytest.mark.parametrize(
    "thinking, instructions",
    [
        ("look behind", ["view from the back"]),
        ("", ["zoom in on the red cube", "view from the left at a high angle"]),
        ("multi\nline <b>html</b> & symbols", []),
        ("one", ["a < b > c"]),
    ],
)
def test_round_trip(thinking, instructions):
    text = format_plan(thinking, instructions)
    assert parse_plan(text) == Plan(thinking, instructions)
    plan = parse_plan(text)
    assert format_plan(plan.thinking, plan.instructions) == text


def test_empty_instruction_list_is_a_valid_plan():
    assert (
        parse_plan("<thinking>nothing helps</thinking><instructions></instructions>").instructions
        == []
    )
    assert parse_plan("<thinking>x</thinking><instructions> \n </instructions>").instructions == []


def test_thinking_is_optional():
    assert parse_plan(
        "<instructions><instruction>view from the top</instruction></instructions>"
    ) == Plan("", ["view from the top"])


@pytest.mark.parametrize(
    "text, reason",
    [
        ("<thinking>just thoughts</thinking>", "no <instructions>"),
        ("", "no <instructions>"),
        ("view from the back", "outside the tags"),
        ("<thinking>x</thinking><instructions><instruction>a</instruction>", "never closed"),
        ("<thinking>x<instructions></instructions>", "nested inside <thinking>"),
        ("<thinking>x</thinking><instructions><instruction>a</instructions>", "unbalanced"),
        ("<thinking>x</thinking></instructions>", "unbalanced"),
        (
            "<instructions><instruction>a<instruction>b</instruction></instruction></instructions>",
            "nested inside <instruction>",
        ),
        (
            "<instructions><instructions></instructions></instructions>",
            "nested inside <instructions>",
        ),
        ("<instructions><thinking>x</thinking></instructions>", "nested inside <instructions>"),
        (
            "<instructions><instruction>a</instruction></instructions> and then more",
            "after </instructions>",
        ),
        ("<instructions></instructions>more<instructions></instructions>", "after </instructions>"),
        ("<instructions></instructions><instructions></instructions>", "a second <instructions>"),
        (
            "<instructions></instructions><thinking>late</thinking>",
            "<thinking> after <instructions>",
        ),
        (
            "<thinking>a</thinking><thinking>b</thinking><instructions></instructions>",
            "a second <thinking>",
        ),
        ("Sure! <thinking>x</thinking><instructions></instructions>", "outside the tags"),
        (
            "<instructions>loose text<instruction>a</instruction></instructions>",
            "inside <instructions>",
        ),
        ("<instructions><instruction>  </instruction></instructions>", "empty <instruction>"),
        ("<instruction>a</instruction>", "outside <instructions>"),
    ],
)
def test_malformed_plans_raise_with_the_reason(text, reason):
    with pytest.raises(PlanFormatError, match=re.escape(reason)):
        parse_plan(text)


def test_non_string_input_is_a_format_error():
    with pytest.raises(PlanFormatError, match="expected the plan as a string"):
        parse_plan(None)


def test_format_plan_refuses_text_that_would_not_parse_back():
    with pytest.raises(ValueError, match="plan tag"):
        format_plan("x", ["view </instruction> from"])
    with pytest.raises(ValueError, match="plan tag"):
        format_plan("<instructions>", [])
    with pytest.raises(ValueError, match="empty instruction"):
        format_plan("x", ["  "])

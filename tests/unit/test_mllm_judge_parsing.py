"""The MLLM judge without a model: explicit-answer parsing, the common [0, 1] scale, how
`both` combines (and fails), the plan rules (-1.0 failed, 0.0 empty) and the config checks."""

import json
import math

import numpy as np
import pytest

from genalign.config.base import ConfigError
from genalign.config.judge import JudgeConfig
from genalign.scorers import SCORERS
from genalign.scorers.mllm_judge import (
    ExplicitParseError,
    JudgeSample,
    MLLMJudge,
    collate,
    combine,
    confidence_to_unit,
    explicit_to_unit,
    parse_explicit,
    prompt_text,
)


@pytest.mark.parametrize(
    "text, rating",
    [
        ("7", 7),
        ("Score: 7", 7),
        ("score:7", 7),
        ("7/10", 7),
        ("10/10", 10),
        ("1", 1),
        ("10", 10),
        ("I would rate it 8 out of 10.", 8),
        ("On a scale of 1-10, this is a 6.", 6),
        ("From 1 to 10: 3", 3),
        ("The images help a lot: 9", 9),
        ("4 or maybe 5", 4),  # several numbers: the first valid one
        ("0, no wait, 2", 2),  # the first out of range, then a valid one
        ("Score: 12, I mean 7", 7),
        ("7.5 then 6", 6),  # not an integer, then a valid one
    ],
)
def test_explicit_answers_that_parse(text, rating):
    assert parse_explicit(text) == rating


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "unparseable"),
        ("The image helps a lot.", "unparseable"),
        ("\ufffd\x0b pyramid pyramid", "unparseable"),
        ("seven", "unparseable"),
        ("0", "out of range"),
        ("11", "out of range"),
        ("Score: -3", "out of range"),
        ("100", "out of range"),
        ("7.5", "out of range"),
        ("0/10", "out of range"),
    ],
)
def test_explicit_answers_that_fail(text, reason):
    with pytest.raises(ExplicitParseError) as e:
        parse_explicit(text)
    assert str(e.value) == f"{reason}: {text[:80]}"


def test_failure_text_is_cut_at_80_characters():
    with pytest.raises(ExplicitParseError, match=r"^unparseable: a{80}$"):
        parse_explicit("a" * 200)


def test_common_scale():
    assert confidence_to_unit(0.0) == 1.0
    assert confidence_to_unit(math.log(0.25)) == pytest.approx(0.25)
    # two answer tokens of probabilities 0.5 and 0.125: geometric mean 0.25
    assert confidence_to_unit((math.log(0.5) + math.log(0.125)) / 2) == pytest.approx(0.25)
    assert explicit_to_unit(1) == 0.0
    assert explicit_to_unit(10) == 1.0
    assert explicit_to_unit(4) == pytest.approx(1 / 3)
    for bad in (0, 11):
        with pytest.raises(ValueError):
            explicit_to_unit(bad)
    for bad in (0.5, math.nan, -math.inf):
        with pytest.raises(ValueError):
            confidence_to_unit(bad)


def test_combine_each_method():
    conf = (math.log(0.5), 3)
    score, detail = combine(JudgeConfig(method="confidence"), conf)
    assert score == pytest.approx(0.5)
    assert detail == {
        "method": "confidence",
        "confidence_logprob": math.log(0.5),
        "confidence": pytest.approx(0.5),
        "answer_tokens": 3,
    }
    score, detail = combine(JudgeConfig(method="explicit"), None, "Score: 7/10")
    assert score == pytest.approx(6 / 9)
    assert detail["explicit_rating"] == 7
    # both, weight 0.25 on confidence: 0.25 * 0.5 + 0.75 * (6 / 9) = 0.625
    score, detail = combine(JudgeConfig(method="both", weight=0.25), conf, "7")
    assert score == pytest.approx(0.625)
    assert detail["confidence"] == pytest.approx(0.5) and detail["explicit"] == pytest.approx(6 / 9)


def test_explicit_failure_is_counted_not_zero():
    score, detail = combine(JudgeConfig(method="explicit"), None, "the image helps")
    assert score is None
    assert detail["explicit_error"] == "unparseable: the image helps"
    # both: the whole sample fails, and keeps the confidence it did compute
    score, detail = combine(JudgeConfig(method="both"), (math.log(0.5), 1), "42")
    assert score is None
    assert detail["explicit_error"] == "out of range: 42"
    assert detail["confidence"] == pytest.approx(0.5)


@pytest.fixture
def judge(tmp_path):
    # A model directory is checked for its type up front; the model loads on first use.
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    return MLLMJudge(tmp_path, JudgeConfig(method="both"))


def test_plan_rules_do_not_run_the_critic(judge):
    sample = JudgeSample([np.zeros((8, 8, 3), np.uint8)], [], "Which object is behind?", answer="A")
    assert judge.score_plan(sample, "failed") == (-1.0, {"outcome": "failed"})
    assert judge.score_plan(sample, "empty") == (0.0, {"outcome": "empty"})
    assert judge._loaded is None
    with pytest.raises(ValueError, match="plan_status 'done'"):
        judge.score_plan(sample, "done")


def test_samples_that_cannot_be_judged_are_counted_failures(judge, tmp_path):
    missing = JudgeSample([tmp_path / "gone.png"], [tmp_path / "x.png"], "q?", answer="A", id="s0")
    no_views = JudgeSample([np.zeros((8, 8, 3), np.uint8)], [], "q?", answer="A")
    no_answer = JudgeSample([np.zeros((8, 8, 3), np.uint8)], [np.zeros((8, 8), np.uint8)], "q?")
    results = judge.score_many([missing, no_views, no_answer])
    assert [r[0] for r in results] == [None, None, None]
    assert "gone.png does not exist" in results[0][1]["error"]
    assert results[1][1]["explicit_error"] == "no generated images"
    assert results[2][1]["error"] == "sample None: no answer"
    assert judge._loaded is None


def test_unknown_model_type_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type 'llama' is not a supported"):
        MLLMJudge(tmp_path)


def test_prompt_placeholders():
    sample = JudgeSample(
        ["a.png"],
        ["b.png", "c.png"],
        "What is behind the red cube?",
        ["A. blue sphere", "B. green cylinder"],
        "B",
    )
    text = prompt_text(JudgeConfig().confidence_prompt, sample)
    assert text.startswith("The first 1 image(s) show a scene; the last 2 image(s)")
    assert "Question: What is behind the red cube?\nOptions:\nA. blue sphere\n" in text
    assert prompt_text("{question} [{options}] {answer}", JudgeSample([], [], "q?")) == "q? [] "


def test_config_checks():
    with pytest.raises(ConfigError, match="weight"):
        JudgeConfig.from_dict({"weight": 1.5})
    with pytest.raises(ConfigError, match="'both'"):
        JudgeConfig.from_dict({"method": "mean"})
    with pytest.raises(ConfigError, match=r"unknown placeholder\(s\) \['image'\]"):
        JudgeConfig.from_dict({"explicit_prompt": "{question} {image}"})
    with pytest.raises(ConfigError, match="must contain"):
        JudgeConfig.from_dict({"confidence_prompt": "Answer."})
    with pytest.raises(ConfigError, match="batch_size"):
        JudgeConfig.from_dict({"batch_size": 0})


def test_collate_pads_sequences_and_concatenates_images():
    import torch

    a = {
        "input_ids": torch.tensor([[5, 6, 7]]),
        "attention_mask": torch.ones(1, 3, dtype=torch.long),
        "pixel_values": torch.zeros(4, 2),
        "image_grid_thw": torch.tensor([[1, 2, 2]]),
    }
    b = {
        "input_ids": torch.tensor([[8]]),
        "attention_mask": torch.ones(1, 1, dtype=torch.long),
        "pixel_values": torch.ones(8, 2),
        "image_grid_thw": torch.tensor([[1, 2, 4]]),
    }
    right = collate([a, b], pad_id=0, side="right")
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert right["pixel_values"].shape == (12, 2) and right["image_grid_thw"].shape == (2, 3)
    left = collate([a, b], pad_id=0, side="left")
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    with pytest.raises(ValueError, match="unknown processor output 'video'"):
        collate([{**a, "video": torch.zeros(1)}, b], pad_id=0, side="right")


def test_in_the_scorer_table():
    assert "mllm-judge" in SCORERS
    with pytest.raises(ValueError, match="needs 'model'"):
        SCORERS["mllm-judge"]({"method": "both"})

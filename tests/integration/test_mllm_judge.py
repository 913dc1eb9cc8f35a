"""The MLLM judge on a tiny random Qwen2-VL: the three methods give finite, repeatable
scores; confidence equals a hand computation of the mean answer-token log-probability;
an unparseable explicit answer is a counted failure (also for `both`); batching does not
change a sample's score; the scorer table's `score_files` reads JSON requests."""

import json
import math

import numpy as np
import pytest
import torch

from genalign.config.judge import JudgeConfig
from genalign.models.tiny_qwen_vl import build_tiny_qwen2_vl
from genalign.models.vlm import chat_inputs
from genalign.scorers import get_scorer
from genalign.scorers.mllm_judge import JudgeSample, MLLMJudge, prompt_text, to_image

pytestmark = pytest.mark.integration


def image(seed: int, size: int = 56) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


SAMPLES = [
    JudgeSample(
        original_images=[image(0)],
        generated_images=[image(1)],
        question="Which object is behind the red cube?",
        options=["A. blue sphere", "B. green cylinder"],
        answer="B. green cylinder",
        id="q0",
    ),
    JudgeSample(
        original_images=[image(2), image(3, size=48)],
        generated_images=[image(4), image(5)],
        question="Is the blue sphere left of the red cube?",
        options=["A. yes", "B. no"],
        answer="A",
        id="q1",
    ),
    JudgeSample(
        original_images=[image(6)],
        generated_images=[image(7)],
        question="What is directly above the green cylinder?",
        options=[],
        answer="the yellow cone",
        id="q2",
    ),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("critic") / "tiny-qwen2-vl", seed=0)


@pytest.fixture(scope="module")
def judges(model_dir):
    first = MLLMJudge(model_dir, JudgeConfig(method="confidence", batch_size=1))
    loaded = first._load()
    out = {"confidence": first}
    for method in ("explicit", "both"):
        out[method] = MLLMJudge(model_dir, JudgeConfig(method=method, batch_size=1))
        out[method]._loaded = loaded  # one copy of the model for all three
    return out


@pytest.mark.parametrize("method", ["confidence", "explicit", "both"])
def test_each_method_is_finite_or_counted_and_repeatable(judges, method):
    first = judges[method].score_many(SAMPLES)
    assert judges[method].score_many(SAMPLES) == first
    for score, detail in first:
        assert detail["method"] == method
        if score is None:  # only an unusable explicit answer may fail
            assert method != "confidence"
            assert detail["explicit_error"].startswith(("unparseable: ", "out of range: "))
        else:
            assert math.isfinite(score) and 0.0 <= score <= 1.0
        if method != "explicit":
            assert math.isfinite(detail["confidence_logprob"])


def test_confidence_is_the_mean_answer_token_log_probability(judges):
    judge = judges["confidence"]
    model, processor = judge.model, judge.processor
    for sample, (score, detail) in zip(SAMPLES, judge.score_many(SAMPLES)):
        images = [to_image(x) for x in (*sample.original_images, *sample.generated_images)]
        text = prompt_text(judge.cfg.confidence_prompt, sample)
        batch = chat_inputs(processor, images, text, answer=sample.answer)
        ids = batch.inputs["input_ids"][0]
        assert processor.tokenizer.decode(ids[batch.answer_positions]) == sample.answer
        with torch.no_grad():
            logits = model(**batch.inputs).logits[0]  # [L, V]
        logp = torch.log_softmax(logits.double(), dim=-1)
        expected = float(
            np.mean([logp[p - 1, ids[p]].item() for p in batch.answer_positions.tolist()])
        )
        assert detail["answer_tokens"] == len(batch.answer_positions)
        assert detail["confidence_logprob"] == pytest.approx(expected, abs=1e-6)
        assert score == pytest.approx(math.exp(expected), abs=1e-6)


def test_unparseable_explicit_answer_is_a_counted_failure(judges):
    explicit = judges["explicit"].score_many(SAMPLES)
    both = judges["both"].score_many(SAMPLES)
    confidence = judges["confidence"].score_many(SAMPLES)
    for (e_score, e_detail), (b_score, b_detail), (c_score, _) in zip(explicit, both, confidence):
        assert b_detail["explicit_answer"] == e_detail["explicit_answer"]
        if e_score is None:  # the random critic's usual answer
            assert e_detail["explicit_error"].endswith(e_detail["explicit_answer"][:80])
            assert b_score is None
            assert b_detail["explicit_error"] == e_detail["explicit_error"]
            assert b_detail["confidence"] == pytest.approx(c_score)
        else:
            assert 1 <= e_detail["explicit_rating"] <= 10
            assert b_score == pytest.approx(0.5 * c_score + 0.5 * e_score)
    print("explicit answers:", [d["explicit_answer"] for _, d in explicit])


def test_batching_does_not_change_scores(judges, model_dir):
    loaded = judges["confidence"]._load()
    for method in ("confidence", "explicit"):
        batched = MLLMJudge(model_dir, JudgeConfig(method=method, batch_size=3))
        batched._loaded = loaded
        alone = judges[method].score_many(SAMPLES)
        together = batched.score_many(SAMPLES)
        for (s1, d1), (s2, d2) in zip(alone, together):
            if method == "confidence":
                assert d2["confidence_logprob"] == pytest.approx(d1["confidence_logprob"], abs=1e-4)
            else:
                assert d2["explicit_answer"] == d1["explicit_answer"]


def test_plans_and_the_scorer_table(model_dir, judges, tmp_path):
    from PIL import Image

    judge = judges["confidence"]
    score, detail = judge.score_plan(SAMPLES[0], "ok")
    assert detail["outcome"] == "ok" and score == judge.score(SAMPLES[0])[0]
    assert judge.score_plans(SAMPLES[:2], ["failed", "empty"]) == [
        (-1.0, {"outcome": "failed"}),
        (0.0, {"outcome": "empty"}),
    ]

    sample = SAMPLES[0]
    Image.fromarray(sample.original_images[0]).save(tmp_path / "front.png")
    Image.fromarray(sample.generated_images[0]).save(tmp_path / "left.png")
    request = {
        "images": ["front.png"],
        "generated": ["left.png"],
        "question": sample.question,
        "options": sample.options,
        "answer": sample.answer,
    }
    paths = []
    for name, extra in [
        ("ok", {}),
        ("failed", {"plan_status": "failed"}),
        ("missing", {"images": ["gone.png"]}),
    ]:
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps({**request, **extra}))
    (tmp_path / "broken.json").write_text("{")
    paths.append(tmp_path / "broken.json")
    scorer = get_scorer("mllm-judge", {"model": str(model_dir), "method": "confidence"})
    ok, failed, missing, broken = scorer.score_files(paths)
    assert ok.score == pytest.approx(score, abs=1e-6) and ok.detail["answer_tokens"] > 1
    assert failed.score == -1.0
    assert missing.status == "failed" and "gone.png does not exist" in missing.error
    assert broken.status == "failed" and "JSONDecodeError" in broken.error

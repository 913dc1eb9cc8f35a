"""Fast checks of the VLM layer: model_type detection, the tiny tokenizer and chat template,
the planner's config, prompt, seeds and image loading (no model is built)."""

import json

import pytest

from genalign.config.base import ConfigError
from genalign.config.planner import PlannerSamplingConfig
from genalign.data.planner_prompt import planner_prompt
from genalign.generators.planner import MissingImageError, load_images, rollout_seed
from genalign.models.tiny_qwen_vl import CHAT_TEMPLATE, SPECIAL_TOKENS, build_tokenizer
from genalign.models.vlm import FAMILIES, VLMConfigError, model_type, processor_class

ROW = {
    "id": "q0",
    "images": ["a.png", "b.png"],
    "question": "Which object is behind the red cube?",
    "options": ["A. blue sphere", "B. green cylinder"],
    "answer": "B",
}


def write_config(tmp_path, content):
    (tmp_path / "config.json").write_text(
        content if isinstance(content, str) else json.dumps(content)
    )
    return tmp_path


@pytest.mark.parametrize("kind", sorted(FAMILIES))
def test_model_type_detected_from_config(tmp_path, kind):
    assert model_type(write_config(tmp_path, {"model_type": kind, "hidden_size": 8})) == kind


def test_family_table_names_transformers_classes():
    import transformers

    exported = set(dir(transformers))  # the lazy module lists its names without importing
    assert set(FAMILIES) == {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe"}
    for family in FAMILIES.values():
        assert family.model_class in exported
        assert family.processor_class in exported


def test_unknown_model_type_is_a_clear_error(tmp_path):
    write_config(tmp_path, {"model_type": "llava"})
    with pytest.raises(VLMConfigError) as e:
        model_type(tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "config.json") in msg and "'llava'" in msg
    for kind in FAMILIES:
        assert kind in msg


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "missing"),
        ("{not json", "invalid JSON (line 1"),
        ({"hidden_size": 8}, "no 'model_type'"),
    ],
)
def test_bad_config_json(tmp_path, content, expected):
    if content is not None:
        write_config(tmp_path, content)
    with pytest.raises(VLMConfigError, match=expected.replace("(", r"\(")):
        model_type(tmp_path)


def test_processor_class_rejects_unknown_type():
    with pytest.raises(VLMConfigError, match="supported are"):
        processor_class("llava")


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(vocab_texts=["a purple torus beside a teal wedge"])


def test_tokenizer_special_tokens(tokenizer):
    ids = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert len(set(ids)) == len(SPECIAL_TOKENS) and tokenizer.unk_token_id not in ids
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    text = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>"
    encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
    for token in (
        "<|im_start|>",
        "<|vision_start|>",
        "<|image_pad|>",
        "<|vision_end|>",
        "<|im_end|>",
    ):
        assert encoded.count(tokenizer.convert_tokens_to_ids(token)) == 1
    assert tokenizer.decode(encoded) == text
    assert 256 < len(tokenizer) <= 1024


def test_tokenizer_round_trips_plans_and_any_text(tokenizer):
    plan = (
        "<thinking>The red cube hides the blue sphere.</thinking><instructions>"
        "<instruction>view from the left at a high angle</instruction>"
        "<instruction>zoom in on the red cube</instruction></instructions>"
    )
    for text in (plan, "Ünïcödé 字 and\ttabs\n\nnew lines", "a purple torus beside a teal wedge"):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    # the planner vocabulary is compact: whole words, not bytes
    assert len(tokenizer(plan, add_special_tokens=False)["input_ids"]) < 40


def test_chat_template_matches_qwen2_vl(tokenizer):
    assert tokenizer.chat_template == CHAT_TEMPLATE
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Q?"}],
        }
    ]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|image_pad|><|vision_end|>"
        "Q?<|im_end|>\n<|im_start|>assistant\n"
    )
    convo = messages + [{"role": "assistant", "content": "B"}]
    full = tokenizer.apply_chat_template(convo, tokenize=False)
    assert full == prompt + "B<|im_end|>\n"


def test_planner_config_defaults_and_checks():
    cfg = PlannerSamplingConfig()
    assert (cfg.k, cfg.temperature) == (8, 0.9)
    assert PlannerSamplingConfig.from_dict({"k": 4.0, "batch_size": 2}).k == 4
    with pytest.raises(ConfigError, match="unknown key"):
        PlannerSamplingConfig.from_dict({"top_q": 1})
    with pytest.raises(ConfigError, match="temperature"):
        PlannerSamplingConfig.from_dict({"temperature": -1})
    with pytest.raises(ConfigError, match="batch_size"):
        PlannerSamplingConfig.from_dict({"batch_size": 0})


def test_rollout_seeds_are_stable_and_distinct():
    seeds = {rollout_seed(0, rid, j) for rid in ("a", "b") for j in range(8)}
    assert len(seeds) == 16
    assert rollout_seed(3, "a", 1) == rollout_seed(3, "a", 1) != rollout_seed(4, "a", 1)
    assert 0 <= rollout_seed(0, "a", 0) < 2**63


def test_planner_prompt_asks_for_the_plan_format():
    prompt = planner_prompt(ROW)
    assert ROW["question"] in prompt and "A. blue sphere\nB. green cylinder" in prompt
    for tag in ("<thinking>", "<instructions>", "<instruction>"):
        assert tag in prompt
    assert "Answer" not in prompt and "answer: B" not in prompt.lower()


def test_missing_image_names_row_and_path(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    with pytest.raises(MissingImageError, match=r"row 'q0': image .*b\.png does not exist"):
        load_images(ROW, tmp_path)
    images = load_images({**ROW, "images": ["a.png"]}, tmp_path)
    assert images[0].mode == "RGB" and images[0].size == (8, 8)

"""The tiny Qwen2-VL end to end: built through `tiny://tiny-qwen2-vl`, reloaded with
`load_vlm` and with plain transformers, a finite forward pass on images and text, seeded
plan sampling, and a LoRA adapter on the attention projections reloaded through
`load_vlm(adapter_dir=...)`."""

import json
import time

import numpy as np
import pytest
import torch

from genalign.config.planner import PlannerSamplingConfig
from genalign.generators.planner import PlannerSampler
from genalign.models import refs
from genalign.models.vlm import chat_inputs, load_vlm

pytestmark = pytest.mark.integration

ROWS = [
    {
        "id": "q0",
        "images": ["a.png", "b.png"],
        "question": "Which object is behind the red cube?",
        "options": ["A. blue sphere", "B. green cylinder"],
        "answer": "B",
    },
    {
        "id": "q1",
        "images": ["b.png"],
        "question": "Is the blue sphere left of the red cube?",
        "options": ["A. yes", "B. no"],
        "answer": "A",
    },
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    start = time.perf_counter()
    out = refs.resolve("tiny://tiny-qwen2-vl", cache=tmp_path_factory.mktemp("cache"))
    print(f"tiny-qwen2-vl built in {time.perf_counter() - start:.1f} s")
    return out


@pytest.fixture(scope="module")
def loaded(model_dir):
    return load_vlm(model_dir)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / name)
    return root


def test_saved_like_a_checkpoint(model_dir):
    from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration

    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "qwen2_vl"
    assert config["text_config"]["rope_parameters"]["mrope_section"] == [2, 3, 3]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == config["image_token_id"]
    model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


def test_forward_on_images_and_text_is_finite(loaded, data_dir):
    from genalign.generators.planner import load_images

    model, processor = loaded
    images = load_images(ROWS[0], data_dir)
    batch = chat_inputs(processor, images, ROWS[0]["question"], answer="B. green cylinder")
    ids = batch.inputs["input_ids"][0]
    assert processor.tokenizer.decode(ids[batch.answer_positions]) == "B. green cylinder"
    # 64x64 image: 8x8 patches of 8 px, merged 2x2 -> 16 placeholder tokens each
    assert int((ids == model.config.image_token_id).sum()) == 2 * 16
    with torch.no_grad():
        logits = model(**batch.inputs).logits  # [1, L, V]
    assert logits.shape[:2] == (1, len(ids)) and torch.isfinite(logits).all()


def test_plans_are_seeded(loaded, data_dir):
    model, processor = loaded
    sampler = PlannerSampler(model, processor, PlannerSamplingConfig(k=3, max_new_tokens=12))
    first = sampler.sample(ROWS, seed=0, root=data_dir)
    assert [len(plans) for plans in first] == [3, 3]
    assert sampler.sample(ROWS, seed=0, root=data_dir) == first
    assert sampler.sample(ROWS, seed=1, root=data_dir) != first
    assert len(set(first[0])) > 1  # rollouts differ from each other
    # a rollout depends on (seed, id, j) only: not on the other rows or the batch size
    alone = PlannerSampler(
        model, processor, PlannerSamplingConfig(k=3, max_new_tokens=12, batch_size=2)
    )
    assert alone.sample(ROWS[1:], seed=0, root=data_dir) == first[1:]
    greedy = sampler.sample(ROWS[:1], temperature=0.0, root=data_dir)[0]
    assert len(set(greedy)) == 1


def test_lora_adapter_reloads_through_load_vlm(model_dir, loaded, data_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    from genalign.generators.planner import load_images

    base, processor = loaded
    model, _ = load_vlm(model_dir)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    wrapped = {n.rsplit(".", 2)[-2] for n, _ in peft_model.named_modules() if n.endswith("lora_A")}
    assert wrapped == set(targets)
    with torch.no_grad():  # LoRA B starts at zero; move it so the adapter changes outputs
        gen = torch.Generator().manual_seed(0)
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    peft_model.save_pretrained(tmp_path / "adapter")

    batch = chat_inputs(processor, load_images(ROWS[1], data_dir), ROWS[1]["question"])
    reloaded, _ = load_vlm(model_dir, adapter_dir=tmp_path / "adapter")
    with torch.no_grad():
        expected = peft_model.eval()(**batch.inputs).logits
        got = reloaded(**batch.inputs).logits
        plain = base(**batch.inputs).logits
    torch.testing.assert_close(got, expected)
    assert (got - plain).abs().max() > 1e-3
    with pytest.raises(ValueError, match="adapter_config.json"):
        load_vlm(model_dir, adapter_dir=tmp_path)

"""Planner DPO on the tiny Qwen2-VL: the trl pairs file loads in trl's DPOTrainer, a few LoRA
steps train (finite loss, adapter changed, base unchanged, lora_ keys only, reload with
load_vlm), the merged model matches the adapter's logits, DoRA runs, and the optimizer
groups carry the three learning rates."""

import json
import math
import re

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from genalign.config.base import ConfigError
from genalign.config.lm_dpo import LOSS_TYPES, LMDPOConfig
from genalign.data.planner_pairs import planner_pairs, read_trl_jsonl, write_trl_jsonl
from genalign.models.tiny_qwen_vl import build_tiny_qwen2_vl
from genalign.models.vlm import chat_inputs, load_vlm
from genalign.records import Pair
from genalign.tracking import NullTracker
from genalign.trainers.lm_dpo import (
    adapter_targets,
    deepspeed_config_path,
    merge_adapter,
    parameter_groups,
    part_of,
    train_lm_dpo,
    use_bf16,
)

pytestmark = pytest.mark.integration

OBJECTS = ("red cube", "blue sphere", "green cylinder", "yellow cone")
SIDES = ("left", "right", "front", "back")


def plan(instructions):
    body = "".join(f"<instruction>{i}</instruction>" for i in instructions)
    return (
        f"<thinking>The {OBJECTS[0]} may be hidden.</thinking><instructions>{body}</instructions>"
    )


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("base") / "tiny-qwen2-vl", seed=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 pairs, one 32x32 image each: chosen asks for a side view, rejected for nothing
    useful; every other pair is weak."""
    root = tmp_path_factory.mktemp("data")
    (root / "scenes").mkdir()
    rows = []
    for i in range(8):
        rel = f"scenes/q{i}.png"
        Image.new("RGB", (32, 32), (30 * i, 120, 255 - 30 * i)).save(root / rel)
        obj = OBJECTS[i % len(OBJECTS)]
        rows.append(
            Pair(
                pair_id=f"q{i}:s{i}a>s{i}b",
                cond_id=f"q{i}",
                chosen=f"s{i}a",
                rejected=f"s{i}b",
                chosen_score=0.9,
                rejected_score=0.1 if i % 2 else 0.7,
                gap=0.8 if i % 2 else 0.2,
                iteration=0,
                weak=i % 2 == 0,
                extra={
                    "prompt": f"Question: Which object is behind the {obj}?",
                    "chosen_text": plan([f"view from the {SIDES[i % 4]}"]),
                    "rejected_text": plan([f"zoom out on the {obj}"]),
                    "images": [rel],
                },
            )
        )
    return root, rows


def small(**changes):
    """A config small enough for the tiny model; lr high enough to move it in a few steps."""
    base = {"rank": 8, "lr_llm": 1e-3, "max_steps": 4, "per_device_batch_size": 2, "grad_accum": 1}
    return LMDPOConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def lora_run(base_dir, data, tmp_path_factory):
    root, rows = data
    tmp = tmp_path_factory.mktemp("lora")
    # The trl pairs file goes through DPOTrainer: write it, read it back, train on it.
    write_trl_jsonl(tmp / "pairs.trl.jsonl", planner_pairs(rows))
    pairs = read_trl_jsonl(tmp / "pairs.trl.jsonl")
    tracker = NullTracker()
    out = tmp / "adapter"
    metrics = train_lm_dpo(
        small(),  # gradient checkpointing on (the default)
        base_model_dir=base_dir,
        pairs_rows=pairs,
        image_root=root,
        out_dir=out,
        tracker=tracker,
    )
    return out, metrics, tracker


def test_lora_trains_and_logs(lora_run):
    out, metrics, tracker = lora_run
    assert metrics["train/steps"] == 4 and metrics["pairs"] == 8
    assert all(math.isfinite(v) for v in metrics.values())
    losses = tracker.history("train/loss")
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]  # the same 8 pairs twice: DPO lowers the loss
    assert len(tracker.history("train/rewards/accuracies")) == 4
    assert len(tracker.history("train/rewards/margins")) == 4
    meta = json.loads((out / "genalign.json").read_text())
    assert meta["kind"] == "adapter" and meta["method"] == "lm_dpo" and meta["loss"] == "sigmoid"
    assert meta["adapter_type"] == "lora" and meta["metrics"] == metrics
    assert not (out / "training_args.bin").exists()
    assert not list(out.parent.glob(".adapter.*"))  # staging and trainer dirs removed


def test_saved_keys_are_lora_only_on_the_llm(lora_run):
    out, _, _ = lora_run
    keys = load_file(out / "adapter_model.safetensors").keys()
    assert keys and all("lora_" in k for k in keys)
    assert not [k for k in keys if "visual" in k or "lm_head" in k]  # vision, merger frozen


def test_adapter_changed_base_unchanged(lora_run, base_dir):
    out, _, _ = lora_run
    tuned, _ = load_vlm(base_dir, adapter_dir=out)
    base, _ = load_vlm(base_dir)
    lora_b = {n: p for n, p in tuned.named_parameters() if "lora_B" in n}
    assert lora_b and all(p.abs().max() > 0 for p in lora_b.values())  # B starts at zero
    base_params = dict(base.named_parameters())
    for name, p in tuned.get_base_model().named_parameters():
        if "lora_" in name:
            continue
        torch.testing.assert_close(p, base_params[name.replace(".base_layer", "")], rtol=0, atol=0)


def test_merged_model_matches_adapter_logits(lora_run, base_dir, data, tmp_path):
    out, _, _ = lora_run
    root, rows = data
    merged_dir = merge_adapter(base_dir, out, tmp_path / "merged")
    tuned, processor = load_vlm(base_dir, adapter_dir=out)
    merged, _ = load_vlm(merged_dir)
    base, _ = load_vlm(base_dir)
    image = Image.open(root / rows[0].extra["images"][0]).convert("RGB")
    batch = chat_inputs(
        processor, [image], rows[0].extra["prompt"], answer=plan(["view from the left"])
    )
    with torch.no_grad():
        lt = tuned(**batch.inputs).logits
        lm = merged(**batch.inputs).logits
        lb = base(**batch.inputs).logits
    torch.testing.assert_close(lm, lt, rtol=0, atol=1e-4)
    assert (lt - lb).abs().max() > 1e-4  # the adapter does change the outputs
    assert json.loads((merged_dir / "genalign.json").read_text())["method"] == "merge"


def test_dora_with_vision_adapters(base_dir, data, tmp_path):
    root, rows = data
    tracker = NullTracker()
    cfg = small(
        adapter="dora",
        max_steps=2,
        freeze_vision=False,
        freeze_merger=False,
        weak_pair_weight=0.5,
        gradient_checkpointing=False,
    )
    metrics = train_lm_dpo(
        cfg,
        base_model_dir=base_dir,
        pairs_rows=rows,
        image_root=root,
        out_dir=tmp_path / "dora",
        tracker=tracker,
    )
    assert metrics["train/steps"] == 2 and math.isfinite(metrics["train/loss"])
    assert metrics["pairs"] == 6 and metrics["weak_pairs_dropped"] == 2  # 4 weak, keep 2
    keys = load_file(tmp_path / "dora" / "adapter_model.safetensors").keys()
    assert all("lora_" in k for k in keys)
    assert any("lora_magnitude_vector" in k for k in keys)
    assert any("visual.blocks" in k for k in keys) and any("visual.merger" in k for k in keys)
    reloaded, _ = load_vlm(base_dir, adapter_dir=tmp_path / "dora")
    assert reloaded.peft_config["default"].use_dora


def test_parameter_groups_carry_the_part_learning_rates(base_dir):
    from peft import LoraConfig, get_peft_model

    cfg = small(
        freeze_vision=False, freeze_merger=False, lr_llm=3e-4, lr_vision=2e-5, lr_merger=1e-4
    )
    model, _ = load_vlm(base_dir)
    targets = adapter_targets(model, cfg)
    assert {part_of(t) for t in targets} == {"llm", "vision", "merger"}
    assert "lm_head" not in targets
    only_llm = adapter_targets(model, small(target_modules=("q_proj", "v_proj")))
    assert only_llm and all(t.endswith(("q_proj", "v_proj")) for t in only_llm)
    assert all(part_of(t) == "llm" for t in only_llm)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    groups = parameter_groups(peft_model, cfg, decay_names=set())
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs == {"llm_no_decay": 3e-4, "vision_no_decay": 2e-5, "merger_no_decay": 1e-4}
    grouped = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in peft_model.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable)  # each trainable parameter exactly once


def test_part_of():
    assert part_of("model.language_model.layers.0.self_attn.q_proj") == "llm"
    assert part_of("lm_head.weight") == "llm"
    assert (
        part_of("base_model.model.model.visual.blocks.0.attn.qkv.lora_A.default.weight") == "vision"
    )
    assert part_of("model.visual.merger.mlp.0.weight") == "merger"
    assert part_of("model.visual.deepstack_merger_list.1.linear_fc1.weight") == "merger"  # Qwen3-VL


def test_loss_types_are_trls():
    from trl import DPOConfig

    help_text = DPOConfig.__dataclass_fields__["loss_type"].metadata["help"]
    assert set(LOSS_TYPES) == set(re.findall(r"`'(\w+)'`", help_text))


def test_config_errors_and_runtime_choices():
    with pytest.raises(
        ConfigError, match=r"loss_type: 'dpo' is not a trl DPO loss; valid: \['sigmoid'"
    ):
        LMDPOConfig.from_dict({"loss_type": "dpo"})
    with pytest.raises(ConfigError, match="nothing to train"):
        LMDPOConfig.from_dict({"freeze_llm": True})
    with pytest.raises(ConfigError, match="lm_head"):
        LMDPOConfig.from_dict({"target_modules": ["lm_head"]})
    with pytest.raises(ConfigError, match="exo_pair"):
        LMDPOConfig.from_dict({"loss_type": "exo_pair"})
    assert LMDPOConfig.from_dict({"bf16": True}).bf16 is True
    assert LMDPOConfig.from_dict({"bf16": "auto"}).bf16 == "auto"
    cfg = LMDPOConfig()
    assert (cfg.loss_type, cfg.beta, cfg.rank, cfg.alpha) == ("sigmoid", 0.1, 64, 16.0)
    assert use_bf16(cfg, cuda=False) is False and use_bf16(cfg, cuda=True) is True
    with pytest.raises(ValueError, match="needs a CUDA device"):
        use_bf16(LMDPOConfig(bf16=True), cuda=False)
    ds = LMDPOConfig(deepspeed="zero3_offload")
    assert deepspeed_config_path(ds, cuda=False) is None  # ignored on CPU, with a log line
    path = deepspeed_config_path(ds, cuda=True)
    zero = json.loads(path.read_text())["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["offload_param"]["device"] == zero["offload_optimizer"]["device"] == "cpu"
    zero2 = json.loads(deepspeed_config_path(LMDPOConfig(deepspeed="zero2"), cuda=True).read_text())
    assert zero2["zero_optimization"]["stage"] == 2
    assert zero2["train_micro_batch_size_per_gpu"] == "auto"
    assert "optimizer" not in zero2  # the trainer's per-part optimizer groups are used


def test_full_fine_tuning_respects_freeze_switches(base_dir, data, tmp_path):
    root, rows = data
    cfg = small(adapter="full", max_steps=1, lr_llm=1e-3, gradient_checkpointing=False)
    metrics = train_lm_dpo(
        cfg,
        base_model_dir=base_dir,
        pairs_rows=rows,
        image_root=root,
        out_dir=tmp_path / "full",
        tracker=NullTracker(),
    )
    assert math.isfinite(metrics["train/loss"])
    tuned, _ = load_vlm(tmp_path / "full")  # a full model directory, processor included
    base, _ = load_vlm(base_dir)
    base_params = dict(base.named_parameters())
    changed = {
        part_of(n) for n, p in tuned.named_parameters() if not torch.equal(p, base_params[n])
    }
    assert changed == {"llm"}  # vision tower and merger frozen by default
    assert json.loads((tmp_path / "full" / "genalign.json").read_text())["adapter_type"] == "full"

"""Planner DPO in two processes (torchrun, gloo on CPU) trains the same LoRA adapter as one
process with the same global batch.

One process runs per_device_batch_size 2 x grad_accum 2, two processes 1 x 2 x 2 ranks:
4 pairs a step either way. They end equal because
- the workers really form one run: without CUDA, accelerate joins torchrun's workers into
  a gloo process group only when the Trainer is told it runs on CPU (`use_cpu`, which
  lm_dpo sets then); before that each worker trained alone on all 8 pairs, 2 a step,
  and the adapters differed by ~3e-3;
- the data order is one seeded permutation (accelerate's seedable sampler, `data_seed`) on
  every rank, and rank r takes the batches r, r + 2, ... of it, so each step sees the same
  4 pairs (one process: [p0 p1], [p2 p3]; two: rank 0 p0, p2 and rank 1 p1, p3);
- the DPO loss is a mean over the batch's pairs, divided by grad_accum, and DDP averages
  the two ranks' gradients: 1/4 of the sum of the per-pair gradients in both runs (no
  token-count scaling: trl's collator has no `labels`, so Trainer's num_items_in_batch is
  None);
- trl calls set_seed(seed) right before peft creates the adapter, so lora_A starts equal
  (lora_B starts at zero), and DDP broadcasts rank 0's weights anyway;
- dropout is 0, so trl disables every dropout layer; gradient clipping acts on the
  averaged gradient.
What is left is float32 rounding: padding the 2-pair batches and summing in another order.
"""

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from genalign.config.lm_dpo import LMDPOConfig
from genalign.data.planner_pairs import PlannerPair, write_trl_jsonl
from genalign.models.tiny_qwen_vl import build_tiny_qwen2_vl
from genalign.tracking import NullTracker
from genalign.trainers.lm_dpo import launch_lm_dpo

pytestmark = pytest.mark.integration

OBJECTS = ("red cube", "blue sphere", "green cylinder", "yellow cone")
SIDES = ("left", "right", "front", "back")
# float32 rounding: the runs differ by ~3e-8; the update (max |lora_B|) is ~2e-3
ATOL = 1e-5
STEPS = 3  # 12 pairs through 8: the second epoch reshuffles (the sampler's set_epoch)
TIMEOUT_S = 300


def plan(instruction: str) -> str:
    return f"<thinking>Look again.</thinking><instructions><instruction>{instruction}</instruction></instructions>"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The tiny Qwen2-VL and 8 pairs with one 32x32 image each, as a trl pairs file."""
    root = tmp_path_factory.mktemp("data")
    base = build_tiny_qwen2_vl(root / "tiny-qwen2-vl", seed=0)
    (root / "scenes").mkdir()
    pairs = []
    for i in range(8):
        rel = f"scenes/q{i}.png"
        Image.new("RGB", (32, 32), (30 * i, 120, 255 - 30 * i)).save(root / rel)
        obj = OBJECTS[i % len(OBJECTS)]
        pairs.append(
            PlannerPair(
                pair_id=f"q{i}",
                prompt=f"Question: Which object is behind the {obj}?",
                chosen=plan(f"view from the {SIDES[i % 4]}"),
                rejected=plan(f"zoom out on the {obj}"),
                images=(rel,),
            )
        )
    write_trl_jsonl(root / "pairs.trl.jsonl", pairs)
    return base, root, root / "pairs.trl.jsonl"


def config(per_device_batch_size: int) -> LMDPOConfig:
    return LMDPOConfig(
        rank=8,
        lr_llm=1e-3,  # large enough that 3 Adam steps move lora_B far past ATOL
        max_steps=STEPS,
        per_device_batch_size=per_device_batch_size,
        grad_accum=2,
        gradient_checkpointing=False,
        dropout=0.0,
        seed=0,
    )


@pytest.fixture(scope="module")
def runs(inputs, tmp_path_factory):
    """{processes: (parent dir, metrics)}; each run writes parent/adapter."""
    base, root, pairs_file = inputs
    out = {}
    for processes, batch in ((1, 2), (2, 1)):
        parent = tmp_path_factory.mktemp(f"p{processes}")
        metrics = launch_lm_dpo(
            config(batch),
            base_model_dir=base,
            pairs_file=pairs_file,
            image_root=root,
            out_dir=parent / "adapter",
            processes=processes,
            timeout_s=TIMEOUT_S,
        )
        out[processes] = parent, metrics
    return out


def test_two_processes_train_the_same_adapter(runs):
    one = load_file(runs[1][0] / "adapter" / "adapter_model.safetensors")
    two = load_file(runs[2][0] / "adapter" / "adapter_model.safetensors")
    assert one.keys() == two.keys() and one
    diff = max((one[k] - two[k]).abs().max().item() for k in one)
    # lora_B starts at zero: its size is the size of the update
    update = max(v.abs().max().item() for k, v in one.items() if "lora_B" in k)
    assert update > 100 * ATOL, update
    assert diff <= ATOL, (diff, update)
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=0, atol=ATOL)


def test_both_runs_record_the_same_steps(runs):
    metas = {
        n: json.loads((p / "adapter" / "genalign.json").read_text()) for n, (p, _) in runs.items()
    }
    for n, (_, metrics) in runs.items():
        assert metas[n]["metrics"] == metrics  # launch_lm_dpo returns what the run recorded
        assert metrics["train/steps"] == STEPS and metrics["pairs"] == 8
    assert metas[1]["config"]["per_device_batch_size"] == 2
    assert metas[2]["config"]["per_device_batch_size"] == 1
    # the logged loss is the mean over the ranks: the same as one process's
    assert runs[2][1]["train/loss"] == pytest.approx(runs[1][1]["train/loss"], abs=1e-5)
    assert runs[2][1]["train/loss_mean"] == pytest.approx(runs[1][1]["train/loss_mean"], abs=1e-5)


def test_only_the_main_process_writes_one_out_dir(runs):
    for parent, _ in runs.values():
        # no staging, trainer or atomic_dir leftovers beside it
        assert [p.name for p in parent.iterdir()] == ["adapter"]
    one, two = ({p.name for p in (parent / "adapter").iterdir()} for parent, _ in runs.values())
    assert one == two
    assert {"adapter_config.json", "adapter_model.safetensors", "genalign.json"} <= one
    assert "training_args.bin" not in one


def test_launch_errors(inputs, tmp_path):
    base, root, _ = inputs
    bad = tmp_path / "bad.trl.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(RuntimeError, match=r"(?s)exit status 1: .*malformed JSON"):
        launch_lm_dpo(
            config(1),
            base_model_dir=base,
            pairs_file=bad,
            image_root=root,
            out_dir=tmp_path / "adapter",
            processes=2,
            timeout_s=TIMEOUT_S,
        )
    assert not (tmp_path / "adapter").exists()
    common = {"base_model_dir": base, "pairs_file": bad, "image_root": root, "out_dir": tmp_path}
    with pytest.raises(ValueError, match="processes: expected at least 1"):
        launch_lm_dpo(config(1), processes=0, **common)
    with pytest.raises(ValueError, match="tracker: step logs are forwarded with processes=1"):
        launch_lm_dpo(config(1), processes=2, tracker=NullTracker(), **common)

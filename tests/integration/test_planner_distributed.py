"""train-planner in two processes (torchrun, gloo on CPU) writes the adapter and the merged
planner that one process writes with the same global batch.

Both runs are the commands a cluster pod runs, on a tiny Qwen2-VL and 8 pairs:

    genalign stage train-planner --config C1.yaml --in model=M --in pairs=P --out adapter=A --out merged=G
    python -m torch.distributed.run --standalone --nproc-per-node 2 --no-python \\
        genalign stage train-planner --config C2.yaml ...        (the same inputs)

C1 has per_device_batch_size 2, C2 1: 2 x 2 grad_accum pairs a step in both (trl's
convention, global batch = per_device_batch_size x grad_accum x processes). Why the
trainer's two runs agree is in tests/integration/test_lm_dpo_distributed.py; this test
checks the stage around it: every rank trains in place, only rank 0 writes the two
outputs, and they are sealed as one process's are.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from genalign.models.tiny_qwen_vl import build_tiny_qwen2_vl
from genalign.records import Pair, write_jsonl
from genalign.storage import write_manifest

pytestmark = pytest.mark.integration

# float32 rounding (the trainer-level test measures ~3e-8); the update is ~2e-3
ATOL = 1e-5
STEPS = 3
TIMEOUT_S = 300
OBJECTS = ("red cube", "blue sphere", "green cylinder", "yellow cone")
SIDES = ("left", "right", "front", "back")


def plan(instruction: str) -> str:
    return f"<thinking>Look again.</thinking><instructions><instruction>{instruction}</instruction></instructions>"


def train_config(per_device_batch_size: int) -> dict:
    return {"dpo": {"rank": 8, "lr_llm": 1e-3, "max_steps": STEPS, "per_device_batch_size": per_device_batch_size,
                    "grad_accum": 2, "gradient_checkpointing": False, "dropout": 0.0, "seed": 0}}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    """A model artifact (the tiny Qwen2-VL) and a pairs artifact of 8 self-contained pairs."""
    root = tmp_path_factory.mktemp("inputs")
    model = build_tiny_qwen2_vl(root / "model", seed=0)
    write_manifest(model, kind="model")
    pairs = root / "pairs"
    (pairs / "scenes").mkdir(parents=True)
    rows = []
    for i in range(8):
        rel = f"scenes/q{i}.png"
        Image.new("RGB", (32, 32), (30 * i, 120, 255 - 30 * i)).save(pairs / rel)
        obj = OBJECTS[i % len(OBJECTS)]
        rows.append(Pair(pair_id=f"q{i}", cond_id=f"q{i}", chosen=f"q{i}/k0", rejected=f"q{i}/k1",
                         chosen_score=1.0, rejected_score=0.0, gap=1.0, iteration=0,
                         extra={"prompt": f"Question: Which object is behind the {obj}?",
                                "chosen_text": plan(f"view from the {SIDES[i % 4]}"),
                                "rejected_text": plan(f"zoom out on the {obj}"), "images": [rel]}))
    write_jsonl(pairs / "pairs.jsonl", rows)
    write_manifest(pairs, kind="pairs", counts={"pairs": len(rows)})
    return model, pairs


@pytest.fixture(scope="module")
def runs(inputs, tmp_path_factory) -> dict[int, tuple[Path, dict]]:
    """{processes: (the parent of the outputs, the result the CLI printed)}."""
    model, pairs = inputs
    genalign = Path(sys.executable).with_name("genalign")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--no-python"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = {}
    for processes, batch, prefix in ((1, 2, []), (2, 1, torchrun)):
        parent = tmp_path_factory.mktemp(f"p{processes}")
        config = parent.with_name(f"{parent.name}.train.yaml")
        config.write_text(yaml.safe_dump(train_config(batch)))
        done = subprocess.run(
            [*prefix, str(genalign), "stage", "train-planner", "--config", str(config),
             "--in", f"model={model}", "--in", f"pairs={pairs}",
             "--out", f"adapter={parent / 'adapter'}", "--out", f"merged={parent / 'merged'}"],
            check=False, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        out[processes] = parent, done.stdout
    return out


def test_two_processes_write_the_same_adapter(runs):
    one = load_file(runs[1][0] / "adapter" / "adapter_model.safetensors")
    two = load_file(runs[2][0] / "adapter" / "adapter_model.safetensors")
    assert one.keys() == two.keys() and one
    update = max(v.abs().max().item() for k, v in one.items() if "lora_B" in k)
    assert update > 100 * ATOL, update  # lora_B starts at zero: training moved it
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=0, atol=ATOL)


def test_two_processes_write_the_same_merged_planner(runs):
    one = load_file(runs[1][0] / "merged" / "model.safetensors")
    two = load_file(runs[2][0] / "merged" / "model.safetensors")
    assert one.keys() == two.keys() and one
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=0, atol=ATOL)


def test_only_rank_0_writes_the_outputs_and_they_record_the_same_training(runs):
    cards = {}
    for processes, (parent, _) in runs.items():
        # no scratch or atomic_dir leftovers of either rank beside the outputs
        assert sorted(p.name for p in parent.iterdir()) == ["adapter", "merged"]
        assert (parent / "adapter" / "manifest.json").is_file() and (parent / "merged" / "manifest.json").is_file()
        cards[processes] = json.loads((parent / "adapter" / "genalign.json").read_text())
    for card in cards.values():
        assert card["metrics"]["train/steps"] == STEPS and card["metrics"]["pairs"] == 8
    assert cards[2]["metrics"]["train/loss"] == pytest.approx(cards[1]["metrics"]["train/loss"], abs=1e-5)

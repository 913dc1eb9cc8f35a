"""train-flow-dpo in two processes (torchrun, gloo on CPU) trains the same adapter as one
process with the same global batch.

Both runs are the command a pod runs: `genalign stage train-flow-dpo` in one process, and
`torchrun --no-python genalign stage train-flow-dpo` with two workers, on the same tiny
part DiT (built in code) and 7 pairs, with OMP_NUM_THREADS=1. A step is grad_accum 2
micro-batches of batch_size 3, and an epoch's third micro-batch holds the one pair left:
a micro-batch of 3 splits 2 + 1 over the two ranks, uneven, and the one of 1 splits 1 + 0,
so rank 1 runs no forward for it but still joins the all-reduces. They end equal because
- every rank draws the same micro-batches (a seeded permutation per epoch) and each pair's
  (t, noise) is a function of the pair, not of the rank;
- each rank's loss on its share is weighted by its share of the step's pairs on all
  ranks, and the gradients are summed over the ranks before clipping: the one-process
  gradient, summed in another order;
- the adapter starts from the same seed on every rank, and dropout is 0;
- with a precomputed reference each entry of the reference table is computed by one rank,
  and the others add zeros to it.
What is left is float32 rounding, amplified by beta. A pair's flow error (~2) comes out
of a 1-pair and a 6-pair forward of the same model up to 2.4e-7 apart (one process, a
few ulps), and the loss reads the errors through beta * (their gap): at beta 500 that is
up to ~1e-4 in the logit, and the step's gradient direction moves with it; Adam, whose
steps are normalised, carries it into the weights. So the step-1 gradients of the two
runs agree to ~4e-7 of their size and the precomputed reference tables bitwise, while
after 4 steps (measured, 1 vs 2 processes): adapter max |difference| 1.1e-6 (live and
precomputed reference) for an update (max |lora_B|) of 4e-3, final loss 1e-5 (of 0.18).
Weighting each rank's share by its own count instead (a mean per rank, averaged over the
ranks as DDP does) moved the adapter by 6e-3 (measured, live reference): a thousand times
the tolerance. `-s` prints the numbers.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from genalign.artifacts import PAIRS
from genalign.config.part_dit import PartDiTConfig
from genalign.models.part_codec import MAX_PARTS
from genalign.models.part_dit import PartDiT
from genalign.records import Pair, ScoredSample, write_jsonl
from genalign.storage import write_manifest

pytestmark = pytest.mark.integration

PAIR_COUNT, TOKENS, TOKEN_DIM, COND_TOKENS, COND_DIM = 7, 4, 4, 3, 8
# float32 rounding through beta 500 (module docstring): measured 1.1e-6 in the adapter,
# for an update of ~4e-3 and steps of lr = 1e-3; ~1e-5 in the loss, against a noise floor
# of ~1e-4 (beta x a few ulps of the errors).
ADAPTER_ATOL = 5e-6
METRIC_TOL = 1e-4
TIMEOUT_S = 300
TRAIN = {
    "batch_size": 3, "grad_accum": 2, "max_steps": 4, "lr": 1e-3, "beta": 500.0,
    "log_every": 1, "drift_every": 1, "checkpoint_every": 2, "keep_checkpoints": 1,
    "bf16": False, "seed": 0,
}  # fmt: skip
CONFIGS = {
    "live": TRAIN,
    "precomputed": {**TRAIN, "precompute_reference": True, "reference_draws": 2},
}
GENALIGN = str(Path(sys.executable).parent / "genalign")


def tiny_dit() -> PartDiT:
    """A 2-block PartDiT whose zero-initialised layers (adaLN-Zero, proj_out) get small
    random weights, as after pretraining; otherwise u = 0 and no gradient reaches LoRA."""
    torch.manual_seed(0)
    model = PartDiT(PartDiTConfig(hidden=16, depth=2, heads=2, cond_dim=COND_DIM))
    with torch.no_grad():
        for param in model.parameters():
            if not param.any():
                param.normal_(std=0.05)
    return model


def write_pairs(out: Path) -> Path:
    """A pairs artifact of PAIR_COUNT pairs, as mine-pairs writes it: pairs.jsonl, the
    samples' rows and their latent and conditioning files."""
    g = torch.Generator().manual_seed(1)
    (out / "files").mkdir(parents=True)
    samples, pairs = [], []
    for i in range(PAIR_COUNT):
        num_parts = int(torch.randint(1, MAX_PARTS + 1, (1,), generator=g))
        cond = f"files/cond{i}.safetensors"
        save_file(
            {
                "features": torch.randn(COND_TOKENS, COND_DIM, generator=g),
                "num_parts": torch.tensor(num_parts),
            },
            str(out / cond),
        )
        for side in ("chosen", "rejected"):
            latent = f"files/{side}{i}.safetensors"
            save_file(
                {"latent": torch.randn(num_parts, TOKENS, TOKEN_DIM, generator=g)},
                str(out / latent),
            )
            samples.append(
                ScoredSample(
                    sample_id=f"{side}{i}", cond_id=f"c{i}", seed=i, iteration=0,
                    output={"num_parts": num_parts}, status="ok", files={"latent": latent, "cond": cond},
                    score=0.0 if side == "chosen" else 1.0, scorer="test",
                )
            )  # fmt: skip
        pairs.append(
            Pair(
                pair_id=f"p{i}", cond_id=f"c{i}", chosen=f"chosen{i}", rejected=f"rejected{i}",
                chosen_score=0.0, rejected_score=1.0, gap=1.0, iteration=0,
            )
        )  # fmt: skip
    write_jsonl(out / "samples.jsonl", samples)
    write_jsonl(out / "pairs.jsonl", pairs)
    write_manifest(out, kind=PAIRS, hash_files=["pairs.jsonl", "samples.jsonl"])
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    """(model artifact with the DiT in dit/, pairs artifact)."""
    root = tmp_path_factory.mktemp("inputs")
    tiny_dit().save_pretrained(root / "model" / "dit")
    return root / "model", write_pairs(root / "pairs")


def train(config: dict, processes: int, model: Path, pairs: Path, parent: Path) -> Path:
    """Run the stage as a pod does, in `processes` processes; the adapter directory."""
    parent.mkdir()
    config_file = parent / "train.json"
    config_file.write_text(json.dumps(config))
    stage = [
        "stage", "train-flow-dpo", "--config", str(config_file),
        "--in", f"model={model}", "--in", f"pairs={pairs}", "--out", f"adapter={parent / 'adapter'}",
    ]  # fmt: skip
    command = [GENALIGN, *stage]
    if processes > 1:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", str(processes), "--no-python", *command,
        ]  # fmt: skip
    # One thread in both, so the two differ by the split over processes alone; a cache of
    # the run's own, so neither resumes the other's checkpoints.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GENALIGN_CACHE": str(parent / "cache")}
    run = subprocess.run(
        command, cwd=parent, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-6000:]
    return parent / "adapter"


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def runs(request, inputs, tmp_path_factory) -> dict[int, Path]:
    """{processes: adapter directory} for one config."""
    model, pairs = inputs
    root = tmp_path_factory.mktemp(request.param)
    config = CONFIGS[request.param]
    return {n: train(config, n, model, pairs, root / f"p{n}") for n in (1, 2)}


def test_two_processes_train_the_same_adapter(runs, record_property):
    one = load_file(str(runs[1] / "adapter_model.safetensors"))
    two = load_file(str(runs[2] / "adapter_model.safetensors"))
    assert one.keys() == two.keys() and one
    diff = max((one[k] - two[k]).abs().max().item() for k in one)
    # lora_B starts at zero: its size is the size of the update
    update = max(v.abs().max().item() for k, v in one.items() if "lora_B" in k)
    record_property("adapter_max_abs_diff", diff)
    print(f"adapter: max |1 - 2 processes| = {diff:.3g}, max |lora_B| = {update:.3g}")
    assert update > 100 * ADAPTER_ATOL, update
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=0, atol=ADAPTER_ATOL)


def test_two_processes_record_the_same_metrics(runs, record_property):
    one, two = (json.loads((runs[n] / "genalign.json").read_text())["metrics"] for n in (1, 2))
    assert one["steps"] == two["steps"] == TRAIN["max_steps"]
    assert one["pairs"] == two["pairs"] == PAIR_COUNT
    diff = abs(one["loss"] - two["loss"])
    record_property("loss_abs_diff", diff)
    print(f"loss: {one['loss']:.6f} vs {two['loss']:.6f}, |difference| = {diff:.3g}")
    for key in ("loss", "implicit_accuracy", "reward_margin", "chosen_reward", "rejected_reward",
                "drift", "grad_norm"):  # fmt: skip
        assert two[key] == pytest.approx(one[key], rel=METRIC_TOL, abs=METRIC_TOL), key


def test_only_rank_0_writes_and_the_work_dir_goes(runs):
    expected = {"adapter_config.json", "adapter_model.safetensors", "genalign.json"}
    one, two = ({p.name for p in runs[n].iterdir()} for n in (1, 2))
    assert one == two and expected | {"manifest.json"} <= one
    for adapter in runs.values():
        # no staging or atomic_dir leftovers beside the adapter; the checkpoints' work
        # directory was removed once copied
        parent = sorted(p.name for p in adapter.parent.iterdir())
        assert parent == ["adapter", "cache", "train.json"]
        assert list((adapter.parent / "cache" / "train").iterdir()) == []

"""What a flow-DPO step costs next to a plain adapter step on the same samples.

A DPO step trains on 2B samples (B chosen, B rejected); the baseline is therefore a plain
flow-matching step with the same LoRA/DoRA adapter on the same 2B samples, not on the B
chosen ones. Five steps on one PartDiT and one set of B pairs, each zero_grad + forward +
backward + gradient clipping + AdamW:

    plain_full       flow-matching loss on the 2B samples, every weight trained
    plain_lora       the same, only the adapter trained: the baseline of the ratios
    dpo_live         `FlowDPOTrainer.train_step`: reference forward on 2B with the adapter
                     switched off by `AdapterSwitch`, then the policy on 2B
    dpo_live_peft    the same step with the reference taken by peft's `disable_adapter()`
                     and eval()/train() (`reference_mode`), as before `AdapterSwitch`
    dpo_precomputed  `FlowDPOTrainer.train_step` with `precompute_reference: true`

The DPO modes run the trainer's own step (its data order, (t, noise) draws, statistics and
logging to a null tracker) with one micro-batch of all B pairs; the plain modes draw (t,
noise) once, outside the clock.

Time: a block of --block steps, divided by the block, in CPU time of this process on the
CPU (torch on --threads 1 intra-op thread, so time other processes take is not counted)
and in wall time on CUDA; the modes' blocks alternate in a rotating order over --repeats
rounds and each mode keeps its fastest block, so load from other processes hurts none
more than another. A block of 10 steps holds one
drift measurement of the live trainer at the default log_every (the precomputed one
measures drift every 10 x log_every). Memory, in a separate untimed pass of one step per
mode: the bytes autograd saves for backward (saved_tensors_hooks; each storage once,
parameters left out), and the peak of live tensor bytes during the step (CUDA:
torch.cuda.max_memory_allocated over what was allocated before it; CPU: the torch
profiler's memory timeline), which counts the reference forward's transient buffers,
gradients and optimizer state.

    python benchmarks/flow_dpo_step.py [--hidden 128 --depth 4 --batch 16 --adapter lora]

Prints the table and writes benchmarks/results/flow_dpo_step.json (with --adapter dora:
flow_dpo_step_dora.json), whose `ratios` hold the headline numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from genalign.config.flow_dpo import FlowDPOConfig
from genalign.config.part_dit import PartDiTConfig
from genalign.models.part_dit import PartDiT
from genalign.storage import atomic_write_json
from genalign.tracking import NullTracker
from genalign.trainers.flow_dpo import (
    FlowDPOTrainer,
    PairTensors,
    add_adapter,
    draw_timesteps_and_noise,
    duplicate_for_pair,
    flow_errors,
)
from genalign.training.adapters import reference_mode

ROOT = Path(__file__).resolve().parents[1]
MODES = ("plain_full", "plain_lora", "dpo_live", "dpo_live_peft", "dpo_precomputed")
BASELINE = "plain_lora"


def build_base(args: argparse.Namespace) -> PartDiT:
    torch.manual_seed(0)
    model = PartDiT(
        PartDiTConfig(hidden=args.hidden, depth=args.depth, heads=args.heads, cond_dim=args.cond_dim)
    )
    # adaLN-Zero and proj_out start at zero; give them weights as a pretrained model has.
    with torch.no_grad():
        for param in model.parameters():
            if not param.any():
                param.normal_(std=0.02)
    return model


def build_pairs(args: argparse.Namespace) -> PairTensors:
    g = torch.Generator().manual_seed(1)
    b, p = args.batch, args.parts
    mask = torch.arange(p)[None] < torch.randint(1, p + 1, (b, 1), generator=g)  # [B, P]
    shape = (b, p, 4, 4)
    return PairTensors(
        torch.randn(shape, generator=g) * mask[..., None, None],
        torch.randn(shape, generator=g) * mask[..., None, None],
        torch.randn(b, args.cond_tokens, args.cond_dim, generator=g),
        mask,
    )


class _PeftSwitch:
    """The reference as peft's `disable_adapter()` plus eval()/train() take it."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def reference(self) -> contextlib.AbstractContextManager:
        return reference_mode(self.model)


def make_steps(args: argparse.Namespace, base_dir: Path, device: torch.device) -> dict[str, Callable[[], None]]:
    cfg = FlowDPOConfig(
        adapter=args.adapter, rank=args.rank, alpha=2.0 * args.rank, batch_size=args.batch,
        max_steps=10**9, checkpoint_every=0, bf16=args.bf16,
    )
    pairs = build_pairs(args)
    steps: dict[str, Callable[[], None]] = {}
    trainers: dict[str, FlowDPOTrainer] = {}
    for mode, precompute in (("dpo_live", False), ("dpo_live_peft", False), ("dpo_precomputed", True)):
        trainer = FlowDPOTrainer(
            cfg.replace(precompute_reference=precompute), base_model_dir=base_dir, pairs=pairs,
            out_dir=base_dir.parent / mode, tracker=NullTracker(), resume=False,
        )
        trainer.setup()
        if mode == "dpo_live_peft":
            trainer.switch = _PeftSwitch(trainer.model)
        trainers[mode] = trainer
        steps[mode] = trainer.train_step

    on_device = pairs.to(device)
    t, noise = draw_timesteps_and_noise(cfg, torch.arange(args.batch), 0, tuple(pairs.x0_chosen.shape[1:]))
    inputs = duplicate_for_pair(on_device, t.to(device), noise.to(device))  # the same 2B samples

    def plain(model: torch.nn.Module, opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> Callable[[], None]:
        def step() -> None:
            opt.zero_grad(set_to_none=True)
            err, _ = flow_errors(model, *inputs)
            err.mean().backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()

        return step

    full = PartDiT.from_pretrained(base_dir).to(device).train()
    full_params = list(full.parameters())
    steps["plain_full"] = plain(full, torch.optim.AdamW(full_params, lr=cfg.lr), full_params)
    torch.manual_seed(cfg.seed)
    lora = add_adapter(PartDiT.from_pretrained(base_dir), cfg).to(device).train()
    lora_params = [p for p in lora.parameters() if p.requires_grad]
    steps["plain_lora"] = plain(lora, torch.optim.AdamW(lora_params, lr=cfg.lr), lora_params)
    steps["_models"] = {  # type: ignore[assignment]
        "plain_full": full, "plain_lora": lora, **{m: tr.model for m, tr in trainers.items()}
    }
    return steps


@contextlib.contextmanager
def count_saved_bytes(model: torch.nn.Module, out: list[int]) -> Iterator[None]:
    """Sum the bytes of distinct non-parameter storages autograd saves for backward."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, torch.Tensor] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params and ptr not in seen:
            seen[ptr] = t  # kept alive so a freed address is not taken for a duplicate
            out[0] += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield
    seen.clear()


def peak_bytes(step: Callable[[], None], device: torch.device) -> int:
    """Peak of live tensor bytes during one step, above what was live before it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfileTimeline

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step()
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(torch.device("cpu"))
    return max(sum(s) for s in sizes) - sum(sizes[0])


def measure(args: argparse.Namespace, base_dir: Path) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    steps = make_steps(args, base_dir, device)
    models = steps.pop("_models")
    for mode in MODES:  # warm-up: kernels, allocator, optimizer state
        for _ in range(args.warmup):
            steps[mode]()
    # CPU time of this process on the CPU (time another process takes from us is not
    # counted), wall time on CUDA (the host waits for the device).
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    best = {m: float("inf") for m in MODES}
    for r in range(args.repeats):
        order = MODES[r % len(MODES):] + MODES[: r % len(MODES)]
        for mode in order:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = clock()
            for _ in range(args.block):
                steps[mode]()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[mode] = min(best[mode], (clock() - start) / args.block)
    rows = {}
    for mode in MODES:  # memory, untimed
        saved = [0]
        with count_saved_bytes(models[mode], saved):
            steps[mode]()
        rows[mode] = {"ms": 1e3 * best[mode], "saved_mib": saved[0] / 2**20,
                      "peak_mib": peak_bytes(steps[mode], device) / 2**20}
    base = rows[BASELINE]
    for r in rows.values():
        r["time_x"] = r["ms"] / base["ms"]
        r["saved_x"] = r["saved_mib"] / base["saved_mib"]
        r["peak_x"] = r["peak_mib"] / base["peak_mib"]
    return {"device": str(device), "modes": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--cond-dim", type=int, default=32)
    parser.add_argument("--cond-tokens", type=int, default=16)
    parser.add_argument("--parts", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16, help="pairs per step")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--adapter", choices=("lora", "dora"), default="lora")
    parser.add_argument("--block", type=int, default=10, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=7, help="timed blocks per mode")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per mode first")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on CUDA, as the trainer's default")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even with CUDA")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or ROOT / "benchmarks" / "results" / (
        "flow_dpo_step.json" if args.adapter == "lora" else f"flow_dpo_step_{args.adapter}.json"
    )
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="flow-dpo-bench-") as tmp:
        base_dir = build_base(args).save_pretrained(Path(tmp) / "base")
        res = measure(args, base_dir)

    print(
        f"device {res['device']}, threads {torch.get_num_threads()}, load {load:.1f}, hidden {args.hidden}, "
        f"depth {args.depth}, {args.batch} pairs x {args.parts} parts, {args.adapter} rank {args.rank}; "
        f"fastest of {args.repeats} blocks of {args.block} steps, "
        f"{'wall' if res['device'].startswith('cuda') else 'CPU'} time"
    )
    print(f"{'mode':<17}{'ms/step':>9}{'time x':>8}{'saved MiB':>11}{'saved x':>9}{'peak MiB':>10}{'peak x':>8}")
    for mode, r in res["modes"].items():
        print(f"{mode:<17}{r['ms']:>9.1f}{r['time_x']:>8.2f}{r['saved_mib']:>11.2f}{r['saved_x']:>9.2f}"
              f"{r['peak_mib']:>10.2f}{r['peak_x']:>8.2f}")
    modes = res["modes"]
    suffix = "" if args.adapter == "lora" else f"_{args.adapter}"
    ratios = {
        f"flow_dpo_live_vs_plain_same_samples{suffix}": modes["dpo_live"]["time_x"],
        f"flow_dpo_precomputed_vs_plain_same_samples{suffix}": modes["dpo_precomputed"]["time_x"],
        f"flow_dpo_peak_memory_vs_plain{suffix}": max(modes["dpo_live"]["peak_x"], modes["dpo_precomputed"]["peak_x"]),
        f"flow_dpo_live_peft_switch_vs_plain_same_samples{suffix}": modes["dpo_live_peft"]["time_x"],
    }
    result = {
        "benchmark": "flow_dpo_step",
        "command": " ".join(["python benchmarks/flow_dpo_step.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": load, "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "device": res["device"]},
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "ratios": ratios,
        "modes": modes,
    }
    atomic_write_json(out, result)
    print(f"\nratios: {json.dumps({k: round(v, 3) for k, v in ratios.items()})}\nwrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()

"""Cost of a flow-DPO step against a plain flow-matching step, on one model and one batch.

Four training steps (zero_grad, forward, backward, AdamW step) on the same PartDiT and
the same batch of B pairs:

    sft_full         flow-matching loss on the B chosen samples, every weight trained
    sft_lora         the same, only the adapter trained (--adapter lora|dora; the
                     baseline of the ratios)
    dpo_live         flow-DPO: policy forward+backward on 2B samples (chosen, rejected)
                     plus a no-grad reference forward on 2B with the adapter disabled
    dpo_precomputed  flow-DPO with reference errors given: the policy half only

Time: median over --steps measured steps after --warmup, the four modes interleaved
in a rotating order so a change in machine load hits them alike. The (t, noise) draws
are made once, outside the timed region. Memory: bytes of the tensors autograd saves
for backward (torch.autograd.graph.saved_tensors_hooks; each storage counted once,
parameters excluded): the activation memory of the step, independent of the device
and of the allocator. On CUDA the peak of torch.cuda.max_memory_allocated during the
step (minus the memory held before it) is reported as well.

Run: `python benchmarks/flow_dpo_step.py --hidden 128 --depth 4 --batch 16`.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable

import torch

from genalign.config.flow_dpo import FlowDPOConfig
from genalign.config.part_dit import PartDiTConfig
from genalign.losses import get_preference_loss
from genalign.models.part_dit import PartDiT
from genalign.trainers.flow_dpo import (
    PairTensors,
    add_adapter,
    draw_timesteps_and_noise,
    duplicate_for_pair,
    flow_errors,
    reference_mode,
)

MODES = ("sft_full", "sft_lora", "dpo_live", "dpo_precomputed")


def build_model(args: argparse.Namespace, device: torch.device) -> PartDiT:
    torch.manual_seed(0)
    model = PartDiT(
        PartDiTConfig(
            hidden=args.hidden, depth=args.depth, heads=args.heads, cond_dim=args.cond_dim
        )
    )
    # adaLN-Zero and proj_out start at zero; give them weights as a pretrained model has.
    with torch.no_grad():
        for param in model.parameters():
            if not param.any():
                param.normal_(std=0.02)
    return model.to(device)


def build_batch(args: argparse.Namespace, device: torch.device) -> PairTensors:
    g = torch.Generator().manual_seed(1)
    b, p = args.batch, args.parts
    mask = torch.arange(p)[None] < torch.randint(1, p + 1, (b, 1), generator=g)  # [B, P]
    shape = (b, p, 4, 4)
    return PairTensors(
        torch.randn(shape, generator=g) * mask[..., None, None],
        torch.randn(shape, generator=g) * mask[..., None, None],
        torch.randn(b, args.cond_tokens, args.cond_dim, generator=g),
        mask,
    ).to(device)


@contextlib.contextmanager
def count_saved_bytes(model: torch.nn.Module, out: list[int]):
    """Sum the bytes of distinct non-parameter storages autograd saves for backward.

    The saved tensors are kept referenced until the block ends, so a storage freed
    early cannot hand its address to a later one and be mistaken for a duplicate.
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, torch.Tensor] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params and ptr not in seen:
            seen[ptr] = t
            out[0] += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield
    seen.clear()


def make_steps(
    args: argparse.Namespace, device: torch.device
) -> dict[str, Callable[[list[int]], None]]:
    cfg = FlowDPOConfig(adapter=args.adapter, rank=args.rank, alpha=2.0 * args.rank, bf16=False)
    loss_fn = get_preference_loss(cfg.loss)
    batch = build_batch(args, device)
    t, noise = draw_timesteps_and_noise(
        cfg, torch.arange(args.batch), 0, tuple(batch.x0_chosen.shape[1:])
    )
    t, noise = t.to(device), noise.to(device)
    pair_inputs = duplicate_for_pair(batch, t, noise)
    sft_inputs = (batch.x0_chosen, noise, t, batch.cond, batch.part_mask)

    full = build_model(args, device).train()
    full_opt = torch.optim.AdamW(full.parameters(), lr=1e-5)
    lora = add_adapter(build_model(args, device), cfg).train()
    lora_opt = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-5)
    with reference_mode(lora):
        ref_err, _ = flow_errors(lora, *pair_inputs)
    ref_chosen, ref_rejected = ref_err.chunk(2)

    def sft(model: torch.nn.Module, opt: torch.optim.Optimizer, saved: list[int]) -> None:
        opt.zero_grad(set_to_none=True)
        with count_saved_bytes(model, saved):
            err, _ = flow_errors(model, *sft_inputs)
        err.mean().backward()
        opt.step()

    def dpo(live: bool, saved: list[int]) -> None:
        lora_opt.zero_grad(set_to_none=True)
        with count_saved_bytes(lora, saved):
            err, _ = flow_errors(lora, *pair_inputs)
            if live:
                with reference_mode(lora):
                    r_err, _ = flow_errors(lora, *pair_inputs)
                rc, rr = r_err.chunk(2)
            else:
                rc, rr = ref_chosen, ref_rejected
            out = loss_fn(*err.chunk(2), rc, rr, beta=cfg.beta)
        out.loss.backward()
        lora_opt.step()

    return {
        "sft_full": lambda saved: sft(full, full_opt, saved),
        "sft_lora": lambda saved: sft(lora, lora_opt, saved),
        "dpo_live": lambda saved: dpo(True, saved),
        "dpo_precomputed": lambda saved: dpo(False, saved),
    }


def measure(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    steps = make_steps(args, device)
    times: dict[str, list[float]] = {m: [] for m in MODES}
    saved: dict[str, int] = {}
    peak: dict[str, int] = {}
    for i in range(args.warmup + args.steps):
        order = MODES[i % len(MODES) :] + MODES[: i % len(MODES)]
        for mode in order:
            counter = [0]
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            start = time.perf_counter()
            steps[mode](counter)
            if device.type == "cuda":
                torch.cuda.synchronize()
                peak[mode] = torch.cuda.max_memory_allocated() - before
            if i >= args.warmup:
                times[mode].append(time.perf_counter() - start)
            saved[mode] = counter[0]
    result = {}
    for mode in MODES:
        result[mode] = {
            "ms": 1e3 * statistics.median(times[mode]),
            "saved_mib": saved[mode] / 2**20,
        }
        if mode in peak:
            result[mode]["cuda_peak_mib"] = peak[mode] / 2**20
    return {"device": str(device), "modes": result}


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
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even with CUDA")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    res = measure(args)
    base = res["modes"]["sft_lora"]
    cuda = "cuda_peak_mib" in base
    print(
        f"device {res['device']}, threads {torch.get_num_threads()}, hidden {args.hidden}, "
        f"depth {args.depth}, {args.batch} pairs x {args.parts} parts, "
        f"{args.adapter} rank {args.rank}, "
        f"median of {args.steps} steps after {args.warmup} warmup"
    )
    header = f"{'mode':<17}{'ms/step':>9}{'time x':>8}{'saved MiB':>11}{'mem x':>7}"
    if cuda:
        header += f"{'cuda peak MiB':>15}{'peak x':>8}"
    print(header)
    for mode, r in res["modes"].items():
        line = (
            f"{mode:<17}{r['ms']:>9.1f}{r['ms'] / base['ms']:>8.2f}"
            f"{r['saved_mib']:>11.2f}{r['saved_mib'] / base['saved_mib']:>7.2f}"
        )
        if cuda:
            line += f"{r['cuda_peak_mib']:>15.1f}{r['cuda_peak_mib'] / base['cuda_peak_mib']:>8.2f}"
        print(line)


if __name__ == "__main__":
    main()

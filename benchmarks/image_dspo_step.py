"""What an image-DSPO step costs next to a plain denoising step, and DoRA next to LoRA.

A DSPO step trains on 2B images (B chosen, B rejected), so the baseline is a plain
denoising (eps-MSE) step with the same adapter on the same 2B images. Four steps on the
tiny SDXL U-Net (`build_tiny_sdxl(image_size=32)`: latents [4, 16, 16]) and one set of B
pairs, each zero_grad + forward + backward + gradient clipping + AdamW:

    plain_dora   eps-MSE on the 2B images, DoRA adapter: the baseline of the DSPO ratios
    dspo_dora    `ImageDSPOTrainer.train_step` (dspo_sdxl): a no-grad reference forward on
                 2B with the adapter switched off, the policy forward + backward on 2B,
                 the per-pair losses
    plain_lora   as plain_dora with a LoRA adapter of the same rank
    dspo_lora    as dspo_dora with that LoRA adapter

The DSPO modes run the trainer's own step (its data order, (t, noise) draws, statistics,
logging to a null tracker) with one micro-batch of all B pairs; the plain modes draw
(t, noise) once, outside the clock. The config is TrainImageDSPOConfig's default (rank
32, alpha 32, dropout 0.1, all eight target module kinds) except gradient checkpointing,
off unless --gradient-checkpointing, so the ratios compare the same compute.

Time and memory are measured as in benchmarks/flow_dpo_step.py, whose helpers this
imports: blocks of --block steps in CPU time of this process (torch on --threads 1) or
wall time on CUDA, modes rotating over --repeats rounds, the fastest block kept; then one
untimed step per mode for the bytes autograd saves and the peak of live tensor bytes
(the torch profiler's memory timeline on the CPU, max_memory_allocated on CUDA).

    python benchmarks/image_dspo_step.py [--pairs 4 --block 5 --repeats 5]

Prints the table and writes benchmarks/results/image_dspo_step.json, whose `ratios` hold
the headline numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks.flow_dpo_step

from benchmarks.flow_dpo_step import count_saved_bytes, peak_bytes
from genalign.config.image_dspo import TrainImageDSPOConfig
from genalign.models.sdxl import build_tiny_sdxl
from genalign.storage import atomic_write_json
from genalign.tracking import NullTracker
from genalign.trainers.image_dspo import (
    ImageDSPOTrainer,
    SDXLPairs,
    attach_unet_adapter,
    denoising_errors,
    draw_timesteps_and_noise,
    duplicate_for_pair,
)

MODES = ("plain_dora", "dspo_dora", "plain_lora", "dspo_lora")
IMAGE = 32


def build_pairs(n: int, text_width: int, pooled_width: int) -> SDXLPairs:
    g = torch.Generator().manual_seed(1)
    latent = IMAGE // 2
    time_ids = torch.tensor([[IMAGE, IMAGE, 0, 0, IMAGE, IMAGE]], dtype=torch.float32).repeat(n, 1)
    return SDXLPairs(
        torch.randn(n, 4, latent, latent, generator=g),
        torch.randn(n, 4, latent, latent, generator=g),
        torch.randn(n, 77, text_width, generator=g),
        torch.randn(n, pooled_width, generator=g),
        time_ids,
        time_ids.clone(),
        torch.ones(n),
    )


def make_steps(args: argparse.Namespace, tmp: Path) -> tuple[dict[str, Callable[[], None]], dict[str, torch.nn.Module]]:
    pipe = build_tiny_sdxl(0, image_size=IMAGE)
    text_width = pipe.unet.config.cross_attention_dim
    pairs = build_pairs(args.pairs, text_width, pipe.text_encoder_2.config.projection_dim)
    steps: dict[str, Callable[[], None]] = {}
    models: dict[str, torch.nn.Module] = {}
    for adapter in ("dora", "lora"):
        cfg = TrainImageDSPOConfig(
            adapter=adapter, steps=10**9, batch_pairs=args.pairs, grad_accumulation=1,
            checkpoint_every=0, gradient_checkpointing=args.gradient_checkpointing,
        )
        trainer = ImageDSPOTrainer(
            cfg, pairs, build_tiny_sdxl(0, image_size=IMAGE), tmp / adapter,
            NullTracker(), resume=False, base_model_ref="tiny://sdxl",
        )
        trainer.setup()
        steps[f"dspo_{adapter}"] = trainer.train_step
        models[f"dspo_{adapter}"] = trainer.model

        plain_pipe = build_tiny_sdxl(0, image_size=IMAGE)
        if cfg.gradient_checkpointing:
            plain_pipe.unet.enable_gradient_checkpointing()
        torch.manual_seed(cfg.seed)
        model = attach_unet_adapter(plain_pipe.unet, cfg).to(trainer.device).train()
        unet, scheduler = model.get_base_model(), plain_pipe.scheduler
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        index = torch.arange(args.pairs)
        t, noise = draw_timesteps_and_noise(
            cfg.seed, index, 0, scheduler.config.num_train_timesteps, tuple(pairs.latents_chosen.shape[1:])
        )
        on_device = type(pairs)(*(x.to(trainer.device) for x in pairs))
        inputs = duplicate_for_pair(on_device, t.to(trainer.device), noise.to(trainer.device))

        def plain(model=model, unet=unet, scheduler=scheduler, params=params, opt=opt, inputs=inputs,
                  max_norm=cfg.max_grad_norm) -> None:
            opt.zero_grad(set_to_none=True)
            err, _ = denoising_errors(unet, scheduler, inputs)
            err.mean().backward()
            torch.nn.utils.clip_grad_norm_(params, max_norm)
            opt.step()

        steps[f"plain_{adapter}"] = plain
        models[f"plain_{adapter}"] = model
    return steps, models


def measure(args: argparse.Namespace, tmp: Path) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    steps, models = make_steps(args, tmp)
    for mode in MODES:  # warm-up: kernels, allocator, optimizer state
        for _ in range(args.warmup):
            steps[mode]()
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
    for mode, row in rows.items():
        base = rows["plain_" + mode.split("_")[1]]
        row["time_x_plain"] = row["ms"] / base["ms"]
        row["peak_x_plain"] = row["peak_mib"] / base["peak_mib"]
    return {"device": str(device), "modes": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=4, help="pairs per step (2x images)")
    parser.add_argument("--block", type=int, default=5, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per mode")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per mode first")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "image_dspo_step.json")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="image-dspo-bench-") as tmp:
        res = measure(args, Path(tmp))

    print(
        f"device {res['device']}, threads {torch.get_num_threads()}, load {load:.1f}, tiny SDXL U-Net "
        f"{IMAGE} px (latents 4x{IMAGE // 2}x{IMAGE // 2}), {args.pairs} pairs, rank 32; fastest of "
        f"{args.repeats} blocks of {args.block} steps, {'wall' if res['device'].startswith('cuda') else 'CPU'} time"
    )
    print(f"{'mode':<12}{'ms/step':>9}{'x plain':>9}{'saved MiB':>11}{'peak MiB':>10}{'x plain':>9}")
    for mode, r in res["modes"].items():
        print(f"{mode:<12}{r['ms']:>9.1f}{r['time_x_plain']:>9.2f}{r['saved_mib']:>11.2f}"
              f"{r['peak_mib']:>10.2f}{r['peak_x_plain']:>9.2f}")
    m = res["modes"]
    ratios = {
        "dspo_vs_plain_step_time_dora": m["dspo_dora"]["time_x_plain"],
        "dspo_vs_plain_peak_memory_dora": m["dspo_dora"]["peak_x_plain"],
        "dspo_vs_plain_step_time_lora": m["dspo_lora"]["time_x_plain"],
        "dora_vs_lora_dspo_step_time": m["dspo_dora"]["ms"] / m["dspo_lora"]["ms"],
        "dora_vs_lora_plain_step_time": m["plain_dora"]["ms"] / m["plain_lora"]["ms"],
    }
    result = {
        "benchmark": "image_dspo_step",
        "command": " ".join(["python benchmarks/image_dspo_step.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": load, "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "device": res["device"]},
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "ratios": ratios,
        "modes": m,
    }
    atomic_write_json(args.out, result)
    shown = args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out
    print(f"\nratios: {json.dumps({k: round(v, 3) for k, v in ratios.items()})}\nwrote {shown}")


if __name__ == "__main__":
    main()

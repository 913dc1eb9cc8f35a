"""Training throughput of the hand-pose transformer on the CPU, with and without refinement.

One optimizer step is what `genalign.trainers.hand_pose.train_phase` does per step in the
tiny preset's "joint" phase (configs/hand-pose/tiny.yaml: every parameter group trains,
lr 5e-4, backbone_lr_scale 1.0, its loss weights), on one fixed batch of the preset's
batch_size (32) crops:

    zero_grad; `_targets` of the batch (uint8 images to float, metres to mm); forward;
    `phase_losses`; backward; the batch-spread check (`per_joint_batch_std`) and the
    loss terms brought to Python floats; gradient clipping (grad_clip 1.0); AdamW step
    (one param group per trained group, as train_phase builds it); EMA update

Left out: drawing the epoch's data order and indexing the batch, the learning-rate
schedule (a multiplier per step), logging and checkpoints. The crops are real: the tiny
preset's prepare config (synthetic hands in DexYCB's layout, split s0, 64-px crops) with
`max_frames` {train: 32, val: 1, test: 1}, so prepare-hands crops just the one batch (the
synthetic frames are generated once and cached under GENALIGN_CACHE, like the pipeline's).

Variants, each a change of the preset's `train.model` (everything else as the preset):

    plain            the preset: refine_steps 2
    no_refine        refine_steps 0 (the "refine" group is empty; the baseline of `time x`)
    sigma_reparam    the preset with sigma_reparam: true (every nn.Linear a SigmaReparamLinear)
    stochastic_head  the preset with stochastic_head: true (the VAE-style latent and its KL)

Time: CPU time of this process (`time.process_time`) of a block of --steps steps,
divided by the block, torch on --threads intra-op threads (1 by default, so that load
from other processes slows every variant alike). After --warmup untimed steps per
variant, the variants' blocks alternate in a rotating order over --rounds rounds (each
variant runs first in turn) and each keeps its fastest block. images/s is batch_size
divided by the step time.

    python benchmarks/hand_pose_throughput.py [--steps 10 --rounds 7 --threads 1]

Prints the table and writes benchmarks/results/hand_pose_throughput.json, whose `ratios`
hold the headline numbers: step time (and images/s) of refine_steps 2 against 0, and
the step time of sigma_reparam and of stochastic_head against the plain preset.
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
from typing import Any

from genalign.config.hand_pose import TrainHandPoseConfig
from genalign.config.presets import load_preset

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "hand_pose_throughput.json"
PHASE = "joint"
# name -> changes of the preset's train.model
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "no_refine": {"refine_steps": 0},
    "sigma_reparam": {"sigma_reparam": True},
    "stochastic_head": {"stochastic_head": True},
}
BASELINE = "no_refine"


# --- pure helpers ----------------------------------------------------------------------


def rotation(names: list, round_: int) -> list:
    """The order of round `round_`: `names` rotated left by round_ places, so each name
    runs first in turn."""
    shift = round_ % len(names)
    return list(names[shift:]) + list(names[:shift])


def variant_config(train: dict[str, Any], variant: str) -> TrainHandPoseConfig:
    """The preset's train section (a mapping, as load_preset gives it) with `variant`'s
    model changes, validated."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}, expected one of {list(VARIANTS)}")
    model = {**train["model"], **VARIANTS[variant]}
    return TrainHandPoseConfig.from_dict({**train, "model": model}, where=f"train ({variant})")


def phase_index(cfg: TrainHandPoseConfig, name: str) -> int:
    names = [p.name for p in cfg.phases]
    if name not in names:
        raise ValueError(f"no phase {name!r} in the preset, whose phases are {names}")
    return names.index(name)


def table_rows(seconds_per_step: dict[str, float], batch_size: int) -> list[dict[str, Any]]:
    """One row a variant (in the order given): ms a step, images a second, and the step
    time as a multiple of the no_refine step's."""
    base = seconds_per_step[BASELINE]
    return [{"variant": name, "ms_per_step": 1e3 * s, "images_per_s": batch_size / s, "time_x": s / base}
            for name, s in seconds_per_step.items()]


def ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The headline ratios from the table rows."""
    by = {row["variant"]: row for row in rows}
    plain = by["plain"]
    return {
        "images_per_s_refine_vs_no_refine": plain["images_per_s"] / by["no_refine"]["images_per_s"],
        "step_time_refine_vs_no_refine": plain["ms_per_step"] / by["no_refine"]["ms_per_step"],
        "step_time_sigma_reparam_vs_plain": by["sigma_reparam"]["ms_per_step"] / plain["ms_per_step"],
        "step_time_stochastic_head_vs_plain": by["stochastic_head"]["ms_per_step"] / plain["ms_per_step"],
    }


# --- workload --------------------------------------------------------------------------


def prepare_batch(prepare: dict[str, Any], batch_size: int, directory: Path) -> dict:
    """`batch_size` training crops made by prepare-hands from `prepare` (the train split
    cut to the batch), as the dataset artifact's tensors."""
    from safetensors.torch import load_file

    from genalign.stages import run_stage

    cfg = {**prepare, "max_frames": {"train": batch_size, "val": 1, "test": 1}}
    run_stage("prepare-hands", cfg, inputs={}, outputs={"dataset": directory / "dataset"})
    data = {k: v.clone() for k, v in load_file(str(directory / "dataset" / "train.safetensors")).items()}
    if data["images"].shape[0] != batch_size:
        raise RuntimeError(f"prepare-hands gave {data['images'].shape[0]} training crops, expected {batch_size}")
    return data


def make_step(cfg: TrainHandPoseConfig, index: int, batch: dict) -> Callable[[], None]:
    """One train_phase step of phase `index` on `batch`, on the CPU (module docstring)."""
    import math

    import torch

    from genalign.losses.hand_pose import per_joint_batch_std
    from genalign.trainers.hand_pose import _set_trainable, _targets, build_model, phase_losses
    from genalign.training.ema import EMA

    phase = cfg.phases[index]
    device = torch.device("cpu")
    model = build_model(cfg, None).to(device).train()
    groups = model.parameter_groups()
    _set_trainable(groups, phase.trainable)
    ema = EMA(model, decay=cfg.ema_decay)
    lr_of = {g: phase.lr * (phase.backbone_lr_scale if g == "backbone" else 1.0) for g in phase.trainable}
    optimizer = torch.optim.AdamW(
        [{"params": groups[g], "lr": lr_of[g], "name": g} for g in phase.trainable if groups[g]],
        weight_decay=cfg.weight_decay,
    )
    trained = [p for g in phase.trainable for p in groups[g]]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        y = _targets(batch, device)
        out = model(y.images, y.K)
        terms = phase_losses(out, y, phase, cfg)
        terms["loss"].backward()
        stats = {k: float(v.detach()) for k, v in terms.items()}
        spread = float(per_joint_batch_std(out.refined3d.detach()).mean())
        if not (math.isfinite(stats["loss"]) and math.isfinite(spread)):
            raise FloatingPointError(f"the loss is {stats['loss']}, the batch spread {spread} mm")
        torch.nn.utils.clip_grad_norm_(trained, cfg.grad_clip)
        optimizer.step()
        ema.update(model)

    return step


def measure(steps: dict[str, Callable[[], None]], block: int, rounds: int, warmup: int) -> dict[str, float]:
    """The fastest block's CPU seconds a step, per variant (module docstring)."""
    names = list(steps)
    for name in names:
        for _ in range(warmup):
            steps[name]()
    best = {name: float("inf") for name in names}
    for r in range(rounds):
        for name in rotation(names, r):
            start = time.process_time()
            for _ in range(block):
                steps[name]()
            best[name] = min(best[name], (time.process_time() - start) / block)
    return best


# --- main ------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="steps in a timed block")
    parser.add_argument("--rounds", type=int, default=7, help="timed blocks per variant; the fastest is kept")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if min(args.steps, args.rounds) < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("--steps, --rounds and --threads must be >= 1, --warmup >= 0")
    os.environ.setdefault("TQDM_DISABLE", "1")
    load = os.getloadavg()[0]

    import torch

    from genalign.storage import atomic_write_json

    torch.set_num_threads(args.threads)
    preset = load_preset("hand-pose", "tiny")
    cfgs = {name: variant_config(preset["train"], name) for name in VARIANTS}
    index = phase_index(cfgs["plain"], PHASE)
    batch_size = cfgs["plain"].batch_size
    with tempfile.TemporaryDirectory(prefix="hand-pose-throughput-") as tmp:
        batch = prepare_batch(preset["prepare"], batch_size, Path(tmp))
    torch.manual_seed(0)  # the stochastic head's noise
    steps = {name: make_step(cfg, index, batch) for name, cfg in cfgs.items()}
    best = measure(steps, args.steps, args.rounds, args.warmup)
    rows = table_rows(best, batch_size)
    for row in rows:
        row["model"] = VARIANTS[row["variant"]]
        row["refine_steps"] = cfgs[row["variant"]].model.refine_steps

    size = cfgs["plain"].model.image_size
    print(f"{os.cpu_count()} CPUs, load average {load:.1f}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch thread(s)")
    print(f"tiny preset, phase {PHASE} (all groups trained), batch {batch_size} crops of {size} px "
          f"from prepare-hands; fastest of {args.rounds} blocks of {args.steps} steps, CPU time")
    print(f"{'variant':<17}{'refine':>7}{'ms/step':>10}{'images/s':>10}{'time x':>8}")
    for row in rows:
        print(f"{row['variant']:<17}{row['refine_steps']:>7d}{row['ms_per_step']:>10.1f}"
              f"{row['images_per_s']:>10.1f}{row['time_x']:>8.2f}")

    result = {
        "benchmark": "hand_pose_throughput",
        "command": " ".join(["python benchmarks/hand_pose_throughput.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": load, "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "device": "cpu"},
        "clock": "process CPU time",
        "settings": {"preset": "tiny", "phase": PHASE, "batch_size": batch_size, "image_size": size,
                     "data": "prepare-hands on the tiny preset's prepare config, train split cut to one batch",
                     "steps_per_block": args.steps, "rounds": args.rounds, "warmup": args.warmup,
                     "baseline": BASELINE, "model": cfgs["plain"].model.to_dict()},
        "rows": rows,
        "ratios": ratios(rows),
    }
    atomic_write_json(args.out, result)
    shown = args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out
    print(f"\nratios: {json.dumps({k: round(v, 3) for k, v in result['ratios'].items()})}\nwrote {shown}")


if __name__ == "__main__":
    main()

"""Supervised training of the hand-pose transformer, one phase at a time.

A phase (`genalign.config.hand_pose.PhaseConfig`) trains some parameter groups of
`genalign.models.hand_pose.HandPoseModel` (backbone, hand, object, refine) for its
epochs at its learning rate (the backbone's scaled by `backbone_lr_scale`) with its
loss weights; the recipe's three phases are component pretraining (the hand
encoder/decoder, then the object branch, everything else frozen), joint training, and
fine-tuning with the hand-object penetration term. Each phase is its own pipeline task
and starts from the previous phase's raw weights.

    setup    the model (a fresh init, or the previous phase's weights), the optimizer
             (AdamW, one param group per trained group), the EMA, a checkpoint to resume
    train    steps over seeded epoch orders: losses in millimetres and pixels
             (genalign.losses.hand_pose), gradient accumulation and clipping, warm-up +
             SGDR learning rate, bf16 autocast on CUDA, EMA update, collapse and NaN checks
    save     `model.safetensors` (raw weights), `ema.safetensors` (the EMA applied: what the
             evaluation reads), `config.json`, `genalign.json`
    cleanup  nothing is left but the checkpoints of an unfinished run

Loss, per batch (all lengths in mm, pixels of the crop):

    w_3d * |J - J*| + w_ref * |J_ref - J*| + w_2d * (|proj(J_cam) - j*| + |j - j*|) + w_z * |Z - Z*|
    + w_div * diversity(J_ref) + w_obj * (|t - t*| + w_rot * angle(R, R*))
    + w_pen * penetration(bones(J_cam), object*) + w_kl * KL

with J root-relative joints, J_cam camera-frame joints, j the 2D head's joints, Z the
wrist's depth. Ground truth
is stored in metres (DexYCB's unit) and converted to mm exactly once, in `_targets`.

Backbone adapter (`backbone_adapter: lora | dora`): in a phase that trains the backbone,
a fresh peft LoRA/DoRA adapter (Hu et al. 2021; Liu et al. 2024) on the DINOv2 attention
and MLP projections trains instead of the backbone's weights; at the end of the phase it
is saved as `backbone_adapter/` (a peft directory) and merged into the weights, so the
model a phase writes is always a plain `HandPoseModel`, and the next phase that trains
the backbone starts a fresh adapter on the merged weights.

Resume: the data order of epoch e and every crop's roll in it (`rotation_augment_deg`)
are pure functions of (seed, phase, e) and the RNG state is in the checkpoint, so a phase
killed at any step and resumed from its last checkpoint ends with the weights of an
uninterrupted run.

Processes: under torchrun (`python -m torch.distributed.run --nproc-per-node N
--no-python genalign stage train-hand-pose ...`, or a TrainJob's pods) every rank calls
`train_phase` with the same arguments and joins the process group
(`genalign.training.distributed.setup`: gloo on CPU, nccl on this rank's GPU). All ranks
draw the same epoch order, and rank r takes the crops r, r + N, ... of each micro-batch
of `batch_size` crops (`batch_size` is the global micro-batch; it splits unevenly when N
does not divide it, and needs at least one crop per rank). Each loss term is a mean over
the crops (or over those with a labelled object), and each rank weights its share's
mean by the share's part of the micro-batch's count, which makes it the share's sum
divided by the global count (`phase_losses`); the diversity hinge is on the whole
micro-batch's spread, computed from sums over the ranks with a differentiable
all-reduce (`micro_batch_std`). So the ranks' gradients sum to the one-process gradient,
and `sum_gradients`, once per optimizer step before clipping, gives every rank that sum:
clipping, AdamW and the EMA then see identical numbers, and the weights stay identical
without a broadcast. Every rank builds the same parameter groups, and the all-reduce
covers the active groups' parameters that got a gradient (the same on every rank). The
step's statistics are summed the same way before they reach the host, so the logs, the
NaN and collapse checks and `final_loss` are the one-process values on every rank.
Nothing else depends on the batch: the model normalises with LayerNorm only (no
BatchNorm statistics), σReparam's power iteration reads only the weights, and a crop's
roll is drawn per crop and epoch, not in batch order. Settings that draw noise in the
forward pass from the process's RNG stream (the stochastic head, dropout in the adapter
or the backbone) are refused with N > 1, as each rank would draw its own. What is left
between N processes and one is float rounding (tests/integration/
test_hand_pose_distributed.py). Rank 0 alone writes checkpoints and the model, logs and
shows progress; every rank resumes from rank 0's latest checkpoint, so `out_dir` must be
on a filesystem they all see (ranks that find different steps stop with an error), and
`train_phase` returns on every rank only once rank 0 has written it.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from genalign.artifacts import ModelCard, write_model_card
from genalign.config.hand_pose import PhaseConfig, TrainHandPoseConfig
from genalign.tracking import NullTracker, Tracker
from genalign.training.checkpoints import (
    check_resumable,
    latest_checkpoint,
    read_checkpoint_state,
    read_checkpoint_tensors,
    remove_checkpoints,
    restore_checkpoint,
    save_checkpoint,
)
from genalign.training.ema import EMA
from genalign.training.launch import is_main_process, rank, world_size
from genalign.training.schedules import warmup_sgdr
from genalign.training.seeds import derive_seed

EMA_FILE = "ema.safetensors"
ADAPTER_DIR = "backbone_adapter"
# DINOv2's attention projections and MLP (the module names of transformers 5's Dinov2Layer).
BACKBONE_ADAPTER_TARGETS = ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj",
                            "mlp.fc1", "mlp.fc2")
# Dinov2Config's dropout and stochastic-depth rates (transformers 5); 0 in the tiny
# backbone and in the released DINOv2 checkpoints.
BACKBONE_NOISE = ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate")
METHOD = "hand_pose"
ARCH = "hand-pose"
# Points sampled along each bone for the penetration term (plus the joints themselves).
BONE_SAMPLES = 3
# Fields that may change between a killed run and its resumption without changing what
# it computes.
RESUMABLE_CHANGES = ("log_every", "checkpoint_every", "keep_checkpoints")


class CollapseError(RuntimeError):
    """The predictions of a batch collapsed toward one pose."""


class Targets(NamedTuple):
    images: Tensor  # [B, 3, S, S] float in [0, 1]
    K: Tensor  # [B, 3, 3] crop intrinsics
    rel_mm: Tensor  # [B, 21, 3] root-relative joints
    cam_mm: Tensor  # [B, 21, 3] camera-frame joints
    px: Tensor  # [B, 21, 2] crop pixels
    object_R: Tensor  # [B, 3, 3]
    object_t_mm: Tensor  # [B, 3] camera frame
    object_rel_mm: Tensor  # [B, 3] relative to the wrist
    object_half_mm: Tensor  # [B, 3]
    object_valid: Tensor  # [B] bool


def _object_valid(batch: Mapping[str, Tensor]) -> Tensor:
    """[B] bool: the crop's object is labelled (a crop without one has NaN pose and extent)."""
    return torch.isfinite(batch["object_extent"]).all(-1) & torch.isfinite(batch["object_pose"]).flatten(1).all(-1)


def _targets(batch: Mapping[str, Tensor], device: torch.device) -> Targets:
    """A batch of the dataset artifact's tensors as model inputs and targets in mm."""
    j = batch["joints3d"].to(device, torch.float32) * 1000.0  # metres -> mm, the only conversion
    pose = batch["object_pose"].to(device, torch.float32)
    half = batch["object_extent"].to(device, torch.float32) * 1000.0
    valid = _object_valid(batch).to(device)
    pose = torch.nan_to_num(pose)
    t = pose[:, :, 3] * 1000.0
    return Targets(
        images=batch["images"].to(device, torch.float32) / 255.0, K=batch["K"].to(device, torch.float32),
        rel_mm=j - j[:, :1], cam_mm=j, px=batch["joints2d"].to(device, torch.float32),
        object_R=pose[:, :, :3], object_t_mm=t, object_rel_mm=t - j[:, 0],
        object_half_mm=torch.nan_to_num(half, nan=1.0), object_valid=valid,
    )


def _axis_angle(axis: Tensor, angle: Tensor) -> Tensor:
    """Rotation matrices [B, 3, 3] about unit `axis` [B, 3] by `angle` [B] (Rodrigues)."""
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).view(-1, 3, 3)
    eye = torch.eye(3, dtype=axis.dtype, device=axis.device).expand_as(skew)
    sin, cos = angle.sin()[:, None, None], angle.cos()[:, None, None]
    return eye + sin * skew + (1 - cos) * skew @ skew


def rotate_about_crop_centre(y: Targets, angle: Tensor) -> Targets:
    """The batch seen by a camera rolled by `angle` [B] (radians) about the ray through
    each crop's centre: exact, not an image-plane approximation.

    A camera rotated by R sees the point X at X' = R X; its pixel u' and the original
    pixel u of the same ray are related by the homography u ~ K R^T K^-1 u', so the new
    crop samples the old one there (`grid_sample`, pixel centres at integers, black
    outside). Joints, the object's pose and the 2D labels (the projection of the rotated
    joints through the unchanged K) follow R; the wrist's depth changes a little, as it
    would for that camera. Hand pose training rotates crops in the image plane for the
    same reason (more global orientations than the data holds); this is the version
    that keeps the 3D labels exact."""
    b, _, size, _ = y.images.shape
    centre = torch.tensor([(size - 1) / 2, (size - 1) / 2, 1.0], dtype=y.K.dtype, device=y.K.device)
    axis = torch.linalg.solve(y.K, centre.expand(b, 3))  # [B, 3] the centre's ray
    R = _axis_angle(axis / axis.norm(dim=-1, keepdim=True), angle)
    H = y.K @ R.transpose(1, 2) @ torch.linalg.inv(y.K)  # new pixel -> old pixel
    ii = torch.arange(size, dtype=y.K.dtype, device=y.K.device)
    v, u = torch.meshgrid(ii, ii, indexing="ij")
    grid = torch.stack([u, v, torch.ones_like(u)], -1).view(1, -1, 3)  # [1, S*S, 3]
    old = grid @ H.transpose(1, 2)  # [B, S*S, 3]
    old = old[..., :2] / old[..., 2:]
    images = torch.nn.functional.grid_sample(
        y.images, ((2 * old + 1) / size - 1).view(b, size, size, 2), align_corners=False)
    cam = y.cam_mm @ R.transpose(1, 2)
    uvw = cam @ y.K.transpose(1, 2)
    t = (R @ y.object_t_mm[..., None])[..., 0]
    return y._replace(images=images, rel_mm=cam - cam[:, :1], cam_mm=cam, px=uvw[..., :2] / uvw[..., 2:],
                      object_R=R @ y.object_R, object_t_mm=t, object_rel_mm=t - cam[:, 0])


class MicroBatch(NamedTuple):
    """What this rank's loss terms are weighted by: the counts of the whole micro-batch (all
    ranks' shares together) and its spread."""

    samples: int  # crops in the micro-batch
    objects: int  # of them with a labelled object
    std: Tensor  # [21, 3] mm, the refined joints' spread across the micro-batch (micro_batch_std)


def micro_batch_std(pred: Tensor, samples: int) -> Tensor:
    """The standard deviation (correction 0) across a micro-batch of `samples` predictions,
    from this rank's share `pred` [b, J, 3] of them, with its gradient. -> [J, 3]

    Two passes, as torch.std: the mean, then the mean squared deviation, each summed over
    the ranks with `all_sum`. Where the spread is exactly 0 (the root joint, always at 0)
    the gradient is 0, torch.std's subgradient, rather than sqrt's inf * 0 = NaN."""
    from genalign.training.distributed import all_sum

    if samples < 2:
        raise ValueError(f"micro_batch_std: the spread needs a micro-batch of at least 2 crops, got {samples}; "
                         "raise batch_size")
    mean = all_sum(pred.sum(0)) / samples  # [J, 3]
    var = all_sum((pred - mean).square().sum(0)) / samples  # [J, 3]
    return torch.where(var > 0, var.clamp_min(torch.finfo(var.dtype).tiny).sqrt(), torch.zeros_like(var))


def phase_losses(out: Any, y: Targets, phase: PhaseConfig, cfg: TrainHandPoseConfig,
                 batch: MicroBatch | None = None) -> dict[str, Tensor]:
    """Every loss term of `phase` (unweighted) and `loss`, their weighted sum, as this rank's
    part of the micro-batch's value: the parts sum over the ranks to what one process
    computes on the whole micro-batch (and in one process are that).

    `y` is this rank's share of the micro-batch `batch`, or with `batch` None a whole
    micro-batch in this process alone. A term that is a mean over crops is weighted by the
    share's part of the count it averages over (crops, or crops with an object):
    mean_share * n_share / n = sum_share / n. The diversity hinge is on the whole
    micro-batch's spread, the same on every rank, so each rank takes 1 / world_size of it."""
    from genalign.data.hand_skeleton import BONES
    from genalign.losses import hand_pose as L

    w = phase.weights
    if batch is None:
        share = object_share = 1.0
        diversity = L.diversity_loss(out.refined3d, cfg.diversity_margin_mm)
    else:
        share = len(y.images) / batch.samples
        object_share = int(y.object_valid.sum()) / max(batch.objects, 1)
        # L.diversity_loss's hinge, on the spread of the whole micro-batch
        diversity = torch.relu(cfg.diversity_margin_mm - batch.std).mean() / world_size()
    terms = {
        "joints3d": L.joints3d_loss(out.joints3d, y.rel_mm),
        "refined": L.joints3d_loss(out.refined3d, y.rel_mm),
        # both 2D estimates: the camera-frame joints projected, and the 2D head whose
        # points the refinement samples features at
        "reprojection": L.reprojection_loss(out.joints_cam, y.K, y.px) + (out.joints2d - y.px).norm(dim=-1).mean(),
        "root_depth": (out.root_depth - y.cam_mm[:, 0, 2]).abs().mean(),
        "kl": out.kl,
    }
    terms = {k: v * share for k, v in terms.items()}
    terms["diversity"] = diversity
    if w.object > 0:
        terms["object"] = object_share * L.object_pose_loss(
            out.object_translation, y.object_rel_mm, out.object_rotation, y.object_R, cfg.object_rotation_weight,
            valid=y.object_valid)
    if w.penetration > 0:
        points = L.bone_points(out.joints_cam, BONES, BONE_SAMPLES)
        terms["penetration"] = object_share * L.box_penetration_loss(
            points, y.object_R, y.object_t_mm, y.object_half_mm, cfg.penetration_radius_mm, y.object_valid)
    terms["loss"] = sum(getattr(w, k) * v for k, v in terms.items())
    return terms


def build_model(cfg: TrainHandPoseConfig, previous: Path | None) -> torch.nn.Module:
    """The previous phase's raw weights, or a fresh model (initialised from `model.seed`
    in a random stream of its own)."""
    from genalign.models.hand_pose import HandPoseModel, load_hand_pose

    if previous is not None:
        model, saved = load_hand_pose(previous)
        if saved.to_dict() != cfg.model.to_dict():
            changed = sorted(k for k, v in cfg.model.to_dict().items() if saved.to_dict().get(k) != v)
            raise ValueError(f"{previous}: the previous phase's model differs from train.model in {changed}; "
                             "every phase trains the same model")
        return model
    backbone_dir = None
    if cfg.model.backbone != "tiny":
        from genalign.models.refs import model_dir, resolve

        backbone_dir = model_dir(resolve(cfg.model.backbone))
    return HandPoseModel(cfg.model, backbone_dir=backbone_dir)


def _active_groups(phase: PhaseConfig, epoch: int) -> list[str]:
    """The groups that train in `epoch`: all of `trainable`, or one after another."""
    if not phase.one_group_at_a_time:
        return list(phase.trainable)
    return [phase.trainable[min(epoch * len(phase.trainable) // phase.epochs, len(phase.trainable) - 1)]]


def _set_trainable(groups: Mapping[str, list[torch.nn.Parameter]], active: list[str]) -> None:
    for name, params in groups.items():
        for p in params:
            p.requires_grad_(name in active)


def train_phase(
    cfg: TrainHandPoseConfig,
    phase_index: int,
    data: Mapping[str, Tensor],
    *,
    out_dir: Path,
    previous: Path | None = None,
    tracker: Tracker | None = None,
    resume: bool = True,
    stop_at: int | None = None,
) -> dict[str, float]:
    """Train phase `phase_index` of `cfg` on `data` (the dataset artifact's train tensors)
    and write the model into `out_dir` (checkpoints under `out_dir/checkpoints`).

    `previous` is the previous phase's model directory (None for the first phase).
    `stop_at` (recovery drills and tests) returns after that many optimizer steps with a
    checkpoint written, as if the task had been killed there. Returns the final metrics.
    Under torchrun every rank calls it with the same arguments (module docstring,
    "Processes"); it joins the process group if none is joined, and leaving it is the
    caller's (`genalign.training.distributed.teardown`).
    """
    from genalign.training import distributed

    device = distributed.setup()
    main = is_main_process()
    tracker = (tracker or NullTracker()) if main else NullTracker()
    phase = cfg.phases[phase_index]
    if (previous is None) != (phase_index == 0):
        raise ValueError(f"phase {phase.name}: the first phase starts from a fresh model and every later "
                         f"one from the previous phase's (got previous={previous})")
    if cfg.batch_size < world_size():
        raise ValueError(f"phase {phase.name}: batch_size {cfg.batch_size} is split across {world_size()} "
                         "processes, which need at least one crop each; raise batch_size or use fewer processes")
    n = int(data["images"].shape[0])
    per_step = cfg.batch_size * cfg.grad_accum
    steps_per_epoch = n // per_step
    if steps_per_epoch < 1:
        raise ValueError(f"phase {phase.name}: {n} training crops are fewer than one step's "
                         f"batch_size x grad_accum = {per_step}")
    total = phase.epochs * steps_per_epoch
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and cfg.bf16)

    model = build_model(cfg, previous)
    adapter = cfg.backbone_adapter != "none" and "backbone" in phase.trainable
    noisy = _forward_noise(cfg, model, adapter)
    if noisy and world_size() > 1:
        raise ValueError(f"phase {phase.name}: {noisy} draw random numbers in the forward pass from each "
                         f"process's own stream by batch position, so {world_size()} processes would not train "
                         "as one; turn them off, or train in one process")
    if adapter:
        _attach_backbone_adapter(model, cfg, phase_index)
    model = model.to(device)
    groups = model.parameter_groups()
    if adapter:  # the adapter trains, the backbone's own weights stay frozen
        groups["backbone"] = [p for n, p in model.backbone.named_parameters() if "lora_" in n]
    _set_trainable(groups, phase.trainable)
    ema = EMA(model, decay=cfg.ema_decay)
    lr_of = {g: phase.lr * (phase.backbone_lr_scale if g == "backbone" else 1.0) for g in phase.trainable}
    optimizer = torch.optim.AdamW(
        [{"params": groups[g], "lr": lr_of[g], "name": g} for g in phase.trainable if groups[g]],
        # foreach: one kernel per op over all tensors; torch picks it only on CUDA by
        # default, and the per-tensor loop was a seventh of a CPU step here
        weight_decay=cfg.weight_decay, foreach=True,
    )
    forward = torch.compile(model) if cfg.compile else model

    step, collapsed, seconds = 0, 0, 0.0
    torch.manual_seed(derive_seed(cfg.seed, "train", phase_index))
    ckpt = None
    if resume:
        ckpt = latest_checkpoint(out_dir)
    elif main:
        remove_checkpoints(out_dir)
    if ckpt is not None:
        state = read_checkpoint_state(ckpt)
        check_resumable(ckpt, state["config"], cfg.to_dict(), RESUMABLE_CHANGES)
        restore_checkpoint(ckpt, params={"model": model.state_dict()}, optimizer=optimizer)
        ema.load_state_dict(read_checkpoint_tensors(ckpt, "ema"))
        step, collapsed, seconds = state["step"], state["collapsed"], state["seconds"]
    # a collective, so also the barrier that keeps rank 0 from writing (and pruning)
    # checkpoints before every rank has read the one it resumes from
    _check_same_step(step, out_dir, device)

    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=step, desc=f"train {phase.name}", unit="step", mininterval=2.0,
               disable=not main)
    running: dict[str, float] = {}
    stats: dict[str, float] = {}
    start = time.perf_counter()
    model.train()
    order_epoch, order, angles = -1, None, None
    while step < total and (stop_at is None or step < stop_at):
        epoch, within = divmod(step, steps_per_epoch)
        if epoch != order_epoch:  # each epoch's order, augmentation and groups, once
            order_epoch = epoch
            order = torch.randperm(n, generator=torch.Generator().manual_seed(
                derive_seed(cfg.seed, "order", phase_index, epoch)))
            # crop i's roll in this epoch, whichever step, micro-batch and rank it falls to
            angles = (torch.rand(n, generator=torch.Generator().manual_seed(
                derive_seed(cfg.seed, "rotate", phase_index, epoch))) * 2 - 1) * math.radians(cfg.rotation_augment_deg)
            active = _active_groups(phase, epoch)
            _set_trainable(groups, active)
        mult = warmup_sgdr(step, warmup=cfg.warmup_steps, cycle=cfg.restart_epochs * steps_per_epoch,
                           mult=cfg.restart_mult, min_ratio=cfg.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr_of[group["name"]] * mult
        optimizer.zero_grad(set_to_none=True)
        parts: dict[str, Tensor] = {}
        spread = math.inf
        for micro in range(cfg.grad_accum):
            at = (within * cfg.grad_accum + micro) * cfg.batch_size
            index = order[at:at + cfg.batch_size]  # the micro-batch, all ranks together
            mine = distributed.shard(index)
            y = _targets({k: v[mine] for k, v in data.items()}, device)
            if cfg.rotation_augment_deg > 0:
                y = rotate_about_crop_centre(y, angles[mine].to(device))
            with autocast:
                out = forward(y.images, y.K)
                std = micro_batch_std(out.refined3d, len(index))
                batch = MicroBatch(samples=len(index), objects=int(_object_valid(
                    {k: data[k][index] for k in ("object_pose", "object_extent")}).sum()), std=std)
                terms = phase_losses(out, y, phase, cfg, batch)
            (terms["loss"] / cfg.grad_accum).backward()
            for k, v in terms.items():
                parts[k] = parts.get(k, 0.0) + v.detach() / cfg.grad_accum
            # per_joint_batch_std's statistic, of the whole micro-batch: the same on every rank
            spread = min(spread, float(std.detach().mean()))
        # the ranks' parts of the step's terms add up to its terms, on every rank
        totals = torch.stack(list(parts.values())).float()
        distributed.sum_([totals])
        stats = dict(zip(parts, totals.tolist(), strict=True))
        if not math.isfinite(stats["loss"]):
            raise FloatingPointError(
                f"phase {phase.name}, step {step}: the loss is {stats['loss']} (terms "
                f"{ {k: v for k, v in stats.items() if k != 'loss'} }); lower lr ({phase.lr}), keep grad_clip "
                "on, or check the crops' labels (joints3d in metres)")
        if spread / 1000.0 < cfg.collapse_threshold_m:
            collapsed += 1
            hint = (f"phase {phase.name}, step {step}: the batch's predictions collapsed (mean per-joint std "
                    f"{spread / 1000.0:.2g} m < collapse_threshold_m {cfg.collapse_threshold_m}); raise "
                    "weights.diversity, lower lr, or check that the training crops' poses vary")
            if cfg.stop_on_collapse:
                raise CollapseError(hint)
            if collapsed == 1 and main:
                warnings.warn(hint, stacklevel=1)
        trained = [p for g in active for p in groups[g]]
        # Every rank runs the same graph, so the same parameters got a gradient; one the
        # forward never uses (DINOv2's mask_token) keeps None, as in one process, where AdamW
        # skips it rather than decaying it.
        distributed.sum_gradients([p for p in trained if p.grad is not None])
        grad_norm = (torch.nn.utils.clip_grad_norm_(trained, cfg.grad_clip) if cfg.grad_clip > 0
                     else torch.tensor(0.0))
        optimizer.step()
        ema.update(model)
        step += 1
        bar.update(1)
        for k, v in {**stats, "batch_std_mm": spread, "grad_norm": float(grad_norm), "lr": mult * phase.lr}.items():
            running[k] = running.get(k, 0.0) + v
        if step % cfg.log_every == 0 or step == total:
            count = cfg.log_every if step % cfg.log_every == 0 else step % cfg.log_every
            tracker.log_metrics({f"train/{k}": v / count for k, v in running.items()}, step=step)
            bar.set_postfix(loss=f"{running['loss'] / count:.3g}")
            running = {}
        if main and (step % cfg.checkpoint_every == 0 or step == total or step == stop_at):
            save_checkpoint(
                out_dir, step, tensors={"model": model.state_dict(), "ema": ema.state_dict()},
                optimizer=optimizer, keep=cfg.keep_checkpoints,
                state={"config": cfg.to_dict(), "phase": phase_index, "collapsed": collapsed,
                       "seconds": seconds + time.perf_counter() - start},
            )
    bar.close()
    distributed.barrier()  # every rank returns once the last checkpoint is written
    seconds += time.perf_counter() - start
    metrics = {"steps": float(step), "epochs": float(phase.epochs), "seconds": seconds,
               "collapsed_batches": float(collapsed), "final_loss": stats.get("loss", math.nan)}
    if step < total:  # stopped on purpose: the checkpoint is what a resumed run continues from
        return metrics
    if main:
        _save_phase(model, ema, cfg, phase_index, adapter, metrics, out_dir)
    distributed.barrier()  # and once the model is written
    return metrics


def _save_phase(model: torch.nn.Module, ema: EMA, cfg: TrainHandPoseConfig, phase_index: int, adapter: bool,
                metrics: Mapping[str, float], out_dir: Path) -> None:
    """Write the trained phase into `out_dir`: the raw and EMA weights, the backbone
    adapter (merged into the raw weights afterwards), the model card."""
    from safetensors.torch import save_file

    from genalign.models.hand_pose import save_hand_pose

    phase = cfg.phases[phase_index]
    model.eval()
    with ema.apply_to(model):
        ema_state = _plain_state(model, adapter)
    if adapter:
        from genalign.training.adapters import save_adapter_dir

        save_adapter_dir(model.backbone, out_dir / ADAPTER_DIR)
        model.backbone = model.backbone.merge_and_unload()
    save_hand_pose(model, cfg.model, out_dir)
    save_file(ema_state, str(out_dir / EMA_FILE))
    names = [p.name for p in cfg.phases[: phase_index + 1]]
    write_model_card(out_dir, ModelCard(
        kind="model", method=METHOD, arch=ARCH, base_model=cfg.model.backbone,
        config=cfg.to_dict(), metrics={k: float(v) for k, v in metrics.items()},
        adapter_type=cfg.backbone_adapter if adapter else "full",
        extra={"phase": phase.name, "phase_index": phase_index, "phases": names,
               "weights": {"raw": "model.safetensors", "ema": EMA_FILE},
               **({"backbone_adapter": ADAPTER_DIR} if adapter else {})},
    ))


def _forward_noise(cfg: TrainHandPoseConfig, model: torch.nn.Module, adapter: bool) -> list[str]:
    """The settings under which the forward pass draws random numbers (from the process's
    RNG stream, in batch order): the stochastic head's sample, the adapter's dropout, the
    backbone's dropout and stochastic depth (DINOv2 checkpoints ship with them off)."""
    backbone = model.backbone.config
    found = {
        "model.stochastic_head": cfg.model.stochastic_head,
        "adapter_dropout": adapter and cfg.adapter_dropout > 0,
        **{f"the backbone's {k}": getattr(backbone, k) > 0 for k in BACKBONE_NOISE},
    }
    return [name for name, on in found.items() if on]


def _check_same_step(step: int, out_dir: Path, device: torch.device) -> None:
    """Every rank resumes from the same step (a plain process trivially does)."""
    from genalign.training import distributed

    steps = torch.zeros(world_size(), device=device)
    steps[rank()] = step
    distributed.sum_([steps])  # an all-gather: each rank fills its own slot
    found = [int(s) for s in steps.tolist()]
    if len(set(found)) > 1:
        raise RuntimeError(f"{out_dir}: the ranks found checkpoints of steps {found} (by rank); every rank must "
                           "read rank 0's checkpoints, so out_dir must be on a filesystem that all of them share")


def _attach_backbone_adapter(model: torch.nn.Module, cfg: TrainHandPoseConfig, phase_index: int) -> None:
    """Wrap the backbone in a fresh LoRA/DoRA adapter, initialised from a seed of its own."""
    from types import SimpleNamespace

    from genalign.training.adapters import attach_adapter, lora_config

    fields = SimpleNamespace(rank=cfg.adapter_rank, alpha=cfg.adapter_alpha, dropout=cfg.adapter_dropout,
                             adapter=cfg.backbone_adapter)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, "backbone-adapter", phase_index))
        model.backbone = attach_adapter(model.backbone, lora_config(fields, BACKBONE_ADAPTER_TARGETS))


def _plain_state(model: torch.nn.Module, adapter: bool) -> dict[str, Tensor]:
    """The model's state dict as a plain HandPoseModel's: with an adapter, the backbone's
    weights with the adapter merged in (on a copy; the live model keeps its adapter)."""
    import copy

    if not adapter:  # copies: the caller reads them after the EMA weights are swapped out
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    plain = copy.deepcopy(model)
    plain.backbone = plain.backbone.merge_and_unload()
    return {k: v.detach().cpu().contiguous() for k, v in plain.state_dict().items()}


def load_phase_model(directory: Path, *, weights: str = "ema") -> tuple[torch.nn.Module, Any]:
    """A phase's model with its EMA (`weights="ema"`) or raw (`"raw"`) weights, in eval mode."""
    from safetensors.torch import load_file

    from genalign.models.hand_pose import load_hand_pose
    from genalign.storage import ArtifactError

    if weights not in ("ema", "raw"):
        raise ValueError(f"weights: expected 'ema' or 'raw', got {weights!r}")
    model, cfg = load_hand_pose(directory)
    if weights == "ema":
        path = Path(directory) / EMA_FILE
        if not path.is_file():
            raise ArtifactError(f"{path}: missing; expected the EMA weights beside model.safetensors")
        model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval(), cfg

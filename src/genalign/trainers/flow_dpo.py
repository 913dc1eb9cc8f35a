"""Flow-matching DPO: train a LoRA/DoRA adapter on the part DiT from preference pairs.

Diffusion-DPO (Wallace et al. 2023, "Diffusion Model Alignment Using Direct Preference
Optimization", eq. 14) carried over to the flow-matching parameterisation the part DiT
uses (x_t = (1 - t) x0 + t eps, target u = x0 - eps). For a pair (x0_w, x0_l) with
condition c, ONE timestep t and ONE noise eps are drawn and shared by the chosen and the
rejected sample and by every part of the object, so the two errors differ only through
the samples themselves:

    err_theta(x0) = mean over real parts of || u_theta(x_t, t, c) - (x0 - eps) ||^2
    err_ref(x0)   = the same with the adapter disabled (the frozen base model)

and the loss named by `cfg.loss` (genalign.losses) turns the four errors into a DPO
loss. The reference is the policy with its adapter switched off
(`PeftModel.disable_adapter()`), so there is one copy of the weights in memory. With
`precompute_reference` the reference errors are computed once per pair, before
training, at `reference_draws` seeded (t, eps) draws; epoch e then trains on draw
e mod reference_draws and runs no reference forward except to measure drift.

Determinism: pair order is a seeded permutation per epoch and each pair's (t, eps) is a
function of (seed, pair index, draw), so a step's data depends only on the step number.
A checkpoint (adapter tensors, optimizer tensors, step, RNG state; safetensors and JSON:
`genalign.training.checkpoints`) is therefore enough to resume to the same final adapter.

Processes. Under torchrun (`torchrun --no-python genalign stage train-flow-dpo ...`, or the
pods of a TrainJob) N processes take the same optimizer steps as one process with the same
`batch_size` and `grad_accum` (`genalign.training.distributed`; gloo on CPU, nccl on CUDA,
rank r on cuda:LOCAL_RANK). Every rank draws the same micro-batches and rank r takes their
pairs r, r + N, ...; its loss on each is weighted by its pairs' share of the step's pairs
(the global count, as one process weights a micro-batch), so the sum of the ranks'
gradients, one all-reduce per step before clipping, is the one-process gradient up to the
order of the additions, also when the shares are uneven. A rank whose share of a
micro-batch is empty runs no forward for it and joins the all-reduce with zeros. The
logged statistics are weighted the same way and summed over the ranks too, so every rank
sees the one-process numbers; clipping and AdamW then act on identical gradients and the
adapters stay identical without a broadcast. With `precompute_reference` the ranks split
the (draw, chunk) forwards and sum a zero-initialised table, so every rank holds all of it.
With dropout each rank draws its own masks, so only dropout 0 (the default) matches one
process; so does `dspo_sdxl`, whose distance switch is on the mean of each rank's share
rather than of the micro-batch, only while the switch agrees. Rank 0 alone writes
checkpoints, the adapter and genalign.json, and logs to the tracker the caller gives it
(`genalign.stages.run_stage` gives the others a NullTracker); every rank reads the
checkpoint it resumes from, so `out_dir` must be one directory shared by all of them
(setup checks that they resumed from the same step). tests/integration/
test_flow_dpo_distributed.py compares one and two processes.

Layout written under `out_dir`:

    checkpoints/step_00000050/   adapter.safetensors, optimizer.safetensors,
                                 optimizer.json, rng.safetensors, trainer_state.json
    adapter_config.json, adapter_model.safetensors   peft adapter (PeftModel.from_pretrained)
    genalign.json                {base_model, base_model_sha256, method, loss,
                                  adapter_type, metrics, config}

Use: `train_flow_dpo(cfg, base_model_dir=..., pairs=load_pair_tensors(rows, MAX_PARTS),
out_dir=..., tracker=NullTracker())`, in one process or in each of torchrun's.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from genalign.artifacts import ADAPTER, ModelCard, write_model_card
from genalign.config.flow_dpo import RESUMABLE_FIELDS, FlowDPOConfig
from genalign.losses import PREFERENCE_LOSS_EXTRA_INPUTS, get_preference_loss
from genalign.losses.diffusion_dpo import masked_mse
from genalign.losses.timesteps import flow_interpolate, flow_target, sample_timesteps
from genalign.models.part_dit import CONFIG_NAME, WEIGHTS_NAME, PartDiT
from genalign.storage import ArtifactError
from genalign.tracking import Tracker
from genalign.training import base_model, checkpoints, distributed
from genalign.training.adapters import (
    AdapterSwitch,
    attach_adapter,
    lora_config,
    save_adapter_dir,
)
from genalign.training.checkpoints import latest_checkpoint
from genalign.training.launch import is_main_process, rank, world_size
from genalign.training.seeds import derive_seed

if TYPE_CHECKING:
    from peft import PeftModel

logger = logging.getLogger(__name__)

METHOD = "flow_dpo"
# The files of a PartDiT directory that define the base model (PartDiT.save_pretrained).
BASE_MODEL_FILES = (CONFIG_NAME, WEIGHTS_NAME)
# Extra loss inputs (genalign.losses.PREFERENCE_LOSS_EXTRA_INPUTS) this trainer can build
# from a micro-batch: they need the live reference prediction.
SUPPORTED_EXTRA_INPUTS = ("chosen_policy_ref_mse",)
# With a precomputed reference, drift costs an extra no-grad forward: by default it is
# measured this many times less often than the training statistics are logged.
DRIFT_EVERY_PRECOMPUTED = 10
# The statistics of a step, each a sum over its pairs weighted by 1 / (the step's pairs),
# in the order they are logged; "drift" follows on the steps that measure it.
STEP_STATS = ("loss", "implicit_accuracy", "reward_margin", "chosen_reward", "rejected_reward")


def to_host(values: torch.Tensor) -> list[float]:
    """A step's statistics as Python floats: one device-to-host copy."""
    return values.tolist()


# --------------------------------------------------------------------------------------
# Pair data
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairTensors:
    """Preference pairs as tensors, parts padded to a common P with `part_mask`.

    Chosen and rejected share their condition, hence their part count and mask.
    """

    x0_chosen: torch.Tensor  # [N, P, T, D]
    x0_rejected: torch.Tensor  # [N, P, T, D]
    cond: torch.Tensor  # [N, Nc, C]
    part_mask: torch.Tensor  # [N, P] bool, True = real part

    def __post_init__(self) -> None:
        n = self.x0_chosen.shape[0]
        if self.x0_chosen.dim() != 4:
            raise ValueError(f"x0_chosen must be [N, P, T, D], got {tuple(self.x0_chosen.shape)}")
        if self.x0_rejected.shape != self.x0_chosen.shape:
            raise ValueError(
                f"x0_rejected {tuple(self.x0_rejected.shape)} must match "
                f"x0_chosen {tuple(self.x0_chosen.shape)}"
            )
        if self.cond.dim() != 3 or self.cond.shape[0] != n:
            raise ValueError(f"cond must be [{n}, Nc, C], got {tuple(self.cond.shape)}")
        if self.part_mask.dtype != torch.bool or self.part_mask.shape != self.x0_chosen.shape[:2]:
            raise ValueError(
                f"part_mask must be bool {tuple(self.x0_chosen.shape[:2])}, got "
                f"{self.part_mask.dtype} {tuple(self.part_mask.shape)}"
            )
        empty = (~self.part_mask.any(dim=1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"pairs {empty} have no real part in part_mask")

    def __len__(self) -> int:
        return self.x0_chosen.shape[0]

    def to(self, device: torch.device) -> PairTensors:
        return PairTensors(
            self.x0_chosen.to(device),
            self.x0_rejected.to(device),
            self.cond.to(device),
            self.part_mask.to(device),
        )

    def select(self, index: torch.Tensor) -> PairTensors:
        return PairTensors(
            self.x0_chosen[index], self.x0_rejected[index], self.cond[index], self.part_mask[index]
        )


PAIR_FILE_KEYS = ("chosen_latent", "rejected_latent", "cond")


def load_pair_tensors(pairs: Sequence[Mapping[str, str | Path]], max_parts: int) -> PairTensors:
    """Read pairs from safetensors files into padded tensors.

    Each item names three files: `chosen_latent` and `rejected_latent` (key `latent`
    [P, T, D], unpadded) and `cond` (keys `features` [Nc, C] and `num_parts`).
    """
    from safetensors.torch import load_file

    if not pairs:
        raise ValueError("load_pair_tensors: no pairs given")
    chosen, rejected, conds, masks = [], [], [], []
    for i, item in enumerate(pairs):
        missing = [k for k in PAIR_FILE_KEYS if k not in item]
        if missing:
            raise ValueError(
                f"pair {i}: missing key(s) {missing}; each pair needs {list(PAIR_FILE_KEYS)}"
            )
        cond_file = load_file(str(item["cond"]))
        if "features" not in cond_file or "num_parts" not in cond_file:
            raise ArtifactError(f"{item['cond']}: needs tensors 'features' and 'num_parts'")
        num_parts = int(cond_file["num_parts"])
        if not 1 <= num_parts <= max_parts:
            raise ArtifactError(f"{item['cond']}: num_parts={num_parts} not in [1, {max_parts}]")
        padded = []
        for key in ("chosen_latent", "rejected_latent"):
            path = item[key]
            tensors = load_file(str(path))
            if "latent" not in tensors:
                raise ArtifactError(f"{path}: no tensor 'latent' (has {sorted(tensors)})")
            latent = tensors["latent"].float()  # [P, T, D]
            if latent.dim() != 3 or latent.shape[0] != num_parts:
                raise ArtifactError(
                    f"{path}: latent shape {list(latent.shape)}, expected [{num_parts}, T, D] "
                    f"(num_parts from {item['cond']})"
                )
            out = latent.new_zeros((max_parts, *latent.shape[1:]))
            out[:num_parts] = latent
            padded.append(out)
        if i > 0 and padded[0].shape != chosen[0].shape:
            raise ArtifactError(
                f"{item['chosen_latent']}: token shape {tuple(padded[0].shape[1:])} differs from "
                f"pair 0's {tuple(chosen[0].shape[1:])}"
            )
        features = cond_file["features"].float()  # [Nc, C]
        if i > 0 and features.shape != conds[0].shape:
            raise ArtifactError(
                f"{item['cond']}: features shape {tuple(features.shape)} differs from "
                f"pair 0's {tuple(conds[0].shape)}"
            )
        chosen.append(padded[0])
        rejected.append(padded[1])
        conds.append(features)
        mask = torch.zeros(max_parts, dtype=torch.bool)
        mask[:num_parts] = True
        masks.append(mask)
    return PairTensors(
        torch.stack(chosen), torch.stack(rejected), torch.stack(conds), torch.stack(masks)
    )


# --------------------------------------------------------------------------------------
# Base model identity
# --------------------------------------------------------------------------------------


def base_model_sha256(base_model_dir: Path) -> str:
    """Identity of a PartDiT directory: sha256 over its config and weight file hashes."""
    return base_model.model_dir_sha256(base_model_dir, BASE_MODEL_FILES, kind="PartDiT")


def check_adapter_base(adapter_dir: Path, base_model_dir: Path) -> None:
    """Raise ArtifactError unless the adapter was trained on this base model."""
    base_model.check_adapter_base(adapter_dir, base_model_dir, BASE_MODEL_FILES, kind="PartDiT")


# --------------------------------------------------------------------------------------
# Model pieces shared with the benchmark
# --------------------------------------------------------------------------------------


def add_adapter(model: torch.nn.Module, cfg: FlowDPOConfig) -> PeftModel:
    """Freeze `model` and wrap it with a LoRA or DoRA adapter on `cfg.target_modules`."""
    return attach_adapter(model, lora_config(cfg, cfg.target_modules))


def flow_errors(
    model: torch.nn.Module,
    x0: torch.Tensor,  # [B, P, T, D]
    noise: torch.Tensor,  # [B, P, T, D]
    t: torch.Tensor,  # [B]
    cond: torch.Tensor,  # [B, Nc, C]
    part_mask: torch.Tensor,  # [B, P]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample flow-matching error over real parts ([B]) and the prediction u."""
    x_t = flow_interpolate(x0, noise, t)
    u = model(x_t, t, cond, part_mask)  # [B, P, T, D]
    return masked_mse(u.float(), flow_target(x0, noise), part_mask, check_mask=False), u


def draw_timesteps_and_noise(
    cfg: FlowDPOConfig, pair_index: torch.Tensor, draw: int, shape: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One t and one noise tensor per pair, a function of (seed, pair index, draw).

    Returns t [B] and noise [B, *shape] on the CPU; `shape` is one object's [P, T, D].
    """
    ts, noises = [], []
    for i in pair_index.tolist():
        g = torch.Generator().manual_seed(derive_seed(cfg.seed, "draw", i, draw))
        ts.append(
            sample_timesteps(
                1,
                cfg.timestep_scheme,
                generator=g,
                logit_mean=cfg.logit_mean,
                logit_std=cfg.logit_std,
            )
        )
        noises.append(torch.randn(shape, generator=g))
    return torch.cat(ts).float(), torch.stack(noises)


def duplicate_for_pair(
    batch: PairTensors, t: torch.Tensor, noise: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Chosen then rejected in one batch of 2B sharing t, noise, cond and mask."""
    x0 = torch.cat([batch.x0_chosen, batch.x0_rejected])  # [2B, P, T, D]
    return (
        x0,
        torch.cat([noise, noise]),
        torch.cat([t, t]),
        torch.cat([batch.cond, batch.cond]),
        torch.cat([batch.part_mask, batch.part_mask]),
    )


# --------------------------------------------------------------------------------------
# The recipe
# --------------------------------------------------------------------------------------


class FlowDPOTrainer:
    """setup() -> train() -> save() -> cleanup(), run by `train_flow_dpo`."""

    def __init__(
        self,
        cfg: FlowDPOConfig,
        *,
        base_model_dir: Path,
        pairs: PairTensors,
        out_dir: Path,
        tracker: Tracker,
        resume: bool = True,
        base_model_ref: str | None = None,
    ) -> None:
        if len(pairs) == 0:
            raise ValueError("train_flow_dpo: the pair set is empty; nothing to train on")
        self.cfg = cfg
        self.base_model_dir = Path(base_model_dir)
        self.base_model_ref = base_model_ref or str(base_model_dir)
        self.out_dir = Path(out_dir)
        self.tracker = tracker
        self.resume = resume
        # Joins torchrun's process group when this is one of several processes.
        self.device = distributed.setup()
        self.pairs = pairs.to(self.device)
        self.micro_per_epoch = math.ceil(len(pairs) / cfg.batch_size)
        self.total_steps = cfg.max_steps or math.ceil(
            cfg.epochs * self.micro_per_epoch / cfg.grad_accum
        )
        self.step = 0
        self.seconds = 0.0
        self.last_metrics: dict[str, float] = {}
        self._perm_epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)

    # --- setup ------------------------------------------------------------------------

    def setup(self) -> None:
        cfg = self.cfg
        self.loss_fn = get_preference_loss(cfg.loss)
        self.extra_inputs = PREFERENCE_LOSS_EXTRA_INPUTS[cfg.loss]
        unsupported = [k for k in self.extra_inputs if k not in SUPPORTED_EXTRA_INPUTS]
        if unsupported:
            raise ValueError(
                f"loss {cfg.loss!r} needs input(s) {unsupported} this trainer cannot build"
            )
        if self.extra_inputs and cfg.precompute_reference:
            raise ValueError(
                f"loss {cfg.loss!r} needs the reference prediction at every step "
                f"({list(self.extra_inputs)}); set precompute_reference=false"
            )
        self.base_sha256 = base_model_sha256(self.base_model_dir)
        self.use_bf16 = cfg.bf16 and self.device.type == "cuda"
        if cfg.bf16 and not self.use_bf16:
            logger.info(
                "bf16 autocast requested but the device is %s; running in float32", self.device
            )

        base = PartDiT.from_pretrained(self.base_model_dir)
        torch.manual_seed(cfg.seed)  # the adapter's init (lora_A is kaiming-uniform)
        self.model = add_adapter(base, cfg).to(self.device)
        self.model.train()
        self.switch = AdapterSwitch(self.model)
        self.trainable = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        self.optimizer = torch.optim.AdamW(
            list(self.trainable.values()), lr=cfg.lr, weight_decay=cfg.weight_decay
        )

        if not self.resume and is_main_process():
            checkpoints.remove_checkpoints(self.out_dir)
        latest = latest_checkpoint(self.out_dir) if self.resume else None
        if latest is not None:
            self._load_checkpoint(latest)
            logger.info("resumed from %s at step %d", latest, self.step)
        self._check_ranks_agree_on_step()

        self.ref_errors: torch.Tensor | None = None
        if cfg.precompute_reference and self.step < self.total_steps:
            self.ref_errors = self._precompute_reference()
        self.tracker.log_metrics(
            {"train/trainable_params": float(sum(p.numel() for p in self.trainable.values()))},
            step=self.step,
        )

    def _check_ranks_agree_on_step(self) -> None:
        """Every rank starts from the same step, or the ranks would run different numbers
        of all-reduces. It is also the point after which rank 0 may write (and prune)
        checkpoints: every rank has read the one it resumed from."""
        steps = torch.zeros(world_size(), device=self.device)  # float32: exact below 2**24
        steps[rank()] = self.step
        distributed.sum_([steps])
        found = [int(s) for s in steps.tolist()]
        if len(set(found)) > 1:
            raise ArtifactError(
                f"{self.out_dir}: the ranks resumed from steps {found} (by rank); every rank "
                "must see the same out_dir (a filesystem shared by all of them)"
            )

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.use_bf16:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _precompute_reference(self) -> torch.Tensor:
        """Reference errors [N, R, 2] (chosen, rejected) at draws r = 0..R-1 of every pair.

        Each rank computes every N-th chunk into a zeroed table; the sum over the ranks
        adds zeros to every entry but one, so each rank ends with the whole table, exactly.
        """
        from tqdm.auto import tqdm

        cfg, n = self.cfg, len(self.pairs)
        out = torch.zeros(n, cfg.reference_draws, 2, device=self.device)
        shape = tuple(self.pairs.x0_chosen.shape[1:])
        chunks = [(s, r) for r in range(cfg.reference_draws) for s in range(0, n, cfg.batch_size)]
        mine = chunks[rank() :: world_size()]  # as distributed.shard splits a step's pairs
        with self.switch.reference():
            for start, r in tqdm(mine, desc="reference errors", disable=self._tqdm_disable):
                index = torch.arange(start, min(start + cfg.batch_size, n))
                t, noise = draw_timesteps_and_noise(cfg, index, r, shape)
                batch = self.pairs.select(self._to_device(index))
                with self._autocast():
                    err, _ = flow_errors(
                        self.model,
                        *duplicate_for_pair(batch, self._to_device(t), self._to_device(noise)),
                    )
                out[self._to_device(index), r] = torch.stack(err.chunk(2), dim=-1)
        distributed.sum_([out])
        return out

    @property
    def _tqdm_disable(self) -> bool | None:
        """tqdm's `disable`: None (off without a terminal) on rank 0, True on the others."""
        return None if is_main_process() else True

    # --- data order -------------------------------------------------------------------

    def _micro_batch(self, k: int) -> tuple[torch.Tensor, int]:
        """Pair indices of global micro-batch k and its epoch (pure function of k)."""
        epoch, j = divmod(k, self.micro_per_epoch)
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "order", epoch))
            self._perm = torch.randperm(len(self.pairs), generator=g)
            self._perm_epoch = epoch
        bs = self.cfg.batch_size
        return self._perm[j * bs : (j + 1) * bs], epoch

    # --- train ------------------------------------------------------------------------

    def _micro_step(
        self, index: torch.Tensor, epoch: int, weight: float, measure_drift: bool
    ) -> dict[str, torch.Tensor]:
        """Forward and backward of this rank's pairs `index` of one micro-batch; its loss is
        scaled by `weight` (their share of the step's pairs on all ranks). Returns its
        statistics (STEP_STATS, + drift) as detached tensors on the device, already
        weighted: `train_step` sums them over ranks and brings them to the host in one copy."""
        cfg = self.cfg
        draw = epoch % cfg.reference_draws if self.ref_errors is not None else epoch
        t, noise = draw_timesteps_and_noise(cfg, index, draw, tuple(self.pairs.x0_chosen.shape[1:]))
        on_device, t, noise = (self._to_device(x) for x in (index, t, noise))
        batch = self.pairs.select(on_device)
        inputs = duplicate_for_pair(batch, t, noise)
        # The reference first: its buffers are freed before the policy's graph is built,
        # so the two never hold memory at once.
        u_ref = None
        if self.ref_errors is None:
            with self.switch.reference(), self._autocast():
                ref_err, u_ref = flow_errors(self.model, *inputs)
            ref_chosen, ref_rejected = ref_err.chunk(2)
        else:
            ref_chosen, ref_rejected = self.ref_errors[on_device, draw].unbind(-1)
            if measure_drift:
                with self.switch.reference(), self._autocast():
                    _, u_ref = flow_errors(self.model, *inputs)
        with self._autocast():
            err, u = flow_errors(self.model, *inputs)
        policy_chosen, policy_rejected = err.chunk(2)  # [B] each

        extra = {}
        if "chosen_policy_ref_mse" in self.extra_inputs:
            b = len(index)
            extra["chosen_policy_ref_mse"] = masked_mse(
                u[:b], u_ref[:b], batch.part_mask, check_mask=False
            )
        out = self.loss_fn(
            policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=cfg.beta, **extra
        )
        loss = out.loss
        if cfg.sft_weight > 0:
            loss = loss + cfg.sft_weight * policy_chosen.mean()
        (loss * weight).backward()

        stats = {
            "loss": loss.detach(),
            "implicit_accuracy": out.accuracy,
            "reward_margin": out.reward_margin,
            "chosen_reward": out.chosen_reward.mean(),
            "rejected_reward": out.rejected_reward.mean(),
        }
        if measure_drift:
            # Mean squared gap between adapter-on and adapter-off predictions; free with a
            # live reference, one extra no-grad forward with a precomputed one.
            stats["drift"] = masked_mse(
                u.detach().float(), u_ref.float(), inputs[4], check_mask=False
            ).mean()
        return {k: weight * v.detach().float() for k, v in stats.items()}

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        """A CPU tensor on the training device; on CUDA through pinned memory without a
        host sync (the copy is ordered on the stream before the kernels that read it)."""
        if self.device.type != "cuda":
            return x
        return x.pin_memory().to(self.device, non_blocking=True)

    def _measures_drift(self, step_no: int) -> bool:
        every = self.cfg.drift_every or (
            DRIFT_EVERY_PRECOMPUTED * self.cfg.log_every
            if self.ref_errors is not None
            else self.cfg.log_every
        )
        return step_no % every == 0 or step_no == self.total_steps

    def train_step(self) -> dict[str, float]:
        """One optimizer step: its micro-batches (this rank's share of each), the sum of the
        gradients and statistics over the ranks, gradient clipping, AdamW; logs and returns
        the step's statistics. The statistics cross to the host once (`to_host`), which is
        the step's only host sync on CUDA."""
        cfg = self.cfg
        step_no = self.step + 1
        measure_drift = self._measures_drift(step_no)
        micro = [self._micro_batch(self.step * cfg.grad_accum + a) for a in range(cfg.grad_accum)]
        n_step = sum(len(index) for index, _ in micro)  # on all ranks together

        self.optimizer.zero_grad(set_to_none=True)
        keys = STEP_STATS + (("drift",) if measure_drift else ())
        sums = torch.zeros(len(keys), device=self.device)
        for index, epoch in micro:
            mine = distributed.shard(index)
            if len(mine) == 0:  # fewer pairs than ranks: nothing to forward, zeros to sum
                continue
            stats = self._micro_step(mine, epoch, len(mine) / n_step, measure_drift)
            sums += torch.stack([stats[k] for k in keys])
        distributed.sum_gradients(self.trainable.values())
        distributed.sum_([sums])
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(list(self.trainable.values()), max_norm)
        values = torch.cat([sums, grad_norm.float().reshape(1)])
        host = dict(zip((*keys, "grad_norm"), to_host(values)))
        if not math.isfinite(host["loss"]):
            raise FloatingPointError(
                f"flow-dpo loss is {host['loss']} at step {step_no}; lower lr or beta"
            )
        self.optimizer.step()
        self.step = step_no
        self.last_metrics = host
        self.tracker.log_metrics({f"train/{k}": v for k, v in host.items()}, step=self.step)
        return host

    def train(self) -> dict[str, float]:
        from tqdm.auto import tqdm

        cfg = self.cfg
        start_time = time.perf_counter()
        start_seconds = self.seconds
        bar = tqdm(
            total=self.total_steps, initial=self.step, desc="flow-dpo", disable=self._tqdm_disable
        )
        while self.step < self.total_steps:
            stats = self.train_step()
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                bar.set_postfix(loss=f"{stats['loss']:.4f}", acc=f"{stats['implicit_accuracy']:.2f}")
            self.seconds = start_seconds + time.perf_counter() - start_time
            if cfg.checkpoint_every and (
                self.step % cfg.checkpoint_every == 0 or self.step == self.total_steps
            ):
                self._save_checkpoint()
        bar.close()
        return self.metrics()

    def metrics(self) -> dict[str, float]:
        return {
            **self.last_metrics,
            "steps": float(self.step),
            "pairs": float(len(self.pairs)),
            "seconds": self.seconds,
        }

    # --- checkpoints ------------------------------------------------------------------

    def _save_checkpoint(self) -> None:
        """Rank 0 writes; the others hold the same tensors (and never read a checkpoint
        after setup, so they need not wait for it)."""
        if not is_main_process():
            return
        checkpoints.save_checkpoint(
            self.out_dir,
            self.step,
            tensors={"adapter": self.trainable},
            optimizer=self.optimizer,
            state={
                "seconds": self.seconds,
                "metrics": self.last_metrics,
                "base_model_sha256": self.base_sha256,
                "config": self.cfg.to_dict(),
            },
            keep=self.cfg.keep_checkpoints,
        )

    def _load_checkpoint(self, path: Path) -> None:
        state = checkpoints.read_checkpoint_state(path)
        if state["base_model_sha256"] != self.base_sha256:
            raise ArtifactError(
                f"{path}: checkpoint was trained on another base model than {self.base_model_dir}; "
                "pass resume=False or a fresh out_dir"
            )
        checkpoints.check_resumable(path, state["config"], self.cfg.to_dict(), RESUMABLE_FIELDS)
        checkpoints.restore_checkpoint(
            path, params={"adapter": self.trainable}, optimizer=self.optimizer
        )
        self.step = state["step"]
        self.seconds = state["seconds"]
        self.last_metrics = state["metrics"]

    # --- save / cleanup ---------------------------------------------------------------

    def save(self, metrics: dict[str, float]) -> None:
        """Write the peft adapter into out_dir, then genalign.json last (marks it complete);
        rank 0 writes, and every rank returns once it has."""
        if is_main_process():
            self._write_adapter(metrics)
        distributed.barrier()

    def _write_adapter(self, metrics: dict[str, float]) -> None:
        save_adapter_dir(self.model, self.out_dir)
        write_model_card(
            self.out_dir,
            ModelCard(
                kind=ADAPTER,
                base_model=self.base_model_ref,
                base_model_sha256=self.base_sha256,
                method=METHOD,
                loss=self.cfg.loss,
                adapter_type=self.cfg.adapter,
                metrics=metrics,
                config=self.cfg.to_dict(),
            ),
        )

    def cleanup(self) -> None:
        """Free the model and leave the process group joined in the constructor."""
        del self.model, self.optimizer
        self.ref_errors = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        distributed.teardown()


def train_flow_dpo(
    cfg: FlowDPOConfig,
    *,
    base_model_dir: Path,
    pairs: PairTensors,
    out_dir: Path,
    tracker: Tracker,
    resume: bool = True,
    base_model_ref: str | None = None,
) -> dict[str, float]:
    """Train a flow-DPO adapter on `pairs` over the PartDiT in `base_model_dir`.

    Writes the peft adapter and `genalign.json` into `out_dir` (checkpoints under
    `out_dir/checkpoints`, so `out_dir` must outlive a crash for `resume` to help) and
    returns {loss, implicit_accuracy, reward_margin, chosen_reward, rejected_reward,
    grad_norm, drift, steps, pairs, seconds} of the last step. `base_model_ref` is the
    reference recorded in genalign.json (default: the directory).

    Under torchrun every rank calls it with the same arguments and `out_dir`; rank 0
    writes it, and each rank returns only once it is complete, having joined and left
    the process group.
    """
    trainer = FlowDPOTrainer(
        cfg,
        base_model_dir=base_model_dir,
        pairs=pairs,
        out_dir=out_dir,
        tracker=tracker,
        resume=resume,
        base_model_ref=base_model_ref,
    )
    trainer.setup()
    metrics = trainer.train()
    trainer.save(metrics)
    trainer.cleanup()
    return metrics

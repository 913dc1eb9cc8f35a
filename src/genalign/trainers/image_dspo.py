"""DSPO / Diffusion-DPO of an SDXL U-Net through a DoRA (or LoRA) adapter.

    pairs = load_sdxl_pairs(["rollout/pairs_000.safetensors", ...])
    metrics = train_image_dspo(TrainImageDSPOConfig(), pairs, "models/sdxl-base", "out/adapter")

The losses are genalign's (`genalign.losses.PREFERENCE_LOSSES`): Diffusion-DPO (Wallace et
al. 2023, "Diffusion Model Alignment Using Direct Preference Optimization", eq. 14) and
the two branches of DSPO (Zhu, Xiao & Honavar, "DSPO: Direct Score Preference
Optimization for Diffusion Model Alignment", ICLR 2025; github.com/huaishengzhu/DSPO
train.py), with beta in genalign's convention (`genalign.config.image_dspo`: the
diffusers SDXL script's and DSPO's beta_dpo = 5000 is beta = 2500 here). One step, as in
diffusers' examples/research_projects/diffusion_dpo/train_diffusion_dpo_sdxl.py:

    for each pair: one integer t ~ U{0, ..., T-1} and one noise eps, shared by chosen
    and rejected; z_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps  (models/sdxl.add_noise)
    f = the U-Net's prediction in the scheduler's parameterisation (eps, or v for
        "v_prediction" models), target eps or v = sqrt(abar_t) eps - sqrt(1 - abar_t) z
    pw, pl = per-sample MSE(f_theta, target) on chosen / rejected
    rw, rl = the same with the adapter switched off (the frozen base), without gradient
    d      = per-sample MSE(f_theta, f_ref) on the chosen sample (DSPO's extra input)
    loss   = sum_i weight_i * loss_i / sum_i weight_i over the step's pairs

The conditioning is SDXL's: `prompt_embeds` (both text encoders' penultimate hidden
states concatenated, models/sdxl.encode_prompt), the second encoder's pooled embedding
and each image's six micro-conditioning numbers (models/sdxl.add_time_ids). Latents are
the VAE's latents already multiplied by the scaling factor of that VAE's config
(`models.sdxl.vae_scaling_factor`: 0.13025 for SDXL), never a constant in code such as
SD 1.x's 0.18215. Gradient accumulation, gradient-norm clipping and AdamW on the
adapter's parameters (DoRA: lora_A, lora_B and the magnitude vectors) only.

Per-pair weights. The loss functions return a batch mean, so each pair's loss comes from
its own call. dspo_sdxl switches between s^2 * d and s^2 on the mean of d over a batch (a
constant 0.1 in DSPO's train.py); here that switch is decided once per micro-batch, as
the official code does per device batch, and each pair's call then gets threshold 0
(d >= 0 always: s^2 * d) or infinity (never: s^2) so that its value is that pair's term.

Determinism. Pair order is a seeded permutation per epoch and each pair's (t, eps) a
function of (seed, pair index, epoch) (`genalign.training.seeds.derive_seed`); the
adapter's dropout draws from torch's RNG, whose state checkpoints keep. A checkpoint
(adapter, optimizer, RNG, step; safetensors and JSON, `genalign.training.checkpoints`)
therefore resumes to the same adapter as an uninterrupted run.

Layout written under `out`:

    checkpoints/step_00000500/      adapter.safetensors, optimizer.*, rng.safetensors, ...
    adapter_config.json, adapter_model.safetensors   peft (PeftModel.from_pretrained(unet, out))
    diffusers/pytorch_lora_weights.safetensors        pipe.load_lora_weights(out / "diffusers")
    genalign.json                   {base_model, base_model_sha256, method, loss, ...}

Run: `pytest tests/integration/test_image_dspo_train.py`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from genalign.artifacts import ADAPTER, ModelCard, write_model_card
from genalign.config.image_dspo import RESUMABLE_FIELDS, TrainImageDSPOConfig
from genalign.losses import (
    PREFERENCE_LOSS_EXTRA_INPUTS,
    PreferenceLoss,
    eps_target,
    get_preference_loss,
    masked_mse,
    v_target,
)
from genalign.models import sdxl
from genalign.models.sdxl_adapters import save_diffusers_lora, save_peft_adapter
from genalign.storage import ArtifactError
from genalign.tracking import NullTracker, Tracker
from genalign.training import base_model, checkpoints
from genalign.training.adapters import AdapterSwitch, attach_adapter, lora_config
from genalign.training.seeds import derive_seed

if TYPE_CHECKING:
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from diffusers.schedulers.scheduling_utils import SchedulerMixin
    from peft import PeftModel

logger = logging.getLogger(__name__)

METHOD = "image_dspo"
ARCH = "sdxl"
# The files of an SDXL pipeline directory that define what this trainer trains on.
BASE_MODEL_FILES = (
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "scheduler/scheduler_config.json",
)
DIFFUSERS_DIR = "diffusers"
# Keyword options of each loss, read from the config fields of the same name.
LOSS_OPTIONS: dict[str, tuple[str, ...]] = {
    "diffusion_dpo": (),
    "dspo_sd15": ("score_weight",),
    "dspo_sdxl": ("distance_threshold",),
}
# Extra loss inputs (PREFERENCE_LOSS_EXTRA_INPUTS) this trainer builds.
SUPPORTED_EXTRA_INPUTS = ("chosen_policy_ref_mse",)
# A step's statistics: the weighted loss, then means over the step's pairs.
STEP_STATS = (
    "loss", "implicit_accuracy", "reward_margin", "chosen_reward", "rejected_reward",
    "chosen_policy_ref_mse",
)


# --------------------------------------------------------------------------------------
# Pairs
# --------------------------------------------------------------------------------------


class SDXLPairs(NamedTuple):
    """P preference pairs as a rollout saves them (one safetensors file per shard, one
    tensor per field). Latents are scaled by the VAE config's scaling_factor."""

    latents_chosen: Tensor  # [P, 4, h, w]
    latents_rejected: Tensor  # [P, 4, h, w]
    prompt_embeds: Tensor  # [P, 77, D]  D = text_encoder + text_encoder_2 widths
    pooled: Tensor  # [P, D2]  text_encoder_2's projected pooled embedding
    time_ids_chosen: Tensor  # [P, 6]  add_time_ids of the chosen image
    time_ids_rejected: Tensor  # [P, 6]
    weight: Tensor  # [P]  per-pair loss weight, > 0


def check_sdxl_pairs(pairs: SDXLPairs, where: str = "pairs") -> None:
    """ValueError naming `where` and the field unless the shapes agree, every value is
    finite and every weight is > 0."""
    n = pairs.latents_chosen.shape[0]
    expected = {
        "latents_chosen": (4, None),
        "latents_rejected": (4, None),
        "prompt_embeds": (3, None),
        "pooled": (2, None),
        "time_ids_chosen": (2, sdxl.NUM_TIME_IDS),
        "time_ids_rejected": (2, sdxl.NUM_TIME_IDS),
        "weight": (1, None),
    }
    for name, (ndim, last) in expected.items():
        value = getattr(pairs, name)
        if value.ndim != ndim or value.shape[0] != n or (last is not None and value.shape[-1] != last):
            want = f"{ndim} dims, {n} rows" + (f", last dim {last}" if last is not None else "")
            raise ValueError(f"{where}: {name} has shape {list(value.shape)}; expected {want}")
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{where}: {name} has non-finite values")
    if n == 0:
        raise ValueError(f"{where}: no pairs")
    if pairs.latents_rejected.shape != pairs.latents_chosen.shape:
        raise ValueError(
            f"{where}: latents_rejected {list(pairs.latents_rejected.shape)} differs from "
            f"latents_chosen {list(pairs.latents_chosen.shape)}"
        )
    if not bool((pairs.weight > 0).all()):
        bad = torch.nonzero(pairs.weight <= 0).flatten().tolist()
        raise ValueError(f"{where}: weight must be > 0 (drop a pair rather than weight it 0); rows {bad[:10]}")


def load_sdxl_pairs(files: Sequence[Path | str]) -> SDXLPairs:
    """Read and concatenate pair files: each a safetensors file with one tensor per
    `SDXLPairs` field (P rows, P may differ between files), read as float32."""
    from safetensors.torch import load_file

    if not files:
        raise ValueError("load_sdxl_pairs: no files given")
    parts: list[SDXLPairs] = []
    for path in files:
        tensors = load_file(str(path))
        missing = [k for k in SDXLPairs._fields if k not in tensors]
        if missing:
            raise ArtifactError(
                f"{path}: missing tensor(s) {missing}; a pair file holds {list(SDXLPairs._fields)}"
            )
        part = SDXLPairs(*(tensors[k].float() for k in SDXLPairs._fields))
        check_sdxl_pairs(part, where=str(path))
        if parts:
            for name, first, this in zip(SDXLPairs._fields, parts[0], part):
                if first.shape[1:] != this.shape[1:]:
                    raise ArtifactError(
                        f"{path}: {name} rows have shape {list(this.shape[1:])}, but {files[0]}'s "
                        f"have {list(first.shape[1:])}"
                    )
        parts.append(part)
    return SDXLPairs(*(torch.cat(columns) for columns in zip(*parts)))


def select_pairs(pairs: SDXLPairs, index: Tensor) -> SDXLPairs:
    return SDXLPairs(*(t[index] for t in pairs))


# --------------------------------------------------------------------------------------
# Model pieces shared with the benchmark
# --------------------------------------------------------------------------------------


def check_target_modules(unet: torch.nn.Module, target_modules: Sequence[str]) -> None:
    """ValueError listing the targets that name no module of `unet` (peft matches a
    target against a module's full name or a dotted suffix of it)."""
    names = [n for n, _ in unet.named_modules()]
    missing = [t for t in target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in unet.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ValueError(
            f"target_modules {missing} match no module of the {type(unet).__name__}; "
            f"its nn.Linear modules end in {linear}"
        )


def attach_unet_adapter(unet: UNet2DConditionModel, cfg: TrainImageDSPOConfig) -> PeftModel:
    """Freeze `unet` and wrap it with a DoRA (peft `LoraConfig(use_dora=True)`) or LoRA
    adapter on `cfg.target_modules`; the layers are injected into `unet` itself. lora_A
    is drawn from torch's global RNG: seed it first."""
    check_target_modules(unet, cfg.target_modules)
    return attach_adapter(unet, lora_config(cfg, cfg.target_modules))


def draw_timesteps_and_noise(
    seed: int, pair_index: Tensor, epoch: int, num_train_timesteps: int, shape: tuple[int, ...]
) -> tuple[Tensor, Tensor]:
    """One integer t ~ U{0, ..., T-1} (long [B]) and one noise [B, *shape] per pair, a
    function of (seed, pair index, epoch); on the CPU. `shape` is one latent's [4, h, w]."""
    ts, noises = [], []
    for i in pair_index.tolist():
        g = torch.Generator().manual_seed(derive_seed(seed, "draw", i, epoch))
        ts.append(torch.randint(0, num_train_timesteps, (1,), generator=g))
        noises.append(torch.randn(shape, generator=g))
    return torch.cat(ts), torch.stack(noises)


class PairBatch(NamedTuple):
    """Chosen then rejected in one batch of 2B sharing t, noise and prompt."""

    latents: Tensor  # [2B, 4, h, w]
    noise: Tensor  # [2B, 4, h, w]
    t: Tensor  # [2B] long
    embeddings: sdxl.PromptEmbeddings  # [2B, 77, D], [2B, D2]
    time_ids: Tensor  # [2B, 6]


def duplicate_for_pair(batch: SDXLPairs, t: Tensor, noise: Tensor) -> PairBatch:
    return PairBatch(
        latents=torch.cat([batch.latents_chosen, batch.latents_rejected]),
        noise=torch.cat([noise, noise]),
        t=torch.cat([t, t]),
        embeddings=sdxl.PromptEmbeddings(
            prompt_embeds=torch.cat([batch.prompt_embeds, batch.prompt_embeds]),
            pooled=torch.cat([batch.pooled, batch.pooled]),
        ),
        time_ids=torch.cat([batch.time_ids_chosen, batch.time_ids_rejected]),
    )


def prediction_and_target(
    scheduler: SchedulerMixin, eps: Tensor, inputs: PairBatch, noisy: Tensor
) -> tuple[Tensor, Tensor]:
    """The prediction and its target in the scheduler's parameterisation.

    epsilon: (eps_hat, eps). v_prediction: v_hat = (eps_hat - sqrt(1 - abar) z_t) /
    sqrt(abar), the inverse of `models.sdxl.eps_from_v` that `predict_noise` applied,
    against v = sqrt(abar) eps - sqrt(1 - abar) z (Salimans & Ho 2022), so the errors are
    those of diffusers' scripts, which measure a v model in v.
    """
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return eps, eps_target(inputs.noise.float())
    if kind != "v_prediction":
        raise ValueError(f"unsupported prediction_type {kind!r}; supported: {list(sdxl.PREDICTION_TYPES)}")
    abar = scheduler.alphas_cumprod.to(device=eps.device, dtype=torch.float32)[inputs.t]  # [2B]
    alpha, sigma = abar.sqrt(), (1.0 - abar).sqrt()
    v_hat = (eps - sigma.view(-1, 1, 1, 1) * noisy.float()) / alpha.view(-1, 1, 1, 1)
    return v_hat, v_target(inputs.latents.float(), inputs.noise.float(), alpha, sigma)


def denoising_errors(
    unet: torch.nn.Module, scheduler: SchedulerMixin, inputs: PairBatch
) -> tuple[Tensor, Tensor]:
    """Per-sample MSE [2B] of the U-Net's prediction against its target, and the
    prediction [2B, 4, h, w] (float32), in the scheduler's parameterisation."""
    noisy = sdxl.add_noise(scheduler, inputs.latents, inputs.noise, inputs.t)
    eps = sdxl.predict_noise(unet, scheduler, noisy, inputs.t, inputs.embeddings, inputs.time_ids)
    pred, target = prediction_and_target(scheduler, eps, inputs, noisy)
    return masked_mse(pred, target), pred


def per_pair_losses(
    cfg: TrainImageDSPOConfig,
    loss_fn: PreferenceLoss,
    policy_chosen: Tensor,  # [B]
    policy_rejected: Tensor,  # [B]
    ref_chosen: Tensor,  # [B]
    ref_rejected: Tensor,  # [B]
    chosen_policy_ref_mse: Tensor,  # [B]
) -> tuple[Tensor, Tensor, Tensor]:
    """(loss [B], chosen reward [B], rejected reward [B]) of `cfg.loss` on a micro-batch,
    one loss call per pair (see the module doc for dspo_sdxl's micro-batch switch)."""
    options = {name: getattr(cfg, name) for name in LOSS_OPTIONS[cfg.loss]}
    wants_distance = "chosen_policy_ref_mse" in PREFERENCE_LOSS_EXTRA_INPUTS[cfg.loss]
    if cfg.loss == "dspo_sdxl":
        far = bool(chosen_policy_ref_mse.detach().mean() >= cfg.distance_threshold)
        options["distance_threshold"] = 0.0 if far else math.inf
    losses, chosen, rejected = [], [], []
    for i in range(policy_chosen.shape[0]):
        one = slice(i, i + 1)
        extra = {"chosen_policy_ref_mse": chosen_policy_ref_mse[one]} if wants_distance else {}
        out = loss_fn(
            policy_chosen[one], policy_rejected[one], ref_chosen[one], ref_rejected[one],
            beta=cfg.beta, **extra, **options,
        )
        losses.append(out.loss.reshape(1))
        chosen.append(out.chosen_reward)
        rejected.append(out.rejected_reward)
    return torch.cat(losses), torch.cat(chosen), torch.cat(rejected)


# --------------------------------------------------------------------------------------
# Base model identity
# --------------------------------------------------------------------------------------


def base_model_sha256(pipe_dir: Path) -> str:
    """Identity of an SDXL pipeline directory: its U-Net and scheduler files."""
    return base_model.model_dir_sha256(pipe_dir, BASE_MODEL_FILES, kind="SDXL pipeline")


def unet_state_sha256(unet: torch.nn.Module, scheduler: SchedulerMixin) -> str:
    """Identity of an in-memory U-Net and scheduler: sha256 over the tensors' names and
    bytes and the scheduler's config, for a pipeline that came with no directory."""
    h = hashlib.sha256()
    for name, tensor in unet.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(json.dumps(dict(scheduler.config), sort_keys=True, default=str).encode())
    return h.hexdigest()


def load_unet_and_scheduler(pipe_dir: Path) -> tuple[UNet2DConditionModel, SchedulerMixin]:
    """The U-Net and a DDPM scheduler over the directory's scheduler config (what the
    diffusers SDXL DPO script trains with; noising needs only its betas), local files only."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(pipe_dir, subfolder="unet", local_files_only=True)
    scheduler = DDPMScheduler.from_pretrained(pipe_dir, subfolder="scheduler", local_files_only=True)
    return unet, scheduler


# --------------------------------------------------------------------------------------
# The recipe
# --------------------------------------------------------------------------------------


class ImageDSPOTrainer:
    """setup() -> train() -> save() -> cleanup(), run by `train_image_dspo`."""

    def __init__(
        self,
        cfg: TrainImageDSPOConfig,
        pairs: SDXLPairs,
        pipe: Path | str | StableDiffusionXLPipeline,
        out: Path | str,
        tracker: Tracker | None = None,
        *,
        resume: bool = True,
        base_model_ref: str | None = None,
    ) -> None:
        check_sdxl_pairs(pairs)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if cfg.mixed_precision == "bf16" and self.device.type != "cuda":
            raise ValueError(
                f"mixed_precision: bf16 autocast needs CUDA, and this run is on {self.device.type}; "
                "expected mixed_precision: no"
            )
        self.pipe_dir = Path(pipe) if isinstance(pipe, (str, Path)) else None
        if self.pipe_dir is None and not base_model_ref:
            raise ValueError(
                "train_image_dspo: an in-memory pipeline needs base_model_ref (the reference "
                "written to genalign.json, e.g. tiny://... or hf://...)"
            )
        self.pipe = None if self.pipe_dir is not None else pipe
        self.base_model_ref = base_model_ref or str(self.pipe_dir)
        self.cfg = cfg
        self.pairs = pairs
        self.out = Path(out)
        self.tracker = tracker if tracker is not None else NullTracker()
        self.resume = resume
        self.micro_per_epoch = math.ceil(len(pairs.weight) / cfg.batch_pairs)
        self.step = 0
        self.seconds = 0.0
        self.last_metrics: dict[str, float] = {}
        self._perm_epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)

    # --- setup ------------------------------------------------------------------------

    def setup(self) -> None:
        cfg = self.cfg
        self.loss_fn = get_preference_loss(cfg.loss)
        unsupported = [k for k in PREFERENCE_LOSS_EXTRA_INPUTS[cfg.loss] if k not in SUPPORTED_EXTRA_INPUTS]
        if unsupported:
            raise ValueError(f"loss {cfg.loss!r} needs input(s) {unsupported} this trainer cannot build")
        if self.pipe_dir is not None:
            self.base_sha256 = base_model_sha256(self.pipe_dir)
            unet, self.scheduler = load_unet_and_scheduler(self.pipe_dir)
        else:
            unet, self.scheduler = self.pipe.unet, self.pipe.scheduler
            self.base_sha256 = unet_state_sha256(unet, self.scheduler)
        self._check_pairs_fit(unet)
        if cfg.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        torch.manual_seed(cfg.seed)  # the adapter's init (lora_A is kaiming-uniform)
        self.model = attach_unet_adapter(unet.to(self.device), cfg)
        self.model.train()
        # The U-Net with the adapter layers injected: what predict_noise calls.
        self.unet = self.model.get_base_model()
        self.switch = AdapterSwitch(self.model)
        self.trainable = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        self.optimizer = torch.optim.AdamW(
            list(self.trainable.values()), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        self.pairs = SDXLPairs(*(t.to(self.device) for t in self.pairs))
        if not self.resume:
            checkpoints.remove_checkpoints(self.out)
        latest = checkpoints.latest_checkpoint(self.out) if self.resume else None
        if latest is not None:
            self._load_checkpoint(latest)
            logger.info("resumed from %s at step %d", latest, self.step)
        self.tracker.log_metrics(
            {"train/trainable_params": float(sum(p.numel() for p in self.trainable.values()))},
            step=self.step,
        )

    def _check_pairs_fit(self, unet: UNet2DConditionModel) -> None:
        """The pairs' widths against the U-Net's config, before any forward."""
        config = unet.config
        if self.pairs.latents_chosen.shape[1] != config.in_channels:
            raise ValueError(
                f"pairs: latents have {self.pairs.latents_chosen.shape[1]} channels, the U-Net "
                f"takes {config.in_channels}"
            )
        if self.pairs.prompt_embeds.shape[-1] != config.cross_attention_dim:
            raise ValueError(
                f"pairs: prompt_embeds width {self.pairs.prompt_embeds.shape[-1]}, the U-Net's "
                f"cross_attention_dim is {config.cross_attention_dim}"
            )
        sdxl.check_added_conditions(unet, self.pairs.time_ids_chosen, self.pairs.pooled)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.cfg.mixed_precision == "bf16":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # --- data order -------------------------------------------------------------------

    def _micro_batch(self, k: int) -> tuple[Tensor, int]:
        """Pair indices of micro-batch k and its epoch (a pure function of k)."""
        epoch, j = divmod(k, self.micro_per_epoch)
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "order", epoch))
            self._perm = torch.randperm(len(self.pairs.weight), generator=g)
            self._perm_epoch = epoch
        bs = self.cfg.batch_pairs
        return self._perm[j * bs : (j + 1) * bs], epoch

    # --- train ------------------------------------------------------------------------

    def _micro_step(self, index: Tensor, epoch: int, step_weight: float, step_pairs: int) -> Tensor:
        """Forward and backward of pairs `index`; their loss is sum(weight * loss) /
        `step_weight` (the weights of all the step's pairs). Returns STEP_STATS' sums as a
        detached tensor: the loss weighted as above, the rest divided by `step_pairs`."""
        cfg = self.cfg
        shape = tuple(self.pairs.latents_chosen.shape[1:])
        t, noise = draw_timesteps_and_noise(
            cfg.seed, index, epoch, self.scheduler.config.num_train_timesteps, shape
        )
        on_device = index.to(self.device)
        batch = select_pairs(self.pairs, on_device)
        inputs = duplicate_for_pair(batch, t.to(self.device), noise.to(self.device))
        # The reference first: its activations are freed before the policy's graph is built.
        with self.switch.reference(), self._autocast():
            ref_err, ref_pred = denoising_errors(self.unet, self.scheduler, inputs)
        with self._autocast():
            err, pred = denoising_errors(self.unet, self.scheduler, inputs)
        b = len(index)
        policy_chosen, policy_rejected = err.chunk(2)  # [B] each
        ref_chosen, ref_rejected = ref_err.chunk(2)
        distance = masked_mse(pred[:b], ref_pred[:b])  # [B], with gradient (DSPO's d)
        losses, chosen, rejected = per_pair_losses(
            cfg, self.loss_fn, policy_chosen, policy_rejected, ref_chosen, ref_rejected, distance
        )
        loss = (batch.weight * losses).sum() / step_weight
        loss.backward()
        stats = torch.stack([
            loss.detach(),
            (chosen > rejected).float().sum() / step_pairs,
            (chosen - rejected).sum() / step_pairs,
            chosen.sum() / step_pairs,
            rejected.sum() / step_pairs,
            distance.detach().sum() / step_pairs,
        ])
        return stats

    def train_step(self) -> dict[str, float]:
        """One optimizer step over `grad_accumulation` micro-batches: gradients summed,
        clipped, AdamW; logs and returns the step's statistics and grad norm."""
        cfg = self.cfg
        step_no = self.step + 1
        micro = [self._micro_batch(self.step * cfg.grad_accumulation + a) for a in range(cfg.grad_accumulation)]
        step_pairs = sum(len(index) for index, _ in micro)
        step_weight = float(sum(self.pairs.weight[index.to(self.device)].sum() for index, _ in micro))
        self.optimizer.zero_grad(set_to_none=True)
        sums = torch.zeros(len(STEP_STATS), device=self.device)
        for index, epoch in micro:
            sums += self._micro_step(index, epoch, step_weight, step_pairs)
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(list(self.trainable.values()), max_norm)
        host = dict(zip((*STEP_STATS, "grad_norm"), torch.cat([sums, grad_norm.float().reshape(1)]).tolist()))
        if not (math.isfinite(host["loss"]) and math.isfinite(host["grad_norm"])):
            raise FloatingPointError(
                f"image-dspo: loss {host['loss']}, grad norm {host['grad_norm']} at step {step_no}; "
                "lower lr or beta"
            )
        self.optimizer.step()
        self.step = step_no
        self.last_metrics = host
        self.tracker.log_metrics({f"train/{k}": v for k, v in host.items()}, step=self.step)
        return host

    def train(self) -> dict[str, float]:
        from tqdm.auto import tqdm

        cfg = self.cfg
        start_time, start_seconds = time.perf_counter(), self.seconds
        bar = tqdm(total=cfg.steps, initial=self.step, desc="image-dspo", disable=None)
        while self.step < cfg.steps:
            stats = self.train_step()
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.4f}", acc=f"{stats['implicit_accuracy']:.2f}")
            self.seconds = start_seconds + time.perf_counter() - start_time
            if cfg.checkpoint_every and (self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps):
                self._save_checkpoint()
        bar.close()
        return self.metrics()

    def metrics(self) -> dict[str, float]:
        return {
            **self.last_metrics,
            "steps": float(self.step),
            "pairs": float(len(self.pairs.weight)),
            "seconds": self.seconds,
        }

    # --- checkpoints ------------------------------------------------------------------

    def _save_checkpoint(self) -> None:
        checkpoints.save_checkpoint(
            self.out,
            self.step,
            tensors={"adapter": self.trainable},
            optimizer=self.optimizer,
            state={
                "seconds": self.seconds,
                "metrics": self.last_metrics,
                "base_sha256": self.base_sha256,
                "config": self.cfg.to_dict(),
            },
            keep=self.cfg.keep_checkpoints,
        )

    def _load_checkpoint(self, path: Path) -> None:
        state = checkpoints.read_checkpoint_state(path)
        if state["base_sha256"] != self.base_sha256:
            raise ArtifactError(
                f"{path}: checkpoint was trained on another U-Net than {self.base_model_ref}; "
                "pass resume=False or a fresh out"
            )
        checkpoints.check_resumable(path, state["config"], self.cfg.to_dict(), RESUMABLE_FIELDS)
        checkpoints.restore_checkpoint(path, params={"adapter": self.trainable}, optimizer=self.optimizer)
        self.step = state["step"]
        self.seconds = state["seconds"]
        self.last_metrics = state["metrics"]

    # --- save / cleanup ---------------------------------------------------------------

    def save(self, metrics: dict[str, float]) -> None:
        """The peft adapter into `out`, diffusers' LoRA file into `out/diffusers`, then
        genalign.json last (it marks the directory complete). Leaves the model in eval mode."""
        self.model.eval()
        save_peft_adapter(self.model, self.out)
        save_diffusers_lora(self.model, self.out / DIFFUSERS_DIR)
        write_model_card(
            self.out,
            ModelCard(
                kind=ADAPTER,
                arch=ARCH,
                base_model=self.base_model_ref,
                base_model_sha256=self.base_sha256 if self.pipe_dir is not None else "",
                method=METHOD,
                loss=self.cfg.loss,
                adapter_type=self.cfg.adapter,
                components={"diffusers_lora": DIFFUSERS_DIR},
                metrics=metrics,
                config=self.cfg.to_dict(),
            ),
        )

    def cleanup(self) -> None:
        """Drop the trainer's references (an in-memory pipeline keeps its adapted U-Net)."""
        del self.model, self.unet, self.optimizer, self.trainable, self.switch
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def train_image_dspo(
    cfg: TrainImageDSPOConfig,
    pairs: SDXLPairs,
    pipe: Path | str | StableDiffusionXLPipeline,
    out: Path | str,
    tracker: Tracker | None = None,
    *,
    resume: bool = True,
    base_model_ref: str | None = None,
) -> dict[str, float]:
    """Train an image-DSPO adapter on `pairs` over the U-Net of `pipe` (an SDXL pipeline
    directory, or a pipeline object whose U-Net gets the adapter injected in place and is
    left in eval mode) and write it into `out` (layout in the module doc).

    Resumes from the latest checkpoint under `out/checkpoints` unless `resume=False`.
    Returns {loss, implicit_accuracy, reward_margin, chosen_reward, rejected_reward,
    chosen_policy_ref_mse, grad_norm, steps, pairs, seconds} of the last step;
    `base_model_ref` is the reference recorded in genalign.json (default: the directory;
    required with a pipeline object).
    """
    trainer = ImageDSPOTrainer(
        cfg, pairs, pipe, out, tracker, resume=resume, base_model_ref=base_model_ref
    )
    trainer.setup()
    metrics = trainer.train()
    trainer.save(metrics)
    trainer.cleanup()
    return metrics

"""Flow-matching pretraining of the part DiT from scratch (setup / train / save).

Objective (rectified flow in PartCrafter's convention, t = 1 is noise; PartCrafter's
`training_objective: "-v"`):

    x_t = (1 - t) x0 + t eps,   eps ~ N(0, I),   t ~ logit-normal(0, 1) or U(0, 1)
    L   = E || u_theta(x_t, t, c) - (x0 - eps) ||^2    over the real parts only

with the conditioning c replaced by zeros for a `cfg_dropout` share of objects, so the
same network gives the unconditional velocity for classifier-free guidance. AdamW,
linear warmup then cosine decay (`genalign.training.schedules`), gradient clipping.
PartCrafter also shuffles the parts of each object, so the part-identity embedding marks
parts apart without imposing an order.

`heldout_loss` measures the same L on objects kept out of training, at (t, eps) drawn
once from a fixed seed, so that it is one deterministic number for given weights.

    from genalign.trainers.flow_matching import pretrain
    metrics = pretrain(FlowMatchingConfig(), PartDiTConfig(cond_dim=32), latents, mask, cond, out, tracker)
    loss = heldout_loss(PartDiT.from_pretrained(out), latents, mask, cond, draws=4, seed=0)
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from torch import Tensor

from genalign.config.part_dit import FlowMatchingConfig, PartDiTConfig
from genalign.losses.diffusion_dpo import masked_mse
from genalign.losses.timesteps import flow_interpolate, flow_target, sample_timesteps
from genalign.models.part_dit import PartDiT
from genalign.tracking import Tracker
from genalign.training.schedules import warmup_cosine


def flow_matching_errors(
    model: PartDiT, x0: Tensor, eps: Tensor, t: Tensor, cond: Tensor, mask: Tensor
) -> Tensor:
    """Per-object errors `[B]` of L: || u_theta(x_t, t, c) - (x0 - eps) ||^2 averaged over the
    real parts (`masked_mse`).

    x0, eps [B, P, T, D], t [B], cond [B, Nc, C], mask [B, P] (True for real parts).
    """
    pred = model(flow_interpolate(x0, eps, t), t, cond, mask)
    return masked_mse(pred, flow_target(x0, eps), mask)


def shuffle_real_parts(
    x0: Tensor, mask: Tensor, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Permute the real parts of each object at random, keeping them in front of the padding.

    x0 [B, P, T, D], mask [B, P] -> same shapes; padded slots sort last (key +inf).
    """
    keys = torch.rand(mask.shape, generator=generator).masked_fill(~mask, math.inf)  # [B, P]
    order = keys.argsort(dim=1)
    x0 = torch.take_along_dim(x0, order[:, :, None, None], dim=1)
    return x0, torch.take_along_dim(mask, order, dim=1)


class FlowMatchingRecipe:
    """One pretraining run: `setup()`, `train(tracker)`, `save(out_dir)`."""

    def __init__(
        self,
        cfg: FlowMatchingConfig,
        model_cfg: PartDiTConfig,
        latents: Tensor,
        part_mask: Tensor,
        cond: Tensor,
    ) -> None:
        n, p, t, d = latents.shape
        expected = (model_cfg.tokens_per_part, model_cfg.token_dim)
        if (t, d) != expected or p > model_cfg.max_parts:
            raise ValueError(
                f"pretrain: latents {list(latents.shape)} do not fit the model "
                f"[N, <={model_cfg.max_parts}, {expected[0]}, {expected[1]}]"
            )
        if part_mask.shape != (n, p) or part_mask.dtype != torch.bool:
            raise ValueError(
                f"pretrain: part_mask must be bool [{n}, {p}], got {part_mask.dtype} {list(part_mask.shape)}"
            )
        if cond.ndim != 3 or cond.shape[0] != n or cond.shape[2] != model_cfg.cond_dim:
            raise ValueError(
                f"pretrain: cond must be [{n}, Nc, {model_cfg.cond_dim}], got {list(cond.shape)}"
            )
        if not bool(part_mask.any(dim=1).all()):
            raise ValueError("pretrain: every object needs at least one real part")
        counts = part_mask.sum(dim=1, keepdim=True)
        if not torch.equal(part_mask, torch.arange(p)[None, :] < counts):
            raise ValueError(
                "pretrain: part_mask must list each object's real parts first (padding last)"
            )
        if cfg.batch_size > n:
            raise ValueError(
                f"pretrain: batch_size {cfg.batch_size} exceeds the {n} training objects"
            )
        self.cfg = cfg
        self.model_cfg = model_cfg
        self.latents = latents.float()
        self.part_mask = part_mask
        self.cond = cond.float()

    def setup(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        self.model = PartDiT(self.model_cfg).train()
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: warmup_cosine(
                step, warmup=cfg.warmup_steps, total=cfg.steps, min_ratio=cfg.min_lr_ratio
            ),
        )
        # One generator for batch order, parts order, timesteps, noise and CFG dropout.
        self.generator = torch.Generator().manual_seed(cfg.seed)

    def _batches(self):
        """Indices of successive batches, epoch after epoch, in a seeded random order.

        With `bucket_by_parts`, a batch holds objects of one part count only and is later
        trimmed to that many slots: the procedural objects average about 5 of 8 parts, so
        this skips about a third of the compute. Each count's last batch may be smaller.
        """
        n, bs = self.latents.shape[0], self.cfg.batch_size
        counts = self.part_mask.sum(dim=1)  # [N]
        if self.cfg.bucket_by_parts:
            groups = [torch.nonzero(counts == k).flatten() for k in counts.unique()]
        else:
            groups = [torch.arange(n)]
        while True:
            batches = []
            for group in groups:
                perm = group[torch.randperm(len(group), generator=self.generator)]
                batches.extend(perm.split(bs))
            if not self.cfg.bucket_by_parts:
                batches = [b for b in batches if len(b) == bs]  # drop the ragged tail
            for i in torch.randperm(len(batches), generator=self.generator).tolist():
                yield batches[i]

    def step(self, idx: Tensor) -> float:
        cfg, g = self.cfg, self.generator
        x0, mask, cond = self.latents[idx], self.part_mask[idx], self.cond[idx]
        # Real parts come first (checked in __init__): drop the slots no object uses.
        p = int(mask.sum(dim=1).max())
        x0, mask = x0[:, :p], mask[:, :p]
        if cfg.shuffle_parts:
            x0, mask = shuffle_real_parts(x0, mask, g)
        b = x0.shape[0]
        t = sample_timesteps(b, cfg.timestep_scheme, generator=g)
        eps = torch.randn(x0.shape, generator=g)
        drop = torch.rand(b, generator=g) < cfg.cfg_dropout
        cond = cond.masked_fill(drop[:, None, None], 0.0)
        loss = flow_matching_errors(self.model, x0, eps, t, cond, mask).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        return loss.item()

    def train(self, tracker: Tracker) -> dict[str, float]:
        from tqdm.auto import tqdm

        cfg = self.cfg
        window: list[float] = []
        first = last = float("nan")
        start = time.perf_counter()
        batches = self._batches()
        bar = tqdm(range(cfg.steps), desc="pretrain", disable=None)
        for step in bar:
            loss = self.step(next(batches))
            if not math.isfinite(loss):
                raise FloatingPointError(f"pretrain: loss is {loss} at step {step}")
            window.append(loss)
            if len(window) == cfg.log_every or step == cfg.steps - 1:
                mean = sum(window) / len(window)
                first = mean if math.isnan(first) else first
                last = mean
                tracker.log_metrics(
                    {"pretrain/loss": mean, "pretrain/lr": self.scheduler.get_last_lr()[0]},
                    step=step + 1,
                )
                bar.set_postfix(loss=f"{mean:.4f}")
                window.clear()
        seconds = time.perf_counter() - start
        return {
            "pretrain/loss": last,
            "pretrain/loss_first": first,
            "pretrain/steps": float(cfg.steps),
            "pretrain/seconds": seconds,
            "pretrain/step_seconds": seconds / cfg.steps,
        }

    def save(self, out_dir: Path) -> Path:
        return self.model.eval().save_pretrained(out_dir)


def pretrain(
    cfg: FlowMatchingConfig,
    model_cfg: PartDiTConfig,
    latents: Tensor,
    part_mask: Tensor,
    cond: Tensor,
    out_dir: Path,
    tracker: Tracker,
) -> dict[str, float]:
    """Train a PartDiT from scratch on `latents [N,P,T,D]`, `part_mask [N,P]`, `cond [N,Nc,C]`;
    save it to `out_dir` (PartDiT.save_pretrained) and return the final metrics."""
    recipe = FlowMatchingRecipe(cfg, model_cfg, latents, part_mask, cond)
    recipe.setup()
    metrics = recipe.train(tracker)
    recipe.save(Path(out_dir))
    return metrics


@torch.no_grad()
def heldout_loss(
    model: PartDiT,
    latents: Tensor,
    part_mask: Tensor,
    cond: Tensor,
    *,
    draws: int,
    seed: int,
    timestep_scheme: str = "logit_normal",
    batch_size: int = 256,
) -> float:
    """L of `model` (in eval mode) on `latents [N,P,T,D]`, `part_mask [N,P]`, `cond [N,Nc,C]`:
    the mean of `flow_matching_errors` over `draws` (t, eps) draws per object.

    t comes from `timestep_scheme` (the training distribution) and eps from N(0, I), all
    drawn up front from one generator seeded with `seed`, draw-major ([draws * N]), so the
    number depends on the weights and the data only, not on `batch_size`, and two models
    are measured at the same draws. No conditioning dropout: this is the conditional loss.
    """
    if model.training:
        raise ValueError("heldout_loss: the model is in training mode; call model.eval() first")
    if draws < 1:
        raise ValueError(f"heldout_loss: draws must be >= 1, got {draws}")
    n = latents.shape[0]
    g = torch.Generator().manual_seed(seed)
    x0 = latents.float().repeat(draws, 1, 1, 1)  # [draws * N, P, T, D]
    mask = part_mask.repeat(draws, 1)  # [draws * N, P]
    c = cond.float().repeat(draws, 1, 1)  # [draws * N, Nc, C]
    t = sample_timesteps(draws * n, timestep_scheme, generator=g)
    eps = torch.randn(x0.shape, generator=g)
    errors = torch.cat([
        flow_matching_errors(model, x0[i : i + batch_size], eps[i : i + batch_size],
                             t[i : i + batch_size], c[i : i + batch_size], mask[i : i + batch_size])
        for i in range(0, draws * n, batch_size)
    ])  # fmt: skip
    return float(errors.double().mean())

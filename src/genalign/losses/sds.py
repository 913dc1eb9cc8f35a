"""Score Distillation Sampling (SDS): the loss that distils a frozen text-to-image
diffusion prior into a differentiable scene, here a voxel world seen through a renderer.

Poole, Jain, Barron & Mildenhall, "DreamFusion: Text-to-3D using 2D Diffusion",
arXiv:2209.14988, eq. 3. For an image x = g(theta) rendered from the scene parameters
theta, its latent z = E(x) (the VAE encoder, scaled), a timestep t, noise eps ~ N(0, I),
z_t = alpha_t * z + sigma_t * eps (alpha_t^2 = abar_t, sigma_t^2 = 1 - abar_t) and the
prior's guided noise prediction eps_hat(z_t; y, t) for the prompt y:

    grad_theta L_SDS = E_{t, eps}[ w(t) * (eps_hat(z_t; y, t) - eps) * dz/dtheta ]     (3)

DreamFusion derives (3) from the diffusion training loss by dropping the U-Net Jacobian
d eps_hat / d z_t: it is expensive to backpropagate, poorly conditioned at small noise
levels, and the paper shows the remaining term is the gradient of a weighted
probability-density-distillation loss. The U-Net therefore runs without gradient, and
all this module needs from a step is four tensors: the latents z (with gradient, from
the renderer and the VAE encoder), the guided prediction eps_hat (no gradient), the
noise eps and the per-sample weights w(t).

`sds_loss` turns (3) into a scalar that autograd can differentiate. With
g = w(t) * (eps_hat - eps) and the constant target z* = stopgrad(z - g),

    L = 1/B * sum_b 1/2 * ||z_b - z*_b||^2,      dL/dz_b = (z_b - z*_b) / B = g_b / B,

so backward delivers exactly (3) (batch-averaged) to the latents and, by the chain rule,
on through the VAE encoder and the renderer to theta; the value of L is 1/2 * ||g||^2
per sample, a magnitude worth logging but not an objective that decreases. The same
reparameterisation is threestudio's (threestudio-project/threestudio@28d9d80
`threestudio/models/guidance/stable_diffusion_guidance.py`, `StableDiffusionGuidance`,
which writes `0.5 * F.mse_loss(latents, target, reduction="sum") / batch_size`).

Timesteps are drawn from a window [t_min, t_max] of the N training timesteps that
`timestep_bounds` narrows during the run (high noise first to settle the layout, lower
noise later for detail), and `classifier_free_guidance` combines the conditional and
unconditional predictions into eps_hat. Weights, bounds and guidance are defined in
each function's docstring with the source of their defaults.

Run: `pytest tests/unit/test_sds_loss.py`.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch
from torch import Tensor


class SDSOutput(NamedTuple):
    """What `sds_loss` returns.

    loss: scalar; its gradient w.r.t. the latents is `grad` / B ("mean") or `grad`
        ("sum"), and its value is 1/2 * ||grad||^2 reduced the same way.
    grad: `[B, C, H, W]` the SDS gradient w(t) * (eps_hat - eps), detached, with nan and
        inf replaced (for logging its norm).
    """

    loss: Tensor
    grad: Tensor


# ------------------------------------------------------------------- weights w(t)
class SDSWeight(Protocol):
    """A weighting: abar_t `[B]` -> w(t) `[B]`."""

    def __call__(self, abar: Tensor) -> Tensor: ...


def dreamfusion_weight(abar: Tensor) -> Tensor:
    """DreamFusion (arXiv:2209.14988): w(t) = sigma_t^2 = 1 - abar_t."""
    return 1.0 - abar


def uniform_weight(abar: Tensor) -> Tensor:
    """A constant w(t) = 1 (threestudio's weighting_strategy "uniform")."""
    return torch.ones_like(abar)


def fantasia3d_weight(abar: Tensor) -> Tensor:
    """Fantasia3D (Chen, Chen, Jia & Jia, arXiv:2303.13873):
    w(t) = alpha_t * sigma_t^2 = sqrt(abar_t) * (1 - abar_t).

    It falls off at large t, where sigma_t^2 alone keeps rising; the authors found
    DreamFusion's weight over-saturates surface-rendered appearance (their README, Q5).
    Gorilla-Lab-SCUT/Fantasia3D@453aa09 uses it in `geometry/dmtet.py` after the coarse
    iterations and as appearance "strategy 0" in `geometry/dlmesh.py`; threestudio@28d9d80's
    weighting_strategy "fantasia3d" is the same formula.
    """
    return abar.sqrt() * (1.0 - abar)


SDS_WEIGHTS: dict[str, SDSWeight] = {
    "dreamfusion": dreamfusion_weight,
    "uniform": uniform_weight,
    "fantasia3d": fantasia3d_weight,
}


def sds_weight(kind: str, alphas_cumprod: Tensor, t: Tensor) -> Tensor:
    """Per-sample SDS weight w(t) `[B]` (float) of the schedule `alphas_cumprod` `[N]` at
    the integer timesteps `t` `[B]` (long); `kind` is a key of `SDS_WEIGHTS`.

    alphas_cumprod: abar of every training timestep, e.g. `scheduler.alphas_cumprod`
        (moved to t's device here).
    """
    if kind not in SDS_WEIGHTS:
        raise ValueError(
            f"sds_weight: unknown kind {kind!r}; valid kinds: {', '.join(SDS_WEIGHTS)}"
        )
    if alphas_cumprod.ndim != 1:
        raise ValueError(
            f"sds_weight: alphas_cumprod must be [N], got {list(alphas_cumprod.shape)}"
        )
    if t.ndim != 1 or t.dtype != torch.long:
        raise ValueError(f"sds_weight: t must be long [B], got {t.dtype} {list(t.shape)}")
    abar = alphas_cumprod.to(device=t.device, dtype=torch.float32)[t]  # [B]
    return SDS_WEIGHTS[kind](abar)


# ------------------------------------------------------------------- timesteps
# Defaults of `timestep_bounds`. DreamFusion (arXiv:2209.14988) samples
# t ~ U(0.02, 0.98), avoiding the very high and very low noise levels; threestudio's
# StableDiffusionGuidance has min_step_percent 0.02 and max_step_percent 0.98.
# ProlificDreamer (Wang et al., arXiv:2305.16213) anneals the maximum to 0.5, which
# threestudio's prolificdreamer configs write as max_step_percent [5000, 0.98, 0.5, 5001].
MIN_T = 0.02
MAX_T_START = 0.98
MAX_T_END = 0.5


def timestep_bounds(
    step: int,
    total_steps: int,
    *,
    max_start: float = MAX_T_START,
    max_end: float = MAX_T_END,
    min_t: float = MIN_T,
) -> tuple[float, float]:
    """(t_min, t_max), fractions of the training timesteps, for optimisation step `step`
    of `total_steps`.

    t_max falls linearly from `max_start` at step 0 to `max_end` at step `total_steps`:

        t_max = max_start + (max_end - max_start) * step / total_steps,   t_min = min_t.

    This is threestudio's linear schedule value [0, max_start, max_end, total_steps]
    (`threestudio/utils/misc.py::C` at 28d9d80, used for max_step_percent); ProlificDreamer's
    configs make the same change as a jump at one step instead of a ramp. High noise
    levels early fix the coarse layout; lowering the ceiling later lets the prior refine
    detail instead of repainting it.
    """
    if total_steps <= 0:
        raise ValueError(f"timestep_bounds: total_steps must be > 0, got {total_steps}")
    if not 0 <= step <= total_steps:
        raise ValueError(
            f"timestep_bounds: step must be in [0, total_steps = {total_steps}], got {step}"
        )
    if not 0.0 <= min_t <= max_end <= max_start <= 1.0:
        raise ValueError(
            "timestep_bounds: expected 0 <= min_t <= max_end <= max_start <= 1, got "
            f"min_t={min_t}, max_end={max_end}, max_start={max_start}"
        )
    frac = step / total_steps
    # This form of the interpolation returns max_start and max_end exactly at the ends.
    return min_t, max_start * (1.0 - frac) + max_end * frac


def sample_timesteps(
    generator: torch.Generator | None,
    batch: int,
    num_train_timesteps: int,
    t_min: float,
    t_max: float,
) -> Tensor:
    """Integer timesteps `[B]` (long), uniform on [round(t_min * N), round(t_max * N)]
    (both ends included) with N = `num_train_timesteps`.

    The upper end is capped at N - 1, the last training timestep, so t_max = 1 means the
    whole schedule. Drawn from `generator` (on its device) when one is given, else from
    torch's default CPU generator.
    """
    if batch < 0:
        raise ValueError(f"sample_timesteps: batch must be >= 0, got {batch}")
    if num_train_timesteps <= 0:
        raise ValueError(
            f"sample_timesteps: num_train_timesteps must be > 0, got {num_train_timesteps}"
        )
    if not 0.0 <= t_min <= t_max <= 1.0:
        raise ValueError(
            f"sample_timesteps: expected 0 <= t_min <= t_max <= 1, got t_min={t_min}, t_max={t_max}"
        )
    low = round(t_min * num_train_timesteps)
    high = min(round(t_max * num_train_timesteps), num_train_timesteps - 1)
    low = min(low, high)
    device = None if generator is None else generator.device
    return torch.randint(
        low, high + 1, (batch,), generator=generator, device=device, dtype=torch.long
    )


# ------------------------------------------------------------------- guidance
def classifier_free_guidance(eps_uncond: Tensor, eps_cond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance (Ho & Salimans, arXiv:2207.12598):

        eps_hat = eps_uncond + scale * (eps_cond - eps_uncond).

    Convention: diffusers' `guidance_scale`, so scale = 1 gives eps_cond (no guidance)
    and scale = 0 gives eps_uncond. Imagen and DreamFusion write
    eps_hat = (1 + w) * eps_cond - w * eps_uncond, i.e. w = scale - 1. SDS needs far
    larger scales than sampling: DreamFusion uses w = 100 (scale 101 here) and
    threestudio's StableDiffusionGuidance defaults to guidance_scale 100 in this
    convention, where image samplers use about 5-10.
    """
    if eps_uncond.shape != eps_cond.shape:
        raise ValueError(
            "classifier_free_guidance: eps_uncond and eps_cond shapes differ: "
            f"{list(eps_uncond.shape)} vs {list(eps_cond.shape)}"
        )
    return eps_uncond + scale * (eps_cond - eps_uncond)


# ------------------------------------------------------------------- the loss
SDS_REDUCTIONS = ("mean", "sum")


def sds_loss(
    latents: Tensor,
    noise_pred: Tensor,
    noise: Tensor,
    weight: Tensor,
    *,
    reduction: str = "mean",
) -> SDSOutput:
    """The SDS surrogate loss of eq. 3 (see the module doc for the derivation).

    latents: `[B, C, H, W]` z, with gradient (renderer -> VAE encoder -> x scaling factor).
    noise_pred: `[B, C, H, W]` eps_hat(z_t; y, t), the guided U-Net prediction. It must
        not require grad: SDS skips the U-Net Jacobian, so the U-Net runs under
        `torch.no_grad()`; a prediction that carries a graph would send the loss's
        gradient back through the U-Net instead.
    noise: `[B, C, H, W]` the eps that made z_t.
    weight: `[B]` w(t), e.g. from `sds_weight`.
    reduction: "mean" averages the per-sample losses over the batch (dL/dz = g / B, as
        threestudio), "sum" adds them (dL/dz = g).

    With g = nan_to_num(w(t) * (eps_hat - eps)) (nan -> 0, +-inf -> the largest finite
    float, as threestudio, so one bad pixel of the prior does not poison the scene) and
    z* = (z - g).detach(), the per-sample loss is 1/2 * sum over C, H, W of (z - z*)^2.
    Autograd's gradient is z - z* = z - (z - g), which is g up to the float rounding of
    z - g. g and the loss are computed in float32.
    """
    if reduction not in SDS_REDUCTIONS:
        raise ValueError(
            f"sds_loss: unknown reduction {reduction!r}; valid reductions: "
            f"{', '.join(SDS_REDUCTIONS)}"
        )
    if latents.shape != noise_pred.shape or latents.shape != noise.shape:
        raise ValueError(
            "sds_loss: latents, noise_pred and noise must have one shape, got "
            f"{list(latents.shape)}, {list(noise_pred.shape)}, {list(noise.shape)}"
        )
    if latents.ndim < 2:
        raise ValueError(f"sds_loss: expected latents [B, ...], got {list(latents.shape)}")
    if weight.shape != latents.shape[:1]:
        raise ValueError(
            f"sds_loss: weight must be [B] = [{latents.shape[0]}], got {list(weight.shape)}"
        )
    if noise_pred.requires_grad:
        raise ValueError(
            "sds_loss: noise_pred requires grad; run the U-Net under torch.no_grad() "
            "(SDS skips the U-Net Jacobian, eq. 3 of arXiv:2209.14988)"
        )
    w = weight.detach().float().view(-1, *([1] * (latents.ndim - 1)))  # [B, 1, 1, 1]
    grad = torch.nan_to_num(w * (noise_pred.float() - noise.float()))  # [B, C, H, W]
    target = (latents.float() - grad).detach()
    per_sample = 0.5 * (latents.float() - target).square().flatten(1).sum(dim=1)  # [B]
    loss = per_sample.mean() if reduction == "mean" else per_sample.sum()
    return SDSOutput(loss=loss, grad=grad)

"""Timestep samplers and forward-process targets for diffusion and flow-matching losses.

The preference losses in this package take per-sample errors; this module supplies
what those errors are measured against: a training time t, the noised input x_t and
the regression target of each prediction type.

Flow matching here follows PartCrafter's reversed convention (t = 1 is pure noise):

    x_t = (1 - t) * x0 + t * eps,        target u = x0 - eps,

so dx_t/dt = eps - x0 = -u and an Euler step from t to t - dt is x_t + dt * u.
Two other prediction types are supported for eps- and v-prediction diffusion models
(z_t = alpha_t * x0 + sigma_t * eps): the target eps, and Salimans & Ho's
v = alpha_t * eps - sigma_t * x0 ("Progressive Distillation for Fast Sampling of
Diffusion Models", ICLR 2022, the v-parameterisation).
"""

from __future__ import annotations

import torch
from torch import Tensor

TIMESTEP_SCHEMES = ("uniform", "logit_normal")


def sample_timesteps(
    n: int,
    scheme: str,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
) -> Tensor:
    """Draw `n` flow-matching times in the open interval (0, 1).

    Schemes:
      - "uniform": t ~ U(0, 1), the rectified-flow default.
      - "logit_normal": t = sigmoid(u), u ~ N(logit_mean, logit_std^2); Esser et al.
        2024, "Scaling Rectified Flow Transformers for High-Resolution Image
        Synthesis" (SD3), section 3.1. The median is sigmoid(logit_mean); SD3 uses
        (0, 1). A positive mean favours noisier times (t = 1 is noise here): DSO
        fine-tunes TRELLIS with (1, 1).

    Returns float32 `[n]` on `device`, drawn from `generator` when one is given (it
    must live on the same device). Values are clamped to [eps, 1 - eps] with eps the
    float32 machine epsilon: torch.rand can return exactly 0 and sigmoid rounds to 1
    for u > ~17, and either end makes x_t carry no signal or no noise at all.
    """
    if n < 0:
        raise ValueError(f"sample_timesteps: n must be >= 0, got {n}")
    if scheme == "uniform":
        t = torch.rand(n, generator=generator, device=device)
    elif scheme == "logit_normal":
        if not logit_std > 0:
            raise ValueError(f"sample_timesteps: logit_std must be > 0, got {logit_std}")
        u = torch.randn(n, generator=generator, device=device)
        t = torch.sigmoid(logit_mean + logit_std * u)
    else:
        raise ValueError(
            f"sample_timesteps: unknown scheme {scheme!r}; valid schemes: "
            f"{', '.join(TIMESTEP_SCHEMES)}"
        )
    eps = torch.finfo(t.dtype).eps
    return t.clamp(eps, 1.0 - eps)


def _per_sample(value: Tensor | float, like: Tensor, name: str) -> Tensor | float:
    """Reshape a per-sample `[B]` tensor to `[B, 1, ..., 1]` so it broadcasts over `like`."""
    if not isinstance(value, Tensor) or value.ndim == 0:
        return value
    if value.shape != like.shape[:1]:
        raise ValueError(
            f"{name} must have shape [B] = [{like.shape[0]}] to match a batch of shape "
            f"{tuple(like.shape)}, got {tuple(value.shape)}"
        )
    return value.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


def _check_same_shape(x0: Tensor, noise: Tensor) -> None:
    if x0.shape != noise.shape:
        raise ValueError(
            f"x0 and noise must have the same shape, got {tuple(x0.shape)} and {tuple(noise.shape)}"
        )


def flow_interpolate(x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """x_t = (1 - t) * x0 + t * noise; x0, noise `[B, ...]`, t `[B]` (or a scalar)."""
    _check_same_shape(x0, noise)
    t = _per_sample(t, x0, "t")
    return (1 - t) * x0 + t * noise


def flow_target(x0: Tensor, noise: Tensor) -> Tensor:
    """Flow-matching target u = x0 - noise (PartCrafter's reversed sign, see module doc)."""
    _check_same_shape(x0, noise)
    return x0 - noise


def eps_target(noise: Tensor) -> Tensor:
    """eps-prediction target: the noise itself (Ho et al. 2020, eq. 14)."""
    return noise


def v_target(x0: Tensor, noise: Tensor, alpha_t: Tensor | float, sigma_t: Tensor | float) -> Tensor:
    """v-prediction target v = alpha_t * noise - sigma_t * x0 (Salimans & Ho 2022).

    For z_t = alpha_t * x0 + sigma_t * noise; alpha_t and sigma_t are `[B]` tensors
    (broadcast over the trailing dims) or scalars.
    """
    _check_same_shape(x0, noise)
    alpha_t = _per_sample(alpha_t, x0, "alpha_t")
    sigma_t = _per_sample(sigma_t, x0, "sigma_t")
    return alpha_t * noise - sigma_t * x0

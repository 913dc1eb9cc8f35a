"""σReparam: spectrally normalised linear layers with a learned scale.

Zhai et al. 2023, "Stabilizing Transformer Training by Preventing Attention Entropy
Collapse" (ICML, arXiv:2303.06296), reparametrise every weight matrix as

    Ŵ = (γ / σ(W)) · W

with σ(W) the spectral norm (largest singular value) of W, estimated by power iteration
with persistent vectors u, v (one iteration per training step), and γ a learnable
scalar. Bounding ‖Ŵ‖₂ = |γ| bounds the attention logits, which prevents the collapse of the
attention entropy that precedes divergence in their experiments.

Differences from the alternatives:
- torch's `spectral_norm` divides by σ but has no learnable γ, so every layer is pinned to
  spectral norm 1;
- a conversion that builds fresh σReparam layers in place of the linear ones (the
  reference code's `convert_to_sn`) loses their weights. `SigmaReparamLinear.from_linear`
  keeps them and sets γ = σ(W), so a converted layer computes exactly what the original
  did: a pretrained backbone stays pretrained.

σ at conversion: random-init weights have σ₂/σ₁ between 0.93 and 0.998 (measured on
truncated-normal std 0.02 matrices from 64x64 to 1536x384), where power iteration from a
random start needs 200 (64x64) to over 1000 (384x384) steps for a 1e-4 relative error. `from_linear` therefore starts u, v at the top singular pair of an exact
SVD (the fixed point power iteration converges to) unless asked for a count of power
iterations. The per-step iteration then only tracks σ as W changes.

`convert_to_sigma_reparam(module)` swaps every `nn.Linear` under a module in place.
transformers' attention modules (e.g. `Dinov2Attention`'s q_proj, k_proj, v_proj, o_proj)
are plain `nn.Linear` layers called as modules, so they are converted too: σReparam reaches
the query and key projections, whose norms bound the attention logits. torch's
`nn.MultiheadAttention` cannot be converted (it keeps q/k/v in one packed `in_proj_weight`
and reads `out_proj.weight` directly), and conversion refuses it rather than leave it
silently unnormalised.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Seed of the random start vectors of the power iteration: conversion is reproducible and
# never moves the caller's global RNG.
_START_SEED = 0
# A layer whose spectral norm is below this is a zero-initialised layer: γ = σ = 0 would
# leave Ŵ = 0 with no gradient to either W or γ, a dead layer.
_MIN_SIGMA = 1e-12


class SigmaReparamLinear(nn.Module):
    """`y = x Ŵᵀ + b`, Ŵ = (γ / σ(W)) · W (Zhai et al. 2023).

    `weight` is the raw W [out, in] and `bias` the bias, as in `nn.Linear`; `gamma` is the
    learnable scalar γ; the buffers `u` [out] and `v` [in] are the power iteration's
    singular-vector estimates (saved in the state dict, no gradient). In training mode each
    forward runs one power iteration before using σ ≈ uᵀ W v; in eval mode none. σ is
    differentiated with u, v held constant (dσ/dW = u vᵀ), as in the paper and torch's
    spectral_norm.

    A module called k times per step (a refinement MLP shared across k steps) runs k power
    iterations per step; under activation checkpointing the recomputation runs one more.
    Both only make the estimate more accurate.
    """

    def __init__(
        self, weight: Tensor, bias: Tensor | None = None, *, n_power_iterations_init: int | None = None
    ) -> None:
        """Wrap `weight` [out, in] and `bias` [out] (copied); see `from_linear`."""
        super().__init__()
        if weight.ndim != 2 or (bias is not None and bias.shape != weight.shape[:1]):
            raise ValueError(
                f"SigmaReparamLinear: expected weight [out, in] and bias [out], got "
                f"{list(weight.shape)} and {None if bias is None else list(bias.shape)}"
            )
        self.out_features, self.in_features = weight.shape
        kw = {"device": weight.device, "dtype": weight.dtype}
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.gamma = nn.Parameter(torch.ones((), **kw))
        self.register_buffer("u", torch.empty(self.out_features, **kw))
        self.register_buffer("v", torch.empty(self.in_features, **kw))
        self.reset_sigma(n_power_iterations_init)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, n_power_iterations_init: int | None = None
    ) -> SigmaReparamLinear:
        """A σReparam layer computing what `linear` computes, with a copy of its weight and
        bias (their requires_grad and the training mode carried over).

        `n_power_iterations_init` None (the default): u, v start at the exact top singular
        pair (SVD), so σ matches `torch.linalg.matrix_norm(W, ord=2)` to float precision.
        An integer: that many power iterations from a seeded random start, the reference
        implementations' way (accurate only when σ₂/σ₁ is well below 1; see the module
        docstring). Either way γ = σ, so Ŵ = W at conversion.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_linear: expected an nn.Linear, got {type(linear).__name__}")
        layer = cls(linear.weight, linear.bias, n_power_iterations_init=n_power_iterations_init)
        layer.weight.requires_grad_(linear.weight.requires_grad)
        if linear.bias is not None:
            layer.bias.requires_grad_(linear.bias.requires_grad)
        return layer.train(linear.training)

    @torch.no_grad()
    def reset_sigma(self, n_power_iterations: int | None = None) -> None:
        """Re-estimate u, v for the current W (SVD, or `n_power_iterations` from a random
        start) and set γ = σ, so the layer's output is unchanged: Ŵ = W."""
        w = self.weight.detach().float()  # [out, in]; SVD and iteration in float32
        if n_power_iterations is None:
            U, _, Vh = torch.linalg.svd(w, full_matrices=False)
            u, v = U[:, 0], Vh[0]
        else:
            if n_power_iterations < 1:
                raise ValueError(
                    f"n_power_iterations_init must be >= 1 or None (exact SVD), got {n_power_iterations}"
                )
            gen = torch.Generator().manual_seed(_START_SEED)
            u = F.normalize(torch.randn(self.out_features, generator=gen), dim=0).to(w.device)
            v = F.normalize(torch.randn(self.in_features, generator=gen), dim=0).to(w.device)
            for _ in range(n_power_iterations):
                v = F.normalize(w.t() @ u, dim=0)
                u = F.normalize(w @ v, dim=0)
        self.u.copy_(u)
        self.v.copy_(v)
        sigma = self.sigma()
        if not float(sigma) > _MIN_SIGMA:
            raise ValueError(
                f"SigmaReparamLinear: the weight [{self.out_features}, {self.in_features}] has "
                f"spectral norm {float(sigma):.3g}; a zero weight cannot be reparametrised "
                "(γ = σ = 0 leaves the layer without a gradient). Initialise it small, not zero."
            )
        self.gamma.copy_(sigma)

    @torch.no_grad()
    def _power_iteration(self) -> None:
        """One step: v ← W̄ᵀu / ‖·‖, u ← W v / ‖·‖ (W detached)."""
        w = self.weight.detach()
        self.v.copy_(F.normalize(w.t() @ self.u, dim=0))
        self.u.copy_(F.normalize(w @ self.v, dim=0))

    def sigma(self) -> Tensor:
        """σ(W) ≈ uᵀ W v, a scalar differentiable in W (u, v constant)."""
        # Clones: the buffers are updated in place by the next training forward, possibly
        # before this graph's backward (a module called twice per step, gradient
        # accumulation), which autograd would reject. torch's spectral_norm does the same.
        u, v = self.u.clone(), self.v.clone()
        return torch.dot(u, torch.mv(self.weight, v))

    def effective_weight(self) -> Tensor:
        """Ŵ = (γ / σ(W)) · W  [out, in]."""
        return self.weight * (self.gamma / self.sigma())

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self._power_iteration()
        return F.linear(x, self.effective_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def convert_to_sigma_reparam(
    module: nn.Module,
    include: Callable[[str, nn.Linear], bool] | None = None,
    *,
    n_power_iterations_init: int | None = None,
) -> int:
    """Replace, in place, every `nn.Linear` under `module` (recursively) by
    `SigmaReparamLinear.from_linear`; returns the number replaced.

    `include(name, linear)`, with `name` the dotted path below `module`
    ("encoder.layer.0.attention.q_proj"), selects the layers to convert (default: all).
    Layers already converted are not `nn.Linear` and are left alone, so a second call
    returns 0. Converted layers keep their weights, so outputs are unchanged at conversion.
    """
    if isinstance(module, nn.Linear):
        raise TypeError(
            "convert_to_sigma_reparam replaces children in place; convert a bare nn.Linear "
            "with SigmaReparamLinear.from_linear"
        )
    targets: list[tuple[nn.Module, str, nn.Linear]] = []
    for parent_name, parent in module.named_modules():
        for child_name, child in parent.named_children():
            if not isinstance(child, nn.Linear):
                continue
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if include is not None and not include(name, child):
                continue
            if isinstance(parent, nn.MultiheadAttention):
                raise TypeError(
                    f"convert_to_sigma_reparam: {name} belongs to an nn.MultiheadAttention, "
                    "which reads out_proj.weight directly and packs q/k/v into in_proj_weight, "
                    "so σReparam would be silently skipped; use attention with nn.Linear "
                    "projections, or exclude it with `include`"
                )
            targets.append((parent, child_name, child))
    for parent, child_name, child in targets:
        setattr(
            parent,
            child_name,
            SigmaReparamLinear.from_linear(child, n_power_iterations_init=n_power_iterations_init),
        )
    return len(targets)

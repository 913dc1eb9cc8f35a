"""Preference losses for diffusion and flow models, as pure tensor functions.

Every loss in `PREFERENCE_LOSSES` takes the per-sample errors of the policy and the
frozen reference on the chosen and the rejected sample,

    loss_fn(policy_chosen_err, policy_rejected_err, ref_chosen_err, ref_rejected_err,
            *, beta, **extra) -> PreferenceLossOutput

with errors `[B]` from `masked_mse` and one beta convention throughout (see
`diffusion_dpo_loss`). Hyper-parameters beyond beta are keyword arguments with
documented defaults. Some losses also need tensors the four errors do not
determine; `PREFERENCE_LOSS_EXTRA_INPUTS` names them per loss, so a trainer computes
only what the chosen loss needs:

    chosen_policy_ref_mse = masked_mse(policy_pred_chosen, ref_pred_chosen, mask)  # [B]

Papers, equations and files: docs/methods.md.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from genalign.losses.diffusion_dpo import PreferenceLossOutput, diffusion_dpo_loss, masked_mse
from genalign.losses.dro import dro_linear_loss, dro_loss
from genalign.losses.dspo import dspo_sd15_loss, dspo_sdxl_loss
from genalign.losses.timesteps import (
    TIMESTEP_SCHEMES,
    eps_target,
    flow_interpolate,
    flow_target,
    sample_timesteps,
    v_target,
)


class PreferenceLoss(Protocol):
    """The call signature every entry of `PREFERENCE_LOSSES` has."""

    def __call__(
        self,
        policy_chosen_err: Tensor,
        policy_rejected_err: Tensor,
        ref_chosen_err: Tensor,
        ref_rejected_err: Tensor,
        *,
        beta: float,
        **extra: Tensor | float | None,
    ) -> PreferenceLossOutput: ...


PREFERENCE_LOSSES: dict[str, PreferenceLoss] = {
    "diffusion_dpo": diffusion_dpo_loss,
    "dspo_sd15": dspo_sd15_loss,
    "dspo_sdxl": dspo_sdxl_loss,
    "dro": dro_loss,
    "dro_linear": dro_linear_loss,
}

# Keyword tensors each loss needs besides the four errors and beta.
PREFERENCE_LOSS_EXTRA_INPUTS: dict[str, tuple[str, ...]] = {
    "diffusion_dpo": (),
    "dspo_sd15": ("chosen_policy_ref_mse",),
    "dspo_sdxl": ("chosen_policy_ref_mse",),
    "dro": (),
    "dro_linear": (),
}


def get_preference_loss(name: str) -> PreferenceLoss:
    """The loss function registered under `name`; ValueError listing the valid names."""
    if name not in PREFERENCE_LOSSES:
        raise ValueError(
            f"unknown preference loss {name!r}; valid names: {', '.join(PREFERENCE_LOSSES)}"
        )
    return PREFERENCE_LOSSES[name]


__all__ = [
    "PREFERENCE_LOSSES",
    "PREFERENCE_LOSS_EXTRA_INPUTS",
    "TIMESTEP_SCHEMES",
    "PreferenceLoss",
    "PreferenceLossOutput",
    "diffusion_dpo_loss",
    "dro_linear_loss",
    "dro_loss",
    "dspo_sd15_loss",
    "dspo_sdxl_loss",
    "eps_target",
    "flow_interpolate",
    "flow_target",
    "get_preference_loss",
    "masked_mse",
    "sample_timesteps",
    "v_target",
]

"""Diffusion-DPO (Wallace et al. 2023) on per-sample denoising errors, plus the shared
output type and error helper of every preference loss in this package.

The loss works on errors, not predictions: the caller runs the policy and the frozen
reference on the same (x0, noise, t) for the chosen and the rejected sample and
reduces each prediction to a per-sample mean squared error with `masked_mse`. The
prediction type only changes the target those errors are measured against
(`genalign.losses.timesteps`):

    eps-prediction   target = eps
    v-prediction     target = alpha_t * eps - sigma_t * x0
    flow matching    target = x0 - eps   (PartCrafter's reversed flow; DSO uses
                                           eps - x0 for TRELLIS, same squared error)

For flow matching the per-time weight of the ELBO differs from the eps case, but as
in the Diffusion-DPO paper that weight is folded into beta (DSO does the same for its
rectified-flow TRELLIS), so one function serves all three.

Run: `pytest tests/unit/test_losses.py`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class PreferenceLossOutput(NamedTuple):
    """What every preference loss returns.

    loss: scalar, the batch mean of the per-pair loss (carries the gradient).
    chosen_reward, rejected_reward: `[B]` implicit rewards, detached,
        r = -beta * (policy_err - ref_err): a policy that denoises a sample better
        than the reference has a positive reward for it.
    accuracy: scalar, share of pairs with chosen_reward > rejected_reward.
    reward_margin: scalar, mean of chosen_reward - rejected_reward.
    """

    loss: Tensor
    chosen_reward: Tensor
    rejected_reward: Tensor
    accuracy: Tensor
    reward_margin: Tensor


def masked_mse(
    pred: Tensor, target: Tensor, mask: Tensor | None = None, *, check_mask: bool = True
) -> Tensor:
    """Per-sample mean squared error `[B]` over all trailing dims, in float32.

    pred, target: `[B, P, ...]` (e.g. `[B, P, T, D]` part latents).
    mask: optional bool `[B, P]`, True for real parts. Padded parts count in neither
        the numerator nor the number of elements, so a sample's error does not depend
        on how much padding its batch needed; values in padded slots (even inf or nan)
        do not leak into the result. Every sample must keep at least one real part.
    check_mask: raise for a sample with no real part. The check reads the mask on the
        host (a device sync on CUDA); a trainer whose masks were checked once when its
        data was loaded passes False in its step.

    The squared error is taken in float32 whatever the input dtype: the preference
    losses use differences of these errors, which bf16 rounding would swamp.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"masked_mse: pred and target shapes differ: {tuple(pred.shape)} vs "
            f"{tuple(target.shape)}"
        )
    if pred.ndim < 2:
        raise ValueError(f"masked_mse: expected [B, ...] with ndim >= 2, got {tuple(pred.shape)}")
    diff = pred.float() - target.float()
    if mask is None:
        return diff.square().flatten(1).mean(dim=1)
    if mask.dtype != torch.bool or mask.shape != pred.shape[:2]:
        raise ValueError(
            f"masked_mse: mask must be bool [B, P] = {list(pred.shape[:2])}, got "
            f"{mask.dtype} {list(mask.shape)}"
        )
    real_parts = mask.sum(dim=1)  # [B]
    if check_mask and bool((real_parts == 0).any()):
        empty = torch.nonzero(real_parts == 0).flatten().tolist()
        raise ValueError(f"masked_mse: samples {empty} have no real part in mask")
    # Zero the padded slots before squaring, not after: masking the square would still
    # send inf * 0 = nan back through the padded predictions in the backward pass.
    padded = ~mask.view(*mask.shape, *([1] * (pred.ndim - 2)))  # [B, P, 1, ...]
    sq = diff.masked_fill(padded, 0.0).square()
    elements_per_part = math.prod(pred.shape[2:])
    return sq.flatten(1).sum(dim=1) / (real_parts * elements_per_part)


def check_errors(
    policy_chosen_err: Tensor,
    policy_rejected_err: Tensor,
    ref_chosen_err: Tensor,
    ref_rejected_err: Tensor,
    beta: float,
    loss_name: str,
) -> None:
    """Shared argument checks: four `[B]` errors of one shape and a positive finite beta."""
    shapes = {
        "policy_chosen_err": policy_chosen_err.shape,
        "policy_rejected_err": policy_rejected_err.shape,
        "ref_chosen_err": ref_chosen_err.shape,
        "ref_rejected_err": ref_rejected_err.shape,
    }
    if len(set(shapes.values())) != 1 or policy_chosen_err.ndim != 1:
        listed = ", ".join(f"{k} {list(v)}" for k, v in shapes.items())
        raise ValueError(
            f"{loss_name}: expected four per-sample errors of one shape [B]; got {listed}"
        )
    if not (beta > 0 and beta < float("inf")):
        raise ValueError(f"{loss_name}: beta must be positive and finite, got {beta}")


def implicit_rewards(
    policy_chosen_err: Tensor,
    policy_rejected_err: Tensor,
    ref_chosen_err: Tensor,
    ref_rejected_err: Tensor,
    *,
    beta: float,
) -> tuple[Tensor, Tensor]:
    """(chosen, rejected) implicit rewards -beta * (policy_err - ref_err), each `[B]`.

    These carry the gradient (to the policy errors only: the reference is a constant
    of the objective and is detached here). `summarise` detaches them for logging.
    """
    chosen = -beta * (policy_chosen_err - ref_chosen_err.detach())
    rejected = -beta * (policy_rejected_err - ref_rejected_err.detach())
    return chosen, rejected


def summarise(
    per_pair_loss: Tensor, chosen_reward: Tensor, rejected_reward: Tensor
) -> PreferenceLossOutput:
    """Batch-mean loss plus detached reward statistics."""
    chosen_reward = chosen_reward.detach()
    rejected_reward = rejected_reward.detach()
    return PreferenceLossOutput(
        loss=per_pair_loss.mean(),
        chosen_reward=chosen_reward,
        rejected_reward=rejected_reward,
        accuracy=(chosen_reward > rejected_reward).float().mean(),
        reward_margin=(chosen_reward - rejected_reward).mean(),
    )


def diffusion_dpo_loss(
    policy_chosen_err: Tensor,
    policy_rejected_err: Tensor,
    ref_chosen_err: Tensor,
    ref_rejected_err: Tensor,
    *,
    beta: float,
) -> PreferenceLossOutput:
    """Diffusion-DPO, Wallace et al. 2023, "Diffusion Model Alignment Using Direct
    Preference Optimization", eq. 14.

    All four errors are per-sample mean squared errors `[B]` of the policy and the
    frozen reference on the chosen (w) and rejected (l) sample, at one shared t and
    noise per pair. With pw, pl, rw, rl for them:

        loss = -log sigmoid(-beta * ((pw - rw) - (pl - rl)))          (mean over B)

    The paper writes -log sigmoid(-beta * T * omega(lambda_t) * (...)) with squared L2
    norms (sums over the D elements of a sample). Here the errors are means, and
    T * omega(lambda_t) * D is folded into beta, so

        beta (here) = beta_paper * T * omega(lambda_t) * D.

    Other implementations differ by a factor of 0.5:
      - the Salesforce research script (SalesforceAIResearch/DiffusionDPO, train.py)
        computes -logsigmoid(-0.5 * beta_dpo * (...)), so its beta_dpo = 2 * beta here;
        the DSO code (RuiningLi/dso, finetune.py) and the DSPO code use the same 0.5
        form, so their beta = 2 * beta here too (DSO's 500 is 250 here);
      - the diffusers port (examples/research_projects/diffusion_dpo) differs between
        its two scripts: train_diffusion_dpo.py (SD 1.5) computes
        -logsigmoid(beta_dpo * (ref_diff - model_diff)), so its beta_dpo = beta here;
        train_diffusion_dpo_sdxl.py computes -logsigmoid(-0.5 * beta_dpo * (...)), so its
        beta_dpo = 2 * beta here (its default 5000 is 2500 here;
        tests/unit/test_image_dspo_beta.py).

    Implicit rewards are r = -beta * (policy_err - ref_err) (reported detached); the
    loss is -log sigmoid(r_w - r_l). Gradients reach the policy errors only: the
    reference errors are detached. The result is bounded below by 0 and its gradient
    vanishes as the margin r_w - r_l grows.
    """
    check_errors(
        policy_chosen_err,
        policy_rejected_err,
        ref_chosen_err,
        ref_rejected_err,
        beta,
        "diffusion_dpo_loss",
    )
    chosen_reward, rejected_reward = implicit_rewards(
        policy_chosen_err, policy_rejected_err, ref_chosen_err, ref_rejected_err, beta=beta
    )
    per_pair = -F.logsigmoid(chosen_reward - rejected_reward)  # [B]
    return summarise(per_pair, chosen_reward, rejected_reward)

"""DSPO, Zhu, Xiao & Honavar, "DSPO: Direct Score Preference Optimization for
Diffusion Model Alignment", ICLR 2025 (openreview.net/forum?id=xyfb9HHvMe).

DSPO replaces Diffusion-DPO's classification loss by score matching: the policy is
regressed, on the preferred sample, towards a target score that is moved away from
the reference by an amount that grows while the pair is still mis-ranked. The
official code (github.com/huaishengzhu/DSPO, train.py) has two branches, selected
by its `--sdxl` flag and launched by `launchers/sd15.sh` and `launchers/sdxl.sh`;
they are named here as there, `sd15` and `sdxl`. (The AIDC-AI/Diffusion-SDPO code
reproduces both unchanged.) Notation, all on one shared (t, noise) per pair:

    pw, pl, rw, rl   per-sample MSEs of policy / reference on chosen / rejected  [B]
    z = -beta * ((pw - rw) - (pl - rl))   the Diffusion-DPO logit r_w - r_l, with
                                          beta as in `diffusion_dpo_loss` (the
                                          official code's beta_dpo = 2 * beta)
    s = 1 - sigmoid(z) = sigmoid(-z)      in (0, 1): near 1 while the pair is ranked
                                          wrongly, -> 0 as the margin grows
    a = f_theta(x_t^w) - target_w         policy residual on the chosen sample
    b = f_theta(x_t^w) - f_ref(x_t^w)     policy - reference on the chosen sample
    d = mean(b^2)                         the extra input `chosen_policy_ref_mse`

sd15 branch:  loss = mean over elements of (a - lambda * s * b)^2,
              lambda = `score_weight` (the official code reuses beta_dpo = 2 * beta).
    Score matching on the chosen sample towards a target pushed away from the
    reference: for small lambda * s the minimiser is about
    target_w + lambda * s * (target_w - f_ref(x_t^w)).

sdxl branch:  loss = s^2 * d   if the batch mean of d >= `distance_threshold` (0.1),
              loss = s^2       otherwise (e.g. at the start, where policy = reference).
    No denoising term: a bounded squared-sigmoid ranking loss that, once the policy
    has moved from the reference, is weighted by how far it moved on the chosen sample.

Both branches need d, which the four errors do not determine, so they take it as a
keyword argument (compute it as masked_mse(policy_pred_chosen, ref_pred_chosen, mask)
and keep its gradient). The sd15 squared norm then follows from scalars alone, with
no need to pass prediction tensors: per element a - b = f_ref - target_w, so
mean((a - b)^2) = rw and mean(a * b) = (pw + d - rw) / 2, hence

    mean((a - c * b)^2) = pw - c * (pw + d - rw) + c^2 * d,     c = lambda * s.

This holds for masked means too, as long as pw, rw and d use the same mask.
Gradients flow through pw, pl, d and s (the official code does not detach s); the
reference errors are constants. Implicit rewards, accuracy and margin are those of
Diffusion-DPO, r = -beta * (policy_err - ref_err).
"""

from __future__ import annotations

import torch
from torch import Tensor

from genalign.losses.diffusion_dpo import (
    PreferenceLossOutput,
    check_errors,
    implicit_rewards,
    summarise,
)

# Threshold of the sdxl branch's switch, a constant in the official train.py.
SDXL_DISTANCE_THRESHOLD = 0.1


def _check_distance(
    chosen_policy_ref_mse: Tensor, policy_chosen_err: Tensor, loss_name: str
) -> None:
    if chosen_policy_ref_mse.shape != policy_chosen_err.shape:
        raise ValueError(
            f"{loss_name}: chosen_policy_ref_mse must be per-sample [B] = "
            f"{list(policy_chosen_err.shape)}, got {list(chosen_policy_ref_mse.shape)}"
        )


def dspo_sd15_loss(
    policy_chosen_err: Tensor,
    policy_rejected_err: Tensor,
    ref_chosen_err: Tensor,
    ref_rejected_err: Tensor,
    *,
    beta: float,
    chosen_policy_ref_mse: Tensor,
    score_weight: float | None = None,
) -> PreferenceLossOutput:
    """DSPO, sd15 branch (score matching on the chosen sample; see the module doc).

    chosen_policy_ref_mse: `[B]` mean squared distance between the policy's and the
        reference's predictions on the chosen sample (with gradient).
    score_weight: lambda; None means 2 * beta, the official code's coupling (it
        multiplies by its beta_dpo, which is 2 * beta here). Its SD1.5 launcher uses
        beta_dpo = 0.001, i.e. beta = 0.0005 and lambda = 0.001.
    """
    name = "dspo_sd15_loss"
    check_errors(
        policy_chosen_err, policy_rejected_err, ref_chosen_err, ref_rejected_err, beta, name
    )
    _check_distance(chosen_policy_ref_mse, policy_chosen_err, name)
    lam = 2.0 * beta if score_weight is None else score_weight
    if not lam >= 0:
        raise ValueError(f"{name}: score_weight must be >= 0, got {score_weight}")
    chosen_reward, rejected_reward = implicit_rewards(
        policy_chosen_err, policy_rejected_err, ref_chosen_err, ref_rejected_err, beta=beta
    )
    c = lam * torch.sigmoid(rejected_reward - chosen_reward)  # lambda * s, [B]
    pw, d, rw = policy_chosen_err, chosen_policy_ref_mse, ref_chosen_err.detach()
    # mean((a - c b)^2) by the identity in the module doc; it is a squared norm, so
    # clamp the few-ulp negatives that cancellation can give near the minimum.
    per_pair = (pw - c * (pw + d - rw) + c.square() * d).clamp_min(0.0)
    return summarise(per_pair, chosen_reward, rejected_reward)


def dspo_sdxl_loss(
    policy_chosen_err: Tensor,
    policy_rejected_err: Tensor,
    ref_chosen_err: Tensor,
    ref_rejected_err: Tensor,
    *,
    beta: float,
    chosen_policy_ref_mse: Tensor,
    distance_threshold: float = SDXL_DISTANCE_THRESHOLD,
) -> PreferenceLossOutput:
    """DSPO, sdxl branch (s^2-weighted policy-reference distance; see the module doc).

    chosen_policy_ref_mse: `[B]` as in `dspo_sd15_loss`.
    distance_threshold: batch-mean distance below which the loss is s^2 alone
        (0.1 in the official code). Its SDXL launcher uses beta_dpo = 5000, i.e.
        beta = 2500 here.
    """
    name = "dspo_sdxl_loss"
    check_errors(
        policy_chosen_err, policy_rejected_err, ref_chosen_err, ref_rejected_err, beta, name
    )
    _check_distance(chosen_policy_ref_mse, policy_chosen_err, name)
    if not distance_threshold >= 0:
        raise ValueError(f"{name}: distance_threshold must be >= 0, got {distance_threshold}")
    chosen_reward, rejected_reward = implicit_rewards(
        policy_chosen_err, policy_rejected_err, ref_chosen_err, ref_rejected_err, beta=beta
    )
    s_sq = torch.sigmoid(rejected_reward - chosen_reward).square()  # s^2, [B]
    # One switch for the whole batch, on the batch mean, as in the official code.
    # torch.where rather than a Python `if`: the same value and gradient, no device sync.
    far = chosen_policy_ref_mse.mean() >= distance_threshold
    per_pair = torch.where(far, s_sq * chosen_policy_ref_mse, s_sq)
    return summarise(per_pair, chosen_reward, rejected_reward)

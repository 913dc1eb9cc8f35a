"""Direct Reward Optimization (DRO) as introduced for diffusion models by DSO: Li, Zheng,
Rupprecht & Vedaldi, "DSO: Aligning 3D Generators with Simulation Feedback for
Physical Soundness", ICCV 2025 (arXiv:2503.22677), section 3.2.

DSO labels each generated sample with a binary outcome o in {0, 1} (stable or not)
and, starting from max E[o] - beta * KL(p_theta || p_ref), publishes the linear
objective

    L_DRO = -T * E[ w(t) * (1 - 2 * o(x0)) * ||eps - eps_theta(x_t, t)||^2 ]

i.e. lower the denoising error of good samples and raise it on bad ones, with no
reference model and no pairing. Its code (github.com/RuiningLi/dso, finetune.py,
`forward_dro_loss`) trains on pairs as mean(err_chosen - err_rejected). That
objective is unbounded below: nothing stops the rejected error from growing without
limit (DSO's released DRO checkpoint is a LoRA after 4,000 steps). It is
`dro_linear_loss` here.

`dro_loss` is the bounded form this package uses by default. With the implicit
reward r = -beta * (policy_err - ref_err) and the binary label as a logistic target,
each sample contributes -log sigmoid(r) if it is good and -log sigmoid(-r) if it is
bad; for a (chosen, rejected) pair

    loss = -log sigmoid(r_w) - log sigmoid(-r_l) = softplus(-r_w) + softplus(r_l) >= 0,

whose gradient vanishes as r_w -> +inf and r_l -> -inf. Unlike Diffusion-DPO it
scores each sample against the reference on its own rather than the difference of
the two, so it also applies to unpaired labelled samples. Expanding it to first
order at the reference (r = 0):

    loss = 2 log 2 - r_w / 2 + r_l / 2 + O(r^2)
         = 2 log 2 + (beta / 2) * ((pw - rw) - (pl - rl)) + O(r^2),

which is DSO's L_DRO up to a constant (the reference errors have no gradient): DSO's
code is this linearisation at beta = 2. So the two share their first step from the
reference and differ in that the bounded form stops pushing a sample once it is
far on the right side.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from genalign.losses.diffusion_dpo import (
    PreferenceLossOutput,
    check_errors,
    implicit_rewards,
    summarise,
)


def dro_loss(
    policy_chosen_err: Tensor,
    policy_rejected_err: Tensor,
    ref_chosen_err: Tensor,
    ref_rejected_err: Tensor,
    *,
    beta: float,
) -> PreferenceLossOutput:
    """Bounded DRO: softplus(-r_w) + softplus(r_l), r = -beta * (policy_err - ref_err).

    Errors are per-sample MSEs `[B]` as in `diffusion_dpo_loss`, with the same beta
    convention (the per-time ELBO weight folded in). The per-pair loss lies in
    [0, inf) and is 2 log 2 where the policy equals the reference. Gradients reach
    the policy errors only.
    """
    check_errors(
        policy_chosen_err, policy_rejected_err, ref_chosen_err, ref_rejected_err, beta, "dro_loss"
    )
    chosen_reward, rejected_reward = implicit_rewards(
        policy_chosen_err, policy_rejected_err, ref_chosen_err, ref_rejected_err, beta=beta
    )
    per_pair = F.softplus(-chosen_reward) + F.softplus(rejected_reward)  # [B]
    return summarise(per_pair, chosen_reward, rejected_reward)


def dro_linear_loss(
    policy_chosen_err: Tensor,
    policy_rejected_err: Tensor,
    ref_chosen_err: Tensor,
    ref_rejected_err: Tensor,
    *,
    beta: float,
) -> PreferenceLossOutput:
    """DSO's published DRO on pairs: (beta / 2) * ((pw - rw) - (pl - rl)). UNBOUNDED.

    The gradient is (beta / 2) * (grad pw - grad pl), the same at every margin; DSO's
    code is beta = 2 (it has no beta: mean(err_w - err_l)). The reference errors only
    shift the value (0 where the policy equals the reference) and get no gradient;
    the loss goes to -inf as the rejected error grows.
    """
    check_errors(
        policy_chosen_err,
        policy_rejected_err,
        ref_chosen_err,
        ref_rejected_err,
        beta,
        "dro_linear_loss",
    )
    chosen_reward, rejected_reward = implicit_rewards(
        policy_chosen_err, policy_rejected_err, ref_chosen_err, ref_rejected_err, beta=beta
    )
    per_pair = 0.5 * (rejected_reward - chosen_reward)  # = (beta/2)((pw - rw) - (pl - rl))
    return summarise(per_pair, chosen_reward, rejected_reward)

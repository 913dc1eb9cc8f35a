"""Preference losses, masked errors and timestep samplers (`genalign.losses`).

Expected values are worked out by hand in the docstrings. The two pairs used
throughout, with beta = 2 and r = -beta * (policy_err - ref_err):

    pair   pw    pl    rw    rl    r_w = -2(pw - rw)   r_l = -2(pl - rl)   z = r_w - r_l
     A     0.5   0.7   0.6   0.6        +0.2                -0.2             +0.4
     B     0.8   0.4   0.6   0.6        -0.4                +0.4             -0.8

e^-0.4 = 0.670320, e^0.4 = 1.491825, e^-0.2 = 0.818731, e^0.8 = 2.225541.
"""

from __future__ import annotations

import math

import pytest
import torch

from genalign.losses import (
    PREFERENCE_LOSS_EXTRA_INPUTS,
    PREFERENCE_LOSSES,
    TIMESTEP_SCHEMES,
    diffusion_dpo_loss,
    dro_linear_loss,
    dro_loss,
    dspo_sd15_loss,
    dspo_sdxl_loss,
    eps_target,
    flow_interpolate,
    flow_target,
    get_preference_loss,
    masked_mse,
    sample_timesteps,
    v_target,
)

BETA = 2.0


def _errs(*pairs: tuple[float, float, float, float], grad: bool = False) -> list[torch.Tensor]:
    """(pw, pl, rw, rl) rows -> four [B] tensors."""
    cols = list(zip(*pairs))
    return [torch.tensor(c, dtype=torch.float32, requires_grad=grad) for c in cols]


PAIR_A = (0.5, 0.7, 0.6, 0.6)
PAIR_B = (0.8, 0.4, 0.6, 0.6)


def _extra(
    name: str, batch: int, value: float = 0.2, grad: bool = False
) -> dict[str, torch.Tensor]:
    return {
        key: torch.full((batch,), value, requires_grad=grad)
        for key in PREFERENCE_LOSS_EXTRA_INPUTS[name]
    }


# --------------------------------------------------------------------------- masked_mse


def test_masked_mse_without_mask_is_per_sample_mean():
    """pred - target = [[1, 2], [3, 4]] and [[0, 0], [0, 2]] over [B=2, P=2, D=1]:
    sample 0 (1 + 4 + 9 + 16) / 4 = 7.5, sample 1 (0 + 0 + 0 + 4) / 4 = 1.0."""
    pred = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 2.0]]])
    out = masked_mse(pred, torch.zeros_like(pred))
    torch.testing.assert_close(out, torch.tensor([7.5, 1.0]))


def test_masked_mse_excludes_padded_parts_from_sum_and_count():
    """[B=2, P=3, T=1, D=2]; sample 0 keeps parts 0, 1, sample 1 keeps part 0.
    Squared errors per part: sample 0 -> (1+1), (4+4) -> 10 over 4 elements = 2.5;
    sample 1 -> (9+0) over 2 elements = 4.5. Padded slots hold inf / nan and must
    change neither the value nor give nan gradients."""
    pred = torch.tensor(
        [
            [[[1.0, 1.0]], [[2.0, 2.0]], [[float("inf"), 5.0]]],
            [[[3.0, 0.0]], [[float("nan"), 7.0]], [[8.0, 9.0]]],
        ],
        requires_grad=True,
    )
    mask = torch.tensor([[True, True, False], [True, False, False]])
    out = masked_mse(pred, torch.zeros(2, 3, 1, 2), mask)
    torch.testing.assert_close(out, torch.tensor([2.5, 4.5]))
    out.sum().backward()
    assert torch.isfinite(pred.grad).all()
    assert (pred.grad[~mask] == 0).all()
    # d/dpred of sum(pred^2) / n = 2 pred / n on real slots: 2 * 1 / 4 = 0.5.
    assert pred.grad[0, 0, 0, 0].item() == pytest.approx(0.5)


def test_masked_mse_same_as_unpadded_error():
    """Padding a sample with extra masked parts leaves its error unchanged."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 4, 4, generator=g)
    y = torch.randn(1, 2, 4, 4, generator=g)
    padded_x = torch.cat([x, torch.randn(1, 6, 4, 4, generator=g)], dim=1)
    padded_y = torch.cat([y, torch.randn(1, 6, 4, 4, generator=g)], dim=1)
    mask = torch.tensor([[True, True] + [False] * 6])
    torch.testing.assert_close(masked_mse(padded_x, padded_y, mask), masked_mse(x, y))


def test_masked_mse_bf16_input_gives_float32():
    pred = torch.ones(2, 3, 4, dtype=torch.bfloat16)
    assert masked_mse(pred, torch.zeros_like(pred)).dtype == torch.float32


def test_masked_mse_rejects_bad_inputs():
    x = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match="shapes differ"):
        masked_mse(x, torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match="mask must be bool"):
        masked_mse(x, x, torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"samples \[1\] have no real part"):
        masked_mse(x, x, torch.tensor([[True, False, False], [False, False, False]]))


# --------------------------------------------------------------------------- timesteps


@pytest.mark.parametrize("scheme", TIMESTEP_SCHEMES)
def test_sample_timesteps_in_open_unit_interval(scheme):
    t = sample_timesteps(10_000, scheme, generator=torch.Generator().manual_seed(0))
    assert t.shape == (10_000,) and t.dtype == torch.float32
    assert bool((t > 0).all()) and bool((t < 1).all())


def test_sample_timesteps_extreme_logit_normal_stays_open():
    """mean 40 puts sigmoid at 1.0 in float32 without the clamp."""
    t = sample_timesteps(
        100, "logit_normal", logit_mean=40.0, generator=torch.Generator().manual_seed(0)
    )
    assert bool((t < 1).all())


@pytest.mark.parametrize("scheme", TIMESTEP_SCHEMES)
def test_sample_timesteps_deterministic_with_seeded_generator(scheme):
    a = sample_timesteps(64, scheme, generator=torch.Generator().manual_seed(7))
    b = sample_timesteps(64, scheme, generator=torch.Generator().manual_seed(7))
    c = sample_timesteps(64, scheme, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)


def test_logit_normal_median():
    """sigmoid is monotone, so median(t) = sigmoid(median(u)) = sigmoid(mean):
    0.5 for mean 0 (SD3) and sigmoid(1) = 0.7311 for mean 1 (DSO's TRELLIS setting).
    With 20k draws the sample median is within ~0.005 of it."""
    g = torch.Generator().manual_seed(0)
    t0 = sample_timesteps(20_000, "logit_normal", generator=g)
    t1 = sample_timesteps(20_000, "logit_normal", generator=g, logit_mean=1.0)
    assert t0.median().item() == pytest.approx(0.5, abs=0.01)
    assert t1.median().item() == pytest.approx(0.7311, abs=0.01)


def test_sample_timesteps_rejects_unknown_scheme_and_bad_std():
    with pytest.raises(ValueError, match="valid schemes: uniform, logit_normal"):
        sample_timesteps(4, "cosine")
    with pytest.raises(ValueError, match="logit_std"):
        sample_timesteps(4, "logit_normal", logit_std=0.0)


def test_flow_interpolate_endpoints_and_per_sample_t():
    """t = 0 gives x0, t = 1 gives noise, t = 0.25 gives 0.75 x0 + 0.25 noise."""
    x0 = torch.full((3, 2, 4, 4), 2.0)
    noise = torch.full((3, 2, 4, 4), -2.0)
    xt = flow_interpolate(x0, noise, torch.tensor([0.0, 1.0, 0.25]))
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[1], noise[1])
    torch.testing.assert_close(xt[2], torch.full((2, 4, 4), 0.75 * 2.0 - 0.25 * 2.0))
    with pytest.raises(ValueError, match=r"t must have shape \[B\]"):
        flow_interpolate(x0, noise, torch.tensor([0.5, 0.5]))


def test_flow_target_matches_euler_step_convention():
    """u = x0 - noise, and on the straight path x_{t - dt} = x_t + dt * u exactly."""
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    u = flow_target(x0, noise)
    torch.testing.assert_close(u, x0 - noise)
    t, dt = torch.tensor([0.7, 0.4]), 0.1
    torch.testing.assert_close(
        flow_interpolate(x0, noise, t) + dt * u, flow_interpolate(x0, noise, t - dt)
    )


def test_eps_and_v_targets():
    """v = alpha * eps - sigma * x0: with x0 = 1, eps = 2, (alpha, sigma) = (0.6, 0.8)
    -> 1.2 - 0.8 = 0.4; (1, 0) -> 2."""
    x0, eps = torch.ones(2, 3), torch.full((2, 3), 2.0)
    assert eps_target(eps) is eps
    v = v_target(x0, eps, torch.tensor([0.6, 1.0]), torch.tensor([0.8, 0.0]))
    torch.testing.assert_close(v, torch.tensor([[0.4] * 3, [2.0] * 3]))
    torch.testing.assert_close(v_target(x0, eps, 0.6, 0.8), torch.full((2, 3), 0.4))


# --------------------------------------------------------------------------- Diffusion-DPO


def test_diffusion_dpo_hand_values():
    """loss = -log sigmoid(z) = log(1 + e^-z):
    A: z = 0.4 -> log(1.670320) = 0.513015;  B: z = -0.8 -> log(3.225541) = 1.171101.
    Mean 0.842058. Rewards (0.2, -0.4) and (-0.2, 0.4); A ranks right, B wrong:
    accuracy 0.5, margin (0.4 - 0.8) / 2 = -0.2."""
    out = diffusion_dpo_loss(*_errs(PAIR_A, PAIR_B), beta=BETA)
    assert out.loss.item() == pytest.approx(0.842058, abs=1e-5)
    torch.testing.assert_close(out.chosen_reward, torch.tensor([0.2, -0.4]))
    torch.testing.assert_close(out.rejected_reward, torch.tensor([-0.2, 0.4]))
    assert out.accuracy.item() == 0.5
    assert out.reward_margin.item() == pytest.approx(-0.2)
    single = diffusion_dpo_loss(*_errs(PAIR_A), beta=BETA)
    assert single.loss.item() == pytest.approx(0.513015, abs=1e-5)


def test_diffusion_dpo_beta_matches_other_implementations():
    """The Salesforce script's -logsigmoid(-0.5 * b * (model_diff - ref_diff)) with
    b = 2 beta, and diffusers' -logsigmoid(b * (ref_diff - model_diff)) with b = beta,
    give the same loss."""
    pw, pl, rw, rl = _errs(PAIR_A, PAIR_B)
    model_diff, ref_diff = pw - pl, rw - rl
    salesforce = -torch.nn.functional.logsigmoid(-0.5 * (2 * BETA) * (model_diff - ref_diff)).mean()
    diffusers = -torch.nn.functional.logsigmoid(BETA * (ref_diff - model_diff)).mean()
    ours = diffusion_dpo_loss(pw, pl, rw, rl, beta=BETA).loss
    torch.testing.assert_close(ours, salesforce)
    torch.testing.assert_close(ours, diffusers)


def test_diffusion_dpo_is_log2_at_reference():
    """Policy = reference: z = 0, loss = log 2 = 0.693147, rewards 0, accuracy 0."""
    out = diffusion_dpo_loss(*_errs((0.3, 0.9, 0.3, 0.9)), beta=BETA)
    assert out.loss.item() == pytest.approx(math.log(2))
    assert out.accuracy.item() == 0.0 and out.reward_margin.item() == 0.0


# --------------------------------------------------------------------------- DSPO


def test_dspo_sd15_hand_values():
    """Pair A, d = 0.2: s = sigmoid(-0.4) = 1 / (1 + 1.491825) = 0.401312.
    loss = pw - c (pw + d - rw) + c^2 d with pw + d - rw = 0.1:
      lambda = 1:           c = 0.401312, 0.5 - 0.040131 + 0.161052 * 0.2 = 0.492079
      lambda = 2 beta = 4:  c = 1.605249, 0.5 - 0.160525 + 2.576825 * 0.2 = 0.854840"""
    errs = _errs(PAIR_A)
    d = torch.tensor([0.2])
    out = dspo_sd15_loss(*errs, beta=BETA, chosen_policy_ref_mse=d, score_weight=1.0)
    assert out.loss.item() == pytest.approx(0.492079, abs=1e-5)
    out = dspo_sd15_loss(*errs, beta=BETA, chosen_policy_ref_mse=d)
    assert out.loss.item() == pytest.approx(0.854840, abs=1e-5)
    torch.testing.assert_close(out.chosen_reward, torch.tensor([0.2]))


def test_dspo_sdxl_hand_values():
    """Pair A: s^2 = 0.401312^2 = 0.161052. d = 0.2 >= 0.1 -> s^2 d = 0.032210;
    d = 0.05 < 0.1 -> s^2 = 0.161052."""
    errs = _errs(PAIR_A)
    far = dspo_sdxl_loss(*errs, beta=BETA, chosen_policy_ref_mse=torch.tensor([0.2]))
    near = dspo_sdxl_loss(*errs, beta=BETA, chosen_policy_ref_mse=torch.tensor([0.05]))
    assert far.loss.item() == pytest.approx(0.032210, abs=1e-5)
    assert near.loss.item() == pytest.approx(0.161052, abs=1e-5)


def _dspo_from_predictions(branch: str, score_weight: float | None = None):
    """Both DSPO branches from scalars vs. written directly on prediction tensors
    (the official code's form), on random predictions with padded parts: same loss,
    same gradient w.r.t. the policy prediction."""
    g = torch.Generator().manual_seed(3)
    shape = (3, 4, 4, 4)  # [B, P, T, D], pairs share t and noise
    mask = torch.tensor([[True] * 4, [True, True, False, False], [True, False, False, False]])
    target_w, target_l = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    ref_w, ref_l = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    pol_w = (ref_w + 0.5 * torch.randn(shape, generator=g)).requires_grad_()
    pol_l = (ref_l + 0.5 * torch.randn(shape, generator=g)).requires_grad_()
    beta = 0.7
    errs = [
        masked_mse(p, t, mask)
        for p, t in [(pol_w, target_w), (pol_l, target_l), (ref_w, target_w), (ref_l, target_l)]
    ]
    d = masked_mse(pol_w, ref_w, mask)
    if branch == "sd15":
        out = dspo_sd15_loss(*errs, beta=beta, chosen_policy_ref_mse=d, score_weight=score_weight)
    else:
        out = dspo_sdxl_loss(*errs, beta=beta, chosen_policy_ref_mse=d)
    grads = torch.autograd.grad(out.loss, (pol_w, pol_l), retain_graph=True)

    pw, pl, rw, rl = errs
    s = 1 - torch.sigmoid(-beta * ((pw - pl) - (rw - rl)))  # [B]
    a, b = pol_w - target_w, pol_w - ref_w
    m = mask[:, :, None, None].float()
    n = mask.sum(1) * 16

    def masked_mean(x):
        return (x * m).flatten(1).sum(1) / n

    if branch == "sd15":
        lam = 2 * beta if score_weight is None else score_weight
        direct = masked_mean((a - lam * s[:, None, None, None] * b) ** 2).mean()
    else:
        assert d.mean() >= 0.1
        direct = masked_mean((s[:, None, None, None] * b) ** 2).mean()
    direct_grads = torch.autograd.grad(direct, (pol_w, pol_l))
    torch.testing.assert_close(out.loss, direct, rtol=1e-5, atol=1e-6)
    for ours, ref in zip(grads, direct_grads):
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("score_weight", [None, 0.3])
def test_dspo_sd15_scalar_identity_matches_tensor_form(score_weight):
    _dspo_from_predictions("sd15", score_weight)


def test_dspo_sdxl_scalar_form_matches_tensor_form():
    _dspo_from_predictions("sdxl")


def test_dspo_rejects_bad_distance_shape():
    with pytest.raises(ValueError, match="chosen_policy_ref_mse must be per-sample"):
        dspo_sd15_loss(*_errs(PAIR_A, PAIR_B), beta=BETA, chosen_policy_ref_mse=torch.zeros(3))


# --------------------------------------------------------------------------- DRO


def test_dro_hand_values():
    """softplus(-r_w) + softplus(r_l), softplus(x) = log(1 + e^x):
    A: r_w = 0.2, r_l = -0.2 -> 2 log(1.818731) = 1.196278;
    B: r_w = -0.4, r_l = 0.4 -> 2 log(2.491825) = 1.826031.  Mean 1.511154."""
    out = dro_loss(*_errs(PAIR_A, PAIR_B), beta=BETA)
    assert out.loss.item() == pytest.approx(1.511154, abs=1e-5)
    assert out.accuracy.item() == 0.5


def test_dro_linear_hand_values():
    """(beta / 2) ((pw - rw) - (pl - rl)): A -> (-0.1 - 0.1) = -0.2, B -> 0.2 + 0.2 =
    0.4; mean 0.1. DSO's code, mean(err_w - err_l), is beta = 2 up to the constant
    mean(rw - rl) = 0."""
    errs = _errs(PAIR_A, PAIR_B)
    assert dro_linear_loss(*errs, beta=BETA).loss.item() == pytest.approx(0.1)
    pw, pl, _, _ = errs
    assert (pw - pl).mean().item() == pytest.approx(0.1)


def test_dro_linearises_to_dro_linear_at_reference():
    """At policy = reference the bounded DRO is 2 log 2 with the same gradient as the
    linear (published) DRO: (beta / 2) (+1 for pw, -1 for pl) / B."""
    pw, pl, rw, rl = _errs((0.3, 0.9, 0.3, 0.9), (0.5, 0.2, 0.5, 0.2), grad=True)
    bounded = dro_loss(pw, pl, rw, rl, beta=BETA).loss
    assert bounded.item() == pytest.approx(2 * math.log(2))
    g_bounded = torch.autograd.grad(bounded, (pw, pl))
    g_linear = torch.autograd.grad(dro_linear_loss(pw, pl, rw, rl, beta=BETA).loss, (pw, pl))
    for a, b in zip(g_bounded, g_linear):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(g_linear[0], torch.tensor([0.5, 0.5]))


# --------------------------------------------------------------------------- all losses


@pytest.mark.parametrize("name", list(PREFERENCE_LOSSES))
def test_gradients_reach_policy_errors_only(name):
    pw, pl, rw, rl = _errs(PAIR_A, PAIR_B, grad=True)
    extra = _extra(name, batch=2, grad=True)
    out = get_preference_loss(name)(pw, pl, rw, rl, beta=BETA, **extra)
    out.loss.backward()
    assert rw.grad is None and rl.grad is None
    assert pw.grad is not None and bool(pw.grad.abs().sum() > 0)
    assert pl.grad is not None
    for tensor in extra.values():
        assert tensor.grad is not None
    assert not out.chosen_reward.requires_grad and not out.rejected_reward.requires_grad
    assert out.loss.ndim == 0 and out.accuracy.ndim == 0 and out.reward_margin.ndim == 0


BOUNDED = ["diffusion_dpo", "dspo_sd15", "dspo_sdxl", "dro"]


@pytest.mark.parametrize("name", BOUNDED)
@pytest.mark.parametrize("huge", [1e3, 1e6])
def test_bounded_losses_stay_bounded_for_huge_margin(name, huge):
    """pw = 0, pl = huge, rw = huge, rl = 0: r_w = 2 huge, r_l = -2 huge. Every bounded
    loss is >= 0 and finite; the logistic ones (DPO, DRO) go to 0 with vanishing
    gradient; DSPO's s = sigmoid(-z) underflows to 0, leaving sd15's plain denoising
    term pw = 0, and sdxl's s^2 d = 0."""
    pw, pl, rw, rl = _errs((0.0, huge, huge, 0.0), grad=True)
    out = get_preference_loss(name)(pw, pl, rw, rl, beta=BETA, **_extra(name, batch=1))
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.loss.item() >= 0
    assert out.loss.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(pw.grad).all() and torch.isfinite(pl.grad).all()
    assert pl.grad.abs().item() < 1e-6


@pytest.mark.parametrize("name", BOUNDED)
def test_bounded_losses_nonnegative_when_ranked_wrong(name):
    """The opposite extreme (rejected error 0, chosen error huge) is finite too."""
    pw, pl, rw, rl = _errs((1e6, 0.0, 1.0, 1.0))
    out = get_preference_loss(name)(pw, pl, rw, rl, beta=BETA, **_extra(name, batch=1))
    assert torch.isfinite(out.loss) and out.loss.item() >= 0


def test_dro_linear_is_unbounded():
    """The published DSO objective keeps decreasing linearly with the margin."""
    for huge in (1e3, 1e6):
        # (beta / 2) ((0 - 1) - (huge - 1)) = -huge
        loss = dro_linear_loss(*_errs((0.0, huge, 1.0, 1.0)), beta=BETA).loss
        assert loss.item() == pytest.approx(-huge)


def test_registry_names_and_errors():
    assert set(PREFERENCE_LOSSES) == set(PREFERENCE_LOSS_EXTRA_INPUTS)
    assert {"diffusion_dpo", "dspo_sd15", "dspo_sdxl", "dro"} <= set(PREFERENCE_LOSSES)
    assert get_preference_loss("dro") is dro_loss
    with pytest.raises(ValueError, match="valid names: diffusion_dpo, dspo_sd15, dspo_sdxl, dro"):
        get_preference_loss("kto")


@pytest.mark.parametrize("name", list(PREFERENCE_LOSSES))
def test_losses_check_shapes_and_beta(name):
    fn = get_preference_loss(name)
    pw, pl, rw, rl = _errs(PAIR_A, PAIR_B)
    with pytest.raises(ValueError, match="four per-sample errors"):
        fn(pw, pl[:1], rw, rl, beta=BETA, **_extra(name, batch=2))
    with pytest.raises(ValueError, match="beta must be positive"):
        fn(pw, pl, rw, rl, beta=0.0, **_extra(name, batch=2))

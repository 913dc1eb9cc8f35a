"""Score Distillation Sampling (genalign.losses.sds) on hand-written tensors.

Values are powers of two and their small multiples, so every expected number below is
exact in float32 and the tests compare with ==.
"""

import pytest
import torch

from genalign.losses.sds import (
    SDS_WEIGHTS,
    classifier_free_guidance,
    sample_timesteps,
    sds_loss,
    sds_weight,
    timestep_bounds,
)


def fixed_inputs():
    """Two samples of shape [1, 1, 2]:

    latents    [[1, -1/2], [1/4, 2]]
    noise_pred [[1/2, 0],  [1, -1]]
    noise      [[1/4, 1/2], [0, 1]]
    weight     [1/2, 1/4]

    g = w * (noise_pred - noise) = [[1/2 * 1/4, 1/2 * -1/2], [1/4 * 1, 1/4 * -2]]
      = [[1/8, -1/4], [1/4, -1/2]].
    """
    latents = torch.tensor([[1.0, -0.5], [0.25, 2.0]]).view(2, 1, 1, 2).requires_grad_()
    noise_pred = torch.tensor([[0.5, 0.0], [1.0, -1.0]]).view(2, 1, 1, 2)
    noise = torch.tensor([[0.25, 0.5], [0.0, 1.0]]).view(2, 1, 1, 2)
    weight = torch.tensor([0.5, 0.25])
    g = torch.tensor([[0.125, -0.25], [0.25, -0.5]]).view(2, 1, 1, 2)
    return latents, noise_pred, noise, weight, g


def test_gradient_is_weighted_residual_over_batch():
    """dL/dz = g / B with B = 2: [[1/16, -1/8], [1/8, -1/4]]."""
    latents, noise_pred, noise, weight, g = fixed_inputs()
    out = sds_loss(latents, noise_pred, noise, weight)
    out.loss.backward()
    assert torch.equal(out.grad, g)
    assert torch.equal(latents.grad, g / 2)
    assert torch.equal(
        latents.grad, torch.tensor([[0.0625, -0.125], [0.125, -0.25]]).view(2, 1, 1, 2)
    )


def test_loss_value_by_hand():
    """Per sample 1/2 * ||g||^2: 1/2 * (1/64 + 1/16) = 5/128 and 1/2 * (1/16 + 1/4) = 5/32;
    mean (5/128 + 20/128) / 2 = 25/256 = 0.09765625, sum 25/128 = 0.1953125."""
    latents, noise_pred, noise, weight, _ = fixed_inputs()
    assert sds_loss(latents, noise_pred, noise, weight).loss.item() == 0.09765625
    assert sds_loss(latents, noise_pred, noise, weight, reduction="sum").loss.item() == 0.1953125


def test_sum_reduction_gradient_is_the_sds_gradient():
    latents, noise_pred, noise, weight, g = fixed_inputs()
    sds_loss(latents, noise_pred, noise, weight, reduction="sum").loss.backward()
    assert torch.equal(latents.grad, g)


def test_gradient_reaches_scene_parameters_through_the_chain_rule():
    """latents = 2 * theta (a stand-in for renderer + encoder): dL/dtheta = 2 * g / B = g."""
    _, noise_pred, noise, weight, g = fixed_inputs()
    theta = torch.tensor([[0.5, -0.25], [0.125, 1.0]]).view(2, 1, 1, 2).requires_grad_()
    sds_loss(2 * theta, noise_pred, noise, weight).loss.backward()
    assert torch.equal(theta.grad, g)


def test_noise_pred_with_grad_is_an_error():
    latents, noise_pred, noise, weight, _ = fixed_inputs()
    with pytest.raises(ValueError, match="noise_pred requires grad"):
        sds_loss(latents, noise_pred.clone().requires_grad_(), noise, weight)


def test_nan_and_inf_are_replaced():
    """nan -> 0 (no gradient there), inf -> the largest finite float32."""
    latents, noise_pred, noise, weight, g = fixed_inputs()
    noise_pred = noise_pred.clone()
    noise_pred[0, 0, 0, 0] = float("nan")
    noise_pred[1, 0, 0, 1] = float("inf")
    out = sds_loss(latents, noise_pred, noise, weight)
    assert out.grad[0, 0, 0, 0].item() == 0.0
    assert out.grad[1, 0, 0, 1].item() == torch.finfo(torch.float32).max
    assert out.grad[0, 0, 0, 1] == g[0, 0, 0, 1] and out.grad[1, 0, 0, 0] == g[1, 0, 0, 0]
    out.loss.backward()
    assert latents.grad[0, 0, 0, 0].item() == 0.0


def test_argument_errors():
    latents, noise_pred, noise, weight, _ = fixed_inputs()
    with pytest.raises(ValueError, match="valid reductions: mean, sum"):
        sds_loss(latents, noise_pred, noise, weight, reduction="none")
    with pytest.raises(ValueError, match="one shape"):
        sds_loss(latents, noise_pred[:1], noise, weight)
    with pytest.raises(ValueError, match=r"weight must be \[B\] = \[2\]"):
        sds_loss(latents, noise_pred, noise, weight[:1])


def test_weights_for_known_alphas():
    """abar = 1/4 at t = 0 and 9/16 at t = 1 (so sqrt(abar) = 1/2 and 3/4):
    dreamfusion 1 - abar = 3/4, 7/16; uniform 1, 1;
    fantasia3d sqrt(abar) * (1 - abar) = 3/8, 21/64."""
    alphas_cumprod = torch.tensor([0.25, 0.5625, 1.0])
    t = torch.tensor([0, 1])
    assert sds_weight("dreamfusion", alphas_cumprod, t).tolist() == [0.75, 0.4375]
    assert sds_weight("uniform", alphas_cumprod, t).tolist() == [1.0, 1.0]
    assert sds_weight("fantasia3d", alphas_cumprod, t).tolist() == [0.375, 0.328125]
    assert sds_weight("dreamfusion", alphas_cumprod, t).shape == (2,)


def test_unknown_weight_lists_the_valid_kinds():
    with pytest.raises(ValueError, match="valid kinds: dreamfusion, uniform, fantasia3d"):
        sds_weight("sjc", torch.tensor([0.5]), torch.tensor([0]))
    assert set(SDS_WEIGHTS) == {"dreamfusion", "uniform", "fantasia3d"}
    with pytest.raises(ValueError, match="t must be long"):
        sds_weight("uniform", torch.tensor([0.5]), torch.tensor([0.0]))


def test_timestep_bounds_anneal_linearly():
    """t_max: 0.98 at step 0, (0.98 + 0.5) / 2 = 0.74 halfway, 0.5 at the end; t_min 0.02."""
    assert timestep_bounds(0, 1000) == (0.02, 0.98)
    t_min, t_max = timestep_bounds(500, 1000)
    assert t_min == 0.02 and t_max == pytest.approx(0.74)
    assert timestep_bounds(1000, 1000) == (0.02, 0.5)
    assert timestep_bounds(1, 4, max_start=1.0, max_end=0.5, min_t=0.0) == (0.0, 0.875)


def test_timestep_bounds_errors():
    with pytest.raises(ValueError, match="step must be in"):
        timestep_bounds(11, 10)
    with pytest.raises(ValueError, match="min_t <= max_end <= max_start"):
        timestep_bounds(0, 10, max_start=0.4, max_end=0.5)


def test_sample_timesteps_range_and_ends():
    """N = 10, [0.2, 0.5] -> integers 2..5, both ends included."""
    gen = torch.Generator().manual_seed(0)
    t = sample_timesteps(gen, 400, 10, 0.2, 0.5)
    assert t.dtype == torch.long and t.shape == (400,)
    assert set(t.tolist()) == {2, 3, 4, 5}


def test_sample_timesteps_is_seeded_and_capped():
    a = sample_timesteps(torch.Generator().manual_seed(3), 8, 1000, 0.02, 0.98)
    b = sample_timesteps(torch.Generator().manual_seed(3), 8, 1000, 0.02, 0.98)
    assert torch.equal(a, b) and bool(((a >= 20) & (a <= 980)).all())
    assert sample_timesteps(None, 3, 1000, 0.5, 0.5).tolist() == [500, 500, 500]
    # round(1.0 * 1000) = 1000 is past the schedule: capped at N - 1 = 999.
    assert sample_timesteps(None, 2, 1000, 1.0, 1.0).tolist() == [999, 999]


def test_classifier_free_guidance_on_numbers():
    """uncond [1, 2], cond [2, 0]: scale 3 -> [1 + 3 * 1, 2 + 3 * -2] = [4, -4];
    scale 1 -> cond, scale 0 -> uncond."""
    uncond, cond = torch.tensor([1.0, 2.0]), torch.tensor([2.0, 0.0])
    assert classifier_free_guidance(uncond, cond, 3.0).tolist() == [4.0, -4.0]
    assert torch.equal(classifier_free_guidance(uncond, cond, 1.0), cond)
    assert torch.equal(classifier_free_guidance(uncond, cond, 0.0), uncond)
    with pytest.raises(ValueError, match="shapes differ"):
        classifier_free_guidance(uncond, cond[:1], 3.0)

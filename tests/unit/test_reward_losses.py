"""Losses of the reward model (genalign.losses.reward) on tiny fixed inputs, with the expected
values worked out by hand in each docstring."""

import math

import pytest
import torch
import torch.nn.functional as F

from genalign.losses.reward import bradley_terry_loss, focal_loss, mixup

LOG2 = math.log(2.0)
NAN = float("nan")


# ---------------------------------------------------------------------------- focal loss
def test_focal_loss_by_hand():
    """logit 0 -> p = 1/2. gamma = 2, alpha = 0.25:
    y = 1: 0.25 * (1/2)^2 * log 2 = 0.0625 log 2;  y = 0: 0.75 * (1/2)^2 * log 2 = 0.1875 log 2.
    logit log 3 -> p = 3/4, y = 1: 0.25 * (1/4)^2 * -log(3/4) = 0.015625 * log(4/3).
    Mean of the three: (0.25 log 2 + 0.015625 log(4/3)) / 3."""
    logits = torch.tensor([[0.0, 0.0, math.log(3.0)]])
    targets = torch.tensor([[1.0, 0.0, 1.0]])
    out = focal_loss(logits, targets, gamma=2.0, alpha=0.25)
    expected = (0.25 * LOG2 + 0.015625 * math.log(4 / 3)) / 3
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.rated.item() == 3


def test_focal_loss_reduces_to_bce_with_gamma_0_and_no_alpha():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5, generator=g)
    targets = torch.rand(4, 5, generator=g)  # soft targets
    out = focal_loss(logits, targets, gamma=0.0, alpha=None)
    assert out.loss.item() == pytest.approx(F.binary_cross_entropy_with_logits(logits, targets).item(), rel=1e-6)


def test_focal_loss_soft_target_by_hand():
    """y = 1/2 at logit 0, gamma 0, no alpha: 1/2 log 2 + 1/2 log 2 = log 2."""
    out = focal_loss(torch.zeros(1, 1), torch.full((1, 1), 0.5), gamma=0.0, alpha=None)
    assert out.loss.item() == pytest.approx(LOG2)


def test_focal_loss_leaves_out_unrated_heads_and_masked_entries():
    """The NaN entries are out: the loss is the mean over the two rated entries only
    (both at logit 0, gamma 0, no alpha: log 2 each), and their logits get zero, finite grads."""
    logits = torch.zeros(2, 2, requires_grad=True)
    targets = torch.tensor([[1.0, NAN], [NAN, 0.0]])
    out = focal_loss(logits, targets, gamma=0.0, alpha=None)
    assert out.loss.item() == pytest.approx(LOG2) and out.rated.item() == 2
    out.loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[0, 1] == 0 and logits.grad[1, 0] == 0 and logits.grad[0, 0] != 0
    masked = focal_loss(torch.zeros(2, 2), torch.tensor([[1.0, 1.0], [0.0, 1.0]]),
                        gamma=0.0, alpha=None, mask=torch.tensor([[True, False], [True, False]]))
    assert masked.rated.item() == 2 and masked.loss.item() == pytest.approx(LOG2)


def test_focal_loss_all_unrated_is_zero_with_a_gradient_path():
    logits = torch.randn(3, 5, requires_grad=True)
    out = focal_loss(logits, torch.full((3, 5), NAN))
    assert out.loss.item() == 0.0 and out.rated.item() == 0
    out.loss.backward()
    assert torch.equal(logits.grad, torch.zeros(3, 5))


def test_focal_loss_refuses_bad_inputs():
    with pytest.raises(ValueError, match="one \\[B, K\\] shape"):
        focal_loss(torch.zeros(2, 5), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        focal_loss(torch.zeros(1, 1), torch.full((1, 1), 2.0))


# ---------------------------------------------------------------------------- Bradley-Terry
def test_bradley_terry_by_hand_with_a_tie_excluded():
    """d = s_a - s_b = 1 for all three pairs.
    a preferred: softplus(-1) = log(1 + e^-1) = 0.3132617;  b preferred: softplus(1) = 1.3132617;
    the tie is excluded. Loss = (0.3132617 + 1.3132617) / 2 = 0.8132617; margins s_w - s_l are
    +1 and -1 (mean 0); one of the two is ordered right (accuracy 1/2)."""
    a = torch.tensor([1.0, 1.0, 1.0], requires_grad=True)
    b = torch.zeros(3)
    out = bradley_terry_loss(a, b, torch.tensor([1.0, 0.0, 0.5]))
    assert out.loss.item() == pytest.approx((math.log1p(math.exp(-1)) + math.log1p(math.e)) / 2, rel=1e-6)
    assert out.loss.item() == pytest.approx(0.8132617, rel=1e-6)
    assert out.margin.item() == pytest.approx(0.0) and out.accuracy.item() == 0.5
    assert out.pairs.item() == 2 and out.ties.item() == 1
    out.loss.backward()
    assert a.grad[2] == 0  # the tie pulls nothing


def test_bradley_terry_equal_scores_cost_log_2():
    out = bradley_terry_loss(torch.zeros(2), torch.zeros(2), torch.tensor([1.0, 0.0]))
    assert out.loss.item() == pytest.approx(LOG2) and out.accuracy.item() == 0.0


def test_bradley_terry_all_ties_is_zero_with_a_gradient_path():
    a = torch.randn(3, requires_grad=True)
    out = bradley_terry_loss(a, torch.zeros(3), torch.full((3,), 0.5))
    assert out.loss.item() == 0.0 and out.pairs.item() == 0 and out.ties.item() == 3
    out.loss.backward()
    assert torch.equal(a.grad, torch.zeros(3))


def test_bradley_terry_refuses_other_preferences():
    with pytest.raises(ValueError, match="0, 0.5 or 1"):
        bradley_terry_loss(torch.zeros(2), torch.zeros(2), torch.tensor([1.0, 0.7]))
    with pytest.raises(ValueError, match="one \\[P\\] shape"):
        bradley_terry_loss(torch.zeros(2), torch.zeros(3), torch.ones(2))


# ---------------------------------------------------------------------------- MixUp
def test_mixup_is_the_convex_combination_and_nan_safe():
    """Each row is lam * x_i + (1 - lam) * x_index[i] with lam in [0.5, 1]; a head NaN in
    either source is NaN in the mix."""
    g = torch.Generator().manual_seed(3)
    images = torch.rand(4, 3, 2, 2, generator=g)
    targets = torch.tensor([[1.0, 0.0], [0.0, NAN], [1.0, 1.0], [0.0, 0.0]])
    out = mixup(images, targets, alpha=0.4, generator=torch.Generator().manual_seed(0))
    lam, j = out.lam, out.index
    assert 0.5 <= lam.item() <= 1.0 and sorted(j.tolist()) == [0, 1, 2, 3]
    assert torch.allclose(out.images, lam * images + (1 - lam) * images[j])
    for i in range(4):
        for k in range(2):
            if math.isnan(targets[i, k]) or math.isnan(targets[j[i], k]):
                assert math.isnan(out.targets[i, k])
            else:
                assert out.targets[i, k].item() == pytest.approx(
                    lam.item() * targets[i, k].item() + (1 - lam.item()) * targets[j[i], k].item())
    assert torch.isnan(out.targets[1, 1]) and torch.isfinite(out.targets[:, 0]).all()


def test_mixup_draws_only_from_its_generator():
    images, targets = torch.rand(8, 3, 2, 2), torch.rand(8, 5)
    state = torch.get_rng_state()
    one = mixup(images, targets, alpha=0.2, generator=torch.Generator().manual_seed(7))
    two = mixup(images, targets, alpha=0.2, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(one.images, two.images) and torch.equal(one.index, two.index)


def test_mixup_lambda_follows_beta():
    """Beta(1000, 1000) is concentrated at 1/2 (std ~0.011); Beta(0.01, 0.01) at 0 or 1
    (P(min(lam, 1 - lam) < 0.05) ~ 0.05^0.01 ~ 0.97), folded to 1."""
    x, y = torch.rand(2, 3, 1, 1), torch.rand(2, 1)
    near_half = [mixup(x, y, 1000.0, torch.Generator().manual_seed(s)).lam.item() for s in range(5)]
    assert all(abs(v - 0.5) < 0.06 for v in near_half)
    near_one = [mixup(x, y, 0.01, torch.Generator().manual_seed(s)).lam.item() for s in range(20)]
    assert sum(v > 0.95 for v in near_one) >= 15

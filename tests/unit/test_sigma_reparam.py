"""σReparam (Zhai et al. 2023): conversion keeps a layer's outputs, σ matches the exact
spectral norm, one power iteration per training forward, γ trains, whole transformers
models convert in place."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from genalign.models.sigma_reparam import SigmaReparamLinear, convert_to_sigma_reparam

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _linear(n_in: int = 24, n_out: int = 40, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(n_in, n_out)


def _gapped(n_out: int = 40, n_in: int = 24) -> torch.Tensor:
    """W = U diag(10, 5, 4, ...) Vᵀ: σ = 10 and σ₂/σ₁ = 0.5, where power iteration from a
    random start converges like 0.5^(2k): ~15 steps reach float precision."""
    g = torch.Generator().manual_seed(3)
    U, _ = torch.linalg.qr(torch.randn(n_out, n_in, generator=g))
    V, _ = torch.linalg.qr(torch.randn(n_in, n_in, generator=g))
    s = torch.linspace(4.0, 0.5, n_in)
    s[0], s[1] = 10.0, 5.0
    return U @ torch.diag(s) @ V.t()


def test_from_linear_keeps_the_outputs_and_the_weights():
    linear = _linear()
    layer = SigmaReparamLinear.from_linear(linear)
    x = torch.randn(7, 24)
    # Eval: no power iteration, Ŵ = (γ / σ) W with γ = σ exactly.
    assert torch.allclose(layer.eval()(x), linear(x), atol=1e-5)
    assert torch.equal(layer.weight, linear.weight) and torch.equal(layer.bias, linear.bias)
    assert layer.weight.data_ptr() != linear.weight.data_ptr()  # a copy, not shared
    # Training: one more iteration of an already converged estimate changes nothing visible.
    assert torch.allclose(layer.train()(x), linear(x), atol=1e-5)
    no_bias = nn.Linear(24, 40, bias=False)
    assert torch.allclose(SigmaReparamLinear.from_linear(no_bias)(x), no_bias(x), atol=1e-5)


def test_sigma_matches_the_exact_spectral_norm():
    layer = SigmaReparamLinear.from_linear(_linear(64, 256))
    exact = torch.linalg.matrix_norm(layer.weight.detach(), ord=2)
    assert abs(float(layer.sigma().detach()) / float(exact) - 1) < 1e-4
    assert abs(float(layer.gamma.detach()) / float(exact) - 1) < 1e-4
    # An explicit count of power iterations from a random start: exact enough on a matrix
    # with a spectral gap (random-init weights need ~1000; see the module docstring).
    linear = nn.Linear(24, 40)
    with torch.no_grad():
        linear.weight.copy_(_gapped())
    layer = SigmaReparamLinear.from_linear(linear, n_power_iterations_init=30)
    assert abs(float(layer.sigma().detach()) / 10.0 - 1) < 1e-4


def test_one_power_iteration_per_training_forward_none_in_eval():
    layer = SigmaReparamLinear.from_linear(_linear(), n_power_iterations_init=1)
    x = torch.randn(3, 24)
    w = layer.weight.detach()
    u0, v0 = layer.u.clone(), layer.v.clone()
    layer.eval()(x)
    assert torch.equal(layer.u, u0) and torch.equal(layer.v, v0)
    layer.train()(x)
    v1 = torch.nn.functional.normalize(w.t() @ u0, dim=0)
    u1 = torch.nn.functional.normalize(w @ v1, dim=0)
    assert not torch.allclose(layer.u, u0, atol=1e-3)
    assert torch.allclose(layer.v, v1, atol=1e-6) and torch.allclose(layer.u, u1, atol=1e-6)
    assert not layer.u.requires_grad and {"u", "v", "gamma"} <= set(layer.state_dict())


def test_gamma_and_weight_train_and_two_forwards_share_one_backward():
    layer = SigmaReparamLinear.from_linear(_linear()).train()
    assert layer.gamma.requires_grad
    x = torch.randn(5, 24)
    # The buffers change in place between the two forwards; the graph of the first holds
    # its own copies, so the backward of both runs (a shared module, gradient accumulation).
    (layer(x).square().mean() + layer(x).mean()).backward()
    assert layer.gamma.grad is not None and float(layer.gamma.grad.abs()) > 0
    assert float(layer.weight.grad.abs().sum()) > 0 and float(layer.bias.grad.abs().sum()) > 0
    # dŴ/dγ = W / σ: the output scales linearly with γ.
    with torch.no_grad():
        y = layer.eval()(x) - layer.bias
        layer.gamma.mul_(2.0)
        assert torch.allclose(layer(x) - layer.bias, 2 * y, atol=1e-5)


def test_convert_a_tiny_dinov2_in_place_keeps_its_features():
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=8, image_size=32
    )
    model = Dinov2Model(config).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(pixel_values=pixels).last_hidden_state
    # Per layer: the attention's q/k/v/o projections and the MLP's fc1/fc2.
    assert convert_to_sigma_reparam(model) == 2 * 6
    assert isinstance(model.encoder.layer[0].attention.q_proj, SigmaReparamLinear)
    assert not any(type(m) is nn.Linear for m in model.modules())
    with torch.no_grad():
        after = model(pixel_values=pixels).last_hidden_state
    assert torch.allclose(after, before, atol=1e-4)
    assert convert_to_sigma_reparam(model) == 0  # nothing left to convert


def test_include_selects_layers_by_name():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2)))
    seen = []
    n = convert_to_sigma_reparam(model, include=lambda name, m: seen.append(name) or name != "2.1")
    assert n == 2 and seen == ["0", "2.0", "2.1"]
    assert isinstance(model[2][0], SigmaReparamLinear) and type(model[2][1]) is nn.Linear


def test_refusals_name_the_problem():
    with pytest.raises(TypeError, match="MultiheadAttention"):
        convert_to_sigma_reparam(nn.TransformerEncoderLayer(8, 2))
    with pytest.raises(TypeError, match="from_linear"):
        convert_to_sigma_reparam(nn.Linear(3, 3))
    zero = nn.Linear(3, 3)
    nn.init.zeros_(zero.weight)
    with pytest.raises(ValueError, match="spectral norm 0"):
        SigmaReparamLinear.from_linear(zero)
    with pytest.raises(ValueError, match="n_power_iterations_init"):
        SigmaReparamLinear.from_linear(nn.Linear(3, 3), n_power_iterations_init=0)

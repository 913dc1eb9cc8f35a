"""Hand-pose transformer: output shapes and units, the pixel and depth conventions,
parameter groups, the stochastic head, σReparam conversion, a few training steps, and
save/load with clear errors. Tiny configs built in code; no hub."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from genalign.config.base import ConfigError
from genalign.config.hand_pose_model import HandPoseModelConfig
from genalign.models.hand_pose import (
    BACKBONE_CONFIG_NAME,
    CROP_EXTENT_PRIOR_MM,
    HandPoseModel,
    _rotation_6d,
    load_hand_pose,
    log_extent_from_root_depth,
    normalised_to_pixels,
    pixels_to_normalised,
    root_depth_from_log_extent,
    save_hand_pose,
)
from genalign.models.sigma_reparam import SigmaReparamLinear
from genalign.storage import ArtifactError

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TINY = HandPoseModelConfig()
S = TINY.image_size


def _batch(b: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crops and distinct crop intrinsics (fx != fy, off-centre principal point)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 3, S, S, generator=g)
    K = torch.zeros(b, 3, 3)
    K[:, 0, 0] = 150 + 100 * torch.rand(b, generator=g)
    K[:, 1, 1] = K[:, 0, 0] * 1.05
    K[:, 0, 2] = S / 2 - 0.5 + 4 * torch.randn(b, generator=g)
    K[:, 1, 2] = S / 2 - 0.5 - 3 * torch.randn(b, generator=g)
    K[:, 0, 1] = 0.5  # a little skew: the back-projection must use the whole K
    K[:, 2, 2] = 1.0
    return images, K


def test_outputs_have_their_shapes_and_units():
    model = HandPoseModel(TINY).eval()
    images, K = _batch()
    with torch.no_grad():
        out = model(images, K)
    w = TINY.width
    shapes = {
        "joints3d": (4, 21, 3), "refined3d": (4, 21, 3), "joints2d": (4, 21, 2),
        "root_depth": (4,), "joints_cam": (4, 21, 3), "object_translation": (4, 3),
        "object_rotation": (4, 3, 3), "kl": (), "joint_features": (4, 21, w),
    }  # fmt: skip
    assert {k: tuple(v.shape) for k, v in out._asdict().items()} == shapes
    assert all(torch.isfinite(v).all() for v in out)
    # Root-relative: the wrist is exactly 0 before and after refinement.
    assert torch.all(out.joints3d[:, 0] == 0) and torch.all(out.refined3d[:, 0] == 0)
    # Millimetres: at init a random head gives joints of tens to hundreds of mm, and the
    # root depth is near the prior (f / S) * E0, metres away rather than millimetres.
    assert 1 < float(out.joints3d.abs().mean()) < 1000
    prior = torch.sqrt(K[:, 0, 0] * K[:, 1, 1]) / S * CROP_EXTENT_PRIOR_MM
    ratio = out.root_depth / prior
    assert torch.all((ratio > 0.1) & (ratio < 10))
    assert torch.allclose(out.joints_cam - out.joints_cam[:, :1], out.refined3d, atol=1e-3)
    R = out.object_rotation
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3).expand(4, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(R), torch.ones(4), atol=1e-5)
    assert float(out.kl) == 0.0


def test_pixel_convention_matches_grid_sample():
    """Pixel centres at integers, the crop spans [-0.5, S - 0.5]: the edges map to -1 and +1
    and the centre of patch cell (i, j) samples exactly that cell's feature."""
    u = torch.tensor([-0.5, S - 0.5, (S - 1) / 2])
    assert torch.allclose(pixels_to_normalised(u, S), torch.tensor([-1.0, 1.0, 0.0]))
    assert torch.allclose(normalised_to_pixels(pixels_to_normalised(u, S), S), u)
    p, g = TINY.patch_size, S // TINY.patch_size
    fmap = torch.arange(g * g, dtype=torch.float32).view(1, 1, g, g)
    i, j = 2, 5  # row, column
    centre = torch.tensor([(j + 0.5) * p - 0.5, (i + 0.5) * p - 0.5])  # (u, v) px
    grid = pixels_to_normalised(centre, S).view(1, 1, 1, 2)
    sampled = F.grid_sample(fmap, grid, align_corners=False)
    assert float(sampled) == pytest.approx(i * g + j)


def test_depth_parameterisation_is_the_crops_metric_extent():
    """Z = (f / S) E0 exp(d): the same crop content (same d) at twice the crop focal (a hand
    twice as far, cut from a bbox half the size) is twice as deep."""
    K = torch.diag(torch.tensor([200.0, 200.0, 1.0]))[None]
    d = torch.tensor([0.3])
    z = root_depth_from_log_extent(d, K, S)
    assert float(z) == pytest.approx(200 / S * CROP_EXTENT_PRIOR_MM * torch.exp(d).item())
    assert float(root_depth_from_log_extent(d, K * torch.tensor([2.0, 2, 1])[:, None], S)) == (
        pytest.approx(2 * float(z))
    )
    assert float(log_extent_from_root_depth(z, K, S)) == pytest.approx(0.3, abs=1e-6)


def test_wrist_of_joints_cam_projects_to_joints2d_through_K():
    model = HandPoseModel(TINY).eval()
    images, K = _batch()
    with torch.no_grad():
        out = model(images, K)
    p = torch.einsum("bij,bj->bi", K, out.joints_cam[:, 0])  # [B, 3]
    assert torch.allclose(p[:, :2] / p[:, 2:], out.joints2d[:, 0], atol=1e-3)
    assert torch.allclose(out.joints_cam[:, 0, 2], out.root_depth, rtol=1e-6)


def test_outputs_stay_float32_under_bf16_autocast():
    model = HandPoseModel(TINY.replace(stochastic_head=True)).train()
    images, K = _batch(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images, K)
    assert all(v.dtype == torch.float32 for v in out)
    (out.joints_cam.abs().mean() + out.kl).backward()
    assert model.hand.head2d.weight.grad.dtype == torch.float32


def test_parameter_groups_are_disjoint_and_cover_the_model():
    for cfg in (TINY, TINY.replace(object_branch=False, refine_steps=0, stochastic_head=True)):
        model = HandPoseModel(cfg)
        groups = model.parameter_groups()
        assert list(groups) == ["backbone", "hand", "object", "refine"]
        ids = [id(p) for params in groups.values() for p in params]
        assert len(ids) == len(set(ids))
        assert set(ids) == {id(p) for p in model.parameters()}
        assert all(groups[name] for name in ("backbone", "hand"))
    assert groups["object"] == [] and groups["refine"] == []


def test_without_refinement_refined_equals_initial():
    model = HandPoseModel(TINY.replace(refine_steps=0)).eval()
    with torch.no_grad():
        out = model(*_batch())
    assert torch.equal(out.refined3d, out.joints3d)
    refined = HandPoseModel(TINY).eval()
    with torch.no_grad():
        out = refined(*_batch())
    assert not torch.equal(out.refined3d, out.joints3d)


def test_stochastic_head_samples_in_training_and_uses_the_mean_in_eval():
    model = HandPoseModel(TINY.replace(stochastic_head=True))
    images, K = _batch()
    with torch.no_grad():
        torch.manual_seed(1)
        a = model.train()(images, K)
        b = model(images, K)
        torch.manual_seed(1)
        a_again = model(images, K)
        e1 = model.eval()(images, K)
        e2 = model(images, K)
    assert not torch.allclose(a.refined3d, b.refined3d)
    assert torch.equal(a.refined3d, a_again.refined3d)
    assert torch.equal(e1.refined3d, e2.refined3d)
    assert torch.isfinite(a.kl) and float(a.kl) > 0
    # With sigma = exp(-40), training's z = mu + sigma * eps is the mean: eval is the mean path.
    with torch.no_grad():
        latent = TINY.latent_dim
        model.hand.to_latent.weight[latent:] = 0
        model.hand.to_latent.bias[latent:] = -80.0
        mean_train = model.train()(images, K)
        mean_eval = model.eval()(images, K)
    assert torch.allclose(mean_train.refined3d, mean_eval.refined3d, atol=1e-4)
    assert torch.allclose(mean_train.object_translation, mean_eval.object_translation, atol=1e-4)


def test_gradients_reach_every_hand_and_object_parameter():
    model = HandPoseModel(TINY.replace(stochastic_head=True)).train()
    images, K = _batch()
    target = torch.randn(4, 21, 3) * 50 + torch.tensor([0.0, 0.0, 600.0])
    out = model(images, K)
    (out.joints_cam - target).abs().mean().backward(retain_graph=True)
    groups = model.parameter_groups()
    names = {id(p): n for n, p in model.named_parameters()}
    dead = [names[id(p)] for p in groups["hand"] if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []
    assert all(p.grad is not None for p in groups["refine"])
    model.zero_grad(set_to_none=True)
    loss = out.object_translation.abs().mean() + (out.object_rotation - torch.eye(3)).abs().mean()
    loss.backward()
    dead = [names[id(p)] for p in groups["object"] if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


def test_a_few_adam_steps_reduce_the_loss():
    model = HandPoseModel(TINY).train()
    images, K = _batch(8, seed=3)
    target = torch.randn(8, 21, 3, generator=torch.Generator().manual_seed(4)) * 40
    target[:, 0] = 0
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss = (model(images, K).refined3d - target).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.7 * losses[0], losses


def test_sigma_reparam_converts_every_linear_and_keeps_the_outputs():
    cfg = TINY.replace(stochastic_head=True)
    plain = HandPoseModel(cfg).eval()
    converted = HandPoseModel(cfg.replace(sigma_reparam=True)).eval()
    assert not any(type(m) is torch.nn.Linear for m in converted.modules())
    n = sum(isinstance(m, SigmaReparamLinear) for m in converted.modules())
    assert converted.sigma_reparam_layers == n
    assert n == sum(type(m) is torch.nn.Linear for m in plain.modules())
    images, K = _batch()
    with torch.no_grad():
        a, b = plain(images, K), converted(images, K)
    for name in ("refined3d", "joints2d", "root_depth", "object_translation"):
        assert torch.allclose(getattr(a, name), getattr(b, name), rtol=1e-4, atol=1e-3), name
    # It trains, with a gradient for each γ.
    out = converted.train()(images, K)
    loss = out.joints_cam.abs().mean() + out.object_translation.abs().mean() + out.kl
    (loss + out.object_rotation.sum()).backward()
    gammas = [m.gamma for m in converted.modules() if isinstance(m, SigmaReparamLinear)]
    assert all(g.grad is not None for g in gammas)


def test_gradient_checkpointing_gives_the_same_gradients():
    images, K = _batch(2)
    grads = []
    for checkpointing in (False, True):
        model = HandPoseModel(TINY.replace(gradient_checkpointing=checkpointing)).train()
        model(images, K).joints_cam.abs().mean().backward()
        # The mask token (masked-image pretraining only) takes no part and gets no gradient.
        grads.append({n: p.grad for n, p in model.backbone.named_parameters() if p.grad is not None})
    assert len(grads[0]) == len(list(model.backbone.parameters())) - 1
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])


def test_save_load_round_trip_and_errors(tmp_path):
    cfg = TINY.replace(stochastic_head=True, sigma_reparam=True, seed=5)
    model = HandPoseModel(cfg)
    images, K = _batch()
    model.train()(images, K)  # move σReparam's u, v away from their initial values
    model.eval()
    out_dir = save_hand_pose(model, cfg, tmp_path / "model")
    assert json.loads((out_dir / "config.json").read_text()) == cfg.to_dict()
    assert set(load_file(str(out_dir / "model.safetensors"))) == set(model.state_dict())
    loaded, loaded_cfg = load_hand_pose(out_dir)
    assert loaded_cfg == cfg and not loaded.training
    with torch.no_grad():
        a, b = model(images, K), loaded(images, K)
    assert all(torch.equal(x, y) for x, y in zip(a, b))

    with pytest.raises(ValueError, match="differs from the model's config in \\['seed'\\]"):
        save_hand_pose(model, cfg.replace(seed=6), tmp_path / "other")
    state = load_file(str(out_dir / "model.safetensors"))
    state.pop("hand.queries")
    save_file(state, str(out_dir / "model.safetensors"))
    with pytest.raises(ArtifactError, match=r"model.safetensors: .*missing \['hand.queries'\]"):
        load_hand_pose(out_dir)
    (out_dir / "config.json").write_text(json.dumps({**cfg.to_dict(), "widht": 3}))
    with pytest.raises(ArtifactError, match=r"config.json: unknown key"):
        load_hand_pose(out_dir)
    (out_dir / "config.json").unlink()
    with pytest.raises(ArtifactError, match=r"config.json: missing"):
        load_hand_pose(out_dir)


def test_pretrained_backbone_is_loaded_kept_under_sigma_reparam_and_saved(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(7)
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, patch_size=8, image_size=224
    )
    Dinov2Model(config).save_pretrained(tmp_path / "dinov2")
    pretrained = Dinov2Model.from_pretrained(tmp_path / "dinov2")
    cfg = TINY.replace(backbone="hf://example/dinov2-test", sigma_reparam=True)
    with pytest.raises(ValueError, match="pass exactly one of backbone_dir"):
        HandPoseModel(cfg)
    with pytest.raises(ValueError, match="patch_size to 8"):
        HandPoseModel(cfg.replace(patch_size=16), backbone_dir=tmp_path / "dinov2")
    model = HandPoseModel(cfg, backbone_dir=tmp_path / "dinov2").eval()
    q = model.backbone.encoder.layer[0].attention.q_proj
    assert isinstance(q, SigmaReparamLinear)
    assert torch.equal(q.weight, pretrained.encoder.layer[0].attention.q_proj.weight)
    images, K = _batch(2)
    with torch.no_grad():
        feats = model.backbone(pixel_values=images).last_hidden_state
        assert torch.allclose(feats, pretrained(pixel_values=images).last_hidden_state, atol=1e-4)
        out = model(images, K)
    out_dir = save_hand_pose(model, cfg, tmp_path / "saved")
    assert (out_dir / BACKBONE_CONFIG_NAME).is_file()
    loaded, _ = load_hand_pose(out_dir)  # no backbone_dir: the architecture is saved
    with torch.no_grad():
        assert torch.equal(loaded(images, K).joints_cam, out.joints_cam)


def test_bad_inputs_and_configs_are_named():
    model = HandPoseModel(TINY)
    with pytest.raises(ValueError, match=r"images must be float \[B, 3, 64, 64\]"):
        model(torch.rand(2, 3, 32, 32), torch.eye(3).expand(2, 3, 3))
    with pytest.raises(ValueError, match=r"K must be \[B, 3, 3\] = \[2, 3, 3\]"):
        model(torch.rand(2, 3, S, S), torch.eye(3).expand(3, 3, 3))
    with pytest.raises(ConfigError, match="image_size .60. must be a multiple of patch_size .8."):
        HandPoseModelConfig.from_dict({"image_size": 60})
    with pytest.raises(ConfigError, match=r"width \(66\) must be divisible by heads \(4\)"):
        HandPoseModelConfig.from_dict({"width": 66})
    with pytest.raises(ConfigError, match="refine_steps: expected an integer >= 0"):
        HandPoseModelConfig.from_dict({"refine_steps": -1})
    with pytest.raises(ConfigError, match="refine_step_size: expected a finite number > 0"):
        HandPoseModelConfig.from_dict({"refine_step_size": 0.0})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['widht'\]"):
        HandPoseModelConfig.from_dict({"widht": 64})
    assert HandPoseModelConfig.from_dict(TINY.to_dict()) == TINY


def test_rotation_6d_is_gram_schmidt_on_the_columns():
    R = _rotation_6d(torch.tensor([[2.0, 0, 0, 1.0, 3.0, 0]]))[0]
    assert torch.allclose(R, torch.eye(3), atol=1e-6)
    x = torch.randn(16, 6)
    R = _rotation_6d(x)
    assert torch.allclose(R[:, :, 0], F.normalize(x[:, :3], dim=-1), atol=1e-6)
    assert torch.allclose(R.transpose(1, 2) @ R, torch.eye(3).expand(16, 3, 3), atol=1e-5)

"""Part DiT: shapes, masking, save/load with clear errors, LoRA/DoRA through peft; the
frozen tiny DINOv2 encoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from genalign.config.base import ConfigError
from genalign.config.part_dit import PartDiTConfig
from genalign.models.part_dit import PartDiT, timestep_embedding
from genalign.storage import ArtifactError

SMALL = PartDiTConfig(hidden=32, depth=2, heads=2, cond_dim=8)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _model(cfg: PartDiTConfig = SMALL, seed: int = 0) -> PartDiT:
    """A PartDiT whose zero-initialised output layers are perturbed, so outputs are not 0."""
    torch.manual_seed(seed)
    model = PartDiT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _inputs(b: int = 3, p: int = 5, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, p, 4, 4, generator=g)
    t = torch.rand(b, generator=g)
    cond = torch.randn(b, 6, SMALL.cond_dim, generator=g)
    mask = torch.ones(b, p, dtype=torch.bool)
    mask[0, 2:] = False
    mask[1, 4:] = False
    return x, t, cond, mask


def test_forward_shape_and_padded_parts_are_zero():
    x, t, cond, mask = _inputs()
    u = _model()(x, t, cond, mask)
    assert u.shape == x.shape
    assert torch.all(u[~mask] == 0)
    assert torch.all(u[mask].abs().sum(dim=(-1, -2)) > 0)


def test_fresh_model_predicts_zero_velocity():
    # adaLN-Zero and the zero output projection: training starts from u = 0.
    x, t, cond, mask = _inputs()
    assert torch.all(PartDiT(SMALL)(x, t, cond, mask) == 0)


def test_padding_does_not_leak_into_real_parts():
    model = _model()
    x, t, cond, mask = _inputs()
    ref = model(x, t, cond, mask)
    noisy = x.clone()
    noisy[~mask] = 1e3 * torch.randn_like(noisy[~mask])
    assert torch.allclose(model(noisy, t, cond, mask)[mask], ref[mask], atol=1e-5)
    # Extra padded slots change nothing either.
    wider = torch.cat([x, torch.randn(3, 2, 4, 4)], dim=1)
    wider_mask = torch.cat([mask, torch.zeros(3, 2, dtype=torch.bool)], dim=1)
    assert torch.allclose(model(wider, t, cond, wider_mask)[:, :5][mask], ref[mask], atol=1e-5)


def test_parts_see_each_other_and_the_condition():
    model = _model()
    x, t, cond, mask = _inputs()
    ref = model(x, t, cond, mask)
    other = x.clone()
    other[2, 0] += 1.0  # move part 0 of object 2: global attention carries it to part 1
    assert not torch.allclose(model(other, t, cond, mask)[2, 1], ref[2, 1])
    assert torch.allclose(model(other, t, cond, mask)[:2], ref[:2])  # objects are independent
    assert not torch.allclose(model(x, t, torch.zeros_like(cond), mask), ref)


def test_timestep_embedding_is_sinusoidal_in_thousandths():
    emb = timestep_embedding(torch.tensor([0.0, 0.001]), 8)
    assert emb.shape == (2, 8)
    # t = 0 -> [sin 0 ..., cos 0 ...]; t = 0.001 -> argument 1 at the first frequency.
    assert torch.allclose(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    assert emb[1, 0].item() == pytest.approx(np.sin(1.0), abs=1e-6)


def test_invalid_inputs_name_the_problem():
    model = _model()
    x, t, cond, mask = _inputs()
    empty = mask.clone()
    empty[1] = False
    with pytest.raises(ValueError, match=r"objects \[1\] have no real part"):
        model(x, t, cond, empty)
    with pytest.raises(ValueError, match="x must be"):
        model(x[..., :3], t, cond, mask)
    with pytest.raises(ValueError, match="part_mask must be bool"):
        model(x, t, cond, mask.float())
    with pytest.raises(ValueError, match="cond must be"):
        model(x, t, cond[..., :4], mask)


def test_config_checks():
    with pytest.raises(ValueError, match="divisible by heads"):
        PartDiTConfig(hidden=30, heads=4)
    with pytest.raises(ConfigError, match="unknown key"):
        PartDiTConfig.from_dict({"hiden": 3})
    assert PartDiTConfig.from_dict(SMALL.to_dict()) == SMALL


def test_save_and_load_reproduce_outputs(tmp_path):
    model = _model()
    model.save_pretrained(tmp_path / "dit")
    assert sorted(p.name for p in (tmp_path / "dit").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    loaded = PartDiT.from_pretrained(tmp_path / "dit")
    assert loaded.dit_config == SMALL
    x, t, cond, mask = _inputs()
    assert torch.equal(loaded(x, t, cond, mask), model(x, t, cond, mask))


def test_load_errors_name_the_file_and_tensor(tmp_path):
    _model().save_pretrained(tmp_path / "dit")
    weights = tmp_path / "dit" / "model.safetensors"
    state = load_file(weights)

    with pytest.raises(ArtifactError, match="missing"):
        PartDiT.from_pretrained(tmp_path / "nowhere")

    state["proj_in.weight"] = torch.zeros(32, 5)
    save_file(state, weights)
    with pytest.raises(ArtifactError, match=r"tensor 'proj_in.weight' has shape \[32, 5\]"):
        PartDiT.from_pretrained(tmp_path / "dit")

    del state["proj_in.weight"]
    state["extra"] = torch.zeros(1)
    save_file(state, weights)
    with pytest.raises(
        ArtifactError, match=r"missing \['proj_in.weight'\], unexpected \['extra'\]"
    ):
        PartDiT.from_pretrained(tmp_path / "dit")

    config = tmp_path / "dit" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "width": 3}))
    with pytest.raises(ArtifactError, match="unknown key"):
        PartDiT.from_pretrained(tmp_path / "dit")


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_peft_adapter_trains_saves_and_reloads(tmp_path, use_dora):
    from peft import LoraConfig, PeftModel, get_peft_model

    _model().save_pretrained(tmp_path / "base")
    base_state = {
        k: v.clone() for k, v in PartDiT.from_pretrained(tmp_path / "base").state_dict().items()
    }
    lora = LoraConfig(target_modules=["to_q", "to_k", "to_v", "to_out"], r=4, use_dora=use_dora)
    model = get_peft_model(PartDiT.from_pretrained(tmp_path / "base"), lora)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert sum("cross_attn.to_k" in n for n in trainable) > 0  # cross-attention adapted too
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    x, t, cond, mask = _inputs()
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = (model(x, t, cond, mask) - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(
        not torch.equal(before[n], p) for n, p in model.named_parameters() if p.requires_grad
    )
    base_after = model.get_base_model().state_dict()
    for name, value in base_state.items():
        key = next(k for k in base_after if k.replace(".base_layer", "") == name)
        assert torch.equal(base_after[key], value), name

    model.eval()
    expected = model(x, t, cond, mask)
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    reloaded = PeftModel.from_pretrained(
        PartDiT.from_pretrained(tmp_path / "base"), tmp_path / "adapter"
    )
    assert torch.allclose(reloaded(x, t, cond, mask), expected, atol=1e-6)
    plain = PartDiT.from_pretrained(tmp_path / "base")(x, t, cond, mask)
    assert not torch.allclose(plain, expected, atol=1e-4)


# --- vision -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vision_dir(tmp_path_factory):
    from genalign.models.vision import build_tiny_vision

    return build_tiny_vision(tmp_path_factory.mktemp("vision") / "vision", seed=0)


def _images(n: int, size=(32, 32), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


def test_tiny_vision_encodes_frozen_and_deterministic(vision_dir, tmp_path):
    from genalign.models.vision import VisionEncoder, build_tiny_vision

    enc = VisionEncoder.from_pretrained(vision_dir)
    assert not enc.model.training
    assert not any(p.requires_grad for p in enc.model.parameters())
    feats = enc.encode(_images(3))
    assert feats.shape == (3, 1 + (32 // 8) ** 2, 32) and enc.hidden_size == 32
    assert torch.isfinite(feats).all()
    # Same seed -> same weights -> same features; each image encodes on its own.
    again = VisionEncoder.from_pretrained(build_tiny_vision(tmp_path / "v2", seed=0))
    assert torch.allclose(again.encode(_images(3)), feats, atol=1e-6)
    assert torch.allclose(enc.encode(_images(3)[1:2]), feats[1:2], atol=1e-5)
    other = VisionEncoder.from_pretrained(build_tiny_vision(tmp_path / "v3", seed=1))
    assert not torch.allclose(other.encode(_images(3)), feats, atol=1e-3)


def test_vision_resizes_and_checks_images(vision_dir):
    from genalign.models.vision import VisionEncoder

    enc = VisionEncoder.from_pretrained(vision_dir)
    assert enc.pixel_values(_images(1, size=(48, 64))).shape == (1, 3, 32, 32)
    # ImageNet normalisation: a mid-grey pixel maps to (0.5 - mean) / std.
    grey = np.full((32, 32, 3), 128, dtype=np.uint8)
    assert enc.pixel_values([grey])[0, 0, 0, 0].item() == pytest.approx(
        (128 / 255 - 0.485) / 0.229, abs=1e-5
    )
    with pytest.raises(ValueError, match="image 0 must be a uint8 HxWx3"):
        enc.encode([np.zeros((32, 32, 3), dtype=np.float32)])
    with pytest.raises(ArtifactError, match="no config.json"):
        VisionEncoder.from_pretrained(vision_dir.parent)

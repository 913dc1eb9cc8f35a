"""Flow-matching pretraining and the Euler + CFG part sampler."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from genalign.config.part_dit import FlowMatchingConfig, PartDiTConfig
from genalign.generators.parts import PartGenerator, generator_from_ref
from genalign.models.part_dit import PartDiT
from genalign.models.part_generator import build_tiny_generator
from genalign.models.vision import VisionEncoder
from genalign.storage import ArtifactError, atomic_write_json
from genalign.tracking import NullTracker
from genalign.trainers.flow_matching import pretrain, shuffle_real_parts, warmup_cosine

SMALL = PartDiTConfig(hidden=32, depth=2, heads=2, cond_dim=8)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _toy_set(n: int = 64, seed: int = 0):
    """Objects of 2-4 parts whose latents are a per-slot pattern plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    pattern = torch.randn(8, 4, 4, generator=g)
    latents = pattern[None] + 0.1 * torch.randn(n, 8, 4, 4, generator=g)
    counts = torch.randint(2, 5, (n,), generator=g)
    mask = torch.arange(8)[None] < counts[:, None]
    cond = torch.randn(n, 5, SMALL.cond_dim, generator=g)
    return latents * mask[:, :, None, None], mask, cond


def test_pretrain_lowers_the_loss_and_samples_are_finite(tmp_path, generator_dir):
    latents, mask, cond = _toy_set()
    cfg = FlowMatchingConfig(steps=60, batch_size=16, lr=1e-2, warmup_steps=5, log_every=10)
    tracker = NullTracker()
    metrics = pretrain(cfg, SMALL, latents, mask, cond, tmp_path / "dit", tracker)
    losses = tracker.history("pretrain/loss")
    assert len(losses) == 6 and all(np.isfinite(losses))
    assert (
        metrics["pretrain/loss"]
        == losses[-1]
        < 0.6 * losses[0]
        == 0.6 * metrics["pretrain/loss_first"]
    )
    assert [s for s, m in tracker.metrics] == [10, 20, 30, 40, 50, 60]

    dit = PartDiT.from_pretrained(tmp_path / "dit")
    assert dit.dit_config == SMALL
    gen = PartGenerator(dit, VisionEncoder.from_pretrained(generator_dir / "vision"))
    samples = gen.sample(cond[:4], [2, 3, 4, 2], [0, 1, 2, 3], steps=8)
    assert [s.shape for s in samples] == [(2, 4, 4), (3, 4, 4), (4, 4, 4), (2, 4, 4)]
    assert all(torch.isfinite(s).all() for s in samples)
    # The toy set is a fixed pattern per slot: samples land near it; the starting noise
    # is ~1.13 away on average (E|a - b| for a, b ~ N(0, 1)).
    err = torch.stack([(s - latents[0, :2]).abs().mean() for s in samples[::3]])
    assert err.max() < 0.8


def test_pretrain_is_deterministic_by_seed(tmp_path):
    latents, mask, cond = _toy_set(32)
    cfg = FlowMatchingConfig(steps=4, batch_size=8, warmup_steps=1, log_every=2)
    pretrain(cfg, SMALL, latents, mask, cond, tmp_path / "a", NullTracker())
    pretrain(cfg, SMALL, latents, mask, cond, tmp_path / "b", NullTracker())
    a, b = (PartDiT.from_pretrained(tmp_path / d).state_dict() for d in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pretrain_rejects_mismatched_inputs(tmp_path):
    latents, mask, cond = _toy_set(16)
    cfg = FlowMatchingConfig(steps=2, batch_size=8, warmup_steps=0)
    with pytest.raises(ValueError, match="cond must be"):
        pretrain(cfg, SMALL, latents, mask, cond[..., :3], tmp_path, NullTracker())
    with pytest.raises(ValueError, match="at least one real part"):
        pretrain(cfg, SMALL, latents, torch.zeros_like(mask), cond, tmp_path, NullTracker())
    with pytest.raises(ValueError, match="batch_size 32 exceeds"):
        pretrain(cfg.replace(batch_size=32), SMALL, latents, mask, cond, tmp_path, NullTracker())


def test_flow_matching_config_checks():
    with pytest.raises(ValueError, match="cfg_dropout"):
        FlowMatchingConfig(cfg_dropout=1.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        FlowMatchingConfig(steps=10, warmup_steps=10)
    with pytest.raises(ValueError, match="timestep_scheme"):
        FlowMatchingConfig.from_dict({"timestep_scheme": "cosine"})


def test_warmup_cosine_schedule():
    kw = {"warmup": 10, "total": 110, "min_ratio": 0.1}
    assert warmup_cosine(0, **kw) == pytest.approx(0.1)  # 1/10 of the way up
    assert warmup_cosine(9, **kw) == pytest.approx(1.0)
    assert warmup_cosine(10, **kw) == pytest.approx(1.0)  # cosine starts at its peak
    assert warmup_cosine(60, **kw) == pytest.approx(0.55)  # half way: 0.1 + 0.9 * 0.5
    assert warmup_cosine(110, **kw) == pytest.approx(0.1)


def test_shuffle_real_parts_permutes_only_real_parts():
    x0 = torch.arange(2 * 4, dtype=torch.float32).view(2, 4, 1, 1).expand(2, 4, 4, 4).clone()
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    seen = set()
    for seed in range(20):
        out, out_mask = shuffle_real_parts(x0, mask, torch.Generator().manual_seed(seed))
        assert torch.equal(out_mask, mask)
        assert sorted(out[0, :3, 0, 0].tolist()) == [0.0, 1.0, 2.0] and out[0, 3, 0, 0] == 3.0
        assert torch.equal(out[1], x0[1])
        seen.add(tuple(out[0, :3, 0, 0].tolist()))
    assert len(seen) > 1


# --- sampler ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generator_dir(tmp_path_factory):
    """A tiny generator whose DiT predicts non-zero velocities."""
    out = build_tiny_generator(tmp_path_factory.mktemp("gen") / "gen", seed=0)
    dit = PartDiT.from_pretrained(out / "dit")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(0.05 * torch.randn_like(p))
    dit.save_pretrained(out / "dit")
    return out


def _cond(gen: PartGenerator, n: int) -> torch.Tensor:
    rng = np.random.default_rng(0)
    return gen.encode_images([rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(n)])


def test_sample_does_not_depend_on_batch_composition(generator_dir):
    gen = generator_from_ref(generator_dir)
    assert isinstance(gen, PartGenerator)
    cond = _cond(gen, 3)
    batch = gen.sample(cond, [2, 5, 8], [11, 22, 33], steps=6, guidance=2.0)
    alone = gen.sample(cond[1:2], [5], [22], steps=6, guidance=2.0)
    assert torch.allclose(alone[0], batch[1], atol=1e-5)
    again = gen.sample(cond, [2, 5, 8], [11, 22, 33], steps=6, guidance=2.0)
    assert all(torch.equal(a, b) for a, b in zip(batch, again))
    other_seed = gen.sample(cond[1:2], [5], [23], steps=6, guidance=2.0)
    assert not torch.allclose(other_seed[0], batch[1])


def test_guidance_matches_its_formula(generator_dir):
    # One Euler step: x_0 = eps + 1 * (u_uncond + g (u_cond - u_uncond)).
    gen = PartGenerator.load(generator_dir)
    cond = _cond(gen, 1)
    eps = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(7))
    mask = torch.ones(1, 3, dtype=torch.bool)
    with torch.no_grad():
        u_c = gen.dit(eps, torch.ones(1), cond, mask)
        u_u = gen.dit(eps, torch.ones(1), torch.zeros_like(cond), mask)
    out = gen.sample(cond, [3], [7], steps=1, guidance=3.0)[0]
    assert torch.allclose(out, (eps + u_u + 3.0 * (u_c - u_u))[0], atol=1e-5)
    plain = gen.sample(cond, [3], [7], steps=1, guidance=1.0)[0]
    assert torch.allclose(plain, (eps + u_c)[0], atol=1e-5)


def test_sample_checks_arguments(generator_dir):
    gen = PartGenerator.load(generator_dir)
    cond = _cond(gen, 2)
    with pytest.raises(ValueError, match="num_parts must be in"):
        gen.sample(cond, [0, 9], [1, 2])
    with pytest.raises(ValueError, match="2 conditions but 1 num_parts"):
        gen.sample(cond, [2], [1, 2])


def test_load_with_adapter_and_decode(generator_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        PartDiT.from_pretrained(generator_dir / "dit"),
        LoraConfig(target_modules=["to_q", "to_k", "to_v", "to_out"], r=4),
    )
    with torch.no_grad():  # peft starts lora_B at zero; move it so the adapter changes outputs
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    model.save_pretrained(tmp_path / "adapter")
    base = PartGenerator.load(generator_dir)
    tuned = generator_from_ref(generator_dir, adapter_dir=tmp_path / "adapter")
    cond = _cond(base, 1)
    a = base.sample(cond, [3], [5], steps=4)[0]
    b = tuned.sample(cond, [3], [5], steps=4)[0]
    assert not torch.allclose(a, b, atol=1e-4)
    meshes = tuned.decode(b)
    assert len(meshes) == 3 and all(m.is_watertight for m in meshes)
    with pytest.raises(ArtifactError, match="no adapter_config.json"):
        PartGenerator.load(generator_dir, adapter_dir=tmp_path)


def test_generator_from_ref_kinds(tmp_path):
    atomic_write_json(tmp_path / "odd" / "genalign.json", {"kind": "odd"})
    with pytest.raises(ArtifactError, match="kind 'odd', expected one of"):
        generator_from_ref(tmp_path / "odd")
    with pytest.raises(ArtifactError, match="genalign.json: missing"):
        generator_from_ref(tmp_path)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model_index.json").write_text(
        json.dumps({"_class_name": "PartCrafterPipeline"})
    )
    atomic_write_json(
        tmp_path / "pc" / "genalign.json", {"kind": "partcrafter", "ref": str(tmp_path / "ckpt")}
    )
    for path in (tmp_path / "pc", tmp_path / "ckpt"):
        with pytest.raises(RuntimeError, match="PartCrafter code importable"):
            generator_from_ref(path)

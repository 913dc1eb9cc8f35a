"""The tiny part generator's pretrained base: the held-out loss is one deterministic number
for given weights, and the committed release (`tiny://part-generator-pretrained`) is what
the tiny preset's `prepare.pretrain` section says, loads, and resolves from the package.

Rebuilding it from the preset is tests/e2e/test_part_base_release.py."""

from __future__ import annotations

import math
from importlib.resources import files
from pathlib import Path

import pytest
import torch

from genalign.artifacts import read_model_card
from genalign.config.part_dit import PartDiTConfig
from genalign.config.part_dpo import PreparePartsConfig
from genalign.config.presets import load_preset
from genalign.losses.diffusion_dpo import masked_mse
from genalign.losses.timesteps import flow_interpolate, flow_target, sample_timesteps
from genalign.models.part_dit import PartDiT
from genalign.storage import sha256_file
from genalign.trainers.flow_matching import heldout_loss
from genalign.trainers.part_base import HELDOUT_METRIC, PRETRAIN_SEED_OFFSET, heldout_seed

SMALL = PartDiTConfig(hidden=16, depth=2, heads=2, cond_dim=8)
RELEASED = Path(str(files("genalign.models") / "released" / "part-generator-pretrained"))


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _model(seed: int) -> PartDiT:
    """A PartDiT whose zero-initialised output layers are perturbed, so outputs are not 0."""
    torch.manual_seed(seed)
    model = PartDiT(SMALL)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _data(n: int = 6):
    g = torch.Generator().manual_seed(3)
    latents = torch.randn(n, SMALL.max_parts, 4, 4, generator=g)
    mask = torch.arange(SMALL.max_parts)[None] < torch.randint(1, SMALL.max_parts + 1, (n,), generator=g)[:, None]
    return latents, mask, torch.randn(n, 5, SMALL.cond_dim, generator=g)


def test_heldout_loss_is_deterministic_for_given_weights():
    latents, mask, cond = _data()
    model = _model(0)
    first = heldout_loss(model, latents, mask, cond, draws=3, seed=7)
    assert math.isfinite(first) and first > 0
    assert heldout_loss(_model(0), latents, mask, cond, draws=3, seed=7) == first
    # the draws are made up front: the batch size changes the rounding, not the number
    assert heldout_loss(model, latents, mask, cond, draws=3, seed=7, batch_size=4) == pytest.approx(first, rel=1e-6)
    assert heldout_loss(_model(1), latents, mask, cond, draws=3, seed=7) != pytest.approx(first, rel=1e-3)
    assert heldout_loss(model, latents, mask, cond, draws=3, seed=8) != pytest.approx(first, rel=1e-3)


def test_heldout_loss_is_the_mean_flow_matching_error_at_its_draws():
    """One draw: t from the scheme, then the noise, from one generator; the conditional
    (no dropout) mean over objects of || u(x_t, t, c) - (x0 - eps) ||^2 on the real parts."""
    latents, mask, cond = _data()
    model = _model(0)
    g = torch.Generator().manual_seed(5)
    t = sample_timesteps(len(latents), "uniform", generator=g)
    eps = torch.randn(latents.shape, generator=g)
    with torch.no_grad():
        expected = masked_mse(model(flow_interpolate(latents, eps, t), t, cond, mask), flow_target(latents, eps), mask)
    got = heldout_loss(model, latents, mask, cond, draws=1, seed=5, timestep_scheme="uniform")
    assert got == pytest.approx(float(expected.double().mean()), rel=1e-6)


def test_heldout_loss_refuses_a_model_in_training_mode():
    latents, mask, cond = _data()
    with pytest.raises(ValueError, match="training mode"):
        heldout_loss(_model(0).train(), latents, mask, cond, draws=1, seed=0)
    with pytest.raises(ValueError, match="draws must be >= 1"):
        heldout_loss(_model(0), latents, mask, cond, draws=0, seed=0)


def test_heldout_objects_have_their_own_seed():
    cfg = PreparePartsConfig()
    assert heldout_seed(cfg) not in (cfg.seed, cfg.seed + PRETRAIN_SEED_OFFSET)
    assert heldout_seed(PreparePartsConfig(seed=cfg.seed + 1)) != heldout_seed(cfg)


def test_released_base_is_what_the_tiny_preset_says():
    """The card's config is the tiny preset's prepare section, so the two cannot drift apart."""
    prepare = load_preset("part-dpo", "tiny")["prepare"]
    assert prepare["base_model"] == "tiny://part-generator-pretrained"
    card = read_model_card(RELEASED)
    assert (card.kind, card.arch, card.method) == ("model", "part-generator", "flow_matching")
    assert card.config == {"pretrain": prepare["pretrain"], "image_size": prepare["image_size"], "seed": prepare["seed"]}
    assert card.extra["torch_threads"] >= 1
    assert card.extra["command"].startswith("python -m genalign.trainers.part_base --preset configs/part-dpo/tiny.yaml")
    loss = card.metrics[HELDOUT_METRIC]
    assert math.isfinite(loss) and 0 < loss < card.metrics["pretrain/loss_first"]
    readme = (RELEASED / "README.md").read_text()
    assert card.extra["command"] in readme and f"{loss:.6f}" in readme


def test_released_weights_load_and_are_finite():
    pretrain = load_preset("part-dpo", "tiny")["prepare"]["pretrain"]
    dit = PartDiT.from_pretrained(RELEASED / "dit")
    cfg = dit.dit_config
    assert (cfg.hidden, cfg.depth, cfg.heads) == (pretrain["hidden"], pretrain["depth"], pretrain["heads"])
    assert all(torch.isfinite(p).all() for p in dit.parameters())
    assert (RELEASED / "vision" / "model.safetensors").is_file()


def test_tiny_ref_copies_the_released_base(tmp_path):
    from genalign.models.refs import resolve

    out = resolve("tiny://part-generator-pretrained", cache=tmp_path)
    assert out == tmp_path / "tiny" / "part-generator-pretrained"
    for name in ("genalign.json", "dit/config.json", "dit/model.safetensors", "vision/model.safetensors"):
        assert sha256_file(out / name) == sha256_file(RELEASED / name)

"""Image-DSPO trainer on the tiny SDXL (32 px, built in code) with random pair tensors:
the loss is finite and starts where the formula says, only the adapter moves (DoRA's
magnitudes included), the saved keys are right, a resumed run equals an uninterrupted
one, and the per-pair weighting and dspo_sdxl's micro-batch switch are exact."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from genalign.config.image_dspo import SDXL_TARGET_MODULES, TrainImageDSPOConfig
from genalign.losses import PREFERENCE_LOSSES
from genalign.models.sdxl import build_tiny_sdxl, eps_from_v
from genalign.storage import ArtifactError
from genalign.tracking import NullTracker
from genalign.trainers.image_dspo import (
    ImageDSPOTrainer,
    PairBatch,
    SDXLPairs,
    attach_unet_adapter,
    load_sdxl_pairs,
    per_pair_losses,
    prediction_and_target,
    train_image_dspo,
)

pytestmark = pytest.mark.integration

IMAGE = 32  # the tiny VAE downsamples by 2: latents [4, 16, 16]
LATENT = IMAGE // 2
TEXT_WIDTH, POOLED_WIDTH = 96, 64  # build_tiny_sdxl's 32 + 64 and 64
N_PAIRS = 6


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny convolutions: a second OpenMP thread only adds contention on a shared machine.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sdxl") / "base"
    build_tiny_sdxl(0, image_size=IMAGE).save_pretrained(out)
    return out


def make_pairs(n: int = N_PAIRS, seed: int = 1, weight: torch.Tensor | None = None) -> SDXLPairs:
    g = torch.Generator().manual_seed(seed)
    time_ids = torch.tensor([[IMAGE, IMAGE, 0, 0, IMAGE, IMAGE]], dtype=torch.float32).repeat(n, 1)
    return SDXLPairs(
        latents_chosen=torch.randn(n, 4, LATENT, LATENT, generator=g),
        latents_rejected=torch.randn(n, 4, LATENT, LATENT, generator=g),
        prompt_embeds=torch.randn(n, 77, TEXT_WIDTH, generator=g),
        pooled=torch.randn(n, POOLED_WIDTH, generator=g),
        time_ids_chosen=time_ids,
        time_ids_rejected=time_ids.clone(),
        weight=torch.ones(n) if weight is None else weight,
    )


def make_cfg(**kw) -> TrainImageDSPOConfig:
    # rank 4 with alpha 8, so a loader that assumed alpha = rank would show; gradient
    # checkpointing (the config's default) is compared with plain backward once, below.
    base = {"steps": 4, "batch_pairs": 2, "grad_accumulation": 2, "checkpoint_every": 2,
            "rank": 4, "alpha": 8.0, "lr": 1e-3, "gradient_checkpointing": False}
    return TrainImageDSPOConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(base_dir, tmp_path_factory):
    """4 DoRA dspo_sdxl steps of 2 x 2 pairs (dropout 0.1)."""
    out = tmp_path_factory.mktemp("run") / "adapter"
    tracker = NullTracker()
    trainer = ImageDSPOTrainer(make_cfg(), make_pairs(), base_dir, out, tracker)
    trainer.setup()
    metrics = trainer.train()
    trainer.save(metrics)
    return trainer, out, tracker, metrics


def test_train_model(trained, base_dir):
    """At step 1 the adapter is the identity (lora_B = 0), so pw = rw, pl = rl and
    d = 0 < 0.1: dspo_sdxl's loss is s^2 with s = sigmoid(-0) = 1/2, i.e. 1/4."""
    from diffusers import UNet2DConditionModel

    trainer, out, tracker, metrics = trained
    losses = tracker.history("train/loss")
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert losses[0] == pytest.approx(0.25, abs=1e-6)
    assert losses[-1] < losses[0]
    for key in ("implicit_accuracy", "reward_margin", "grad_norm", "chosen_policy_ref_mse"):
        assert len(tracker.history(f"train/{key}")) == 4
    assert metrics["steps"] == 4 and metrics["pairs"] == N_PAIRS
    assert tracker.history("train/chosen_policy_ref_mse")[-1] > 0

    # Adapter weights changed from their seeded init, DoRA magnitudes among them.
    torch.manual_seed(trainer.cfg.seed)
    fresh = attach_unet_adapter(UNet2DConditionModel.from_pretrained(base_dir / "unet"), trainer.cfg)
    fresh_params = dict(fresh.named_parameters())
    magnitudes = [n for n in trainer.trainable if "lora_magnitude_vector" in n]
    assert magnitudes and len(magnitudes) * 3 == len(trainer.trainable)
    for name, param in trainer.trainable.items():
        assert "lora_A" in name or "lora_B" in name or "lora_magnitude_vector" in name
        assert not torch.equal(param.detach(), fresh_params[name].detach()), name

    # Base weights did not move.
    base_state = load_file(str(base_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    trained_base = trainer.model.get_base_model().state_dict()
    for name, tensor in base_state.items():
        key = name if name in trained_base else name.replace(".weight", ".base_layer.weight").replace(
            ".bias", ".base_layer.bias")
        assert torch.equal(trained_base[key], tensor), name

    # Saved keys: peft's adapter and diffusers' file hold the same tensors, DoRA included.
    peft_saved = load_file(str(out / "adapter_model.safetensors"))
    assert peft_saved and all(
        k.endswith(("lora_A.weight", "lora_B.weight", "lora_magnitude_vector")) for k in peft_saved
    )
    modules = {k.rsplit(".lora_", 1)[0].removeprefix("base_model.model.") for k in peft_saved}
    assert all(any(m.endswith("." + t) for t in SDXL_TARGET_MODULES) for m in modules)
    assert all(any(m.endswith("." + t) for m in modules) for t in SDXL_TARGET_MODULES)
    assert len(peft_saved) == 3 * len(modules)
    diffusers_file = out / "diffusers" / "pytorch_lora_weights.safetensors"
    with safe_open(str(diffusers_file), "pt") as f:
        keys = set(f.keys())
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    assert keys == {"unet." + k.removeprefix("base_model.model.") for k in peft_saved}
    assert meta["unet.use_dora"] is True and meta["unet.r"] == 4 and meta["unet.lora_alpha"] == 8.0
    assert meta["unet.lora_dropout"] == 0.0
    card = json.loads((out / "genalign.json").read_text())
    assert card["method"] == "image_dspo" and card["adapter_type"] == "dora"
    assert card["loss"] == "dspo_sdxl" and card["metrics"]["steps"] == 4
    assert card["base_model"] == str(base_dir) and len(card["base_model_sha256"]) == 64
    assert card["components"] == {"diffusers_lora": "diffusers"}


def test_resume_equals_uninterrupted(trained, base_dir, tmp_path):
    _, full_out, full_tracker, _ = trained
    out = tmp_path / "adapter"
    train_image_dspo(make_cfg(steps=2), make_pairs(), base_dir, out, NullTracker())
    tracker = NullTracker()
    metrics = train_image_dspo(make_cfg(), make_pairs(), base_dir, out, tracker)
    assert metrics["steps"] == 4
    assert tracker.history("train/loss") == full_tracker.history("train/loss")[2:]
    resumed, full = (load_file(str(d / "adapter_model.safetensors")) for d in (out, full_out))
    assert resumed.keys() == full.keys()
    for name in full:
        assert torch.equal(resumed[name], full[name]), name
    steps = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert steps == ["step_00000002", "step_00000004"]
    with pytest.raises(ValueError, match=r"\['lr'\]"):
        train_image_dspo(make_cfg(steps=6, lr=5e-4), make_pairs(), base_dir, out, NullTracker())


def test_checkpointing_and_weight_scale_leave_the_step_unchanged(base_dir, tmp_path):
    """Gradient checkpointing recomputes the same forward (torch keeps the dropout RNG);
    the loss is sum(w * l) / sum(w), so scaling every weight by 3 changes nothing, while
    weighting one pair 10x changes the step."""
    def one_step(name, weight=None, **kw):
        train_image_dspo(make_cfg(steps=1, checkpoint_every=0, grad_accumulation=1, **kw),
                         make_pairs(weight=weight), base_dir, tmp_path / name)
        return load_file(str(tmp_path / name / "adapter_model.safetensors"))

    reference = one_step("ref")
    for other in (
        one_step("checkpointing", gradient_checkpointing=True),
        one_step("scaled", weight=torch.full((N_PAIRS,), 3.0)),
    ):
        for name in reference:
            torch.testing.assert_close(other[name], reference[name], rtol=1e-6, atol=1e-7)
    uneven = one_step("uneven", weight=torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 10.0]))
    assert any(not torch.allclose(uneven[n], reference[n]) for n in reference)


@pytest.mark.parametrize("far", [True, False])
def test_per_pair_losses_are_the_batch_loss_terms(far):
    """One call per pair gives the terms whose mean is dspo_sdxl's batch loss, with the
    switch on the batch mean of d (0.12 >= 0.1 when far; 0.06 < 0.1 when not)."""
    pw = torch.tensor([0.30, 0.20, 0.25], requires_grad=True)
    pl = torch.tensor([0.31, 0.18, 0.25])
    rw = torch.tensor([0.30, 0.21, 0.24])
    rl = torch.tensor([0.30, 0.20, 0.26])
    d = torch.tensor([0.02, 0.30, 0.04]) if far else torch.tensor([0.02, 0.15, 0.01])
    cfg = TrainImageDSPOConfig(beta=100.0)
    loss_fn = PREFERENCE_LOSSES["dspo_sdxl"]
    losses, chosen, rejected = per_pair_losses(cfg, loss_fn, pw, pl, rw, rl, d)
    batch = loss_fn(pw, pl, rw, rl, beta=100.0, chosen_policy_ref_mse=d)
    torch.testing.assert_close(losses.mean(), batch.loss)
    torch.testing.assert_close(chosen, batch.chosen_reward)
    torch.testing.assert_close(rejected, batch.rejected_reward)
    s_sq = torch.sigmoid(rejected - chosen).square()
    # Alone, pair 0 (d = 0.02 < 0.1) would get s^2 when far and pair 1 (d = 0.15 >= 0.1)
    # s^2 * d when not: the micro-batch's switch decides every pair.
    torch.testing.assert_close(losses, s_sq * d if far else s_sq)
    g_pair, = torch.autograd.grad(losses.mean(), pw, retain_graph=True)
    g_batch, = torch.autograd.grad(batch.loss, pw)
    torch.testing.assert_close(g_pair, g_batch)


def test_v_prediction_errors_are_measured_in_v():
    """A model that predicts v exactly has zero error after predict_noise's eps
    conversion is undone: v_hat = (eps_hat - sigma z_t) / alpha = v."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              prediction_type="v_prediction")
    g = torch.Generator().manual_seed(0)
    z, noise = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    t = torch.tensor([5, 990])
    abar = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    noisy = abar.sqrt() * z + (1 - abar).sqrt() * noise
    v = abar.sqrt() * noise - (1 - abar).sqrt() * z
    inputs = PairBatch(z, noise, t, None, None)
    pred, target = prediction_and_target(scheduler, eps_from_v(v, noisy, abar), inputs, noisy)
    torch.testing.assert_close(pred, v, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(target, v)


def test_load_sdxl_pairs(tmp_path):
    first, second = make_pairs(2, seed=3), make_pairs(3, seed=4)
    for name, pairs in (("a", first), ("b", second)):
        save_file(dict(pairs._asdict()), str(tmp_path / f"{name}.safetensors"))
    loaded = load_sdxl_pairs([tmp_path / "a.safetensors", tmp_path / "b.safetensors"])
    assert loaded.latents_chosen.shape == (5, 4, LATENT, LATENT)
    assert torch.equal(loaded.pooled, torch.cat([first.pooled, second.pooled]))
    save_file({k: v for k, v in first._asdict().items() if k != "pooled"}, str(tmp_path / "c.safetensors"))
    with pytest.raises(ArtifactError, match=r"c.safetensors: missing tensor\(s\) \['pooled'\]"):
        load_sdxl_pairs([tmp_path / "c.safetensors"])
    bad = first._replace(weight=torch.tensor([1.0, 0.0]))
    save_file(dict(bad._asdict()), str(tmp_path / "d.safetensors"))
    with pytest.raises(ValueError, match=r"d.safetensors: weight must be > 0.*rows \[1\]"):
        load_sdxl_pairs([tmp_path / "d.safetensors"])


def test_bad_setups_fail_before_training(base_dir, tmp_path):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(base_dir / "unet")
    with pytest.raises(ValueError, match=r"target_modules \['to_qkv', 'conv_shortcut_x'\] match no module"):
        attach_unet_adapter(unet, make_cfg(target_modules=("to_q", "to_qkv", "conv_shortcut_x")))
    wide = make_pairs()._replace(prompt_embeds=torch.zeros(N_PAIRS, 77, 32))
    with pytest.raises(ValueError, match="prompt_embeds width 32, the U-Net's cross_attention_dim is 96"):
        ImageDSPOTrainer(make_cfg(), wide, base_dir, tmp_path / "x").setup()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="bf16 autocast needs CUDA"):
            ImageDSPOTrainer(make_cfg(mixed_precision="bf16"), make_pairs(), base_dir, tmp_path / "y")
    with pytest.raises(ValueError, match="needs base_model_ref"):
        ImageDSPOTrainer(make_cfg(), make_pairs(), build_tiny_sdxl(0, image_size=IMAGE), tmp_path / "z")

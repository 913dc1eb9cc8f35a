"""SDXL parts (genalign.models.sdxl) on the tiny random-init pipeline built in code, checked
against diffusers' own implementation and the formulas in the module doc."""

import math
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler, EulerDiscreteScheduler, StableDiffusionXLPipeline
from transformers import CLIPTokenizer

from genalign.losses.sds import classifier_free_guidance, sds_loss, sds_weight
from genalign.models.sdxl import (
    PromptEmbeddings,
    add_noise,
    add_time_ids,
    build_tiny_sdxl,
    check_added_conditions,
    decode_latents,
    encode_images,
    encode_prompt,
    eps_from_v,
    load_sdxl,
    predict_noise,
    unconditional_embeddings,
    vae_scaling_factor,
)
from genalign.storage import ArtifactError

PROMPTS = ["a voxel castle on a hill", "a red cube"]


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_sdxl(seed=0)


def time_ids(batch=2):
    return add_time_ids((16, 16), (0, 0), (16, 16), batch, torch.float32)


def noisy_inputs(batch=2):
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(batch, 4, 8, 8, generator=gen)
    noise = torch.randn(batch, 4, 8, 8, generator=gen)
    t = torch.tensor([10, 700][:batch])
    return z, noise, t


def test_tiny_pipeline_has_sdxl_parts(pipe):
    assert isinstance(pipe, StableDiffusionXLPipeline)
    assert vae_scaling_factor(pipe.vae) == 0.13025
    assert isinstance(pipe.tokenizer, CLIPTokenizer) and isinstance(pipe.tokenizer_2, CLIPTokenizer)
    assert pipe.tokenizer.model_max_length == 77 and pipe.tokenizer_2.pad_token == "!"
    unet = pipe.unet.config
    assert unet.addition_embed_type == "text_time"
    assert unet.cross_attention_dim == (
        pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    )
    assert unet.projection_class_embeddings_input_dim == (
        6 * unet.addition_time_embed_dim + pipe.text_encoder_2.config.projection_dim
    )
    sched = pipe.scheduler.config
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler)
    assert (sched.beta_schedule, sched.beta_start, sched.beta_end, sched.num_train_timesteps) == (
        "scaled_linear",
        0.00085,
        0.012,
        1000,
    )


def test_build_is_deterministic_and_keeps_the_global_rng():
    state = torch.random.get_rng_state()
    a, b, c = build_tiny_sdxl(seed=0), build_tiny_sdxl(seed=0), build_tiny_sdxl(seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    w = "conv_in.weight"
    assert not torch.equal(a.unet.state_dict()[w], c.unet.state_dict()[w])


def test_tiny_pipeline_generates(pipe):
    out = pipe(
        PROMPTS[0],
        num_inference_steps=2,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
    )
    assert out.images.shape == (1, 4, 8, 8) and bool(torch.isfinite(out.images).all())


def test_encode_prompt_equals_diffusers(pipe):
    ours = encode_prompt(pipe, PROMPTS)
    with torch.no_grad():
        embeds, _, pooled, _ = pipe.encode_prompt(
            PROMPTS, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False
        )
    assert ours.prompt_embeds.shape == (2, 77, 32 + 64) and ours.pooled.shape == (2, 64)
    assert torch.equal(ours.prompt_embeds, embeds)
    assert torch.equal(ours.pooled, pooled)
    assert not ours.prompt_embeds.requires_grad


def test_encode_prompt_rejects_a_bare_string(pipe):
    with pytest.raises(ValueError, match="non-empty list of str"):
        encode_prompt(pipe, "a red cube")


@pytest.mark.parametrize("force_zeros", [True, False])
def test_unconditional_embeddings_equal_diffusers_negatives(force_zeros):
    pipe = build_tiny_sdxl(seed=0)
    pipe.register_to_config(force_zeros_for_empty_prompt=force_zeros)
    ours = unconditional_embeddings(pipe, 2)
    with torch.no_grad():
        _, neg, _, neg_pooled = pipe.encode_prompt(
            PROMPTS, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True
        )
    assert torch.equal(ours.prompt_embeds, neg) and torch.equal(ours.pooled, neg_pooled)
    assert bool((ours.pooled == 0).all()) == force_zeros


def test_add_time_ids_values():
    ids = add_time_ids((1024, 768), (8, 16), (512, 512), 3, torch.float16)
    assert ids.shape == (3, 6) and ids.dtype == torch.float16
    assert ids.tolist() == [[1024.0, 768.0, 8.0, 16.0, 512.0, 512.0]] * 3
    with pytest.raises(ValueError, match="crop_top_left must be a pair"):
        add_time_ids((16, 16), (0,), (16, 16), 1, torch.float32)


def test_added_condition_width_mismatch_names_both_numbers(pipe):
    """8 numbers per time id: 8 * 6 + 32 = 80 passed where the U-Net's add_embedding takes
    8 * 6 + 64 = 112."""
    with pytest.raises(
        ValueError, match=r"= 80, but .*projection_class_embeddings_input_dim is 112"
    ):
        check_added_conditions(pipe.unet, time_ids(), torch.zeros(2, 32))
    with pytest.raises(ValueError, match=r"x 5 time ids .* = 104, .* is 112"):
        check_added_conditions(pipe.unet, time_ids()[:, :5], torch.zeros(2, 64))
    check_added_conditions(pipe.unet, time_ids(), torch.zeros(2, 64))


def test_predict_noise_shape_and_conditioning(pipe):
    z, noise, t = noisy_inputs()
    emb = encode_prompt(pipe, PROMPTS)
    z_t = add_noise(pipe.scheduler, z, noise, t)
    with torch.no_grad():
        eps = predict_noise(pipe.unet, pipe.scheduler, z_t, t, emb, time_ids())
        direct = pipe.unet(
            z_t,
            t,
            encoder_hidden_states=emb.prompt_embeds,
            added_cond_kwargs={"text_embeds": emb.pooled, "time_ids": time_ids()},
        ).sample
        other = predict_noise(
            pipe.unet,
            pipe.scheduler,
            z_t,
            t,
            emb,
            add_time_ids((16, 16), (4, 4), (16, 16), 2, torch.float32),
        )
    assert eps.shape == z.shape and eps.dtype == torch.float32
    assert torch.equal(eps, direct)
    assert not torch.equal(eps, other)  # the crop coordinates reach the U-Net


def test_predict_noise_batch_mismatch(pipe):
    z, _, t = noisy_inputs()
    emb = encode_prompt(pipe, PROMPTS[:1])
    with pytest.raises(ValueError, match="batch sizes differ"):
        predict_noise(pipe.unet, pipe.scheduler, z, t, emb, time_ids())


def test_eps_from_v_on_fixed_tensors():
    """abar = 1/4: alpha = 1/2, sigma = sqrt(3)/2. v = 2, z_t = 4:
    eps = 1/2 * 2 + sqrt(3)/2 * 4 = 1 + 2 sqrt(3)."""
    v = torch.tensor([[2.0]])
    z_t = torch.tensor([[4.0]])
    abar = torch.tensor([[0.25]])
    assert eps_from_v(v, z_t, abar).item() == pytest.approx(1 + 2 * math.sqrt(3), rel=1e-6)


def test_eps_from_v_inverts_the_v_target():
    z, noise, _ = noisy_inputs()
    abar = torch.tensor([0.9, 0.2]).view(2, 1, 1, 1)
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    v = alpha * noise - sigma * z
    assert torch.allclose(eps_from_v(v, alpha * z + sigma * noise, abar), noise, atol=1e-5)


def test_predict_noise_converts_v_prediction(pipe):
    sched = EulerDiscreteScheduler.from_config(
        pipe.scheduler.config, prediction_type="v_prediction"
    )
    z, noise, t = noisy_inputs()
    emb = encode_prompt(pipe, PROMPTS)
    z_t = add_noise(sched, z, noise, t)
    with torch.no_grad():
        raw = predict_noise(pipe.unet, pipe.scheduler, z_t, t, emb, time_ids())  # the raw output
        eps = predict_noise(pipe.unet, sched, z_t, t, emb, time_ids())
    abar = sched.alphas_cumprod[t].view(2, 1, 1, 1)
    assert torch.allclose(eps, abar.sqrt() * raw + (1 - abar).sqrt() * z_t, atol=1e-6)


def test_unknown_prediction_type(pipe):
    sched = EulerDiscreteScheduler.from_config(pipe.scheduler.config, prediction_type="sample")
    z, _, t = noisy_inputs()
    with pytest.raises(
        ValueError, match="unsupported prediction_type 'sample'; supported: epsilon, v_prediction"
    ):
        predict_noise(pipe.unet, sched, z, t, encode_prompt(pipe, PROMPTS), time_ids())


def test_add_noise_formula_and_schedulers(pipe):
    z, noise, t = noisy_inputs()
    abar = pipe.scheduler.alphas_cumprod[t].view(2, 1, 1, 1)
    ours = add_noise(pipe.scheduler, z, noise, t)
    assert torch.allclose(ours, abar.sqrt() * z + (1 - abar).sqrt() * noise, atol=1e-6)
    # DDPM's add_noise is this formula; Euler's is the variance-exploding z + sigma * eps,
    # which scale_model_input's 1 / sqrt(sigma^2 + 1) = sqrt(abar) turns into it.
    ddpm = DDPMScheduler.from_config(pipe.scheduler.config)
    assert torch.allclose(ours, ddpm.add_noise(z, noise, t), atol=1e-6)
    assert torch.allclose(add_noise(ddpm, z, noise, t), ours)
    euler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    sigma = ((1 - abar) / abar).sqrt()
    ve = euler.add_noise(z, noise, t)
    assert torch.allclose(ve, z + sigma * noise, atol=1e-4)
    assert torch.allclose(ve / (sigma**2 + 1).sqrt(), ours, atol=1e-5)
    with pytest.raises(ValueError, match="integer training timesteps"):
        add_noise(pipe.scheduler, z, noise, t.float())


def test_encode_images_applies_the_scaling_factor(pipe):
    images = torch.linspace(-1, 1, 2 * 3 * 16 * 16).view(2, 3, 16, 16)
    latents = encode_images(pipe.vae, images, posterior="mode")
    with torch.no_grad():
        direct = pipe.vae.encode(images).latent_dist.mode() * 0.13025
    assert latents.shape == (2, 4, 8, 8) and latents.dtype == torch.float32
    assert torch.allclose(latents, direct, atol=1e-6)
    a = encode_images(pipe.vae, images, generator=torch.Generator().manual_seed(1))
    b = encode_images(pipe.vae, images, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, latents)


def test_encode_images_is_differentiable(pipe):
    images = torch.zeros(1, 3, 16, 16, requires_grad=True)
    encode_images(pipe.vae, images, posterior="mode").sum().backward()
    assert images.grad is not None and bool(images.grad.abs().sum() > 0)


def test_decode_latents_divides_by_the_factor(pipe):
    latents = torch.full((1, 4, 8, 8), 0.13025)
    images = decode_latents(pipe.vae, latents)
    with torch.no_grad():
        direct = pipe.vae.decode(torch.ones(1, 4, 8, 8)).sample
    assert images.shape == (1, 3, 16, 16)
    assert torch.allclose(images, direct, atol=1e-6)


def test_vae_errors(pipe):
    with pytest.raises(ValueError, match="unknown posterior 'mean'; valid: sample, mode"):
        encode_images(pipe.vae, torch.zeros(1, 3, 16, 16), posterior="mean")
    with pytest.raises(ValueError, match=r"expected images \[B, 3, H, W\]"):
        encode_images(pipe.vae, torch.zeros(1, 16, 16))
    with pytest.raises(ValueError, match="has no scaling_factor"):
        vae_scaling_factor(SimpleNamespace(config={}))
    half = build_tiny_sdxl(seed=0).vae.to(torch.float16)
    with pytest.raises(ValueError, match="keep it in float32"):
        encode_images(half, torch.zeros(1, 3, 16, 16))


def test_save_and_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "sdxl")
    loaded = load_sdxl(tmp_path / "sdxl")
    z, _, t = noisy_inputs()
    with torch.no_grad():
        emb, emb2 = encode_prompt(pipe, PROMPTS), encode_prompt(loaded, PROMPTS)
        eps = predict_noise(pipe.unet, pipe.scheduler, z, t, emb, time_ids())
        eps2 = predict_noise(loaded.unet, loaded.scheduler, z, t, emb2, time_ids())
    assert torch.equal(emb.prompt_embeds, emb2.prompt_embeds) and torch.equal(
        emb.pooled, emb2.pooled
    )
    assert torch.equal(eps, eps2)
    assert vae_scaling_factor(loaded.vae) == 0.13025
    assert isinstance(loaded.scheduler, EulerDiscreteScheduler)
    assert torch.equal(loaded.scheduler.alphas_cumprod, pipe.scheduler.alphas_cumprod)

    half = load_sdxl(tmp_path / "sdxl", dtype="bfloat16")
    assert half.unet.dtype == half.text_encoder.dtype == half.text_encoder_2.dtype == torch.bfloat16
    assert half.vae.dtype == torch.float32
    with torch.no_grad():
        eps_bf16 = predict_noise(
            half.unet, half.scheduler, z, t, encode_prompt(half, PROMPTS), time_ids()
        )
    assert eps_bf16.dtype == torch.float32 and eps_bf16.shape == z.shape


def test_load_errors(tmp_path):
    with pytest.raises(ArtifactError, match="model_index.json: missing"):
        load_sdxl(tmp_path)
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(ValueError, match="dtype 'fp8' is not one of"):
        load_sdxl(tmp_path, dtype="fp8")


def test_prompt_embeddings_is_a_named_pair():
    emb = PromptEmbeddings(prompt_embeds=torch.zeros(1, 77, 96), pooled=torch.zeros(1, 64))
    prompt_embeds, pooled = emb
    assert prompt_embeds.shape == (1, 77, 96) and pooled.shape == (1, 64)


def test_one_sds_step_reaches_the_images(pipe):
    """Images -> latents (with gradient) -> noised -> guided eps without gradient ->
    sds_loss: the images' gradient is the VAE encoder's vector-Jacobian product with
    w(t) * (eps_hat - eps) / B."""
    images = torch.linspace(-1, 1, 2 * 3 * 16 * 16).view(2, 3, 16, 16).requires_grad_()
    latents = encode_images(pipe.vae, images, posterior="mode")
    _, noise, t = noisy_inputs()
    cond, uncond = encode_prompt(pipe, PROMPTS), unconditional_embeddings(pipe, 2)
    with torch.no_grad():
        z_t = add_noise(pipe.scheduler, latents, noise, t)
        both = PromptEmbeddings(*(torch.cat(pair) for pair in zip(cond, uncond)))
        eps_c, eps_u = predict_noise(
            pipe.unet, pipe.scheduler, z_t.repeat(2, 1, 1, 1), t.repeat(2), both, time_ids(4)
        ).chunk(2)
    weight = sds_weight("dreamfusion", pipe.scheduler.alphas_cumprod, t)
    out = sds_loss(latents, classifier_free_guidance(eps_u, eps_c, 7.5), noise, weight)
    out.loss.backward()
    (expected,) = torch.autograd.grad(
        encode_images(pipe.vae, images, posterior="mode"), images, out.grad / 2
    )
    assert torch.allclose(images.grad, expected, rtol=1e-4, atol=1e-7)
    assert bool(images.grad.abs().sum() > 0)

"""SDXL as a set of differentiable parts: prompt encoding, micro-conditioning, the VAE
with its own scaling factor, noising and the U-Net's noise prediction, for training
loops that call the U-Net themselves (score distillation of a voxel world, DSPO and
Diffusion-DPO of the U-Net).

    pipe = load_sdxl("/models/stable-diffusion-xl-base-1.0", dtype="bfloat16")
    emb = encode_prompt(pipe, ["a voxel castle"])                   # [B, 77, 2048], [B, 1280]
    time_ids = add_time_ids((1024, 1024), (0, 0), (1024, 1024), batch=1, dtype=torch.float32)
    z = encode_images(pipe.vae, images)                             # [-1, 1] -> scaled latents
    z_t = add_noise(pipe.scheduler, z, noise, t)
    eps = predict_noise(pipe.unet, pipe.scheduler, z_t, t, emb, time_ids)

`build_tiny_sdxl(seed)` builds a random-init pipeline of the same classes from configs in
code (two CLIP tokenizers included), for tests and tiny presets; `load_sdxl` loads a
local directory with the layout of stabilityai/stable-diffusion-xl-base-1.0, and the tiny
pipeline's `save_pretrained` writes that layout.

What SDXL needs beyond an SD 1.x loop (Podell et al., "SDXL: Improving Latent Diffusion
Models for High-Resolution Image Synthesis", arXiv:2307.01952):

- two text encoders, CLIP ViT-L (`text_encoder`, width 768) and OpenCLIP ViT-bigG
  (`text_encoder_2`, width 1280): the U-Net cross-attends to both penultimate hidden
  states concatenated on the feature axis (2048), and takes the second encoder's
  projected pooled embedding (1280) as a global condition (section 2.1);
- micro-conditioning on the original size, the crop's top-left corner and the target
  size (section 2.2), six numbers per sample embedded like timesteps; the U-Net's
  `add_embedding` takes 6 * addition_time_embed_dim + 1280 = 2816 inputs;
- a VAE whose latents are scaled by 0.13025 (its config's `scaling_factor`; SD 1.x's
  VAE uses 0.18215) and that overflows in float16 (diffusers' SDXL pipeline upcasts it
  to float32 when its config sets `force_upcast`), so it is kept in float32 here.

Conventions. Noising is the variance-preserving z_t = sqrt(abar_t) * z +
sqrt(1 - abar_t) * eps at integer training timesteps, from the scheduler's
`alphas_cumprod`, whatever the scheduler class; `predict_noise` returns eps in float32
whatever the model's prediction type. The functions never wrap themselves in
`torch.no_grad()`: score distillation runs the U-Net without gradient and backpropagates
through the VAE encoder, DPO the other way round, so the caller decides.

Run: `pytest tests/unit/test_sdxl.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from genalign.storage import ArtifactError

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

# Names `load_sdxl` accepts for the U-Net and text encoders' dtype.
DTYPES = ("float32", "bfloat16", "float16")
# Prediction types `predict_noise` converts to eps (diffusers' `prediction_type`).
PREDICTION_TYPES = ("epsilon", "v_prediction")
# `encode_images` posterior choices: a draw from the VAE posterior or its mode (mean).
POSTERIORS = ("sample", "mode")
# SDXL's micro-conditioning: original (h, w), crop top-left (top, left), target (h, w).
NUM_TIME_IDS = 6

# ---------------------------------------------------------------- the tiny pipeline
# Sizes of `build_tiny_sdxl`. Two encoders of different widths (SDXL: 768 and 1280), so
# a swapped or missing concatenation shows in the shapes; the second encoder's
# projection equals its width, as in SDXL (1280).
TINY_TEXT_HIDDEN = 32
TINY_TEXT_2_HIDDEN = 64
TINY_TEXT_LAYERS = 2
TINY_TEXT_HEADS = 4
TINY_TEXT_INTERMEDIATE = 37  # diffusers' dummy CLIP configs use 37
# CLIP's context length, which SDXL's tokenizers pad and truncate to.
MAX_TOKENS = 77
# SDXL: addition_time_embed_dim 256, 6 * 256 + 1280 = 2816.
TINY_TIME_EMBED = 8
TINY_UNET_CHANNELS = (32, 64)
TINY_UNET_HEAD_DIMS = (2, 4)
TINY_VAE_CHANNELS = (8, 16)  # two blocks: the tiny VAE downsamples by 2 (SDXL's by 8)
TINY_NORM_GROUPS = 8
TINY_IMAGE_SIZE = 16
# SDXL's VAE (stabilityai/stable-diffusion-xl-base-1.0, vae/config.json).
SDXL_VAE_SCALING_FACTOR = 0.13025
# SDXL's scheduler (scheduler/scheduler_config.json of the same repository): an Euler
# sampler over the SD "scaled_linear" betas.
SDXL_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}


def clip_byte_vocab() -> dict[str, int]:
    """A CLIP BPE vocabulary with no merges: the 256 byte-level symbols, the same 256
    with the end-of-word suffix "</w>", then <|startoftext|> and <|endoftext|>.

    In byte-level code-point order these are exactly the first 512 entries of CLIP's own
    vocab.json (openai/clip-vit-large-patch14), so a character has the same id here as
    there; without merges every character is one token.
    """
    from tokenizers import pre_tokenizers

    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": len(symbols) + i for i, s in enumerate(symbols)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


def build_tiny_tokenizers():
    """(tokenizer, tokenizer_2): two real `CLIPTokenizer`s over `clip_byte_vocab()`,
    built offline. As in SDXL, the first pads with <|endoftext|> and the second with "!"
    (OpenCLIP pads with id 0)."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer(vocab=clip_byte_vocab(), merges=[], model_max_length=MAX_TOKENS)
    tokenizer_2 = CLIPTokenizer(
        vocab=clip_byte_vocab(), merges=[], model_max_length=MAX_TOKENS, pad_token="!"
    )
    return tokenizer, tokenizer_2


def build_tiny_sdxl(
    seed: int = 0,
    *,
    image_size: int = TINY_IMAGE_SIZE,
    vae_channels: tuple[int, ...] = TINY_VAE_CHANNELS,
    unet_channels: tuple[int, ...] = TINY_UNET_CHANNELS,
) -> StableDiffusionXLPipeline:
    """A random-init `StableDiffusionXLPipeline` of the real classes, from configs in code.

    The components follow diffusers' own SDXL fast tests (`get_dummy_components` in
    tests/pipelines/stable_diffusion_xl/test_stable_diffusion_xl.py), shrunk: a 2-block
    `UNet2DConditionModel` with `addition_embed_type="text_time"`, cross-attention width
    32 + 64 = 96 (the two encoders' widths) and `projection_class_embeddings_input_dim`
    6 * 8 + 64 = 112; a `CLIPTextModel` (quick-GELU, as CLIP ViT-L) and a
    `CLIPTextModelWithProjection` (GELU, as OpenCLIP bigG); a 2-block `AutoencoderKL`
    with SDXL's scaling factor 0.13025, so 16 x 16 images have 4 x 8 x 8 latents; SDXL's
    `EulerDiscreteScheduler` config. Deterministic: each component is initialised from
    `seed` on a private RNG stream (the caller's global RNG state is left as it was).

    image_size, vae_channels, unet_channels: larger tiny models of the same design (a
    VAE of n blocks downsamples by 2^(n - 1); the U-Net's second block cross-attends;
    the attention head dimensions are the channels / 16).
    """
    if len(unet_channels) != 2:
        raise ValueError(f"build_tiny_sdxl: unet_channels must be two widths, got {unet_channels}")
    factor = 2 ** (len(vae_channels) - 1)
    if image_size % factor:
        raise ValueError(f"build_tiny_sdxl: image_size {image_size} must be a multiple of the VAE's factor {factor}")
    head_dims = TINY_UNET_HEAD_DIMS if tuple(unet_channels) == TINY_UNET_CHANNELS else tuple(
        c // 16 for c in unet_channels)
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer, tokenizer_2 = build_tiny_tokenizers()

    def text_config(tok, hidden: int, act: str) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=len(tok),
            hidden_size=hidden,
            intermediate_size=TINY_TEXT_INTERMEDIATE,
            num_hidden_layers=TINY_TEXT_LAYERS,
            num_attention_heads=TINY_TEXT_HEADS,
            max_position_embeddings=MAX_TOKENS,
            projection_dim=hidden,
            hidden_act=act,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(text_config(tokenizer, TINY_TEXT_HIDDEN, "quick_gelu"))
        torch.manual_seed(seed)
        text_encoder_2 = CLIPTextModelWithProjection(
            text_config(tokenizer_2, TINY_TEXT_2_HIDDEN, "gelu")
        )
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=image_size // factor,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=tuple(unet_channels),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=head_dims,
            transformer_layers_per_block=(1, 2),
            use_linear_projection=True,
            norm_num_groups=TINY_NORM_GROUPS,
            cross_attention_dim=TINY_TEXT_HIDDEN + TINY_TEXT_2_HIDDEN,
            addition_embed_type="text_time",
            addition_time_embed_dim=TINY_TIME_EMBED,
            projection_class_embeddings_input_dim=(
                NUM_TIME_IDS * TINY_TIME_EMBED + TINY_TEXT_2_HIDDEN
            ),
        )
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
            up_block_types=("UpDecoderBlock2D",) * len(vae_channels),
            block_out_channels=tuple(vae_channels),
            latent_channels=4,
            norm_num_groups=TINY_NORM_GROUPS,
            sample_size=image_size,
            scaling_factor=SDXL_VAE_SCALING_FACTOR,
            force_upcast=True,
        )
    pipe = StableDiffusionXLPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        text_encoder_2=text_encoder_2.eval(),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet.eval(),
        scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER),
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_sdxl(directory: Path | str, *, dtype: str | None = None) -> StableDiffusionXLPipeline:
    """Load an SDXL pipeline from a local directory (`model_index.json` and one folder
    per component, the layout of stabilityai/stable-diffusion-xl-base-1.0 and of
    `build_tiny_sdxl(...).save_pretrained`).

    dtype: one of DTYPES for the U-Net and both text encoders; None keeps float32. The
    VAE is always float32 (it overflows in float16). Only local files are read: model
    references are resolved to directories before this call. The invisible watermark
    that diffusers adds to decoded images when its optional package is installed is off,
    so outputs do not depend on what else is installed.
    """
    from diffusers import StableDiffusionXLPipeline

    directory = Path(directory)
    if not (directory / "model_index.json").is_file():
        raise ArtifactError(
            f"{directory / 'model_index.json'}: missing; not a diffusers pipeline directory"
        )
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"load_sdxl: dtype {dtype!r} is not one of {list(DTYPES)}")
    weights_dtype = getattr(torch, dtype or "float32")
    pipe = StableDiffusionXLPipeline.from_pretrained(
        directory,
        dtype={"default": weights_dtype, "vae": torch.float32},
        local_files_only=True,
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------- text conditioning
class PromptEmbeddings(NamedTuple):
    """SDXL's text conditioning of B prompts.

    prompt_embeds: `[B, 77, d1 + d2]` the penultimate hidden states of text_encoder (d1)
        and text_encoder_2 (d2), concatenated in that order on the feature axis.
    pooled: `[B, d2]` text_encoder_2's projected pooled embedding (`text_embeds`).
    """

    prompt_embeds: Tensor
    pooled: Tensor


def encode_prompt(pipe: StableDiffusionXLPipeline, prompts: list[str]) -> PromptEmbeddings:
    """SDXL's text conditioning of `prompts`, without gradient, in text_encoder_2's dtype
    on its device.

    Each tokenizer pads and truncates to its model_max_length (77); each encoder runs with
    `output_hidden_states=True` and gives its penultimate hidden state (hidden_states[-2],
    SDXL's choice: arXiv:2307.01952 section 2.1); the pooled vector is the second
    encoder's `text_embeds`. This is diffusers' `StableDiffusionXLPipeline.encode_prompt`
    without classifier-free guidance, LoRA scaling, textual inversion or clip_skip.
    """
    if isinstance(prompts, str) or not prompts:
        raise ValueError(f"encode_prompt: prompts must be a non-empty list of str, got {prompts!r}")

    def encode(tokenizer, encoder):
        ids = tokenizer(
            prompts,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids  # [B, 77]
        return encoder(ids.to(encoder.device), output_hidden_states=True)

    with torch.no_grad():
        first = encode(pipe.tokenizer, pipe.text_encoder)
        second = encode(pipe.tokenizer_2, pipe.text_encoder_2)
    dtype, device = pipe.text_encoder_2.dtype, pipe.text_encoder_2.device
    prompt_embeds = torch.cat(
        [first.hidden_states[-2].to(device=device, dtype=dtype), second.hidden_states[-2]], dim=-1
    )  # [B, 77, d1 + d2]
    return PromptEmbeddings(prompt_embeds=prompt_embeds, pooled=second.text_embeds)  # [B, d2]


def unconditional_embeddings(pipe: StableDiffusionXLPipeline, batch: int) -> PromptEmbeddings:
    """The conditioning classifier-free guidance contrasts with: `batch` copies of the
    empty prompt's embeddings, or zeros when the pipeline's config says
    `force_zeros_for_empty_prompt` (True in SDXL base's model_index.json). diffusers'
    `encode_prompt` makes the same choice for its negative embeddings when no negative
    prompt is given.
    """
    if batch <= 0:
        raise ValueError(f"unconditional_embeddings: batch must be > 0, got {batch}")
    empty = encode_prompt(pipe, [""] * batch)
    if pipe.config.force_zeros_for_empty_prompt:
        return PromptEmbeddings(
            prompt_embeds=torch.zeros_like(empty.prompt_embeds),
            pooled=torch.zeros_like(empty.pooled),
        )
    return empty


def add_time_ids(
    original_size: tuple[int, int],
    crop_top_left: tuple[int, int],
    target_size: tuple[int, int],
    batch: int,
    dtype: torch.dtype,
    *,
    device: torch.device | str | None = None,
) -> Tensor:
    """SDXL's micro-conditioning `[B, 6]`: (original h, w, crop top, left, target h, w),
    the same row for every sample (arXiv:2307.01952 section 2.2; diffusers'
    `StableDiffusionXLPipeline._get_add_time_ids`).

    For generation, and for training on uncropped images of the output size, this is
    ((H, W), (0, 0), (H, W)).
    """
    sizes = {
        "original_size": original_size,
        "crop_top_left": crop_top_left,
        "target_size": target_size,
    }
    for name, value in sizes.items():
        if len(value) != 2:
            raise ValueError(f"add_time_ids: {name} must be a pair, got {value!r}")
    if batch <= 0:
        raise ValueError(f"add_time_ids: batch must be > 0, got {batch}")
    row = [float(v) for v in (*original_size, *crop_top_left, *target_size)]
    return torch.tensor([row], dtype=dtype, device=device).repeat(batch, 1)  # [B, 6]


def check_added_conditions(unet: UNet2DConditionModel, time_ids: Tensor, pooled: Tensor) -> None:
    """Check the U-Net takes SDXL's added conditions of these widths.

    The U-Net embeds each time id in addition_time_embed_dim numbers and concatenates the
    pooled text embedding, so its `add_embedding` needs
    addition_time_embed_dim * time_ids.shape[-1] + pooled.shape[-1] inputs, which its
    config gives as projection_class_embeddings_input_dim (2816 for SDXL base).
    """
    config = unet.config
    if config.addition_embed_type != "text_time":
        raise ValueError(
            "check_added_conditions: the U-Net's addition_embed_type is "
            f"{config.addition_embed_type!r}, not 'text_time'; not an SDXL U-Net"
        )
    passed = config.addition_time_embed_dim * time_ids.shape[-1] + pooled.shape[-1]
    expected = config.projection_class_embeddings_input_dim
    if passed != expected:
        raise ValueError(
            f"check_added_conditions: addition_time_embed_dim {config.addition_time_embed_dim} x "
            f"{time_ids.shape[-1]} time ids + pooled width {pooled.shape[-1]} = {passed}, but "
            f"the U-Net's projection_class_embeddings_input_dim is {expected}"
        )


# ---------------------------------------------------------------- the VAE
def vae_scaling_factor(vae: AutoencoderKL) -> float:
    """The factor the VAE's latents are multiplied by before diffusion: the checkpoint's
    `config.scaling_factor` (SDXL 0.13025, SD 1.x 0.18215), never a constant in code."""
    if "scaling_factor" not in vae.config:
        raise ValueError(f"vae_scaling_factor: {type(vae).__name__}'s config has no scaling_factor")
    return float(vae.config.scaling_factor)


def _check_float32(vae: AutoencoderKL, name: str) -> None:
    if vae.dtype != torch.float32:
        raise ValueError(
            f"{name}: the VAE is {vae.dtype}; keep it in float32 (SDXL's VAE overflows in "
            "float16; load_sdxl keeps it float32)"
        )


def encode_images(
    vae: AutoencoderKL,
    images: Tensor,
    *,
    posterior: str = "sample",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Scaled latents `[B, 4, H/f, W/f]` (float32) of images `[B, 3, H, W]` in [-1, 1].

    latents = z * scaling_factor with z drawn from the VAE posterior ("sample", as the
    SD training scripts and threestudio's guidance do) or its mode ("mode", the mean;
    deterministic). Computed in float32 with autocast off, so a bfloat16 autocast
    region around the training step does not reach the VAE. Differentiable: gradients
    flow back to `images` (score distillation trains the renderer through this).
    """
    if posterior not in POSTERIORS:
        raise ValueError(
            f"encode_images: unknown posterior {posterior!r}; valid: {', '.join(POSTERIORS)}"
        )
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"encode_images: expected images [B, 3, H, W], got {list(images.shape)}")
    _check_float32(vae, "encode_images")
    with torch.autocast(device_type=images.device.type, enabled=False):
        dist = vae.encode(images.float()).latent_dist
        z = dist.sample(generator) if posterior == "sample" else dist.mode()
    return z * vae_scaling_factor(vae)


def decode_latents(vae: AutoencoderKL, latents: Tensor) -> Tensor:
    """Images `[B, 3, H, W]` (float32), nominally in [-1, 1], of scaled latents: the
    decoder applied to latents / scaling_factor, in float32 with autocast off.

    Not clamped, so gradients pass everywhere; clamp to [-1, 1] when converting to pixels.
    """
    if latents.ndim != 4:
        raise ValueError(
            f"decode_latents: expected latents [B, C, h, w], got {list(latents.shape)}"
        )
    _check_float32(vae, "decode_latents")
    with torch.autocast(device_type=latents.device.type, enabled=False):
        return vae.decode(latents.float() / vae_scaling_factor(vae)).sample


# ---------------------------------------------------------------- noising and the U-Net
def _abar(scheduler: SchedulerMixin, t: Tensor, like: Tensor) -> Tensor:
    """abar_t `[B, 1, ..., 1]` (float32) from the scheduler's `alphas_cumprod`."""
    if t.ndim != 1 or t.shape[0] != like.shape[0]:
        raise ValueError(
            f"t must be [B] = [{like.shape[0]}] to match {list(like.shape)}, got {list(t.shape)}"
        )
    if t.dtype != torch.long:
        raise ValueError(f"t must be integer training timesteps (long), got {t.dtype}")
    abar = scheduler.alphas_cumprod.to(device=like.device, dtype=torch.float32)[t]  # [B]
    return abar.view(-1, *([1] * (like.ndim - 1)))


def add_noise(scheduler: SchedulerMixin, latents: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """z_t = sqrt(abar_t) * z + sqrt(1 - abar_t) * eps `[B, ...]` at integer timesteps t `[B]`.

    Written out from `scheduler.alphas_cumprod` rather than `scheduler.add_noise`: that
    is the same formula for DDPM/DDIM schedulers, but `EulerDiscreteScheduler.add_noise`
    returns the variance-exploding z + sigma_t * eps with sigma_t = sqrt((1 - abar_t) /
    abar_t), looked up among the timesteps of its current sampling schedule, and leaves
    the division by sqrt(sigma_t^2 + 1) (back to the form above) to `scale_model_input`.
    The U-Net is trained on the form above, so `predict_noise` takes it unscaled for
    every scheduler. Computed in float32, returned in latents' dtype.
    """
    if latents.shape != noise.shape:
        raise ValueError(
            "add_noise: latents and noise shapes differ: "
            f"{list(latents.shape)} vs {list(noise.shape)}"
        )
    abar = _abar(scheduler, t, latents)
    noisy = abar.sqrt() * latents.float() + (1.0 - abar).sqrt() * noise.float()
    return noisy.to(latents.dtype)


def eps_from_v(v: Tensor, noisy_latents: Tensor, abar: Tensor) -> Tensor:
    """eps from a v-prediction (Salimans & Ho, arXiv:2202.00512):

        eps = sqrt(abar_t) * v + sqrt(1 - abar_t) * z_t,

    since with alpha = sqrt(abar_t), sigma = sqrt(1 - abar_t), z_t = alpha z + sigma eps
    and v = alpha eps - sigma z: alpha v + sigma z_t = (alpha^2 + sigma^2) eps = eps.
    abar: `[B, 1, ..., 1]` (or broadcastable), float32.
    """
    return abar.sqrt() * v.float() + (1.0 - abar).sqrt() * noisy_latents.float()


def predict_noise(
    unet: UNet2DConditionModel,
    scheduler: SchedulerMixin,
    noisy_latents: Tensor,
    t: Tensor,
    embeddings: PromptEmbeddings,
    time_ids: Tensor,
) -> Tensor:
    """The U-Net's eps `[B, 4, h, w]` (float32) for z_t `[B, 4, h, w]` at integer t `[B]`.

    The U-Net gets `encoder_hidden_states` = embeddings.prompt_embeds `[B, 77, d1+d2]`
    and `added_cond_kwargs` = {"text_embeds": embeddings.pooled `[B, d2]`, "time_ids":
    time_ids `[B, 6]`}, all cast to its dtype (an SDXL U-Net needs both added
    conditions, and `check_added_conditions` checks their widths first). z_t is the
    variance-preserving form of `add_noise` and is not passed through
    `scheduler.scale_model_input`. A "v_prediction" model's output is converted with
    `eps_from_v`; the prediction type is the scheduler config's, as in diffusers.
    For classifier-free guidance, concatenate the conditional and unconditional inputs
    on the batch axis.
    """
    prediction_type = scheduler.config.prediction_type
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"predict_noise: unsupported prediction_type {prediction_type!r}; supported: "
            f"{', '.join(PREDICTION_TYPES)}"
        )
    b = noisy_latents.shape[0]
    batches = {
        "t": t.shape[0],
        "prompt_embeds": embeddings.prompt_embeds.shape[0],
        "pooled": embeddings.pooled.shape[0],
        "time_ids": time_ids.shape[0],
    }
    if any(n != b for n in batches.values()):
        listed = ", ".join(f"{k} {n}" for k, n in batches.items())
        raise ValueError(f"predict_noise: batch sizes differ from noisy_latents' {b}: {listed}")
    check_added_conditions(unet, time_ids, embeddings.pooled)
    abar = _abar(scheduler, t, noisy_latents)
    dtype = unet.dtype
    out = unet(
        noisy_latents.to(dtype),
        t,
        encoder_hidden_states=embeddings.prompt_embeds.to(dtype),
        added_cond_kwargs={
            "text_embeds": embeddings.pooled.to(dtype),
            "time_ids": time_ids.to(dtype),
        },
    ).sample
    if prediction_type == "v_prediction":
        return eps_from_v(out, noisy_latents, abar)
    return out.float()

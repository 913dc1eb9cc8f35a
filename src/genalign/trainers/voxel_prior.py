"""The tiny voxel prior: an SDXL-architecture text-to-image pipeline trained on renders
of procedural voxel structures, so that score distillation on CPU asks a prior that
knows what "a stone tower" looks like from these cameras.

    images, labels = render_structures(cfg, dims=(32, 32, 32), world_scale=2.0, cameras=cams)
    metrics = train_tiny_prior(cfg, dims=..., world_scale=..., cameras=cams, out=Path("prior"))
    pipe = genalign.models.sdxl.load_sdxl("prior")

The data: `structures_per_class` structures of each prompt class of
`genalign.data.voxel_scenes` (distinct seeds), each rendered by the torch voxel
renderer from `views_per_structure` of the training cameras, plus left-right flips.
The model: `build_tiny_sdxl` at the cameras' image size, trained in two steps as latent
diffusion is (Rombach et al., arXiv:2112.10752): first the autoencoder (L1
reconstruction plus a 1e-6 KL term), then, with it frozen, the U-Net on its latents
with the epsilon objective at uniform timesteps of SDXL's schedule, the prompt replaced
by "" for `uncond_prob` of the examples so that classifier-free guidance has an
unconditional branch. The text encoders stay at their random initialisation (frozen):
distinct prompts give distinct, fixed embeddings, which is all a class-conditional
prior needs.

The latent scaling factor is measured, as it was for SD and SDXL: 1 / std of the
trained autoencoder's latents (posterior means) over the training images, written into
the VAE config's `scaling_factor`, from where every consumer reads it.

Deterministic for a config and thread count (its own RNG streams). Run:
`pytest tests/integration/test_voxel_prior.py`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from genalign.config.voxel_sds import TinyPriorConfig
from genalign.data.voxel_map import SOLIDS, palette_colors
from genalign.data.voxel_scenes import PROMPT_CLASSES, make_structure
from genalign.models import sdxl
from genalign.render.cameras import Cameras
from genalign.render.voxels import TorchVoxelRenderer, face_colors
from genalign.storage import atomic_write_json
from genalign.training.seeds import derive_seed

PRIOR_FILE = "prior.json"
KL_WEIGHT = 1e-6
LOG_EVERY = 25
# class_accuracy: fresh structures per class, (t, noise) draws per structure
HELDOUT_STRUCTURES = 4
HELDOUT_REPEATS = 4


def class_prompts() -> dict[str, str]:
    """{class name: prompt} of the procedural classes, in their order."""
    return {name: c.prompt for name, c in PROMPT_CLASSES.items()}


def one_hot_world(blocks: np.ndarray) -> tuple[Tensor, Tensor]:
    """(occupancy [X, Y, Z], material probabilities [X, Y, Z, 7]) of a map's blocks."""
    b = torch.from_numpy(blocks.astype(np.int64))
    occupancy = (b > 0).float()
    materials = torch.nn.functional.one_hot((b - 1).clamp_min(0), len(SOLIDS)).float()
    return occupancy, materials


@torch.no_grad()
def render_structures(
    cfg: TinyPriorConfig, *, dims: tuple[int, int, int], world_scale: float, cameras: Cameras
) -> tuple[Tensor, Tensor]:
    """(images [N, 3, H, W] in [-1, 1], class labels [N]) of the prior's training set."""
    renderer = TorchVoxelRenderer()
    palette = torch.from_numpy(palette_colors())
    rng = np.random.default_rng(derive_seed("voxel-prior-views", cfg.seed))
    images, labels = [], []
    for label, name in enumerate(PROMPT_CLASSES):
        for s in range(cfg.structures_per_class):
            m = make_structure(name, dims, seed=derive_seed("voxel-prior-structure", cfg.seed, name, s) % (2**31))
            occupancy, materials = one_hot_world(m.blocks)
            views = rng.choice(len(cameras), size=min(cfg.views_per_structure, len(cameras)), replace=False)
            out = renderer(occupancy, face_colors(materials, palette), cameras.select(views.tolist()),
                           world_scale=world_scale)
            images.append(out.rgb * 2.0 - 1.0)
            labels += [label] * len(views)
    return torch.cat(images), torch.tensor(labels, dtype=torch.long)


def _bar(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", mininterval=2.0, leave=False)


def train_tiny_prior(
    cfg: TinyPriorConfig,
    *,
    dims: tuple[int, int, int],
    world_scale: float,
    cameras: Cameras,
    out: Path,
    tracker: Any = None,
) -> dict[str, float]:
    """Train the tiny prior (module doc) and save it as a diffusers SDXL directory at
    `out` (safetensors) with `prior.json` (class prompts, image size, data counts).
    Returns its metrics: the last autoencoder L1, the mean denoising loss of the last
    quarter of U-Net steps, `class_accuracy` on fresh structures, the measured scaling
    factor, images and seconds."""
    if cameras.height != cameras.width:
        raise ValueError(f"tiny prior: square images expected, the cameras are {cameras.width}x{cameras.height}")
    factor = 2 ** (len(cfg.vae_channels) - 1)
    if cameras.height % (4 * factor):
        raise ValueError(f"tiny prior: the image size {cameras.height} must be a multiple of {4 * factor} "
                         f"(the VAE's factor {factor} times the U-Net's 2 x 2)")
    start = time.time()
    images, labels = render_structures(cfg, dims=dims, world_scale=world_scale, cameras=cameras)
    size = cameras.height
    pipe = sdxl.build_tiny_sdxl(derive_seed("voxel-prior-init", cfg.seed) % (2**31), image_size=size,
                                vae_channels=tuple(cfg.vae_channels), unet_channels=tuple(cfg.unet_channels))
    gen = torch.Generator().manual_seed(derive_seed("voxel-prior-train", cfg.seed) % (2**63))
    vae, unet = pipe.vae, pipe.unet

    # 1. the autoencoder
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=2 * cfg.lr)
    bar = _bar(cfg.vae_steps, "prior: autoencoder")
    recent: list[float] = []
    for step in range(cfg.vae_steps):
        x = images[torch.randint(0, len(images), (cfg.vae_batch,), generator=gen)]
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample(gen)).sample
        l1 = (rec - x).abs().mean()
        loss = l1 + KL_WEIGHT * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        recent = (recent + [float(l1.detach())])[-LOG_EVERY:]
        if tracker is not None and (step + 1) % LOG_EVERY == 0:
            tracker.log_metrics({"prior/vae_l1": float(np.mean(recent))}, step=step + 1)
        bar.update(1)
    bar.close()
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        latents = torch.cat([vae.encode(images[i:i + 64]).latent_dist.mode() for i in range(0, len(images), 64)])
    scaling = 1.0 / float(latents.std())
    vae.register_to_config(scaling_factor=scaling)
    latents = latents * scaling

    # 2. the denoiser, on frozen latents; prompts embedded once
    prompts = list(class_prompts().values())
    with torch.no_grad():
        emb = sdxl.encode_prompt(pipe, prompts + [""])
    time_ids = sdxl.add_time_ids((size, size), (0, 0), (size, size), batch=cfg.unet_batch, dtype=torch.float32)
    n_train = pipe.scheduler.config.num_train_timesteps
    unet.train()
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr)
    bar = _bar(cfg.unet_steps, "prior: denoiser")
    losses: list[float] = []
    for step in range(cfg.unet_steps):
        idx = torch.randint(0, len(latents), (cfg.unet_batch,), generator=gen)
        z = latents[idx]
        flip = torch.rand(cfg.unet_batch, generator=gen) < 0.5
        z = torch.where(flip[:, None, None, None], z.flip(-1), z)
        cond = labels[idx].clone()
        cond[torch.rand(cfg.unet_batch, generator=gen) < cfg.uncond_prob] = len(prompts)
        t = torch.randint(0, n_train, (cfg.unet_batch,), generator=gen)
        eps = torch.randn(z.shape, generator=gen)
        z_t = sdxl.add_noise(pipe.scheduler, z, eps, t)
        pred = sdxl.predict_noise(unet, pipe.scheduler, z_t, t,
                                  sdxl.PromptEmbeddings(emb.prompt_embeds[cond], emb.pooled[cond]), time_ids)
        loss = (pred - eps).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if tracker is not None and (step + 1) % LOG_EVERY == 0:
            tracker.log_metrics({"prior/denoise_loss": float(np.mean(losses[-LOG_EVERY:]))}, step=step + 1)
        bar.update(1)
    bar.close()
    unet.eval().requires_grad_(False)

    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    metrics = {
        "heldout_class_accuracy": class_accuracy(pipe, dims=dims, world_scale=world_scale, cameras=cameras,
                                                 seed=cfg.seed),
        "vae_l1": float(np.mean(recent)),
        "denoise_loss": float(np.mean(losses[-max(1, len(losses) // 4):])),
        "scaling_factor": scaling,
        "images": float(len(images)),
        "seconds": time.time() - start,
    }
    atomic_write_json(out / PRIOR_FILE, {"model": "tiny", "prompts": class_prompts(), "image_size": size,
                                         "dims": list(dims), "world_scale": world_scale,
                                         "metrics": {k: v for k, v in metrics.items() if k != "seconds"}})
    return metrics


@torch.no_grad()
def denoise_losses(pipe: Any, images: Tensor, prompts: list[str], *, repeats: int, t_low: int, t_high: int,
                   generator: torch.Generator) -> list[float]:
    """Mean ||eps_hat - eps||^2 of the prior on `images` [V, 3, H, W] in [0, 1] under each
    of `prompts`, over `repeats` draws of t (uniform integers in [t_low, t_high)) and eps
    from `generator`, the same draws for every prompt."""
    dev = pipe.unet.device
    size = tuple(images.shape[-2:])
    z = sdxl.encode_images(pipe.vae, images.to(dev) * 2.0 - 1.0, posterior="mode")
    emb = sdxl.encode_prompt(pipe, prompts)
    v = z.shape[0]
    time_ids = sdxl.add_time_ids(size, (0, 0), size, batch=v, dtype=torch.float32).to(dev)
    totals = [0.0] * len(prompts)
    for _ in range(repeats):
        t = torch.randint(t_low, t_high, (v,), generator=generator).to(dev)
        eps = torch.randn(z.shape, generator=generator).to(dev)
        z_t = sdxl.add_noise(pipe.scheduler, z, eps, t)
        for k in range(len(prompts)):
            e = sdxl.PromptEmbeddings(emb.prompt_embeds[k:k + 1].expand(v, -1, -1), emb.pooled[k:k + 1].expand(v, -1))
            totals[k] += float((sdxl.predict_noise(pipe.unet, pipe.scheduler, z_t, t, e, time_ids) - eps).square().mean())
    return [x / repeats for x in totals]


@torch.no_grad()
def class_accuracy(pipe: Any, *, dims: tuple[int, int, int], world_scale: float, cameras: Cameras, seed: int,
                   structures: int = HELDOUT_STRUCTURES, repeats: int = HELDOUT_REPEATS) -> float:
    """Share of fresh structures (seeds the training never drew, `structures` a class,
    two views each) whose class prompt gives the prior its lowest denoising loss
    (`denoise_losses` over `repeats` draws of t in [100, 900)): what the prior knows of
    the classes."""
    renderer = TorchVoxelRenderer()
    palette = torch.from_numpy(palette_colors())
    prompts = list(class_prompts().values())
    rng = np.random.default_rng(derive_seed("voxel-prior-heldout-views", seed))
    correct = total = 0
    for label, name in enumerate(PROMPT_CLASSES):
        for s in range(structures):
            m = make_structure(name, dims, seed=derive_seed("voxel-prior-heldout", seed, name, s) % (2**31))
            occupancy, materials = one_hot_world(m.blocks)
            views = rng.choice(len(cameras), size=min(2, len(cameras)), replace=False).tolist()
            rgb = renderer(occupancy, face_colors(materials, palette), cameras.select(views),
                           world_scale=world_scale).rgb
            gen = torch.Generator().manual_seed(derive_seed("voxel-prior-heldout-noise", seed, name, s) % (2**63))
            losses = denoise_losses(pipe, rgb, prompts, repeats=repeats, t_low=100, t_high=900, generator=gen)
            correct += int(np.argmin(losses)) == label
            total += 1
    return correct / total


def read_prior_info(directory: Path) -> dict[str, Any]:
    """The prior.json of a prior artifact."""
    path = Path(directory) / PRIOR_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; not a voxel prior artifact")
    return json.loads(path.read_text())

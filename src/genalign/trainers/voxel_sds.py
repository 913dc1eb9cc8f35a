"""Score distillation of a voxel world: occupancy and material logits, rendered
differentiably from the training views and pushed by SDS from a text-to-image prior.

    prior = load_prior(prior_dir)                          # the tiny prior or SDXL
    result = optimise_world(cfg, prior=prior, start=world_map, cameras=cams,
                            prompt="a stone tower", variant=0, work=Path("work"), tracker=t)
    write_map(result.map, Path("map.json"))

The state is an occupancy logit per voxel [X, Y, Z] and material scores per voxel
[X, Y, Z, 7] over the solid materials, started from the prepared map (solid voxels at
`occupied_logit`, empty ones at `empty_logit`, a finite value, so that they get
gradient and can appear). A step:

1. occupancy p = sigmoid(logits), materials q = softmax(scores / tau), with tau annealed
   linearly from `temperature_start` to `temperature_end`;
2. render `views_per_step` training views (drawn without replacement) with the chosen
   renderer (`genalign.render.voxels`), images in [-1, 1];
3. latents z = VAE encoder (posterior mode, float32) times the VAE config's scaling
   factor; for each view `noise_samples` draws of t (in the annealed window of
   `genalign.losses.sds.timestep_bounds`) and eps, whose SDS gradients are averaged (a
   lower-variance estimate of the same expectation, for one render's cost);
4. the U-Net under `no_grad` on the conditional and unconditional embeddings (SDXL:
   both text encoders, the pooled embedding and `add_time_ids` of the render size),
   guided with `classifier_free_guidance`; `sds_loss` gives z the gradient
   w(t) (eps_hat - eps) (DreamFusion eq. 3; its docstring derives the detached target);
5. plus the regularisers, each with its `lambda_*`: sparsity (mean p), material entropy
   (of q, weighted by p), smoothness (squared differences of p between face neighbours)
   and connectivity (mean p of the voxels whose block, in the current hard map, is not
   6-connected to the ground);
6. Adam steps, with separate learning rates for occupancy and materials.

Coarse to fine: the steps are split evenly over `resolutions` (the grid's x size; y and
z in the final proportions). Moving up a level, the occupancy logits are upsampled
trilinearly and the material scores by nearest neighbour, except under the bottom
coarse layer, which is taken from the start map at the new resolution (a coarse ground
voxel spans several fine layers: upsampled, a one-block ground would come out several
blocks thick), and Adam starts afresh on the new tensors. The world keeps its extent: world_scale is the final one times the final x
size over the level's.

Every step's randomness (views, timesteps, noise) comes from a generator seeded by
(seed, prompt, step), and checkpoints (every `checkpoint_every` steps: logits, the Adam
state, the logged trajectory, and the map.json of that step) hold the rest, so a run
resumed from a checkpoint ends where an uninterrupted one does.

Run: `pytest tests/integration/test_voxel_sds_optimise.py`.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

from genalign.config.voxel_sds import OptimiseVoxelsConfig
from genalign.data.voxel_map import (
    SOLIDS,
    VoxelMap,
    logits_from_map,
    map_from_probabilities,
    palette_colors,
    write_map,
)
from genalign.data.voxel_scenes import MIN_DIM, class_scores
from genalign.losses.sds import (
    classifier_free_guidance,
    sample_timesteps,
    sds_loss,
    sds_weight,
    timestep_bounds,
)
from genalign.models import sdxl
from genalign.render.cameras import Cameras
from genalign.render.voxels import face_colors, make_renderer
from genalign.training.checkpoints import (
    latest_checkpoint,
    read_checkpoint_state,
    read_checkpoint_tensors,
    restore_checkpoint,
    save_checkpoint,
)
from genalign.training.seeds import derive_seed

_SIX = ndimage.generate_binary_structure(3, 1)
LOGITS_FILE = "logits.safetensors"
TRAJECTORY_FILE = "trajectory.json"


class Prior(NamedTuple):
    """What SDS asks: the pipeline's parts, frozen, and where they run."""

    pipe: Any  # StableDiffusionXLPipeline
    device: torch.device


def load_prior(directory: Path, *, dtype: str = "float32", device: str | None = None) -> Prior:
    """The prior of a train-voxel-prior artifact: the tiny prior saved in it, or the SDXL
    pipeline its prior.json references (resolved through `genalign.models.refs`)."""
    from genalign.models.refs import resolve

    info = json.loads((Path(directory) / "prior.json").read_text())
    local = Path(directory) if info["model"] == "tiny" else resolve(info["model"])
    if not (local / "text_encoder_2").is_dir():
        raise FileNotFoundError(f"{local}: no text_encoder_2; an SDXL pipeline directory has two text encoders")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipe = sdxl.load_sdxl(local, dtype=None if dtype == "float32" else dtype)
    pipe.to(dev)
    for part in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        part.requires_grad_(False).eval()
    return Prior(pipe, dev)


def level_dims(resolution: int, final: tuple[int, int, int]) -> tuple[int, int, int]:
    """The grid of a coarse-to-fine level: x = resolution, y and z in the final proportions."""
    x, y, z = final
    return resolution, max(1, round(resolution * y / x)), max(1, round(resolution * z / x))


def level_at(step: int, steps: int, levels: int) -> int:
    return min(levels - 1, step * levels // steps)


def upsample(occupancy: Tensor, materials: Tensor, dims: tuple[int, int, int]) -> tuple[Tensor, Tensor]:
    """Occupancy logits trilinearly and material scores by nearest neighbour onto `dims`."""
    occ = F.interpolate(occupancy[None, None], size=dims, mode="trilinear", align_corners=False)[0, 0]
    mat = F.interpolate(materials.permute(3, 0, 1, 2)[None], size=dims, mode="nearest")[0].permute(1, 2, 3, 0)
    return occ.contiguous(), mat.contiguous()


def floating_mask(p: Tensor) -> Tensor:
    """1 where the hard map (p > 0.5) has a block not 6-connected to the ground layer."""
    solid = (p.detach() > 0.5).cpu().numpy()
    labels, _ = ndimage.label(solid, structure=_SIX)
    grounded = np.unique(labels[:, 0, :])
    floating = solid & ~np.isin(labels, grounded[grounded > 0])
    return torch.from_numpy(floating).to(p.device, p.dtype)


def regularisers(p: Tensor, q: Tensor) -> dict[str, Tensor]:
    """The four regularisers of the module doc, unweighted."""
    entropy = -(q * q.clamp_min(1e-12).log()).sum(-1)
    smooth = sum((p.diff(dim=a) ** 2).mean() for a in range(3))
    return {
        "sparsity": p.mean(),
        "entropy": (p * entropy).sum() / p.sum().clamp_min(1e-6),
        "smoothness": smooth,
        "connectivity": (p * floating_mask(p)).mean(),
    }


class OptimiseResult(NamedTuple):
    map: VoxelMap
    occupancy: Tensor  # logits at the final grid
    materials: Tensor
    trajectory: list[dict[str, float]]
    metrics: dict[str, float]


def world_metrics(m: VoxelMap) -> dict[str, float]:
    """Block count, occupancy share, the material shares and (from MIN_DIM voxels a side)
    the class scores of a hard map."""
    from genalign.data.voxel_map import floating_share

    hist = m.histogram()
    total = max(1, m.count)
    out = {"blocks": float(m.count), "occupancy_share": m.count / float(np.prod(m.dims)),
           "floating_share": floating_share(m)}
    out.update({f"material/{name}": hist.get(name, 0) / total for name in SOLIDS})
    if min(m.dims) >= MIN_DIM:  # class prototypes exist from MIN_DIM voxels up
        out.update({f"class/{k}": v for k, v in class_scores(m).items()})
    return out


def optimise_world(
    cfg: OptimiseVoxelsConfig,
    *,
    prior: Prior,
    start: VoxelMap,
    cameras: Cameras,
    prompt: str,
    work: Path,
    tracker: Any = None,
    stop_after: int | None = None,
) -> OptimiseResult:
    """Run (or resume from `work`'s checkpoints) the optimisation of the module doc.
    `stop_after`: return after that many steps (for tests of resume)."""
    from tqdm.auto import tqdm

    final_dims = start.dims
    final_x = final_dims[0]
    if cfg.resolutions[-1] != final_x:
        raise ValueError(f"resolutions: the last level {cfg.resolutions[-1]} must be the grid's x size {final_x}")
    dev = prior.device
    pipe = prior.pipe
    vae, unet, sched = pipe.vae, pipe.unet, pipe.scheduler
    renderer = make_renderer(cfg.renderer, **({"step": cfg.render_step} if cfg.renderer == "torch" else {}))
    palette = torch.from_numpy(palette_colors()).to(dev)
    with torch.no_grad():
        emb = sdxl.encode_prompt(pipe, [prompt, ""])
    v = cfg.views_per_step
    b = v * cfg.noise_samples  # latents per step: each view with noise_samples (t, eps) draws
    cond = sdxl.PromptEmbeddings(
        torch.cat([emb.prompt_embeds[:1].expand(b, -1, -1), emb.prompt_embeds[1:].expand(b, -1, -1)]),
        torch.cat([emb.pooled[:1].expand(b, -1), emb.pooled[1:].expand(b, -1)]),
    )
    size = (cameras.height, cameras.width)
    time_ids = sdxl.add_time_ids(size, (0, 0), size, batch=2 * b, dtype=torch.float32).to(dev)
    n_train = sched.config.num_train_timesteps
    alphas = sched.alphas_cumprod.to(dev)
    levels = len(cfg.resolutions)

    def fresh(level: int) -> tuple[Tensor, Tensor]:
        dims = level_dims(cfg.resolutions[level], final_dims)
        lg = logits_from_map(start, occupied=cfg.occupied_logit, empty=cfg.empty_logit)
        occ, mat = torch.from_numpy(lg.occupancy), torch.from_numpy(lg.materials)
        if dims != final_dims:
            # the start map at a coarse level: its solid share per coarse voxel, as logits
            share = F.adaptive_avg_pool3d(torch.from_numpy(start.blocks > 0).float()[None, None], dims)[0, 0]
            occ = torch.where(share >= 0.5, cfg.occupied_logit, cfg.empty_logit).float()
            mat = F.interpolate(mat.permute(3, 0, 1, 2)[None], size=dims, mode="nearest")[0].permute(1, 2, 3, 0)
        return occ.contiguous(), mat.contiguous()

    def make_optimizer(occ: Tensor, mat: Tensor) -> torch.optim.Adam:
        return torch.optim.Adam([{"params": [occ], "lr": cfg.lr_occupancy}, {"params": [mat], "lr": cfg.lr_materials}])

    level, step, trajectory = 0, 0, []
    occ, mat = fresh(0)
    checkpoint = latest_checkpoint(work)
    if checkpoint is not None:
        state = read_checkpoint_state(checkpoint)
        if state.get("prompt") != prompt or state.get("config") != json.loads(json.dumps(cfg.to_dict())):
            raise ValueError(f"{checkpoint}: a checkpoint of another prompt or config; use a fresh work directory")
        level, step, trajectory = state["level"], state["step"], state["trajectory"]
        saved = read_checkpoint_tensors(checkpoint, "logits")
        occ, mat = saved["occupancy"].clone(), saved["materials"].clone()
    occ = occ.to(dev).requires_grad_()
    mat = mat.to(dev).requires_grad_()
    opt = make_optimizer(occ, mat)
    if checkpoint is not None:
        restore_checkpoint(checkpoint, params={"logits": {"occupancy": occ, "materials": mat}}, optimizer=opt)

    def current_map(occ: Tensor, mat: Tensor, ws: float) -> VoxelMap:
        return map_from_probabilities(torch.sigmoid(occ).detach().cpu().numpy(), mat.detach().cpu().numpy(),
                                      world_scale=ws, sequence=step,
                                      metadata={"prompt": prompt, "step": step})

    bar = tqdm(total=cfg.steps, initial=step, desc=f"sds {prompt!r}", unit="step", mininterval=2.0, leave=False)
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    while step < end:
        want = level_at(step, cfg.steps, levels)
        if want != level:
            dims = level_dims(cfg.resolutions[want], final_dims)
            o, m_ = upsample(occ.detach(), mat.detach(), dims)
            # The bottom coarse layer spans several fine layers, so a one-voxel ground
            # would come out thicker: the fine voxels under it are taken from the start
            # map at the new resolution instead.
            below = dims[1] // tuple(occ.shape)[1]
            o0, m0 = fresh(want)
            o[:, :below], m_[:, :below] = o0[:, :below].to(dev), m0[:, :below].to(dev)
            occ, mat = o.requires_grad_(), m_.requires_grad_()
            opt = make_optimizer(occ, mat)
            level = want
        dims = tuple(occ.shape)
        ws = start.world_scale * final_x / dims[0]
        gen = torch.Generator().manual_seed(derive_seed("voxel-sds", cfg.seed, prompt, step) % (2**63))
        frac = step / cfg.steps
        tau = cfg.temperature_start + (cfg.temperature_end - cfg.temperature_start) * frac
        p = torch.sigmoid(occ)
        q = torch.softmax(mat / tau, dim=-1)
        views = torch.randperm(len(cameras), generator=gen)[:v]
        rgb = renderer(p, face_colors(q, palette), cameras.select(views), world_scale=ws).rgb
        z = sdxl.encode_images(vae, rgb * 2.0 - 1.0, posterior="mode").repeat_interleave(cfg.noise_samples, 0)
        t_min, t_max = timestep_bounds(step, cfg.steps, max_start=cfg.t_max_start, max_end=cfg.t_max_end,
                                       min_t=cfg.t_min)
        t = sample_timesteps(gen, b, n_train, t_min, t_max).to(dev)
        eps = torch.randn(z.shape, generator=gen).to(dev)
        with torch.no_grad():
            z_t = sdxl.add_noise(sched, z.detach(), eps, t)
            pred = sdxl.predict_noise(unet, sched, torch.cat([z_t, z_t]), torch.cat([t, t]), cond, time_ids)
            eps_cond, eps_uncond = pred.chunk(2)
            eps_hat = classifier_free_guidance(eps_uncond, eps_cond, cfg.guidance_scale)
        sds = sds_loss(z, eps_hat, eps, sds_weight(cfg.weighting, alphas, t))
        reg = regularisers(p, q)
        loss = (sds.loss + cfg.lambda_sparsity * reg["sparsity"] + cfg.lambda_entropy * reg["entropy"]
                + cfg.lambda_smoothness * reg["smoothness"] + cfg.lambda_connectivity * reg["connectivity"])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"optimise-voxels: the loss is not finite at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            row = {"step": float(step), "loss/sds": float(sds.loss.detach()), "grad_norm/latents": float(sds.grad.norm()),
                   "temperature": tau, "t_max": t_max, "grid": float(dims[0]),
                   **{f"loss/{k}": float(x.detach()) for k, x in reg.items()},
                   **world_metrics(current_map(occ, mat, ws))}
            trajectory.append(row)
            if tracker is not None:
                tracker.log_metrics({k: x for k, x in row.items() if k != "step"}, step=step)
        if tracker is not None and (step % cfg.image_every == 0 or step == cfg.steps):
            _log_render(rgb, work / "renders" / f"step_{step:06d}.png", tracker)
        if step % cfg.checkpoint_every == 0 and step < cfg.steps:
            path = save_checkpoint(work, step, tensors={"logits": {"occupancy": occ, "materials": mat}},
                                   optimizer=opt, keep=2,
                                   state={"level": level, "prompt": prompt, "trajectory": trajectory,
                                          "config": cfg.to_dict()})
            write_map(current_map(occ, mat, ws), path / "map.json")
    bar.close()
    final = current_map(occ, mat, start.world_scale * final_x / occ.shape[0])
    return OptimiseResult(final, occ.detach().cpu(), mat.detach().cpu(), trajectory,
                          {k: x for k, x in (trajectory[-1] if trajectory else {}).items() if k != "step"})


def images_to_png(rgb: Tensor, path: Path) -> None:
    """Images [V, 3, H, W] in [0, 1] side by side as one PNG (atomically)."""
    from PIL import Image

    from genalign.storage import atomic_write_bytes

    row = (rgb.detach().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.concatenate(list(row), axis=1)).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def _log_render(rgb: Tensor, path: Path, tracker: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    images_to_png(rgb, path)
    tracker.log_artifact(path, "renders")


def save_logits(occupancy: Tensor, materials: Tensor, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"occupancy": occupancy.contiguous(), "materials": materials.contiguous()}, str(path))


def final_renders(m: VoxelMap, cameras: Cameras, *, renderer: str = "torch") -> Tensor:
    """[V, 3, H, W] renders of a hard map (one-hot occupancy and materials)."""
    from genalign.trainers.voxel_prior import one_hot_world

    occ, mat = one_hot_world(m.blocks)
    with torch.no_grad():
        return make_renderer(renderer)(occ, face_colors(mat, torch.from_numpy(palette_colors())), cameras,
                                       world_scale=m.world_scale).rgb


__all__ = ["OptimiseResult", "Prior", "final_renders", "images_to_png", "level_dims", "load_prior",
           "optimise_world", "regularisers", "save_logits", "upsample", "world_metrics"]

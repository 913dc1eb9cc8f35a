"""Configs of the voxel-sds stages (the pipeline in `pipelines/voxel_sds.py`).

    prepare-voxels      the source world (a map.json, or a ground plane, cube or empty world)
                        and the cameras (a cameras.json, or views on an orbit), training
                        and held-out
    train-voxel-prior   the text-to-image prior: an SDXL pipeline by reference (hf://, a path,
                        s3://, mlflow://), or the tiny SDXL-architecture prior trained in the
                        run on renders of procedural structures from the same cameras
    optimise-voxels     score distillation of the world for the prompt (variant 0) or the
                        control prompt (variant 1), coarse to fine, with checkpoints
    evaluate-voxels     held-out views before and after, the prior's denoising loss, the
                        prompt-class evidence against the control, validity checks
    register-voxels     maps/trained_map_<source>_<n>/map.json, maps/registry.json and an
                        MLflow model version with lineage

No torch here: the configs load in the pipeline compiler and in the components' bodies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from genalign.config.base import Config, check_range, field
from genalign.config.refs import check_model_ref

# The voxel_map palette (genalign.data.voxel_map.SOLIDS), here so configs need no numpy.
SOLID_MATERIALS = ("Grass", "Dirt", "Stone", "Plank", "Snow", "Sand", "Water")
MAX_DIM = 256


def _check_dims(name: str, dims: list[int]) -> None:
    if len(dims) != 3:
        raise ValueError(f"{name}: expected [x, y, z], got {dims}")
    for d in dims:
        check_range(name, d, ge=1, le=MAX_DIM)


@dataclass(frozen=True)
class OrbitConfig(Config):
    """Views on an orbit around the world (genalign.render.cameras.orbit_cameras)."""

    views: int = field(64, help="Training views; optimisation samples views_per_step of them each step.")
    heldout: int = field(8, help="Held-out views (another seed), seen only by evaluation.")
    size: int = field(64, help="Image side, pixels (the GPU preset renders >= 512 for SDXL).")
    fov_deg: float = field(40.0, help="Horizontal field of view, degrees.")
    elevation_deg: list[float] = field(default_factory=lambda: [15.0, 45.0], help="Elevation range, degrees.")
    zoom: float = field(1.0, help="Divides the distance that frames the whole grid (2: its middle fills the image).")
    seed: int = field(0, help="Seed of the training views; the held-out views use seed + 1.")

    def __post_init__(self) -> None:
        check_range("views", self.views, ge=1)
        check_range("heldout", self.heldout, ge=1)
        check_range("size", self.size, ge=8, le=4096)
        check_range("fov_deg", self.fov_deg, ge=1.0, le=150.0)
        check_range("zoom", self.zoom, ge=0.1, le=10.0)
        if len(self.elevation_deg) != 2 or not -89 <= self.elevation_deg[0] <= self.elevation_deg[1] <= 89:
            raise ValueError(f"elevation_deg: expected [lo, hi] with -89 <= lo <= hi <= 89, got {self.elevation_deg}")


@dataclass(frozen=True)
class PrepareVoxelsConfig(Config):
    """The world an optimisation starts from, and the cameras that see it."""

    init: Literal["map", "ground", "cube", "empty"] = field(
        "ground", help="map: the source map.json as it is; ground: the ground layer; cube: a stone box "
        "on the ground; empty: no block.")
    source: str | None = field(None, help="init map: the map.json (a path or s3://), resized to dims.")
    dims: list[int] = field(default_factory=lambda: [32, 32, 32], help="The final grid, voxels [x, y, z].")
    world_scale: float = field(2.0, help="World units per voxel at dims (the map's worldConfig.worldScale).")
    ground_material: str = field("Grass", help="init ground: the ground layer's material.")
    cameras: str | None = field(None, help="A dataset folder (or s3:// prefix) holding cameras.json (training "
                                "views) and, optionally, heldout_cameras.json; absent: orbit.")
    orbit: OrbitConfig = field(default_factory=OrbitConfig, help="The orbit views (cameras absent).")

    def __post_init__(self) -> None:
        _check_dims("dims", self.dims)
        check_range("world_scale", self.world_scale, gt=0.0)
        if self.ground_material not in SOLID_MATERIALS:
            raise ValueError(f"ground_material: expected one of {list(SOLID_MATERIALS)}, got {self.ground_material!r}")
        if (self.init == "map") != (self.source is not None):
            raise ValueError(f"source: needed exactly when init is 'map' (init {self.init!r}, source {self.source!r})")


@dataclass(frozen=True)
class TinyPriorConfig(Config):
    """The tiny SDXL-architecture prior, trained in the run on renders of procedural
    structures (genalign.data.voxel_scenes) from the training cameras; cached by config."""

    structures_per_class: int = field(12, help="Procedural structures of each prompt class (distinct seeds).")
    views_per_structure: int = field(6, help="Training views each structure is rendered from.")
    vae_channels: list[int] = field(default_factory=lambda: [16, 32, 32],
                                    help="VAE block widths; n blocks downsample by 2^(n-1).")
    unet_channels: list[int] = field(default_factory=lambda: [32, 64], help="U-Net block widths (two).")
    vae_steps: int = field(250, help="Autoencoder training steps.")
    vae_batch: int = field(8, help="Images per autoencoder step.")
    unet_steps: int = field(900, help="Denoiser training steps.")
    unet_batch: int = field(16, help="Latents per denoiser step.")
    lr: float = field(1e-3, help="AdamW learning rate of both (2x for the autoencoder).")
    uncond_prob: float = field(0.1, help="Share of denoiser examples trained with the empty prompt (for CFG).")
    seed: int = field(0, help="Seed of the structures, initialisation and data order.")

    def __post_init__(self) -> None:
        for name in ("structures_per_class", "views_per_structure", "vae_steps", "vae_batch", "unet_steps",
                     "unet_batch"):
            check_range(name, getattr(self, name), ge=1)
        if not 2 <= len(self.vae_channels) <= 4 or len(self.unet_channels) != 2:
            raise ValueError(f"vae_channels: 2-4 widths and unet_channels: 2 widths expected, got "
                             f"{self.vae_channels} and {self.unet_channels}")
        for c in (*self.vae_channels, *self.unet_channels):
            if c < 8 or c % 8:
                raise ValueError(f"vae_channels/unet_channels: widths must be multiples of 8, got {c}")
        check_range("lr", self.lr, gt=0.0)
        check_range("uncond_prob", self.uncond_prob, ge=0.0, lt=1.0)


@dataclass(frozen=True)
class TrainVoxelPriorConfig(Config):
    """The text-to-image prior that score distillation asks."""

    model: str = field("tiny", help="tiny: the tiny prior trained in the run; otherwise an SDXL pipeline "
                       "reference (hf://stabilityai/stable-diffusion-xl-base-1.0, a path, s3://, mlflow://).")
    tiny: TinyPriorConfig = field(default_factory=TinyPriorConfig, help="The tiny prior (model: tiny).")

    def __post_init__(self) -> None:
        if self.model != "tiny":
            check_model_ref(self.model, where="model")


@dataclass(frozen=True)
class OptimiseVoxelsConfig(Config):
    """Score distillation (SDS) of the voxel world, coarse to fine."""

    prompt: str = field("a stone tower", help="The prompt (variant 0).")
    control_prompt: str = field("a sand pyramid", help="The control run's prompt (variant 1).")
    steps: int = field(200, help="Optimisation steps, split evenly over the resolutions.")
    resolutions: list[int] = field(default_factory=lambda: [16, 32],
                                   help="Coarse to fine: the grid's x size at each level; the last is dims' x.")
    views_per_step: int = field(2, help="Training views rendered each step.")
    noise_samples: int = field(1, help="(t, noise) draws per view and step, their SDS gradients averaged.")
    renderer: Literal["torch", "nvdiffrast"] = field("torch", help="torch (CPU or GPU) or nvdiffrast (CUDA).")
    render_step: float = field(0.5, help="torch renderer: sample spacing along a ray, voxel units.")
    guidance_scale: float = field(50.0, help="Classifier-free guidance, diffusers' convention (1 = none).")
    weighting: Literal["dreamfusion", "uniform", "fantasia3d"] = field("dreamfusion", help="w(t).")
    t_min: float = field(0.02, help="Lowest timestep, share of the schedule.")
    t_max_start: float = field(0.98, help="Highest timestep at the start, annealed linearly to t_max_end.")
    t_max_end: float = field(0.5, help="Highest timestep at the end.")
    lr_occupancy: float = field(0.1, help="Adam learning rate of the occupancy logits.")
    lr_materials: float = field(0.1, help="Adam learning rate of the material logits.")
    temperature_start: float = field(2.0, help="Material softmax temperature at the start ...")
    temperature_end: float = field(0.5, help="... annealed linearly to this at the end.")
    occupied_logit: float = field(3.0, help="Initial occupancy logit of a solid voxel.")
    empty_logit: float = field(-6.0, help="Initial occupancy logit of an empty voxel (never -inf: it must get gradient).")
    lambda_sparsity: float = field(0.01, help="Weight of the mean occupancy.")
    lambda_entropy: float = field(0.001, help="Weight of the material entropy of solid voxels.")
    lambda_smoothness: float = field(0.01, help="Weight of the squared occupancy differences of face neighbours.")
    lambda_connectivity: float = field(0.05, help="Weight of the occupancy of blocks not connected to the ground.")
    dtype: Literal["float32", "bfloat16"] = field("float32", help="The prior's U-Net and text encoders (bf16 on GPU).")
    checkpoint_every: int = field(50, help="Steps between checkpoints (map.json + logits + optimiser state).")
    log_every: int = field(10, help="Steps between logged metrics.")
    image_every: int = field(100, help="Steps between logged sample renders.")
    seed: int = field(0, help="Seed of the views, timesteps and noise of every step.")

    def __post_init__(self) -> None:
        for name in ("prompt", "control_prompt"):
            if not getattr(self, name).strip():
                raise ValueError(f"{name}: expected a non-empty prompt")
        if self.prompt == self.control_prompt:
            raise ValueError("control_prompt: must differ from prompt")
        for name in ("steps", "views_per_step", "noise_samples", "checkpoint_every", "log_every", "image_every"):
            check_range(name, getattr(self, name), ge=1)
        if not self.resolutions or any(b <= a for a, b in zip(self.resolutions, self.resolutions[1:])):
            raise ValueError(f"resolutions: expected increasing grid sizes, got {self.resolutions}")
        for r in self.resolutions:
            check_range("resolutions", r, ge=2, le=MAX_DIM)
        if self.steps < len(self.resolutions):
            raise ValueError(f"steps: {self.steps} steps cannot cover {len(self.resolutions)} resolutions")
        check_range("render_step", self.render_step, ge=0.05, le=1.0)
        check_range("guidance_scale", self.guidance_scale, ge=0.0)
        if not 0.0 <= self.t_min <= self.t_max_end <= self.t_max_start <= 1.0:
            raise ValueError("t_min, t_max_end, t_max_start: expected 0 <= t_min <= t_max_end <= t_max_start <= 1, "
                             f"got {self.t_min}, {self.t_max_end}, {self.t_max_start}")
        for name in ("lr_occupancy", "lr_materials", "temperature_start", "temperature_end"):
            check_range(name, getattr(self, name), gt=0.0)
        if not self.empty_logit < self.occupied_logit:
            raise ValueError(f"empty_logit: expected < occupied_logit, got {self.empty_logit} and {self.occupied_logit}")
        check_range("empty_logit", self.empty_logit, ge=-20.0)
        check_range("occupied_logit", self.occupied_logit, le=20.0)
        for name in ("lambda_sparsity", "lambda_entropy", "lambda_smoothness", "lambda_connectivity"):
            check_range(name, getattr(self, name), ge=0.0)


@dataclass(frozen=True)
class EvaluateVoxelsConfig(Config):
    """The optimised world against the start and the control run, on held-out views."""

    denoise_repeats: int = field(8, help="(timestep, noise) draws per held-out view for the prior's denoising loss.")
    t_range: list[float] = field(default_factory=lambda: [0.1, 0.9], help="Timesteps of those draws, shares.")
    seed: int = field(0, help="Seed of those draws (the same for every world and prompt).")
    max_floating_share: float = field(0.05, help="Validity: at most this share of blocks not connected to the ground.")

    def __post_init__(self) -> None:
        check_range("denoise_repeats", self.denoise_repeats, ge=1)
        if len(self.t_range) != 2 or not 0.0 <= self.t_range[0] <= self.t_range[1] <= 1.0:
            raise ValueError(f"t_range: expected [lo, hi] within [0, 1], got {self.t_range}")
        check_range("max_floating_share", self.max_floating_share, ge=0.0, le=1.0)


@dataclass(frozen=True)
class RegisterVoxelsConfig(Config):
    """The optimised map exported and registered."""

    model_name: str = field("genalign-voxel-map", help="Registered model name.")
    aliases: list[str] = field(default_factory=lambda: ["candidate"], help="Aliases always moved to the new version.")
    champion_alias: str = field("champion", help="Alias moved when the prompted class wins against the control.")
    maps_dir: str | None = field(None, help="Where maps/ lives across runs (a path or s3://); absent: only the "
                                 "registration artifact holds the export.")

    def __post_init__(self) -> None:
        from genalign.config.register import RegisterModelConfig

        RegisterModelConfig(model_name=self.model_name, aliases=list(self.aliases),
                            champion_alias=self.champion_alias, require_gate=True)

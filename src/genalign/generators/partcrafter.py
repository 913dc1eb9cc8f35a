"""PartCrafter checkpoints (TripoSG VAE + part DiT + DINOv2) behind the part generator's
interface: `encode_images`, `sample`, `decode`.

PartCrafter (Lin et al. 2025, github wgsxm/PartCrafter, weights on the hub as
`wgsxm/PartCrafter`) is a diffusers-style pipeline. Its code is not a pip package; this
adapter imports it as the package `partcrafter` (the repository's `src/` directory
installed or linked under that name) and needs a CUDA GPU: the VAE decoder extracts
each part's surface from a dense occupancy grid. The project's tiny generator
(`genalign.generators.parts`) needs neither.

The calls mirror PartCrafter's `PartCrafterPipeline.__call__`: image features from
`image_encoder_dinov2(feature_extractor_dinov2(image)).last_hidden_state`; for an object
of n parts the DiT denoises n latent sets `[n, num_tokens, C]` at once with
`attention_kwargs={"num_parts": n}` and the features repeated per part; CFG puts the
unconditional (zero-feature) half first; each part latent is decoded by
`vae.decode` through `hierarchical_extract_geometry`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    import trimesh

PIPELINE_CLASS = "PartCrafterPipeline"

# PartCrafter's inference script defaults (scripts/inference_partcrafter.py).
NUM_TOKENS = 1024
MAX_PARTS = 16
DECODE_BOUNDS = (-1.005, -1.005, -1.005, 1.005, 1.005, 1.005)


def is_partcrafter_checkpoint(directory: Path) -> bool:
    """True for a diffusers directory whose model_index.json names a PartCrafterPipeline."""
    index = Path(directory) / "model_index.json"
    return index.is_file() and json.loads(index.read_text()).get("_class_name") == PIPELINE_CLASS


class PartCrafterGenerator:
    """A loaded PartCrafterPipeline; latents are `[P, NUM_TOKENS, C]` per object."""

    def __init__(self, pipe, *, num_tokens: int = NUM_TOKENS) -> None:
        self.pipe = pipe
        self.num_tokens = num_tokens
        self.device = pipe.device
        self.dtype = pipe.transformer.dtype

    @classmethod
    def load(
        cls,
        checkpoint_dir: Path,
        adapter_dir: Path | None = None,
        *,
        dtype: torch.dtype = torch.float16,
    ) -> PartCrafterGenerator:
        try:
            from partcrafter.pipelines.pipeline_partcrafter import PartCrafterPipeline
        except ImportError as e:
            raise RuntimeError(
                f"{checkpoint_dir}: a PartCrafter checkpoint needs the PartCrafter code importable as "
                "the package 'partcrafter' (github.com/wgsxm/PartCrafter, its src/ directory) and a "
                "CUDA GPU; the tiny part generator needs neither"
            ) from e
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"{checkpoint_dir}: PartCrafter decoding needs a CUDA GPU; none is visible"
            )
        pipe = PartCrafterPipeline.from_pretrained(str(checkpoint_dir)).to("cuda", dtype)
        if adapter_dir is not None:
            from peft import PeftModel

            pipe.transformer = PeftModel.from_pretrained(pipe.transformer, adapter_dir)
        return cls(pipe)

    @torch.no_grad()
    def encode_images(self, images: list[np.ndarray]) -> Tensor:
        from PIL import Image

        pixels = self.pipe.feature_extractor_dinov2(
            [Image.fromarray(im) for im in images], return_tensors="pt"
        ).pixel_values
        encoder = self.pipe.image_encoder_dinov2
        return encoder(pixels.to(self.device, encoder.dtype)).last_hidden_state

    @torch.no_grad()
    def sample(
        self,
        cond: Tensor,
        num_parts: list[int],
        seeds: list[int],
        *,
        steps: int = 50,
        guidance: float = 7.0,
    ) -> list[Tensor]:
        """One object at a time (PartCrafter batches the parts of one object)."""
        channels = self.pipe.transformer.config.in_channels
        out = []
        for features, n, seed in zip(cond, num_parts, seeds):
            if not 1 <= n <= MAX_PARTS:
                raise ValueError(f"sample: num_parts must be in [1, {MAX_PARTS}], got {n}")
            noise = torch.randn(
                n, self.num_tokens, channels, generator=torch.Generator().manual_seed(int(seed))
            )
            x = noise.to(self.device, self.dtype)
            feats = features[None].to(self.device, self.dtype).expand(n, -1, -1)
            feats = torch.cat([torch.zeros_like(feats), feats])  # [2n, N, C], uncond first
            scheduler = self.pipe.scheduler
            scheduler.set_timesteps(steps, device=self.device)
            for t in scheduler.timesteps:
                pred = self.pipe.transformer(
                    torch.cat([x, x]),
                    t.expand(2 * n),
                    encoder_hidden_states=feats,
                    attention_kwargs={"num_parts": n},
                    return_dict=False,
                )[0]
                uncond, cond_pred = pred.chunk(2)
                x = scheduler.step(
                    uncond + guidance * (cond_pred - uncond), t, x, return_dict=False
                )[0]
            out.append(x.float().cpu())
        return out

    @torch.no_grad()
    def decode(self, latent: Tensor) -> list[trimesh.Trimesh]:
        import trimesh
        from partcrafter.utils.inference_utils import hierarchical_extract_geometry

        vae = self.pipe.vae
        vae.set_flash_decoder()
        meshes = []
        for part in latent.to(self.device, self.dtype):
            verts, faces = hierarchical_extract_geometry(
                lambda pts, z=part[None]: vae.decode(z, sampled_points=pts).sample,
                self.device,
                dtype=self.dtype,
                bounds=DECODE_BOUNDS,
                dense_octree_depth=8,
                hierarchical_octree_depth=9,
                max_num_expanded_coords=int(1e8),
            )
            meshes.append(trimesh.Trimesh(verts.astype(np.float32), faces))
        return meshes

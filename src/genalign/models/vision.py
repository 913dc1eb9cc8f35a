"""Frozen image encoder: a transformers `Dinov2Model` whose `last_hidden_state` conditions
the part DiT (PartCrafter conditions on DINOv2 features the same way).

`build_tiny_vision` makes a tiny randomly initialised DINOv2 with a fixed seed and saves
it with `save_pretrained`, beside a `preprocessor_config.json` in the format of
transformers' `BitImageProcessor` (the processor DINOv2 checkpoints ship). A real
DINOv2 directory loads through the same `VisionEncoder.from_pretrained`.

Preprocessing runs in torch (resize of the shortest edge, center crop, rescale,
normalise), so no torchvision is needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from genalign.storage import ArtifactError, atomic_dir, atomic_write_json

PREPROCESSOR_NAME = "preprocessor_config.json"

# DINOv2's normalisation (ImageNet statistics), as in its preprocessor_config.json.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Tiny DINOv2: 32x32 images in 8x8 patches -> 16 patch tokens + CLS, width 32.
TINY_HIDDEN = 32
TINY_LAYERS = 2
TINY_HEADS = 2
TINY_PATCH = 8


def build_tiny_vision(out_dir: Path, seed: int = 0, image_size: int = 32) -> Path:
    """Save a random-init tiny `Dinov2Model` (fixed seed) and its preprocessor to `out_dir`."""
    from transformers import Dinov2Config, Dinov2Model

    if image_size % TINY_PATCH:
        raise ValueError(
            f"image_size must be a multiple of the patch size {TINY_PATCH}, got {image_size}"
        )
    config = Dinov2Config(
        hidden_size=TINY_HIDDEN,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=TINY_HEADS,
        patch_size=TINY_PATCH,
        image_size=image_size,
    )
    # A private RNG stream: building the encoder must not move the caller's global seed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Dinov2Model(config).eval()
    preprocessor = {
        "image_processor_type": "BitImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": image_size},
        "resample": 3,  # PIL bicubic
        "do_center_crop": True,
        "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(IMAGENET_MEAN),
        "image_std": list(IMAGENET_STD),
        "do_convert_rgb": True,
    }
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        atomic_write_json(tmp / PREPROCESSOR_NAME, preprocessor)
    return out_dir


class VisionEncoder:
    """A frozen DINOv2 plus its preprocessing; `encode(images) -> [B, N, C]`."""

    def __init__(
        self, model: torch.nn.Module, preprocessor: dict, *, device: torch.device | str = "cpu"
    ) -> None:
        self.model = model.to(device).eval().requires_grad_(False)
        self.device = torch.device(device)
        size = preprocessor["size"]
        crop = preprocessor["crop_size"]
        self.shortest_edge: int | None = size.get("shortest_edge")
        self.resize_hw = None if self.shortest_edge else (size["height"], size["width"])
        self.crop_hw = (crop["height"], crop["width"]) if preprocessor["do_center_crop"] else None
        self.do_resize = bool(preprocessor["do_resize"])
        self.rescale = float(preprocessor["rescale_factor"]) if preprocessor["do_rescale"] else 1.0
        self.mean = torch.tensor(preprocessor["image_mean"], dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(preprocessor["image_std"], dtype=torch.float32).view(1, 3, 1, 1)
        self.do_normalize = bool(preprocessor["do_normalize"])

    @classmethod
    def from_pretrained(
        cls, directory: Path, *, device: torch.device | str = "cpu"
    ) -> VisionEncoder:
        from transformers import Dinov2Model

        directory = Path(directory)
        path = directory / PREPROCESSOR_NAME
        if not (directory / "config.json").is_file():
            raise ArtifactError(f"{directory}: no config.json; not a saved Dinov2Model")
        if not path.is_file():
            raise ArtifactError(f"{path}: missing; the encoder needs its preprocessing settings")
        try:
            preprocessor = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ArtifactError(f"{path}: invalid JSON ({e})") from e
        model = Dinov2Model.from_pretrained(directory)
        return cls(model, preprocessor, device=device)

    @property
    def hidden_size(self) -> int:
        """Width C of the feature tokens."""
        return self.model.config.hidden_size

    def pixel_values(self, images: list[np.ndarray]) -> Tensor:
        """uint8 HxWx3 images -> normalised float `[B, 3, H', W']` (all the same size)."""
        out = []
        for i, image in enumerate(images):
            if (
                not isinstance(image, np.ndarray)
                or image.dtype != np.uint8
                or image.ndim != 3
                or image.shape[2] != 3
            ):
                desc = (
                    f"{image.dtype} {image.shape}"
                    if isinstance(image, np.ndarray)
                    else type(image).__name__
                )
                raise ValueError(
                    f"VisionEncoder: image {i} must be a uint8 HxWx3 array, got {desc}"
                )
            x = (
                torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
            )  # [1, 3, H, W]
            if self.do_resize:
                x = self._resize(x)
            if self.crop_hw is not None:
                x = _center_crop(x, self.crop_hw)
            out.append(x)
        if len({tuple(x.shape) for x in out}) > 1:
            raise ValueError(
                "VisionEncoder: images differ in size after preprocessing; enable center crop"
            )
        x = torch.cat(out) * self.rescale
        if self.do_normalize:
            x = (x - self.mean) / self.std
        return x

    @torch.no_grad()
    def encode(self, images: list[np.ndarray]) -> Tensor:
        """Feature tokens `[B, N, C]` (DINOv2 `last_hidden_state`: CLS + patch tokens)."""
        if not images:
            raise ValueError("VisionEncoder.encode: no images")
        pixels = self.pixel_values(images).to(self.device)
        return self.model(pixel_values=pixels).last_hidden_state.float()

    def _resize(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if self.shortest_edge is not None:
            s = self.shortest_edge
            hw = (s, max(1, round(w * s / h))) if h <= w else (max(1, round(h * s / w)), s)
        else:
            hw = self.resize_hw
        if (h, w) == hw:
            return x
        # Bicubic with antialiasing, clamped to the pixel range, like PIL's resize.
        return F.interpolate(x, size=hw, mode="bicubic", antialias=True, align_corners=False).clamp(
            0, 255
        )


def _center_crop(x: Tensor, hw: tuple[int, int]) -> Tensor:
    h, w = x.shape[-2:]
    ch, cw = hw
    if h < ch or w < cw:
        raise ValueError(f"VisionEncoder: image of {h}x{w} is smaller than the {ch}x{cw} crop")
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[..., top : top + ch, left : left + cw]

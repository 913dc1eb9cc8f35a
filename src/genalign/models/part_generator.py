"""The part-generator directory and its tiny builder (`tiny://part-generator`).

A generator directory holds

    genalign.json   the model card (`genalign.artifacts.ModelCard`): kind "model",
                    arch "part-generator", components {"dit": "dit", "vision": "vision"}
    dit/            PartDiT.save_pretrained
    vision/         a Dinov2Model + preprocessor_config.json (genalign.models.vision)

`genalign.generators.parts` opens it and samples from it; this module only writes one,
so that the model resolver can build it without importing the sampling code.

    >>> from genalign.models.part_generator import build_tiny_generator
    >>> build_tiny_generator(Path("gen"), seed=0)
"""

from __future__ import annotations

from pathlib import Path

import torch

from genalign.artifacts import MODEL_CARD, ModelCard, write_model_card
from genalign.config.part_dit import PartDiTConfig
from genalign.models.part_dit import PartDiT
from genalign.models.vision import VisionEncoder, build_tiny_vision

META_NAME = MODEL_CARD
# The card's `arch` of a generator directory (and of an adapter over one).
KIND = "part-generator"
COMPONENTS = {"dit": "dit", "vision": "vision"}


def build_tiny_generator(out: Path, seed: int = 0, *, image_size: int = 32) -> Path:
    """Write a random-init generator directory (tiny DINOv2 + default PartDiTConfig)."""
    out = Path(out)
    build_tiny_vision(out / "vision", seed=seed, image_size=image_size)
    cond_dim = VisionEncoder.from_pretrained(out / "vision").hidden_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        dit = PartDiT(PartDiTConfig(cond_dim=cond_dim))
    dit.save_pretrained(out / "dit")
    write_model_card(out, ModelCard(kind="model", arch=KIND, method="random_init", components=dict(COMPONENTS),
                                    config={"seed": seed, "image_size": image_size}))
    return out

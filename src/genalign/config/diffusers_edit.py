"""Config of the `diffusers-edit` executor (`genalign.executors.diffusers_edit`).

An image generator of diffusers edits the question's input image as a planner instruction
asks. The defaults are Flux.2 Klein 4B as its model card and diffusers' integration test
run it (4 steps, guidance 1.0, 512 px, bf16 on a GPU).
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass
from typing import Literal

from genalign.config.base import Config, field
from genalign.config.refs import check_model_ref

PROMPT_FIELDS = ("instruction", "question")


@dataclass(frozen=True)
class DiffusersEditConfig(Config):
    """The `diffusers-edit` executor: a diffusers pipeline conditioned on the input image."""

    model: str = field(
        "hf://black-forest-labs/FLUX.2-klein-4B",
        help="Model reference resolved by `genalign.models.refs.resolve` (path, s3://, "
        "mlflow://, hf://) to a directory `<pipeline>.from_pretrained` loads.",
    )
    # The class diffusers' Flux.2 Klein checkpoints name in their model_index.json.
    pipeline: str = field(
        "Flux2KleinPipeline",
        help="Name of the diffusers pipeline class (`diffusers.<pipeline>`); it must take "
        "image, prompt, height, width, num_inference_steps, guidance_scale and generator.",
    )
    # Klein is step-distilled: 4 steps (model card; diffusers' integration test).
    steps: int = field(4, help="Denoising steps per image (num_inference_steps).")
    # Distilled Klein ignores guidance; 1.0 as in diffusers' integration test.
    guidance_scale: float = field(
        1.0, help="Classifier-free guidance scale; ignored by step-distilled checkpoints."
    )
    # 512 px as diffusers' integration test; the pipeline needs multiples of 16
    # (VAE scale factor 8 times the 2x2 latent patch).
    size: int = field(512, help="Side in pixels of the generated (square) image.")
    seed: int = field(
        0,
        help="Base seed; each image's generator is seeded from (seed, row id, instruction), "
        "so a rerun reproduces every image.",
    )
    device: Literal["cuda", "cpu"] = field(
        "cuda", help="Where the pipeline runs: cuda (a GPU is required) or cpu (tests)."
    )
    dtype: Literal["bfloat16", "float16", "float32"] = field(
        "bfloat16", help="torch dtype the pipeline is loaded in (Klein is released in bf16)."
    )
    # Klein 4B at 512 px takes about a second on one GPU; the limit catches a stuck call.
    timeout_s: float = field(
        120.0, help="Seconds one instruction may take; past it the result is status timeout."
    )
    prompt_template: str = field(
        "{instruction}",
        help="Prompt of the edit, a str.format template with {instruction} and optionally "
        "{question} (the dataset row's question).",
    )

    def __post_init__(self) -> None:
        check_model_ref(self.model, where="model")
        if not self.pipeline.isidentifier():
            raise ValueError(f"pipeline must be a class name, got {self.pipeline!r}")
        if not 1 <= self.steps <= 1000:
            raise ValueError(f"steps must be in [1, 1000], got {self.steps}")
        if not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0):
            raise ValueError(f"guidance_scale must be >= 0 and finite, got {self.guidance_scale}")
        if not 16 <= self.size <= 2048 or self.size % 16:
            raise ValueError(f"size must be a multiple of 16 in [16, 2048], got {self.size}")
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ValueError(f"timeout_s must be > 0 and finite, got {self.timeout_s}")
        try:
            names = [name for _, name, _, _ in string.Formatter().parse(self.prompt_template)]
        except ValueError as e:
            raise ValueError(f"prompt_template {self.prompt_template!r}: {e}") from e
        names = [n for n in names if n is not None]
        unknown = sorted(set(names) - set(PROMPT_FIELDS))
        if unknown:
            raise ValueError(
                f"prompt_template {self.prompt_template!r} uses {unknown}; it may use "
                f"{list(PROMPT_FIELDS)}"
            )
        if "instruction" not in names:
            raise ValueError(
                f"prompt_template {self.prompt_template!r} must contain {{instruction}}"
            )

"""Configuration of the planner-dpo tiny preset's synthetic world: data, executor, critic.

`SpatialDataConfig` drives `genalign.data.spatial_scenes.make_spatial_samples`,
`ExecutorConfig` the `render-view` executor (`genalign.executors.render_view`), and
`OracleConfig` the ground-truth critic (`genalign.scorers.scene_oracle`). No torch here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from genalign.config.base import Config, field

QUESTION_TYPES = ("behind", "left_of", "right_of", "above")


@dataclasses.dataclass(frozen=True)
class SpatialDataConfig(Config):
    """Procedural spatial-QA scenes (`genalign.data.spatial_scenes`)."""

    # All four kinds by default: the planner must read the question to pick the view.
    question_types: tuple[str, ...] = field(
        QUESTION_TYPES,
        help="Question kinds to generate, assigned to samples in turn: behind, left_of, "
        "right_of, above.",
    )
    # Qwen2-VL's image processor never resizes below min_pixels = 56 * 56, and 56 is two
    # merged 28-pixel patches: the smallest image it takes as is.
    image_size: int = field(56, help="Side in pixels of the initial front-view PNG.")
    supersample: int = field(2, help="Rays per pixel side of the front-view image (anti-aliasing).")
    # Scenes hold 3-6 objects; the free ones are distractors for the options.
    max_distractors: int = field(
        2,
        help="Free distractor objects besides the designed ones: 1 up to this many (1 or 2), "
        "at most 6 objects in all, so behind/left_of/right_of scenes (5 designed objects: "
        "X, the answer, two blockers, a canopy) get one and 'above' scenes (2) one or two.",
    )
    # Rejection sampling: a scene is redrawn until every view agrees with its design.
    max_tries: int = field(
        200,
        help="Scene draws per sample before giving up with an error (a draw is rejected "
        "when any view reveals the answer against the design, or only by a thin margin).",
    )

    def __post_init__(self) -> None:
        if not self.question_types:
            raise ValueError("question_types must not be empty")
        unknown = sorted(set(self.question_types) - set(QUESTION_TYPES))
        if unknown:
            raise ValueError(f"unknown question_types {unknown}; valid: {list(QUESTION_TYPES)}")
        if not 16 <= self.image_size <= 512:
            raise ValueError(f"image_size must be in [16, 512], got {self.image_size}")
        if not 1 <= self.supersample <= 8:
            raise ValueError(f"supersample must be in [1, 8], got {self.supersample}")
        if not 1 <= self.max_distractors <= 2:
            raise ValueError(
                f"max_distractors must be in [1, 2] (scenes hold 3-6 objects), "
                f"got {self.max_distractors}"
            )
        if self.max_tries < 1:
            raise ValueError(f"max_tries must be >= 1, got {self.max_tries}")


@dataclasses.dataclass(frozen=True)
class ExecutorConfig(Config):
    """The `render-view` executor: renders the synthetic scene from the named viewpoint."""

    image_size: int = field(
        56, help="Side in pixels of each rendered view (see SpatialDataConfig)."
    )
    supersample: int = field(2, help="Rays per pixel side (anti-aliasing).")
    # A render takes a few milliseconds; the limit exists for the generative executor's
    # sake and so that a stuck call is reported as "timeout", not waited on forever.
    timeout_s: float = field(
        10.0, help="Seconds one instruction may take; past it the result is status timeout."
    )

    def __post_init__(self) -> None:
        if not 16 <= self.image_size <= 512:
            raise ValueError(f"image_size must be in [16, 512], got {self.image_size}")
        if not 1 <= self.supersample <= 16:
            raise ValueError(f"supersample must be in [1, 16], got {self.supersample}")
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ValueError(f"timeout_s must be > 0 and finite, got {self.timeout_s}")


@dataclasses.dataclass(frozen=True)
class OracleConfig(Config):
    """The ground-truth critic of the synthetic scenes (`genalign.scorers.scene_oracle`)."""

    # mean rewards plans whose every instruction helps, so the planner does not learn to
    # list every view; max is "does the best instruction reveal the answer".
    reduce: Literal["mean", "max"] = field(
        "mean",
        help="How a plan's per-instruction outcomes (1 reveals, 0 not) become its score: "
        "mean (share of instructions that reveal) or max (any instruction reveals).",
    )
    # 64 px: the smallest hidden object (a cube of half size 0.13) covers ~16 pixels.
    resolution: int = field(
        64, help="Side in pixels of the object-id buffer visibility is counted on."
    )
    # The generator keeps only scenes whose views are all decided with a margin (visible
    # fractions below 0.3 or above 0.7), so any value in between gives the same answers.
    min_visible_fraction: float = field(
        0.5,
        help="The answer object counts as visible when at least this share of the pixels it "
        "would cover on its own are not hidden by another object.",
    )
    min_visible_pixels: int = field(
        4, help="... and it covers at least this many visible pixels at `resolution`."
    )
    min_reference_fraction: float = field(
        0.2,
        help="The relation is observable only when the reference object (the X of 'behind "
        "the X') is also visible: this share of its own pixels at least.",
    )
    # Eye-level views look at box tops edge-on (<= 10 degrees), high views from ~30 degrees.
    min_above_elevation_deg: float = field(
        20.0,
        help="'on top of' questions: the view must look down on the answer object by at "
        "least this angle (degrees below the horizon) to show what lies on the surface.",
    )

    def __post_init__(self) -> None:
        if not 16 <= self.resolution <= 512:
            raise ValueError(f"resolution must be in [16, 512], got {self.resolution}")
        for name in ("min_visible_fraction", "min_reference_fraction"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {value}")
        if self.min_visible_pixels < 1:
            raise ValueError(f"min_visible_pixels must be >= 1, got {self.min_visible_pixels}")
        if not 0.0 <= self.min_above_elevation_deg < 90.0:
            raise ValueError(
                f"min_above_elevation_deg must be in [0, 90), got {self.min_above_elevation_deg}"
            )

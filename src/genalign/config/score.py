"""Configuration of the scorers (`genalign.scorers`): how each turns an output into a number."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from genalign.config.base import Config, field


@dataclasses.dataclass(frozen=True)
class PenetrationConfig(Config):
    """Inter-part penetration of a part-decomposed mesh (`genalign.scorers.penetration`)."""

    # The worst pair decides: one leg through the seat is a broken chair however clean
    # the other 27 pairs are. "mean" ranks objects with many small overlaps higher.
    reduce: Literal["max", "mean"] = field(
        "max",
        help="Which object-level value becomes the score: penetration_max (worst pair) or "
        "penetration_mean (mean over all part pairs).",
    )
    # PartCrafter voxelises its meshes at 64^3 when it cannot use the exact mesh.
    voxel_resolution: int = field(
        64,
        help="Cells per axis of the voxel-IoU fallback grid over a pair's joint bounding box, "
        "used when a part is not watertight or the boolean engine rejects it.",
    )
    # Depth tells a graze from a part pushed through another. For convex pairs it is a
    # separating-axis test; other pairs take one point-to-surface query per vertex of the
    # intersection solid, so it can be switched off for speed.
    depth: bool = field(
        True,
        help="Also compute depth_max, the largest penetration depth over pairs: the minimum "
        "translation distance of two convex parts, or for other closed parts the largest "
        "distance from a vertex of the intersection solid to the surface of the part it "
        "lies inside (genalign.scorers.penetration).",
    )
    # The tiny preset runs on two cores.
    workers: int = field(
        2,
        help="Most processes that score GLB files in parallel; 1 scores in this process. "
        "More than one start only when the batch is expected to outlast their start-up "
        "(worker_start_s).",
    )
    # benchmarks/penetration_broadphase.py measures it (spawn, imports, first file): 0.8 s
    # for 2 workers on an idle 2-core machine, 1.6 s at a load of 2; rounded up so that a
    # pool starts only where it clearly pays.
    worker_start_s: float = field(
        2.0,
        help="Seconds a pool of worker processes takes to start. The scorer times its first "
        "files in this process and hands the rest to a pool only when they would take "
        "longer than that in this process; 0 starts the pool at once.",
    )
    # The part codec never decodes a part thinner than 2 * 0.02 (MIN_HALF_EXTENT), i.e.
    # never below ~5e-5 volume; 1e-6 only catches flat or collapsed meshes, whose
    # overlap ratio would divide by (nearly) zero.
    min_volume: float = field(
        1e-6,
        help="Parts whose volume is below this are degenerate: counted in "
        "degenerate_parts, and their pairs score 0.",
    )
    # Off only to measure what the broad phase saves (benchmarks/penetration_broadphase.py).
    broad_phase: bool = field(
        True,
        help="Skip pairs whose axis-aligned bounding boxes do not overlap (they score 0). "
        "False runs the exact test on every pair; the scores are the same.",
    )

    def __post_init__(self) -> None:
        # Below 8 cells a part is a handful of voxels; above 512 one grid is 128M cells.
        if not 8 <= self.voxel_resolution <= 512:
            raise ValueError(f"voxel_resolution must be in [8, 512], got {self.voxel_resolution}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if not (math.isfinite(self.worker_start_s) and self.worker_start_s >= 0.0):
            raise ValueError(f"worker_start_s must be >= 0 and finite, got {self.worker_start_s}")
        if not (math.isfinite(self.min_volume) and self.min_volume > 0.0):
            raise ValueError(
                f"min_volume must be > 0 and finite (it guards a division), got {self.min_volume}"
            )


@dataclasses.dataclass(frozen=True)
class ScoreSamplesConfig(Config):
    """The score-samples stage: which scorer (`genalign.scorers.SCORERS`) and its settings."""

    scorer: Literal["penetration"] = field(
        "penetration", help="The scorer, by its name in genalign.scorers.SCORERS, that scores each sample's files."
    )
    penetration: PenetrationConfig = field(
        default_factory=PenetrationConfig, help="Settings of the penetration scorer."
    )

    def scorer_config(self) -> dict:
        """The chosen scorer's own settings, as the scorer table takes them."""
        return {"penetration": self.penetration}[self.scorer].to_dict()

"""prepare-voxels: the world a score distillation starts from, and the cameras that see it.

The world is a source `map.json` (`init: map`, a path or an `s3://` URI, resized to
`dims`) or one built at `dims` (`ground`, `cube`, `empty`: `voxel_map.initial_map`). The
training and held-out cameras come from a dataset folder (`cameras`: its cameras.json
and, when it has one, heldout_cameras.json) or from orbits around the world
(`orbit`: the training views from `orbit.seed`, the held-out ones from `orbit.seed + 1`,
as the config's help says).

    world/
      map.json               the initial world at dims (voxel_map's format)
      cameras.json           the training views (render.cameras' format, OpenCV convention)
      heldout_cameras.json   the held-out views, seen only by evaluate-voxels
      world.json             {source, source_path, init, dims, world_scale, views,
                              heldout_views, image_size: [width, height]}

`source` names the world in the registry (`maps/trained_map_<source>_<n>`): the init
kind, or for `init: map` the source file's stem, or the name of its folder when the
file is called map.json (`worlds/castle/map.json` and `worlds/castle.json` are both
"castle"); characters other than letters, digits, `_`, `-` and `.` become `-`.

A resized source keeps its extent along x, the axis the optimiser's resolutions count:
`world_scale` must be the source's worldScale times its x size over `dims`' x (a 64-wide
world at 2.0 on a 32-wide grid: 4.0), or the stage says which value it expected. Training
and held-out views have one image size. Every input is read and checked before anything
is written: a bad map.json or cameras.json stops the stage with the file, the field and
the block or view it found wrong, and leaves no output.

    genalign stage prepare-voxels --config cfg.yaml --out world=w
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from genalign.artifacts import DATASET, is_remote, materialise
from genalign.config.base import ConfigError
from genalign.config.voxel_sds import PrepareVoxelsConfig
from genalign.data.voxel_map import (
    VoxelMap,
    VoxelMapError,
    initial_map,
    parse_map,
    resize_map,
    write_map,
)
from genalign.render.cameras import (
    CameraError,
    Cameras,
    orbit_cameras,
    parse_cameras,
    write_cameras,
)
from genalign.stages import StageResult
from genalign.storage import atomic_dir, atomic_write_json, write_manifest
from genalign.tracking import Tracker

CAMERAS = "cameras.json"
HELDOUT_CAMERAS = "heldout_cameras.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def run(cfg: PrepareVoxelsConfig, *, world: Path, tracker: Tracker) -> StageResult:
    dims = tuple(cfg.dims)
    with tempfile.TemporaryDirectory(prefix="genalign-prepare-voxels-") as scratch:
        start = _world(cfg, dims, Path(scratch) / "source")
        (train, train_from), (heldout, heldout_from) = _cameras(cfg, dims, Path(scratch) / "cameras")
    if (train.width, train.height) != (heldout.width, heldout.height):
        raise CameraError(
            f"{heldout_from}: held-out images are {heldout.width}x{heldout.height}, the training views' "
            f"({train_from}) {train.width}x{train.height}; expected one image size (evaluation renders both)"
        )
    info = {
        "source": source_name(cfg), "source_path": cfg.source, "init": cfg.init, "dims": list(dims),
        "world_scale": start.world_scale, "views": len(train), "heldout_views": len(heldout),
        "image_size": [train.width, train.height],
    }
    counts = {"blocks": start.count, "views": len(train), "heldout_views": len(heldout)}
    with atomic_dir(world) as tmp:
        write_map(start, tmp / "map.json")
        write_cameras(train, tmp / CAMERAS)
        write_cameras(heldout, tmp / HELDOUT_CAMERAS)
        atomic_write_json(tmp / "world.json", info)
        write_manifest(tmp, kind=DATASET, config=cfg.to_dict(), counts=counts,
                       hash_files=["map.json", CAMERAS, HELDOUT_CAMERAS, "world.json"])
    metrics = {f"prepare/{k}": float(v) for k, v in counts.items()}
    return StageResult(metrics=metrics, summary={**counts, "source": info["source"], "dims": list(dims),
                                                 "world_scale": start.world_scale})


def source_name(cfg: PrepareVoxelsConfig) -> str:
    """The world's name in the registry (module doc)."""
    if cfg.init != "map":
        return cfg.init
    if is_remote(cfg.source):
        path = PurePosixPath(cfg.source[len("s3://"):])
    else:
        path = Path(cfg.source).resolve()
    name = path.parent.name if path.name == "map.json" else path.stem
    return _UNSAFE.sub("-", name).strip("-") or cfg.init


def _world(cfg: PrepareVoxelsConfig, dims: tuple[int, int, int], scratch: Path) -> VoxelMap:
    if cfg.init != "map":
        return initial_map(cfg.init, dims, material=cfg.ground_material, world_scale=cfg.world_scale)
    source = parse_map(_read_json(_fetch(cfg.source, scratch), cfg.source, VoxelMapError, "map file"),
                       where=cfg.source)
    # the source's extent along x, kept at the new grid size
    kept = source.world_scale * source.dims[0] / dims[0]
    if not math.isclose(cfg.world_scale, kept, rel_tol=1e-6):
        raise ConfigError(
            f"world_scale: {cfg.world_scale}, but the source map {cfg.source} ({source.dims} voxels at "
            f"worldScale {source.world_scale}) keeps its extent on dims {list(dims)} only at world_scale "
            f"{kept:g}; set world_scale: {kept:g}"
        )
    if source.dims == dims:
        return initial_map("map", dims, source=source)
    return resize_map(source, dims, world_scale=cfg.world_scale)


def _cameras(cfg: PrepareVoxelsConfig, dims: tuple[int, int, int],
             scratch: Path) -> tuple[tuple[Cameras, str], tuple[Cameras, str]]:
    """(training views, where they came from), (held-out views, where they came from)."""
    orbit = cfg.orbit

    def on_orbit(views: int, seed: int) -> Cameras:
        return orbit_cameras(views, dims, world_scale=cfg.world_scale, size=orbit.size, fov_deg=orbit.fov_deg,
                             elevation_deg=tuple(orbit.elevation_deg), seed=seed, zoom=orbit.zoom)

    def heldout_orbit() -> tuple[Cameras, str]:
        return on_orbit(orbit.heldout, orbit.seed + 1), f"orbit.heldout (orbit.size {orbit.size})"

    if cfg.cameras is None:
        return (on_orbit(orbit.views, orbit.seed), "orbit.views"), heldout_orbit()
    folder = materialise(cfg.cameras, scratch) if is_remote(cfg.cameras) else Path(cfg.cameras)
    if not folder.is_dir():
        raise CameraError(f"cameras: {cfg.cameras} is not a directory; expected a folder holding {CAMERAS}")
    shown = cfg.cameras.rstrip("/")
    train_at = f"{shown}/{CAMERAS}"
    train = parse_cameras(_read_json(folder / CAMERAS, train_at, CameraError, "cameras file"), train_at)
    if not (folder / HELDOUT_CAMERAS).is_file():
        return (train, train_at), heldout_orbit()
    heldout_at = f"{shown}/{HELDOUT_CAMERAS}"
    heldout = parse_cameras(_read_json(folder / HELDOUT_CAMERAS, heldout_at, CameraError, "cameras file"),
                            heldout_at)
    return (train, train_at), (heldout, heldout_at)


def _fetch(source: str, scratch: Path) -> Path:
    """A local copy of the file at `source`: the path itself, or for an `s3://` URI the
    file from its folder (`artifacts.materialise` downloads a prefix)."""
    if not is_remote(source):
        return Path(source)
    folder, _, name = source.rstrip("/").rpartition("/")
    return materialise(folder, scratch) / name


def _read_json(path: Path, where: str, error: type[ValueError], what: str) -> Any:
    """The parsed JSON of `path`; `error` naming `where` (the path or URI) otherwise."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{where}: {what} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{where}: not JSON ({e})") from None

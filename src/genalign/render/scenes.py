"""CPU ray caster for the synthetic spatial scenes: coloured cubes, spheres, cylinders on a floor.

A scene is a handful of axis-aligned primitives resting on the ground plane y = 0, on
one another, or floating above them (the canopy discs of `genalign.data.spatial_scenes`).
Rays from a named viewpoint are intersected analytically with every object in numpy
(boxes by the slab test, cylinders by the side quadratic and caps, both from
`genalign.render.parts_image`; spheres by their quadratic), the nearest hit is shaded
with Lambert lighting times the object's colour, and the floor is a flat grey plane.
The same intersections give an object-id buffer, from which `visibility` counts the
pixels of each object that are visible and the pixels it would cover on its own: the
ground truth the scene oracle decides with.

Viewpoints (the front camera looks from +z towards -z, so "left" is -x, "behind" is -z):

    front | back | left | right            eye level, looking horizontally
    <direction>-high | <direction>-low     from 35 degrees above / from just above the floor
    top                                    straight down (image up = -z, the far side)
    zoom-in:<name> | zoom-out:<name>       the front camera turned to the object, with a
                                           narrow / wide field of view: framing changes,
                                           what is hidden stays hidden

    >>> from genalign.render.scenes import SceneObject, render_scene, view_camera
    >>> objs = [SceneObject("red", "cube", (0.0, 0.4, 0.0), (0.4, 0.4, 0.4))]
    >>> img = render_scene(objs, view_camera("back", objs), size=56)  # uint8 [56, 56, 3]
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from genalign.render.parts_image import Camera, _hit_box, _hit_cylinder

# Eight colours far from the grey floor, the white sky and each other.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.12),
    "green": (0.13, 0.62, 0.20),
    "blue": (0.13, 0.28, 0.86),
    "yellow": (0.95, 0.84, 0.10),
    "purple": (0.52, 0.22, 0.70),
    "orange": (0.96, 0.52, 0.08),
    "cyan": (0.08, 0.76, 0.82),
    "pink": (0.96, 0.48, 0.70),
}
SHAPES = ("cube", "sphere", "cylinder")

DIRECTIONS = ("front", "back", "left", "right")
# Azimuth from +z towards +x (parts_image.Camera): the right-hand camera sits at +x.
_AZIMUTH = {"front": 0.0, "right": 90.0, "back": 180.0, "left": -90.0}
VIEWS = (*DIRECTIONS, "top", *(f"{d}-{a}" for d in DIRECTIONS for a in ("high", "low")))
ZOOMS = ("in", "out")

# Every camera looks at TARGET from DISTANCE. Objects stay within |x|, |z| <= 1.3 and
# below y = 1.2; a 34 degree field of view frames +-1.3 at the nearest edge of that
# square (4.2 units from an eye-level eye) and +-1.7 at the target.
TARGET = (0.0, 0.45, 0.0)
DISTANCE = 5.5
FOV_DEG = 34.0
HIGH_ELEVATION_DEG = 35.0
# Low: the eye 0.08 above the floor, looking slightly up at the target.
LOW_ELEVATION_DEG = math.degrees(math.asin((0.08 - TARGET[1]) / DISTANCE))
# Straight down would make the look-at frame degenerate (up = y); 89 keeps it defined.
TOP_ELEVATION_DEG = 89.0
ZOOM_FOV_DEG = {"in": 15.0, "out": 60.0}

FLOOR = np.array([0.74, 0.74, 0.72])
SKY = np.array([0.95, 0.96, 1.0])
# Light from above, front-left: the three visible faces of a cube get three shades.
_LIGHT = np.array([-0.45, 1.0, 0.55]) / np.linalg.norm([-0.45, 1.0, 0.55])
_AMBIENT = 0.35


@dataclass(frozen=True)
class SceneObject:
    """An axis-aligned primitive: cube (equal half extents), sphere, or y-axis cylinder."""

    color: str
    shape: str
    center: tuple[float, float, float]
    half_extents: tuple[float, float, float]  # sphere: (r, r, r); cylinder: (r, h, r)

    def __post_init__(self) -> None:
        if self.color not in COLORS:
            raise ValueError(f"unknown colour {self.color!r}; valid: {sorted(COLORS)}")
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; valid: {list(SHAPES)}")
        if len(self.center) != 3 or len(self.half_extents) != 3:
            raise ValueError(
                f"{self.name}: center and half_extents need 3 numbers, got "
                f"{self.center}, {self.half_extents}"
            )
        hx, hy, hz = self.half_extents
        if min(hx, hy, hz) <= 0.0:
            raise ValueError(f"{self.name}: half extents must be > 0, got {self.half_extents}")
        if self.shape in ("cube", "sphere") and not hx == hy == hz:
            raise ValueError(
                f"{self.name}: a {self.shape} has equal half extents, got {self.half_extents}"
            )
        if self.shape == "cylinder" and hx != hz:
            raise ValueError(
                f"{self.name}: a cylinder's x and z half extents are its radius, "
                f"got {self.half_extents}"
            )

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def bottom(self) -> float:
        return self.center[1] - self.half_extents[1]

    @property
    def top(self) -> float:
        return self.center[1] + self.half_extents[1]


def _look_from(eye: np.ndarray, target: np.ndarray, fov_deg: float) -> Camera:
    """The Camera whose eye is `eye`, looking at `target`."""
    off = eye - target
    dist = float(np.linalg.norm(off))
    return Camera(
        azimuth_deg=math.degrees(math.atan2(off[0], off[2])),
        elevation_deg=math.degrees(math.asin(off[1] / dist)),
        distance=dist,
        fov_deg=fov_deg,
        target=(float(target[0]), float(target[1]), float(target[2])),
    )


def camera_eye(cam: Camera) -> np.ndarray:
    az, el = math.radians(cam.azimuth_deg), math.radians(cam.elevation_deg)
    return np.asarray(cam.target, dtype=np.float64) + cam.distance * np.array(
        [math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)]
    )


def view_camera(key: str, objects: Sequence[SceneObject] = ()) -> Camera:
    """The camera of a view key (see the module docstring); zoom keys name an object."""
    if key.startswith("zoom-"):
        zoom, _, name = key[len("zoom-") :].partition(":")
        if zoom not in ZOOMS:
            raise ValueError(f"unknown zoom {zoom!r} in view {key!r}; valid: {list(ZOOMS)}")
        found = [o for o in objects if o.name == name]
        if not found:
            raise ValueError(
                f"view {key!r}: no object named {name!r} in the scene; "
                f"objects: {[o.name for o in objects]}"
            )
        front = camera_eye(view_camera("front"))
        return _look_from(front, np.asarray(found[0].center, dtype=np.float64), ZOOM_FOV_DEG[zoom])
    if key == "top":
        return Camera(0.0, TOP_ELEVATION_DEG, DISTANCE, FOV_DEG, TARGET)
    direction, _, angle = key.partition("-")
    if direction not in _AZIMUTH or angle not in ("", "high", "low"):
        raise ValueError(f"unknown view {key!r}; valid: {list(VIEWS)} or zoom-in|zoom-out:<object>")
    elevation = {"": 0.0, "high": HIGH_ELEVATION_DEG, "low": LOW_ELEVATION_DEG}[angle]
    return Camera(_AZIMUTH[direction], elevation, DISTANCE, FOV_DEG, TARGET)


def _hit_sphere(o: np.ndarray, d: np.ndarray, r: float):
    """Nearest positive root of |o + t d| = r: distance [N] (inf on a miss), normals [N, 3]."""
    b = d @ o  # [N]; d is unit length, so a = 1
    c = float(o @ o) - r * r
    disc = b * b - c
    with np.errstate(invalid="ignore"):
        t = -b - np.sqrt(disc)
    t = np.where((disc >= 0.0) & (t > 0.0), t, np.inf)
    normal = np.zeros_like(d)
    hit = np.isfinite(t)
    normal[hit] = (o + t[hit, None] * d[hit]) / r
    return t, normal


@functools.lru_cache(maxsize=8)
def _pixel_directions(fov_deg: float, n: int) -> np.ndarray:
    """Unit directions [n*n, 3] through the pixel centres in the camera's frame (right,
    up, forward), row-major from the top-left pixel, as `parts_image._camera_rays`."""
    half = math.tan(math.radians(fov_deg) / 2)
    s = (np.arange(n) + 0.5) / n * 2.0 - 1.0  # pixel centres in [-1, 1]
    u, v = np.meshgrid(s * half, -s * half)  # [n, n] each; v is +up at the top row
    d = np.stack([u.ravel(), v.ravel(), np.ones(n * n)], axis=1)
    return d / np.linalg.norm(d, axis=1, keepdims=True)


@functools.lru_cache(maxsize=64)
def _rays(cam: Camera, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Eye [3] and unit directions [n*n, 3]: the rays of `parts_image._camera_rays` (to
    rounding), one rotation of the cached camera-frame directions, so that a zoom view's
    rays cost a matrix product; cached, as a scene's views reuse a few cameras."""
    eye = camera_eye(cam)
    forward = np.asarray(cam.target) - eye
    forward /= np.linalg.norm(forward)
    right = np.array([-forward[2], 0.0, forward[0]])  # forward x (0, 1, 0)
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    dirs = _pixel_directions(cam.fov_deg, n) @ np.stack([right, up, forward])  # [N, 3]
    eye.setflags(write=False)
    dirs.setflags(write=False)
    return eye, dirs


def _hits(objects: Sequence[SceneObject], eye: np.ndarray, dirs: np.ndarray, with_normals: bool):
    """Distances [K, N] (inf on a miss) and normals [K, N, 3] (or None) of rays from `eye`."""
    t_all = np.full((len(objects), len(dirs)), np.inf)
    normals = np.zeros((len(objects), len(dirs), 3)) if with_normals else None
    for k, obj in enumerate(objects):
        o = eye - np.asarray(obj.center)
        # Exact tests only for the rays that meet the bounding sphere: an object covers a
        # few percent of the image.
        radius = math.hypot(*obj.half_extents)
        b = dirs @ o  # [N]
        rays = np.flatnonzero((b * b - (float(o @ o) - radius * radius) >= 0.0) & (b < radius))
        if not len(rays):
            continue
        d = dirs[rays]
        hx, hy, _ = obj.half_extents
        if obj.shape == "cube":
            t, nl = _hit_box(o, d, np.asarray(obj.half_extents))
        elif obj.shape == "sphere":
            t, nl = _hit_sphere(o, d, hx)
        else:
            t, nl = _hit_cylinder(o, d, hx, hy)
        t_all[k, rays] = t
        if normals is not None:
            normals[k, rays] = nl  # axis-aligned: local normals are world normals
    return t_all, normals


def trace(objects: Sequence[SceneObject], cam: Camera, n: int, *, with_normals: bool = True):
    """Intersect n*n rays with every object.

    Returns eye [3], dirs [N, 3], distances t [K, N] (inf on a miss) and normals
    [K, N, 3] (None without `with_normals`).
    """
    eye, dirs = _rays(cam, n)  # [3], [N, 3]
    t_all, normals = _hits(objects, eye, dirs, with_normals)
    return eye, dirs, t_all, normals


def render_scene(
    objects: Sequence[SceneObject], cam: Camera, size: int = 56, *, supersample: int = 2
) -> np.ndarray:
    """Render the scene from `cam`. Returns uint8 [size, size, 3]."""
    if size < 1 or supersample < 1:
        raise ValueError(f"size and supersample must be >= 1, got {size}, {supersample}")
    n = size * supersample
    eye, dirs, t_all, normals = trace(objects, cam, n)
    rgb = np.tile(SKY, (len(dirs), 1))  # [N, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        t_floor = np.where(dirs[:, 1] < 0.0, -eye[1] / dirs[:, 1], np.inf)  # [N]
    floor_shade = _AMBIENT + (1.0 - _AMBIENT) * _LIGHT[1]
    on_floor = np.isfinite(t_floor)
    rgb[on_floor] = FLOOR * floor_shade
    if len(objects):
        nearest = np.argmin(t_all, axis=0)  # [N]
        rows = np.arange(len(dirs))
        t_near = t_all[nearest, rows]
        hit = np.isfinite(t_near) & (t_near < t_floor)
        normal = normals[nearest[hit], rows[hit]]  # [H, 3]
        shade = _AMBIENT + (1.0 - _AMBIENT) * np.clip(normal @ _LIGHT, 0.0, 1.0)
        colors = np.array([COLORS[o.color] for o in objects])  # [K, 3]
        rgb[hit] = colors[nearest[hit]] * shade[:, None]
    img = rgb.reshape(size, supersample, size, supersample, 3).mean(axis=(1, 3))
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def visibility(
    objects: Sequence[SceneObject], cam: Camera, size: int, of: Sequence[int] | None = None
) -> np.ndarray:
    """Pixels of objects at `size` x `size`: [M, 2] int of (visible, covered on its own).

    One row for each object index in `of` (default: every object, in order). Visible:
    the object is the nearest hit of the pixel's ray. On its own: the ray hits it at all.
    The floor hides nothing (every object rests on or floats above it). Only the rays
    that meet an object of `of` are traced against the others, so counting two objects
    of a scene costs a fraction of counting all.
    """
    of = list(range(len(objects))) if of is None else list(of)
    if not of:
        return np.zeros((0, 2), dtype=np.int64)
    eye, dirs = _rays(cam, size)  # [3], [N, 3]
    t_of, _ = _hits([objects[k] for k in of], eye, dirs, with_normals=False)  # [M, N]
    alone = np.isfinite(t_of).sum(axis=1)
    rays = np.flatnonzero(np.isfinite(t_of).any(axis=0))  # [R]
    # Every object on those rays, in scene order, so ties go to the lower index as in a
    # full object-id buffer.
    t_all = np.full((len(objects), len(rays)), np.inf)  # [K, R]
    t_all[of] = t_of[:, rays]
    rest = [k for k in range(len(objects)) if k not in of]
    if rest:
        t_all[rest], _ = _hits([objects[k] for k in rest], eye, dirs[rays], with_normals=False)
    nearest = np.argmin(t_all, axis=0)  # [R]
    visible = np.bincount(nearest, minlength=len(objects))[of]
    return np.stack([visible, alone], axis=1).astype(np.int64)

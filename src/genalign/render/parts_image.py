"""CPU ray caster for part objects: boxes and y-axis cylinders, shaded by part.

Rays from a fixed perspective camera are intersected analytically with every part, in
numpy, over all pixels at once: boxes by the slab test in the part's local frame,
cylinders by the side quadratic and the two cap planes. A hit is shaded with Lambert
lighting from its normal times a colour per part index, dimmed slightly with depth, so
an image shows the object's parts, their proportions and their order. Pixels are
averaged over a `supersample` x `supersample` grid so thin legs do not vanish.

    >>> from genalign.render.parts_image import render_object, save_png
    >>> img = render_object(obj.parts, size=32)  # uint8 [32, 32, 3]
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genalign.models.part_codec import PartParams
from genalign.storage import atomic_write_bytes


@dataclass(frozen=True)
class Camera:
    """A look-at camera on a sphere around `target`; angles in degrees, y up."""

    azimuth_deg: float  # from +z towards +x
    elevation_deg: float
    distance: float
    fov_deg: float  # vertical field of view
    target: tuple[float, float, float] = (0.0, 0.0, 0.0)


# Named views, aimed a little below the origin because objects rest on y = -1 and are
# mostly shorter than 2. Distance 3.9 with a 45 degree field of view frames +-1.6 at
# the target, enough for every object make_objects builds (checked in the tests: no
# object pixel on the image border).
_TARGET = (0.0, -0.25, 0.0)
VIEWS: dict[str, Camera] = {
    "three_quarter": Camera(35.0, 25.0, 3.9, 45.0, _TARGET),
    "front": Camera(0.0, 0.0, 3.9, 45.0, _TARGET),
    "side": Camera(90.0, 0.0, 3.9, 45.0, _TARGET),
    "top": Camera(0.0, 89.0, 3.9, 45.0, _TARGET),
}

# One colour per part index (matplotlib tab10 without its grey and olive), so the
# image also says which part is which.
PART_COLORS = (
    np.array(
        [
            [31, 119, 180],
            [255, 127, 14],
            [44, 160, 44],
            [214, 39, 40],
            [148, 103, 189],
            [140, 86, 75],
            [227, 119, 194],
            [23, 190, 207],
        ],
        dtype=np.float64,
    )
    / 255.0
)
BACKGROUND = np.array([1.0, 1.0, 1.0])

# Light from above, front-left, so the three faces of a box seen from the default
# view get three different shades; ambient keeps faces turned away readable.
_LIGHT = np.array([-0.4, 1.0, 0.6]) / np.linalg.norm([-0.4, 1.0, 0.6])
_AMBIENT = 0.35
# Depth dimming: up to 25% darker across a depth range of 2 (the cube's size).
_DEPTH_DIM = 0.25 / 2.0


def _camera_rays(cam: Camera, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Eye [3] and unit ray directions [n*n, 3], row-major from the top-left pixel."""
    az, el = math.radians(cam.azimuth_deg), math.radians(cam.elevation_deg)
    target = np.asarray(cam.target, dtype=np.float64)
    eye = target + cam.distance * np.array(
        [math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)]
    )
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    half = math.tan(math.radians(cam.fov_deg) / 2)
    s = (np.arange(n) + 0.5) / n * 2.0 - 1.0  # pixel centres in [-1, 1]
    u, v = np.meshgrid(s * half, -s * half)  # [n, n] each; v is +up at the top row
    dirs = forward + u.reshape(-1, 1) * right + v.reshape(-1, 1) * up  # [N, 3]
    return eye, dirs / np.linalg.norm(dirs, axis=1, keepdims=True)


def _to_local(p: PartParams, origin: np.ndarray, dirs: np.ndarray):
    """Ray origin [3] and directions [N, 3] in the part's frame (inverse yaw, centred)."""
    c, s = math.cos(p.yaw), math.sin(p.yaw)
    # Transpose of the yaw rotation in genalign.models.part_codec.part_transform.
    rot_t = np.array([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])
    return rot_t @ (origin - np.asarray(p.center)), dirs @ rot_t.T, rot_t


def _hit_box(o: np.ndarray, d: np.ndarray, h: np.ndarray):
    """Slab test. Returns hit distance [N] (inf on a miss) and local normals [N, 3]."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d  # [N, 3]; +-inf on axis-parallel rays is what the slab test wants
        t1 = (-h - o) * inv
        t2 = (h - o) * inv
    t_lo, t_hi = np.minimum(t1, t2), np.maximum(t1, t2)
    axis = np.argmax(t_lo, axis=1)
    t_near = np.take_along_axis(t_lo, axis[:, None], 1)[:, 0]
    t_far = t_hi.min(axis=1)
    hit = (t_near <= t_far) & (t_near > 0.0)
    t = np.where(hit, t_near, np.inf)
    normal = np.zeros_like(d)
    rows = np.arange(len(d))
    normal[rows, axis] = -np.sign(d[rows, axis])
    return t, normal


def _hit_cylinder(o: np.ndarray, d: np.ndarray, r: float, hy: float):
    """Side quadratic and caps of a y-axis cylinder. Returns distance [N], normals [N, 3]."""
    a = d[:, 0] ** 2 + d[:, 2] ** 2
    b = 2.0 * (o[0] * d[:, 0] + o[2] * d[:, 2])
    c = o[0] ** 2 + o[2] ** 2 - r * r
    disc = b * b - 4.0 * a * c
    with np.errstate(divide="ignore", invalid="ignore"):
        t_side = (-b - np.sqrt(disc)) / (2.0 * a)
        y_side = o[1] + t_side * d[:, 1]
        side_ok = (disc >= 0.0) & (a > 1e-12) & (t_side > 0.0) & (np.abs(y_side) <= hy)
        t_side = np.where(side_ok, t_side, np.inf)
        # The cap facing the eye: the top when the eye is above the part, else the bottom.
        cap_y = hy if o[1] > 0.0 else -hy
        t_cap = (cap_y - o[1]) / d[:, 1]
        xc, zc = o[0] + t_cap * d[:, 0], o[2] + t_cap * d[:, 2]
        cap_ok = (t_cap > 0.0) & (xc * xc + zc * zc <= r * r)
    t_cap = np.where(cap_ok, t_cap, np.inf)
    t = np.minimum(t_side, t_cap)
    normal = np.zeros_like(d)
    use_cap = t_cap < t_side
    normal[use_cap, 1] = math.copysign(1.0, cap_y)
    side = ~use_cap & np.isfinite(t_side)
    ts = t_side[side]
    normal[side, 0] = (o[0] + ts * d[side, 0]) / r
    normal[side, 2] = (o[2] + ts * d[side, 2]) / r
    return t, normal


def render_object(
    parts: list[PartParams] | tuple[PartParams, ...],
    size: int = 32,
    *,
    view: str | Camera = "three_quarter",
    supersample: int = 2,
) -> np.ndarray:
    """Render parts to an RGB image. Returns uint8 [size, size, 3]."""
    if isinstance(view, str):
        if view not in VIEWS:
            raise ValueError(f"unknown view {view!r}; valid: {sorted(VIEWS)}")
        view = VIEWS[view]
    if size < 1 or supersample < 1:
        raise ValueError(f"size and supersample must be >= 1, got {size}, {supersample}")
    n = size * supersample
    eye, dirs = _camera_rays(view, n)  # [3], [N, 3]
    depth = np.full(len(dirs), np.inf)  # [N]
    normal = np.zeros_like(dirs)  # [N, 3] world space
    index = np.full(len(dirs), -1)  # [N] part index of the nearest hit
    for i, p in enumerate(parts):
        o, d, rot_t = _to_local(p, eye, dirs)
        h = np.asarray(p.half_extents)
        if p.kind == "box":
            t, nl = _hit_box(o, d, h)
        else:
            t, nl = _hit_cylinder(o, d, h[0], h[1])
        closer = t < depth
        depth[closer] = t[closer]
        normal[closer] = nl[closer] @ rot_t  # local -> world: rot_t.T applied per row
        index[closer] = i
    hit = index >= 0
    lambert = np.clip(normal[hit] @ _LIGHT, 0.0, 1.0)
    near = view.distance - math.sqrt(3.0)  # about the closest a point of the cube can be
    dim = 1.0 - _DEPTH_DIM * np.clip(depth[hit] - near, 0.0, 2.0)
    shade = (_AMBIENT + (1.0 - _AMBIENT) * lambert) * dim
    rgb = np.tile(BACKGROUND, (len(dirs), 1))  # [N, 3]
    rgb[hit] = PART_COLORS[index[hit] % len(PART_COLORS)] * shade[:, None]
    img = rgb.reshape(size, supersample, size, supersample, 3).mean(axis=(1, 3))
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def png_bytes(img: np.ndarray) -> bytes:
    """Encode a uint8 [H, W, 3] image as PNG."""
    from PIL import Image

    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected uint8 [H, W, 3], got {img.dtype} {img.shape}")
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def save_png(img: np.ndarray, path: Path) -> None:
    """Write a uint8 [H, W, 3] image as a PNG, atomically."""
    atomic_write_bytes(Path(path), png_bytes(img))

"""Pinhole cameras for voxel worlds: orbits around a map, `cameras.json` files, rays.

Convention. Every camera here is OpenCV's: in camera space x points right, y down and z
forward (into the scene), pixel (u, v) has its centre at (u + 0.5, v + 0.5), row 0 is
the top of the image, and the intrinsics K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] are in
pixels. `world_to_camera` is the 4 x 4 extrinsic E with x_cam = E @ x_world. The world
is y-up: a map's voxel (x, y, z) is the box [x, x + 1] x [y, y + 1] x [z, z + 1] in
voxel units, the grid centred on the origin in x and z with the ground layer y = 0 on
the plane y = 0, and one voxel unit is `world_scale` world units (`grid_box`).

A `cameras.json` states its convention; an OpenGL camera (x right, y up, looking down
-z) is turned into OpenCV's by flipping its y and z axes, E_cv = diag(1, -1, -1, 1) @ E_gl:

    {"convention": "opencv",
     "views": [{"name": "v0", "width": 128, "height": 128,
                "intrinsics": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]],
                "world_to_camera": [[r00, r01, r02, tx], ..., [0, 0, 0, 1]]}, ...]}

`read_cameras` checks every number before any rendering: a rotation that is not
orthonormal with determinant +1 (that is, an extrinsic that is not an invertible rigid
motion), a bottom row other than [0, 0, 0, 1], a focal length that is not positive, a
bad image size; each error names the file and the view.

    cams = orbit_cameras(8, (32, 32, 32), world_scale=2.0, size=64, seed=0)
    origins, directions = camera_rays(cams)        # [V, H, W, 3] each, world units

Run: `pytest tests/unit/test_voxel_cameras.py`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from genalign.storage import atomic_write_text

CONVENTIONS = ("opencv", "opengl")
MAX_IMAGE_SIZE = 4096
_GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])
_ORTHO_TOL = 1e-4
_WORLD_UP = np.array([0.0, 1.0, 0.0])  # the world is y-up (module doc)
_WORLD_UP.flags.writeable = False


class CameraError(ValueError):
    """A cameras file or camera setting that does not match the format."""


@dataclasses.dataclass(frozen=True)
class Cameras:
    """V pinhole cameras of one image size, OpenCV convention (module doc)."""

    world_to_camera: Tensor  # [V, 4, 4] float32
    intrinsics: Tensor  # [V, 3, 3] float32, pixels
    height: int
    width: int

    def __post_init__(self) -> None:
        v = self.world_to_camera.shape[0]
        if self.world_to_camera.shape != (v, 4, 4) or self.intrinsics.shape != (v, 3, 3):
            raise CameraError(
                f"Cameras: expected world_to_camera [V, 4, 4] and intrinsics [V, 3, 3], got "
                f"{list(self.world_to_camera.shape)} and {list(self.intrinsics.shape)}"
            )

    def __len__(self) -> int:
        return int(self.world_to_camera.shape[0])

    def select(self, index: Tensor | list[int]) -> Cameras:
        """The cameras at `index` (a list or a long tensor), in that order."""
        index = torch.as_tensor(index, dtype=torch.long)
        return Cameras(self.world_to_camera[index], self.intrinsics[index], self.height, self.width)

    def to(self, device: torch.device | str) -> Cameras:
        return Cameras(self.world_to_camera.to(device), self.intrinsics.to(device), self.height, self.width)

    def camera_to_world(self) -> Tensor:
        """[V, 4, 4]: the inverse rigid motion, R^T and -R^T t."""
        r = self.world_to_camera[:, :3, :3]
        t = self.world_to_camera[:, :3, 3:]
        inv = torch.zeros_like(self.world_to_camera)
        inv[:, :3, :3] = r.transpose(1, 2)
        inv[:, :3, 3:] = -r.transpose(1, 2) @ t
        inv[:, 3, 3] = 1.0
        return inv


def grid_box(dims: tuple[int, int, int], world_scale: float) -> tuple[Tensor, Tensor]:
    """(lo, hi) `[3]` world-space corners of a grid of `dims` voxels (module doc)."""
    x, y, z = dims
    lo = torch.tensor([-x / 2, 0.0, -z / 2], dtype=torch.float32) * world_scale
    hi = torch.tensor([x / 2, float(y), z / 2], dtype=torch.float32) * world_scale
    return lo, hi


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = _WORLD_UP) -> np.ndarray:
    """The OpenCV world_to_camera [4, 4] of a camera at `eye` looking at `target` with
    the world's `up` pointing up in the image (rows: right, down, forward)."""
    forward = target - eye
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-8:
        raise CameraError(f"look_at: the view direction {forward.tolist()} is parallel to up {up.tolist()}")
    right = right / np.linalg.norm(right)
    down = np.cross(forward, right)
    e = np.eye(4)
    e[:3, :3] = np.stack([right, down, forward])
    e[:3, 3] = -e[:3, :3] @ eye
    return e


def focal_from_fov(fov_deg: float, size: int) -> float:
    """The focal length in pixels of a horizontal field of view over `size` pixels."""
    return 0.5 * size / math.tan(math.radians(fov_deg) / 2)


def orbit_cameras(
    n: int,
    dims: tuple[int, int, int],
    *,
    world_scale: float,
    size: int,
    fov_deg: float = 40.0,
    elevation_deg: tuple[float, float] = (15.0, 45.0),
    seed: int = 0,
    target_height: float = 0.3,
    zoom: float = 1.0,
) -> Cameras:
    """`n` cameras on an orbit around the world, looking at its axis at `target_height`
    of its height, far enough that the sphere about that target through the grid's
    farthest corner fits the field of view, so the whole grid is in every image.
    Azimuths are evenly spaced from a random start; elevations uniform in
    `elevation_deg`; both drawn from `seed`, so another seed gives other (held-out) views.
    `zoom` divides that distance: at 2 the middle of the world fills the image and the
    grid's outer parts leave it (procedural structures stand in the middle of an open
    ground).
    """
    if not 0.1 <= zoom <= 10.0:
        raise CameraError(f"orbit_cameras: zoom must be in [0.1, 10], got {zoom}")
    if n < 1:
        raise CameraError(f"orbit_cameras: n must be >= 1, got {n}")
    _check_size(size, size, "orbit_cameras")
    if not 1.0 <= fov_deg <= 150.0:
        raise CameraError(f"orbit_cameras: fov_deg must be in [1, 150], got {fov_deg}")
    lo_e, hi_e = elevation_deg
    if not -89.0 <= lo_e <= hi_e <= 89.0:
        raise CameraError(f"orbit_cameras: elevation_deg must satisfy -89 <= lo <= hi <= 89, got {elevation_deg}")
    rng = np.random.default_rng(seed)
    x, y, z = dims
    # The target is not the grid's centre: the sphere that must fit is centred on the
    # target and reaches its farthest corner (a top corner for target_height < 0.5).
    reach_y = max(target_height, 1.0 - target_height) * y
    radius = world_scale * math.sqrt((x / 2) ** 2 + reach_y**2 + (z / 2) ** 2)
    distance = 1.05 * radius / math.sin(math.radians(fov_deg) / 2) / zoom
    target = np.array([0.0, target_height * y * world_scale, 0.0])
    start = rng.uniform(0.0, 2 * math.pi)
    azimuths = start + 2 * math.pi * np.arange(n) / n
    elevations = np.radians(rng.uniform(lo_e, hi_e, size=n))
    w2c = []
    for az, el in zip(azimuths, elevations):
        eye = target + distance * np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
        w2c.append(look_at(eye, target))
    f = focal_from_fov(fov_deg, size)
    k = np.array([[f, 0.0, size / 2], [0.0, f, size / 2], [0.0, 0.0, 1.0]])
    return Cameras(
        torch.tensor(np.stack(w2c), dtype=torch.float32),
        torch.tensor(np.stack([k] * n), dtype=torch.float32),
        size,
        size,
    )


def camera_rays(cameras: Cameras) -> tuple[Tensor, Tensor]:
    """(origins, directions) `[V, H, W, 3]` in world space, directions of unit length,
    through each pixel's centre; row 0 is the top of the image."""
    dev = cameras.world_to_camera.device
    v_, u_ = torch.meshgrid(
        torch.arange(cameras.height, device=dev, dtype=torch.float32) + 0.5,
        torch.arange(cameras.width, device=dev, dtype=torch.float32) + 0.5,
        indexing="ij",
    )  # [H, W]
    k = cameras.intrinsics
    fx, fy = k[:, 0, 0].view(-1, 1, 1), k[:, 1, 1].view(-1, 1, 1)
    cx, cy = k[:, 0, 2].view(-1, 1, 1), k[:, 1, 2].view(-1, 1, 1)
    d_cam = torch.stack([(u_ - cx) / fx, (v_ - cy) / fy, torch.ones_like(u_).expand_as((u_ - cx) / fx)], dim=-1)
    c2w = cameras.camera_to_world()  # [V, 4, 4]
    d_world = torch.einsum("vij,vhwj->vhwi", c2w[:, :3, :3], d_cam)
    d_world = d_world / d_world.norm(dim=-1, keepdim=True)
    origins = c2w[:, :3, 3].view(-1, 1, 1, 3).expand_as(d_world)
    return origins, d_world


# ---------------------------------------------------------------- cameras.json
def _check_size(width: Any, height: Any, at: str) -> None:
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_IMAGE_SIZE:
            raise CameraError(f"{at}: {name} must be an integer in [1, {MAX_IMAGE_SIZE}], got {value!r}")


def _matrix(value: Any, shape: tuple[int, int], at: str) -> np.ndarray:
    try:
        m = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise CameraError(f"{at}: expected a {shape[0]} x {shape[1]} matrix of numbers, got {value!r}") from None
    if m.shape != shape or not np.isfinite(m).all():
        raise CameraError(f"{at}: expected a finite {shape[0]} x {shape[1]} matrix of numbers, got {value!r}")
    return m


def check_extrinsic(e: np.ndarray, at: str) -> None:
    """Raise CameraError unless `e` is a rigid motion: bottom row [0, 0, 0, 1] and a
    rotation R with R R^T = I and det R = +1 (so it is invertible, by R^T)."""
    if not np.allclose(e[3], [0.0, 0.0, 0.0, 1.0], atol=_ORTHO_TOL):
        raise CameraError(f"{at}: the bottom row must be [0, 0, 0, 1], got {e[3].tolist()}")
    r = e[:3, :3]
    det = float(np.linalg.det(r))
    if abs(det) < 1e-8:
        raise CameraError(f"{at}: the rotation is singular (det {det:.3g}); the extrinsic is not invertible")
    if not np.allclose(r @ r.T, np.eye(3), atol=_ORTHO_TOL) or det < 0:
        raise CameraError(
            f"{at}: the 3 x 3 rotation is not orthonormal with det +1 (det {det:.6g}); "
            "expected a rigid world-to-camera motion"
        )


def parse_cameras(obj: Any, where: str) -> Cameras:
    """Cameras from the parsed JSON of a cameras.json; errors name `where` and the view."""
    if not isinstance(obj, dict):
        raise CameraError(f"{where}: expected an object with 'convention' and 'views'")
    unknown = sorted(set(obj) - {"convention", "views"})
    if unknown:
        raise CameraError(f"{where}: unknown field(s) {unknown}; valid: ['convention', 'views']")
    convention = obj.get("convention")
    if convention not in CONVENTIONS:
        raise CameraError(f"{where}: convention must be one of {list(CONVENTIONS)}, got {convention!r}")
    views = obj.get("views")
    if not isinstance(views, list) or not views:
        raise CameraError(f"{where}: views must be a non-empty list")
    w2c, ks, size = [], [], None
    for i, view in enumerate(views):
        at = f"{where}: views[{i}]"
        if not isinstance(view, dict):
            raise CameraError(f"{at}: expected an object")
        unknown = sorted(set(view) - {"name", "width", "height", "intrinsics", "world_to_camera"})
        if unknown:
            raise CameraError(f"{at}: unknown field(s) {unknown}")
        for key in ("width", "height", "intrinsics", "world_to_camera"):
            if key not in view:
                raise CameraError(f"{at}: missing field {key!r}")
        _check_size(view["width"], view["height"], at)
        if size is not None and size != (view["height"], view["width"]):
            raise CameraError(f"{at}: image size {view['width']}x{view['height']} differs from views[0]'s "
                              f"{size[1]}x{size[0]}; one size per file")
        size = (view["height"], view["width"])
        k = _matrix(view["intrinsics"], (3, 3), f"{at}.intrinsics")
        if not (k[0, 0] > 0 and k[1, 1] > 0):
            raise CameraError(f"{at}.intrinsics: focal lengths fx, fy must be positive, got {k[0, 0]}, {k[1, 1]}")
        if not np.allclose(k[2], [0.0, 0.0, 1.0]) or k[1, 0] != 0 or k[0, 1] != 0:
            raise CameraError(f"{at}.intrinsics: expected [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], got {k.tolist()}")
        e = _matrix(view["world_to_camera"], (4, 4), f"{at}.world_to_camera")
        check_extrinsic(e, f"{at}.world_to_camera")
        w2c.append(_GL_TO_CV @ e if convention == "opengl" else e)
        ks.append(k)
    return Cameras(
        torch.tensor(np.stack(w2c), dtype=torch.float32),
        torch.tensor(np.stack(ks), dtype=torch.float32),
        size[0],
        size[1],
    )


def read_cameras(path: Path) -> Cameras:
    """Cameras from a cameras.json (module doc); CameraError naming the file otherwise."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise CameraError(f"{path}: no such cameras file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CameraError(f"{path}: not JSON: {e}") from None
    return parse_cameras(obj, str(path))


def cameras_to_json(cameras: Cameras, *, prefix: str = "v") -> dict[str, Any]:
    """The cameras.json object of `cameras` (OpenCV convention)."""
    return {
        "convention": "opencv",
        "views": [
            {
                "name": f"{prefix}{i}",
                "width": cameras.width,
                "height": cameras.height,
                "intrinsics": cameras.intrinsics[i].double().tolist(),
                "world_to_camera": cameras.world_to_camera[i].double().tolist(),
            }
            for i in range(len(cameras))
        ],
    }


def write_cameras(cameras: Cameras, path: Path) -> None:
    """Write `cameras` as a cameras.json, atomically."""
    atomic_write_text(Path(path), json.dumps(cameras_to_json(cameras), indent=1) + "\n")

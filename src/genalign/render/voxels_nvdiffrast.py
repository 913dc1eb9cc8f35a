"""A soft voxel world rasterised on CUDA with nvdiffrast: `NvdiffrastVoxelRenderer`.

nvdiffrast: Laine et al., "Modular Primitives for High-Performance Differentiable
Rendering", SIGGRAPH Asia 2020. It is installed in the genalign-render image only
(docker/render/Dockerfile), so this module imports it inside the renderer's constructor.

The world and the cameras are those of `genalign.render.voxels`: occupancy probabilities
[X, Y, Z], face colours [X, Y, Z, 3, 3] (top, bottom, side x RGB), OpenCV `Cameras` in a
y-up world; the output has the same fields, rgb [V, 3, H, W] and alpha [V, 1, H, W].

Image model, made to match the emission-absorption renderer (`TorchVoxelRenderer`):

- Every voxel of occupancy p >= `min_occupancy` is a cube; the others are not drawn and
  get no gradient.
- Of each cube a view draws only the faces turned to its camera (the eye on the outer
  side of the face's plane). A ray enters a cube through exactly one of them, so every
  voxel the ray crosses gives one surface: the face it entered through, which is the face
  whose colour the EA renderer takes. Culling is also what makes depth peeling work here:
  nvdiffrast draws both sides of a triangle, and where two voxels touch, the face the ray
  leaves one by and the face it enters the next by are coplanar; depth peeling culls every
  point at the depth of a layer already drawn, so it could not tell them apart.
- A surface has alpha = p, the EA renderer's opacity of one whole voxel crossed, and the
  colour of its face times the face's shade (FACE_SHADES). The `layers` nearest surfaces
  of each pixel (`dr.DepthPeeler`) are composited front to back:

      C = sum_l T_l p_l c_l + T_L * background,   T_l = prod_{k<l} (1 - p_k),   alpha = 1 - T_L

  so d C / d p_l is non-zero for every drawn surface, as in the EA renderer.
- `dr.antialias` then blends colour and alpha across silhouette edges of the nearest layer
  (analytic coverage), where the EA renderer samples each pixel's centre ray only.

Where the two differ, by construction: a ray that only clips a voxel (a path shorter than
one voxel) gets its full p here and 1 - (1 - p)^length there; surfaces beyond the `layers`
nearest are left out (a near-binary world needs one or two; a world where every voxel is
above `min_occupancy` has up to X + Y + Z surfaces along a ray); voxels below
`min_occupancy` are left out.

Mesh. Each used grid corner is one vertex (shared indices, so that `dr.antialias` finds
silhouettes from the triangle topology), with one copy of the vertex buffer per view,
since views cull different faces: nvdiffrast's range mode, one range of triangles per
view. Colour and alpha are per face, so they live in a separate attribute buffer (one row
per voxel face) with its own triangle index buffer for `dr.interpolate`; the three
corners of a triangle name the same row, so interpolation returns the row exactly.

Projection: OpenGL-style clip space from the pinhole intrinsics, with near and far
planes around the grid box per view. nvdiffrast's output row 0 is the bottom of the image
(OpenGL memory order), so the result is flipped to the top-down rows of the cameras.

    renderer = NvdiffrastVoxelRenderer(layers=8)      # RuntimeError without CUDA/nvdiffrast
    out = renderer(occupancy.cuda(), colors.cuda(), cameras, world_scale=2.0)

Run: `pytest tests/gpu/test_voxel_render_cuda.py` (skipped without a CUDA device).
"""

from __future__ import annotations

import importlib.util
from typing import NamedTuple

import torch
from torch import Tensor

from genalign.render.cameras import Cameras, grid_box

# genalign.render.voxels imports this module (make_renderer), so this module cannot import
# it back (tests/unit/test_import_rules.py forbids the cycle): its two shared definitions
# are repeated here, and tests/unit/test_voxel_render.py checks that they agree.
# Shades of the top, bottom, +-x side and +-z side faces: voxels.FACE_SHADES.
FACE_SHADES = (1.0, 0.5, 0.8, 0.65)


class NvdiffrastRender(NamedTuple):
    """The fields of `genalign.render.voxels.VoxelRender`."""

    rgb: Tensor  # [V, 3, H, W] in [0, 1]
    alpha: Tensor  # [V, 1, H, W] in [0, 1], accumulated opacity


# The six faces of a cube, in the order +x, -x, +y, -y, +z, -z: the corner offsets of
# each (a quad, corners in order around it), the axis it is normal to, its outward sign,
# the palette face it takes (0 top, 1 bottom, 2 side) and its shade.
_FACE_CORNERS = (
    ((1, 0, 0), (1, 1, 0), (1, 1, 1), (1, 0, 1)),
    ((0, 0, 0), (0, 0, 1), (0, 1, 1), (0, 1, 0)),
    ((0, 1, 0), (0, 1, 1), (1, 1, 1), (1, 1, 0)),
    ((0, 0, 0), (1, 0, 0), (1, 0, 1), (0, 0, 1)),
    ((0, 0, 1), (1, 0, 1), (1, 1, 1), (0, 1, 1)),
    ((0, 0, 0), (0, 1, 0), (1, 1, 0), (1, 0, 0)),
)
_FACE_AXIS = (0, 0, 1, 1, 2, 2)
_FACE_SIGN = (1, -1, 1, -1, 1, -1)
_FACE_PALETTE = (2, 2, 0, 1, 2, 2)
_FACE_SHADE = (FACE_SHADES[2], FACE_SHADES[2], FACE_SHADES[0], FACE_SHADES[1], FACE_SHADES[3], FACE_SHADES[3])
# Near and far planes this much inside and outside the grid box's depth range, so that no
# face of the grid is clipped; near is kept above this share of far when the camera is
# inside the box.
_DEPTH_MARGIN = 0.01
_MIN_NEAR_SHARE = 1e-4

_DOCKER_HINT = "it is built into the genalign-render image only (docker/render/Dockerfile)"


class _Mesh(NamedTuple):
    pos: Tensor  # [V * C, 4] float32 clip space, view v's copy of the C corners at v * C
    tri: Tensor  # [T, 3] int32 into pos, view-major
    ranges: Tensor  # [V, 2] int32 on the CPU: first triangle and count of each view
    attr_tri: Tensor  # [T, 3] int32 into the attribute rows (voxel * 6 + face)
    voxels: Tensor  # [M, 3] long: the drawn voxels


class NvdiffrastVoxelRenderer:
    """Rasterised rendering of a soft voxel world on CUDA (module doc).

    layers: depth-peeling layers, the nearest surfaces composited per pixel.
    background: the RGB behind the world. antialias: `dr.antialias` on the composited image.
    min_occupancy: voxels below it are not drawn.
    """

    def __init__(self, *, layers: int = 8, background: tuple[float, float, float] = (1.0, 1.0, 1.0),
                 antialias: bool = True, min_occupancy: float = 1e-3):
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
            raise ValueError(f"NvdiffrastVoxelRenderer: layers must be an integer >= 1, got {layers!r}")
        if not 0.0 < min_occupancy < 1.0:
            raise ValueError(f"NvdiffrastVoxelRenderer: min_occupancy must be in (0, 1), got {min_occupancy}")
        if len(background) != 3:
            raise ValueError(f"NvdiffrastVoxelRenderer: background must be 3 numbers (RGB), got {background!r}")
        missing = []
        if not torch.cuda.is_available():
            missing.append("CUDA is not available (torch.cuda.is_available() is False)")
        if importlib.util.find_spec("nvdiffrast") is None:
            missing.append(f"the nvdiffrast package is not installed; {_DOCKER_HINT}")
        if missing:
            raise RuntimeError(
                "nvdiffrast renderer: " + "; ".join(missing)
                + ". make_renderer('torch') renders the same world on any device."
            )
        import nvdiffrast.torch as dr

        self._dr = dr
        self._contexts: dict[int, object] = {}  # CUDA device index -> dr.RasterizeCudaContext
        self.layers = layers
        self.background = tuple(float(c) for c in background)
        self.antialias = bool(antialias)
        self.min_occupancy = float(min_occupancy)

    def __call__(self, occupancy: Tensor, colors: Tensor, cameras: Cameras, *, world_scale: float) -> NvdiffrastRender:
        if occupancy.ndim != 3 or colors.shape != (*occupancy.shape, 3, 3):
            raise ValueError(f"render: occupancy must be [X, Y, Z] and colors [X, Y, Z, 3, 3], "
                             f"got {list(occupancy.shape)} and {list(colors.shape)}")
        if occupancy.device.type != "cuda" or colors.device != occupancy.device:
            raise ValueError(f"nvdiffrast renderer: occupancy and colors must be on one CUDA device, "
                             f"got {occupancy.device} and {colors.device}")
        dev = occupancy.device
        cameras = cameras.to(dev)
        v, h, w = len(cameras), cameras.height, cameras.width
        bg = torch.tensor(self.background, device=dev, dtype=torch.float32)
        mesh = self._mesh(occupancy, cameras, world_scale)
        if mesh is None:
            # Nothing drawn: the background. It is kept in the inputs' graph (with zero
            # gradient) so that a loss of it backpropagates like any other render.
            rgb = bg.view(1, 3, 1, 1).expand(v, 3, h, w) + 0.0 * occupancy.sum() + 0.0 * colors.sum()
            alpha = torch.zeros(v, 1, h, w, device=dev) + 0.0 * occupancy.sum()
            return NvdiffrastRender(rgb.to(occupancy.dtype), alpha.to(occupancy.dtype))

        # Rows of the attribute buffer: voxel m's face f at m * 6 + f, [colour * shade, p].
        i, j, k = mesh.voxels.unbind(-1)
        shade = torch.tensor(_FACE_SHADE, device=dev, dtype=torch.float32)
        face_rgb = colors[i, j, k][:, list(_FACE_PALETTE)].float() * shade[:, None]  # [M, 6, 3]
        p = occupancy[i, j, k].float()[:, None, None].expand(-1, 6, 1)  # [M, 6, 1]
        attr = torch.cat([face_rgb, p], dim=-1).reshape(-1, 4).contiguous()  # [M * 6, 4]

        dr = self._dr
        ctx = self._context(dev)
        trans = torch.ones(v, h, w, 1, device=dev)  # transmittance in front of the layer
        rgb = torch.zeros(v, h, w, 3, device=dev)
        with dr.DepthPeeler(ctx, mesh.pos, mesh.tri, (h, w), ranges=mesh.ranges, grad_db=False) as peeler:
            for layer in range(self.layers):
                rast, _ = peeler.rasterize_next_layer()  # [V, H, W, 4]: u, v, z/w, triangle id + 1
                if layer == 0:
                    nearest = rast
                elif not bool((rast[..., 3] > 0).any()):  # every pixel's surfaces are drawn
                    break
                face, _ = dr.interpolate(attr, rast, mesh.attr_tri)  # [V, H, W, 4], zero off the mesh
                a = face[..., 3:]
                rgb = rgb + trans * a * face[..., :3]
                trans = trans * (1.0 - a)
        image = torch.cat([rgb + trans * bg, 1.0 - trans], dim=-1)  # [V, H, W, 4]
        if self.antialias:
            image = dr.antialias(image.contiguous(), nearest, mesh.pos, mesh.tri)
        image = image.flip(1).permute(0, 3, 1, 2)  # bottom-up rows to top-down, [V, 4, H, W]
        return NvdiffrastRender(image[:, :3].to(occupancy.dtype), image[:, 3:].to(occupancy.dtype))

    def _context(self, device: torch.device) -> object:
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index not in self._contexts:
            self._contexts[index] = self._dr.RasterizeCudaContext(device=index)
        return self._contexts[index]

    @torch.no_grad()
    def _mesh(self, occupancy: Tensor, cameras: Cameras, world_scale: float) -> _Mesh | None:
        """The camera-facing faces of every drawn voxel for each view; None if none."""
        dev = occupancy.device
        dims = tuple(occupancy.shape)
        voxels = (occupancy >= self.min_occupancy).nonzero()  # [M, 3]
        if voxels.shape[0] == 0:
            return None
        lo, hi = (c.to(dev) for c in grid_box(dims, world_scale))
        eye = (cameras.camera_to_world()[:, :3, 3] - lo) / world_scale  # [V, 3] voxel units

        # Face f of voxel m lies in the plane x_axis = voxel[axis] + (sign > 0) and is drawn
        # in view v when the eye is strictly on its outer side.
        axis = torch.tensor(_FACE_AXIS, device=dev)
        sign = torch.tensor(_FACE_SIGN, device=dev, dtype=torch.float32)
        plane = voxels[:, axis].float() + (sign > 0).float()  # [M, 6]
        facing = sign * (eye[:, None, axis] - plane[None]) > 0  # [V, M, 6]
        view, m, f = facing.nonzero(as_tuple=True)  # view-major, as range mode needs
        if view.numel() == 0:
            return None

        # One vertex per grid corner that a drawn voxel uses.
        offsets = torch.tensor(_FACE_CORNERS, device=dev)  # [6, 4, 3]
        corner = voxels[:, None, None, :] + offsets[None]  # [M, 6, 4, 3]
        ny, nz = dims[1] + 1, dims[2] + 1
        corner_id = (corner[..., 0] * ny + corner[..., 1]) * nz + corner[..., 2]  # [M, 6, 4]
        used, local = torch.unique(corner_id, return_inverse=True)  # [C], [M, 6, 4]
        ijk = torch.stack([used // (ny * nz), (used // nz) % ny, used % nz], dim=-1).float()
        world = torch.cat([lo + ijk * world_scale, torch.ones_like(ijk[:, :1])], dim=-1)  # [C, 4]
        clip = _projection(cameras, lo, hi) @ cameras.world_to_camera  # [V, 4, 4]
        pos = torch.einsum("vij,cj->vci", clip, world).reshape(-1, 4).contiguous()  # [V * C, 4]

        quad = local[m, f] + view[:, None] * used.shape[0]  # [F, 4] into pos
        tri = torch.stack([quad[:, [0, 1, 2]], quad[:, [0, 2, 3]]], dim=1).reshape(-1, 3)  # [2F, 3]
        attr_tri = (m * 6 + f).repeat_interleave(2)[:, None].expand(-1, 3)  # [2F, 3]
        counts = 2 * torch.bincount(view, minlength=len(cameras)).cpu()
        ranges = torch.stack([torch.cumsum(counts, 0) - counts, counts], dim=-1)
        return _Mesh(pos, tri.int().contiguous(), ranges.int().contiguous(), attr_tri.int().contiguous(), voxels)


def _projection(cameras: Cameras, lo: Tensor, hi: Tensor) -> Tensor:
    """[V, 4, 4]: OpenCV camera space to OpenGL clip space (y up, w = depth) for the
    cameras' pinhole intrinsics, near and far around the box [lo, hi] seen from each view.

    Pixel (u, v) of the OpenCV image (v from the top) maps to NDC x = 2u / W - 1 and
    y = 1 - 2v / H, so clip x = (2 fx / W) x + (2 cx / W - 1) z and
    clip y = -(2 fy / H) y + (1 - 2 cy / H) z; depth z maps to NDC -1 at near, +1 at far.
    """
    v = len(cameras)
    k = cameras.intrinsics
    fx, fy, cx, cy = k[:, 0, 0], k[:, 1, 1], k[:, 0, 2], k[:, 1, 2]
    corners = torch.stack(torch.meshgrid(*[torch.stack([lo[a], hi[a]]) for a in range(3)], indexing="ij"), -1)
    corners = torch.cat([corners.reshape(8, 3), torch.ones(8, 1, device=lo.device)], dim=-1)  # [8, 4]
    depth = torch.einsum("vj,cj->vc", cameras.world_to_camera[:, 2], corners)  # [V, 8]
    far = depth.amax(dim=1).clamp_min(1e-6) * (1.0 + _DEPTH_MARGIN)
    near = torch.maximum(depth.amin(dim=1) * (1.0 - _DEPTH_MARGIN), far * _MIN_NEAR_SHARE)
    w, h = cameras.width, cameras.height
    p = torch.zeros(v, 4, 4, device=lo.device)
    p[:, 0, 0] = 2.0 * fx / w
    p[:, 0, 2] = 2.0 * cx / w - 1.0
    p[:, 1, 1] = -2.0 * fy / h
    p[:, 1, 2] = 1.0 - 2.0 * cy / h
    p[:, 2, 2] = (far + near) / (far - near)
    p[:, 2, 3] = -2.0 * far * near / (far - near)
    p[:, 3, 2] = 1.0
    return p

"""Differentiable renderers of soft voxel worlds, behind one interface.

A soft world is an occupancy probability per voxel `[X, Y, Z]` and a colour per voxel
and face `[X, Y, Z, 3, 3]` (faces top, bottom, side; RGB in [0, 1]), which
`face_colors` makes from material probabilities and the palette of
`genalign.data.voxel_map`. A renderer maps it and `Cameras` (`genalign.render.cameras`,
OpenCV convention, y-up world) to `VoxelRender(rgb [V, 3, H, W], alpha [V, 1, H, W])`,
differentiable in both inputs:

    renderer = make_renderer("torch")                   # or "nvdiffrast" (CUDA)
    out = renderer(occupancy, face_colors(materials), cameras)

`TorchVoxelRenderer` (CPU or GPU, pure torch) is emission-absorption volume rendering
(Max, "Optical Models for Direct Volume Rendering", IEEE TVCG 1995) over the grid. Each
ray is cut at the grid's box and sampled every `step` voxel units; a sample takes its
voxel's values (nearest: the world is blocky). A voxel of occupancy p has density
sigma = -ln(1 - p) per voxel unit, so a ray that crosses one whole voxel is stopped with
probability exactly p, and a segment of length `step` has opacity
alpha = 1 - (1 - p)^step. With transmittance T_i = prod_{j<i} (1 - alpha_j) the pixel is

    C = sum_i T_i alpha_i c_i + (1 - sum_i T_i alpha_i) * background.

Every voxel a ray passes has d alpha / d p = step (1 - p)^(step - 1) > 0, so gradient
reaches empty voxels as well as solid ones: a voxel at the default empty logit can
still appear (a renderer that draws only solid blocks gives it none).

The colour c_i is that of the face through which the ray entered the sample's voxel,
found exactly from the ray and the voxel's bounds (the axis whose boundary the ray
crossed last), times a fixed shade per face (top 1.0, x sides 0.8, z sides 0.65,
bottom 0.5) so that shape shows in a single image. The face choice is discrete and
carries no gradient; colours and opacities do.

`genalign.render.voxels_nvdiffrast` renders the same world by rasterisation on CUDA.

Run: `pytest tests/unit/test_voxel_render.py`.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from genalign.render.cameras import Cameras, camera_rays, grid_box

RENDERERS = ("torch", "nvdiffrast")
# Shades of the top, bottom, +-x side and +-z side faces (indices of `_FACE_SLOT`).
FACE_SHADES = (1.0, 0.5, 0.8, 0.65)
_EPS = 1e-6


class VoxelRender(NamedTuple):
    rgb: Tensor  # [V, 3, H, W] in [0, 1]
    alpha: Tensor  # [V, 1, H, W] in [0, 1], accumulated opacity


class VoxelRenderer(Protocol):
    def __call__(self, occupancy: Tensor, colors: Tensor, cameras: Cameras, *, world_scale: float) -> VoxelRender: ...


def face_colors(materials: Tensor, palette: Tensor) -> Tensor:
    """[X, Y, Z, 3, 3]: the expected face colours of material probabilities `materials`
    [X, Y, Z, M] (rows summing to 1) under `palette` [M, 3, 3] (materials x faces x RGB)."""
    if materials.shape[-1] != palette.shape[0] or palette.shape[1:] != (3, 3):
        raise ValueError(f"face_colors: materials [..., {palette.shape[0]}] and palette [M, 3, 3] expected, "
                         f"got {list(materials.shape)} and {list(palette.shape)}")
    return torch.einsum("xyzm,mfc->xyzfc", materials, palette.to(materials))


def _check_world(occupancy: Tensor, colors: Tensor) -> None:
    if occupancy.ndim != 3:
        raise ValueError(f"render: occupancy must be [X, Y, Z], got {list(occupancy.shape)}")
    if colors.shape != (*occupancy.shape, 3, 3):
        raise ValueError(f"render: colors must be [X, Y, Z, 3, 3] = {[*occupancy.shape, 3, 3]}, "
                         f"got {list(colors.shape)}")


class TorchVoxelRenderer:
    """Emission-absorption rendering of a soft voxel world (module doc), pure torch.

    step: sample spacing along each ray in voxel units (0.5: two samples a voxel).
    background: the RGB behind the world. chunk: rays rendered at once (memory bound).
    """

    def __init__(self, *, step: float = 0.5, background: tuple[float, float, float] = (1.0, 1.0, 1.0),
                 chunk: int = 1 << 15):
        if not 0.05 <= step <= 1.0:
            raise ValueError(f"TorchVoxelRenderer: step must be in [0.05, 1] voxel units, got {step}")
        if chunk < 1:
            raise ValueError(f"TorchVoxelRenderer: chunk must be >= 1, got {chunk}")
        self.step = float(step)
        self.background = tuple(float(c) for c in background)
        self.chunk = int(chunk)

    def __call__(self, occupancy: Tensor, colors: Tensor, cameras: Cameras, *, world_scale: float) -> VoxelRender:
        _check_world(occupancy, colors)
        dims = tuple(occupancy.shape)
        cameras = cameras.to(occupancy.device)
        origins, dirs = camera_rays(cameras)  # [V, H, W, 3] world units
        lo = grid_box(dims, world_scale)[0].to(occupancy.device)
        # voxel units: p_vox = (p_world - lo) / world_scale; directions keep unit length
        o = ((origins - lo) / world_scale).reshape(-1, 3)
        d = dirs.reshape(-1, 3)
        occ_flat = occupancy.reshape(-1)
        col_flat = colors.reshape(-1, 3, 3)
        rgbs, alphas = [], []
        for start in range(0, o.shape[0], self.chunk):
            rgb, alpha = self._rays(o[start:start + self.chunk], d[start:start + self.chunk], dims, occ_flat, col_flat)
            rgbs.append(rgb)
            alphas.append(alpha)
        v, h, w = len(cameras), cameras.height, cameras.width
        rgb = torch.cat(rgbs).view(v, h, w, 3).permute(0, 3, 1, 2)
        alpha = torch.cat(alphas).view(v, h, w, 1).permute(0, 3, 1, 2)
        return VoxelRender(rgb, alpha)

    def _rays(self, o: Tensor, d: Tensor, dims: tuple[int, int, int], occ: Tensor, col: Tensor) -> tuple[Tensor, Tensor]:
        dev = o.device
        size = torch.tensor(dims, dtype=o.dtype, device=dev)
        # slab test against the box [0, dims]
        safe = torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
        t_a, t_b = (0.0 - o) / safe, (size - o) / safe
        t_near = torch.minimum(t_a, t_b).amax(dim=-1).clamp_min(0.0)  # [R]
        t_far = torch.maximum(t_a, t_b).amin(dim=-1)
        n = math.ceil(math.sqrt(sum(k * k for k in dims)) / self.step) + 1
        t = t_near[:, None] + (torch.arange(n, device=dev, dtype=o.dtype) + 0.5) * self.step  # [R, S]
        p = o[:, None, :] + t[..., None] * d[:, None, :]  # [R, S, 3]
        idx = p.floor()
        inside = (t < t_far[:, None]) & (idx >= 0).all(-1) & (idx < size).all(-1)  # [R, S]
        ijk = idx.long().clamp_min(0).minimum(torch.tensor(dims, device=dev) - 1)
        flat = (ijk[..., 0] * dims[1] + ijk[..., 1]) * dims[2] + ijk[..., 2]  # [R, S]
        p_occ = occ[flat] * inside  # [R, S]
        log_trans = self.step * torch.log1p(-p_occ.clamp(max=1.0 - _EPS))  # ln(1 - alpha)
        alpha = 1.0 - log_trans.exp()
        trans = (torch.cumsum(log_trans, dim=-1) - log_trans).exp()  # exclusive transmittance
        weight = trans * alpha  # [R, S]
        # the face the ray entered this voxel through: the axis whose voxel boundary it
        # crossed last (the largest entry time)
        bound = torch.where(d[:, None, :] > 0, idx, idx + 1.0)
        t_enter = torch.where(d.abs()[:, None, :] > 1e-9, (bound - o[:, None, :]) / safe[:, None, :],
                              torch.full_like(p, -math.inf))
        axis = t_enter.argmax(dim=-1)  # [R, S] 0 = x, 1 = y, 2 = z
        down = (d[:, 1] < 0)[:, None].expand_as(axis)
        # face slot: 0 top, 1 bottom, 2 x side, 3 z side; palette face: top, bottom, side
        slot = torch.where(axis == 1, torch.where(down, 0, 1), torch.where(axis == 0, 2, 3))
        face = slot.clamp(max=2)
        shade = torch.tensor(FACE_SHADES, device=dev, dtype=o.dtype)[slot]  # [R, S]
        c = col[flat, face] * shade[..., None]  # [R, S, 3]
        acc = weight.sum(dim=-1, keepdim=True)  # [R, 1]
        bg = torch.tensor(self.background, device=dev, dtype=o.dtype)
        rgb = (weight[..., None] * c).sum(dim=1) + (1.0 - acc) * bg
        return rgb, acc


def make_renderer(kind: str = "torch", **options) -> VoxelRenderer:
    """The renderer `kind` (RENDERERS) with its options; "nvdiffrast" needs CUDA and the
    nvdiffrast package, and says which is missing."""
    if kind == "torch":
        return TorchVoxelRenderer(**options)
    if kind == "nvdiffrast":
        from genalign.render.voxels_nvdiffrast import NvdiffrastVoxelRenderer

        return NvdiffrastVoxelRenderer(**options)
    raise ValueError(f"make_renderer: unknown renderer {kind!r}; valid: {list(RENDERERS)}")

"""On CUDA the nvdiffrast voxel renderer draws what the EA renderer draws, and its
gradients reach occupancy and colours.

Skipped without a CUDA device (tests/conftest.py) and without the nvdiffrast package,
which only the genalign-render image holds (docker/render/Dockerfile).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genalign.data.voxel_map import logits_from_map, palette_colors
from genalign.data.voxel_scenes import make_structure
from genalign.render.cameras import Cameras, look_at, orbit_cameras
from genalign.render.voxels import TorchVoxelRenderer, face_colors
from genalign.render.voxels_nvdiffrast import NvdiffrastVoxelRenderer

pytest.importorskip("nvdiffrast")

SIZE = 128


def tower(device: str = "cuda") -> tuple[torch.Tensor, torch.Tensor, float]:
    """A near-binary world: occupancy sigmoid(+-8), material scores of logits_from_map."""
    m = make_structure("tower", (32, 32, 32), 0)
    logits = logits_from_map(m, occupied=8.0, empty=-8.0)
    occupancy = torch.sigmoid(torch.tensor(logits.occupancy, device=device))
    materials = torch.softmax(torch.tensor(logits.materials, device=device), dim=-1)
    colors = face_colors(materials, torch.tensor(palette_colors(), device=device))
    return occupancy, colors, m.world_scale


def test_nvdiffrast_draws_the_silhouettes_and_colours_of_the_ea_renderer():
    occupancy, colors, scale = tower()
    cams = orbit_cameras(4, tuple(occupancy.shape), world_scale=scale, size=SIZE, seed=0)
    with torch.no_grad():
        raster = NvdiffrastVoxelRenderer()(occupancy, colors, cams, world_scale=scale)
        ea = TorchVoxelRenderer()(occupancy, colors, cams, world_scale=scale)
    assert raster.rgb.shape == ea.rgb.shape == (4, 3, SIZE, SIZE)
    assert raster.alpha.shape == ea.alpha.shape == (4, 1, SIZE, SIZE)
    a, b = raster.alpha > 0.5, ea.alpha > 0.5
    iou = (a & b).sum() / (a | b).sum()
    assert (a & b).sum() > 0.05 * a.numel()  # the tower fills a fair share of the images
    assert iou >= 0.9, iou
    both = (a & b).expand(-1, 3, -1, -1)
    error = (raster.rgb - ea.rgb).abs()[both].mean()
    assert error <= 0.08, error


def test_a_voxel_of_p_seen_face_on_has_alpha_p_and_an_empty_world_is_the_background():
    occupancy = torch.zeros(3, 3, 3, device="cuda")
    occupancy[1, 1, 1] = 0.4
    colors = torch.rand(3, 3, 3, 3, 3, device="cuda")
    # on the axis through voxel (1, 1, 1), whose centre is at world (0, 3, 0); pixel 4's
    # centre is the image centre
    e = torch.tensor(look_at(np.array([0.0, 3.0, 20.0]), np.array([0.0, 3.0, 0.0])), dtype=torch.float32)
    k = torch.tensor([[9.0, 0.0, 4.5], [0.0, 9.0, 4.5], [0.0, 0.0, 1.0]])
    cams = Cameras(e[None], k[None], 9, 9)
    renderer = NvdiffrastVoxelRenderer(antialias=False, background=(0.2, 0.4, 0.6))
    out = renderer(occupancy, colors, cams, world_scale=2.0)
    assert abs(out.alpha[0, 0, 4, 4].item() - 0.4) < 1e-5
    empty = renderer(torch.zeros_like(occupancy), colors, cams, world_scale=2.0)
    assert torch.equal(empty.alpha, torch.zeros_like(empty.alpha))
    assert torch.allclose(empty.rgb, torch.tensor([0.2, 0.4, 0.6], device="cuda").view(1, 3, 1, 1).expand_as(empty.rgb))


def test_gradients_flow_through_nvdiffrast_to_occupancy_and_colours():
    occupancy, colors, scale = tower()
    occupancy, colors = occupancy.clone().requires_grad_(), colors.clone().requires_grad_()
    cams = orbit_cameras(4, tuple(occupancy.shape), world_scale=scale, size=SIZE, seed=0)
    out = NvdiffrastVoxelRenderer()(occupancy, colors, cams, world_scale=scale)
    g = torch.Generator(device="cuda").manual_seed(0)
    target = torch.rand(out.rgb.shape, device="cuda", generator=g)
    ((out.rgb - target) ** 2).mean().add(out.alpha.mean()).backward()
    for grad in (occupancy.grad, colors.grad):
        assert grad is not None and torch.isfinite(grad).all()
        assert (grad != 0).sum() > 100

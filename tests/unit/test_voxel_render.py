"""genalign.render.voxels on tiny worlds: the EA renderer's opacity, face colours and
gradients, and the renderer table.

Expected values by hand. A voxel of occupancy p has density -ln(1 - p) per voxel unit,
so a ray crossing one whole voxel with samples every `step` units (1 / step samples in
it) has opacity 1 - ((1 - p)^step)^(1 / step) = p exactly. A ray entering a solid block
shows the colour of the face it entered through times that face's shade: top 1.0,
bottom 0.5, x sides 0.8, z sides 0.65.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genalign.data.voxel_map import initial_map, logits_from_map, palette_colors
from genalign.render import voxels_nvdiffrast
from genalign.render.cameras import Cameras, camera_rays, grid_box, look_at, orbit_cameras
from genalign.render.voxels import (
    FACE_SHADES,
    TorchVoxelRenderer,
    VoxelRender,
    face_colors,
    make_renderer,
)

SCALE = 2.0
PALETTE = torch.tensor(palette_colors())  # [7, 3, 3] SOLIDS x (top, bottom, side) x RGB
GRASS = 0  # index in SOLIDS


def axis_camera(eye, target, up=(0.0, 1.0, 0.0), size: int = 3) -> Cameras:
    """One camera at `eye` looking at `target`; with an odd `size` the centre pixel's ray
    is the optical axis exactly."""
    e = look_at(np.array(eye, dtype=float), np.array(target, dtype=float), np.array(up, dtype=float))
    k = np.array([[size, 0.0, size / 2], [0.0, size, size / 2], [0.0, 0.0, 1.0]])
    return Cameras(torch.tensor(e[None], dtype=torch.float32), torch.tensor(k[None], dtype=torch.float32), size, size)


def one_material(dims, material: int) -> torch.Tensor:
    """[X, Y, Z, 3, 3] face colours of `material` everywhere."""
    materials = torch.zeros(*dims, len(PALETTE))
    materials[..., material] = 1.0
    return face_colors(materials, PALETTE)


def chords(cams: Cameras, dims, world_scale: float) -> torch.Tensor:
    """[V, H, W] length in voxel units of each pixel's centre ray inside the grid box."""
    o, d = camera_rays(cams)
    lo, hi = grid_box(dims, world_scale)
    o, d, lo, hi = o.double(), d.double(), lo.double(), hi.double()
    safe = torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
    t_a, t_b = (lo - o) / safe, (hi - o) / safe
    near = torch.minimum(t_a, t_b).amax(-1).clamp_min(0.0)
    far = torch.maximum(t_a, t_b).amin(-1)
    return (far - near).clamp_min(0.0) / world_scale


def test_an_empty_world_is_the_background_with_alpha_zero():
    dims = (4, 4, 4)
    cams = orbit_cameras(2, dims, world_scale=SCALE, size=12, seed=0)
    background = (0.2, 0.4, 0.6)
    out = TorchVoxelRenderer(background=background)(
        torch.zeros(dims), torch.rand(*dims, 3, 3), cams, world_scale=SCALE
    )
    assert isinstance(out, VoxelRender)
    assert out.rgb.shape == (2, 3, 12, 12) and out.alpha.shape == (2, 1, 12, 12)
    assert torch.equal(out.alpha, torch.zeros_like(out.alpha))
    assert torch.equal(out.rgb, torch.tensor(background).view(1, 3, 1, 1).expand_as(out.rgb))


def test_a_solid_block_is_opaque_where_rays_cross_it_and_clear_where_they_miss():
    dims = (6, 6, 6)
    cams = orbit_cameras(2, dims, world_scale=SCALE, size=24, seed=1)
    out = TorchVoxelRenderer()(torch.ones(dims), one_material(dims, GRASS), cams, world_scale=SCALE)
    length = chords(cams, dims, SCALE)
    alpha = out.alpha[:, 0]
    assert (length >= 1.0).sum() > 100 and (length == 0).sum() > 100  # both kinds present
    assert (alpha[length >= 1.0] > 1 - 1e-5).all()
    assert (alpha[length == 0] == 0).all()


@pytest.mark.parametrize("step", [0.5, 0.25])
@pytest.mark.parametrize("p", [0.2, 0.7])
@pytest.mark.parametrize(
    "eye, up",
    [((0.0, 3.0, 20.0), (0.0, 1.0, 0.0)), ((20.0, 3.0, 0.0), (0.0, 1.0, 0.0)), ((0.0, 20.0, 0.0), (0.0, 0.0, -1.0))],
    ids=["along z", "along x", "from above"],
)
def test_a_ray_straight_through_one_voxel_of_p_has_alpha_p(step, p, eye, up):
    dims = (3, 3, 3)
    occupancy = torch.zeros(dims)
    occupancy[1, 1, 1] = p
    centre = (0.0, 1.5 * SCALE, 0.0)  # the world centre of voxel (1, 1, 1)
    cams = axis_camera(eye, centre, up)
    out = TorchVoxelRenderer(step=step)(occupancy, torch.rand(*dims, 3, 3), cams, world_scale=SCALE)
    assert abs(out.alpha[0, 0, 1, 1].item() - p) < 1e-5


@pytest.mark.parametrize(
    "eye, up, face, shade",
    [
        ((0.0, 40.0, 0.0), (0.0, 0.0, -1.0), 0, FACE_SHADES[0]),  # top
        ((0.0, -40.0, 0.0), (0.0, 0.0, -1.0), 1, FACE_SHADES[1]),  # bottom, from below the ground
        ((40.0, 3.0, 0.0), (0.0, 1.0, 0.0), 2, FACE_SHADES[2]),  # +x side
        ((0.0, 3.0, -40.0), (0.0, 1.0, 0.0), 2, FACE_SHADES[3]),  # -z side
    ],
    ids=["top", "bottom", "x side", "z side"],
)
def test_a_block_shows_the_palette_colour_of_the_face_seen_times_its_shade(eye, up, face, shade):
    dims = (5, 3, 5)
    occupancy = torch.zeros(dims)
    occupancy[:, :2] = 1.0  # a slab two voxels high on the ground
    cams = axis_camera(eye, (0.0, 3.0, 0.0), up, size=5)
    out = TorchVoxelRenderer(background=(0.0, 0.0, 0.0))(
        occupancy, one_material(dims, GRASS), cams, world_scale=SCALE
    )
    expected = PALETTE[GRASS, face] * shade
    assert torch.allclose(out.rgb[0, :, 2, 2], expected, atol=1e-5)
    assert out.alpha[0, 0, 2, 2] > 1 - 1e-5


def test_rendering_in_chunks_changes_nothing():
    dims = (4, 4, 4)
    g = torch.Generator().manual_seed(0)
    occupancy, colors = torch.rand(dims, generator=g), torch.rand(*dims, 3, 3, generator=g)
    cams = orbit_cameras(2, dims, world_scale=SCALE, size=8, seed=2)
    whole = TorchVoxelRenderer()(occupancy, colors, cams, world_scale=SCALE)
    chunked = TorchVoxelRenderer(chunk=7)(occupancy, colors, cams, world_scale=SCALE)
    assert torch.allclose(whole.rgb, chunked.rgb) and torch.allclose(whole.alpha, chunked.alpha)


def test_gradients_reach_the_occupancy_and_materials_of_an_empty_voxel():
    """Autograd against central differences, in float64, at a voxel that is empty at the
    start: occupancy sigmoid(-3) = 0.047 and materials uniform, as an optimiser begins."""
    ground = initial_map("ground", (6, 6, 6))
    logits = logits_from_map(ground)
    occ0 = torch.tensor(logits.occupancy, dtype=torch.float64)
    mat0 = torch.tensor(logits.materials, dtype=torch.float64)
    voxel = (3, 2, 3)  # above the ground, in the middle of the view
    assert ground.blocks[voxel] == 0
    cams = orbit_cameras(2, ground.dims, world_scale=SCALE, size=12, seed=0)
    renderer = TorchVoxelRenderer()
    g = torch.Generator().manual_seed(0)
    w_rgb, w_alpha = torch.rand(2, 3, 12, 12, generator=g).double(), torch.rand(2, 1, 12, 12, generator=g).double()

    def loss(occ_logits, mat_logits):
        colors = face_colors(torch.softmax(mat_logits, dim=-1), PALETTE.double())
        out = renderer(torch.sigmoid(occ_logits), colors, cams, world_scale=SCALE)
        return (out.rgb * w_rgb).sum() + (out.alpha * w_alpha).sum()

    occ, mat = occ0.clone().requires_grad_(), mat0.clone().requires_grad_()
    loss(occ, mat).backward()
    eps = 1e-6

    def central(which, index):
        plus, minus = occ0.clone(), occ0.clone()
        mplus, mminus = mat0.clone(), mat0.clone()
        if which == "occ":
            plus[index] += eps
            minus[index] -= eps
        else:
            mplus[index] += eps
            mminus[index] -= eps
        return (loss(plus, mplus) - loss(minus, mminus)).item() / (2 * eps)

    d_occ = central("occ", voxel)
    assert abs(d_occ) > 1e-3
    assert occ.grad[voxel].item() == pytest.approx(d_occ, rel=1e-5)
    d_mat = [central("mat", (*voxel, m)) for m in range(len(PALETTE))]
    assert max(abs(d) for d in d_mat) > 1e-4
    assert mat.grad[voxel].tolist() == pytest.approx(d_mat, rel=1e-4, abs=1e-9)


def test_face_colors_are_the_expected_palette_colours():
    materials = torch.zeros(2, 1, 1, 7)
    materials[0, 0, 0, 3] = 1.0
    materials[1, 0, 0, :2] = 0.5
    colors = face_colors(materials, PALETTE)
    assert colors.shape == (2, 1, 1, 3, 3)
    assert torch.allclose(colors[0, 0, 0], PALETTE[3])
    assert torch.allclose(colors[1, 0, 0], (PALETTE[0] + PALETTE[1]) / 2)
    with pytest.raises(ValueError, match=r"face_colors: materials \[\.\.\., 7\]"):
        face_colors(torch.zeros(2, 2, 2, 6), PALETTE)
    with pytest.raises(ValueError, match="palette"):
        face_colors(torch.zeros(2, 2, 2, 7), torch.zeros(7, 3))


def test_the_renderer_checks_the_world_and_its_settings():
    cams = orbit_cameras(1, (2, 2, 2), world_scale=SCALE, size=4, seed=0)
    renderer = TorchVoxelRenderer()
    with pytest.raises(ValueError, match=r"occupancy must be \[X, Y, Z\]"):
        renderer(torch.zeros(2, 2), torch.zeros(2, 2, 3, 3), cams, world_scale=SCALE)
    with pytest.raises(ValueError, match=r"colors must be \[X, Y, Z, 3, 3\] = \[2, 2, 2, 3, 3\]"):
        renderer(torch.zeros(2, 2, 2), torch.zeros(2, 2, 2, 3), cams, world_scale=SCALE)
    with pytest.raises(ValueError, match="step must be in"):
        TorchVoxelRenderer(step=2.0)
    with pytest.raises(ValueError, match="chunk must be"):
        TorchVoxelRenderer(chunk=0)


def test_make_renderer_names_the_valid_renderers():
    assert isinstance(make_renderer("torch", step=0.25), TorchVoxelRenderer)
    with pytest.raises(ValueError, match=r"unknown renderer 'mitsuba'; valid: \['torch', 'nvdiffrast'\]"):
        make_renderer("mitsuba")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the nvdiffrast renderer is tested in tests/gpu")
def test_the_nvdiffrast_renderer_says_what_is_missing():
    with pytest.raises(RuntimeError, match=r"nvdiffrast renderer: CUDA is not available"):
        make_renderer("nvdiffrast")
    with pytest.raises(ValueError, match="layers must be an integer >= 1"):
        make_renderer("nvdiffrast", layers=0)  # settings are checked before the machine


def test_the_nvdiffrast_module_repeats_the_shared_definitions_exactly():
    # it cannot import genalign.render.voxels (voxels imports it), so it repeats them
    assert voxels_nvdiffrast.FACE_SHADES == FACE_SHADES
    assert voxels_nvdiffrast.NvdiffrastRender._fields == VoxelRender._fields

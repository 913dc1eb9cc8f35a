"""genalign.render.cameras: orbits, rays, rigid motions and the cameras.json format.

Each bad cameras.json is a CameraError whose message names the view and the field.
"""

from __future__ import annotations

import copy
import itertools
import json

import numpy as np
import pytest
import torch

from genalign.render.cameras import (
    CameraError,
    Cameras,
    camera_rays,
    cameras_to_json,
    grid_box,
    look_at,
    orbit_cameras,
    parse_cameras,
    read_cameras,
    write_cameras,
)

DIMS = (16, 8, 12)
SCALE = 2.0


def project(cams: Cameras, points: torch.Tensor) -> torch.Tensor:
    """[V, N, 2] pixel coordinates of world points [N, 3]."""
    homog = torch.cat([points, torch.ones(len(points), 1)], dim=-1)
    cam = torch.einsum("vij,nj->vni", cams.world_to_camera, homog)[..., :3]
    uvw = torch.einsum("vij,vnj->vni", cams.intrinsics, cam)
    return uvw[..., :2] / uvw[..., 2:]


def valid_file(n: int = 2) -> dict:
    return cameras_to_json(orbit_cameras(n, DIMS, world_scale=SCALE, size=24, seed=3))


@pytest.mark.parametrize("dims", [DIMS, (8, 16, 8)])
def test_orbit_cameras_look_at_the_target_and_see_the_whole_grid(dims):
    # A tall world: the target (0.3 of the height) is far below the grid's centre, so a
    # distance fitted to the sphere about the centre would cut off the top corners.
    size = 32
    cams = orbit_cameras(8, dims, world_scale=SCALE, size=size, seed=1, target_height=0.3)
    target = torch.tensor([[0.0, 0.3 * dims[1] * SCALE, 0.0]])
    assert torch.allclose(project(cams, target), torch.full((8, 1, 2), size / 2), atol=1e-3)
    lo, hi = grid_box(dims, SCALE)
    corners = torch.tensor([[(hi if b else lo)[a] for a, b in enumerate(bits)]
                            for bits in itertools.product([0, 1], repeat=3)])
    uv = project(cams, corners)
    assert (uv > 0).all() and (uv < size).all()


def test_orbit_cameras_depend_on_the_seed_only():
    a = orbit_cameras(4, DIMS, world_scale=SCALE, size=16, seed=5)
    b = orbit_cameras(4, DIMS, world_scale=SCALE, size=16, seed=5)
    c = orbit_cameras(4, DIMS, world_scale=SCALE, size=16, seed=6)
    assert torch.equal(a.world_to_camera, b.world_to_camera)
    assert not torch.allclose(a.world_to_camera, c.world_to_camera)


@pytest.mark.parametrize("kwargs", [{"n": 0}, {"fov_deg": 0.5}, {"elevation_deg": (50.0, 10.0)}, {"size": 0}])
def test_orbit_cameras_reject_bad_settings(kwargs):
    args = {"n": 2, "dims": DIMS, "world_scale": SCALE, "size": 16} | kwargs
    with pytest.raises(CameraError, match="orbit_cameras"):
        orbit_cameras(**args)


def test_camera_rays_are_unit_and_the_centre_ray_points_at_the_target():
    size = 33  # odd, so pixel 16's centre is the image centre
    cams = orbit_cameras(3, DIMS, world_scale=SCALE, size=size, seed=2)
    origins, dirs = camera_rays(cams)
    assert origins.shape == dirs.shape == (3, size, size, 3)
    assert torch.allclose(dirs.norm(dim=-1), torch.ones(3, size, size), atol=1e-6)
    target = torch.tensor([0.0, 0.3 * DIMS[1] * SCALE, 0.0])
    to_target = target - origins[:, 16, 16]
    assert torch.allclose(dirs[:, 16, 16], to_target / to_target.norm(dim=-1, keepdim=True), atol=1e-5)
    assert torch.allclose(origins[:, 0, 0], cams.camera_to_world()[:, :3, 3])


def test_camera_rays_row_zero_is_the_top_of_the_image():
    cams = orbit_cameras(1, DIMS, world_scale=SCALE, size=9, seed=0, elevation_deg=(0.0, 0.0))
    _, dirs = camera_rays(cams)
    assert dirs[0, 0, 4, 1] > dirs[0, 8, 4, 1]  # world y is up: the top row looks higher


def test_look_at_is_a_rotation_with_det_one():
    rng = np.random.default_rng(0)
    for _ in range(10):
        eye, target = rng.normal(size=3) * 10, rng.normal(size=3)
        e = look_at(eye, target)
        r = e[:3, :3]
        assert np.allclose(r @ r.T, np.eye(3), atol=1e-12)
        assert np.isclose(np.linalg.det(r), 1.0)
        assert np.allclose(e[:3, :3] @ eye + e[:3, 3], 0.0)  # the eye is the camera's origin
        forward = (target - eye) / np.linalg.norm(target - eye)
        assert np.allclose(r[2], forward)  # camera z looks at the target
        assert r[1] @ np.array([0.0, 1.0, 0.0]) < 0  # camera y (down) is against world up


def test_look_at_rejects_a_view_along_up():
    with pytest.raises(CameraError, match="parallel to up"):
        look_at(np.array([0.0, 5.0, 0.0]), np.zeros(3))


def test_camera_to_world_inverts_world_to_camera():
    cams = orbit_cameras(5, DIMS, world_scale=SCALE, size=16, seed=4)
    eye = torch.eye(4).expand(5, 4, 4)
    assert torch.allclose(cams.camera_to_world() @ cams.world_to_camera, eye, atol=1e-5)
    assert torch.allclose(cams.world_to_camera @ cams.camera_to_world(), eye, atol=1e-5)


def test_select_and_shape_checks():
    cams = orbit_cameras(4, DIMS, world_scale=SCALE, size=16, seed=4)
    two = cams.select([3, 1])
    assert len(two) == 2 and torch.equal(two.world_to_camera[0], cams.world_to_camera[3])
    with pytest.raises(CameraError, match="expected world_to_camera"):
        Cameras(torch.zeros(2, 4, 4), torch.zeros(3, 3, 3), 16, 16)


def test_grid_box_centres_x_and_z_and_stands_on_y_zero():
    lo, hi = grid_box((4, 2, 6), 2.0)
    assert lo.tolist() == [-4.0, 0.0, -6.0]
    assert hi.tolist() == [4.0, 4.0, 6.0]


def test_write_then_read_gives_the_same_cameras(tmp_path):
    cams = orbit_cameras(3, DIMS, world_scale=SCALE, size=20, seed=7)
    path = tmp_path / "cameras.json"
    write_cameras(cams, path)
    back = read_cameras(path)
    assert torch.equal(back.world_to_camera, cams.world_to_camera)
    assert torch.equal(back.intrinsics, cams.intrinsics)
    assert (back.height, back.width) == (20, 20)
    assert [v["name"] for v in json.loads(path.read_text())["views"]] == ["v0", "v1", "v2"]


def test_an_opengl_camera_gives_the_rays_of_its_opencv_counterpart():
    obj = valid_file(3)
    gl = copy.deepcopy(obj)
    gl["convention"] = "opengl"
    flip = np.diag([1.0, -1.0, -1.0, 1.0])  # its own inverse
    for view in gl["views"]:
        view["world_to_camera"] = (flip @ np.array(view["world_to_camera"])).tolist()
    # the GL camera looks down its -z: its +z points back at the eye, away from the grid
    assert np.array(gl["views"][0]["world_to_camera"])[2, :3] @ np.array(obj["views"][0]["world_to_camera"])[2, :3] < 0
    cv_rays, gl_rays = camera_rays(parse_cameras(obj, "cv")), camera_rays(parse_cameras(gl, "gl"))
    assert torch.allclose(cv_rays[0], gl_rays[0], atol=1e-5)
    assert torch.allclose(cv_rays[1], gl_rays[1], atol=1e-6)


def _broken(change) -> dict:
    obj = valid_file(2)
    change(obj)
    return obj


def _set_rotation(view: int, rotation: list) -> callable:
    def change(obj):
        e = np.array(obj["views"][view]["world_to_camera"])
        e[:3, :3] = rotation
        obj["views"][view]["world_to_camera"] = e.tolist()
    return change


def _set(view: int, key: str, value) -> callable:
    def change(obj):
        obj["views"][view][key] = value
    return change


def _set_entry(view: int, key: str, row: int, col: int, value: float) -> callable:
    def change(obj):
        obj["views"][view][key][row][col] = value
    return change


BAD_VIEWS = {
    "singular": (_set_rotation(1, np.zeros((3, 3))), r"views\[1\]\.world_to_camera: the rotation is singular"),
    "not orthonormal": (_set_rotation(1, 2 * np.eye(3)), r"views\[1\]\.world_to_camera: .*not orthonormal"),
    "sheared": (_set_rotation(0, [[1, 0.5, 0], [0, 1, 0], [0, 0, 1]]), r"views\[0\]\.world_to_camera: .*orthonormal"),
    "reflection": (_set_rotation(1, np.diag([1.0, 1.0, -1.0])), r"views\[1\]\.world_to_camera: .*det \+1"),
    "bottom row": (_set_entry(1, "world_to_camera", 3, 2, 1.0), r"views\[1\]\.world_to_camera: the bottom row"),
    "non-finite": (_set_entry(0, "world_to_camera", 0, 3, float("nan")), r"views\[0\]\.world_to_camera: .*finite"),
    "3x4 extrinsic": (lambda o: o["views"][0].update(world_to_camera=o["views"][0]["world_to_camera"][:3]),
                      r"views\[0\]\.world_to_camera: expected a finite 4 x 4"),
    "width 0": (_set(0, "width", 0), r"views\[0\]: width must be an integer"),
    "float width": (_set(1, "width", 24.0), r"views\[1\]: width must be an integer"),
    "bool height": (_set(0, "height", True), r"views\[0\]: height must be an integer"),
    "huge height": (_set(1, "height", 10**6), r"views\[1\]: height must be an integer in \[1, 4096\]"),
    "zero focal": (_set_entry(1, "intrinsics", 0, 0, 0.0), r"views\[1\]\.intrinsics: focal lengths"),
    "negative focal": (_set_entry(0, "intrinsics", 1, 1, -3.0), r"views\[0\]\.intrinsics: focal lengths"),
    "skew": (_set_entry(0, "intrinsics", 0, 1, 0.1), r"views\[0\]\.intrinsics: expected \[\[fx, 0, cx\]"),
    "mixed sizes": (_set(1, "height", 25), r"views\[1\]: image size 24x25 differs"),
    "unknown view field": (_set(1, "fov", 40), r"views\[1\]: unknown field\(s\) \['fov'\]"),
    "missing intrinsics": (lambda o: o["views"][1].pop("intrinsics"), r"views\[1\]: missing field 'intrinsics'"),
    "missing width": (lambda o: o["views"][0].pop("width"), r"views\[0\]: missing field 'width'"),
    "view not an object": (lambda o: o["views"].append([1, 2]), r"views\[2\]: expected an object"),
}


@pytest.mark.parametrize("change, message", BAD_VIEWS.values(), ids=BAD_VIEWS.keys())
def test_a_bad_view_is_an_error_naming_the_view_and_field(change, message):
    with pytest.raises(CameraError, match=r"^cams\.json: " + message):
        parse_cameras(_broken(change), "cams.json")


BAD_FILES = {
    "unknown convention": (lambda o: o.update(convention="blender"), r"convention must be one of \['opencv', 'opengl'\]"),
    "missing convention": (lambda o: o.pop("convention"), r"convention must be one of .*got None"),
    "unknown field": (lambda o: o.update(fov=40), r"unknown field\(s\) \['fov'\]; valid: \['convention', 'views'\]"),
    "missing views": (lambda o: o.pop("views"), r"views must be a non-empty list"),
    "empty views": (lambda o: o.update(views=[]), r"views must be a non-empty list"),
}


@pytest.mark.parametrize("change, message", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_a_bad_file_is_an_error_naming_the_field(change, message):
    with pytest.raises(CameraError, match=r"^cams\.json: " + message):
        parse_cameras(_broken(change), "cams.json")


def test_not_an_object_not_json_and_no_file_are_errors_naming_the_file(tmp_path):
    with pytest.raises(CameraError, match="cams.json: expected an object"):
        parse_cameras([1, 2], "cams.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CameraError, match="bad.json: not JSON"):
        read_cameras(bad)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(CameraError, match="binary.json: not JSON"):
        read_cameras(binary)
    with pytest.raises(CameraError, match="missing.json: no such cameras file"):
        read_cameras(tmp_path / "missing.json")

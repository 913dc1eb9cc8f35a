"""Hand-pose losses (`genalign.losses.hand_pose`).

Expected values are worked out by hand in each docstring; lengths in mm. The 3-4-5
and 6-8-10 right triangles give exact Euclidean distances.
"""

from __future__ import annotations

import math

import pytest
import torch

from genalign.losses.hand_pose import (
    GEODESIC_EPS,
    bone_points,
    box_penetration_loss,
    box_signed_distance,
    diversity_loss,
    gaussian_kl,
    geodesic_angle,
    joints3d_loss,
    matrix_to_rotation_6d,
    object_pose_loss,
    per_joint_batch_std,
    reprojection_loss,
    rotation_6d_to_matrix,
)

NAN = float("nan")


def rot_z(deg: float, dtype=torch.float32) -> torch.Tensor:
    """Rotation by `deg` degrees about z. [3, 3]"""
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=dtype)


def random_rotations(n: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return rotation_6d_to_matrix(torch.randn(n, 6, generator=g, dtype=dtype))


# ----------------------------------------------------------------------- joints3d_loss


def _two_samples(grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """[B=2, J=2, 3], target 0. Sample 0: joint 0 exact (the root), joint 1 off by
    (3, 4, 0) -> errors [0, 5], mean 2.5. Sample 1: (6, 8, 0) and (0, 0, 6) -> [10, 6],
    mean 8."""
    pred = torch.tensor(
        [[[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]], [[6.0, 8.0, 0.0], [0.0, 0.0, 6.0]]],
        requires_grad=grad,
    )
    return pred, torch.zeros(2, 2, 3)


def test_joints3d_loss_is_mean_euclidean_distance():
    """(2.5 + 8) / 2 = 5.25 mm; not squared (that would be (25/2 + 100/2 ...))."""
    pred, target = _two_samples()
    assert joints3d_loss(pred, target).item() == pytest.approx(5.25)


def test_joints3d_loss_weighted_mean():
    """weights [1, 3]: (1 * 2.5 + 3 * 8) / 4 = 26.5 / 4 = 6.625; all-zero weights -> 0."""
    pred, target = _two_samples(grad=True)
    out = joints3d_loss(pred, target, torch.tensor([1.0, 3.0]))
    assert out.item() == pytest.approx(6.625)
    zero = joints3d_loss(pred, target, torch.zeros(2))
    assert zero.item() == 0.0
    zero.backward()
    assert torch.isfinite(pred.grad).all()


def test_joints3d_loss_gradient_is_unit_direction_and_finite_at_root():
    """d loss / d pred[0, 1] = 1/(B J) * (3, 4, 0)/5 = 0.25 * (0.6, 0.8, 0); the exact
    root joint gets the subgradient 0, not NaN."""
    pred, target = _two_samples(grad=True)
    joints3d_loss(pred, target).backward()
    torch.testing.assert_close(pred.grad[0, 1], torch.tensor([0.15, 0.2, 0.0]))
    torch.testing.assert_close(pred.grad[0, 0], torch.zeros(3))


def test_joints3d_loss_rejects_bad_shapes():
    x = torch.zeros(2, 21, 3)
    with pytest.raises(ValueError, match=r"pred must be \[B, J, 3\]"):
        joints3d_loss(torch.zeros(2, 21), torch.zeros(2, 21))
    with pytest.raises(ValueError, match="pred and target must have one shape"):
        joints3d_loss(x, torch.zeros(2, 20, 3))
    with pytest.raises(ValueError, match=r"weight must be per-sample \[B\]"):
        joints3d_loss(x, x, torch.ones(3))


# ------------------------------------------------------------------- reprojection_loss

K = torch.tensor([[[600.0, 0.0, 320.0], [0.0, 500.0, 240.0], [0.0, 0.0, 1.0]]])


def test_reprojection_of_point_on_optical_axis_is_principal_point():
    """(0, 0, 500) projects to (cx, cy) = (320, 240); target (323, 244) -> 5 px.
    (100, -50, 500): u = 320 + 600 * 100/500 = 440, v = 240 + 500 * (-50/500) = 190,
    target (440, 190) -> 0. Mean over the two joints: 2.5 px."""
    joints = torch.tensor([[[0.0, 0.0, 500.0], [100.0, -50.0, 500.0]]])
    target = torch.tensor([[[323.0, 244.0], [440.0, 190.0]]])
    assert reprojection_loss(joints, K, target).item() == pytest.approx(2.5)


def test_reprojection_depth_floor_keeps_points_at_or_behind_camera_finite():
    """Z = 0 and Z = -10 are projected as at Z = 1 mm: (0.5, 0, Z) -> u = 320 + 600 * 0.5
    = 620, v = 240. Targets there give 0; gradients stay finite."""
    joints = torch.tensor([[[0.5, 0.0, 0.0], [0.5, 0.0, -10.0]]], requires_grad=True)
    target = torch.tensor([[[620.0, 240.0], [620.0, 240.0]]])
    out = reprojection_loss(joints, K, target)
    assert out.item() == pytest.approx(0.0, abs=1e-4)
    reprojection_loss(joints, K, target + 3.0).backward()
    assert torch.isfinite(joints.grad).all()
    assert (joints.grad[..., 2] == 0).all()  # the clamped depth gets no gradient


def test_reprojection_rejects_bad_shapes():
    joints = torch.zeros(1, 21, 3)
    with pytest.raises(ValueError, match=r"K must be \[B, 3, 3\]"):
        reprojection_loss(joints, torch.eye(3), torch.zeros(1, 21, 2))
    with pytest.raises(ValueError, match=r"target_px must be \[B, J, 2\]"):
        reprojection_loss(joints, K, torch.zeros(1, 21, 3))


# ------------------------------------------------------------- diversity and batch std


def test_diversity_loss_is_margin_for_identical_predictions():
    """s = 0 everywhere -> relu(2 - 0) = 2 on every coordinate -> mean 2; finite grad."""
    pred = torch.ones(4, 21, 3).mul(7.0).requires_grad_()
    out = diversity_loss(pred, margin_mm=2.0)
    assert out.item() == pytest.approx(2.0)
    out.backward()
    assert torch.isfinite(pred.grad).all()


def test_diversity_loss_is_zero_for_a_spread_batch():
    """Samples at 0 and 20 on every coordinate: population std 10 > margin 2 -> 0."""
    pred = torch.stack([torch.zeros(21, 3), torch.full((21, 3), 20.0)]).requires_grad_()
    out = diversity_loss(pred, margin_mm=2.0)
    assert out.item() == 0.0
    out.backward()
    assert (pred.grad == 0).all()


def test_diversity_loss_partial_collapse_value_and_gradient():
    """Samples at 0 and 2: std = |2 - 0| / 2 = 1 (correction 0, not 1.414 with
    correction 1) -> relu(2 - 1) = 1 per coordinate, mean 1. With 63 coordinates,
    d loss / d x_1 = -(1/63) * d std / d x_1 = -(1/63)(1/2) = -1/126: push apart."""
    pred = torch.stack([torch.zeros(21, 3), torch.full((21, 3), 2.0)]).requires_grad_()
    out = diversity_loss(pred, margin_mm=2.0)
    assert out.item() == pytest.approx(1.0)
    out.backward()
    torch.testing.assert_close(pred.grad[1], torch.full((21, 3), -1.0 / 126))
    torch.testing.assert_close(pred.grad[0], torch.full((21, 3), 1.0 / 126))


def test_per_joint_batch_std_averages_xyz():
    """Samples differ by 6 mm in x only: std x = 3, y = z = 0 -> (3 + 0 + 0) / 3 = 1."""
    second = torch.zeros(21, 3)
    second[:, 0] = 6.0
    out = per_joint_batch_std(torch.stack([torch.zeros(21, 3), second]))
    assert out.shape == (21,)
    torch.testing.assert_close(out, torch.ones(21))


def test_batch_statistics_need_two_samples_and_a_margin():
    with pytest.raises(ValueError, match="at least 2 samples"):
        diversity_loss(torch.zeros(1, 21, 3), 1.0)
    with pytest.raises(ValueError, match="at least 2 samples"):
        per_joint_batch_std(torch.zeros(1, 21, 3))
    with pytest.raises(ValueError, match="margin_mm must be >= 0"):
        diversity_loss(torch.zeros(2, 21, 3), -1.0)


# ------------------------------------------------------------------------ gaussian_kl


def test_gaussian_kl_hand_values():
    """KL = -1/2 sum(1 + logvar - mu^2 - e^logvar): mu = 0, logvar = 0 -> 0;
    mu = 1, logvar = 0 -> 1/2 per dimension, 3 dims -> 1.5; batch [1.5, 0] -> 0.75.
    logvar = ln 2, mu = 0 -> -1/2 (1 + ln 2 - 2) = (1 - ln 2)/2 = 0.153426 per dim."""
    assert gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 3)).item() == 0.0
    mu = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    assert gaussian_kl(mu, torch.zeros(2, 3)).item() == pytest.approx(0.75)
    out = gaussian_kl(torch.zeros(1, 2), torch.full((1, 2), math.log(2.0)))
    assert out.item() == pytest.approx(2 * (1 - math.log(2.0)) / 2)


def test_gaussian_kl_gradient():
    """d KL / d mu = mu / B; d KL / d logvar = (e^logvar - 1) / (2 B): 0 at logvar = 0."""
    mu = torch.tensor([[1.0, -2.0]], requires_grad=True)
    logvar = torch.zeros(1, 2, requires_grad=True)
    gaussian_kl(mu, logvar).backward()
    torch.testing.assert_close(mu.grad, torch.tensor([[1.0, -2.0]]))
    torch.testing.assert_close(logvar.grad, torch.zeros(1, 2))


def test_gaussian_kl_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="mu and logvar must have one shape"):
        gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 4))


# -------------------------------------------------------------------------- rotations


def test_rotation_6d_of_identity_and_gram_schmidt():
    """[1,0,0, 0,1,0] -> I. [2,0,0, 1,3,0]: b1 = (1,0,0); a2 - (b1.a2) b1 = (0,3,0)
    -> b2 = (0,1,0); b3 = b1 x b2 = (0,0,1) -> I again."""
    x = torch.tensor([[1.0, 0, 0, 0, 1, 0], [2.0, 0, 0, 1, 3, 0]])
    torch.testing.assert_close(rotation_6d_to_matrix(x), torch.eye(3).expand(2, 3, 3))


def test_rotation_6d_columns_convention_and_round_trip():
    """The 6D vector is the first two COLUMNS: Rz(90) has columns (0,1,0), (-1,0,0)."""
    r = rot_z(90.0)[None]
    torch.testing.assert_close(
        matrix_to_rotation_6d(r), torch.tensor([[0.0, 1, 0, -1, 0, 0]]), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(rotation_6d_to_matrix(matrix_to_rotation_6d(r)), r)
    rs = random_rotations(8, seed=0)
    eye = torch.eye(3, dtype=torch.float64).expand(8, 3, 3)
    torch.testing.assert_close(rs.transpose(1, 2) @ rs, eye)
    torch.testing.assert_close(torch.linalg.det(rs), torch.ones(8, dtype=torch.float64))
    torch.testing.assert_close(rotation_6d_to_matrix(matrix_to_rotation_6d(rs)), rs)


def test_geodesic_angle_hand_values():
    """tr Rz(a) = 1 + 2 cos a: 90 deg -> cos 0 -> pi/2; 60 deg -> pi/3. Equal rotations
    hit the clamp: acos(1 - eps) ~ sqrt(2 eps) = 4.47e-4 rad, not 0."""
    eye = torch.eye(3)[None]
    assert geodesic_angle(eye, rot_z(90.0)[None]).item() == pytest.approx(math.pi / 2)
    assert geodesic_angle(rot_z(30.0)[None], rot_z(90.0)[None]).item() == pytest.approx(
        math.pi / 3, abs=1e-6
    )
    same = geodesic_angle(eye, eye).item()
    assert same == pytest.approx(math.sqrt(2 * GEODESIC_EPS), rel=0.1)
    assert same < 1e-3


def test_geodesic_angle_gradient_finite_at_zero_and_pi():
    """At 0 and 180 deg acos' derivative is infinite; the clamp makes it 0 there."""
    x = matrix_to_rotation_6d(torch.stack([torch.eye(3), torch.eye(3)])).requires_grad_()
    target = torch.stack([torch.eye(3), rot_z(180.0)])
    geodesic_angle(rotation_6d_to_matrix(x), target).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_geodesic_angle_gradcheck():
    """Angles away from 0 and pi (random rotations), float64, through the 6D map."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    target = random_rotations(3, seed=2)
    assert bool(((geodesic_angle(rotation_6d_to_matrix(x), target) - 1.5).abs() < 1.4).all())
    assert torch.autograd.gradcheck(
        lambda v: geodesic_angle(rotation_6d_to_matrix(v), target), (x,)
    )


# ------------------------------------------------------------------- object_pose_loss


def test_object_pose_loss_masks_unknown_objects():
    """w = 10 mm/rad. Sample 0: |(3,4,0)| = 5 plus 10 * pi/2 (90 deg). Sample 1: object
    unknown, NaN targets, not counted. Sample 2: |(0,0,12)| = 12 plus 10 * pi/3 (60 deg).
    Mean over the two valid: (5 + 5 pi + 12 + 10 pi/3) / 2."""
    pred_t = torch.zeros(3, 3, requires_grad=True)
    target_t = torch.tensor([[3.0, 4.0, 0.0], [NAN, NAN, NAN], [0.0, 0.0, 12.0]])
    x = matrix_to_rotation_6d(torch.eye(3).expand(3, 3, 3)).clone().requires_grad_()
    target_R = torch.stack([rot_z(90.0), torch.full((3, 3), NAN), rot_z(60.0)])
    valid = torch.tensor([True, False, True])
    out = object_pose_loss(pred_t, target_t, rotation_6d_to_matrix(x), target_R, 10.0, valid)
    expected = (5 + 5 * math.pi + 12 + 10 * math.pi / 3) / 2
    assert out.item() == pytest.approx(expected, rel=1e-5)
    out.backward()
    assert torch.isfinite(pred_t.grad).all() and torch.isfinite(x.grad).all()
    assert (pred_t.grad[1] == 0).all() and (x.grad[1] == 0).all()
    # d/d pred_t[0] of |pred_t - target| / 2 = -(3, 4, 0)/5 / 2.
    torch.testing.assert_close(pred_t.grad[0], torch.tensor([-0.3, -0.4, 0.0]))


def test_object_pose_loss_with_no_valid_sample_is_zero_with_grad_path():
    pred_t = torch.zeros(2, 3, requires_grad=True)
    out = object_pose_loss(
        pred_t,
        torch.full((2, 3), NAN),
        torch.eye(3).expand(2, 3, 3),
        torch.full((2, 3, 3), NAN),
        10.0,
        torch.zeros(2, dtype=torch.bool),
    )
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert (pred_t.grad == 0).all()


def test_object_pose_loss_rejects_bad_mask_and_weight():
    t, r = torch.zeros(2, 3), torch.eye(3).expand(2, 3, 3)
    with pytest.raises(ValueError, match=r"valid must be a bool tensor \[B\]"):
        object_pose_loss(t, t, r, r, 1.0, torch.ones(2))
    with pytest.raises(ValueError, match="rotation_weight must be >= 0"):
        object_pose_loss(t, t, r, r, -1.0, torch.ones(2, dtype=torch.bool))


# ------------------------------------------------------------------------ bone_points


def test_bone_points_order_and_positions():
    """Joints (0,0,0), (10,0,0), (10,20,0); bones (0,1), (1,2), S = 1: midpoints
    (5,0,0) and (10,10,0) after the 3 joints. S = 3 on (0,1): 2.5, 5, 7.5 in x."""
    joints = torch.tensor([[[0.0, 0, 0], [10.0, 0, 0], [10.0, 20, 0]]])
    out = bone_points(joints, [(0, 1), (1, 2)], 1)
    assert out.shape == (1, 3 + 2, 3)
    torch.testing.assert_close(out[0, :3], joints[0])
    torch.testing.assert_close(out[0, 3:], torch.tensor([[5.0, 0, 0], [10.0, 10, 0]]))
    out = bone_points(joints, [(0, 1)], 3)
    torch.testing.assert_close(out[0, 3:, 0], torch.tensor([2.5, 5.0, 7.5]))
    assert bone_points(joints, [(0, 1)], 0).shape == (1, 3, 3)


def test_bone_points_rejects_bad_bones():
    with pytest.raises(ValueError, match=r"bones must be \(parent, child\) pairs"):
        bone_points(torch.zeros(1, 3, 3), [(0, 3)], 2)
    with pytest.raises(ValueError, match="samples_per_bone must be >= 0"):
        bone_points(torch.zeros(1, 3, 3), [(0, 1)], -1)


# --------------------------------------------------------------- box_penetration_loss

CENTRE = torch.tensor([100.0, 0.0, 500.0])


def _cube_loss(point, radius: float, half=(10.0, 10.0, 10.0), rotation=None) -> float:
    """One sample, one point, a box centred at CENTRE (mm)."""
    points = (CENTRE + torch.tensor(point))[None, None]
    rotation = torch.eye(3) if rotation is None else rotation
    return box_penetration_loss(
        points,
        rotation[None],
        CENTRE[None],
        torch.tensor([half]),
        radius,
        torch.tensor([True]),
    ).item()


@pytest.mark.parametrize(
    "point, radius, depth",
    [
        # At the centre of a cube of half extent 10: sdf = max(q) = -10 -> 0 - (-10) = 10.
        ((0.0, 0.0, 0.0), 0.0, 10.0),
        # 5 mm outside the +x face: q = (5, -10, -10), sdf = 5 -> relu(8 - 5) = 3.
        ((15.0, 0.0, 0.0), 8.0, 3.0),
        # Off the edge: q = (3, 4, -10), sdf = |(3, 4, 0)| = 5 -> 8 - 5 = 3.
        ((13.0, 14.0, 0.0), 8.0, 3.0),
        # Inside off-centre: q = (-6, -7, -10), sdf = -6 (nearest face) -> 2 + 6 = 8.
        ((4.0, -3.0, 0.0), 2.0, 8.0),
        # Far away: sdf = 190 > radius -> 0.
        ((200.0, 0.0, 0.0), 8.0, 0.0),
    ],
)
def test_box_penetration_hand_cases(point, radius, depth):
    assert _cube_loss(point, radius) == pytest.approx(depth)


def test_box_penetration_of_rotated_box():
    """Half extents (30, 10, 10) turned 90 deg about z: the long axis lies along y. The
    point (0, 25, 0) from the centre is at local R^T p = (25, 0, 0): q = (-5, -10, -10),
    sdf -5, depth 5 with radius 0; the unturned box leaves it 15 mm outside: 0."""
    half = (30.0, 10.0, 10.0)
    assert _cube_loss((0.0, 25.0, 0.0), 0.0, half, rot_z(90.0)) == pytest.approx(5.0, abs=1e-5)
    assert _cube_loss((0.0, 25.0, 0.0), 0.0, half) == 0.0


def test_box_signed_distance_sign():
    """Negative inside (-10 at the centre), 0 on the surface, positive outside (5)."""
    points = (CENTRE + torch.tensor([[0.0, 0, 0], [10.0, 0, 0], [15.0, 0, 0]]))[None]
    sdf = box_signed_distance(points, torch.eye(3)[None], CENTRE[None], torch.full((1, 3), 10.0))
    torch.testing.assert_close(sdf, torch.tensor([[-10.0, 0.0, 5.0]]))


def test_box_penetration_mean_over_points_and_valid_samples():
    """Sample 0: centre (10) and far (0), radius 0 -> 5. Sample 1: NaN box, valid False,
    not counted -> loss 5, gradients finite."""
    points = torch.stack([CENTRE + torch.tensor([[0.0, 0, 0], [300.0, 0, 0]])] * 2)
    points.requires_grad_()
    box_R = torch.stack([torch.eye(3), torch.full((3, 3), NAN)])
    box_t = torch.stack([CENTRE, torch.full((3,), NAN)])
    half = torch.tensor([[10.0, 10.0, 10.0], [NAN, NAN, NAN]])
    valid = torch.tensor([True, False])
    out = box_penetration_loss(points, box_R, box_t, half, 0.0, valid)
    assert out.item() == pytest.approx(5.0)
    out.backward()
    assert torch.isfinite(points.grad).all()
    assert (points.grad[1] == 0).all() and (points.grad[0, 1] == 0).all()
    # The exact centre is the deepest point, a maximum of the depth: subgradient 0.
    assert (points.grad[0, 0] == 0).all()
    none = box_penetration_loss(points, box_R, box_t, half, 0.0, torch.zeros(2, dtype=torch.bool))
    assert none.item() == 0.0 and none.requires_grad


def test_box_penetration_is_rotation_and_translation_invariant():
    """Moving points and box by one rigid motion (Q, c) leaves every depth unchanged."""
    g = torch.Generator().manual_seed(3)
    points = torch.randn(2, 40, 3, generator=g, dtype=torch.float64) * 15
    box_R = random_rotations(2, seed=4)
    box_t = torch.randn(2, 3, generator=g, dtype=torch.float64) * 5
    half = torch.tensor([[10.0, 6.0, 14.0], [8.0, 8.0, 3.0]], dtype=torch.float64)
    valid = torch.tensor([True, True])
    q = random_rotations(1, seed=5)[0]
    c = torch.tensor([30.0, -20.0, 600.0], dtype=torch.float64)
    base = box_penetration_loss(points, box_R, box_t, half, 6.0, valid)
    moved = box_penetration_loss(points @ q.T + c, q @ box_R, box_t @ q.T + c, half, 6.0, valid)
    assert base.item() > 0
    torch.testing.assert_close(moved, base)


def test_box_penetration_gradcheck():
    """float64, points away from the kinks (medial planes inside, the surface, the
    radius): inside (3, 1, -2) has q = (-7, -9, -8), one max; (14, 2, 1) is 4 mm off a
    face; (12, 13, 0) is sqrt(13) mm off an edge; all within radius 8."""
    points = torch.tensor(
        [[[3.0, 1.0, -2.0], [14.0, 2.0, 1.0], [12.0, 13.0, 0.0]]], dtype=torch.float64
    ).requires_grad_()
    box_R = random_rotations(1, seed=6) @ torch.eye(3, dtype=torch.float64)
    # Express the points in the box frame of box_R so the hand-checked geometry holds.
    with torch.no_grad():
        points.copy_(points @ box_R[0].T)
    box_R.requires_grad_()
    box_t = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    half = torch.full((1, 3), 10.0, dtype=torch.float64, requires_grad=True)
    valid = torch.tensor([True])

    def fn(p, r, t, h):
        return box_penetration_loss(p, r, t, h, 8.0, valid)

    out = fn(points, box_R, box_t, half)
    assert out.item() == pytest.approx((15 + 4 + (8 - math.sqrt(13))) / 3)
    assert torch.autograd.gradcheck(fn, (points, box_R, box_t, half))
    out.backward()
    assert (points.grad.abs().sum(-1) > 0).all()


def test_box_penetration_rejects_bad_inputs():
    p = torch.zeros(1, 4, 3)
    r, t, h, v = torch.eye(3)[None], torch.zeros(1, 3), torch.ones(1, 3), torch.tensor([True])
    with pytest.raises(ValueError, match=r"box_R must be \[B, 3, 3\]"):
        box_penetration_loss(p, torch.eye(3), t, h, 1.0, v)
    with pytest.raises(ValueError, match=r"half_extents must be \[B, 3\]"):
        box_penetration_loss(p, r, t, torch.ones(3), 1.0, v)
    with pytest.raises(ValueError, match="radius must be >= 0"):
        box_penetration_loss(p, r, t, h, -1.0, v)

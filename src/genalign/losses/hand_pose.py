"""Losses of the hand-pose pipeline (hand-pose transformer on DexYCB), as pure tensor
functions.

Units: every length is in MILLIMETRES (DexYCB's label files store `joint_3d` in
metres; the data layer multiplies by 1000, as the DexYCB toolkit's hpe_eval.py does),
pixels are pixels, angles are radians. Joints are `[B, J, 3]` with J = 21 in the
DexYCB/MANO order (0 wrist; 1-4 thumb MCP, PIP, DIP, TIP; 5-8 index; 9-12 middle;
13-16 ring; 17-20 little); nothing here depends on J except where said.

    joints3d_loss         mean per-joint Euclidean distance of root-relative joints (mm)
    reprojection_loss     pinhole projection of camera-frame joints, mean pixel distance
    diversity_loss        hinge on the batch standard deviation (anti-collapse)
    per_joint_batch_std   the collapse statistic the trainer logs   [J]
    gaussian_kl           KL(N(mu, sigma^2) || N(0, I)) of a VAE latent
    rotation_6d_to_matrix / matrix_to_rotation_6d / geodesic_angle   rotations
    object_pose_loss      translation (mm) + weight * geodesic angle (rad), masked
    bone_points           joints plus points along each bone
    box_penetration_loss  depth of spheres around hand points inside an oriented box

Every loss returns a 0-dim tensor with a gradient path to its prediction inputs, also
when a mask leaves nothing to average (the value is then 0).
Papers, equations and files: docs/methods.md.
"""

from __future__ import annotations

from typing import Sequence  # noqa: UP035 (losses import only torch and typing)

import torch
import torch.nn.functional as F
from torch import Tensor

# Depth floor of the projection, in mm. A prediction at or behind the camera centre
# (Z <= 0) would divide by zero or project mirrored through the centre, with a gradient
# that pushes it further the wrong way; a real hand is never within 1 mm of the camera
# (DexYCB hands are roughly 0.4-1 m away), so the floor changes no sensible prediction.
MIN_DEPTH_MM = 1.0

# Margin of the acos clamp in geodesic_angle: d acos(c)/dc = -1/sqrt(1 - c^2) is
# infinite at c = +-1, i.e. at zero and 180-degree rotations. Clamping to
# [-1 + eps, 1 - eps] bounds it by 1/sqrt(2 eps) (~2236 for 1e-7) at the cost of an
# angle floor of acos(1 - eps) ~ sqrt(2 eps) ~ 4.5e-4 rad (0.026 deg).
GEODESIC_EPS = 1e-7


def _check_last(name: str, arg: str, x: Tensor, want: str) -> None:
    """x must have as many dimensions as `want` ("[B, J, 3]") and end in its number."""
    dims = want.count(",") + 1
    last = int(want.rstrip("]").rpartition(" ")[2])
    if x.dim() != dims or x.shape[-1] != last:
        raise ValueError(f"{name}: {arg} must be {want}, got {list(x.shape)}")


def _check_same(name: str, a: str, x: Tensor, b: str, y: Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(
            f"{name}: {a} and {b} must have one shape, got {list(x.shape)} and {list(y.shape)}"
        )


def _check_valid(name: str, valid: Tensor, batch: int) -> None:
    if valid.dtype != torch.bool or valid.shape != (batch,):
        raise ValueError(
            f"{name}: valid must be a bool tensor [B] = [{batch}], "
            f"got {valid.dtype} {list(valid.shape)}"
        )


def _masked_mean(per_sample: Tensor, valid: Tensor) -> Tensor:
    """Mean of `per_sample` [B] over the valid samples; 0 (with grad path) if none."""
    # Multiply, not index: the invalid entries must be finite (callers make them so),
    # and the result keeps a gradient path even when no sample is valid.
    return (per_sample * valid).sum() / valid.sum().clamp_min(1)


# ---------------------------------------------------------------------------- joints


def joints3d_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean per-joint position error (MPJPE) of root-relative joints, in mm.

        e_b  = (1/J) sum_j || pred_bj - target_bj ||_2        per sample   [B]
        loss = (1/B) sum_b e_b                                 weight None
        loss = sum_b w_b e_b / sum_b w_b                       weight [B], w >= 0

    The Euclidean (not squared) distance is the metric itself (MPJPE, e.g. Ionescu et
    al. 2014, Human3.6M, and the DexYCB benchmark, Chao et al. CVPR 2021). With all
    weights 0 the loss is 0. At a joint predicted exactly (the root of root-relative
    joints always is) the distance has no derivative; torch gives it the subgradient 0.

    pred, target: [B, J, 3] root-relative joints in mm. weight: [B] or None.
    """
    name = "joints3d_loss"
    _check_last(name, "pred", pred, "[B, J, 3]")
    _check_same(name, "pred", pred, "target", target)
    per_sample = torch.linalg.vector_norm(pred - target, dim=-1).mean(-1)  # [B]
    if weight is None:
        return per_sample.mean()
    if weight.shape != per_sample.shape:
        raise ValueError(
            f"{name}: weight must be per-sample [B] = {list(per_sample.shape)}, "
            f"got {list(weight.shape)}"
        )
    # clamp_min(tiny) changes no positive total, and makes an all-zero one give 0.
    total = weight.sum().clamp_min(torch.finfo(per_sample.dtype).tiny)
    return (weight * per_sample).sum() / total


def reprojection_loss(joints_cam_mm: Tensor, K: Tensor, target_px: Tensor) -> Tensor:
    """Mean pixel distance of projected camera-frame joints to 2D targets.

    Pinhole projection (Hartley & Zisserman, "Multiple View Geometry", 2nd ed., sec. 6.1), with
    intrinsics K whose last row is [0, 0, 1] (fx, fy, skew, cx, cy in pixels):

        (u, v, 1)^T = K (X/Z', Y/Z', 1)^T,     Z' = max(Z, MIN_DEPTH_MM)
        loss = (1/(B J)) sum_bj || (u, v)_bj - target_bj ||_2

    The depth floor keeps a prediction at or behind the camera finite (see
    MIN_DEPTH_MM); there Z gets no gradient and X, Y are pulled towards the target.

    joints_cam_mm: [B, J, 3] absolute joints in the camera frame (mm); K: [B, 3, 3];
    target_px: [B, J, 2].
    """
    name = "reprojection_loss"
    _check_last(name, "joints_cam_mm", joints_cam_mm, "[B, J, 3]")
    b, j, _ = joints_cam_mm.shape
    if K.shape != (b, 3, 3):
        raise ValueError(f"{name}: K must be [B, 3, 3] = [{b}, 3, 3], got {list(K.shape)}")
    if target_px.shape != (b, j, 2):
        raise ValueError(
            f"{name}: target_px must be [B, J, 2] = [{b}, {j}, 2], got {list(target_px.shape)}"
        )
    z = joints_cam_mm[..., 2:].clamp_min(MIN_DEPTH_MM)  # [B, J, 1]
    normalised = torch.cat([joints_cam_mm[..., :2] / z, torch.ones_like(z)], dim=-1)  # [B, J, 3]
    uv = torch.einsum("bij,bnj->bni", K[:, :2, :], normalised)  # [B, J, 2]
    return torch.linalg.vector_norm(uv - target_px, dim=-1).mean()


def _batch_std(pred: Tensor, name: str) -> Tensor:
    """Standard deviation across the batch (correction 0). [B, J, 3] -> [J, 3]"""
    _check_last(name, "pred", pred, "[B, J, 3]")
    if pred.shape[0] < 2:
        raise ValueError(
            f"{name}: pred needs a batch of at least 2 samples to measure spread, "
            f"got {pred.shape[0]}"
        )
    # At an exactly collapsed batch torch gives the subgradient 0 (no direction is
    # preferred); near it the gradient is finite and pushes the samples apart.
    return pred.std(dim=0, correction=0)


def diversity_loss(pred: Tensor, margin_mm: float) -> Tensor:
    """Hinge on the spread of a batch of predictions, against mode collapse.

        s_jc = std_b pred_bjc  (population std, correction 0)       [J, 3]
        loss = (1/(3J)) sum_jc relu(margin - s_jc)

    A model that predicts one mean pose for every image (the collapse the mean-pose
    baseline measures) has s = 0 and pays `margin`; once every joint coordinate varies
    across the batch by more than `margin` mm the loss is 0 and has no gradient, so it
    never fights the data term on a healthy batch. Choose the margin below the spread of
    the ground truth in one batch (a few mm for root-relative DexYCB joints), else the
    loss asks for more variety than the data has. This is a hinge on the per-dimension
    standard deviation, the variance term of VICReg (Bardes, Ponce & LeCun, ICLR 2022,
    eq. 1) without its epsilon, applied to outputs instead of embeddings.

    pred: [B, J, 3] root-relative joints in mm, B >= 2. margin_mm: >= 0.
    """
    name = "diversity_loss"
    if not margin_mm >= 0:
        raise ValueError(f"{name}: margin_mm must be >= 0, got {margin_mm}")
    return F.relu(margin_mm - _batch_std(pred, name)).mean()


def per_joint_batch_std(pred: Tensor) -> Tensor:
    """Spread of each joint across the batch, in mm: mean over x, y, z of the batch std
    (correction 0). [B, J, 3] -> [J]. The trainer logs it and flags a collapse when it
    falls below a threshold; `diversity_loss` is the hinge on the same std."""
    return _batch_std(pred, "per_joint_batch_std").mean(-1)


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL divergence of a diagonal Gaussian from the standard normal.

    Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014, appendix B:

        -KL(N(mu, sigma^2) || N(0, I)) = 1/2 sum_d (1 + log sigma_d^2 - mu_d^2 - sigma_d^2)

    summed over the latent dimension D and averaged over the batch. 0 for mu = 0,
    logvar = 0; 1/2 per dimension for mu = 1, logvar = 0.

    mu, logvar: [B, D] (logvar = log sigma^2).
    """
    name = "gaussian_kl"
    if mu.dim() != 2:
        raise ValueError(f"{name}: mu must be [B, D], got {list(mu.shape)}")
    _check_same(name, "mu", mu, "logvar", logvar)
    per_sample = -0.5 * (1.0 + logvar - mu.square() - logvar.exp()).sum(-1)  # [B]
    return per_sample.mean()


# ------------------------------------------------------------------------- rotations


def rotation_6d_to_matrix(x: Tensor) -> Tensor:
    """The continuous 6D rotation representation to a rotation matrix.

    Zhou, Barnes, Lu, Yang & Li, "On the Continuity of Rotation Representations in
    Neural Networks", CVPR 2019, the Gram-Schmidt map f_GS on the two 3-vectors
    a1 = x[:3], a2 = x[3:],

        b1 = a1 / |a1|,   b2 = (a2 - (b1 . a2) b1) / |...|,   b3 = b1 x b2,

    and, as in the paper, b1, b2, b3 are the COLUMNS of R, so the 6D vector of R is its
    first two columns (`matrix_to_rotation_6d`). PyTorch3D stacks them as rows instead:
    the two conventions give transposed matrices.

    x: [B, 6] -> [B, 3, 3] (a proper rotation, det +1).
    """
    if x.dim() != 2 or x.shape[-1] != 6:
        raise ValueError(f"rotation_6d_to_matrix: x must be [B, 6], got {list(x.shape)}")
    a1, a2 = x[:, :3], x[:, 3:]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)  # columns


def matrix_to_rotation_6d(R: Tensor) -> Tensor:
    """The inverse of `rotation_6d_to_matrix` on rotations: the first two columns,
    column 0 then column 1. [B, 3, 3] -> [B, 6]"""
    if R.dim() != 3 or R.shape[-2:] != (3, 3):
        raise ValueError(f"matrix_to_rotation_6d: R must be [B, 3, 3], got {list(R.shape)}")
    return torch.cat([R[:, :, 0], R[:, :, 1]], dim=-1)


def geodesic_angle(R1: Tensor, R2: Tensor, eps: float = GEODESIC_EPS) -> Tensor:
    """Angle of the relative rotation R1^T R2, in radians, in [0, pi].

    The geodesic distance on SO(3) (Huynh, "Metrics for 3D Rotations: Comparison and
    Analysis", J. Math. Imaging Vis. 35, 2009, Phi_6 = ||log(R1 R2^T)||), read off the
    trace, since a rotation by theta has trace 1 + 2 cos(theta):

        theta = acos(clamp((tr(R1^T R2) - 1) / 2, -1 + eps, 1 - eps))

    The clamp keeps acos's derivative finite at 0 and pi (see GEODESIC_EPS); equal
    rotations give acos(1 - eps) ~ sqrt(2 eps), not 0.

    R1, R2: [B, 3, 3] -> [B].
    """
    name = "geodesic_angle"
    if R1.dim() != 3 or R1.shape[-2:] != (3, 3):
        raise ValueError(f"{name}: R1 must be [B, 3, 3], got {list(R1.shape)}")
    _check_same(name, "R1", R1, "R2", R2)
    if not 0 < eps < 1:
        raise ValueError(f"{name}: eps must be in (0, 1), got {eps}")
    trace = (R1 * R2).sum(dim=(-2, -1))  # tr(R1^T R2) = sum_ij R1_ij R2_ij  [B]
    cos = ((trace - 1.0) / 2.0).clamp(-1.0 + eps, 1.0 - eps)
    return torch.acos(cos)


def object_pose_loss(
    pred_t: Tensor,
    target_t: Tensor,
    pred_R: Tensor,
    target_R: Tensor,
    rotation_weight: float,
    valid: Tensor,
) -> Tensor:
    """Object 6D pose error: translation distance plus weighted rotation angle.

        l_b  = || pred_t_b - target_t_b ||_2 + rotation_weight * theta(pred_R_b, target_R_b)
        loss = mean of l_b over the samples with valid_b (0 if there are none)

    theta is `geodesic_angle` (rad), so rotation_weight is in mm per radian: with 100,
    one radian of rotation error costs as much as 100 mm of translation error.
    Samples whose object is unknown carry NaN targets and valid = False; their targets
    are replaced by finite constants before any arithmetic, so neither the value nor the
    gradient sees the NaN. A NaN in a valid target is a data error and makes the loss NaN.

    pred_t, target_t: [B, 3] mm (camera frame); pred_R, target_R: [B, 3, 3];
    valid: [B] bool.
    """
    name = "object_pose_loss"
    _check_last(name, "pred_t", pred_t, "[B, 3]")
    _check_same(name, "pred_t", pred_t, "target_t", target_t)
    b = pred_t.shape[0]
    if pred_R.shape != (b, 3, 3):
        raise ValueError(
            f"{name}: pred_R must be [B, 3, 3] = [{b}, 3, 3], got {list(pred_R.shape)}"
        )
    _check_same(name, "pred_R", pred_R, "target_R", target_R)
    _check_valid(name, valid, b)
    if not rotation_weight >= 0:
        raise ValueError(f"{name}: rotation_weight must be >= 0, got {rotation_weight}")
    eye = torch.eye(3, dtype=target_R.dtype, device=target_R.device).expand_as(target_R)
    safe_t = torch.where(valid[:, None], target_t, torch.zeros_like(target_t))
    safe_R = torch.where(valid[:, None, None], target_R, eye)
    per_sample = torch.linalg.vector_norm(pred_t - safe_t, dim=-1) + rotation_weight * (
        geodesic_angle(pred_R, safe_R)
    )  # [B]
    return _masked_mean(per_sample, valid)


# ----------------------------------------------------------------------- penetration


def bone_points(joints: Tensor, bones: Sequence[tuple[int, int]], samples_per_bone: int) -> Tensor:
    """The joints followed by `samples_per_bone` evenly spaced interior points per bone.

    For bone (a, c) and k = 1..S the point is joint_a + k/(S+1) (joint_c - joint_a), so
    the bone is cut into S+1 equal pieces and its end points (already among the joints)
    are not repeated. Output order: the J joints, then bone 0's S points from a to c,
    bone 1's, ... With spheres of radius r around these points, spacing |bone|/(S+1)
    <= r leaves no gap along a bone: a capsule approximated by spheres.

    joints: [B, J, 3]; bones: (parent, child) joint indices -> [B, J + len(bones) S, 3].
    """
    name = "bone_points"
    _check_last(name, "joints", joints, "[B, J, 3]")
    j = joints.shape[1]
    if samples_per_bone < 0:
        raise ValueError(f"{name}: samples_per_bone must be >= 0, got {samples_per_bone}")
    pairs = [tuple(bone) for bone in bones]
    bad = [bone for bone in pairs if len(bone) != 2 or not all(0 <= i < j for i in bone)]
    if bad:
        raise ValueError(
            f"{name}: bones must be (parent, child) pairs of indices in [0, {j}), got {bad}"
        )
    if not pairs or samples_per_bone == 0:
        return joints
    idx = torch.tensor(pairs, device=joints.device)  # [E, 2]
    start, end = joints[:, idx[:, 0]], joints[:, idx[:, 1]]  # [B, E, 3]
    k = torch.arange(1, samples_per_bone + 1, dtype=joints.dtype, device=joints.device)
    frac = (k / (samples_per_bone + 1))[None, None, :, None]  # [1, 1, S, 1]
    inner = start[:, :, None] + frac * (end - start)[:, :, None]  # [B, E, S, 3]
    return torch.cat([joints, inner.flatten(1, 2)], dim=1)


def box_signed_distance(
    points: Tensor, box_R: Tensor, box_t: Tensor, half_extents: Tensor
) -> Tensor:
    """Exact signed distance from points to oriented boxes (negative inside), in mm.

    Box b maps its own frame to the points' frame by x = R_b x_local + t_b. In the box
    frame, with q = |x_local| - h (component-wise), the exact box SDF (Quilez, "Distance
    functions", iquilezles.org/articles/distfunctions) is

        sdf = || max(q, 0) ||_2 + min(max(q_x, q_y, q_z), 0).

    points: [B, P, 3]; box_R: [B, 3, 3]; box_t, half_extents: [B, 3] -> [B, P].
    """
    local = torch.einsum("bji,bpj->bpi", box_R, points - box_t[:, None, :])  # R^T (p - t)
    q = local.abs() - half_extents[:, None, :]  # [B, P, 3]
    outside = torch.linalg.vector_norm(q.clamp_min(0.0), dim=-1)
    inside = q.amax(dim=-1).clamp_max(0.0)
    return outside + inside


def box_penetration_loss(
    points: Tensor,
    box_R: Tensor,
    box_t: Tensor,
    half_extents: Tensor,
    radius: float,
    valid: Tensor,
) -> Tensor:
    """Mean depth by which spheres around hand points enter an object's oriented box.

        d_bp = relu(radius - sdf_box_b(point_bp))                    (mm)
        loss = mean over valid samples b of (1/P) sum_p d_bp          (0 if none valid)

    sdf is `box_signed_distance`, exact (negative inside). A point at the centre of a
    cube of half extent 10 with radius 0 has depth 10; a point 5 mm outside a face with
    radius 8 has depth 3; a point farther than `radius` from the box has depth 0. With
    `bone_points` the spheres cover the bones (capsules), with radius about a finger's
    half thickness. The points and the box must be in one frame (camera frame, mm).
    Samples without an object box have valid = False; their (possibly NaN) box
    parameters are replaced by finite constants before any arithmetic.

    points: [B, P, 3]; box_R: [B, 3, 3]; box_t, half_extents: [B, 3]; valid: [B] bool.
    """
    name = "box_penetration_loss"
    _check_last(name, "points", points, "[B, P, 3]")
    b = points.shape[0]
    if box_R.shape != (b, 3, 3):
        raise ValueError(f"{name}: box_R must be [B, 3, 3] = [{b}, 3, 3], got {list(box_R.shape)}")
    for arg, x in (("box_t", box_t), ("half_extents", half_extents)):
        if x.shape != (b, 3):
            raise ValueError(f"{name}: {arg} must be [B, 3] = [{b}, 3], got {list(x.shape)}")
    _check_valid(name, valid, b)
    if not radius >= 0:
        raise ValueError(f"{name}: radius must be >= 0, got {radius}")
    eye = torch.eye(3, dtype=box_R.dtype, device=box_R.device).expand_as(box_R)
    safe_R = torch.where(valid[:, None, None], box_R, eye)
    safe_t = torch.where(valid[:, None], box_t, torch.zeros_like(box_t))
    safe_h = torch.where(valid[:, None], half_extents, torch.ones_like(half_extents))
    sdf = box_signed_distance(points, safe_R, safe_t, safe_h)  # [B, P]
    depth = F.relu(radius - sdf).mean(-1)  # [B]
    return _masked_mean(depth, valid)


__all__ = [
    "GEODESIC_EPS",
    "MIN_DEPTH_MM",
    "bone_points",
    "box_penetration_loss",
    "box_signed_distance",
    "diversity_loss",
    "gaussian_kl",
    "geodesic_angle",
    "joints3d_loss",
    "matrix_to_rotation_6d",
    "object_pose_loss",
    "per_joint_batch_std",
    "reprojection_loss",
    "rotation_6d_to_matrix",
]

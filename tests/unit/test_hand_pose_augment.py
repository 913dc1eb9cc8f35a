"""The camera-roll augmentation of hand-pose training keeps its labels exact."""

import math

import torch

from genalign.trainers.hand_pose import Targets, rotate_about_crop_centre


def batch(b: int = 3, size: int = 16) -> Targets:
    g = torch.Generator().manual_seed(0)
    K = torch.tensor([[40.0, 0.0, 9.0], [0.0, 41.0, 6.5], [0.0, 0.0, 1.0]]).expand(b, 3, 3).clone()
    cam = torch.randn(b, 21, 3, generator=g) * 30 + torch.tensor([0.0, 0.0, 500.0])
    uvw = cam @ K.transpose(1, 2)
    eye = torch.eye(3).expand(b, 3, 3).clone()
    t = torch.tensor([10.0, 0.0, 520.0]).expand(b, 3).clone()
    return Targets(images=torch.rand(b, 3, size, size, generator=g), K=K, rel_mm=cam - cam[:, :1], cam_mm=cam,
                   px=uvw[..., :2] / uvw[..., 2:], object_R=eye, object_t_mm=t, object_rel_mm=t - cam[:, 0],
                   object_half_mm=torch.ones(b, 3), object_valid=torch.ones(b, dtype=torch.bool))


def test_no_roll_changes_nothing():
    y = batch()
    same = rotate_about_crop_centre(y, torch.zeros(3))
    assert torch.allclose(same.images, y.images, atol=1e-5) and torch.allclose(same.px, y.px, atol=1e-4)


def test_a_roll_keeps_the_labels_consistent_with_the_camera():
    """After a roll the 2D labels are the rotated joints' projection through the same K,
    the hand's shape (bone lengths) is unchanged, the object turns with it, and the
    crop centre's ray is the axis: a point on it stays at the crop centre."""
    y = batch()
    angle = torch.tensor([0.3, -1.2, math.pi])
    r = rotate_about_crop_centre(y, angle)
    uvw = r.cam_mm @ r.K.transpose(1, 2)
    assert torch.allclose(r.px, uvw[..., :2] / uvw[..., 2:], atol=1e-4)
    assert torch.allclose(r.rel_mm.norm(dim=-1), y.rel_mm.norm(dim=-1), atol=1e-3)
    assert torch.allclose(r.object_R @ r.object_R.transpose(1, 2), torch.eye(3).expand(3, 3, 3), atol=1e-5)
    assert torch.allclose(r.object_rel_mm.norm(dim=-1), y.object_rel_mm.norm(dim=-1), atol=1e-3)
    centre = torch.tensor([7.5, 7.5, 1.0])
    ray = torch.linalg.solve(y.K[0], centre) * 500.0
    on_axis = y._replace(cam_mm=ray.expand(3, 21, 3).clone())
    moved = rotate_about_crop_centre(on_axis, angle)
    uvw = moved.cam_mm @ moved.K.transpose(1, 2)
    assert torch.allclose(uvw[..., :2] / uvw[..., 2:], torch.tensor([7.5, 7.5]), atol=1e-3)

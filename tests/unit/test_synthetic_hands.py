"""Synthetic hands in DexYCB's layout: the exact files, byte-identical reruns, labels that
project onto themselves, bone lengths and joint angles within the hand model's limits,
left hands mirrored, empty frames, and objects laid out as DexYCB's 20 x 5 sequences."""

import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from genalign.data.dexycb import SERIALS, SPLIT_RULES, SUBJECTS, build_crops, load_split
from genalign.data.hand_skeleton import BONES, FINGERS
from genalign.data.synthetic_hands import (
    BONE_JITTER,
    OBJECT_EXTENTS,
    OBJECTS,
    SUBJECT_SCALE,
    SyntheticHandsSpec,
    bone_lengths,
    nominal_bone_lengths,
    object_for,
    write_synthetic_dexycb,
)

SMALL = {"subjects": 2, "sequences_per_subject": 2, "serials": 2, "frames_per_sequence": 2}


def write(root: Path, **overrides) -> tuple[Path, dict]:
    counts = write_synthetic_dexycb(root, SyntheticHandsSpec(**{**SMALL, **overrides}))
    return root, counts


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return write(tmp_path_factory.mktemp("hands") / "a", left_share=0.5, occluder_share=0.5)


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def labels(root: Path):
    """(meta, K, label arrays) of every label file under root."""
    for path in sorted(root.glob("*/*/*/labels_*.npz")):
        meta = yaml.safe_load((path.parents[1] / "meta.yml").read_text())
        serial = path.parent.name
        color = yaml.safe_load(
            (root / "calibration" / "intrinsics" / f"{serial}_640x480.yml").read_text()
        )["color"]
        K = np.array([[color["fx"], 0, color["ppx"]], [0, color["fy"], color["ppy"]], [0, 0, 1]])
        with np.load(path) as npz:
            yield path, meta, K, {k: npz[k] for k in npz.files}


def test_writes_the_toolkits_layout(small):
    root, counts = small
    assert counts["frames"] == 2 * 2 * 2 * 2 and counts["sequences"] == 4
    expected = {"synthetic_spec.yml"} | {
        f"calibration/intrinsics/{s}_640x480.yml" for s in SERIALS[:2]
    }
    for subject in SUBJECTS[:2]:
        sequences = sorted(p.name for p in (root / subject).iterdir())
        assert len(sequences) == 2 and all(re.fullmatch(r"\d{8}_\d{6}", q) for q in sequences)
        for q in sequences:
            expected.add(f"{subject}/{q}/meta.yml")
            for serial in SERIALS[:2]:
                for f in range(2):
                    expected |= {
                        f"{subject}/{q}/{serial}/color_{f:06d}.jpg",
                        f"{subject}/{q}/{serial}/labels_{f:06d}.npz",
                    }
    assert set(files(root)) == expected
    _, meta, _, arrays = next(labels(root))
    assert meta["serials"] == list(SERIALS[:2]) and meta["num_frames"] == 2
    assert meta["ycb_grasp_ind"] == 0 and len(meta["ycb_ids"]) == 1
    assert meta["mano_sides"][0] in ("right", "left") and isinstance(meta["mano_calib"], list)
    shapes = {k: (v.shape, v.dtype) for k, v in arrays.items()}
    assert shapes == {
        "joint_3d": ((1, 21, 3), np.float32),
        "joint_2d": ((1, 21, 2), np.float32),
        "pose_y": ((1, 3, 4), np.float32),
        "seg": ((480, 640), np.uint8),
    }


def test_same_spec_writes_identical_bytes(small, tmp_path):
    root, _ = small
    again, _ = write(tmp_path / "b", left_share=0.5, occluder_share=0.5)
    assert files(again) == files(root)
    other, _ = write(tmp_path / "c", left_share=0.5, occluder_share=0.5, seed=1)
    assert files(other) != files(root)


def test_joint_2d_is_the_projection_of_joint_3d(small):
    for path, _, K, arrays in labels(small[0]):
        j3 = arrays["joint_3d"][0].astype(np.float64)
        assert 0.3 < j3[:, 2].min() and j3[:, 2].max() < 1.0, path  # metres in front of the camera
        p = j3 @ K.T
        np.testing.assert_allclose(
            p[:, :2] / p[:, 2:], arrays["joint_2d"][0], atol=1e-3, err_msg=str(path)
        )


def angle(a: np.ndarray, b: np.ndarray) -> float:
    return math.degrees(math.acos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1)))


def test_bone_lengths_and_joint_angles_within_the_hand_model(small):
    nominal = nominal_bone_lengths()
    assert set(nominal) == set(BONES)
    lo, hi = SUBJECT_SCALE[0] * BONE_JITTER[0], SUBJECT_SCALE[1] * BONE_JITTER[1]
    for path, meta, _, arrays in labels(small[0]):
        joints = arrays["joint_3d"][0].astype(np.float64)
        scale = meta["synthetic_hand_scale"]
        for bone, length in bone_lengths(joints).items():
            ratio = length / nominal[bone]
            assert lo - 1e-4 < ratio < hi + 1e-4, (path, bone, ratio)
            assert BONE_JITTER[0] - 1e-4 < ratio / scale < BONE_JITTER[1] + 1e-4, (path, bone)
        for finger, (mcp, pip, dip, tip) in FINGERS.items():
            bends = [
                angle(joints[pip] - joints[mcp], joints[dip] - joints[pip]),
                angle(joints[dip] - joints[pip], joints[tip] - joints[dip]),
            ]
            limit = (60.0, 80.0) if finger == "thumb" else (110.0, 80.0)
            assert bends[0] <= limit[0] + 1e-3 and bends[1] <= limit[1] + 1e-3, (
                path,
                finger,
                bends,
            )
    # palm to MCPs and phalanges in the ranges of adult hands, before the scales
    assert all(
        0.07 <= nominal[(0, FINGERS[f][0])] <= 0.09 for f in ("index", "middle", "ring", "little")
    )
    assert all(0.019 <= nominal[b] <= 0.045 for b in BONES if b[0] != 0)


def curl(joints: np.ndarray) -> float:
    """How far the fingertips curl along (index MCP - wrist) x (little MCP - wrist): positive
    for a right hand (that normal is its palm's side, where fingers flex), negative for a left."""
    n = np.cross(joints[5] - joints[0], joints[17] - joints[0])
    n /= np.linalg.norm(n)
    return sum(
        (joints[FINGERS[f][3]] - joints[FINGERS[f][0]]) @ n
        for f in ("index", "middle", "ring", "little")
    )


@pytest.mark.parametrize("left_share, side, sign", [(1.0, "left", -1), (0.0, "right", 1)])
def test_left_sequences_are_mirrored_hands(tmp_path, left_share, side, sign):
    root, counts = write(tmp_path / "h", left_share=left_share, frames_per_sequence=3)
    assert counts["left_sequences"] == (4 if side == "left" else 0)
    for path, meta, _, arrays in labels(root):
        assert meta["mano_sides"] == [side]
        if path.name == "labels_000002.npz":  # the grasp has closed
            assert sign * curl(arrays["joint_3d"][0].astype(np.float64)) > 0.01, path


def test_empty_frames_have_no_hand(tmp_path):
    root, counts = write(tmp_path / "e", empty_share=1.0, object_share=1.0)
    assert counts["empty"] == counts["frames"] == 16
    for path, meta, _, arrays in labels(root):
        assert (arrays["joint_3d"] == -1).all() and (arrays["joint_2d"] == -1).all()
        assert not (arrays["seg"] == 255).any(), path  # DexYCB's hand value
        assert (arrays["seg"] == meta["ycb_ids"][0]).any(), path  # the object is still there


def test_objects_pose_and_seg(tmp_path):
    with_object, _ = write(tmp_path / "o", object_share=1.0, occluder_share=0.0)
    for path, meta, K, arrays in labels(with_object):
        R, t = arrays["pose_y"][0, :, :3].astype(np.float64), arrays["pose_y"][0, :, 3]
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-5)
        assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-5)
        assert 0.3 < t[2] < 1.0
        ycb_id = meta["ycb_ids"][0]
        assert meta["synthetic_object"] == OBJECTS[ycb_id].shape
        assert (arrays["seg"] == 255).any() and (arrays["seg"] == ycb_id).any(), path
        assert set(np.unique(arrays["seg"])) <= {0, ycb_id, 255}
    without, _ = write(tmp_path / "n", object_share=0.0)
    for path, meta, _, arrays in labels(without):
        assert (arrays["pose_y"] == 0).all() and meta["synthetic_object"] == "none"


def test_objects_follow_dexycbs_blocks_of_five():
    assert set(OBJECT_EXTENTS) == set(OBJECTS) == set(range(1, 41))
    assert {o.shape for o in OBJECTS.values()} == {"box", "cylinder"}
    assert OBJECTS[1].shape == "box" and OBJECTS[2].shape == "cylinder"
    for setup, held_out in (("s3", "val"), ("s3", "test")):
        train = {
            object_for(s, i).ycb_id
            for s in range(10)
            for i in SPLIT_RULES[setup]["train"].sequences
        }
        unseen = {
            object_for(s, i).ycb_id
            for s in range(10)
            for i in SPLIT_RULES[setup][held_out].sequences
        }
        assert unseen and not unseen & train
    # s0's held-out fifth trial grasps an object its subject grasped in training
    assert all(
        object_for(s, i) == object_for(s, i - 1) for s in range(10) for i in range(4, 100, 5)
    )


def test_spec_refuses_what_the_toolkit_cannot_name():
    with pytest.raises(ValueError, match="subjects"):
        SyntheticHandsSpec(subjects=11)
    with pytest.raises(ValueError, match="serials"):
        SyntheticHandsSpec(serials=9)
    with pytest.raises(ValueError, match="sequences_per_subject"):
        SyntheticHandsSpec(sequences_per_subject=101)
    with pytest.raises(ValueError, match="left_share"):
        SyntheticHandsSpec(left_share=1.5)


def test_the_dexycb_loader_reads_it(small):
    """One loader serves both: the s0 training split of the small set, cropped."""
    root, counts = small
    index = load_split(root, "s0", "train")  # sequences 0 and 1: i % 5 != 4
    assert len(index.frames) + index.skipped["no_hand"] == counts["frames"]
    crops = build_crops(index.frames, size=32, margin=0.2, object_extents=OBJECT_EXTENTS)
    p = np.einsum("nij,nkj->nki", crops["K"].double().numpy(), crops["joints3d"].double().numpy())
    np.testing.assert_allclose(p[..., :2] / p[..., 2:], crops["joints2d"].numpy(), atol=1e-3)
    assert crops["mirrored"].tolist() == [f.side == "left" for f in index.frames]
    # every crop is a right hand
    assert all(curl(j) > 0 for j in crops["joints3d"].double().numpy())


def test_refuses_a_directory_that_is_not_empty(tmp_path):
    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        write_synthetic_dexycb(tmp_path, SyntheticHandsSpec(**SMALL))

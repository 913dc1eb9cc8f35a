"""The DexYCB loader: the toolkit's split rules s0-s3, frames without a hand skipped and
counted, bad files refused with their path and field, and the crops' geometry (crop
intrinsics project the 3D joints onto the 2D joints, mirrored left hands stay consistent,
the image moves with the labels).

The split tests run on a fake dataset in the toolkit's layout whose frames are symlinks to
one label file and one image, so a thousand frames cost little."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from genalign.config.hand_pose import SETUPS, SPLITS
from genalign.data.dexycb import (
    SERIALS,
    SPLIT_RULES,
    SUBJECTS,
    build_crops,
    load_split,
    read_labels,
    unmirror_joints,
)
from genalign.data.synthetic_hands import hand_joints
from genalign.storage import ArtifactError

FX, FY, PPX, PPY = 615.0, 614.0, 321.0, 239.0
K_CAMERA = np.array([[FX, 0.0, PPX], [0.0, FY, PPY], [0.0, 0.0, 1.0]])


def project(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    p = points @ K.T
    return p[..., :2] / p[..., 2:]


def a_hand(offset=(0.02, 0.01, 0.5)) -> np.ndarray:
    """A slightly flexed right hand [21, 3] in metres, 0.5 m in front of the camera."""
    return hand_joints(np.full((5, 4), 0.3), np.ones(21)) + np.asarray(offset)


def a_pose() -> np.ndarray:
    c, s = np.cos(0.4), np.sin(0.4)
    return np.array([[c, -s, 0.0, 0.03], [s, c, 0.0, -0.02], [0.0, 0.0, 1.0, 0.48]])


def label_arrays(
    joints: np.ndarray | None, pose: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    if joints is None:
        j3, j2 = np.full((1, 21, 3), -1.0), np.full((1, 21, 2), -1.0)
    else:
        j3, j2 = joints[None], project(joints, K_CAMERA)[None]
    return {
        "joint_3d": j3.astype(np.float32),
        "joint_2d": j2.astype(np.float32),
        "pose_y": (a_pose() if pose is None else pose)[None].astype(np.float32),
        "seg": np.zeros((480, 640), np.uint8),
    }


def write_dexycb(
    root: Path,
    *,
    subjects,
    sequences: int,
    serials,
    frames: int = 1,
    labels: dict[str, dict[str, np.ndarray]] | None = None,
    label_for=lambda s, q, c, f: "hand",
    side: str = "right",
    image: np.ndarray | None = None,
) -> Path:
    """A dataset in the toolkit's layout; every frame links to one of the `labels` variants
    (default: one hand) and to one image (default: grey)."""
    labels = labels or {"hand": label_arrays(a_hand())}
    store = root.parent / f"{root.name}-store"
    store.mkdir(parents=True)
    for name, arrays in labels.items():
        np.savez_compressed(store / f"{name}.npz", **arrays)
    pixels = np.full((480, 640, 3), 128, np.uint8) if image is None else image
    Image.fromarray(pixels).save(store / "color.jpg", quality=95)
    intrinsics = root / "calibration" / "intrinsics"
    intrinsics.mkdir(parents=True)
    for c in serials:
        color = {"fx": FX, "fy": FY, "ppx": PPX, "ppy": PPY}
        (intrinsics / f"{SERIALS[c]}_640x480.yml").write_text(yaml.safe_dump({"color": color}))
    for s in subjects:
        for q in range(sequences):
            seq = root / SUBJECTS[s] / f"20200101_{q:06d}"
            meta = {
                "serials": [SERIALS[c] for c in serials],
                "num_frames": frames,
                "ycb_ids": [7],
                "ycb_grasp_ind": 0,
                "mano_sides": [side],
                "mano_calib": ["fake"],
            }
            seq.mkdir(parents=True)
            (seq / "meta.yml").write_text(yaml.safe_dump(meta))
            for c in serials:
                (seq / SERIALS[c]).mkdir()
                for f in range(frames):
                    (seq / SERIALS[c] / f"color_{f:06d}.jpg").symlink_to(store / "color.jpg")
                    (seq / SERIALS[c] / f"labels_{f:06d}.npz").symlink_to(
                        store / f"{label_for(s, q, c, f)}.npz"
                    )
    return root


def members(index) -> set[tuple[int, int, int]]:
    return {
        (SUBJECTS.index(f.subject), int(f.sequence.split("_")[1]), SERIALS.index(f.serial))
        for f in index.frames
    }


# The toolkit's rules (dex_ycb_toolkit/dex_ycb.py), transcribed apart from SPLIT_RULES:
# (subject_ind, serial_ind, which sequence indices).
ALL10, ALL8 = range(10), range(8)
TOOLKIT = {
    ("s0", "train"): (ALL10, ALL8, lambda i: i % 5 != 4),
    ("s0", "val"): ([0, 1], ALL8, lambda i: i % 5 == 4),
    ("s0", "test"): ([2, 3, 4, 5, 6, 7, 8, 9], ALL8, lambda i: i % 5 == 4),
    ("s1", "train"): ([0, 1, 2, 3, 4, 5, 9], ALL8, lambda i: True),
    ("s1", "val"): ([6], ALL8, lambda i: True),
    ("s1", "test"): ([7, 8], ALL8, lambda i: True),
    ("s2", "train"): (ALL10, [0, 1, 2, 3, 4, 5], lambda i: True),
    ("s2", "val"): (ALL10, [6], lambda i: True),
    ("s2", "test"): (ALL10, [7], lambda i: True),
    ("s3", "train"): (ALL10, ALL8, lambda i: i // 5 not in (3, 7, 11, 15, 19)),
    ("s3", "val"): (ALL10, ALL8, lambda i: i // 5 in (3, 19)),
    ("s3", "test"): (ALL10, ALL8, lambda i: i // 5 in (7, 11, 15)),
}


@pytest.fixture(scope="module")
def every_subject(tmp_path_factory):
    """10 subjects x 10 sequences x 8 serials x 1 frame: s0, s1, s2 are whole."""
    return write_dexycb(
        tmp_path_factory.mktemp("dexycb") / "a", subjects=range(10), sequences=10, serials=range(8)
    )


@pytest.fixture(scope="module")
def forty_sequences(tmp_path_factory):
    """2 subjects x 40 sequences (8 objects) x 2 serials: s3's val and test blocks exist."""
    return write_dexycb(
        tmp_path_factory.mktemp("dexycb") / "b", subjects=[0, 5], sequences=40, serials=[0, 7]
    )


def test_rules_cover_the_configs_setups_and_splits():
    assert sorted(SPLIT_RULES) == sorted(SETUPS)
    assert all(list(rules) == list(SPLITS) for rules in SPLIT_RULES.values())


@pytest.mark.parametrize("setup, split", [k for k in TOOLKIT if k[0] != "s3"])
def test_split_membership_follows_the_toolkit(every_subject, setup, split):
    subjects, serials, keep = TOOLKIT[(setup, split)]
    index = load_split(every_subject, setup, split)
    assert (index.setup, index.split) == (setup, split)
    assert members(index) == {
        (s, i, c) for s in subjects for i in range(10) if keep(i) for c in serials
    }


@pytest.mark.parametrize("split", SPLITS)
def test_s3_holds_out_objects_by_sequence_block(forty_sequences, split):
    subjects, serials, keep = TOOLKIT[("s3", split)]
    index = load_split(forty_sequences, "s3", split)
    assert members(index) == {
        (s, i, c)
        for s in set(subjects) & {0, 5}
        for i in range(40)
        if keep(i)
        for c in set(serials) & {0, 7}
    }
    # 40 of the toolkit's 100 sequences per subject, 2 of its 10 subjects: the rest is absent
    assert index.missing_subjects == tuple(SUBJECTS[s] for s in subjects if s not in (0, 5))


def test_frames_come_in_the_toolkits_order(every_subject):
    index = load_split(every_subject, "s1", "val")
    keys = [
        (SUBJECTS.index(f.subject), f.sequence, SERIALS.index(f.serial), f.frame)
        for f in index.frames
    ]
    assert keys == sorted(keys)
    f = index.frames[0]
    assert f.color.name == "color_000000.jpg" and f.labels.name == "labels_000000.npz"
    assert f.K == ((FX, 0.0, PPX), (0.0, FY, PPY), (0.0, 0.0, 1.0))
    assert (f.side, f.grasped, f.ycb_ids) == ("right", 0, (7,))


def test_frames_without_a_hand_are_skipped_and_counted(tmp_path):
    labels = {"hand": label_arrays(a_hand()), "none": label_arrays(None)}
    root = write_dexycb(
        tmp_path / "d",
        subjects=[6],
        sequences=2,
        serials=[0, 1],
        frames=5,
        labels=labels,
        label_for=lambda s, q, c, f: "none" if (q + c + f) % 3 == 0 else "hand",
    )
    index = load_split(root, "s1", "val")
    expected_none = sum((q + c + f) % 3 == 0 for q in range(2) for c in range(2) for f in range(5))
    assert index.skipped == {"no_hand": expected_none}
    assert len(index.frames) == 20 - expected_none
    assert all((int(f.sequence[-1]) + SERIALS.index(f.serial) + f.frame) % 3 for f in index.frames)


# ---------------------------------------------------------------- refused inputs


def one_frame(tmp_path: Path, labels: dict[str, np.ndarray] | None = None, **kw) -> Path:
    """Subject 7 (s1's test split), one sequence, one serial, one frame."""
    return write_dexycb(
        tmp_path / "one",
        subjects=[7],
        sequences=1,
        serials=[0],
        labels={"hand": labels} if labels is not None else None,
        **kw,
    )


def label_file(root: Path) -> str:
    return str(next(root.glob("*/*/*/labels_000000.npz")))


def test_refuses_unknown_names_and_a_missing_root(tmp_path):
    root = one_frame(tmp_path)
    with pytest.raises(ValueError, match=r"unknown DexYCB setup 's9'.*'s0', 's1', 's2', 's3'"):
        load_split(root, "s9", "train")
    with pytest.raises(ValueError, match=r"unknown DexYCB split 'dev'.*'train', 'val', 'test'"):
        load_split(root, "s0", "dev")
    with pytest.raises(ArtifactError, match="not a directory"):
        load_split(tmp_path / "nowhere", "s0", "train")


def test_refuses_a_label_file_without_joint_3d(tmp_path):
    arrays = label_arrays(a_hand())
    del arrays["joint_3d"]
    root = one_frame(tmp_path, arrays)
    with pytest.raises(ArtifactError) as e:
        load_split(root, "s1", "test")
    assert label_file(root) in str(e.value) and "'joint_3d'" in str(e.value)


def test_refuses_millimetres_with_a_hint(tmp_path):
    root = one_frame(tmp_path, label_arrays(a_hand() * 1000))
    with pytest.raises(ArtifactError) as e:
        load_split(root, "s1", "test")
    assert (
        label_file(root) in str(e.value)
        and "metres" in str(e.value)
        and "millimetres" in str(e.value)
    )


def test_refuses_a_wrong_shape(tmp_path):
    arrays = label_arrays(a_hand())
    arrays["joint_2d"] = arrays["joint_2d"][0]
    root = one_frame(tmp_path, arrays)
    with pytest.raises(ArtifactError) as e:
        load_split(root, "s1", "test")
    assert (
        label_file(root) in str(e.value)
        and "'joint_2d'" in str(e.value)
        and "[1, 21, 2]" in str(e.value)
    )


def test_refuses_missing_intrinsics(tmp_path):
    root = one_frame(tmp_path)
    missing = root / "calibration" / "intrinsics" / f"{SERIALS[0]}_640x480.yml"
    missing.unlink()
    with pytest.raises(ArtifactError, match=str(missing)):
        load_split(root, "s1", "test")


def test_refuses_a_missing_or_bad_meta(tmp_path):
    root = one_frame(tmp_path)
    meta = next(root.glob("*/*/meta.yml"))
    data = yaml.safe_load(meta.read_text())
    meta.write_text(yaml.safe_dump({**data, "mano_sides": ["both"]}))
    with pytest.raises(ArtifactError, match=rf"{meta}: field 'mano_sides'"):
        load_split(root, "s1", "test")
    meta.unlink()
    with pytest.raises(ArtifactError, match=rf"{meta}: missing"):
        load_split(root, "s1", "test")


def test_refuses_an_empty_split(tmp_path):
    root = one_frame(tmp_path)  # subject 7 only: s1's val split (subject 6) has nothing
    with pytest.raises(ArtifactError) as e:
        load_split(root, "s1", "val")
    assert str(root) in str(e.value) and "'s1'" in str(e.value) and "'val'" in str(e.value)


def test_build_crops_refuses_an_image_that_does_not_decode(tmp_path):
    root = one_frame(tmp_path)
    index = load_split(root, "s1", "test")
    color = index.frames[0].color
    color.unlink()
    color.write_bytes(b"not a jpeg")
    with pytest.raises(ArtifactError, match=rf"{color}: the image does not decode"):
        build_crops(index.frames, size=32, margin=0.2)


# ---------------------------------------------------------------- crops


def dot_image(joints: np.ndarray, joint: int) -> np.ndarray:
    """Black, with a white disk (radius 8 px) on one joint's projection."""
    u, v = project(joints, K_CAMERA)[joint]
    ys, xs = np.mgrid[0:480, 0:640]
    image = np.zeros((480, 640, 3), np.uint8)
    image[(xs - u) ** 2 + (ys - v) ** 2 <= 64] = 255
    return image


def centroid(image: torch.Tensor) -> np.ndarray:
    """The brightness-weighted centre (u, v) of a [3, S, S] crop."""
    w = image.double().mean(0).numpy()
    w = np.where(w > 40, w, 0.0)
    ys, xs = np.mgrid[0 : w.shape[0], 0 : w.shape[1]]
    return np.array([(w * xs).sum(), (w * ys).sum()]) / w.sum()


@pytest.fixture(scope="module", params=["right", "left"])
def crops(request, tmp_path_factory):
    hand = a_hand()
    root = write_dexycb(
        tmp_path_factory.mktemp("crops") / request.param,
        subjects=[6],
        sequences=1,
        serials=[0],
        frames=2,
        side=request.param,
        image=dot_image(hand, 8),
    )
    index = load_split(root, "s1", "val")
    return index, build_crops(
        index.frames, size=64, margin=0.2, object_extents={7: np.array([0.01, 0.02, 0.03])}
    )


def test_crop_shapes_and_dtypes(crops):
    _, c = crops
    expected = {
        "images": ((2, 3, 64, 64), torch.uint8),
        "joints3d": ((2, 21, 3), torch.float32),
        "joints2d": ((2, 21, 2), torch.float32),
        "K": ((2, 3, 3), torch.float32),
        "mirrored": ((2,), torch.bool),
        "object_pose": ((2, 3, 4), torch.float32),
        "object_extent": ((2, 3), torch.float32),
        "index": ((2,), torch.int64),
    }
    assert {k: (tuple(v.shape), v.dtype) for k, v in c.items()} == expected
    assert c["index"].tolist() == [0, 1]
    torch.testing.assert_close(c["object_extent"][0], torch.tensor([0.01, 0.02, 0.03]))


def test_crop_intrinsics_project_the_joints(crops):
    _, c = crops
    p = torch.einsum("nij,nkj->nki", c["K"].double(), c["joints3d"].double())
    np.testing.assert_allclose(
        (p[..., :2] / p[..., 2:]).numpy(), c["joints2d"].double().numpy(), atol=1e-3
    )
    # the joints' box is centred, with the margin on its longer side
    j2 = c["joints2d"][0].double().numpy()
    lo, hi = j2.min(0), j2.max(0)
    np.testing.assert_allclose((lo + hi) / 2, [31.5, 31.5], atol=1e-3)
    assert (hi - lo).max() == pytest.approx(64 / 1.4, abs=1e-3)


def test_the_image_moves_with_the_labels(crops):
    """The white disk drawn on the index tip lands on the crop's index tip, also flipped."""
    _, c = crops
    np.testing.assert_allclose(
        centroid(c["images"][0]), c["joints2d"][0, 8].double().numpy(), atol=0.5
    )


def test_left_hands_are_mirrored_consistently(crops):
    index, c = crops
    left = index.frames[0].side == "left"
    assert c["mirrored"].tolist() == [left, left]
    labels = read_labels(index.frames[0])
    # unmirror gives back the camera-frame joints
    back = unmirror_joints(c["joints3d"], c["mirrored"])[0].double().numpy()
    np.testing.assert_allclose(back, labels["joints3d"], atol=1e-6)
    x_sign = -1.0 if left else 1.0
    np.testing.assert_allclose(
        c["joints3d"][0, :, 0].double().numpy(), x_sign * labels["joints3d"][:, 0], atol=1e-6
    )
    # the object's pose stays a rotation (M R M) and its centre lands where the crop of
    # the camera image puts it, flipped for a left hand
    M = np.diag([x_sign, 1.0, 1.0])
    pose = c["object_pose"][0].double().numpy()
    R, t = pose[:, :3], pose[:, 3]
    np.testing.assert_allclose(R, M @ labels["object_pose"][:, :3] @ M, atol=1e-6)
    assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-6)
    j2 = labels["joints2d"]
    centre, side = (j2.min(0) + j2.max(0)) / 2, (j2.max(0) - j2.min(0)).max() * 1.4
    u, v = (project(labels["object_pose"][:, 3], K_CAMERA) - centre + side / 2) * 64 / side - 0.5
    expected = [63 - u if left else u, v]
    np.testing.assert_allclose(project(t, c["K"][0].double().numpy()), expected, atol=1e-3)


def test_unmirror_joints_is_its_own_inverse():
    joints = torch.randn(3, 21, 3)
    mirrored = torch.tensor([True, False, True])
    once = unmirror_joints(joints, mirrored)
    assert torch.equal(once[1], joints[1]) and torch.equal(once[0, :, 0], -joints[0, :, 0])
    assert torch.equal(unmirror_joints(once, mirrored), joints)
    with pytest.raises(ValueError, match=r"mirrored \[N\]"):
        unmirror_joints(joints, mirrored[:2])


def test_object_extent_unknown_or_absent_is_nan(tmp_path):
    no_pose = label_arrays(a_hand(), pose=np.zeros((3, 4)))
    root = write_dexycb(
        tmp_path / "o",
        subjects=[6],
        sequences=1,
        serials=[0],
        frames=2,
        labels={"hand": label_arrays(a_hand()), "absent": no_pose},
        label_for=lambda s, q, c, f: "absent" if f else "hand",
    )
    frames = load_split(root, "s1", "val").frames
    unknown = build_crops(frames, size=32, margin=0.1)
    assert torch.isnan(unknown["object_extent"]).all()
    known = build_crops(
        frames, size=32, margin=0.1, object_extents={7: np.array([0.01, 0.02, 0.03])}
    )
    assert (
        torch.isfinite(known["object_extent"][0]).all()
        and torch.isfinite(known["object_pose"][0]).all()
    )
    # an all-zero pose_y is the toolkit's "no pose": NaN pose and extent
    assert (
        torch.isnan(known["object_pose"][1]).all() and torch.isnan(known["object_extent"][1]).all()
    )


def test_crops_reaching_past_the_image_are_black_there(tmp_path):
    # the hand's leftmost joint 10 px from the image's left edge
    hand = a_hand(offset=(0.0, 0.0, 0.5))
    left = hand[np.argmin(project(hand, K_CAMERA)[:, 0])]
    hand[:, 0] += (10 - PPX) * left[2] / FX - left[0]
    root = write_dexycb(
        tmp_path / "edge",
        subjects=[6],
        sequences=1,
        serials=[0],
        labels={"hand": label_arrays(hand)},
        image=np.full((480, 640, 3), 255, np.uint8),
    )
    frames = load_split(root, "s1", "val").frames
    assert project(hand, K_CAMERA)[:, 0].min() == pytest.approx(10.0)
    c = build_crops(frames, size=64, margin=0.5)
    image = c["images"][0].double().mean(0)
    assert image[:, 0].max() < 10 and image[32, 40:].min() > 245

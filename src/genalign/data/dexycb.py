"""DexYCB in the toolkit's layout: the official splits s0-s3 and hand-centred crops.

The layout and the split rules are those of the DexYCB toolkit (NVlabs/dex-ycb-toolkit,
`dex_ycb_toolkit/dex_ycb.py`, class `DexYCBDataset`: `_SUBJECTS`, `_SERIALS` and the
`subject_ind` / `serial_ind` / `sequence_ind` of each setup and split):

    <root>/<subject>/<sequence>/meta.yml          serials, num_frames, ycb_ids, ycb_grasp_ind,
                                                  mano_sides (["right"] or ["left"]), mano_calib
    <root>/<subject>/<sequence>/<serial>/color_%06d.jpg     640 x 480 RGB
    <root>/<subject>/<sequence>/<serial>/labels_%06d.npz    joint_3d [1,21,3] METRES, camera frame
                                                            joint_2d [1,21,2] pixels
                                                            pose_y [num_objects,3,4] object poses,
                                                              camera frame (all 0: not annotated)
                                                            pose_m [1,51] MANO pose (not read here)
                                                            seg [480,640] uint8: 0 background,
                                                              ycb id object, 255 hand (not read)
    <root>/calibration/intrinsics/<serial>_640x480.yml      color: {fx, fy, ppx, ppy}

The object poses are `pose_y` (the toolkit's `examples/visualize_pose.py` adds one YCB mesh
per `pose_y[o]`, and builds the MANO hand from `pose_m[:, 0:48]` and `pose_m[:, 48:51]`).
Sequences are a subject's sub-directories in sorted order, frames 0..num_frames-1, the
order of the toolkit's index (subject, sequence, serial, frame). Each subject grasps 20
objects 5 times, so sequence i // 5 is the object and i % 5 the trial:

| setup | split | subjects | serials | sequences |
|---|---|---|---|---|
| s0 seen | train | 0-9 | 0-7 | i % 5 != 4 |
| | val | 0, 1 | 0-7 | i % 5 == 4 |
| | test | 2-9 | 0-7 | i % 5 == 4 |
| s1 unseen subjects | train | 0-5, 9 | 0-7 | all |
| | val | 6 | 0-7 | all |
| | test | 7, 8 | 0-7 | all |
| s2 unseen cameras | train | 0-9 | 0-5 | all |
| | val | 0-9 | 6 | all |
| | test | 0-9 | 7 | all |
| s3 unseen objects | train | 0-9 | 0-7 | i // 5 not in (3, 7, 11, 15, 19) |
| | val | 0-9 | 0-7 | i // 5 in (3, 19) |
| | test | 0-9 | 0-7 | i // 5 in (7, 11, 15) |

Where the toolkit asserts 100 sequences per subject, this loader also reads smaller
directories (the project's synthetic hands, `genalign.data.synthetic_hands`): a sequence
index, a subject or a serial that the directory does not have is absent from the split,
and the subjects missing from `root` are listed in `SplitIndex.missing_subjects`.

    >>> from genalign.data.dexycb import build_crops, load_split
    >>> index = load_split(Path("DexYCB"), "s0", "train")   # checks every file it will read
    >>> index.skipped                                        # {"no_hand": 1234}: joint_3d all -1
    >>> crops = build_crops(index.frames, size=128, margin=0.2)
    >>> crops["joints3d"].shape                              # [N, 21, 3], metres

Units: metres and pixels, as the files store them (the hand-pose losses work in mm).
Left hands are mirrored to right ones in `build_crops` (`mirrored`); `unmirror_joints`
maps predictions back to the camera frame for evaluation.
"""

from __future__ import annotations

import dataclasses
import math
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image, UnidentifiedImageError

from genalign.data.hand_skeleton import NUM_JOINTS
from genalign.storage import ArtifactError

# The toolkit's _SUBJECTS and _SERIALS, in its order (split rules index into them).
SUBJECTS: tuple[str, ...] = (
    "20200709-subject-01",
    "20200813-subject-02",
    "20200820-subject-03",
    "20200903-subject-04",
    "20200908-subject-05",
    "20200918-subject-06",
    "20200928-subject-07",
    "20201002-subject-08",
    "20201015-subject-09",
    "20201022-subject-10",
)
SERIALS: tuple[str, ...] = (
    "836212060125",
    "839512060362",
    "840412060917",
    "841412060263",
    "932122060857",
    "932122060861",
    "932122061900",
    "932122062010",
)
IMAGE_WIDTH, IMAGE_HEIGHT = 640, 480
# The toolkit indexes sequence_ind over range(100): 20 objects x 5 trials per subject.
SEQUENCES_PER_SUBJECT = 100
# DexYCB stores joints in metres; a hand 2 m from the camera is far outside its
# capture volume (hands are 0.4-1 m away), so larger values are millimetres.
MAX_ABS_METRES = 2.0
NO_HAND_VALUE = -1.0  # joint_3d and joint_2d of a frame without a hand (toolkit hpe_eval.py)
LABEL_KEYS = ("joint_3d", "joint_2d", "pose_y")
# libyaml's loader reads a meta.yml 8x faster than the pure-Python one (a split reads ~1000).
_YAML_LOADER = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader


@dataclasses.dataclass(frozen=True)
class SplitRule:
    """Which subjects, serials and sequence indices (into SUBJECTS, SERIALS, sorted sequences) a split takes."""

    subjects: tuple[int, ...]
    serials: tuple[int, ...]
    sequences: tuple[int, ...]


def _sequences(keep) -> tuple[int, ...]:
    return tuple(i for i in range(SEQUENCES_PER_SUBJECT) if keep(i))


_EVERY_SUBJECT = tuple(range(10))
_EVERY_SERIAL = tuple(range(8))
_EVERY_SEQUENCE = _sequences(lambda i: True)

SPLIT_RULES: dict[str, dict[str, SplitRule]] = {
    # Seen subjects, camera views, grasped objects: the fifth trial of each object is held out.
    "s0": {
        "train": SplitRule(_EVERY_SUBJECT, _EVERY_SERIAL, _sequences(lambda i: i % 5 != 4)),
        "val": SplitRule((0, 1), _EVERY_SERIAL, _sequences(lambda i: i % 5 == 4)),
        "test": SplitRule(
            (2, 3, 4, 5, 6, 7, 8, 9), _EVERY_SERIAL, _sequences(lambda i: i % 5 == 4)
        ),
    },
    # Unseen subjects.
    "s1": {
        "train": SplitRule((0, 1, 2, 3, 4, 5, 9), _EVERY_SERIAL, _EVERY_SEQUENCE),
        "val": SplitRule((6,), _EVERY_SERIAL, _EVERY_SEQUENCE),
        "test": SplitRule((7, 8), _EVERY_SERIAL, _EVERY_SEQUENCE),
    },
    # Unseen camera views.
    "s2": {
        "train": SplitRule(_EVERY_SUBJECT, (0, 1, 2, 3, 4, 5), _EVERY_SEQUENCE),
        "val": SplitRule(_EVERY_SUBJECT, (6,), _EVERY_SEQUENCE),
        "test": SplitRule(_EVERY_SUBJECT, (7,), _EVERY_SEQUENCE),
    },
    # Unseen grasped objects: sequence i // 5 is the object.
    "s3": {
        "train": SplitRule(
            _EVERY_SUBJECT, _EVERY_SERIAL, _sequences(lambda i: i // 5 not in (3, 7, 11, 15, 19))
        ),
        "val": SplitRule(_EVERY_SUBJECT, _EVERY_SERIAL, _sequences(lambda i: i // 5 in (3, 19))),
        "test": SplitRule(
            _EVERY_SUBJECT, _EVERY_SERIAL, _sequences(lambda i: i // 5 in (7, 11, 15))
        ),
    },
}


@dataclasses.dataclass(frozen=True)
class Frame:
    """One image of one camera: its files, the camera's intrinsics and the sequence's meta."""

    subject: str
    sequence: str
    serial: str
    frame: int
    color: Path
    labels: Path
    K: tuple[tuple[float, float, float], ...]  # 3x3 colour intrinsics of this serial, pixels
    side: str  # "right" | "left": meta.yml mano_sides[0]
    grasped: int  # index into ycb_ids and pose_y of the grasped object (ycb_grasp_ind)
    ycb_ids: tuple[
        int, ...
    ]  # the sequence's objects (meta.yml ycb_ids), ycb_ids[grasped] is grasped


@dataclasses.dataclass(frozen=True)
class SplitIndex:
    """The frames with a hand of one split, and how many were left out and why."""

    setup: str
    split: str
    frames: list[Frame]
    skipped: dict[str, int]  # reason -> frames: "no_hand" (joint_3d all -1)
    missing_subjects: tuple[str, ...] = ()  # the split's subjects that `root` does not have


def split_rule(setup: str, split: str) -> SplitRule:
    if setup not in SPLIT_RULES:
        raise ValueError(f"setup: unknown DexYCB setup {setup!r}; valid: {sorted(SPLIT_RULES)}")
    if split not in SPLIT_RULES[setup]:
        raise ValueError(
            f"split: unknown DexYCB split {split!r}; valid: {list(SPLIT_RULES[setup])}"
        )
    return SPLIT_RULES[setup][split]


def _load_yaml(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; expected the {what}")
    try:
        data = yaml.load(path.read_text(), Loader=_YAML_LOADER)
    except yaml.YAMLError as e:
        raise ArtifactError(f"{path}: not valid YAML ({e}); expected the {what}") from e
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: expected a mapping (the {what}), got {type(data).__name__}")
    return data


def read_intrinsics(root: Path, serial: str) -> tuple[tuple[float, float, float], ...]:
    """The 3x3 colour intrinsics of `serial` from calibration/intrinsics/<serial>_640x480.yml."""
    path = Path(root) / "calibration" / "intrinsics" / f"{serial}_{IMAGE_WIDTH}x{IMAGE_HEIGHT}.yml"
    data = _load_yaml(path, f"intrinsics of camera {serial} (color: fx, fy, ppx, ppy)")
    color = data.get("color")
    if not isinstance(color, dict):
        raise ArtifactError(
            f"{path}: field 'color' missing or not a mapping; expected color: {{fx, fy, ppx, ppy}}"
        )
    values = {}
    for key in ("fx", "fy", "ppx", "ppy"):
        v = color.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ArtifactError(f"{path}: field 'color.{key}' is {v!r}; expected a number (pixels)")
        values[key] = float(v)
    if values["fx"] <= 0 or values["fy"] <= 0:
        raise ArtifactError(
            f"{path}: color.fx and color.fy must be > 0, got {values['fx']}, {values['fy']}"
        )
    return (
        (values["fx"], 0.0, values["ppx"]),
        (0.0, values["fy"], values["ppy"]),
        (0.0, 0.0, 1.0),
    )


@dataclasses.dataclass(frozen=True)
class _Meta:
    serials: tuple[str, ...]
    num_frames: int
    ycb_ids: tuple[int, ...]
    grasped: int
    side: str


def _read_meta(path: Path) -> _Meta:
    data = _load_yaml(
        path, "sequence's meta.yml (serials, num_frames, ycb_ids, ycb_grasp_ind, mano_sides)"
    )

    def need(key: str, kind: type, expected: str):
        if key not in data:
            raise ArtifactError(f"{path}: field {key!r} missing; expected {expected}")
        v = data[key]
        if isinstance(v, bool) or not isinstance(v, kind):
            raise ArtifactError(f"{path}: field {key!r} is {v!r}; expected {expected}")
        return v

    serials = need("serials", list, "a list of camera serials")
    # YAML reads an unquoted serial as an integer; serials have no leading zeros.
    if not all(isinstance(s, (str, int)) and not isinstance(s, bool) for s in serials):
        raise ArtifactError(
            f"{path}: field 'serials' is {serials!r}; expected a list of camera serials"
        )
    num_frames = need("num_frames", int, "the number of frames (an integer >= 0)")
    if num_frames < 0:
        raise ArtifactError(f"{path}: field 'num_frames' is {num_frames}; expected an integer >= 0")
    ycb_ids = need("ycb_ids", list, "a list of YCB object ids")
    if not ycb_ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ycb_ids):
        raise ArtifactError(
            f"{path}: field 'ycb_ids' is {ycb_ids!r}; expected a non-empty list of integers"
        )
    grasped = need("ycb_grasp_ind", int, "the index of the grasped object in ycb_ids")
    if not 0 <= grasped < len(ycb_ids):
        raise ArtifactError(
            f"{path}: field 'ycb_grasp_ind' is {grasped}; expected an index into ycb_ids {ycb_ids}"
        )
    sides = need("mano_sides", list, "a list like ['right'] or ['left']")
    if not sides or sides[0] not in ("right", "left"):
        raise ArtifactError(
            f"{path}: field 'mano_sides' is {sides!r}; expected ['right'] or ['left']"
        )
    return _Meta(tuple(str(s) for s in serials), num_frames, tuple(ycb_ids), grasped, sides[0])


def _read_label_arrays(path: Path, num_objects: int) -> dict[str, np.ndarray] | None:
    """joint_3d [21,3], joint_2d [21,2], pose_y [num_objects,3,4] of one label file, checked;
    None for a frame without a hand (joint_3d all -1)."""
    try:
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in LABEL_KEYS if k in npz.files}
            keys = sorted(npz.files)
    except FileNotFoundError as e:
        raise ArtifactError(f"{path}: missing; expected the frame's label file") from e
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise ArtifactError(f"{path}: not a readable .npz label file ({e})") from e
    missing = [k for k in LABEL_KEYS if k not in arrays]
    if missing:
        raise ArtifactError(
            f"{path}: key {missing[0]!r} missing (keys: {keys}); a DexYCB label file holds "
            "joint_3d [1,21,3] (m), joint_2d [1,21,2] (px), pose_y [num_objects,3,4], seg"
        )
    shapes = {
        "joint_3d": (1, NUM_JOINTS, 3),
        "joint_2d": (1, NUM_JOINTS, 2),
        "pose_y": (num_objects, 3, 4),
    }
    for key, shape in shapes.items():
        if arrays[key].shape != shape:
            raise ArtifactError(
                f"{path}: key {key!r} has shape {list(arrays[key].shape)}; expected {list(shape)}"
                + (" (one pose per object of meta.yml ycb_ids)" if key == "pose_y" else "")
            )
        if not np.issubdtype(arrays[key].dtype, np.floating) or not np.isfinite(arrays[key]).all():
            raise ArtifactError(
                f"{path}: key {key!r} must hold finite floats, got dtype {arrays[key].dtype}"
            )
    joints3d = arrays["joint_3d"][0].astype(np.float64)
    if np.all(joints3d == NO_HAND_VALUE):
        return None
    if np.abs(joints3d).max() > MAX_ABS_METRES:
        raise ArtifactError(
            f"{path}: key 'joint_3d' holds values up to {np.abs(joints3d).max():.1f}; DexYCB stores metres "
            f"(|value| <= {MAX_ABS_METRES}), these look like millimetres"
        )
    if (joints3d[:, 2] <= 0).any():
        raise ArtifactError(
            f"{path}: key 'joint_3d' has joints at depth z <= 0; expected the camera frame (z > 0 in front)"
        )
    return {
        "joints3d": joints3d,
        "joints2d": arrays["joint_2d"][0].astype(np.float64),
        "pose_y": arrays["pose_y"].astype(np.float64),
    }


def load_split(root: Path, setup: str, split: str) -> SplitIndex:
    """The frames with a hand of one official split, every file they need checked first.

    Raises ArtifactError naming the file (and field) for a missing root, meta.yml,
    intrinsics, image or label file, and for label content that is not DexYCB's
    (missing key, wrong shape, millimetres); ValueError for an unknown setup or split;
    ArtifactError for a split with no frame.
    """
    root = Path(root)
    rule = split_rule(setup, split)
    if not root.is_dir():
        raise ArtifactError(
            f"{root}: not a directory; expected a dataset in the DexYCB toolkit's layout"
        )
    intrinsics: dict[str, tuple[tuple[float, float, float], ...]] = {}
    frames: list[Frame] = []
    skipped = {"no_hand": 0}
    missing_subjects = []
    for s in rule.subjects:
        subject = SUBJECTS[s]
        subject_dir = root / subject
        if not subject_dir.is_dir():
            missing_subjects.append(subject)
            continue
        sequences = sorted(p.name for p in subject_dir.iterdir() if p.is_dir())
        for i in rule.sequences:
            if i >= len(sequences):
                break
            sequence_dir = subject_dir / sequences[i]
            meta = _read_meta(sequence_dir / "meta.yml")
            for c in rule.serials:
                serial = SERIALS[c]
                if serial not in meta.serials:
                    continue
                if serial not in intrinsics:
                    intrinsics[serial] = read_intrinsics(root, serial)
                for f in range(meta.num_frames):
                    color = sequence_dir / serial / f"color_{f:06d}.jpg"
                    labels = sequence_dir / serial / f"labels_{f:06d}.npz"
                    if not color.is_file():
                        raise ArtifactError(
                            f"{color}: missing; meta.yml {sequence_dir / 'meta.yml'} "
                            f"lists camera {serial} with num_frames {meta.num_frames}"
                        )
                    if _read_label_arrays(labels, len(meta.ycb_ids)) is None:
                        skipped["no_hand"] += 1
                        continue
                    frames.append(
                        Frame(
                            subject=subject,
                            sequence=sequences[i],
                            serial=serial,
                            frame=f,
                            color=color,
                            labels=labels,
                            K=intrinsics[serial],
                            side=meta.side,
                            grasped=meta.grasped,
                            ycb_ids=meta.ycb_ids,
                        )
                    )
    if not frames:
        raise ArtifactError(
            f"{root}: DexYCB setup {setup!r} split {split!r} has no frame with a hand "
            f"(subjects {[SUBJECTS[s] for s in rule.subjects]}, missing here: {missing_subjects}; "
            f"serials {[SERIALS[c] for c in rule.serials]}; {len(rule.sequences)} sequence indices "
            f"from {rule.sequences[0]}; frames without a hand: {skipped['no_hand']})"
        )
    return SplitIndex(
        setup=setup,
        split=split,
        frames=frames,
        skipped=skipped,
        missing_subjects=tuple(missing_subjects),
    )


def read_labels(frame: Frame) -> dict[str, np.ndarray]:
    """joints3d [21,3] metres (camera frame), joints2d [21,2] pixels and object_pose [3,4]
    (the grasped object's pose_y, camera frame; NaN where the file has none: all zeros),
    as float64. ArtifactError for bad content and for a frame without a hand."""
    arrays = _read_label_arrays(frame.labels, len(frame.ycb_ids))
    if arrays is None:
        raise ArtifactError(f"{frame.labels}: key 'joint_3d' is all -1 (no hand in this frame)")
    pose = arrays["pose_y"][frame.grasped]
    # The toolkit skips an object whose pose_y is all zeros (examples/visualize_pose.py).
    if np.all(pose == 0.0):
        pose = np.full((3, 4), np.nan)
    return {"joints3d": arrays["joints3d"], "joints2d": arrays["joints2d"], "object_pose": pose}


# Mirroring about the camera's y-z plane: x -> -x.
_MIRROR = np.diag([-1.0, 1.0, 1.0])


def crop_affine(joints2d: np.ndarray, size: int, margin: float) -> np.ndarray:
    """The 3x3 affine from image pixels to crop pixels of the hand-centred square crop.

    The square is centred on the 2D joints' bounding box, side max(w, h) * (1 + 2 margin)
    (at least 1 px), scaled to `size`. Pixel centres sit at integer coordinates (joint_2d's
    convention) and PIL's resize samples pixel j at the continuous position j + 0.5, so
    u' = (u - cx + L/2) * S/L - 0.5 maps the box centre to the crop's centre (S - 1) / 2.
    """
    lo, hi = joints2d.min(axis=0), joints2d.max(axis=0)
    centre = (lo + hi) / 2
    side = max(float((hi - lo).max()) * (1 + 2 * margin), 1.0)
    scale = size / side
    return np.array(
        [
            [scale, 0.0, (side / 2 - centre[0]) * scale - 0.5],
            [0.0, scale, (side / 2 - centre[1]) * scale - 0.5],
            [0.0, 0.0, 1.0],
        ]
    )


def _crop_image(path: Path, affine: np.ndarray, size: int) -> np.ndarray:
    try:
        with Image.open(path) as im:
            image = im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ArtifactError(f"{path}: the image does not decode ({e})") from e
    if image.size != (IMAGE_WIDTH, IMAGE_HEIGHT):
        raise ArtifactError(
            f"{path}: image is {image.size[0]}x{image.size[1]}; expected "
            f"{IMAGE_WIDTH}x{IMAGE_HEIGHT} (the intrinsics' resolution)"
        )
    scale = affine[0, 0]
    side = size / scale
    # The crop's top-left corner in continuous image coordinates (inverse of crop_affine).
    x0 = (-0.5 - affine[0, 2]) / scale + 0.5
    y0 = (-0.5 - affine[1, 2]) / scale + 0.5
    ox, oy = math.floor(x0), math.floor(y0)
    # crop() fills what lies outside the image with black.
    region = image.crop((ox, oy, math.ceil(x0 + side), math.ceil(y0 + side)))
    out = region.resize(
        (size, size), Image.BILINEAR, box=(x0 - ox, y0 - oy, x0 - ox + side, y0 - oy + side)
    )
    return np.asarray(out)


def build_crops(
    frames: Sequence[Frame],
    *,
    size: int,
    margin: float,
    object_extents: Mapping[int, np.ndarray] | None = None,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Hand-centred square crops of `frames`, left hands mirrored to right ones.

    Returns, for N frames and S = size:
        images         uint8   [N, 3, S, S]
        joints3d       float32 [N, 21, 3]  metres, camera frame (x negated where mirrored)
        joints2d       float32 [N, 21, 2]  crop pixels (projecting joints3d with K gives them)
        K              float32 [N, 3, 3]   crop intrinsics: A @ K_camera, then the mirror
        mirrored       bool    [N]         a left hand, flipped to a right one
        object_pose    float32 [N, 3, 4]   grasped object, camera frame [R | t] (mirrored:
                                           M R M, M t with M = diag(-1, 1, 1)); NaN: no pose
        object_extent  float32 [N, 3]      half-extents (m) of the grasped object's box in its
                                           frame, from `object_extents` by ycb id; NaN: unknown
                                           or no pose in this frame
        index          int64   [N]         the frame's position in `frames`

    A mirrored crop is the flipped image (u' -> S - 1 - u') of the camera seeing the
    mirrored world (x -> -x): K_mirrored = F @ K @ M with F = [[-1, 0, S - 1], [0, 1, 0],
    [0, 0, 1]], so the projection of the mirrored joints lands on the flipped 2D joints.
    A mirrored box or cylinder is itself (in its own frame x -> -x).
    """
    from tqdm.auto import tqdm

    n = len(frames)
    images = np.zeros((n, size, size, 3), np.uint8)
    joints3d = np.zeros((n, NUM_JOINTS, 3), np.float32)
    joints2d = np.zeros((n, NUM_JOINTS, 2), np.float32)
    intrinsics = np.zeros((n, 3, 3), np.float32)
    mirrored = np.zeros(n, bool)
    object_pose = np.full((n, 3, 4), np.nan, np.float32)
    object_extent = np.full((n, 3), np.nan, np.float32)
    flip = np.array([[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    for i, frame in enumerate(tqdm(frames, desc="crops", unit="frame", disable=not progress)):
        labels = read_labels(frame)
        affine = crop_affine(labels["joints2d"], size, margin)
        image = _crop_image(frame.color, affine, size)
        j3 = labels["joints3d"]
        j2 = labels["joints2d"] @ affine[:2, :2].T + affine[:2, 2]
        K = affine @ np.asarray(frame.K)
        pose = labels["object_pose"]
        if frame.side == "left":
            mirrored[i] = True
            image = image[:, ::-1]
            j3 = j3 @ _MIRROR
            j2 = np.stack([size - 1.0 - j2[:, 0], j2[:, 1]], axis=1)
            K = flip @ K @ _MIRROR
            pose = np.concatenate([_MIRROR @ pose[:, :3] @ _MIRROR, _MIRROR @ pose[:, 3:]], axis=1)
        images[i] = image
        joints3d[i], joints2d[i], intrinsics[i] = j3, j2, K
        object_pose[i] = pose
        ycb_id = frame.ycb_ids[frame.grasped]
        if object_extents is not None and ycb_id in object_extents and np.isfinite(pose).all():
            object_extent[i] = np.asarray(object_extents[ycb_id], np.float64)
    return {
        "images": torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
        "joints3d": torch.from_numpy(joints3d),
        "joints2d": torch.from_numpy(joints2d),
        "K": torch.from_numpy(intrinsics),
        "mirrored": torch.from_numpy(mirrored),
        "object_pose": torch.from_numpy(object_pose),
        "object_extent": torch.from_numpy(object_extent),
        "index": torch.arange(n, dtype=torch.int64),
    }


def unmirror_joints(joints3d: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
    """Joints [N, J, 3] of (possibly mirrored) crops back in the camera frame: x negated
    where `mirrored` [N] is set. Its own inverse."""
    if joints3d.dim() != 3 or joints3d.shape[-1] != 3 or mirrored.shape != joints3d.shape[:1]:
        raise ValueError(
            f"unmirror_joints: expected joints3d [N, J, 3] and mirrored [N], got "
            f"{list(joints3d.shape)} and {list(mirrored.shape)}"
        )
    sign = torch.ones(joints3d.shape[0], 1, 3, dtype=joints3d.dtype, device=joints3d.device)
    sign[mirrored.to(torch.bool), 0, 0] = -1.0
    return joints3d * sign

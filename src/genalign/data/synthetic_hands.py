"""Synthetic hands grasping boxes and cylinders, written in DexYCB's layout.

`write_synthetic_dexycb` writes a directory that `genalign.data.dexycb` reads exactly as
it reads DexYCB (the toolkit's subject and serial names, meta.yml, intrinsics, colour
JPEGs and label files), so the hand-pose pipeline's tiny preset runs the real loader,
splits and crops:

    <root>/calibration/intrinsics/<serial>_640x480.yml     color: {fx, fy, ppx, ppy}
    <root>/<subject>/<sequence>/meta.yml                    serials, num_frames, ycb_ids,
                                                            ycb_grasp_ind 0, mano_sides,
                                                            mano_calib, synthetic_* extras
    <root>/<subject>/<sequence>/<serial>/color_%06d.jpg     640 x 480, JPEG quality 90
    <root>/<subject>/<sequence>/<serial>/labels_%06d.npz    joint_3d [1,21,3] float32 metres,
                                                            camera frame; joint_2d [1,21,2]
                                                            float32 px (its projection);
                                                            pose_y [1,3,4] float32 grasped
                                                            object (all 0: no object); seg
                                                            [480,640] uint8 (0 background,
                                                            ycb id object, 255 hand)
    <root>/synthetic_spec.yml                               the spec and the counts

No `pose_m` is written: the hand is a kinematic skeleton, not MANO.

    >>> from genalign.data.synthetic_hands import OBJECT_EXTENTS, SyntheticHandsSpec, write_synthetic_dexycb
    >>> counts = write_synthetic_dexycb(Path("hands"), SyntheticHandsSpec(subjects=2))
    >>> counts                 # {"frames": 480, "sequences": 10, "empty": ..., "left_sequences": ...}

The hand (joints in `genalign.data.hand_skeleton`'s DexYCB order) is a kinematic chain in
metres: wrist to the four finger MCPs 0.077-0.084 m, phalanges 0.019-0.045 m (adult
averages, `_MCP` and `_PHALANGES`), scaled per subject by 0.85-1.15 (so s1's unseen
subjects are unseen hand sizes) and per sequence and bone by 0.97-1.03. Fingers flex
toward the palm (MCP 0-90, PIP 0-110, DIP 0-80 degrees; abduction +-15 at the MCP; the
thumb swings 0-50 degrees in front of the palm and flexes 0-40, 0-60, 0-80). A sequence
interpolates from an open hand to a grasp closing on the sequence's object (box or
cylinder in front of the palm, moving with the hand), while the wrist turns (palm toward
the cameras, within +-45 / +-60 / +-60 degrees about x / y / z) and moves about a point
0.55-0.7 m from every camera. Left-hand sequences use the mirror image of the hand (x
negated in the hand's frame). The 8 serials are 8 fixed cameras within 40 degrees of the
frontal view, with DexYCB-like intrinsics (fx ~ 615, centre ~ (320, 240)).

Objects follow DexYCB's sequence structure: sequence i // 5 is the object block, so the
s3 split (unseen objects, by i // 5) holds out objects and s0 (by i % 5) sees them all;
within a block even subjects grasp one object and odd subjects another (`OBJECTS`, ycb
ids 1-40: block b holds ids 2b + 1 and 2b + 2, a box and a cylinder). With fewer than 5
sequences per subject every sequence grasps block 0 (id 1, a box, or id 2, a cylinder).

Rendering is a small z-buffer rasteriser: skin-coloured capsules along the bones and
spheres at the joints (per-finger tint, shaded by the capsule's bulge and by depth), the
object ray-cast and shaded, an optional flat occluder (rectangle or disc) in front, on a
per camera-and-sequence background (colour, gradient, low-frequency noise); only the
hand and object's bounding box is rasterised. Measured: 2400 frames of the default spec
in 25 s on one core (10.4 ms per frame including the JPEG and npz writes; 70 MB).

Deterministic: every random stream is `np.random.default_rng([seed, kind, indices...])`,
and the npz members carry a fixed timestamp, so one spec writes byte-identical files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import math
import zipfile
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from genalign.config.base import check_range
from genalign.data.dexycb import IMAGE_HEIGHT, IMAGE_WIDTH, SEQUENCES_PER_SUBJECT, SERIALS, SUBJECTS
from genalign.data.hand_skeleton import BONES, FINGER_NAMES, FINGERS, NUM_JOINTS, ROOT

JPEG_QUALITY = 90
HAND_SEG, BACKGROUND_SEG = 255, 0  # DexYCB's seg values; an object pixel holds its ycb id


@dataclasses.dataclass(frozen=True)
class SyntheticHandsSpec:
    """What to generate (genalign.config.hand_pose.SyntheticHandsConfig documents each field)."""

    subjects: int = 10  # the first n of the toolkit's subjects
    sequences_per_subject: int = 5
    serials: int = 8  # the first n of the toolkit's serials
    frames_per_sequence: int = 6
    left_share: float = 0.2  # sequences whose mano_sides is ["left"]
    empty_share: float = 0.02  # frames without a hand (joint_3d all -1), in every camera
    object_share: float = 0.8  # sequences with a grasped object
    occluder_share: float = 0.3  # images with an occluder in front of the hand
    seed: int = 0

    def __post_init__(self) -> None:
        check_range("subjects", self.subjects, ge=1, le=len(SUBJECTS))
        check_range("serials", self.serials, ge=1, le=len(SERIALS))
        # The toolkit's split rules index sequences 0-99.
        check_range(
            "sequences_per_subject", self.sequences_per_subject, ge=1, le=SEQUENCES_PER_SUBJECT
        )
        check_range("frames_per_sequence", self.frames_per_sequence, ge=1)
        for name in ("left_share", "empty_share", "object_share", "occluder_share"):
            check_range(name, getattr(self, name), ge=0.0, le=1.0)


# ---------------------------------------------------------------- objects


@dataclasses.dataclass(frozen=True)
class SyntheticObject:
    """A grasped object: a box (half-extents x, y, z) or a cylinder (radius, radius, half
    height; its axis is its z) centred on its frame's origin."""

    ycb_id: int
    shape: str  # "box" | "cylinder"
    half_extents: tuple[float, float, float]  # metres


def _object_table() -> dict[int, SyntheticObject]:
    # A fixed table (its own seed, not the spec's): every synthetic dataset shares it, so
    # OBJECT_EXTENTS holds for all of them. Small hand-held objects: boxes 4-7 x 5-9 x
    # 3-6 cm, cans 4-6.4 cm across and 7-12 cm long.
    rng = np.random.default_rng(20210601)
    table = {}
    for block in range(SEQUENCES_PER_SUBJECT // 5):
        for variant in range(2):
            ycb_id = 1 + 2 * block + variant
            if (block + variant) % 2 == 0:
                half = (
                    rng.uniform(0.02, 0.035),
                    rng.uniform(0.025, 0.045),
                    rng.uniform(0.015, 0.03),
                )
                table[ycb_id] = SyntheticObject(
                    ycb_id, "box", tuple(round(float(h), 4) for h in half)
                )
            else:
                r = round(float(rng.uniform(0.02, 0.032)), 4)
                table[ycb_id] = SyntheticObject(
                    ycb_id, "cylinder", (r, r, round(float(rng.uniform(0.035, 0.06)), 4))
                )
    return table


OBJECTS: dict[int, SyntheticObject] = _object_table()
# ycb id -> half-extents (m) of the object's box in its own frame, for build_crops.
OBJECT_EXTENTS: dict[int, np.ndarray] = {k: np.array(o.half_extents) for k, o in OBJECTS.items()}


def object_for(subject_index: int, sequence_index: int) -> SyntheticObject:
    """The object of a sequence: its block i // 5 (as DexYCB's 20 objects x 5 trials), the
    subject's parity choosing one of the block's two objects."""
    return OBJECTS[1 + 2 * (sequence_index // 5) + subject_index % 2]


# ---------------------------------------------------------------- the hand

# The hand's frame: wrist at the origin, fingers toward -y, the palm's normal toward -z
# (the palm faces a camera looking along +z), the thumb toward +x: a right hand.
_PALM_NORMAL = np.array([0.0, 0.0, -1.0])
# MCP positions from the wrist, metres: 0.077-0.084 m to the finger MCPs (adult
# metacarpal plus carpal lengths), the thumb's MANO "MCP" (its CMC) 0.035 m.
_MCP = {
    "thumb": (0.022, -0.025, -0.012),
    "index": (0.024, -0.080, 0.0),
    "middle": (0.002, -0.082, 0.0),
    "ring": (-0.018, -0.077, 0.002),
    "little": (-0.035, -0.068, 0.006),
}
# Bone lengths after the MCP, metres (proximal, middle, distal to the tip; the thumb's
# metacarpal, proximal, distal), adult averages.
_PHALANGES = {
    "thumb": (0.045, 0.032, 0.028),
    "index": (0.040, 0.023, 0.020),
    "middle": (0.044, 0.027, 0.021),
    "ring": (0.041, 0.026, 0.021),
    "little": (0.032, 0.019, 0.019),
}
SUBJECT_SCALE = (0.85, 1.15)
BONE_JITTER = (0.97, 1.03)
# The thumb's first bone, before it swings in front of the palm.
_THUMB_DIRECTION = np.array([0.75, -0.6, -0.25]) / np.linalg.norm([0.75, -0.6, -0.25])
# Joint limits, degrees: (abduction or the thumb's opposition, then the three flexions).
_LIMITS = {
    "thumb": ((0.0, 50.0), (0.0, 40.0), (0.0, 60.0), (0.0, 80.0)),
    "finger": ((-15.0, 15.0), (0.0, 90.0), (0.0, 110.0), (0.0, 80.0)),
}
_CAPSULE_RADIUS = {
    "thumb": 0.0095,
    "index": 0.0085,
    "middle": 0.0088,
    "ring": 0.0082,
    "little": 0.0074,
}
_PALM_RADIUS = 0.012


def nominal_bone_lengths() -> dict[tuple[int, int], float]:
    """(parent, child) -> the bone's length (m) before the subject's and sequence's scales."""
    lengths = {}
    for finger in FINGER_NAMES:
        joints = FINGERS[finger]
        lengths[(ROOT, joints[0])] = float(np.linalg.norm(_MCP[finger]))
        for k in range(3):
            lengths[(joints[k], joints[k + 1])] = _PHALANGES[finger][k]
    return lengths


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues: the rotation by `angle` (rad) about the unit `axis`."""
    x, y, z = axis
    c, s = math.cos(angle), math.sin(angle)
    k = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + s * k + (1 - c) * (k @ k)


def _euler(rx: float, ry: float, rz: float) -> np.ndarray:
    return (
        _rotation(np.array([0.0, 0.0, 1.0]), rz)
        @ _rotation(np.array([0.0, 1.0, 0.0]), ry)
        @ _rotation(np.array([1.0, 0.0, 0.0]), rx)
    )


def hand_joints(angles: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Joints [21, 3] (m) of a right hand in the hand's frame.

    angles [5, 4] radians per finger (thumb..little): abduction (the thumb: opposition),
    then the flexion at the MCP, PIP and DIP. scale [21]: the length factor of the bone
    ending at each joint (entry 0 unused). Each finger flexes in the plane of its
    direction and the palm's normal, so flexion never bends it sideways.
    """
    joints = np.zeros((NUM_JOINTS, 3))
    for f, finger in enumerate(FINGER_NAMES):
        ids = FINGERS[finger]
        joints[ids[0]] = np.asarray(_MCP[finger]) * scale[ids[0]]
        if finger == "thumb":
            # Opposition swings the thumb about the hand's long axis, in front of the palm.
            d = _rotation(np.array([0.0, 1.0, 0.0]), angles[f, 0]) @ _THUMB_DIRECTION
            toward = np.array([-0.6, 0.0, -0.8])  # across the palm and toward its side
        else:
            base = np.asarray(_MCP[finger][:2] + (0.0,))
            d = _rotation(_PALM_NORMAL, angles[f, 0]) @ (base / np.linalg.norm(base))
            toward = _PALM_NORMAL
        n = toward - (toward @ d) * d
        n /= np.linalg.norm(n)
        theta = 0.0
        for k in range(3):
            theta += angles[f, 1 + k]
            joints[ids[k + 1]] = joints[ids[k]] + _PHALANGES[finger][k] * scale[ids[k + 1]] * (
                math.cos(theta) * d + math.sin(theta) * n
            )
    return joints


def _limits(finger: str) -> np.ndarray:
    return np.radians(np.array(_LIMITS["thumb" if finger == "thumb" else "finger"]))  # [4, 2]


def _grasp_angles(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An open hand and a closing grasp, [5, 4] radians each, within the joint limits."""
    open_, closed = np.zeros((5, 4)), np.zeros((5, 4))
    for f, finger in enumerate(FINGER_NAMES):
        lim = _limits(finger)
        lo, hi = lim[:, 0], lim[:, 1]
        span = hi - lo
        if finger == "thumb":
            open_[f] = lo + span * rng.uniform(0.0, 0.3, 4)
            closed[f] = lo + span * rng.uniform(0.45, 1.0, 4)
        else:
            open_[f, 0] = rng.uniform(lo[0], hi[0])
            open_[f, 1:] = lo[1:] + span[1:] * rng.uniform(0.0, 0.25, 3)
            closed[f, 0] = 0.3 * open_[f, 0]
            closed[f, 1:] = lo[1:] + span[1:] * rng.uniform(0.35, 1.0, 3)
    return open_, closed


# ---------------------------------------------------------------- cameras

# (yaw, pitch, roll in degrees; distance to the scene's centre in m): the frontal view
# and seven views within 40 degrees of it, as DexYCB's eight cameras surround its table.
_VIEWS = (
    (0.0, 0.0, 0.0, 0.60),
    (-30.0, 8.0, 2.0, 0.62),
    (30.0, 8.0, -2.0, 0.58),
    (-20.0, -25.0, 3.0, 0.65),
    (22.0, -22.0, -3.0, 0.63),
    (0.0, 30.0, 1.0, 0.57),
    (-38.0, -8.0, -1.0, 0.60),
    (36.0, -12.0, 2.0, 0.61),
)
# DexYCB-like colour intrinsics of the eight serials (RealSense D415 at 640 x 480).
_FX = (613.9, 616.2, 614.5, 617.8, 612.6, 615.9, 614.1, 616.7)
_FY = (614.1, 615.9, 614.8, 617.5, 612.9, 616.1, 613.8, 616.9)
_PPX = (321.3, 318.6, 322.0, 319.4, 320.8, 317.9, 323.1, 320.2)
_PPY = (238.2, 241.5, 239.7, 242.3, 237.6, 240.9, 238.8, 241.1)


def camera_intrinsics(c: int) -> np.ndarray:
    return np.array([[_FX[c], 0.0, _PPX[c]], [0.0, _FY[c], _PPY[c]], [0.0, 0.0, 1.0]])


def camera_extrinsics(c: int) -> tuple[np.ndarray, np.ndarray]:
    """(R, t) of camera c: x_camera = R @ x_world + t. The world is the frontal camera's
    axes (x right, y down, z forward) centred on the scene."""
    yaw, pitch, roll, distance = _VIEWS[c]
    yaw, pitch, roll = math.radians(yaw), math.radians(pitch), math.radians(roll)
    z = np.array(
        [math.sin(yaw) * math.cos(pitch), math.sin(pitch), math.cos(yaw) * math.cos(pitch)]
    )
    x = np.cross([0.0, 1.0, 0.0], z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = _rotation(np.array([0.0, 0.0, 1.0]), roll) @ np.stack([x, y, z])
    position = -distance * z
    return R, -R @ position


# ---------------------------------------------------------------- the scene of one sequence


@dataclasses.dataclass(frozen=True)
class _Sequence:
    side: str
    obj: SyntheticObject | None  # None: no object in this sequence
    object_ycb_id: int  # meta.yml's ycb_ids[0], also without an object
    bone_scale: np.ndarray  # [21]
    subject_scale: float
    open_angles: np.ndarray
    closed_angles: np.ndarray
    t_range: tuple[float, float]
    wrist_start: np.ndarray  # [6] rx, ry, rz (rad), offset (m)
    wrist_end: np.ndarray
    object_in_hand: tuple[np.ndarray, np.ndarray]  # (R, t) in the right hand's frame
    skin: np.ndarray  # [3] RGB
    object_color: np.ndarray
    empty: np.ndarray  # [F] bool


_SKIN_TONES = (
    (224, 172, 140),
    (198, 134, 106),
    (241, 194, 167),
    (141, 85, 60),
    (255, 205, 178),
    (170, 110, 80),
)
# Per-finger tint (thumb..little), then the palm: neighbouring fingers stay apart.
_TINTS = np.array(
    [
        [1.04, 0.98, 0.96],
        [0.97, 1.0, 1.03],
        [1.02, 1.02, 0.98],
        [0.96, 0.97, 1.0],
        [1.03, 0.96, 1.01],
        [1.0, 1.0, 1.0],
    ]
)


def _subject_scale(seed: int, s: int) -> float:
    return float(np.random.default_rng([seed, 0, s]).uniform(*SUBJECT_SCALE))


def _sequence(spec: SyntheticHandsSpec, s: int, q: int) -> _Sequence:
    rng = np.random.default_rng([spec.seed, 1, s, q])
    side = "left" if rng.random() < spec.left_share else "right"
    obj_entry = object_for(s, q)
    has_object = rng.random() < spec.object_share
    subject_scale = _subject_scale(spec.seed, s)
    bone_scale = subject_scale * rng.uniform(*BONE_JITTER, NUM_JOINTS)
    open_angles, closed_angles = _grasp_angles(rng)
    t0, t1 = rng.uniform(0.0, 0.3), rng.uniform(0.7, 1.0)
    limits = np.radians([45.0, 60.0, 60.0])
    start = np.concatenate(
        [rng.uniform(-limits, limits), rng.uniform([-0.06, -0.05, -0.06], [0.06, 0.05, 0.06])]
    )
    end = start + np.concatenate([rng.uniform(-0.25, 0.25, 3), rng.uniform(-0.03, 0.03, 3)])
    end[:3] = np.clip(end[:3], -limits, limits)
    # The object in front of the palm's centre, a little toward the fingers; a cylinder
    # lies across the palm (its axis along the hand's x) as a can is held.
    palm = np.mean([np.asarray(_MCP[f]) for f in ("index", "middle", "ring", "little")], axis=0) / 2
    if obj_entry.shape == "box":
        base, depth = np.eye(3), obj_entry.half_extents[2]
    else:
        base, depth = (
            np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
            obj_entry.half_extents[0],
        )
    jitter = _euler(*rng.uniform(-0.3, 0.3, 3))
    R_obj = jitter @ base
    t_obj = palm * subject_scale + np.array([0.0, -0.03, -(depth + 0.02)])
    skin = np.array(
        _SKIN_TONES[int(np.random.default_rng([spec.seed, 4, s]).integers(len(_SKIN_TONES)))], float
    )
    skin = np.clip(skin * rng.uniform(0.92, 1.08, 3), 0, 255)
    object_color = rng.uniform(40, 230, 3)
    empty = rng.random(spec.frames_per_sequence) < spec.empty_share
    return _Sequence(
        side=side,
        obj=obj_entry if has_object else None,
        object_ycb_id=obj_entry.ycb_id,
        bone_scale=bone_scale,
        subject_scale=subject_scale,
        open_angles=open_angles,
        closed_angles=closed_angles,
        t_range=(t0, t1),
        wrist_start=start,
        wrist_end=end,
        object_in_hand=(R_obj, t_obj),
        skin=skin,
        object_color=object_color,
        empty=empty,
    )


_MIRROR = np.diag([-1.0, 1.0, 1.0])


def _world_pose(seq: _Sequence, f: int, frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Joints [21, 3] and the object's (R, t), world frame, of frame f."""
    t = seq.t_range[0] + (seq.t_range[1] - seq.t_range[0]) * (
        f / (frames - 1) if frames > 1 else 0.5
    )
    t = t * t * (3 - 2 * t)  # smoothstep: the grasp starts and ends slowly
    angles = (1 - t) * seq.open_angles + t * seq.closed_angles
    local = hand_joints(angles, seq.bone_scale)
    R_obj, t_obj = seq.object_in_hand
    if seq.side == "left":
        local = local @ _MIRROR
        R_obj, t_obj = _MIRROR @ R_obj @ _MIRROR, _MIRROR @ t_obj
    wrist = (1 - t) * seq.wrist_start + t * seq.wrist_end
    R = _euler(*wrist[:3])
    # Place the palm's centre (half-way from the wrist to the MCPs) at the offset.
    palm = local[[5, 9, 13, 17]].mean(axis=0) / 2
    translation = wrist[3:] - R @ palm
    return local @ R.T + translation, R @ R_obj, R @ t_obj + translation


# ---------------------------------------------------------------- rendering


def _background(rng: np.random.Generator) -> np.ndarray:
    """[480, 640, 3] uint8: a muted colour, a linear gradient, blotches and fine grain."""
    colour = rng.uniform(50, 190) + rng.uniform(-35, 35, 3)
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:IMAGE_HEIGHT:4, 0:IMAGE_WIDTH:4] / IMAGE_WIDTH
    ramp = (math.cos(angle) * xs + math.sin(angle) * ys)[..., None] * rng.uniform(-50, 50, 3)
    small = colour + ramp
    for cells, amplitude in ((8, rng.uniform(5, 25)), (40, rng.uniform(2, 8))):
        noise = rng.normal(0, 1, (cells * 3 // 4, cells, 3))
        noise = (
            np.asarray(
                Image.fromarray(np.uint8(np.clip(128 + 40 * noise, 0, 255))).resize(
                    (IMAGE_WIDTH // 4, IMAGE_HEIGHT // 4), Image.BICUBIC
                ),
                float,
            )
            - 128
        )
        small = small + noise * amplitude / 40
    small = np.clip(small, 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((IMAGE_WIDTH, IMAGE_HEIGHT), Image.BILINEAR))


class _Raster:
    """A z-buffer over one region of the image: depth (m), shade and part id per pixel."""

    def __init__(self, x0: int, y0: int, x1: int, y1: int):
        self.x0, self.y0 = x0, y0
        self.depth = np.full((y1 - y0, x1 - x0), np.inf, np.float32)
        self.shade = np.zeros((y1 - y0, x1 - x0), np.float32)
        self.part = np.full((y1 - y0, x1 - x0), -1, np.int16)

    def window(self, lo: np.ndarray, hi: np.ndarray):
        """The slices of the region covering image pixels lo..hi (inclusive), or None."""
        h, w = self.depth.shape
        a = max(math.floor(lo[0]) - self.x0, 0), max(math.floor(lo[1]) - self.y0, 0)
        b = min(math.ceil(hi[0]) + 1 - self.x0, w), min(math.ceil(hi[1]) + 1 - self.y0, h)
        if a[0] >= b[0] or a[1] >= b[1]:
            return None
        return slice(a[1], b[1]), slice(a[0], b[0])

    def grid(self, win):
        ys = np.arange(win[0].start, win[0].stop, dtype=np.float32)[:, None] + self.y0
        xs = np.arange(win[1].start, win[1].stop, dtype=np.float32)[None, :] + self.x0
        return xs, ys

    def put(self, win, depth: np.ndarray, shade: np.ndarray, part: int) -> None:
        closer = depth < self.depth[win]
        self.depth[win] = np.where(closer, depth, self.depth[win])
        self.shade[win] = np.where(closer, shade, self.shade[win])
        self.part[win] = np.where(closer, part, self.part[win])

    def capsule(self, pa, pb, za, zb, fx, radius, part, near):
        """A capsule of `radius` (m) from a to b, drawn in screen space: its outline from
        the projected radii, its depth the axis's minus the bulge, shaded by the bulge
        (toward the camera is bright) and by depth (a farther part is darker)."""
        ra, rb = fx * radius / za, fx * radius / zb
        lo = np.minimum(pa - ra, pb - rb)
        hi = np.maximum(pa + ra, pb + rb)
        win = self.window(lo, hi)
        if win is None:
            return
        xs, ys = self.grid(win)
        d = pb - pa
        length2 = float(d @ d)
        if length2 > 1e-6:
            t = np.clip(((xs - pa[0]) * d[0] + (ys - pa[1]) * d[1]) / length2, 0.0, 1.0)
        else:
            t = np.zeros((1, 1), np.float32)
        dx, dy = xs - (pa[0] + t * d[0]), ys - (pa[1] + t * d[1])
        r = ra + t * (rb - ra)
        q = 1.0 - (dx * dx + dy * dy) / (r * r)
        inside = q > 0
        bulge = np.sqrt(np.maximum(q, 0.0))
        depth = np.where(inside, za + t * (zb - za) - radius * bulge, np.inf).astype(np.float32)
        shade = (0.45 + 0.55 * bulge) * np.clip(1.12 - 3.0 * (depth - near), 0.55, 1.12)
        self.put(win, depth, shade.astype(np.float32), part)

    def solid(
        self, obj: SyntheticObject, R: np.ndarray, t: np.ndarray, K: np.ndarray, part: int
    ) -> None:
        """The box or cylinder (pose R, t in the camera frame) ray-cast, shaded by the angle
        between its surface and the viewing ray."""
        hx, hy, hz = obj.half_extents
        corners = np.array(
            [[sx * hx, sy * hy, sz * hz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]
        )
        cam = corners @ R.T + t
        if (cam[:, 2] <= 0.05).any():
            return
        uv = cam[:, :2] / cam[:, 2:] * [K[0, 0], K[1, 1]] + K[:2, 2]
        win = self.window(uv.min(axis=0), uv.max(axis=0))
        if win is None:
            return
        xs, ys = self.grid(win)
        # Rays through the pixels, z = 1, in the object's frame: o + s * d hits at depth s.
        rx = np.broadcast_to((xs - K[0, 2]) / K[0, 0], (ys.shape[0], xs.shape[1]))
        ry = np.broadcast_to((ys - K[1, 2]) / K[1, 1], rx.shape)
        rays = np.stack([rx, ry, np.ones_like(rx)], axis=-1) @ R  # R^T d per pixel  [h, w, 3]
        o = -R.T @ t
        if obj.shape == "box":
            half = np.array(obj.half_extents)
            with np.errstate(divide="ignore", invalid="ignore"):
                inv = 1.0 / np.where(np.abs(rays) < 1e-12, 1e-12, rays)
                t1, t2 = (-half - o) * inv, (half - o) * inv
            near, far = np.minimum(t1, t2), np.maximum(t1, t2)
            s_hit = near.max(axis=-1)
            hit = (s_hit <= far.min(axis=-1)) & (s_hit > 0)
            axis = near.argmax(axis=-1)
            cos = np.abs(np.take_along_axis(rays, axis[..., None], -1)[..., 0]) / np.linalg.norm(
                rays, axis=-1
            )
        else:
            r, h = obj.half_extents[0], obj.half_extents[2]
            dx, dy, dz = rays[..., 0], rays[..., 1], rays[..., 2]
            a = dx * dx + dy * dy
            b = 2 * (o[0] * dx + o[1] * dy)
            c = o[0] ** 2 + o[1] ** 2 - r * r
            disc = b * b - 4 * a * c
            with np.errstate(divide="ignore", invalid="ignore"):
                s_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / (2 * a)
                s_cap = (-np.sign(dz) * h - o[2]) / dz
            side_ok = (disc >= 0) & (np.abs(o[2] + s_side * dz) <= h) & (s_side > 0)
            cx, cy = o[0] + s_cap * dx, o[1] + s_cap * dy
            cap_ok = (cx * cx + cy * cy <= r * r) & (s_cap > 0)
            s_side = np.where(side_ok, s_side, np.inf)
            s_cap = np.where(cap_ok, s_cap, np.inf)
            s_hit = np.minimum(s_side, s_cap)
            hit = np.isfinite(s_hit)
            norm = np.linalg.norm(rays, axis=-1)
            px, py = o[0] + s_hit * dx, o[1] + s_hit * dy
            with np.errstate(invalid="ignore"):
                cos_side = np.abs(px * dx + py * dy) / (r * norm)
            cos = np.where(s_side <= s_cap, cos_side, np.abs(dz) / norm)
        depth = np.where(hit, s_hit, np.inf).astype(np.float32)
        shade = np.where(hit, 0.35 + 0.65 * np.nan_to_num(cos), 0.0).astype(np.float32)
        self.put(win, depth, shade, part)


def _render(
    joints: np.ndarray | None,
    side_scale: float,
    obj: tuple[SyntheticObject, np.ndarray, np.ndarray] | None,
    K: np.ndarray,
    background: np.ndarray,
    palette: np.ndarray,  # [7, 3]: 5 fingers, the palm, the object
    seg_values: np.ndarray,  # [7]
    rng: np.random.Generator,
    occluder: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """The colour image [480, 640, 3] uint8 and seg [480, 640] uint8 of one camera."""
    image = background.copy()
    seg = np.zeros((IMAGE_HEIGHT, IMAGE_WIDTH), np.uint8)
    fx = K[0, 0]
    boxes = []
    if joints is not None:
        uv = joints[:, :2] / joints[:, 2:] * [K[0, 0], K[1, 1]] + K[:2, 2]
        pad = fx * 0.02 / joints[:, 2].min()
        boxes.append((uv.min(axis=0) - pad, uv.max(axis=0) + pad))
    if obj is not None:
        o, R, t = obj
        corners = (
            np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
            * o.half_extents
        )
        cam = corners @ R.T + t
        if (cam[:, 2] > 0.05).all():
            p = cam[:, :2] / cam[:, 2:] * [K[0, 0], K[1, 1]] + K[:2, 2]
            boxes.append((p.min(axis=0), p.max(axis=0)))
    if boxes:
        lo = np.floor(np.min([b[0] for b in boxes], axis=0)).astype(int)
        hi = np.ceil(np.max([b[1] for b in boxes], axis=0)).astype(int) + 1
        x0, y0 = max(lo[0], 0), max(lo[1], 0)
        x1, y1 = min(hi[0], IMAGE_WIDTH), min(hi[1], IMAGE_HEIGHT)
    if boxes and x0 < x1 and y0 < y1:
        raster = _Raster(x0, y0, x1, y1)
        if joints is not None:
            uv = joints[:, :2] / joints[:, 2:] * [K[0, 0], K[1, 1]] + K[:2, 2]
            z = joints[:, 2]
            near = float(z.min())
            for f, finger in enumerate(FINGER_NAMES):
                radius = _CAPSULE_RADIUS[finger] * side_scale
                ids = FINGERS[finger]
                mcp = ids[0]
                raster.capsule(
                    uv[ROOT], uv[mcp], z[ROOT], z[mcp], fx, _PALM_RADIUS * side_scale, 5, near
                )
                for a, b in itertools.pairwise(ids):
                    raster.capsule(uv[a], uv[b], z[a], z[b], fx, radius, f, near)
                for k, j in enumerate(ids):
                    # Knuckles a little wider than the bones, the tip a little narrower.
                    r = radius * (0.95 if k == 3 else 1.05)
                    raster.capsule(uv[j], uv[j], z[j], z[j], fx, r, f, near)
            # The palm's edge across the MCPs and the web between thumb and index.
            for a, b, r in ((5, 17, 0.010), (1, 5, 0.008), (2, 5, 0.007)):
                raster.capsule(uv[a], uv[b], z[a], z[b], fx, r * side_scale, 5, near)
            raster.capsule(uv[ROOT], uv[ROOT], z[ROOT], z[ROOT], fx, 0.016 * side_scale, 5, near)
        if obj is not None:
            raster.solid(obj[0], obj[1], obj[2], K, 6)
        drawn = raster.part >= 0
        part = np.maximum(raster.part, 0)
        colour = palette[part] * raster.shade[..., None]
        region = image[y0:y1, x0:x1]
        region[drawn] = np.clip(colour[drawn], 0, 255).astype(np.uint8)
        seg[y0:y1, x0:x1][drawn] = seg_values[part[drawn]]
    if occluder and boxes:
        lo, hi = boxes[0]
        centre = rng.uniform(lo, hi)
        half = rng.uniform(0.12, 0.3, 2) * (hi - lo).max()
        a = np.floor(np.clip(centre - half, 0, [IMAGE_WIDTH, IMAGE_HEIGHT])).astype(int)
        b = np.ceil(np.clip(centre + half, 0, [IMAGE_WIDTH, IMAGE_HEIGHT])).astype(int)
        if a[0] < b[0] and a[1] < b[1]:
            ys, xs = np.mgrid[a[1] : b[1], a[0] : b[0]]
            if rng.random() < 0.5:
                mask = np.ones(xs.shape, bool)
            else:
                mask = ((xs - centre[0]) / half[0]) ** 2 + ((ys - centre[1]) / half[1]) ** 2 <= 1.0
            colour = rng.uniform(20, 235, 3)
            shade = 0.8 + 0.2 * (ys - a[1]) / max(b[1] - a[1], 1)
            image[a[1] : b[1], a[0] : b[0]][mask] = np.clip(
                colour * shade[mask][:, None], 0, 255
            ).astype(np.uint8)
            seg[a[1] : b[1], a[0] : b[0]][mask] = BACKGROUND_SEG
    return image, seg


# ---------------------------------------------------------------- files


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed's format with a fixed member timestamp (numpy stamps the write
    time, so its files differ from run to run)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buffer.getvalue())


def _project(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    return points[:, :2] / points[:, 2:] * [K[0, 0], K[1, 1]] + K[:2, 2]


def _sequence_name(s: int, q: int) -> str:
    # DexYCB names a sequence <date>_<time>; sorted names keep the index order.
    return f"{SUBJECTS[s].split('-')[0]}_{140000 + 100 * q:06d}"


def write_synthetic_dexycb(
    root: Path, spec: SyntheticHandsSpec, *, progress: bool = False, workers: int = 1
) -> dict[str, int]:
    """Write the synthetic dataset of `spec` into `root` (a fresh directory) in DexYCB's
    layout. Returns {"frames", "sequences", "empty", "left_sequences"}: frames and empty
    count images (one per camera and frame).

    Every sequence draws from random streams of its own (seeded by the spec's seed and
    its subject and sequence index), so `workers` processes writing sequences side by
    side give the same bytes as one."""
    from concurrent.futures import ProcessPoolExecutor

    from tqdm.auto import tqdm

    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"{root}: not empty; write_synthetic_dexycb writes into a fresh directory")
    if workers < 1:
        raise ValueError(f"workers: expected >= 1, got {workers}")
    serials = SERIALS[: spec.serials]
    intrinsics_dir = root / "calibration" / "intrinsics"
    intrinsics_dir.mkdir(parents=True, exist_ok=True)
    for c, serial in enumerate(serials):
        K = camera_intrinsics(c)
        color = {
            "fx": float(K[0, 0]),
            "fy": float(K[1, 1]),
            "ppx": float(K[0, 2]),
            "ppy": float(K[1, 2]),
        }
        (intrinsics_dir / f"{serial}_{IMAGE_WIDTH}x{IMAGE_HEIGHT}.yml").write_text(
            yaml.safe_dump({"color": color}, sort_keys=False)
        )
    jobs = [(root, spec, s, q) for s in range(spec.subjects) for q in range(spec.sequences_per_subject)]
    counts = {"frames": 0, "sequences": 0, "empty": 0, "left_sequences": 0}
    bar = tqdm(total=len(jobs), desc="synthetic hands", unit="sequence", disable=not progress)
    with ProcessPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool:
        done = pool.map(_write_sequence, *zip(*jobs), chunksize=4) if pool else map(_write_sequence, *zip(*jobs))
        for one in done:
            for key, value in one.items():
                counts[key] += value
            bar.update()
    bar.close()
    (root / "synthetic_spec.yml").write_text(
        yaml.safe_dump({"spec": dataclasses.asdict(spec), "counts": counts}, sort_keys=True)
    )
    return counts


def _write_sequence(root: Path, spec: SyntheticHandsSpec, s: int, q: int) -> dict[str, int]:
    """Sequence q of subject s: its meta.yml and every camera's frames; the counts."""
    serials = SERIALS[: spec.serials]
    extrinsics = [camera_extrinsics(c) for c in range(spec.serials)]
    counts = {"frames": 0, "sequences": 1, "empty": 0, "left_sequences": 0}
    seq = _sequence(spec, s, q)
    sequence_dir = root / SUBJECTS[s] / _sequence_name(s, q)
    sequence_dir.mkdir(parents=True)
    meta = {
        "serials": list(serials),
        "num_frames": spec.frames_per_sequence,
        "ycb_ids": [seq.object_ycb_id],
        "ycb_grasp_ind": 0,
        "mano_sides": [seq.side],
        "mano_calib": [f"{SUBJECTS[s]}_{seq.side}"],
        "synthetic_hand_scale": round(seq.subject_scale, 6),
        "synthetic_object": seq.obj.shape if seq.obj is not None else "none",
    }
    (sequence_dir / "meta.yml").write_text(yaml.safe_dump(meta, sort_keys=False))
    palette = np.vstack([seq.skin * _TINTS, seq.object_color[None]])
    seg_values = np.array([HAND_SEG] * 6 + [seq.object_ycb_id], np.uint8)
    poses = [
        _world_pose(seq, f, spec.frames_per_sequence)
        for f in range(spec.frames_per_sequence)
    ]
    for c, serial in enumerate(serials):
        camera_dir = sequence_dir / serial
        camera_dir.mkdir()
        K = camera_intrinsics(c)
        R_c, t_c = extrinsics[c]
        background = _background(np.random.default_rng([spec.seed, 2, s, q, c]))
        for f, (joints_w, R_w, t_w) in enumerate(poses):
            rng = np.random.default_rng([spec.seed, 3, s, q, c, f])
            joints = (joints_w @ R_c.T + t_c).astype(np.float32)
            R_o, t_o = R_c @ R_w, R_c @ t_w + t_c
            pose_y = np.zeros((1, 3, 4), np.float32)
            if seq.obj is not None:
                pose_y[0] = np.concatenate([R_o, t_o[:, None]], axis=1)
            empty = bool(seq.empty[f])
            image, seg = _render(
                None if empty else joints.astype(np.float64),
                seq.subject_scale,
                (seq.obj, R_o, t_o) if seq.obj is not None else None,
                K,
                background,
                palette,
                seg_values,
                rng,
                occluder=rng.random() < spec.occluder_share,
            )
            if empty:
                joint_3d = np.full((1, NUM_JOINTS, 3), -1.0, np.float32)
                joint_2d = np.full((1, NUM_JOINTS, 2), -1.0, np.float32)
                counts["empty"] += 1
            else:
                joint_3d = joints[None]
                joint_2d = _project(joints.astype(np.float64), K).astype(np.float32)[None]
            Image.fromarray(image).save(
                camera_dir / f"color_{f:06d}.jpg", quality=JPEG_QUALITY
            )
            _write_npz(
                camera_dir / f"labels_{f:06d}.npz",
                {"seg": seg, "pose_y": pose_y, "joint_3d": joint_3d, "joint_2d": joint_2d},
            )
            counts["frames"] += 1
    counts["left_sequences"] += seq.side == "left"
    return counts


def bone_lengths(joints: np.ndarray) -> dict[tuple[int, int], float]:
    """(parent, child) -> length of each bone of joints [21, 3]."""
    return {(a, b): float(np.linalg.norm(joints[b] - joints[a])) for a, b in BONES}

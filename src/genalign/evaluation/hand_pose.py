"""Hand-pose metrics of the hand-pose pipeline, following the DexYCB benchmark.

Inputs are numpy arrays of 21 joints in the DexYCB/MANO order (0 wrist; 1-4 thumb,
5-8 index, 9-12 middle, 13-16 ring, 17-20 little, each MCP, PIP, DIP, TIP): 3D joints
`[N, 21, 3]` in MILLIMETRES (camera frame unless named root-relative), 2D joints
`[N, 21, 2]` in pixels. DexYCB's label files store `joint_3d` in metres; multiply by
1000 first. `check_millimetres` refuses metres (an MPJPE in metres printed as mm is
the bug this module guards against: "0.21 mm" where 207.52 mm was meant).

The DexYCB evaluator, NVlabs/dex-ycb-toolkit@80713b984b186daeb4fd776de6536f201f451e83
`dex_ycb_toolkit/hpe_eval.py` (`HPEEvaluator.evaluate`), reports three alignments of
each prediction, with FreiHAND's `EvalUtil.get_measures(0.0, 50.0, 100)` (the
`freihand/utils/eval_util.py` it puts on sys.path) on the per-joint Euclidean errors
in mm, every joint visible:

    absolute        pred vs gt as given (camera frame)
    root-relative   pred - pred[0] vs gt - gt[0]
    procrustes      `align_w_scale(gt, pred)` vs gt (lmb-freiburg/freihand@0808a4d2
                    `eval.py`: centre, divide by Frobenius norms, scipy's
                    orthogonal_procrustes, scale by the sum of singular values)

    MPJPE  mean over joints of the mean over samples of the error  (all joints, all
           samples count: the mean of all errors)
    AUC    thresholds = np.linspace(0, 50, 100) mm (step 50/99, both ends included);
           PCK(t) = share of errors <= t per joint; AUC = trapz(PCK, t) / trapz(1, t)
           = trapz(PCK, t) / 50 per joint, then the mean over joints (equal to the AUC
           of the curve averaged over joints, trapz being linear)

`pck_auc_3d` and `mpjpe` reproduce these exactly on given errors; `dexycb_hpe_results`
returns the evaluator's three rows. One deliberate difference: `procrustes_align` is
Umeyama's similarity fit with the reflection removed (a proper rotation), whereas
`align_w_scale` uses scipy's `orthogonal_procrustes`, which may return a reflection.
The two agree whenever the best orthogonal fit is a rotation (any prediction that
resembles a hand); a mirrored hand is aligned by FreiHAND's and not by this one.

`hand_pose_metrics` gives the pipeline's report keys; its `mpjpe` and `auc_0_50mm`
are the evaluator's root-relative row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from genalign.storage import atomic_write_text

NUM_JOINTS = 21
ROOT = 0  # the wrist

# The DexYCB evaluator's AUC range and number of thresholds (hpe_eval.py, _AUC_VAL_MIN,
# _AUC_VAL_MAX, _AUC_STEPS), in mm.
AUC_LOW_MM = 0.0
AUC_HIGH_MM = 50.0
AUC_STEPS = 100

# hpe_eval.py's results file: per line the sample index and 21 x (x, y, z) in mm.
_FIELDS_PER_LINE = 1 + 3 * NUM_JOINTS


def _joints(x: np.ndarray, arg: str, dim: int = 3) -> np.ndarray:
    """`x` as float64 [N, 21, dim]; ValueError naming `arg` otherwise."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3 or x.shape[1:] != (NUM_JOINTS, dim):
        raise ValueError(f"{arg} must be [N, {NUM_JOINTS}, {dim}], got {list(x.shape)}")
    return x


def _pair(
    pred: np.ndarray, gt: np.ndarray, where: str, dim: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    pred = _joints(pred, f"{where}: pred", dim)
    gt = _joints(gt, f"{where}: gt", dim)
    if pred.shape != gt.shape:
        raise ValueError(
            f"{where}: pred and gt must have one shape, got {list(pred.shape)} and {list(gt.shape)}"
        )
    if len(gt) == 0:
        raise ValueError(f"{where}: no samples (N = 0)")
    return pred, gt


def check_millimetres(x: np.ndarray, where: str) -> None:
    """Refuse 3D joints [N, 21, 3] (or one hand [21, 3]) that look like metres.

    A hand spans about 150-200 mm from wrist to fingertip; in metres the largest
    root-relative coordinate is below 0.2. Anything below 1.0 (a whole hand inside 1 mm
    of its wrist) is taken for metres. An all-zero prediction (e.g. an untrained head
    initialised to zero) or DexYCB's missing-hand filler (all joints -1) is refused too.
    """
    x = np.asarray(x, dtype=np.float64)
    hands = x[None] if x.shape == (NUM_JOINTS, 3) else _joints(x, where)
    extent = float(np.nanmax(np.abs(hands - hands[:, ROOT : ROOT + 1]), initial=0.0))
    if not extent >= 1.0:
        raise ValueError(
            f"{where}: joints look like metres, not millimetres: the largest root-relative "
            f"coordinate is {extent:.4g}, expected >= 1.0 (a hand spans ~150-200 mm); "
            f"multiply metres by 1000 (DexYCB label files store joint_3d in metres)"
        )


def root_relative(j: np.ndarray) -> np.ndarray:
    """Joints minus the wrist (joint 0). [N, 21, D] -> [N, 21, D]"""
    j = np.asarray(j, dtype=np.float64)
    if j.ndim != 3 or j.shape[1] != NUM_JOINTS:
        raise ValueError(f"root_relative: j must be [N, {NUM_JOINTS}, D], got {list(j.shape)}")
    return j - j[:, ROOT : ROOT + 1]


def joint_errors(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Euclidean distance of each 3D joint of each sample (mm), as given. [N, 21]"""
    pred, gt = _pair(pred, gt, "joint_errors")
    return np.linalg.norm(pred - gt, axis=-1)


def mpjpe(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean per-joint position error: per sample the mean joint distance, then the mean
    over samples (mm). As given, no alignment; all samples have all joints, so this is
    the DexYCB evaluator's MPJPE (mean over joints of the mean over samples)."""
    return float(joint_errors(pred, gt).mean(axis=1).mean())


def mpjpe_absolute(pred: np.ndarray, gt: np.ndarray) -> float:
    """MPJPE of camera-frame joints (the evaluator's 'absolute' row), mm."""
    return mpjpe(pred, gt)


def mpjpe_root_relative(pred: np.ndarray, gt: np.ndarray) -> float:
    """MPJPE after subtracting each hand's own wrist (the 'root-relative' row), mm."""
    return mpjpe(root_relative(pred), root_relative(gt))


def similarity_transform(
    pred: np.ndarray, gt: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares similarity transform taking each predicted hand onto its ground truth.

    Umeyama, "Least-squares estimation of transformation parameters between two point
    patterns", IEEE TPAMI 13(4):376-380, 1991, its closed-form solution with x = pred
    (source), y = gt (target), n = 21 points per sample:

        mu_x, mu_y = means;   sigma_x^2 = (1/n) sum ||x_i - mu_x||^2
        Sigma_xy = (1/n) sum (y_i - mu_y)(x_i - mu_x)^T = U D V^T   (SVD)
        S = diag(1, 1, det(U) det(V))           (removes a reflection)
        R = U S V^T,   c = tr(D S) / sigma_x^2,   t = mu_y - c R mu_x

    minimises (1/n) sum ||y_i - (c R x_i + t)||^2 over c >= 0 and proper rotations R. A
    prediction with all joints at one point has sigma_x = 0: then c = 0 (it carries no
    shape to fit) and every joint maps to mu_y.

    Returns scale [N], rotation [N, 3, 3], translation [N, 3].
    """
    pred, gt = _pair(pred, gt, "similarity_transform")
    mu_x, mu_y = pred.mean(axis=1), gt.mean(axis=1)  # [N, 3]
    xc, yc = pred - mu_x[:, None], gt - mu_y[:, None]  # [N, 21, 3]
    n = pred.shape[1]
    sigma_xy = np.einsum("nki,nkj->nij", yc, xc) / n  # [N, 3, 3]
    u, d, vt = np.linalg.svd(sigma_xy)
    sign = np.sign(np.linalg.det(u) * np.linalg.det(vt))
    s = np.ones_like(d)
    s[:, 2] = np.where(sign < 0, -1.0, 1.0)
    rotation = u @ (s[:, :, None] * vt)  # U S V^T
    var_x = np.square(xc).sum(axis=(1, 2)) / n  # [N]
    trace = (d * s).sum(axis=1)
    scale = np.divide(trace, var_x, out=np.zeros_like(trace), where=var_x > 0)
    translation = mu_y - scale[:, None] * np.einsum("nij,nj->ni", rotation, mu_x)
    return scale, rotation, translation


def procrustes_align(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Each predicted hand moved by its `similarity_transform` onto gt. [N, 21, 3]"""
    scale, rotation, translation = similarity_transform(pred, gt)
    pred = _joints(pred, "procrustes_align: pred")
    return scale[:, None, None] * np.einsum("nij,nkj->nki", rotation, pred) + translation[:, None]


def pa_mpjpe(pred: np.ndarray, gt: np.ndarray) -> float:
    """MPJPE after Procrustes (similarity) alignment of each prediction, mm."""
    return mpjpe(procrustes_align(pred, gt), gt)


def pck_2d(pred_px: np.ndarray, gt_px: np.ndarray, threshold_px: float = 5.0) -> float:
    """Share of 2D joints within `threshold_px` pixels of the ground truth (<=, as in
    FreiHAND's EvalUtil), over all samples and joints, in [0, 1]."""
    if not threshold_px >= 0:
        raise ValueError(f"pck_2d: threshold_px must be >= 0, got {threshold_px}")
    pred_px, gt_px = _pair(pred_px, gt_px, "pck_2d", dim=2)
    return float((np.linalg.norm(pred_px - gt_px, axis=-1) <= threshold_px).mean())


def pck_curve(
    errors: np.ndarray, low: float = AUC_LOW_MM, high: float = AUC_HIGH_MM, steps: int = AUC_STEPS
) -> tuple[np.ndarray, np.ndarray]:
    """PCK curve of joint errors [N, 21] on the evaluator's thresholds.

    thresholds = np.linspace(low, high, steps); pck[k] = mean over joints of the share
    of samples with error <= thresholds[k]. Returns (thresholds [steps], pck [steps]).
    """
    errors = np.asarray(errors, dtype=np.float64)
    if errors.ndim != 2 or errors.shape[0] == 0:
        raise ValueError(f"pck_curve: errors must be [N, J] with N >= 1, got {list(errors.shape)}")
    if not (steps >= 2 and high > low):
        raise ValueError(
            f"pck_curve: need steps >= 2 and high > low, got steps={steps}, low={low}, high={high}"
        )
    thresholds = np.linspace(low, high, steps)
    per_joint = (errors[None] <= thresholds[:, None, None]).mean(axis=1)  # [steps, J]
    return thresholds, per_joint.mean(axis=1)


def pck_auc_3d(
    pred: np.ndarray,
    gt: np.ndarray,
    low: float = AUC_LOW_MM,
    high: float = AUC_HIGH_MM,
    steps: int = AUC_STEPS,
) -> float:
    """Normalised area under the 3D PCK curve, DexYCB's convention, in [0, 1].

        t_k  = np.linspace(low, high, steps)               (0, 50 mm, 100 thresholds)
        AUC  = trapz(PCK(t), t) / trapz(1, t) = trapz(PCK(t), t) / (high - low)

    on the errors of `pred` against `gt` as given: align first (`root_relative`,
    `procrustes_align`) for the evaluator's other rows. See the module docstring for the
    source. All errors 0 give 1, all errors above `high` give 0; the thresholds are
    discrete, so errors all equal to 10 mm give 79.5/99 = 0.80303, not 0.8.
    """
    thresholds, pck = pck_curve(joint_errors(*_pair(pred, gt, "pck_auc_3d")), low, high, steps)
    return float(np.trapezoid(pck, thresholds) / (high - low))


def dexycb_hpe_results(
    pred_abs_mm: np.ndarray, gt_abs_mm: np.ndarray
) -> dict[str, dict[str, float]]:
    """The three rows of the DexYCB evaluator (HPEEvaluator.evaluate's return value):
    {"absolute" | "root-relative" | "procrustes": {"mpjpe": mm, "auc": [0, 1]}}, with
    Umeyama's alignment for "procrustes" (see the module docstring)."""
    pred, gt = _pair(pred_abs_mm, gt_abs_mm, "dexycb_hpe_results")
    rows = {
        "absolute": (pred, gt),
        "root-relative": (root_relative(pred), root_relative(gt)),
        "procrustes": (procrustes_align(pred, gt), gt),
    }
    return {name: {"mpjpe": mpjpe(p, g), "auc": pck_auc_3d(p, g)} for name, (p, g) in rows.items()}


def per_joint_errors(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Mean error of each joint over the samples, as given (no alignment), mm. [21]"""
    return joint_errors(*_pair(pred, gt, "per_joint_errors")).mean(axis=0)


def per_finger_errors(
    pred: np.ndarray, gt: np.ndarray, fingers: Mapping[str, Sequence[int]]
) -> dict[str, float]:
    """Mean error over each finger's joints, and of the wrist alone as "wrist", mm.

    fingers: finger name -> joint indices (pass genalign.data.hand_skeleton.FINGERS).
    On root-relative joints the wrist's error is 0 by construction.
    """
    per_joint = per_joint_errors(pred, gt)
    if "wrist" in fingers:
        raise ValueError(
            "per_finger_errors: fingers must not name 'wrist'; it is reported separately"
        )
    out = {"wrist": float(per_joint[ROOT])}
    for finger, joints in fingers.items():
        idx = list(joints)
        if not idx or not all(isinstance(i, (int, np.integer)) and 0 < i < NUM_JOINTS for i in idx):
            raise ValueError(
                f"per_finger_errors: fingers[{finger!r}] must be joint indices in [1, {NUM_JOINTS}), got {idx}"
            )
        out[finger] = float(per_joint[idx].mean())
    return out


def hand_pose_metrics(
    pred_abs_mm: np.ndarray,
    gt_abs_mm: np.ndarray,
    pred_px: np.ndarray,
    gt_px: np.ndarray,
    fingers: Mapping[str, Sequence[int]],
) -> dict[str, float | list[float] | dict[str, float]]:
    """The pipeline's hand-pose report (JSON-ready).

        mpjpe           root-relative MPJPE (mm), the evaluator's root-relative row
        mpjpe_absolute  camera-frame MPJPE (mm)
        pa_mpjpe        MPJPE after `procrustes_align` (mm)
        pck_5px         share of 2D joints within 5 px, [0, 1]
        auc_0_50mm      root-relative 3D PCK AUC over 0-50 mm, [0, 1]
        per_joint       21 root-relative per-joint errors (mm); their mean is mpjpe
        per_finger      root-relative error per finger and "wrist" (0 by construction)

    pred_abs_mm, gt_abs_mm: [N, 21, 3] camera frame, mm (both checked with
    `check_millimetres`); pred_px, gt_px: [N, 21, 2]; fingers as in `per_finger_errors`.
    """
    pred, gt = _pair(pred_abs_mm, gt_abs_mm, "hand_pose_metrics")
    check_millimetres(gt, "hand_pose_metrics: gt_abs_mm")
    check_millimetres(pred, "hand_pose_metrics: pred_abs_mm")
    pred_px, gt_px = _pair(pred_px, gt_px, "hand_pose_metrics (px)", dim=2)
    if len(pred_px) != len(pred):
        raise ValueError(
            f"hand_pose_metrics: pred_px has {len(pred_px)} samples, pred_abs_mm {len(pred)}"
        )
    pred_rr, gt_rr = root_relative(pred), root_relative(gt)
    return {
        "mpjpe": mpjpe(pred_rr, gt_rr),
        "mpjpe_absolute": mpjpe(pred, gt),
        "pa_mpjpe": pa_mpjpe(pred, gt),
        "pck_5px": pck_2d(pred_px, gt_px, 5.0),
        "auc_0_50mm": pck_auc_3d(pred_rr, gt_rr),
        "per_joint": [float(e) for e in per_joint_errors(pred_rr, gt_rr)],
        "per_finger": per_finger_errors(pred_rr, gt_rr, fingers),
    }


def mean_pose_baseline(train_root_relative_mm: np.ndarray) -> np.ndarray:
    """The mean root-relative training pose, predicted for every sample. [21, 3] mm

    The floor a model must beat: its root-relative MPJPE is what a collapsed model
    (one pose for every image) scores at best.
    """
    x = _joints(train_root_relative_mm, "mean_pose_baseline: train_root_relative_mm")
    if len(x) == 0:
        raise ValueError("mean_pose_baseline: train_root_relative_mm has no samples")
    if not np.all(x[:, ROOT] == 0.0):
        raise ValueError(
            "mean_pose_baseline: train_root_relative_mm must be root-relative (joint 0 at "
            "the origin in every sample); apply root_relative first"
        )
    check_millimetres(x, "mean_pose_baseline: train_root_relative_mm")
    return x.mean(axis=0)


# ------------------------------------------------------------------- results file


def write_dexycb_results(path: Path, indices: Sequence[int], joints_mm: np.ndarray) -> None:
    """Write predictions in the results format of the DexYCB evaluator (hpe_eval.py).

    One line per sample, 64 comma-separated numbers: the sample's index in the DexYCB
    dataset split (`get_dataset(name)[index]`), then x1, y1, z1, ..., x21, y21, z21 in mm
    in the camera frame of that image, joints in DexYCB order. The evaluator needs a
    line for every sample whose ground truth has a hand (it skips the others). Floats
    are written with repr, so `read_dexycb_results` gives back the same float64 values.
    Written atomically.

    indices: [N] distinct non-negative ints; joints_mm: [N, 21, 3], finite, absolute.
    """
    joints = _joints(joints_mm, "write_dexycb_results: joints_mm")
    idx = [int(i) for i in indices]
    if len(idx) != len(joints):
        raise ValueError(
            f"write_dexycb_results: {len(idx)} indices for {len(joints)} samples of joints_mm"
        )
    if any(i < 0 for i in idx) or len(set(idx)) != len(idx):
        raise ValueError("write_dexycb_results: indices must be distinct and >= 0")
    if not np.all(np.isfinite(joints)):
        raise ValueError(
            "write_dexycb_results: joints_mm must be finite (the evaluator has no missing value)"
        )
    check_millimetres(joints, "write_dexycb_results: joints_mm")
    lines = [
        ",".join([str(i)] + [repr(float(v)) for v in row.reshape(-1)])
        for i, row in zip(idx, joints)
    ]
    atomic_write_text(Path(path), "".join(line + "\n" for line in lines))


def read_dexycb_results(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a DexYCB results file as hpe_eval.py does: every line must have exactly 64
    comma-separated numbers (index, 63 coordinates in mm). Returns (indices [N] int64,
    joints [N, 21, 3] float64) in file order; a repeated index is an error."""
    indices: list[int] = []
    rows: list[list[float]] = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        fields = line.split(",")
        if len(fields) != _FIELDS_PER_LINE:
            raise ValueError(
                f"{path}:{number}: expected {_FIELDS_PER_LINE} comma-separated numbers "
                f"(index, then 21 x, y, z in mm), got {len(fields)}"
            )
        try:
            indices.append(int(fields[0]))
            values = [float(v) for v in fields[1:]]
        except ValueError as err:
            raise ValueError(f"{path}:{number}: not a number: {err}") from None
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"{path}:{number}: non-finite coordinate")
        rows.append(values)
    if len(set(indices)) != len(indices):
        raise ValueError(f"{path}: repeated sample index")
    joints = np.asarray(rows, dtype=np.float64).reshape(-1, NUM_JOINTS, 3)
    return np.asarray(indices, dtype=np.int64), joints

"""Hand-pose metrics (`genalign.evaluation.hand_pose`), DexYCB's conventions.

Expected values are worked out by hand in each docstring; lengths in mm, 2D in px.
The AUC uses the DexYCB evaluator's thresholds t_k = 50 k / 99, k = 0..99 (h = 50/99
apart, np.linspace(0, 50, 100)), PCK(t) = share of errors <= t, and
AUC = trapz(PCK, t) / 50. For errors all equal to e, PCK steps from 0 to 1 at the
first k with t_k >= e, k0; the trapezoid gives half a step on the interval before it,
so AUC = (99 - k0 + 0.5) h / 50 = (99.5 - k0) / 99.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from genalign.evaluation.hand_pose import (
    check_millimetres,
    dexycb_hpe_results,
    hand_pose_metrics,
    joint_errors,
    mean_pose_baseline,
    mpjpe,
    mpjpe_absolute,
    mpjpe_root_relative,
    pa_mpjpe,
    pck_2d,
    pck_auc_3d,
    pck_curve,
    per_finger_errors,
    per_joint_errors,
    procrustes_align,
    read_dexycb_results,
    root_relative,
    similarity_transform,
    write_dexycb_results,
)

# DexYCB/MANO order, as genalign.data.hand_skeleton.FINGERS gives it.
FINGERS = {
    "thumb": [1, 2, 3, 4],
    "index": [5, 6, 7, 8],
    "middle": [9, 10, 11, 12],
    "ring": [13, 14, 15, 16],
    "little": [17, 18, 19, 20],
}


def hands(n: int = 4, seed: int = 0) -> np.ndarray:
    """n random 'hands' [n, 21, 3] in mm: joints spread ~40 mm, 600 mm from the camera."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 21, 3)) * 40.0 + np.array([0.0, 0.0, 600.0])


def rotation(seed: int) -> np.ndarray:
    """A random proper rotation (det +1). [3, 3]"""
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def errors_all(e: float, n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(pred, gt) whose 21 joint errors are all exactly e (an offset along y). Whole-mm
    coordinates keep the subtraction exact: e = 50 must not come out as 50 + 1e-13."""
    gt = np.round(hands(n))
    pred = gt.copy()
    pred[..., 1] += e
    return pred, gt


# ------------------------------------------------------------------------------ MPJPE


def test_mpjpe_of_ground_truth_against_itself_is_zero():
    gt = hands()
    assert mpjpe_absolute(gt, gt) == 0.0
    assert mpjpe_root_relative(gt, gt) == 0.0
    assert pa_mpjpe(gt, gt) == pytest.approx(0.0, abs=1e-9)


def test_constant_offset_is_absolute_error_only():
    """Every joint off by (3, 4, 0): absolute 5 mm; the wrist moves with the hand, so
    root-relative 0; a translation is a similarity, so PA 0."""
    gt = hands()
    pred = gt + np.array([3.0, 4.0, 0.0])
    assert mpjpe_absolute(pred, gt) == pytest.approx(5.0)
    assert mpjpe_root_relative(pred, gt) == pytest.approx(0.0, abs=1e-12)
    assert pa_mpjpe(pred, gt) == pytest.approx(0.0, abs=1e-9)


def test_mpjpe_is_mean_of_per_sample_means():
    """Sample 0: one joint off by 21 mm -> mean 1; sample 1: all off by 3 -> mean 3.
    MPJPE = (1 + 3) / 2 = 2."""
    gt = hands(2)
    pred = gt.copy()
    pred[0, 5, 2] += 21.0
    pred[1, :, 0] += 3.0
    assert mpjpe(pred, gt) == pytest.approx(2.0)


def test_root_relative_subtracts_the_wrist():
    gt = hands(2)
    out = root_relative(gt)
    assert (out[:, 0] == 0).all()
    np.testing.assert_allclose(out[:, 7], gt[:, 7] - gt[:, 0])


# ------------------------------------------------------------------------- Procrustes


def test_pa_mpjpe_removes_a_similarity_transform():
    """pred = 1.3 Q gt + t: the alignment undoes it exactly (PA ~ 0), recovering
    scale 1/1.3 and rotation Q^T; root-relative MPJPE sees the rotation and scale."""
    gt = hands()
    q = rotation(1)
    pred = 1.3 * gt @ q.T + np.array([20.0, -15.0, 40.0])
    assert pa_mpjpe(pred, gt) == pytest.approx(0.0, abs=1e-9)
    assert mpjpe_root_relative(pred, gt) > 10.0
    scale, rot, _ = similarity_transform(pred, gt)
    np.testing.assert_allclose(scale, 1 / 1.3)
    np.testing.assert_allclose(rot, np.broadcast_to(q.T, rot.shape), atol=1e-12)


def test_pa_is_at_most_root_relative_on_noisy_predictions():
    """Root-relative alignment is one particular similarity (a translation); Procrustes
    minimises the squared error over all of them, and on noisy hands the mean error too."""
    gt = hands(16, seed=2)
    pred = gt + np.random.default_rng(3).normal(size=gt.shape) * 6.0
    assert 0 < pa_mpjpe(pred, gt) <= mpjpe_root_relative(pred, gt)


def test_procrustes_matches_freihand_align_w_scale_formulation():
    """FreiHAND's eval.py align_w_scale (which the DexYCB evaluator calls): centre both,
    divide each by its Frobenius norm, scipy's orthogonal_procrustes, scale by the sum
    of singular values. Same result when the best orthogonal fit is a rotation (up to
    its 1e-8 norm epsilon)."""
    linalg = pytest.importorskip("scipy.linalg")
    gt = hands(6, seed=4)
    pred = gt @ rotation(5).T * 0.9 + np.random.default_rng(6).normal(size=gt.shape) * 8.0
    ours = procrustes_align(pred, gt)
    for g, p, o in zip(gt, pred, ours):
        gc, pc = g - g.mean(0), p - p.mean(0)
        ng, npred = np.linalg.norm(gc), np.linalg.norm(pc)
        r, s = linalg.orthogonal_procrustes(gc / ng, pc / npred)
        theirs = (pc / npred) @ r.T * s * ng + g.mean(0)
        np.testing.assert_allclose(o, theirs, atol=1e-6)


def test_procrustes_does_not_undo_a_mirror_image():
    """A left hand for a right hand (x mirrored) is no rotation: the reflection is
    removed from the fit, so the error stays large (FreiHAND's would align it to 0)."""
    gt = hands(3, seed=7)
    mirrored = gt * np.array([-1.0, 1.0, 1.0])
    assert pa_mpjpe(mirrored, gt) > 10.0
    _, rot, _ = similarity_transform(mirrored, gt)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0)


def test_procrustes_of_a_collapsed_prediction_is_the_gt_centroid():
    """All joints at one point: no shape to fit, scale 0, every joint at mean(gt)."""
    gt = hands(2)
    out = procrustes_align(np.zeros_like(gt), gt)
    np.testing.assert_allclose(out, np.broadcast_to(gt.mean(1, keepdims=True), gt.shape))


# -------------------------------------------------------------------------------- PCK


def test_pck_2d_seven_of_21_within_5px():
    """Joints 0-6 off by (3, 4) = exactly 5 px (counted: <=), 7-20 by (6, 8) = 10 px:
    7 / 21 = 1/3. With a 10 px threshold all count."""
    gt = np.zeros((1, 21, 2))
    pred = np.zeros((1, 21, 2))
    pred[0, :7] = [3.0, 4.0]
    pred[0, 7:] = [6.0, 8.0]
    assert pck_2d(pred, gt) == pytest.approx(1 / 3)
    assert pck_2d(pred, gt, threshold_px=10.0) == 1.0
    assert pck_2d(pred, gt, threshold_px=4.9) == 0.0


def test_auc_extremes():
    """All errors 0: PCK = 1 at every threshold -> 1. All 100 mm > 50 -> 0."""
    gt = hands()
    assert pck_auc_3d(gt, gt) == pytest.approx(1.0)
    assert pck_auc_3d(*errors_all(100.0)) == 0.0


@pytest.mark.parametrize(
    "error, auc",
    [
        # t_k >= 10 first at k0 = ceil(10 * 99 / 50) = ceil(19.8) = 20 -> 79.5 / 99
        # (0.80303, where the continuous 1 - 10/50 would be 0.8).
        (10.0, 79.5 / 99),
        # t_k >= 25 first at k0 = ceil(49.5) = 50 -> 49.5 / 99 = 0.5.
        (25.0, 0.5),
        # Exactly 50: only the last threshold (t = 50, included) counts, k0 = 99 -> 0.5/99.
        (50.0, 0.5 / 99),
    ],
)
def test_auc_on_equal_errors_follows_the_discrete_thresholds(error, auc):
    assert pck_auc_3d(*errors_all(error)) == pytest.approx(auc, abs=1e-12)


def test_auc_of_half_perfect_half_lost():
    """Half the samples exact, half 100 mm off: PCK = 1/2 at every threshold -> 0.5."""
    gt = hands(4)
    pred = gt.copy()
    pred[2:, :, 0] += 100.0
    assert pck_auc_3d(pred, gt) == pytest.approx(0.5)


def test_pck_curve_thresholds_are_the_evaluators():
    thresholds, pck = pck_curve(np.full((2, 21), 10.0))
    np.testing.assert_allclose(thresholds, np.linspace(0.0, 50.0, 100))
    assert thresholds[1] == pytest.approx(50 / 99)
    assert (pck[:20] == 0).all() and (pck[20:] == 1).all()


def test_dexycb_rows():
    """Offset (3, 4, 0) on whole-mm hands: absolute row 5 mm, AUC with
    k0 = ceil(5 * 99/50) = 10 -> 89.5/99; root-relative 0 mm exactly and AUC 1.
    Procrustes leaves float residuals (~1e-13 mm) that the threshold t = 0 does not
    count (<= 0 fails), so its AUC is 1 - (1/2)(1/99) rather than 1, as in the
    evaluator (whose alignment adds a 1e-8 epsilon besides)."""
    gt = np.round(hands())
    rows = dexycb_hpe_results(gt + np.array([3.0, 4.0, 0.0]), gt)
    assert set(rows) == {"absolute", "root-relative", "procrustes"}
    assert rows["absolute"]["mpjpe"] == pytest.approx(5.0)
    assert rows["absolute"]["auc"] == pytest.approx(89.5 / 99)
    assert rows["root-relative"] == {"mpjpe": 0.0, "auc": 1.0}
    assert rows["procrustes"]["mpjpe"] == pytest.approx(0.0, abs=1e-9)
    assert rows["procrustes"]["auc"] >= 1 - 0.5 / 99 - 1e-12


# -------------------------------------------------------------------- per joint/finger


def test_per_joint_and_per_finger_errors():
    """Only the thumb tip (joint 4) is off, by 8 mm in z, in both samples: per joint
    [0, 0, 0, 0, 8, 0, ...]; thumb (8 + 0 + 0 + 0) / 4 = 2; every other finger and the
    wrist 0."""
    gt = hands(2)
    pred = gt.copy()
    pred[:, 4, 2] += 8.0
    per_joint = per_joint_errors(pred, gt)
    assert per_joint.shape == (21,)
    expected = np.zeros(21)
    expected[4] = 8.0
    np.testing.assert_allclose(per_joint, expected, atol=1e-12)
    per_finger = per_finger_errors(pred, gt, FINGERS)
    assert list(per_finger) == ["wrist", *FINGERS]
    assert per_finger["thumb"] == pytest.approx(2.0)
    assert all(per_finger[k] == pytest.approx(0.0, abs=1e-12) for k in per_finger if k != "thumb")


def test_per_finger_errors_rejects_bad_groupings():
    gt = hands(1)
    with pytest.raises(ValueError, match=r"fingers\['thumb'\] must be joint indices in \[1, 21\)"):
        per_finger_errors(gt, gt, {"thumb": [0, 1, 2]})
    with pytest.raises(ValueError, match="must not name 'wrist'"):
        per_finger_errors(gt, gt, {"wrist": [1]})


# -------------------------------------------------------------------- units and report


def test_check_millimetres_refuses_metres():
    gt = hands()
    check_millimetres(gt, "gt")
    check_millimetres(gt[0], "one hand")
    with pytest.raises(ValueError, match="eval gt: joints look like metres"):
        check_millimetres(gt / 1000.0, "eval gt")
    # DexYCB's filler for a missing hand, all joints -1, has no extent either.
    with pytest.raises(ValueError, match="look like metres"):
        check_millimetres(-np.ones((1, 21, 3)), "label")


def test_metrics_in_metres_are_refused_not_printed_as_mm():
    """The bug this guards: the same hands in metres give an MPJPE 1000x smaller
    (0.2 'mm' for 200 mm); hand_pose_metrics refuses them."""
    gt = hands()
    pred = gt + 200.0 / np.sqrt(3)
    assert mpjpe_absolute(pred / 1000, gt / 1000) == pytest.approx(0.2)
    px = np.zeros((4, 21, 2))
    with pytest.raises(ValueError, match="gt_abs_mm: joints look like metres"):
        hand_pose_metrics(pred / 1000, gt / 1000, px, px, FINGERS)
    with pytest.raises(ValueError, match="pred_abs_mm: joints look like metres"):
        hand_pose_metrics(pred / 1000, gt, px, px, FINGERS)


def test_hand_pose_metrics_keys_and_consistency():
    gt = hands(8, seed=8)
    pred = gt + np.random.default_rng(9).normal(size=gt.shape) * 5.0
    px = np.random.default_rng(10).uniform(0, 640, size=(8, 21, 2))
    out = hand_pose_metrics(pred, gt, px + 1.0, px, FINGERS)
    assert set(out) == {
        "mpjpe", "mpjpe_absolute", "pa_mpjpe", "pck_5px", "auc_0_50mm", "per_joint", "per_finger"
    }  # fmt: skip
    assert out["mpjpe"] == pytest.approx(mpjpe_root_relative(pred, gt))
    assert out["mpjpe_absolute"] == pytest.approx(mpjpe_absolute(pred, gt))
    assert out["pa_mpjpe"] == pytest.approx(pa_mpjpe(pred, gt))
    assert out["pck_5px"] == 1.0  # every joint sqrt(2) px off
    rows = dexycb_hpe_results(pred, gt)
    assert out["auc_0_50mm"] == pytest.approx(rows["root-relative"]["auc"])
    assert 0 < out["auc_0_50mm"] < 1
    assert len(out["per_joint"]) == 21 and out["per_joint"][0] == 0.0
    assert np.mean(out["per_joint"]) == pytest.approx(out["mpjpe"])
    assert out["per_finger"]["wrist"] == 0.0 and set(out["per_finger"]) == {"wrist", *FINGERS}
    scalars = [v for k, v in out.items() if k not in ("per_joint", "per_finger")]
    assert all(type(v) is float for v in scalars)
    json.dumps(out, allow_nan=False)


def test_hand_pose_metrics_rejects_mismatched_inputs():
    gt = hands(2)
    with pytest.raises(ValueError, match=r"pred_px has 3 samples, pred_abs_mm 2"):
        hand_pose_metrics(gt, gt, np.zeros((3, 21, 2)), np.zeros((3, 21, 2)), FINGERS)
    with pytest.raises(ValueError, match=r"gt must be \[N, 21, 3\]"):
        hand_pose_metrics(gt, gt[:, :20], np.zeros((2, 21, 2)), np.zeros((2, 21, 2)), FINGERS)


def test_mean_pose_baseline():
    """Two root-relative hands: the mean is their midpoint; the baseline's own MPJPE
    on them is half their distance."""
    train = root_relative(hands(2, seed=11))
    mean = mean_pose_baseline(train)
    assert mean.shape == (21, 3)
    np.testing.assert_allclose(mean, (train[0] + train[1]) / 2)
    half = joint_errors(train[:1], train[1:]).mean() / 2
    assert mpjpe(np.broadcast_to(mean, train.shape), train) == pytest.approx(half)
    with pytest.raises(ValueError, match="must be root-relative"):
        mean_pose_baseline(hands(2))
    with pytest.raises(ValueError, match="look like metres"):
        mean_pose_baseline(train / 1000)


# ----------------------------------------------------------------------- results file


def test_results_file_line_format(tmp_path):
    """One line per sample: the index, then x1, y1, z1, ..., x21, y21, z21 (mm) - 64
    comma-separated numbers, as hpe_eval.py's _load_results reads them."""
    joints = np.arange(2 * 63, dtype=np.float64).reshape(2, 21, 3) + 0.5
    path = tmp_path / "results_hpe.txt"
    write_dexycb_results(path, [7, 3], joints)
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    fields = lines[0].split(",")
    assert len(fields) == 64 and fields[:4] == ["7", "0.5", "1.5", "2.5"]
    assert lines[1].split(",")[0] == "3" and float(lines[1].split(",")[-1]) == 125.5
    assert [p.name for p in tmp_path.iterdir()] == ["results_hpe.txt"]  # no temp file left


def test_results_file_round_trip(tmp_path):
    joints = hands(5, seed=12)
    path = tmp_path / "r.txt"
    write_dexycb_results(path, np.array([10, 0, 4, 2, 99]), joints)
    indices, back = read_dexycb_results(path)
    np.testing.assert_array_equal(indices, [10, 0, 4, 2, 99])
    np.testing.assert_array_equal(back, joints)  # repr floats: exact


def test_results_file_rejects_what_the_evaluator_would(tmp_path):
    joints = hands(2)
    with pytest.raises(ValueError, match="distinct"):
        write_dexycb_results(tmp_path / "a.txt", [1, 1], joints)
    bad = joints.copy()
    bad[0, 3, 1] = np.nan
    with pytest.raises(ValueError, match="must be finite"):
        write_dexycb_results(tmp_path / "a.txt", [0, 1], bad)
    with pytest.raises(ValueError, match="look like metres"):
        write_dexycb_results(tmp_path / "a.txt", [0, 1], joints / 1000)
    short = tmp_path / "short.txt"
    short.write_text("0," + ",".join(["1.0"] * 62) + "\n")
    with pytest.raises(ValueError, match=r"short.txt:1: expected 64 comma-separated numbers"):
        read_dexycb_results(short)
    twice = tmp_path / "twice.txt"
    twice.write_text(("5," + ",".join(["1.0"] * 63) + "\n") * 2)
    with pytest.raises(ValueError, match="repeated sample index"):
        read_dexycb_results(twice)

"""Metrics of the reward model (genalign.evaluation.reward) on tiny fixed inputs, with the
expected values worked out by hand in each docstring."""

import math

import numpy as np
import pytest
import torch

from genalign.evaluation.reward import (
    choose_thresholds,
    expected_calibration_error,
    f1_scores,
    pairwise_accuracy,
)

NAN = float("nan")


def test_choose_thresholds_by_hand():
    """Head 0: probs 0.1, 0.4, 0.35, 0.8 with labels 0, 0, 1, 1. Candidates and F1 of p >= t:
        0.1    all positive        tp 2 fp 2 fn 0   F1 4/6
        0.225  0.35, 0.4, 0.8      tp 2 fp 1        F1 4/5
        0.35   the same            F1 4/5
        0.375  0.4, 0.8            tp 1 fp 1 fn 1   F1 2/4
        0.4    the same            F1 2/4
        0.6    0.8                 tp 1 fn 1        F1 2/3
        0.8    the same            F1 2/3
    The best, 4/5, ties at 0.225 and 0.35; 0.35 is closer to 0.5.
    Head 1: no positive label among its rated rows (0, 0.2, 0; one is NaN): keeps 0.5."""
    probs = np.array([[0.1, 0.9], [0.4, 0.2], [0.35, 0.3], [0.8, 0.6]])
    labels = np.array([[0.0, 0.0], [0.0, 0.2], [1.0, NAN], [1.0, 0.0]])
    assert choose_thresholds(probs, labels).tolist() == pytest.approx([0.35, 0.5])


def test_choose_thresholds_breaks_ties_toward_one_half():
    """probs 0.2, 0.9, labels 0, 1: t = 0.2 gives F1 2/3, t = 0.55 (the midpoint) and t = 0.9
    give 1; 0.55 is closest to 0.5. Unrated rows (NaN) are left out."""
    probs = torch.tensor([[0.2], [0.9], [0.5]])
    labels = torch.tensor([[0.0], [1.0], [NAN]])
    assert choose_thresholds(probs, labels).tolist() == pytest.approx([0.55])


def test_f1_scores_by_hand_with_an_undefined_head():
    """thresholds 0.5. Head 0: predictions 1, 1, 0, 1 against labels 1, 0, 1 (0.7 >= 0.5), 1:
    tp 2, fp 1, fn 1, F1 = 4/6. Head 1: rows 0-2 rated, no positive label and no positive
    prediction: undefined (NaN), left out of the macro mean (2/3) and counted."""
    probs = np.array([[0.9, 0.2], [0.6, 0.1], [0.3, 0.4], [0.7, 0.8]])
    labels = np.array([[1.0, 0.0], [0.0, 0.0], [0.7, 0.3], [1.0, NAN]])
    out = f1_scores(probs, labels, [0.5, 0.5])
    assert out.per_head[0] == pytest.approx(2 / 3) and math.isnan(out.per_head[1])
    assert out.macro == pytest.approx(2 / 3) and out.undefined == 1


def test_f1_scores_nothing_defined_is_nan():
    out = f1_scores(np.array([[0.1]]), np.array([[0.0]]), [0.5])
    assert math.isnan(out.macro) and out.undefined == 1


def test_f1_scores_refuses_bad_inputs():
    with pytest.raises(ValueError, match="thresholds must be \\[K\\]"):
        f1_scores(np.zeros((2, 3)), np.zeros((2, 3)), [0.5])
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        f1_scores(np.full((1, 1), 1.5), np.zeros((1, 1)), [0.5])


def test_pairwise_accuracy_by_hand():
    """Pairs (a, b, preferred): (1, 0, 1) right; (2, 3, 0) right; (3, 3, 1) equal scores:
    wrong; (3, 1, 0.5) a tie: excluded. Accuracy 2/3 over 3 pairs, 1 tie."""
    out = pairwise_accuracy([1.0, 2.0, 3.0, 3.0], [0.0, 3.0, 3.0, 1.0], [1.0, 0.0, 1.0, 0.5])
    assert out.accuracy == pytest.approx(2 / 3) and out.pairs == 3 and out.ties == 1


def test_pairwise_accuracy_of_ties_only_is_nan():
    out = pairwise_accuracy([1.0], [0.0], [0.5])
    assert math.isnan(out.accuracy) and out.pairs == 0 and out.ties == 1
    with pytest.raises(ValueError, match="0, 0.5 or 1"):
        pairwise_accuracy([1.0], [0.0], [0.3])


def test_expected_calibration_error_by_hand():
    """10 bins ((m-1)/10, m/10]. Entries (p, y): (0.05, 0) bin 1: |0 - 0.05| = 0.05;
    (0.15, 1) bin 2: |1 - 0.15| = 0.85; (0.85, 1), (0.88, 0) bin 9: |1 - 1.73| = 0.73 (sums);
    (0.95, 1) bin 10: 0.05. ECE = (0.05 + 0.85 + 0.73 + 0.05) / 5 = 0.336. The unrated
    entry (NaN) is left out."""
    probs = np.array([[0.05, 0.15], [0.85, 0.88], [0.95, 0.5]])
    labels = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, NAN]])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.336)


def test_expected_calibration_error_of_calibrated_predictions_is_zero():
    """All at 0.25 with one positive in four: conf 0.25 = freq 0.25. p = 0 falls in bin 1."""
    assert expected_calibration_error(np.full(4, 0.25), np.array([1.0, 0.0, 0.0, 0.0])) == pytest.approx(0.0)
    assert expected_calibration_error(np.array([0.0]), np.array([0.0])) == 0.0
    assert math.isnan(expected_calibration_error(np.array([0.3]), np.array([NAN])))

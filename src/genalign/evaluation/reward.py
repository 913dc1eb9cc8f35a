"""Metrics of the multi-head reward model: per-head F1 at thresholds chosen on validation,
pairwise accuracy on preference pairs, expected calibration error.

    thresholds = choose_thresholds(probs_val, ratings_val)            # [K]
    f1 = f1_scores(probs_test, ratings_test, thresholds)              # per head, macro, undefined
    acc = pairwise_accuracy(overall_a, overall_b, preferred)          # ties excluded, counted
    ece = expected_calibration_error(probs_test, ratings_test)        # Guo et al. 2017

Inputs are arrays or CPU tensors: probabilities [N, K] in [0, 1] and ratings [N, K] in
[0, 1] with NaN for an unrated head; a rating >= 0.5 is a positive label. Unrated entries
are left out of every metric.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

# Where the F1-optimal thresholds tie, the one closest to this wins (the threshold of an
# uncalibrated sigmoid), so flat stretches do not push the threshold to an extreme.
DEFAULT_THRESHOLD = 0.5


class F1Scores(NamedTuple):
    per_head: np.ndarray  # [K] F1 per head; NaN where undefined
    macro: float  # mean over the heads whose F1 is defined; NaN if none is
    undefined: int  # heads whose F1 is undefined (no positive label and no positive prediction)


class PairwiseAccuracy(NamedTuple):
    accuracy: float  # share of non-tie pairs ordered as preferred; NaN if there are none
    pairs: int  # non-tie pairs evaluated
    ties: int  # tie pairs (preferred 0.5) excluded


def _matrix(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be [N, K], got shape {list(x.shape)}")
    return x


def _probs_labels(probs, labels, where: str) -> tuple[np.ndarray, np.ndarray]:
    probs, labels = _matrix(probs, f"{where}: probs"), _matrix(labels, f"{where}: labels")
    if probs.shape != labels.shape:
        raise ValueError(f"{where}: probs {list(probs.shape)} and labels {list(labels.shape)} differ in shape")
    if not np.isfinite(probs).all() or probs.min(initial=0.0) < 0 or probs.max(initial=1.0) > 1:
        raise ValueError(f"{where}: probs must be finite and in [0, 1]")
    return probs, labels


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """2 tp / (2 tp + fp + fn); NaN where the denominator is 0."""
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), np.nan)


def choose_thresholds(probs_val, labels_val) -> np.ndarray:
    """Per head, the threshold t that maximises F1 of `prob >= t` on the rated validation
    entries. Candidates: every distinct probability and the midpoints between consecutive
    ones. Among equally good candidates the one closest to 0.5 wins. A head with no rated
    entry or no positive label (F1 is 0 or undefined at every t) keeps 0.5. -> [K]
    """
    probs, labels = _probs_labels(probs_val, labels_val, "choose_thresholds")
    thresholds = np.full(probs.shape[1], DEFAULT_THRESHOLD)
    for k in range(probs.shape[1]):
        rated = np.isfinite(labels[:, k])
        p, y = probs[rated, k], labels[rated, k] >= 0.5
        if not y.any():
            continue
        values = np.unique(p)  # ascending
        candidates = np.concatenate([values, (values[:-1] + values[1:]) / 2])
        # predicted positive: p >= t; the entries at or above t in the sorted order
        order = np.argsort(p, kind="stable")
        sorted_p, positives_above = p[order], np.cumsum(y[order][::-1])[::-1]  # positives in sorted_p[i:]
        start = np.searchsorted(sorted_p, candidates, side="left")  # first index with p >= t
        predicted = len(p) - start
        tp = np.where(start < len(p), positives_above[np.minimum(start, len(p) - 1)], 0)
        f1 = _f1(tp, predicted - tp, y.sum() - tp)
        f1 = np.where(np.isnan(f1), -1.0, f1)
        best = np.flatnonzero(f1 == f1.max())
        thresholds[k] = candidates[best[np.argmin(np.abs(candidates[best] - DEFAULT_THRESHOLD))]]
    return thresholds


def f1_scores(probs, labels, thresholds) -> F1Scores:
    """F1 per head of `prob >= threshold` against `rating >= 0.5` on the rated entries, and
    their macro mean. A head with no positive label and no positive prediction (or nothing
    rated) has an undefined F1: NaN, left out of the macro mean and counted in `undefined`."""
    probs, labels = _probs_labels(probs, labels, "f1_scores")
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.shape != (probs.shape[1],):
        raise ValueError(f"f1_scores: thresholds must be [K] = [{probs.shape[1]}], got {list(thresholds.shape)}")
    rated = np.isfinite(labels)
    y = rated & (np.nan_to_num(labels, nan=0.0) >= 0.5)
    pred = rated & (probs >= thresholds)
    tp = (y & pred).sum(0)
    per_head = _f1(tp, pred.sum(0) - tp, y.sum(0) - tp)
    defined = ~np.isnan(per_head)
    macro = float(per_head[defined].mean()) if defined.any() else math.nan
    return F1Scores(per_head=per_head, macro=macro, undefined=int((~defined).sum()))


def pairwise_accuracy(score_a, score_b, preferred) -> PairwiseAccuracy:
    """Share of non-tie pairs the scores order as preferred: preferred 1 needs
    score_a > score_b, preferred 0 needs score_b > score_a. Equal scores count as WRONG (the
    model did not order the pair). Ties (preferred 0.5) are excluded and counted."""
    a, b, pref = (np.asarray(x, dtype=np.float64) for x in (score_a, score_b, preferred))
    if a.ndim != 1 or a.shape != b.shape or pref.shape != a.shape:
        raise ValueError(
            f"pairwise_accuracy: score_a, score_b and preferred must be one [P] shape, got "
            f"{list(a.shape)}, {list(b.shape)}, {list(pref.shape)}"
        )
    if not np.isin(pref, (0.0, 0.5, 1.0)).all():
        raise ValueError(f"pairwise_accuracy: preferred must be 0, 0.5 or 1, got {pref[~np.isin(pref, (0.0, 0.5, 1.0))][:5]}")
    decided = pref != 0.5
    correct = np.where(pref == 1.0, a > b, b > a) & decided
    n = int(decided.sum())
    return PairwiseAccuracy(accuracy=float(correct.sum() / n) if n else math.nan, pairs=n, ties=int((~decided).sum()))


def expected_calibration_error(probs, labels, bins: int = 10) -> float:
    """Expected calibration error (Guo et al. 2017, "On Calibration of Modern Neural Networks",
    arXiv:1706.04599, eq. 3) of the rated entries as binary predictions of P(positive):

        ECE = sum_m |B_m| / n * |freq(B_m) - conf(B_m)|

    with `bins` equal-width bins B_m = ((m - 1) / M, m / M] of the probability (0 goes to the
    first bin), conf the mean probability and freq the share of positive labels (rating >= 0.5)
    in the bin. probs and labels: [N, K] (or [N]); every rated (sample, head) entry counts
    once. NaN when nothing is rated."""
    if bins < 1:
        raise ValueError(f"expected_calibration_error: bins must be >= 1, got {bins}")
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if p.ndim == 1:
        p, y = p[:, None], y[:, None]
    p, y = _probs_labels(p, y, "expected_calibration_error")
    rated = np.isfinite(y)
    p, positive = p[rated], y[rated] >= 0.5
    if p.size == 0:
        return math.nan
    which = np.clip(np.ceil(p * bins).astype(int) - 1, 0, bins - 1)
    conf = np.bincount(which, weights=p, minlength=bins)
    freq = np.bincount(which, weights=positive.astype(np.float64), minlength=bins)
    return float(np.abs(freq - conf).sum() / p.size)

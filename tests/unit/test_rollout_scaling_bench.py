"""The pure helpers of benchmarks/rollout_scaling.py, on small inputs worked out by hand."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def bench():
    spec = importlib.util.spec_from_file_location("rollout_scaling", ROOT / "benchmarks" / "rollout_scaling.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rotation_runs_each_name_first_in_turn():
    rotation = bench().rotation
    names = [2, 4, 8, 16]
    assert [rotation(names, r) for r in range(5)] == [
        [2, 4, 8, 16], [4, 8, 16, 2], [8, 16, 2, 4], [16, 2, 4, 8], [2, 4, 8, 16],
    ]
    assert names == [2, 4, 8, 16]  # not rotated in place


def test_padded_slots_pad_each_batch_to_its_largest_object():
    # Batches of 2: [3, 5] -> 2 * 5, [2, 2] -> 2 * 2, [4] -> 1 * 4; 10 + 4 + 4 = 18.
    assert bench().padded_slots([3, 5, 2, 2, 4], batch_size=2) == 18
    # One batch: 5 samples padded to 5 parts.
    assert bench().padded_slots([3, 5, 2, 2, 4], batch_size=8) == 25


def test_ratios_compare_k16_to_k2():
    def row(k, rollout, score):  # ms per condition; 1 condition, so ms per sample is that / k
        return {"k": k, "total_ms_per_condition": rollout + score, "total_ms_per_sample": (rollout + score) / k,
                "rollout_ms_per_sample": rollout / k, "score_ms_per_sample": score / k}

    # K=2: 40 + 10 = 50 ms a condition, 25 a sample; K=16: 320 + 80 = 400 a condition, 25 a sample.
    ratios = bench().ratios([row(2, 40.0, 10.0), row(16, 320.0, 80.0)])
    assert ratios["rollout_score_per_condition_k16_vs_k2"] == pytest.approx(8.0)
    assert ratios["rollout_score_per_sample_k16_vs_k2"] == pytest.approx(1.0)
    assert ratios["rollout_per_sample_k16_vs_k2"] == pytest.approx(1.0)
    assert ratios["score_per_sample_k16_vs_k2"] == pytest.approx(1.0)

"""The penetration scorer's worker processes give the scores one process gives."""

import dataclasses

import pytest

from genalign.config.score import PenetrationConfig
from genalign.scorers.penetration import PenetrationScorer

UNIT = ([0, 0, 0], [1, 1, 1])


def box(lo, hi):
    import trimesh

    return trimesh.creation.box(bounds=[lo, hi])


def test_parallel_and_serial_scores_are_identical(tmp_path):
    from genalign.models.part_codec import save_glb

    paths = []
    for i in range(4):
        path = tmp_path / f"object_{i}.glb"
        shift = 0.25 * i
        save_glb([box(*UNIT), box([1 - shift, 0.1, 0.1], [2 - shift, 0.9, 0.9])], path)
        paths.append(path)
    serial = PenetrationScorer(PenetrationConfig(workers=1)).score_files(paths)
    parallel = PenetrationScorer(PenetrationConfig(workers=2)).score_files(paths)
    assert [dataclasses.asdict(r) for r in serial] == [dataclasses.asdict(r) for r in parallel]
    assert [r.score for r in serial] == pytest.approx([0.0, 0.25, 0.5, 0.75])
